"""Review reports ("Báo cáo sơ kết"): what bordering units exchanged over a period.

Every coordination agreement ends in a periodic review meeting that quotes figures: alerts
exchanged and verified, hits confirmed, subjects detained. This module computes them in
one SQL aggregate over the notifier's own tables (the system of record), for an agreement
(its parties), a pair of units, or one unit with each unit it exchanged with, over a
period and the period of equal length before it.

A *direction* A → B counts the alerts raised from A's reports (a sighting of A that hit,
or an incident A reported) and delivered to B. Units merged into another count as their
successor (the successor's totals include what its predecessors exchanged) and every unit
is shown with its name of today, listing the units it took over. Months and periods are
Vietnamese calendar days (Asia/Ho_Chi_Minh).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from html import escape
from typing import Literal
from zoneinfo import ZoneInfo

import asyncpg
import numpy as np
from pydantic import BaseModel, Field

from shared.auth import Principal, units_under
from shared.errors import NotFound, Unprocessable
from shared.i18n import N_, translate

ZONE = ZoneInfo("Asia/Ho_Chi_Minh")
MAX_DAYS = 800
"""The longest period one report covers (about two years)."""
FIRST_DAY, LAST_DAY = date(2000, 1, 1), date(2200, 12, 31)
"""The days a report may start or end on."""

OUTCOMES = ("detained", "not_located", "false_match", "caught", "lost", "false_report")

Language = Literal["vi", "en"]

LABELS: dict[str, str] = {
    # Every text a reader of a report sees, in one place: English here, Vietnamese in the
    # message catalogue (shared/locale/vi/LC_MESSAGES/giapranh.po).
    "title": N_("REVIEW REPORT ON COORDINATION AND INFORMATION EXCHANGE"),
    "agreement": N_("Coordination agreement"),
    "pair": N_("Bordering units"),
    "unit": N_("Unit"),
    "period": N_("Reporting period"),
    "previous": N_("Previous period"),
    "direction": N_("Direction"),
    "includes": N_("including"),
    "totals": N_("Totals"),
    "by_category": N_("By category"),
    "by_month": N_("By month"),
    "chart_directions": N_("Alerts exchanged by direction (this period / previous)"),
    "chart_months": N_("Alerts by month"),
    "alerts": N_("Alerts"),
    "hit_alerts": N_("Hit alerts"),
    "incident_alerts": N_("Incident alerts"),
    "acknowledged": N_("Acknowledged"),
    "confirmed": N_("Confirmed"),
    "rejected": N_("Rejected"),
    "detained": N_("Detained"),
    "not_located": N_("Not located"),
    "false_match": N_("False match"),
    "caught": N_("Caught (incident)"),
    "lost": N_("Lost (incident)"),
    "false_report": N_("False report (incident)"),
    "late": N_("Late hits"),
    "escalated": N_("Escalated"),
    "missed_deadlines": N_("Missed deadlines"),
    "ack_median_s": N_("Time to acknowledge, median (s)"),
    "ack_p90_s": N_("Time to acknowledge, p90 (s)"),
    "confirm_median_s": N_("Time to confirm, median (s)"),
    "confirm_p90_s": N_("Time to confirm, p90 (s)"),
    "this_period": N_("This period"),
    "none": N_("No alerts in the period."),
    "generated": N_("Generated"),
}


def label(key: str, lang: Language) -> str:
    return translate(LABELS[key], lang)


class Figures(BaseModel):
    """What one direction (or a category, a month of it) amounted to."""

    alerts: int = 0
    hit_alerts: int = 0
    incident_alerts: int = 0
    acknowledged: int = 0
    confirmed: int = 0
    rejected: int = 0
    detained: int = 0
    not_located: int = 0
    false_match: int = 0
    caught: int = 0
    lost: int = 0
    false_report: int = 0
    late: int = 0
    escalated: int = Field(0, description="Alerts escalated at least once.")
    missed_deadlines: int = Field(0, description="Confirmation deadlines missed (each "
                                  "escalation is one).")
    ack_median_s: float | None = Field(None, description="Median seconds from delivery to "
                                       "acknowledgement at the receiving unit.")
    ack_p90_s: float | None = None
    confirm_median_s: float | None = Field(None, description="Median seconds from raising "
                                           "to confirmation, of confirmed alerts.")
    confirm_p90_s: float | None = None


FIGURE_FIELDS = tuple(Figures.model_fields)


class UnitInReport(BaseModel):
    code: str
    name: str = Field(description="Its name today.")
    includes: list[str] = Field(default_factory=list, description="Units merged into it, "
                                "whose alerts count as its own.")


class Direction(BaseModel):
    from_unit: str
    to_unit: str
    current: Figures
    previous: Figures
    by_category: dict[str, Figures] = Field(description="This period, by category.")
    by_month: dict[str, Figures] = Field(description="This period, by month (YYYY-MM).")


class Period(BaseModel):
    start: date = Field(description="First day (Vietnam time).")
    end: date = Field(description="Last day, included.")


class ReviewReport(BaseModel):
    scope: Literal["agreement", "pair", "unit"]
    title: str = Field(description="The agreement's title, or the units' names.")
    units: list[UnitInReport]
    period: Period
    previous_period: Period
    directions: list[Direction]
    totals: Figures
    previous_totals: Figures
    generated_at: datetime


@dataclass(frozen=True)
class Scope:
    kind: Literal["agreement", "pair", "unit"]
    title: str
    units: list[str]
    """Current codes (after merges) of the units the report is about."""


# ------------------------------------------------------------------------------- scope


_CHAIN = """WITH RECURSIVE chain (code, root) AS (
    SELECT code, code FROM units WHERE successor_code IS NULL
    UNION ALL
    SELECT u.code, c.root FROM units u JOIN chain c ON u.successor_code = c.code)"""
"""Every unit with the unit it is today (itself, or the last successor of its merges)."""


async def _current(conn: asyncpg.Connection | asyncpg.Pool, codes: list[str]
                   ) -> dict[str, str]:
    rows = await conn.fetch(f"{_CHAIN} SELECT code, root FROM chain WHERE code = ANY($1)",
                            codes)
    return {row["code"]: row["root"] for row in rows}


async def resolve_scope(conn: asyncpg.Connection | asyncpg.Pool, *, agreement: int | None,
                        pair: str | None, unit: str | None) -> Scope:
    """The units a report is about; 404 for an agreement or unit that does not exist."""
    given = [name for name, value in (("agreement", agreement), ("pair", pair),
                                       ("unit", unit)) if value is not None]
    if len(given) != 1:
        raise Unprocessable("give exactly one of agreement, pair or unit",
                            field=given[1] if len(given) > 1 else "agreement")
    if agreement is not None:
        row = await conn.fetchrow("SELECT title FROM agreements WHERE id = $1", agreement)
        if row is None:
            raise NotFound(f"no agreement {agreement}", field="agreement")
        parties = [r["unit_code"] for r in await conn.fetch(
            "SELECT unit_code FROM agreement_parties WHERE agreement_id = $1 ORDER BY 1",
            agreement)]
        current = await _current(conn, parties)
        return Scope("agreement", row["title"], sorted({current[c] for c in parties}))
    if pair is not None:
        codes = [code.strip() for code in pair.split(",")]
        if len(codes) != 2 or not all(codes) or codes[0] == codes[1]:
            raise Unprocessable("pair is two different unit codes, e.g. CA-30307,CA-31212",
                                field="pair")
        current = await _current(conn, codes)
        missing = [code for code in codes if code not in current]
        if missing:
            raise NotFound(f"no unit {missing[0]}", field="pair")
        units = sorted({current[code] for code in codes})
        if len(units) != 2:
            raise Unprocessable("those units are one unit today (merged)", field="pair")
        return Scope("pair", " – ".join(units), units)
    assert unit is not None
    current = await _current(conn, [unit])
    if unit not in current:
        raise NotFound(f"no unit {unit}", field="unit")
    return Scope("unit", current[unit], [current[unit]])


async def check_access(conn: asyncpg.Connection | asyncpg.Pool, scope: Scope,
                       caller: Principal) -> None:
    """A unit sees the reports of agreements and borders it is party to (and its own); a
    province admin those of its units too. Anything else is 404, as if it did not exist."""
    if caller.unit_code in scope.units:
        return
    if caller.is_admin and set(scope.units) & set(await units_under(conn, caller.unit_code)):
        return
    raise not_open(scope.kind, caller.unit_code)


def not_open(kind: Literal["agreement", "pair", "unit"], unit_code: str) -> NotFound:
    """The 404 of a report the caller may not see, the same whether its scope exists or not."""
    return NotFound(f"no report for this {kind} is open to unit {unit_code}", field=kind)


def periods(start: date, end: date) -> tuple[tuple[datetime, datetime], tuple[date, date]]:
    """([start, end) as instants, and the previous period's first and last days)."""
    for value, field in ((start, "from"), (end, "to")):
        if not FIRST_DAY <= value <= LAST_DAY:  # (and the previous period stays a date)
            raise Unprocessable(f"{field} must be between {FIRST_DAY} and {LAST_DAY}",
                                field=field)
    if end < start:
        raise Unprocessable("to must not be before from", field="to")
    days = (end - start).days + 1
    if days > MAX_DAYS:
        raise Unprocessable(f"a report covers at most {MAX_DAYS} days", field="to")
    begin = datetime.combine(start, time(), ZONE)
    finish = datetime.combine(end + timedelta(days=1), time(), ZONE)
    return (begin, finish), (start - timedelta(days=days), start - timedelta(days=1))


# ------------------------------------------------------------------------------ figures


_REPORT_SQL = """
SELECT sender, unit_code AS receiver, category,
       width_bucket(raised_at, $4::timestamptz[]) AS month,
       count(*) AS alerts,
       count(*) FILTER (WHERE kind = 'hit') AS hit_alerts,
       count(*) FILTER (WHERE kind = 'incident') AS incident_alerts,
       count(*) FILTER (WHERE acknowledged_at IS NOT NULL) AS acknowledged,
       count(*) FILTER (WHERE decision = 'confirmed') AS confirmed,
       count(*) FILTER (WHERE decision = 'rejected') AS rejected,
       count(*) FILTER (WHERE outcome = 'detained') AS detained,
       count(*) FILTER (WHERE outcome = 'not_located') AS not_located,
       count(*) FILTER (WHERE outcome = 'false_match') AS false_match,
       count(*) FILTER (WHERE outcome = 'caught') AS caught,
       count(*) FILTER (WHERE outcome = 'lost') AS lost,
       count(*) FILTER (WHERE outcome = 'false_report') AS false_report,
       count(*) FILTER (WHERE late) AS late,
       count(*) FILTER (WHERE escalation_level > 0) AS escalated,
       coalesce(sum(escalation_level), 0) AS missed_deadlines,
       string_agg(float8send(date_part('epoch', acknowledged_at - delivered_at)), '')
           FILTER (WHERE acknowledged_at IS NOT NULL) AS to_ack,
       string_agg(float8send(date_part('epoch', decided_at - raised_at)), '')
           FILTER (WHERE decision = 'confirmed') AS to_confirm
  FROM deliveries
 WHERE raised_at >= $1 AND raised_at < $2 AND sender <> unit_code
   AND (CASE WHEN $5 THEN sender = ANY($3::text[]) OR unit_code = ANY($3::text[])
             ELSE sender = ANY($3::text[]) AND unit_code = ANY($3::text[]) END)
 GROUP BY 1, 2, 3, 4"""
"""Each delivery of the period with its alert's figures (migration 0008 keeps them on the
delivery, so no join), counted per unit as written, receiving unit, category and month,
with the times to acknowledge and to confirm of each group. Units merged since and the
totals per direction, category and month are added up in Python: counts add, and the
percentiles are taken over the groups' times put together, as `percentile_cont` would."""

COUNTS = tuple(name for name in FIGURE_FIELDS if not name.endswith("_s"))


class _Tally:
    """Counts and the times behind the percentiles of one group of figures."""

    __slots__ = ("counts", "to_ack", "to_confirm")

    def __init__(self) -> None:
        self.counts = dict.fromkeys(COUNTS, 0)
        self.to_ack: list[np.ndarray] = []
        self.to_confirm: list[np.ndarray] = []

    def add(self, row: asyncpg.Record, to_ack: np.ndarray | None,
            to_confirm: np.ndarray | None) -> None:
        for name in COUNTS:
            self.counts[name] += row[name]
        if to_ack is not None:
            self.to_ack.append(to_ack)
        if to_confirm is not None:
            self.to_confirm.append(to_confirm)

    def figures(self) -> Figures:
        values: dict[str, object] = dict(self.counts)
        for times, median, p90 in ((self.to_ack, "ack_median_s", "ack_p90_s"),
                                   (self.to_confirm, "confirm_median_s", "confirm_p90_s")):
            values[median], values[p90] = _percentiles(times)
        return Figures(**values)  # type: ignore[arg-type]


def _times(values: bytes | None) -> np.ndarray | None:
    """A group's times, sent as their float8 bytes one after another (read as they are:
    no Python float made for each of a period's million)."""
    return None if not values else np.frombuffer(values, dtype=">f8")


def _percentiles(groups: list[np.ndarray]) -> tuple[float | None, float | None]:
    """Median and p90, interpolated between the nearest values as PostgreSQL's
    `percentile_cont` does, rounded to a tenth of a second; None without values."""
    if not groups:
        return None, None
    times = np.concatenate(groups)
    last = len(times) - 1
    # `percentile_cont`'s own arithmetic (float8_lerp: lo + (hi - lo) * proportion), not
    # np.quantile's (which computes some as hi - (hi - lo) * (1 - proportion)): one last bit
    # apart, enough to round a tenth the other way.
    rows = [(q * last, math.floor(q * last), math.ceil(q * last)) for q in (0.5, 0.9)]
    part = np.partition(times, sorted({row for _, *pair in rows for row in pair}))
    median, p90 = (float(part[first]) + (float(part[second]) - float(part[first]))
                   * (position - first) for position, first, second in rows)
    return round(median, 1), round(p90, 1)


def _sum(figures: list[Figures]) -> Figures:
    """Counts added up (the medians of a sum are not sums: left out of totals)."""
    counts = {name: sum(getattr(f, name) for f in figures) for name in COUNTS}
    return Figures(**counts)


def _months(begin: datetime, finish: datetime) -> list[datetime]:
    """The first instants of the (Vietnamese) months from the one `begin` falls in to the
    one after `finish`'s: the bounds `width_bucket` sorts the deliveries into."""
    local = begin.astimezone(ZONE)
    month = datetime(local.year, local.month, 1, tzinfo=ZONE)
    bounds = [month]
    while month < finish:
        month = datetime(month.year + month.month // 12, month.month % 12 + 1, 1, tzinfo=ZONE)
        bounds.append(month)
    return bounds


async def review_report(conn: asyncpg.Connection | asyncpg.Pool, scope: Scope, start: date,
                        end: date, *, now: datetime) -> ReviewReport:
    (begin, finish), (previous_start, previous_end) = periods(start, end)
    previous_begin = datetime.combine(previous_start, time(), ZONE)
    # Every unit with the unit it is today: the codes the deliveries may carry for the
    # units of the report (they and the units merged into them).
    root = {row["code"]: row["root"]
            for row in await conn.fetch(f"{_CHAIN} SELECT code, root FROM chain")}
    codes = sorted(code for code, today in root.items() if today in scope.units)

    async def figures_between(first: datetime, until: datetime) -> list[asyncpg.Record]:
        async with _transaction(conn) as tx:
            # The planner misjudges the few groups a period's deliveries make and would
            # sort them all to group them (a hash table of the groups is several times
            # faster), and would read every delivery rather than the period's block
            # ranges (1.6 s -> 1.2 s per period at a million alerts).
            await tx.execute("SET LOCAL work_mem = '256MB'; SET LOCAL enable_sort = off; "
                             "SET LOCAL enable_seqscan = off")
            return await tx.fetch(_REPORT_SQL, first, until, codes, _months(first, until),
                                  scope.kind == "unit")

    # The two periods are two independent queries: on a pool they run at once on two
    # connections; on one connection, one after the other.
    if isinstance(conn, asyncpg.Pool):
        current, previous = await asyncio.gather(figures_between(begin, finish),
                                                 figures_between(previous_begin, begin))
    else:
        current = await figures_between(begin, finish)
        previous = await figures_between(previous_begin, begin)
    months = [f"{month:%Y-%m}" for month in _months(begin, finish)]
    tallies: dict[tuple[str, str], dict[str, object]] = {}

    def direction(sender: str, receiver: str) -> dict[str, object]:
        return tallies.setdefault((sender, receiver), {
            "current": _Tally(), "previous": _Tally(), "by_category": {}, "by_month": {}})

    if scope.kind != "unit":  # every direction among the parties, even a silent one
        for sender in scope.units:
            for receiver in scope.units:
                if sender != receiver:
                    direction(sender, receiver)
    for rows, which in ((current, "current"), (previous, "previous")):
        for row in rows:
            sender = root.get(row["sender"], row["sender"])
            receiver = root.get(row["receiver"], row["receiver"])
            if sender == receiver:  # (a unit and one merged into it since)
                continue
            entry = direction(sender, receiver)
            times = _times(row["to_ack"]), _times(row["to_confirm"])
            entry[which].add(row, *times)  # type: ignore[attr-defined]
            if which == "current":
                for key, group in ((row["category"], "by_category"),
                                   (months[row["month"] - 1], "by_month")):
                    tallies_by = entry[group]
                    tallies_by.setdefault(key, _Tally()).add(row, *times)  # type: ignore[attr-defined]
    directions = [
        Direction(from_unit=sender, to_unit=receiver,
                  current=entry["current"].figures(),  # type: ignore[attr-defined]
                  previous=entry["previous"].figures(),  # type: ignore[attr-defined]
                  by_category={key: tally.figures() for key, tally in
                               sorted(entry["by_category"].items())},  # type: ignore[attr-defined]
                  by_month={key: tally.figures() for key, tally in
                            sorted(entry["by_month"].items())})  # type: ignore[attr-defined]
        for (sender, receiver), entry in sorted(tallies.items())]
    codes = sorted({code for d in directions for code in (d.from_unit, d.to_unit)}
                   | set(scope.units))
    units = await _units(conn, codes)
    title = scope.title if scope.kind == "agreement" else " – ".join(
        units_by.name for units_by in units if units_by.code in scope.units)
    return ReviewReport(
        scope=scope.kind, title=title, units=units,
        period=Period(start=start, end=end),
        previous_period=Period(start=previous_start, end=previous_end),
        directions=directions,
        totals=_sum([d.current for d in directions]),
        previous_totals=_sum([d.previous for d in directions]),
        generated_at=now)


@contextlib.asynccontextmanager
async def _transaction(conn: asyncpg.Connection | asyncpg.Pool
                       ) -> AsyncIterator[asyncpg.Connection]:
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as held, held.transaction():
            yield held
    else:
        async with conn.transaction():
            yield conn


async def _units(conn: asyncpg.Connection | asyncpg.Pool, codes: list[str]
                 ) -> list[UnitInReport]:
    rows = await conn.fetch(
        f"""{_CHAIN}
            SELECT u.code, u.name,
                   coalesce(array_agg(c.code ORDER BY c.code)
                            FILTER (WHERE c.code <> c.root), '{{}}') AS includes
              FROM units u LEFT JOIN chain c ON c.root = u.code
             WHERE u.code = ANY($1::text[]) GROUP BY u.code, u.name ORDER BY u.code""", codes)
    return [UnitInReport(code=row["code"], name=row["name"], includes=list(row["includes"]))
            for row in rows]


# ---------------------------------------------------------------------------- renderings


def to_csv(report: ReviewReport) -> str:
    """One line per direction, period and group (total, a category, a month)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["from_unit", "to_unit", "period", "group", "key", *FIGURE_FIELDS])

    def line(d: Direction, period: str, group: str, key: str, figures: Figures) -> None:
        writer.writerow([d.from_unit, d.to_unit, period, group, key,
                         *("" if (v := getattr(figures, name)) is None else v
                           for name in FIGURE_FIELDS)])

    for d in report.directions:
        line(d, "current", "total", "", d.current)
        line(d, "previous", "total", "", d.previous)
        for category, figures in d.by_category.items():
            line(d, "current", "category", category, figures)
        for month, figures in d.by_month.items():
            line(d, "current", "month", month, figures)
    return out.getvalue()


def _names(report: ReviewReport) -> dict[str, str]:
    return {unit.code: unit.name for unit in report.units}


def heading(report: ReviewReport, lang: Language) -> list[str]:
    """The report's heading lines, as printed on its first page."""
    scope = label(report.scope, lang)
    p, q = report.period, report.previous_period
    return [label("title", lang), f"{scope}: {report.title}",
            f"{label('period', lang)}: {p.start:%d/%m/%Y} – {p.end:%d/%m/%Y}; "
            f"{label('previous', lang)}: {q.start:%d/%m/%Y} – {q.end:%d/%m/%Y}"]


TABLE_ROWS = ("alerts", "hit_alerts", "incident_alerts", "acknowledged", "confirmed",
              "rejected", "detained", "not_located", "false_match", "caught", "lost",
              "false_report", "late", "escalated", "missed_deadlines", "ack_median_s",
              "ack_p90_s", "confirm_median_s", "confirm_p90_s")


def _value(figures: Figures, name: str) -> str:
    value = getattr(figures, name)
    if value is None:
        return "–"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _bars(pairs: list[tuple[str, list[int]]], colours: tuple[str, ...], title: str,
          legend: list[str]) -> str:
    """A horizontal bar chart as SVG: one row per label, one bar per series (no script,
    no style attribute: the page's Content-Security-Policy allows neither)."""
    width, label_width, row = 640, 230, 18 * max(1, len(colours)) + 10
    top = 40
    height = top + row * max(1, len(pairs)) + 10
    most = max([v for _, values in pairs for v in values] + [1])
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" class="chart" '
             f'viewBox="0 0 {width} {height}" width="{width}" height="{height}">',
             f'<title>{escape(title)}</title>',
             f'<text x="0" y="16" font-size="14" font-weight="bold">{escape(title)}</text>']
    for n, (name, colour) in enumerate(zip(legend, colours, strict=True)):
        x = label_width + n * 160
        parts.append(f'<rect x="{x}" y="24" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{x + 14}" y="33" font-size="11">{escape(name)}</text>')
    for i, (name, values) in enumerate(pairs):
        y = top + i * row
        parts.append(f'<text x="0" y="{y + 14}" font-size="12">{escape(name)}</text>')
        for j, (value, colour) in enumerate(zip(values, colours, strict=True)):
            length = 0 if not value else max(1, math.floor((width - label_width - 50)
                                                           * value / most))
            by = y + j * 18
            parts.append(f'<rect x="{label_width}" y="{by}" width="{length}" height="14" '
                         f'fill="{colour}"><title>{value}</title></rect>'
                         f'<text x="{label_width + length + 4}" y="{by + 12}" '
                         f'font-size="11">{value}</text>')
    parts.append("</svg>")
    return "".join(parts)


def charts(report: ReviewReport, lang: Language) -> list[str]:
    names = _names(report)
    directions = [(f"{names.get(d.from_unit, d.from_unit)} → {names.get(d.to_unit, d.to_unit)}",
                   [d.current.alerts, d.previous.alerts]) for d in report.directions]
    months: dict[str, int] = {}
    for d in report.directions:
        for month, figures in d.by_month.items():
            months[month] = months.get(month, 0) + figures.alerts
    return [
        _bars(directions, ("#1f4e79", "#9db7d5"), label("chart_directions", lang),
              [label("this_period", lang), label("previous", lang)]),
        _bars(sorted((m, [v]) for m, v in months.items()), ("#7a2e1f",),
              label("chart_months", lang), [label("alerts", lang)]),
    ]


def to_html(report: ReviewReport, lang: Language) -> str:
    """The report as an HTML fragment (headings, SVG charts, tables) for the `/reports`
    page and for printing."""
    names = _names(report)
    title, scope_line, period_line = heading(report, lang)
    out = [f'<article class="report" lang="{lang}">',
           '<header><p class="nation">CỘNG HÒA XÃ HỘI CHỦ NGHĨA VIỆT NAM<br>'
           'Độc lập – Tự do – Hạnh phúc</p>' if lang == "vi" else "<header>",
           f"<h1>{escape(title)}</h1><p>{escape(scope_line)}</p>"
           f"<p>{escape(period_line)}</p>", "<ul class=\"units\">"]
    for unit in report.units:
        extra = (f" ({label('includes', lang)} {', '.join(unit.includes)})"
                 if unit.includes else "")
        out.append(f"<li>{escape(unit.code)}: {escape(unit.name)}{escape(extra)}</li>")
    out.append("</ul></header>")
    if not any(d.current.alerts or d.previous.alerts for d in report.directions):
        out.append(f"<p>{escape(label('none', lang))}</p>")
    out += [f'<figure>{chart}</figure>' for chart in charts(report, lang)]
    out.append(_table(label("totals", lang),
                      [(label("this_period", lang), report.totals),
                       (label("previous", lang), report.previous_totals)], lang))
    for d in report.directions:
        caption = (f"{label('direction', lang)}: {names.get(d.from_unit, d.from_unit)} → "
                   f"{names.get(d.to_unit, d.to_unit)}")
        columns = [(label("this_period", lang), d.current), (label("previous", lang),
                                                            d.previous)]
        columns += [(category, figures) for category, figures in d.by_category.items()]
        columns += [(month, figures) for month, figures in d.by_month.items()]
        out.append(_table(caption, columns, lang))
    out.append(f'<p class="generated">{escape(label("generated", lang))}: '
               f'{report.generated_at.astimezone(ZONE):%d/%m/%Y %H:%M}</p></article>')
    return "".join(out)


def _table(caption: str, columns: list[tuple[str, Figures]], lang: Language) -> str:
    head = "".join(f"<th>{escape(name)}</th>" for name, _ in columns)
    body = "".join(
        f"<tr><th>{escape(label(row, lang))}</th>"
        + "".join(f"<td>{_value(figures, row)}</td>" for _, figures in columns) + "</tr>"
        for row in TABLE_ROWS)
    return (f"<table><caption>{escape(caption)}</caption><thead><tr><th></th>{head}</tr>"
            f"</thead><tbody>{body}</tbody></table>")
