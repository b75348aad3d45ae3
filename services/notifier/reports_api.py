"""Review reports over the API (`/v1/reports/review`, as JSON, CSV, an HTML fragment with
its charts, or PDF): a unit sees those of the agreements and borders it is party to, a
province admin those of its units."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import date
from typing import Annotated, Literal, TypeVar

from fastapi import APIRouter, Depends, Header, Query, Request, Response

from services.notifier.deps import CurrentUnit, Database
from services.notifier.report_pdf import render_pdf
from services.notifier.reports import (
    ReviewReport,
    check_access,
    not_open,
    resolve_scope,
    review_report,
    to_csv,
    to_html,
)
from shared.errors import NotFound, Overloaded, TooManyRequests
from shared.events import utcnow
from shared.http import KeyFirstRoute, error_responses

T = TypeVar("T")
router = APIRouter(prefix="/v1/reports", responses=error_responses(401, 429, 503),
                   route_class=KeyFirstRoute)

Agreement = Annotated[int | None, Query(ge=1, le=2**62, description="An agreement's id.")]
Pair = Annotated[str | None, Query(max_length=100, pattern=r"^[A-Za-z0-9-]+,[A-Za-z0-9-]+$",
                                   description="Two unit codes, e.g. `CA-30307,CA-31212`.")]
Unit = Annotated[str | None, Query(max_length=50, pattern=r"^[A-Za-z0-9-]+$",
                                   description="One unit: its exchanges with every unit.")]
From = Annotated[date, Query(alias="from", description="First day (Vietnam time).")]
To = Annotated[date, Query(alias="to", description="Last day, included (at most 800 days).")]
Lang = Annotated[Literal["vi", "en"] | None, Query(
    description="Language of the texts (default: from Accept-Language, else Vietnamese).")]
AcceptLanguage = Annotated[str | None, Header(include_in_schema=False)]


def _language(lang: str | None, accept_language: str | None) -> Literal["vi", "en"]:
    if lang in ("vi", "en"):
        return lang  # type: ignore[return-value]
    header = (accept_language or "").strip().lower()
    return "en" if header.startswith("en") else "vi"


MAX_REPORTS_PER_UNIT = 2
"""Reports one unit may have made or waiting at once in a notifier process."""
MAX_REPORTS_WAITING = 16
"""Reports made or waiting at once in a notifier process, all units together."""


class ReportTurns:
    """One report at a time per notifier process (a report holds two connections for
    seconds at a million alerts; several at once would take the pool from the alerts),
    and a bounded queue for the turn: a unit with `MAX_REPORTS_PER_UNIT` already queued
    gets 429, and past `MAX_REPORTS_WAITING` everyone gets 503, at once. Otherwise one
    key could queue hundreds of reports, each counted among the requests in flight, and
    the notifier would refuse the desks' requests for minutes."""

    def __init__(self) -> None:
        self.turn = asyncio.Semaphore(1)
        self._units: Counter[str] = Counter()

    @contextlib.asynccontextmanager
    async def take(self, unit: str) -> AsyncIterator[None]:
        if self._units[unit] >= MAX_REPORTS_PER_UNIT:
            raise TooManyRequests(f"{self._units[unit]} reports of unit {unit} are being "
                                  "made, the most at once: try again when they are done",
                                  retry_after=5)
        if sum(self._units.values()) >= MAX_REPORTS_WAITING:
            raise Overloaded(f"{MAX_REPORTS_WAITING} reports are being made, the most this "
                             "instance takes on: try again later", retry_after=10)
        self._units[unit] += 1
        try:
            async with self.turn:
                yield
        finally:
            self._units[unit] -= 1
            if not self._units[unit]:
                del self._units[unit]


async def _turns(request: Request) -> ReportTurns:
    state = request.app.state
    if getattr(state, "report_turns", None) is None:
        state.report_turns = ReportTurns()
    return state.report_turns  # type: ignore[no-any-return]


Turn = Annotated[ReportTurns, Depends(_turns)]


async def _report(db: Database, turns: ReportTurns, caller: CurrentUnit,
                  agreement: int | None, pair: str | None, unit: str | None, start: date,
                  end: date, finish: Callable[[ReviewReport], T] | None = None
                  ) -> ReviewReport | T:
    """The report, or what `finish` makes of it: rendered in a thread, in the turn (a
    PDF takes a fraction of a second of CPU: the event loop serves the desks meanwhile)."""
    try:
        scope = await resolve_scope(db, agreement=agreement, pair=pair, unit=unit)
    except NotFound:
        if agreement is None:  # (units are no secret: the directory lists them)
            raise
        # An agreement that does not exist answers as one the caller is not party to:
        # otherwise any unit could tell which agreement ids exist.
        raise not_open("agreement", caller.unit_code) from None
    await check_access(db, scope, caller)
    async with turns.take(caller.unit_code):
        report = await review_report(db, scope, start, end, now=utcnow())
        return report if finish is None else await asyncio.to_thread(finish, report)


_REFUSALS = error_responses(404)


@router.get("/review", response_model=ReviewReport, responses=_REFUSALS)
async def review(db: Database, turn: Turn, caller: CurrentUnit, start: From, end: To,
                 agreement: Agreement = None, pair: Pair = None,
                 unit: Unit = None) -> ReviewReport:
    """A review report ("Báo cáo sơ kết") for an agreement, a pair of units or a unit over
    a period, with the previous period of equal length beside it: alerts exchanged in each
    direction, acknowledged, confirmed, rejected, outcomes, late hits, escalations, times
    to acknowledge and to confirm, by category and by month."""
    return await _report(db, turn, caller, agreement, pair, unit, start, end)


@router.get("/review.csv", response_class=Response, responses={
    200: {"content": {"text/csv": {}}}, **_REFUSALS})
async def review_csv(db: Database, turn: Turn, caller: CurrentUnit, start: From, end: To,
                     agreement: Agreement = None, pair: Pair = None,
                     unit: Unit = None) -> Response:
    """The same figures as CSV: one line per direction, period and group."""
    text = await _report(db, turn, caller, agreement, pair, unit, start, end, to_csv)
    return Response(text, media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="so-ket-{start}-{end}.csv"'})


@router.get("/review.html", response_class=Response, responses={
    200: {"content": {"text/html": {}}}, **_REFUSALS})
async def review_html(db: Database, turn: Turn, caller: CurrentUnit, start: From, end: To,
                      agreement: Agreement = None, pair: Pair = None, unit: Unit = None,
                      lang: Lang = None, accept_language: AcceptLanguage = None) -> Response:
    """The report as an HTML fragment with its charts (SVG), as the `/reports` page
    shows and prints it."""
    language = _language(lang, accept_language)
    return Response(await _report(db, turn, caller, agreement, pair, unit, start, end,
                                  lambda report: to_html(report, language)),
                    media_type="text/html; charset=utf-8")


@router.get("/review.pdf", response_class=Response, responses={
    200: {"content": {"application/pdf": {}}}, **_REFUSALS})
async def review_pdf(db: Database, turn: Turn, caller: CurrentUnit, start: From, end: To,
                     agreement: Agreement = None, pair: Pair = None, unit: Unit = None,
                     lang: Lang = None, accept_language: AcceptLanguage = None) -> Response:
    """The report as an A4 PDF (Vietnamese by default)."""
    language = _language(lang, accept_language)
    return Response(await _report(db, turn, caller, agreement, pair, unit, start, end,
                                  lambda report: render_pdf(report, language)),
                    media_type="application/pdf", headers={
                        "Content-Disposition": f'attachment; filename="so-ket-{start}-{end}.pdf"'})
