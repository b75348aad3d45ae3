"""Live alert feed: every notifier instance pushes new alerts to the desks connected to it.

The transaction that changes an alert also sends `pg_notify('giapranh_alerts', {alert_id,
kind, units})` (`SseChannel`), so the notification exists exactly when the change does.
Every instance LISTENs on its own connection and hands the change to the subscribers of
each recipient unit, wherever the hit was consumed; a desk connected to any instance sees
its alerts. For alerts with too many recipients to list in a notification (scope
`all_units`), the feed looks up which of its subscribed units received it.

Back-pressure: each subscriber has a bounded queue. A desk that stops reading while
`QUEUE_SIZE` alerts pile up is disconnected (its browser reconnects and reloads the list),
rather than letting one slow client hold memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from services.notifier.channels import ALERTS_CHANNEL

log = logging.getLogger(__name__)

QUEUE_SIZE = 1000
DISCONNECT = None  # queued when a subscriber fell too far behind


@dataclass(frozen=True)
class FeedItem:
    alert_id: UUID
    kind: str  # raised, updated, cancelled
    reported_at: datetime | None


class AlertFeed:
    def __init__(self, database_url: str):
        self._database_url = database_url
        self._connection: asyncpg.Connection | None = None
        self._subscribers: dict[str, set[asyncio.Queue[FeedItem | None]]] = defaultdict(set)
        self._lookups: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._connection = await asyncpg.connect(self._database_url)
        await self._connection.add_listener(ALERTS_CHANNEL, self._on_notification)

    async def stop(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    @contextlib.contextmanager
    def subscribe(self, unit_code: str) -> Iterator[asyncio.Queue[FeedItem | None]]:
        queue: asyncio.Queue[FeedItem | None] = asyncio.Queue(QUEUE_SIZE + 1)
        self._subscribers[unit_code].add(queue)
        try:
            yield queue
        finally:
            self._subscribers[unit_code].discard(queue)
            if not self._subscribers[unit_code]:
                del self._subscribers[unit_code]

    def _on_notification(self, connection: object, pid: int, channel: str, payload: str) -> None:
        try:
            message = json.loads(payload)
            reported = message.get("reported_at")
            item = FeedItem(UUID(message["alert_id"]), message.get("kind", "raised"),
                            datetime.fromisoformat(reported) if reported else None)
            units = message["units"]
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignored a malformed alert notification %r: %r", payload, exc)
            return
        if units is None:
            task = asyncio.get_running_loop().create_task(self._look_up(item))
            self._lookups.add(task)
            task.add_done_callback(self._lookups.discard)
            return
        self._hand_out(item, units)

    async def _look_up(self, item: FeedItem) -> None:
        subscribed = list(self._subscribers)
        if not subscribed or self._connection is None:
            return
        try:
            conn = await asyncpg.connect(self._database_url)
            try:
                rows = await conn.fetch(
                    "SELECT unit_code FROM deliveries WHERE alert_id = $1 "
                    "AND unit_code = ANY($2::text[])", item.alert_id, subscribed)
            finally:
                await conn.close()
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("could not look up the recipients of %s: %r", item.alert_id, exc)
            return
        self._hand_out(item, [row["unit_code"] for row in rows])

    def _hand_out(self, item: FeedItem, units: list[str]) -> None:
        for unit in units:
            for queue in list(self._subscribers.get(unit, ())):
                if queue.qsize() >= QUEUE_SIZE:
                    queue.put_nowait(DISCONNECT)
                    self._subscribers[unit].discard(queue)
                else:
                    queue.put_nowait(item)
