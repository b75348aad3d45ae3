"""Review reports ("Báo cáo sơ kết") on a fixture of known alerts over two months, one of
whose units was merged into another: the JSON, the CSV, the page (in Chromium, nothing
fetched from elsewhere) and the PDF (its text read back) agree with hand-counted figures,
and units outside the agreement or pair get 404."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import sys
import uuid
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from playwright.async_api import expect
from pypdf import PdfReader

from services.notifier.app import create_app
from services.notifier.reports import FIGURE_FIELDS, periods, resolve_scope, review_report
from services.notifier.settings import NotifierSettings
from shared.auth import issue_api_key
from shared.directory import merge_unit
from tests.conftest import ROOT, bearer, eventually, served
from tests.notifier_helpers import WANTED, make_hit, send
from tests.test_desk_page import browser  # noqa: F401 - the Chromium fixture

ICT = ZoneInfo("Asia/Ho_Chi_Minh")
PAIR = "CA-30307,CA-31212"
PEPPER = "dev-only-api-key-pepper"
PERIOD = {"from": "2026-09-01", "to": "2026-10-31"}


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=ICT)


async def alert(pool: asyncpg.Pool, raised: str, *, seen: str, owner: str,
                delivered: dict[str, float | None], kind: str = "hit",
                category: str = "wanted_person", decision: str | None = None,
                decided_after: float | None = None, outcome: str | None = None,
                late: bool = False, escalation_level: int = 0) -> None:
    """One stored alert, delivered to `delivered` units (seconds until each acknowledged,
    None: never)."""
    raised_at = at(raised)
    alert_id, hit_id = uuid.uuid4(), uuid.uuid4()
    await pool.execute(
        """INSERT INTO alerts (alert_id, hit_id, entry_id, entry_version, category, owner_unit,
                               seen_unit, source_event_id, correlation_id, seen_at, score, late,
                               hit, status, raised_at, updated_at, kind, decision, decided_at,
                               outcome, escalation_level)
           VALUES ($1, $2, 'E-1', 1, $3, $4, $5, $6, $6, $7::timestamptz, 0.9, $8, '{}'::jsonb,
                   CASE WHEN $11::text IS NOT NULL THEN 'closed'
                        WHEN $9::text IS NOT NULL THEN $9 ELSE 'raised' END,
                   $7, $7, $12, $9,
                   CASE WHEN $9::text IS NOT NULL THEN $7::timestamptz + make_interval(secs => $10) END,
                   $11, $13)""",
        alert_id, hit_id, category, owner, seen, uuid.uuid4(), raised_at, late, decision,
        decided_after or 0.0, outcome, kind, escalation_level)
    for unit, ack in delivered.items():
        await pool.execute(
            """INSERT INTO deliveries (alert_id, unit_code, reasons, delivered_at,
                                       acknowledged_at)
               VALUES ($1, $2, '{}', $3::timestamptz, $3::timestamptz + make_interval(secs => $4))""",
            alert_id, unit, raised_at, ack if ack is not None else 0.0)
        if ack is None:
            await pool.execute("UPDATE deliveries SET acknowledged_at = NULL "
                               "WHERE alert_id = $1 AND unit_code = $2", alert_id, unit)


@pytest.fixture
async def two_months(pool, directory):
    """Alerts between Long Xuyên (CA-30307) and Thốt Nốt (CA-31212), and from Thuận Hưng
    (CA-31207), merged into Thốt Nốt since."""
    # This period (1 Sep - 31 Oct 2026).
    await alert(pool, "2026-09-05T10:00", seen="CA-31212", owner="CA-30307",
                delivered={"CA-30307": 60, "CA-31212": 5}, decision="confirmed",
                decided_after=600, outcome="detained")
    await alert(pool, "2026-09-20T08:00", seen="CA-31207", owner="CA-30307",
                delivered={"CA-30307": 120}, category="stolen_vehicle", decision="rejected",
                decided_after=900, outcome="false_match")
    await alert(pool, "2026-10-02T14:00", seen="CA-31212", owner="CA-30307",
                delivered={"CA-30307": None}, late=True, escalation_level=2)
    await alert(pool, "2026-10-15T09:00", seen="CA-30307", owner="CA-30307", kind="incident",
                category="incident", delivered={"CA-31212": 30, "CA-31237": 40},
                outcome="caught")
    await alert(pool, "2026-10-20T16:00", seen="CA-30307", owner="CA-31212",
                delivered={"CA-31212": 300}, category="missing_person",
                decision="confirmed", decided_after=1200)
    await alert(pool, "2026-10-31T23:30", seen="CA-31212", owner="CA-30307",  # last evening
                delivered={"CA-30307": None})
    # Not in the pair, or not in the periods.
    await alert(pool, "2026-10-10T10:00", seen="CA-31237", owner="CA-30307",
                delivered={"CA-30307": 10})
    await alert(pool, "2026-11-01T00:30", seen="CA-31212", owner="CA-30307",
                delivered={"CA-30307": 10})
    # The previous period (3 Jul - 31 Aug 2026), and a day before it.
    await alert(pool, "2026-08-10T10:00", seen="CA-31212", owner="CA-30307",
                delivered={"CA-30307": 90})
    await alert(pool, "2026-07-02T10:00", seen="CA-31212", owner="CA-30307",
                delivered={"CA-30307": 90})
    async with pool.acquire() as conn:
        await merge_unit(conn, "CA-31207", "CA-31212")


TO_LONG_XUYEN = {  # CA-31212 (with CA-31207) -> CA-30307, this period, counted by hand
    "alerts": 4, "hit_alerts": 4, "incident_alerts": 0, "acknowledged": 2, "confirmed": 1,
    "rejected": 1, "detained": 1, "not_located": 0, "false_match": 1, "caught": 0, "lost": 0,
    "false_report": 0, "late": 1, "escalated": 1, "missed_deadlines": 2,
    "ack_median_s": 90.0, "ack_p90_s": 114.0, "confirm_median_s": 600.0,
    "confirm_p90_s": 600.0}
TO_THOT_NOT = {  # CA-30307 -> CA-31212
    "alerts": 2, "hit_alerts": 1, "incident_alerts": 1, "acknowledged": 2, "confirmed": 1,
    "rejected": 0, "detained": 0, "not_located": 0, "false_match": 0, "caught": 1, "lost": 0,
    "false_report": 0, "late": 0, "escalated": 0, "missed_deadlines": 0,
    "ack_median_s": 165.0, "ack_p90_s": 273.0, "confirm_median_s": 1200.0,
    "confirm_p90_s": 1200.0}


async def test_the_figures_equal_the_hand_counted_ones(notifier, directory, two_months):
    response = await notifier.get("/v1/reports/review", params={"pair": PAIR, **PERIOD},
                                  headers=bearer(directory["CA-30307"]))
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["period"] == {"start": "2026-09-01", "end": "2026-10-31"}
    assert report["previous_period"] == {"start": "2026-07-02", "end": "2026-08-31"}
    assert [(u["code"], u["includes"]) for u in report["units"]] == [
        ("CA-30307", []), ("CA-31212", ["CA-31207"])]
    directions = {(d["from_unit"], d["to_unit"]): d for d in report["directions"]}
    assert set(directions) == {("CA-31212", "CA-30307"), ("CA-30307", "CA-31212")}
    to_lx = directions[("CA-31212", "CA-30307")]
    assert to_lx["current"] == TO_LONG_XUYEN
    assert to_lx["previous"]["alerts"] == 2  # 2 Jul counts: the previous period is 61 days
    assert to_lx["by_category"]["wanted_person"]["alerts"] == 3
    assert to_lx["by_category"]["stolen_vehicle"]["alerts"] == 1
    assert {m: f["alerts"] for m, f in to_lx["by_month"].items()} == {"2026-09": 2,
                                                                       "2026-10": 2}
    to_tn = directions[("CA-30307", "CA-31212")]
    assert to_tn["current"] == TO_THOT_NOT
    assert to_tn["previous"]["alerts"] == 0
    assert sorted(to_tn["by_category"]) == ["incident", "missing_person"]
    assert report["totals"]["alerts"] == 6 and report["totals"]["confirmed"] == 2
    assert report["totals"]["ack_median_s"] is None  # medians are not summed
    assert report["previous_totals"]["alerts"] == 2

    # The CSV has the same figures.
    text = await notifier.get("/v1/reports/review.csv", params={"pair": PAIR, **PERIOD},
                              headers=bearer(directory["CA-31212"]))
    assert text.status_code == 200 and text.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(text.text)))
    [total] = [r for r in rows if (r["from_unit"], r["to_unit"], r["period"], r["group"])
               == ("CA-31212", "CA-30307", "current", "total")]
    assert {k: total[k] for k in TO_LONG_XUYEN} == {
        k: "" if v is None else str(v) for k, v in TO_LONG_XUYEN.items()}
    [month] = [r for r in rows if r["group"] == "month" and r["key"] == "2026-09"
               and r["from_unit"] == "CA-31212"]
    assert month["alerts"] == "2"


async def test_the_agreement_report_counts_the_merged_party_as_its_successor(
        notifier, directory, two_months, pool):
    agreement = await pool.fetchval(
        "SELECT id FROM agreements WHERE title LIKE 'Quy chế phối hợp địa bàn giáp ranh%'")
    response = await notifier.get("/v1/reports/review",
                                  params={"agreement": agreement, **PERIOD},
                                  headers=bearer(directory["CA-30307"]))
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["title"].startswith("Quy chế phối hợp địa bàn giáp ranh Long Xuyên")
    assert "CA-31207" not in [u["code"] for u in report["units"]]
    directions = {(d["from_unit"], d["to_unit"]): d for d in report["directions"]}
    assert directions[("CA-31212", "CA-30307")]["current"] == TO_LONG_XUYEN
    # Vĩnh Trinh (CA-31237) is a party too: its alert to Long Xuyên and the incident's copy.
    assert directions[("CA-31237", "CA-30307")]["current"]["alerts"] == 1
    assert directions[("CA-30307", "CA-31237")]["current"]["incident_alerts"] == 1
    # Every ordered pair of the (current) parties is listed, silent ones with zeros.
    parties = {u["code"] for u in report["units"]}
    assert len(directions) == len(parties) * (len(parties) - 1)


async def test_units_outside_the_agreement_or_pair_get_404(notifier, directory, two_months,
                                                           pool):
    outsider = bearer(directory["CA-22051"])  # Sông Cầu, far away
    for params in ({"pair": PAIR}, {"unit": "CA-30307"}, {"agreement": await pool.fetchval(
            "SELECT id FROM agreements WHERE title LIKE 'Quy chế phối hợp địa bàn%'")}):
        for path in ("/v1/reports/review", "/v1/reports/review.csv", "/v1/reports/review.pdf"):
            response = await notifier.get(path, params={**params, **PERIOD}, headers=outsider)
            assert response.status_code == 404, (path, params, response.text)
            assert response.json()["error"]["code"] == "not_found"
    # An agreement that does not exist answers as one the outsider is not party to (or any
    # unit could tell which agreement ids exist).
    answers = [(await notifier.get("/v1/reports/review", headers=outsider, params={
        "agreement": agreement, **PERIOD})).json() for agreement in (params["agreement"], 99999)]
    assert answers[0] == answers[1], answers
    # Bad periods and scopes: 422 naming the field.
    mine = bearer(directory["CA-30307"])
    for params, field in (({"pair": PAIR, "from": "2026-10-01", "to": "2026-09-01"}, "to"),
                          ({"pair": PAIR, "from": "2020-01-01", "to": "2026-01-01"}, "to"),
                          ({"pair": "CA-30307,CA-30307", **PERIOD}, "pair"),
                          ({"pair": PAIR, "unit": "CA-30307", **PERIOD}, "unit"),
                          ({"pair": PAIR, "from": "yesterday", "to": "2026-01-01"}, "from"),
                          ({"pair": PAIR, "from": "0001-01-01", "to": "0001-01-02"}, "from"),
                          ({"pair": PAIR, "from": "9999-12-30", "to": "9999-12-31"}, "from"),
                          ({"pair": PAIR, "from": "2026-01-01", "to": "9999-12-31"}, "to")):
        response = await notifier.get("/v1/reports/review", params=params, headers=mine)
        assert response.status_code == 422, (params, response.text)
        assert response.json()["error"]["field"] == field, response.json()


STALE_SQL = """SELECT count(*) FROM deliveries d JOIN alerts a USING (alert_id)
                WHERE (d.raised_at, d.sender, d.kind, d.category, d.late, d.decision,
                       d.decided_at, d.outcome, d.escalation_level)
                      IS DISTINCT FROM
                      (a.raised_at, CASE WHEN a.kind = 'incident' THEN a.owner_unit
                                         ELSE a.seen_unit END,
                       a.kind, a.category, a.late, a.decision, a.decided_at, a.outcome,
                       a.escalation_level)"""
"""Deliveries whose copy of their alert's figures (migration 0008) differs from the alert."""


async def test_a_confirmation_on_the_desk_counts_as_confirmed(
        env, notifier, directory, topics, pool):
    """The decision is kept on the alert by the workflow itself (closing does not lose
    it), so the report counts what the desk did."""
    hit = make_hit(WANTED)
    await send(env, hit)
    owner = bearer(directory["CA-30307"])
    [alert_view] = await eventually(
        lambda: _alerts(notifier, owner), what="the alert at the listing unit")
    alert_id = alert_view["alert_id"]
    assert (await notifier.post(f"/v1/alerts/{alert_id}/confirm", headers=owner)
            ).status_code == 200
    assert (await notifier.post(f"/v1/alerts/{alert_id}/close", json={"outcome": "detained"},
                                headers=owner)).status_code == 200
    today = datetime.now(ICT).date()
    response = await notifier.get("/v1/reports/review", headers=owner, params={
        "unit": "CA-30307", "from": str(today - timedelta(days=1)), "to": str(today)})
    [direction] = [d for d in response.json()["directions"]
                   if d["to_unit"] == "CA-30307"]
    assert direction["current"]["confirmed"] == 1
    assert direction["current"]["detained"] == 1
    # Written, confirmed and closed by the notifier itself: every delivery's copy of the
    # alert's figures is the alert's.
    assert await pool.fetchval("SELECT count(*) FROM deliveries") >= 2
    assert await pool.fetchval(STALE_SQL) == 0


async def _alerts(notifier, headers):
    return (await notifier.get("/v1/alerts", headers=headers)).json()


async def test_the_pdf_has_the_vietnamese_title(env, tmp_path, directory, two_months):
    out = tmp_path / "so-ket.pdf"
    done = subprocess.run(
        [sys.executable, "-m", "giapranh.cli", "report", "review", "--pair", PAIR,
         "--from", PERIOD["from"], "--to", PERIOD["to"], "--pdf", str(out), "--json",
         str(tmp_path / "report.json"), "--database-url", env.database_url],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    text = "\n".join(page.extract_text() for page in PdfReader(out).pages)
    assert "BÁO CÁO SƠ KẾT CÔNG TÁC PHỐI HỢP TRAO ĐỔI THÔNG TIN" in text
    assert "Công an phường Thốt Nốt" in text
    assert "Kỳ báo cáo: 01/09/2026 – 31/10/2026" in text
    report = json.loads((tmp_path / "report.json").read_text())
    [direction] = [d for d in report["directions"] if d["from_unit"] == "CA-31212"]
    assert direction["current"] == TO_LONG_XUYEN
    # The terminal table too.
    assert "CA-31212 → CA-30307" in done.stdout


async def test_the_page_draws_its_charts_with_nothing_from_elsewhere(
        env, topics, directory, two_months, browser):  # noqa: F811
    app = create_app(env.settings(NotifierSettings))
    async with served(app) as url:
        context = await browser.new_context()
        await context.add_init_script(
            f"sessionStorage.setItem('giapranh.key', {json.dumps(directory['CA-30307'])})")
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        await page.goto(f"{url}/reports?pair={PAIR}&from={PERIOD['from']}&to={PERIOD['to']}")
        await expect(page.locator("h1")).to_have_text(
            "BÁO CÁO SƠ KẾT CÔNG TÁC PHỐI HỢP TRAO ĐỔI THÔNG TIN")
        charts = page.locator("svg.chart")
        await expect(charts).to_have_count(2)
        # The direction chart has a bar per direction and period, sized by the figures.
        bars = await page.locator("svg.chart").first.locator("rect title").all_text_contents()
        assert sorted(bars) == sorted(["4", "2", "2", "0"])
        await expect(page.locator("caption").first).to_have_text("Tổng hợp")
        await page.select_option("#lang", "en")
        await expect(page.locator("h1")).to_have_text(
            "REVIEW REPORT ON COORDINATION AND INFORMATION EXCHANGE")
        assert errors == []
        assert requests and all(r.startswith(url) for r in requests), requests
        await context.close()


async def test_a_province_admin_sees_the_reports_of_its_units_only(notifier, pool,
                                                                   two_months):
    """An Giang's admin sees the Long Xuyên – Thốt Nốt border (Long Xuyên is An Giang's)
    and Long Xuyên's own report, not Thốt Nốt's (Cần Thơ's); a desk key at the same
    provincial office, or another province's admin, sees none of them."""
    an_giang = bearer(await issue_api_key(pool, "CAT-91", PEPPER, role="province_admin",
                                          person="Thiếu tá Võ Minh"))
    an_giang_desk = bearer(await issue_api_key(pool, "CAT-91", PEPPER, role="desk"))
    dak_lak = bearer(await issue_api_key(pool, "CAT-66", PEPPER, role="province_admin"))
    agreement = await pool.fetchval(
        "SELECT id FROM agreements WHERE title LIKE 'Quy chế phối hợp địa bàn%'")
    for params, headers, status in (
            ({"pair": PAIR}, an_giang, 200),
            ({"unit": "CA-30307"}, an_giang, 200),
            ({"agreement": agreement}, an_giang, 200),
            ({"unit": "CA-31212"}, an_giang, 404),
            ({"unit": "CA-31207"}, an_giang, 404),  # merged into Cần Thơ's Thốt Nốt
            ({"pair": PAIR}, an_giang_desk, 404),
            ({"pair": PAIR}, dak_lak, 404),
            ({"agreement": agreement}, dak_lak, 404)):
        response = await notifier.get("/v1/reports/review", params={**params, **PERIOD},
                                      headers=headers)
        assert response.status_code == status, (params, response.text)
        if status == 200:
            assert response.json()["totals"]["alerts"] > 0
        else:
            assert response.json()["error"]["code"] == "not_found"


async def test_one_connection_gives_the_same_report_as_a_pool(env, pool, two_months):
    """On a pool the two periods are read at once on two connections; on one connection
    one after the other: the same report either way."""
    agreement = await pool.fetchval(
        "SELECT id FROM agreements WHERE title LIKE 'Quy chế phối hợp địa bàn%'")
    now = datetime.now(ICT)
    conn = await asyncpg.connect(env.database_url)
    try:
        for params in ({"agreement": agreement, "pair": None, "unit": None},
                       {"agreement": None, "pair": PAIR, "unit": None},
                       {"agreement": None, "pair": None, "unit": "CA-30307"}):
            scope = await resolve_scope(pool, **params)
            on_pool = await review_report(pool, scope, date(2026, 9, 1), date(2026, 10, 31),
                                          now=now)
            alone = await review_report(conn, scope, date(2026, 9, 1), date(2026, 10, 31),
                                        now=now)
            assert on_pool == alone
            assert on_pool.totals.alerts > 0 and on_pool.previous_totals.alerts > 0
    finally:
        await conn.close()


async def test_reports_run_one_at_a_time_and_leave_the_pool_to_the_alerts(
        notifier, directory, pool, env, two_months):
    """Four reports asked at once (two by each unit of the pair): while the deliveries are
    locked, only one report (its two periods, two connections) waits on the lock; the
    others wait their turn without taking a connection, so the rest of the pool stays
    free. A unit's third report at once is refused at once (429), not queued: one key
    could otherwise queue hundreds, each counted among the requests in flight, and the
    desks' requests were refused for minutes. Then all four answer, with the same figures."""
    keys = [bearer(directory["CA-30307"]), bearer(directory["CA-31212"])]
    locker = await asyncpg.connect(env.database_url)
    try:
        waiting = """SELECT count(*) FROM pg_locks
                      WHERE relation = 'deliveries'::regclass AND NOT granted"""
        async with locker.transaction():
            await locker.execute("LOCK TABLE deliveries IN ACCESS EXCLUSIVE MODE")
            asked = [asyncio.create_task(notifier.get(
                "/v1/reports/review", params={"pair": PAIR, **PERIOD}, headers=key))
                for key in keys * 2]

            async def two_waiting() -> bool:
                return await locker.fetchval(waiting) == 2
            await eventually(two_waiting, what="one report's two queries on the lock")
            for _ in range(20):  # and never more, while the lock is held
                assert await locker.fetchval(waiting) == 2, await locker.fetch(
                    "SELECT pid, mode, granted FROM pg_locks WHERE relation = 'deliveries'::regclass")
                await asyncio.sleep(0.05)
            third = await notifier.get("/v1/reports/review.pdf", params={"pair": PAIR, **PERIOD},
                                       headers=keys[0])
            assert third.status_code == 429, third.text
            assert third.json()["error"]["code"] == "rate_limited"
            assert third.headers["retry-after"] == "5"
        answers = await asyncio.gather(*asked)
    finally:
        await locker.close()
    assert [a.status_code for a in answers] == [200] * 4
    assert len({json.dumps(a.json()["totals"]) for a in answers}) == 1


# The report as first written: one SQL aggregate joining the alerts with their deliveries,
# units mapped to the unit they are today in SQL, grouping sets and `percentile_cont`. The
# report now reads the figures kept on each delivery (migration 0008) and adds the groups
# up in Python; on varied data the two must agree.
ORACLE_SQL = """WITH RECURSIVE chain (code, root) AS (
    SELECT code, code FROM units WHERE successor_code IS NULL
    UNION ALL
    SELECT u.code, c.root FROM units u JOIN chain c ON u.successor_code = c.code),
flows AS (
    SELECT coalesce(s.root, a.sender) AS sender, coalesce(r.root, d.unit_code) AS receiver,
           a.raised_at >= $2 AS current, a.kind, a.category,
           to_char(a.raised_at AT TIME ZONE 'Asia/Ho_Chi_Minh', 'YYYY-MM') AS month,
           d.acknowledged_at IS NOT NULL AS acknowledged,
           extract(epoch FROM d.acknowledged_at - d.delivered_at) AS to_ack,
           a.decision, a.outcome, a.late, a.escalation_level,
           CASE WHEN a.decision = 'confirmed'
                THEN extract(epoch FROM a.decided_at - a.raised_at) END AS to_confirm
      FROM (SELECT alert_id, raised_at, kind, category, decision, outcome, late,
                   escalation_level, decided_at,
                   CASE WHEN kind = 'incident' THEN owner_unit ELSE seen_unit END AS sender
              FROM alerts WHERE raised_at >= $1 AND raised_at < $3) a
      JOIN deliveries d USING (alert_id)
      LEFT JOIN chain s ON s.code = a.sender
      LEFT JOIN chain r ON r.code = d.unit_code)
SELECT sender, receiver, current, category, month,
       GROUPING(category) = 0 AS by_category, GROUPING(month) = 0 AS by_month,
       count(*) AS alerts,
       count(*) FILTER (WHERE kind = 'hit') AS hit_alerts,
       count(*) FILTER (WHERE kind = 'incident') AS incident_alerts,
       count(*) FILTER (WHERE acknowledged) AS acknowledged,
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
       percentile_cont(0.5) WITHIN GROUP (ORDER BY to_ack) AS ack_median_s,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY to_ack) AS ack_p90_s,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY to_confirm) AS confirm_median_s,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY to_confirm) AS confirm_p90_s
  FROM flows
 WHERE sender <> receiver
   AND (CASE WHEN $5 THEN sender = ANY($4::text[]) OR receiver = ANY($4::text[])
             ELSE sender = ANY($4::text[]) AND receiver = ANY($4::text[]) END)
 GROUP BY GROUPING SETS ((sender, receiver, current), (sender, receiver, current, category),
                         (sender, receiver, current, month))"""


def _close(report: dict[str, object], oracle: dict[str, object]) -> None:
    for name, value in oracle.items():
        if name.endswith("_s") and value is not None:
            assert report[name] == round(value, 1), name
        else:
            assert report[name] == value, name


async def test_the_report_equals_the_join_of_alerts_and_deliveries(env, pool, directory):
    """4,000 alerts over four months among the Long Xuyên – Cần Thơ parties (the
    benchmark's generator: both kinds, every category, acknowledged or not, decided,
    late, escalated), then decided, closed and escalated again after their deliveries
    were written, and a party merged into another: each direction, category and month of
    the agreement's, a pair's and a unit's report equals what the alerts joined with their
    deliveries give, as the report first computed it."""
    from benchmarks.reports import PARTIES, fill
    async with pool.acquire() as conn:
        await fill(conn, 4_000)
        # Changed after the deliveries were written: the deliveries must follow.
        await conn.execute(
            """UPDATE alerts SET outcome = (ARRAY['not_located', 'false_match', 'caught',
                                                 'lost', 'false_report'])[1 + abs(hashtext(hit_id::text)) % 5],
                                 escalation_level = escalation_level + 2,
                                 decision = CASE WHEN decision IS NULL THEN 'confirmed' END,
                                 decided_at = CASE WHEN decision IS NULL
                                                   THEN raised_at + interval '77 seconds' END
                WHERE abs(hashtext(alert_id::text)) % 5 = 0""")
        await merge_unit(conn, "CA-31207", "CA-31212")
        assert await conn.fetchval(STALE_SQL) == 0
        assert await conn.fetchval("SELECT count(*) FROM deliveries") > 9_000
    agreement = await pool.fetchval(
        "SELECT id FROM agreements WHERE title LIKE 'Quy chế phối hợp địa bàn giáp ranh%'")
    start, end = date(2026, 9, 1), date(2026, 10, 31)
    (begin, finish), (previous_start, _) = periods(start, end)
    previous_begin = datetime.combine(previous_start, datetime.min.time(), ICT)
    for params in ({"agreement": agreement, "pair": None, "unit": None},
                   {"agreement": None, "pair": "CA-30307,CA-31207", "unit": None},
                   {"agreement": None, "pair": None, "unit": PARTIES[0]}):
        scope = await resolve_scope(pool, **params)
        report = await review_report(pool, scope, start, end, now=datetime.now(ICT))
        oracle = await pool.fetch(ORACLE_SQL, previous_begin, begin, finish, scope.units,
                                  scope.kind == "unit")
        directions = {(d.from_unit, d.to_unit): d for d in report.directions}
        assert oracle and len(directions) >= 2
        seen: set[tuple[str, str]] = set()
        for row in oracle:
            figures = {name: row[name] for name in FIGURE_FIELDS}
            direction = directions[(row["sender"], row["receiver"])]
            seen.add((row["sender"], row["receiver"]))
            if row["by_category"]:
                if row["current"]:
                    _close(direction.by_category[row["category"]].model_dump(), figures)
            elif row["by_month"]:
                if row["current"]:
                    _close(direction.by_month[row["month"]].model_dump(), figures)
            else:
                _close((direction.current if row["current"] else direction.previous
                        ).model_dump(), figures)
        for key, direction in directions.items():  # and nothing the join does not have
            if key not in seen:
                assert direction.current.alerts == direction.previous.alerts == 0, key
            assert sum(f.alerts for f in direction.by_month.values()) == \
                direction.current.alerts == sum(f.alerts for f in direction.by_category.values())


async def test_percentiles_are_postgresqls_to_the_last_bit(pool):
    """Medians and p90s computed from the groups' times are `percentile_cont`'s, rounded:
    20,000 small groups of times with two decimals (where a tenth is often a tie) agree
    exactly (np.quantile's interpolation differed in ~1 group in 2,000)."""
    import random

    import numpy as np

    from services.notifier.reports import _percentiles
    rng = random.Random(14)
    groups = [[round(rng.uniform(0, 100), 2) for _ in range(rng.randint(1, 5))]
              for _ in range(20_000)]
    rows = await pool.fetch(
        """SELECT g, percentile_cont(0.5) WITHIN GROUP (ORDER BY t) AS median,
                  percentile_cont(0.9) WITHIN GROUP (ORDER BY t) AS p90
             FROM unnest($1::int[], $2::float8[]) AS x (g, t) GROUP BY g""",
        [n for n, times in enumerate(groups) for _ in times],
        [t for times in groups for t in times])
    differ = [(groups[row["g"]], row["median"], row["p90"]) for row in rows
              if _percentiles([np.array(groups[row["g"]])]) != (
                  round(row["median"], 1), round(row["p90"], 1))]
    assert len(rows) == len(groups)
    assert differ == [], differ[:5]


async def test_a_delivery_written_while_its_alert_changes_keeps_the_change(env, pool):
    """Another writer adds a delivery (its figures filled by the database) while the
    alert is being decided in another transaction: whichever commits first, the delivery
    ends with the decision (without the alert's row locked it kept the figures from
    before, and the report counted it undecided)."""
    from benchmarks.reports import fill
    async with pool.acquire() as conn:
        await fill(conn, 20)
        alert_id = await conn.fetchval(
            "SELECT alert_id FROM alerts WHERE decision IS NULL LIMIT 1")
    unit = "CA-39999"  # (a unit it was not delivered to)
    writer = await asyncpg.connect(env.database_url)
    decider = await asyncpg.connect(env.database_url)
    try:
        adding = writer.transaction()
        await adding.start()
        await writer.execute("INSERT INTO deliveries (alert_id, unit_code, reasons) "
                             "VALUES ($1, $2, '{}')", alert_id, unit)
        deciding = asyncio.create_task(decider.execute(
            "UPDATE alerts SET decision = 'confirmed', decided_at = now() "
            "WHERE alert_id = $1", alert_id))
        await asyncio.sleep(0.3)
        await adding.commit()
        await asyncio.wait_for(deciding, timeout=10)
    finally:
        await writer.close()
        await decider.close()
    assert await pool.fetchval(
        "SELECT decision FROM deliveries WHERE alert_id = $1 AND unit_code = $2",
        alert_id, unit) == "confirmed"
    assert await pool.fetchval(STALE_SQL) == 0


async def test_a_delivery_names_an_alert_that_exists_without_a_key_checked_per_row(env, pool):
    """Migration 0012 dropped the per-row foreign key from deliveries to alerts (its cost on
    the hot path); the same guarantees hold: a delivery of no alert is refused by either
    writer's path, an alert's deletion takes its deliveries with it, and an alert's id
    cannot change under its deliveries."""
    from benchmarks.reports import fill
    from services.notifier.repository import AlertRepository
    async with pool.acquire() as conn:
        await fill(conn, 4)
        gone, kept = [row["alert_id"] for row in await conn.fetch(
            "SELECT alert_id FROM alerts ORDER BY raised_at LIMIT 2")]
        nowhere = uuid.uuid4()
        with pytest.raises(asyncpg.NotNullViolationError):
            await conn.execute("INSERT INTO deliveries (alert_id, unit_code, reasons) "
                               "VALUES ($1, 'CA-39999', '{}')", nowhere)
        async with conn.transaction():
            with pytest.raises(asyncpg.NotNullViolationError):
                await AlertRepository.insert_deliveries(
                    conn, [(nowhere, "CA-39999", ["adjacent"], None, datetime.now(ICT))])
        assert await conn.fetchval("SELECT count(*) FROM deliveries WHERE alert_id = $1",
                                   nowhere) == 0
        assert await conn.fetchval("SELECT count(*) FROM deliveries WHERE alert_id = $1",
                                   gone) > 0
        await conn.execute("DELETE FROM alerts WHERE alert_id = $1", gone)
        assert await conn.fetchval("SELECT count(*) FROM deliveries WHERE alert_id = $1",
                                   gone) == 0
        assert await conn.fetchval("SELECT count(*) FROM deliveries WHERE alert_id = $1",
                                   kept) > 0
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await conn.execute("UPDATE alerts SET alert_id = $2 WHERE alert_id = $1",
                               kept, uuid.uuid4())


async def test_the_overdue_count_reads_past_deadlines_and_escalations_through_indexes(pool):
    """The overdue gauge counts open alerts past their deadline or escalated, and does not
    read every open alert to do so (over 80,000 unacknowledged alerts it took ~100 ms)."""
    from benchmarks.reports import fill
    from services.notifier.repository import AlertRepository
    async with pool.acquire() as conn:
        await fill(conn, 40)
        await conn.execute("UPDATE alerts SET status = 'raised', escalation_level = 0, "
                           "confirm_by = now() + interval '1 hour'")
        ids = [row["alert_id"] for row in await conn.fetch(
            "SELECT alert_id FROM alerts ORDER BY alert_id LIMIT 4")]
        await conn.execute("UPDATE alerts SET confirm_by = now() - interval '1 minute' "
                           "WHERE alert_id = $1", ids[0])
        await conn.execute("UPDATE alerts SET escalation_level = 1 WHERE alert_id = $1", ids[1])
        await conn.execute("UPDATE alerts SET escalation_level = 2, confirm_by = NULL "
                           "WHERE alert_id = $1", ids[2])
        await conn.execute("UPDATE alerts SET status = 'confirmed', escalation_level = 1, "
                           "confirm_by = now() - interval '1 minute' WHERE alert_id = $1",
                           ids[3])
        await conn.execute("ANALYZE alerts")
        repo = AlertRepository(pool)
        assert await repo.count_overdue(datetime.now(ICT)) == 3
        await conn.execute("SET enable_seqscan = off")
        plan = "\n".join(row[0] for row in await conn.fetch(
            "EXPLAIN SELECT count(*) FROM alerts WHERE status IN ('raised', 'acknowledged') "
            "AND escalation_level > 0 AND (confirm_by > now() OR confirm_by IS NULL)"))
        assert "alerts_escalated_open" in plan
