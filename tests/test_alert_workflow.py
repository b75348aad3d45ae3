"""The alert workflow through the real broker and database, on an injectable clock:
acknowledge, confirm or reject, close with an outcome; missed deadlines escalate; a
cancelled entry withdraws its open alerts; every step is the right unit's alone."""

import asyncio
from datetime import UTC, datetime
from uuid import UUID

import pytest

from services.notifier.app import create_app
from services.notifier.clock import ManualClock
from services.notifier.settings import NotifierSettings
from tests.conftest import _serve, bearer, eventually
from tests.notifier_helpers import MANAGED, WANTED, alert_of, make_hit, send, withdrawal


@pytest.fixture
def clock():
    return ManualClock(datetime(2026, 11, 20, 14, 0, tzinfo=UTC))


@pytest.fixture
async def desk(env, topics, directory, clock):
    settings = env.settings(NotifierSettings, deadline_check_seconds=0.05)
    async for client in _serve(create_app(settings, clock=clock)):
        yield client


async def raised(desk, directory, hit, unit="CA-30307"):
    return await eventually(lambda: alert_of(desk, directory[unit], hit),
                            what=f"the alert at {unit}")


async def act(desk, key, alert, action, **body):
    return await desk.post(f"/v1/alerts/{alert['alert_id']}/{action}", headers=bearer(key),
                           json=body or None)


async def history(desk, key, alert):
    response = await desk.get(f"/v1/alerts/{alert['alert_id']}/history", headers=bearer(key))
    assert response.status_code == 200
    return [(step["action"], step["unit_code"]) for step in response.json()]


async def test_acknowledge_confirm_close_with_the_right_units_only(env, desk, directory, clock):
    hit = make_hit(WANTED)  # listed by CA-30307, seen in CA-31212
    await send(env, hit)
    alert = await raised(desk, directory, hit)
    assert alert["status"] == "raised" and alert["actions"] == ["acknowledge", "confirm", "reject"]
    seen_key, owner_key = directory["CA-31212"], directory["CA-30307"]

    clock.advance(minutes=2)
    acked = await act(desk, seen_key, alert, "ack")
    assert acked.status_code == 200
    assert acked.json()["status"] == "acknowledged"
    assert acked.json()["acknowledged_at"] == "2026-11-20T14:02:00Z"
    assert acked.json()["actions"] == []  # the seen unit waits for the owner's word

    early_close = await act(desk, seen_key, alert, "close", outcome="detained")
    assert early_close.status_code == 409
    assert early_close.json()["error"]["code"] == "invalid_transition"
    not_theirs = await act(desk, seen_key, alert, "confirm")
    assert not_theirs.status_code == 403
    assert "only the listing unit CA-30307" in not_theirs.json()["error"]["message"]
    outsider = await act(desk, directory["CA-22051"], alert, "confirm")
    assert outsider.status_code == 404  # not addressed to Sông Cầu: as if it did not exist
    no_reason = await act(desk, owner_key, alert, "reject")
    assert no_reason.status_code == 422

    clock.advance(minutes=3)
    confirmed = await act(desk, owner_key, alert, "confirm", note="còn hiệu lực truy nã")
    assert confirmed.status_code == 200
    assert confirmed.json()["status"] == "confirmed"
    assert confirmed.json()["decided_by"] == "CA-30307"
    assert confirmed.json()["confirm_by"] is None
    twice = await act(desk, owner_key, alert, "confirm")
    assert twice.status_code == 409

    bad_outcome = await act(desk, seen_key, alert, "close", outcome="escaped")
    assert bad_outcome.status_code == 422
    assert bad_outcome.json()["error"]["field"] == "outcome"
    closed = await act(desk, seen_key, alert, "close", outcome="detained", note="tại bến phà")
    assert closed.status_code == 200
    assert closed.json()["status"] == "closed" and closed.json()["outcome"] == "detained"
    assert await history(desk, owner_key, alert) == [
        ("raised", None), ("acknowledged", "CA-31212"), ("confirmed", "CA-30307"),
        ("closed", "CA-31212")]
    closed_list = await desk.get("/v1/alerts?status=closed", headers=bearer(owner_key))
    assert [a["alert_id"] for a in closed_list.json()] == [alert["alert_id"]]
    assert (await desk.get("/v1/alerts?status=open", headers=bearer(owner_key))).json() == []


async def test_acknowledging_at_once_many_times_is_one_step_and_a_closed_alert_refuses_it(
    env, desk, directory, clock, pool
):
    """Eight acknowledgements of one unit at the same time: one history step, one audit
    record, one acknowledgement time (each used to be recorded, the last time winning).
    A unit that had not acknowledged a closed alert cannot any more: 409."""
    hit = make_hit(WANTED)
    await send(env, hit)
    alert = await raised(desk, directory, hit)
    seen_key, owner_key = directory["CA-31212"], directory["CA-30307"]
    clock.advance(minutes=2)
    answers = await asyncio.gather(*(act(desk, seen_key, alert, "ack") for _ in range(8)))
    assert [a.status_code for a in answers] == [200] * 8
    assert {a.json()["acknowledged_at"] for a in answers} == {"2026-11-20T14:02:00Z"}
    assert await history(desk, owner_key, alert) == [
        ("raised", None), ("acknowledged", "CA-31212")]
    assert await pool.fetchval(
        "SELECT count(*) FROM audit_log WHERE action = 'alert.acknowledged' AND subject = $1",
        alert["alert_id"]) == 1

    others = [code for code in await pool.fetchval(
        "SELECT array_agg(unit_code) FROM deliveries WHERE alert_id = $1", UUID(
            alert["alert_id"])) if code not in ("CA-31212", "CA-30307") and code in directory]
    assert others, "the alert has a third recipient"
    assert (await act(desk, owner_key, alert, "confirm")).status_code == 200
    assert (await act(desk, seen_key, alert, "close", outcome="detained")).status_code == 200
    late = await act(desk, directory[others[0]], alert, "ack")
    assert late.status_code == 409, late.text
    assert late.json()["error"]["code"] == "invalid_transition"
    assert late.json()["error"]["field"] == "status"
    assert [step for step, _ in await history(desk, owner_key, alert)] == [
        "raised", "acknowledged", "confirmed", "closed"]


async def test_a_missed_deadline_renotifies_and_escalates_up_the_chain(env, desk, directory, clock):
    urgent, routine = make_hit(WANTED), make_hit(MANAGED, seen="CA-26767")
    await send(env, urgent, routine)
    alert = await raised(desk, directory, urgent)
    slow = await raised(desk, directory, routine, "CA-25966")
    assert alert["confirm_by"] == "2026-11-20T14:10:00Z"   # urgent: 10 minutes
    assert slow["confirm_by"] == "2026-11-20T15:00:00Z"    # routine: 1 hour
    province_key = directory["CAT-91"]  # An Giang province police, above CA-30307
    assert await alert_of(desk, province_key, urgent) is None

    clock.advance(minutes=9, seconds=59)
    await eventually(lambda: _overdue_gauge_is(desk, 0), what="a deadline check")
    assert await alert_of(desk, province_key, urgent) is None

    clock.advance(seconds=2)
    escalated = await eventually(lambda: alert_of(desk, province_key, urgent),
                                 what="the escalation to the province police")
    assert escalated["why_you"] == [
        "escalated: CA-30307 did not confirm within 10 min (deadline 1)"]
    assert escalated["overdue"] is True and escalated["escalation_level"] == 1
    assert escalated["actions"] == ["acknowledge", "confirm", "reject"]  # it may decide
    assert escalated["unit_names"]["CAT-91"] == "Công an tỉnh An Giang"
    assert escalated["confirm_by"] == "2026-11-20T14:20:01Z"
    overdue = await desk.get("/v1/alerts?status=overdue", headers=bearer(directory["CA-30307"]))
    assert [a["alert_id"] for a in overdue.json()] == [alert["alert_id"]]
    assert (await alert_of(desk, directory["CA-25966"], routine))["overdue"] is False
    await eventually(lambda: _overdue_gauge_is(desk, 1), what="the overdue gauge")

    clock.advance(minutes=10)  # a second miss: nobody above the province; re-notified
    second = await eventually(lambda: _level(desk, province_key, urgent, 2),
                              what="the second escalation")
    assert second["why_you"] == escalated["why_you"]
    assert [step for step in await history(desk, province_key, alert)] == [
        ("raised", None), ("escalated", "CAT-91"), ("escalated", None)]

    # The province confirms on behalf of its ward police.
    confirmed = await act(desk, province_key, alert, "confirm")
    assert confirmed.status_code == 200 and confirmed.json()["decided_by"] == "CAT-91"
    assert confirmed.json()["overdue"] is False

    clock.advance(minutes=40)  # 1 h 0 min 1 s after raising: the routine one escalates
    late = await eventually(lambda: alert_of(desk, directory["CAT-79"], routine),
                            what="the routine escalation")
    assert late["why_you"] == ["escalated: CA-25966 did not confirm within 60 min (deadline 1)"]


async def test_a_cancelled_entry_withdraws_its_open_alerts_only(env, desk, directory, clock):
    done, open_one = make_hit(WANTED), make_hit(WANTED)
    await send(env, done)
    first = await raised(desk, directory, done)
    owner_key = directory["CA-30307"]
    await act(desk, owner_key, first, "reject", note="không phải đối tượng")
    await act(desk, owner_key, first, "close", outcome="false_match")
    await send(env, open_one, withdrawal(WANTED))
    second = await raised(desk, directory, open_one)

    withdrawn = await eventually(lambda: _status(desk, owner_key, open_one, "withdrawn"),
                                 what="the withdrawal")
    assert withdrawn["actions"] == []
    assert (await alert_of(desk, owner_key, done))["status"] == "closed"
    assert (await history(desk, owner_key, second))[-1] == ("withdrawn", "CA-30307")
    refused = await act(desk, owner_key, second, "confirm")
    assert refused.status_code == 409


async def _overdue_gauge_is(desk, value):
    text = (await desk.get("/metrics")).text
    return f"giapranh_alerts_overdue {float(value)}" in text


async def _level(desk, key, hit, level):
    alert = await alert_of(desk, key, hit)
    return alert if alert and alert["escalation_level"] == level else None


async def _status(desk, key, hit, status):
    alert = await alert_of(desk, key, hit)
    return alert if alert and alert["status"] == status else None
