"""Live alert feed: every notifier instance pushes alert changes to the desks connected to it.

The transaction that changes an alert also sends `pg_notify('giapranh_alerts', {alert_id,
kind, units})` (`SseChannel`), so the notification exists exactly when the change does.
Every instance LISTENs on its own connection; one worker task takes the notifications in
order, in batches, and for all the recipient units with open streams reads the changed
alerts once (`Render`: two queries a batch, however many units watch, not one per unit)
and encodes each unit's change once, as the bytes of its server-sent event
(`FeedItem.frame`): a thousand streams of one unit cost one JSON encoding and one SSE
encoding per change, and each stream only writes the same bytes
(`EventStream`, a plain ASGI response: no per-stream serialising, no helper tasks per
event). The worker hands an item to `FAN_OUT_SLICE` streams at a time and lets other work
run in between, so that a change for a thousand desks never holds up everyone else's
requests for the whole fan-out. For alerts with too many recipients to list in a
notification (scope `all_units`), it looks up which subscribed units received them.

Streams belong to an API key: a key revoked (the `giapranh_keys` notification a trigger
sends) or expired closes its streams within a second, and every 30 s the keys of open
streams are checked again in case a notification was missed. A key may hold at most
`max_streams_per_key` streams (429 above).

Back-pressure: each subscriber has a bounded queue. A desk that stops reading while
`QUEUE_SIZE` changes pile up is disconnected (its browser reconnects and reloads the list),
rather than letting one slow client hold memory. Idle streams get a comment line every
`HEARTBEAT_SECONDS`, so that proxies do not time them out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

import asyncpg
from fastapi.sse import format_sse_event
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from services.notifier.channels import ALERTS_CHANNEL
from shared import metrics
from shared.auth import KEYS_CHANNEL, KeyStore, Principal
from shared.db import DATABASE_ERRORS
from shared.events import utcnow
from shared.kafka import stop_if_cancelled

log = logging.getLogger(__name__)

QUEUE_SIZE = 1000
DISCONNECT = None  # queued when a subscriber must go: too far behind, or its key is gone
REVALIDATE_SECONDS = 30.0
EXPIRY_CHECK_SECONDS = 0.5
HEARTBEAT_SECONDS = 15.0
FAN_OUT_SLICE = 100
"""Streams handed one change before the worker lets other tasks (requests) run."""

Render = Callable[[dict[str, list[UUID]], dict[str, frozenset[str]], frozenset[UUID]],
                  Awaitable[dict[str, dict[UUID, dict[str, bytes]]]]]
"""({unit: alert ids}, {unit: languages}, just raised) -> each unit's views of its alerts,
as JSON (UTF-8), by unit, alert id and language (each view built once, its texts translated
once per language; an alert not addressed to a unit has no view for it). "Just raised": the
alerts whose only change in the batch is their raising (the renderer may show those as it
wrote them)."""


@dataclass(frozen=True)
class Change:
    alert_id: UUID
    kind: str  # raised, updated, cancelled
    reported_at: datetime | None
    units: tuple[str, ...] | None  # None: too many to list, look them up


@dataclass(frozen=True)
class FeedItem:
    """What a unit's streams write: one change's server-sent event, encoded once for all
    of them (`event: alert` for a new alert, `event: update` for a change of one, `id` the
    alert id, `data` the unit's view of the alert as JSON), or a heartbeat."""

    frame: bytes
    alert_id: UUID | None = None
    reported_at: datetime | None = None
    """The sighting's time, for a new alert (the sighting-to-desk latency)."""
    translated: dict[str, bytes] | None = None
    """The event with its texts in another language, by language."""

    @classmethod
    def of(cls, change: Change, data: dict[str, bytes]) -> FeedItem:
        raised = change.kind == "raised"
        frames = {language: sse_event(b"alert" if raised else b"update", text,
                                      str(change.alert_id).encode())
                  for language, text in data.items()}
        first = frames.get("en") or next(iter(frames.values()))
        return cls(first, change.alert_id, change.reported_at if raised else None,
                   frames if len(frames) > 1 or "en" not in frames else None)

    def frame_for(self, language: str) -> bytes:
        if self.translated is None:
            return self.frame
        return self.translated.get(language, self.frame)


def sse_event(event: bytes, data: bytes, event_id: bytes) -> bytes:
    """A server-sent event, as `fastapi.sse.format_sse_event` writes it, without decoding
    and splitting the data when it is one line (JSON from orjson always is: it escapes
    every control character), which took a tenth of the notifier's time with every
    recipient's desk watching."""
    if b"\n" in data or b"\r" in data:
        return format_sse_event(data_str=data.decode(), event=event.decode(),
                                id=event_id.decode())
    return b"event: " + event + b"\ndata: " + data + b"\nid: " + event_id + b"\n\n"


HEARTBEAT = FeedItem(b": ping\n\n")
"""An SSE comment: clients ignore it, proxies see the stream alive."""


@dataclass(eq=False)
class _Subscription:
    principal: Principal
    language: str = "en"
    queue: asyncio.Queue[FeedItem | None] = field(
        default_factory=lambda: asyncio.Queue(QUEUE_SIZE + 1))

    def close(self) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(DISCONNECT)

    def offer(self, item: FeedItem) -> bool:
        """Queue `item`, or close the subscription if it is too far behind (False)."""
        if self.queue.qsize() >= QUEUE_SIZE:
            self.close()
            return False
        self.queue.put_nowait(item)
        return True


class AlertFeed:
    def __init__(self, database_url: str, render: Render, keys: KeyStore, *,
                 max_streams_per_key: int, heartbeat_seconds: float = HEARTBEAT_SECONDS,
                 max_streams_per_unit: int | None = None):
        self._database_url = database_url
        self._render = render
        self._keys = keys
        self.max_streams = max_streams_per_key
        self.max_unit_streams = max_streams_per_unit
        self._heartbeat_seconds = heartbeat_seconds
        self._connection: asyncpg.Connection | None = None
        self._subscribers: dict[str, set[_Subscription]] = defaultdict(set)
        self._changes: asyncio.Queue[Change] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._connection = await asyncpg.connect(self._database_url)
        await self._connection.add_listener(ALERTS_CHANNEL, self._on_alert)
        await self._connection.add_listener(KEYS_CHANNEL, self._on_key_revoked)
        self._tasks = [asyncio.create_task(self._deliver(), name="feed-deliver"),
                       asyncio.create_task(self._watch_keys(), name="feed-keys"),
                       asyncio.create_task(self._heartbeats(), name="feed-heartbeats")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    def watches_any(self, units: Iterable[str]) -> bool:
        """Whether a stream here watches any of these units."""
        return any(unit in self._subscribers for unit in units)

    def streams_of_unit(self, unit_code: str) -> int:
        return len(self._subscribers.get(unit_code, ()))

    def streams_of(self, key_id: int) -> int:
        return sum(1 for subs in self._subscribers.values() for sub in subs
                   if sub.principal.key_id == key_id)

    @contextlib.contextmanager
    def subscribe(self, principal: Principal,
                  language: str = "en") -> Iterator[asyncio.Queue[FeedItem | None]]:
        """A queue of the unit's alert changes for as long as the block runs (the API
        refuses a stream over the key's cap, `streams_of`, before it starts)."""
        subscription = _Subscription(principal, language)
        unit = principal.unit_code
        self._subscribers[unit].add(subscription)
        try:
            yield subscription.queue
        finally:
            self._subscribers[unit].discard(subscription)
            if not self._subscribers[unit]:
                del self._subscribers[unit]

    # ------------------------------------------------------------------ alert changes

    def _on_alert(self, connection: object, pid: int, channel: str, payload: str) -> None:
        try:
            message = json.loads(payload)
            reported = message.get("reported_at")
            units = message["units"]
            change = Change(UUID(message["alert_id"]), message.get("kind", "raised"),
                            datetime.fromisoformat(reported) if reported else None,
                            None if units is None else tuple(units))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignored a malformed alert notification %r: %r", payload, exc)
            return
        self._changes.put_nowait(change)

    async def _deliver(self) -> None:
        """Take the changes in order, in batches; render once per unit; hand out."""
        while True:
            stop_if_cancelled()
            batch = [await self._changes.get()]
            while not self._changes.empty() and len(batch) < QUEUE_SIZE:
                batch.append(self._changes.get_nowait())
            try:
                await self._hand_out(batch)
            except DATABASE_ERRORS as exc:
                log.warning("could not read %d alert change(s) for the open streams: %r; "
                            "their desks are disconnected to reload", len(batch), exc)
                self._close_all()
            except Exception:  # noqa: BLE001 - the feed goes on for the next changes
                log.exception("could not hand out %d alert change(s) to the open streams; "
                              "their desks are disconnected to reload", len(batch))
                self._close_all()

    def _close_all(self) -> None:
        """Every open stream closes: its desk reconnects and reloads the list."""
        for subscriptions in self._subscribers.values():
            for subscription in subscriptions:
                subscription.close()

    async def _hand_out(self, batch: list[Change]) -> None:
        if not self._subscribers:
            return
        unlisted = [change.alert_id for change in batch if change.units is None]
        looked_up = await self._recipients(unlisted) if unlisted else {}
        by_unit: dict[str, list[Change]] = defaultdict(list)
        for change in batch:
            units = change.units if change.units is not None else looked_up.get(
                change.alert_id, ())
            for unit in units:
                if unit in self._subscribers:
                    by_unit[unit].append(change)
        if not by_unit:
            return
        kinds: dict[UUID, set[str]] = defaultdict(set)
        for change in batch:
            kinds[change.alert_id].add(change.kind)
        views = await self._render(
            {unit: list({c.alert_id: None for c in changes})
             for unit, changes in by_unit.items()},
            {unit: frozenset(s.language for s in self._subscribers.get(unit, ()))
             or frozenset({"en"}) for unit in by_unit},
            frozenset(alert_id for alert_id, kind in kinds.items() if kind == {"raised"}))
        for unit, changes in by_unit.items():
            unit_views = views.get(unit, {})
            items = [FeedItem.of(change, unit_views[change.alert_id]) for change in changes
                     if change.alert_id in unit_views]
            if items:
                await self._offer(unit, items)

    async def _offer(self, unit: str, items: list[FeedItem]) -> None:
        """Queue `items` for each of the unit's streams, `FAN_OUT_SLICE` streams at a time
        (the streams write them when the worker yields)."""
        subscriptions = list(self._subscribers.get(unit, ()))
        for start in range(0, len(subscriptions), FAN_OUT_SLICE):
            if start:
                await asyncio.sleep(0)  # the slice's streams write, requests get a turn
            for subscription in subscriptions[start:start + FAN_OUT_SLICE]:
                for item in items:
                    if not subscription.offer(item):
                        self._subscribers.get(unit, set()).discard(subscription)
                        break

    async def _recipients(self, alert_ids: list[UUID]) -> dict[UUID, tuple[str, ...]]:
        assert self._connection is not None
        rows = await self._connection.fetch(
            "SELECT alert_id, array_agg(unit_code) AS units FROM deliveries "
            "WHERE alert_id = ANY($1::uuid[]) AND unit_code = ANY($2::text[]) "
            "GROUP BY alert_id", alert_ids, list(self._subscribers))
        return {row["alert_id"]: tuple(row["units"]) for row in rows}

    async def _heartbeats(self) -> None:
        """A heartbeat to every stream with nothing queued, every `heartbeat_seconds`."""
        while True:
            stop_if_cancelled()
            await asyncio.sleep(self._heartbeat_seconds)
            for subscriptions in list(self._subscribers.values()):
                for subscription in list(subscriptions):
                    if subscription.queue.empty():
                        subscription.queue.put_nowait(HEARTBEAT)

    # ------------------------------------------------------------------ keys

    def _on_key_revoked(self, connection: object, pid: int, channel: str, payload: str) -> None:
        with contextlib.suppress(ValueError):
            self._close_keys({int(payload)}, "revoked")

    def _close_keys(self, key_ids: set[int], why: str) -> None:
        for unit, subscriptions in list(self._subscribers.items()):
            for subscription in list(subscriptions):
                if subscription.principal.key_id in key_ids:
                    log.info("closing a stream of unit %s: its key %d was %s", unit,
                             subscription.principal.key_id, why)
                    subscription.close()
                    subscriptions.discard(subscription)

    async def _watch_keys(self) -> None:
        """Close streams whose key expired (within a second) and, every 30 s, those whose
        key stopped working in a way no notification told of."""
        next_check = asyncio.get_running_loop().time() + REVALIDATE_SECONDS
        while True:
            stop_if_cancelled()
            await asyncio.sleep(EXPIRY_CHECK_SECONDS)
            now = utcnow()
            expired = {sub.principal.key_id for subs in self._subscribers.values()
                       for sub in subs
                       if sub.principal.expires_at is not None
                       and sub.principal.expires_at <= now}
            if expired:
                self._close_keys(expired, "expired")
            if asyncio.get_running_loop().time() < next_check:
                continue
            next_check = asyncio.get_running_loop().time() + REVALIDATE_SECONDS
            open_keys = {sub.principal.key_id for subs in self._subscribers.values()
                         for sub in subs}
            if not open_keys:
                continue
            try:
                valid = await self._keys.still_valid(list(open_keys))
            except DATABASE_ERRORS as exc:
                log.warning("could not check the keys of open streams: %r", exc)
                continue
            if open_keys - valid:
                self._close_keys(open_keys - valid, "revoked or ended")


# ------------------------------------------------------------------ the HTTP response


class EventStream(Response):
    """One live stream as an ASGI response: subscribes its key's unit while the client is
    connected and writes each queued `FeedItem` as it is (several at once when they piled
    up), until the client goes, or the feed closes it (revoked or expired key, too far
    behind). Its one helper task only waits for the client to disconnect."""

    media_type = "text/event-stream"

    def __init__(self, feed: AlertFeed, principal: Principal, language: str = "en"):
        # Not Response.__init__: it would declare the empty body's length.
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache",
                           "X-Accel-Buffering": "no"})  # nginx must not buffer the events
        self._feed = feed
        self._principal = principal
        self._language = language

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        delivered = metrics.DELIVERIES.labels(channel="sse", result="ok")
        latency = metrics.SIGHTING_TO_DELIVERY.labels(channel="sse")
        with self._feed.subscribe(self._principal, self._language) as queue:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            gone = asyncio.Event()
            watch = asyncio.create_task(_until_disconnected(receive, queue, gone),
                                        name="sse-disconnect")
            try:
                while not gone.is_set():
                    item = await queue.get()
                    frames: list[bytes] = []
                    while item is not DISCONNECT and not gone.is_set():
                        frames.append(item.frame_for(self._language))
                        if item.alert_id is not None:
                            delivered.inc()
                            if item.reported_at is not None:
                                latency.observe(
                                    max(0.0, (utcnow() - item.reported_at).total_seconds()))
                        if queue.empty():
                            break
                        item = queue.get_nowait()
                    if frames and not gone.is_set():
                        await send({"type": "http.response.body", "body": b"".join(frames),
                                    "more_body": True})
                    if item is DISCONNECT:
                        break  # the client reconnects (and reloads the list) if it may
            finally:
                watch.cancel()
        if not gone.is_set():
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _until_disconnected(receive: Receive, queue: asyncio.Queue[FeedItem | None],
                              gone: asyncio.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set()
    with contextlib.suppress(asyncio.QueueFull):
        queue.put_nowait(DISCONNECT)  # wakes the stream if it waits for an item
