"""Review reports over the API (`/v1/reports/review`, as JSON, CSV, an HTML fragment with
its charts, or PDF): a unit sees those of the agreements and borders it is party to, a
province admin those of its units."""

from __future__ import annotations

import asyncio
from datetime import date
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response

from services.notifier.deps import CurrentUnit, Database
from services.notifier.report_pdf import render_pdf
from services.notifier.reports import (
    ReviewReport,
    check_access,
    resolve_scope,
    review_report,
    to_csv,
    to_html,
)
from shared.errors import NotFound
from shared.events import utcnow
from shared.http import error_responses

router = APIRouter(prefix="/v1/reports", responses=error_responses(401, 429))

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


async def _turn(request: Request) -> asyncio.Semaphore:
    """One report at a time per notifier process: a report holds two connections for
    seconds at a million alerts; several at once would take the pool from the alerts."""
    state = request.app.state
    if getattr(state, "report_turn", None) is None:
        state.report_turn = asyncio.Semaphore(1)
    return state.report_turn  # type: ignore[no-any-return]


Turn = Annotated[asyncio.Semaphore, Depends(_turn)]


async def _report(db: Database, turn: asyncio.Semaphore, caller: CurrentUnit,
                  agreement: int | None, pair: str | None, unit: str | None, start: date,
                  end: date) -> ReviewReport:
    try:
        scope = await resolve_scope(db, agreement=agreement, pair=pair, unit=unit)
    except NotFound:
        if agreement is None:  # (units are no secret: the directory lists them)
            raise
        # An agreement that does not exist answers as one the caller is not party to:
        # otherwise any unit could tell which agreement ids exist.
        raise NotFound(f"no report for this agreement is open to unit {caller.unit_code}",
                       field="agreement") from None
    await check_access(db, scope, caller)
    async with turn:
        return await review_report(db, scope, start, end, now=utcnow())


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
    report = await _report(db, turn, caller, agreement, pair, unit, start, end)
    return Response(to_csv(report), media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="so-ket-{start}-{end}.csv"'})


@router.get("/review.html", response_class=Response, responses={
    200: {"content": {"text/html": {}}}, **_REFUSALS})
async def review_html(db: Database, turn: Turn, caller: CurrentUnit, start: From, end: To,
                      agreement: Agreement = None, pair: Pair = None, unit: Unit = None,
                      lang: Lang = None, accept_language: AcceptLanguage = None) -> Response:
    """The report as an HTML fragment with its charts (SVG), as the `/reports` page
    shows and prints it."""
    report = await _report(db, turn, caller, agreement, pair, unit, start, end)
    return Response(to_html(report, _language(lang, accept_language)),
                    media_type="text/html; charset=utf-8")


@router.get("/review.pdf", response_class=Response, responses={
    200: {"content": {"application/pdf": {}}}, **_REFUSALS})
async def review_pdf(db: Database, turn: Turn, caller: CurrentUnit, start: From, end: To,
                     agreement: Agreement = None, pair: Pair = None, unit: Unit = None,
                     lang: Lang = None, accept_language: AcceptLanguage = None) -> Response:
    """The report as an A4 PDF (Vietnamese by default)."""
    report = await _report(db, turn, caller, agreement, pair, unit, start, end)
    return Response(render_pdf(report, _language(lang, accept_language)),
                    media_type="application/pdf", headers={
                        "Content-Disposition": f'attachment; filename="so-ket-{start}-{end}.pdf"'})
