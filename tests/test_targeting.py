"""Who receives an alert: hits through the real broker into the notifier, deliveries read
back from PostgreSQL, the directory edited with the same functions the CLI uses."""

from giapranh.demo import demo_units
from services.notifier.targeting import (
    ALL_UNITS_REASON,
    LISTED_HERE,
    SEEN_HERE,
    adjacency_reason,
)
from shared.directory import UnitIn, create_unit, merge_unit, rename_unit
from shared.events import SharingScope
from tests.conftest import eventually
from tests.notifier_helpers import MISSING, WANTED, alert_of, make_hit, recipients, send


async def delivered(notifier, directory, pool, hit, unit):
    alert = await eventually(lambda: alert_of(notifier, directory[unit], hit),
                             what=f"the alert at {unit}")
    return alert, await recipients(pool, alert["alert_id"])


async def test_a_cross_province_border_alerts_both_sides_and_no_one_else(
        env, notifier, directory, pool):
    # Sông Cầu (Phú Yên, now Đắk Lắk) sights a girl listed missing by Quy Nhơn (Bình Định,
    # now Gia Lai): one agreement since 2017 and a shared border.
    hit = make_hit(MISSING, seen="CA-22051")
    await send(env, hit)
    alert, who = await delivered(notifier, directory, pool, hit, "CA-21553")
    assert who == {
        "CA-22051": [SEEN_HERE],
        "CA-21553": [LISTED_HERE,
                     "coordination agreement with CA-22051, where the subject was seen: "
                     "Quy chế phối hợp Sông Cầu – Quy Nhơn (2017)",
                     adjacency_reason("CA-22051")],
    }
    assert alert["urgency"] == "urgent"
    assert alert["unit_names"] == {"CA-22051": "Công an phường Sông Cầu",
                                   "CA-21553": "Công an phường Quy Nhơn Bắc"}


async def test_the_sharing_scope_bounds_agreements_adjacency_and_radius(
        env, notifier, directory, pool):
    # Two units placed for the radius rule: 1.1 km and 11 km from the sighting.
    async with pool.acquire() as conn:
        for code, lat in (("BP-NEAR", 10.280), ("BP-FAR", 10.370)):
            await create_unit(conn, UnitIn(code=code, name=f"Đồn {code}", kind="border_guard",
                                           lat=lat, lon=105.535))
    where = {"seen": "CA-31212", "lat": 10.270, "lon": 105.535}  # Thốt Nốt
    scoped = {scope: make_hit(WANTED, sharing_scope=scope, **where) for scope in SharingScope}
    await send(env, *scoped.values())

    _, neighbours = await delivered(notifier, directory, pool, scoped[SharingScope.NEIGHBOURS],
                                    "CA-30307")
    # Agreement partners of Thốt Nốt; its bordering units (Long Xuyên across the province
    # line, Thuận Hưng); the unit 1.1 km away; not the one 11 km away.
    assert set(neighbours) == {"CA-31212", "CA-30307", "CA-30301", "CA-30682", "CA-31237",
                               "CA-31207", "BP-NEAR"}
    assert neighbours["CA-31207"][-1] == adjacency_reason("CA-31212")
    assert neighbours["BP-NEAR"] == [
        "1.1 km from where the subject was seen (radius 5 km)"]

    _, partners = await delivered(notifier, directory, pool,
                                  scoped[SharingScope.AGREEMENT_PARTNERS], "CA-30307")
    assert set(partners) == {"CA-31212", "CA-30307", "CA-30301", "CA-30682", "CA-31237",
                             "CA-31207"}
    assert all("borders" not in r for reasons in partners.values() for r in reasons)

    _, owner_only = await delivered(notifier, directory, pool,
                                    scoped[SharingScope.OWNER_ONLY], "CA-30307")
    assert set(owner_only) == {"CA-31212", "CA-30307"}

    _, everyone = await delivered(notifier, directory, pool, scoped[SharingScope.ALL_UNITS],
                                  "CA-30307")
    assert set(everyone) == {u.code for u in demo_units()} | {"BP-NEAR", "BP-FAR"}
    assert everyone["BP-FAR"] == [ALL_UNITS_REASON]
    exposed = (await notifier.get("/metrics")).text
    assert 'giapranh_alerts_delivered_total{unit="BP-FAR"} 1.0' in exposed


async def test_merged_units_hand_over_and_renamed_units_keep_old_names_on_old_alerts(
        env, notifier, directory, pool):
    before = make_hit(WANTED)
    await send(env, before)
    old_alert, _ = await delivered(notifier, directory, pool, before, "CA-30307")
    async with pool.acquire() as conn:
        await rename_unit(conn, "CA-31212", "Công an phường Thốt Nốt (mới)")
        await merge_unit(conn, "CA-31237", into="CA-31212")  # Vĩnh Trinh joins Thốt Nốt

    after = make_hit(WANTED)
    await send(env, after)
    new_alert, who = await delivered(notifier, directory, pool, after, "CA-30307")
    assert "CA-31237" not in who
    assert who["CA-31212"][0] == SEEN_HERE
    assert ("coordination agreement with CA-31212, where the subject was seen: Quy chế phối "
            "hợp địa bàn giáp ranh Long Xuyên – Cần Thơ (2025) (as successor of CA-31237)"
            ) in who["CA-31212"]
    assert new_alert["unit_names"]["CA-31212"] == "Công an phường Thốt Nốt (mới)"
    again = await alert_of(notifier, directory["CA-30307"], before)
    assert again["unit_names"]["CA-31212"] == "Công an phường Thốt Nốt"
    assert again["unit_names"] == old_alert["unit_names"]


async def test_a_hit_repeated_within_one_batch_and_after_makes_one_alert(
        env, notifier, directory, pool):
    hit, other, last = make_hit(WANTED), make_hit(WANTED), make_hit(WANTED)
    await send(env, hit, hit, other, hit)
    await delivered(notifier, directory, pool, other, "CA-30307")
    # Same entry, same key, same partition: once `last` is in, the redelivery was consumed.
    await send(env, hit, last)
    await delivered(notifier, directory, pool, last, "CA-30307")
    assert await pool.fetchval("SELECT count(*) FROM alerts") == 3
    assert await pool.fetchval("SELECT count(*) FROM alert_history") == 3
    assert await pool.fetchval(
        "SELECT count(*) FROM deliveries d JOIN alerts a USING (alert_id) "
        "WHERE a.hit_id = $1", hit.hit_id) == 6



def test_an_incident_fleeing_on_a_bearing_alerts_the_units_that_way_and_no_others():
    """Pure rules: units lying within 45° of the direction of flight and within the
    pursuit radius are alerted, each with its bearing and distance; units behind are not."""
    from datetime import UTC, date, datetime

    from services.notifier.directory import Directory, UnitInfo
    from services.notifier.targeting import choose_incident_recipients
    from shared.events import IncidentReported, Place

    directory = Directory()
    for code, lat, lon in (("HOME", 10.270, 105.535), ("EAST", 10.240, 105.600),
                           ("WEST", 10.386, 105.435), ("FAR-EAST", 10.27, 106.2)):
        directory.units[code] = UnitInfo(code, code.title(), None, lat, lon, True, None)
    incident = IncidentReported(
        occurred_at=datetime.now(UTC), producer_unit="HOME", incident_type="cướp",
        place=Place(unit_code="HOME", lat=10.270, lon=105.535), fled_bearing=110)
    recipients = choose_incident_recipients(incident, directory, today=date.today(),
                                            radius_km=0, pursuit_km=30)
    assert {r.unit_code: r.reasons for r in recipients} == {
        "HOME": ("incident on this unit's territory",),
        "EAST": ("in the direction of flight (bearing 110°), 7.9 km away",),
    }
    west = incident.model_copy(update={"fled_bearing": 320})
    assert [r.unit_code for r in choose_incident_recipients(
        west, directory, today=date.today(), radius_km=0, pursuit_km=30)] == ["HOME", "WEST"]


async def test_the_reporting_unit_hears_of_its_hit_whatever_the_scope(
        env, notifier, directory, pool):
    """A patrol of CA-30301 reports a subject on CA-31212's territory; the entry is shared
    with no one (owner_only): the reporting unit still learns its report was a hit."""
    hit = make_hit(WANTED, seen="CA-31212", sharing_scope=SharingScope.OWNER_ONLY)
    hit = hit.model_copy(update={"reported_by": "CA-30301"})
    await send(env, hit)
    _, who = await delivered(notifier, directory, pool, hit, "CA-30301")
    assert who == {"CA-31212": [SEEN_HERE], "CA-30307": [LISTED_HERE],
                   "CA-30301": ["this unit reported the sighting"]}
