"""Live alert feed: every notifier instance pushes new alerts to the desks connected to it.

The transaction that stores an alert also sends `pg_notify('giapranh_alerts', {alert_id,
units})`, so the notification exists exactly when the alert does. Every instance LISTENs
on its own connection and hands the alert id to the subscribers of each recipient unit,
wherever the hit was consumed; a desk connected to any instance sees its alerts.

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
from uuid import UUID

import asyncpg

log = logging.getLogger(__name__)

ALERTS_CHANNEL = "giapranh_alerts"
QUEUE_SIZE = 1000
DISCONNECT = None  # queued when a subscriber fell too far behind


class AlertFeed:
    def __init__(self, database_url: str):
        self._database_url = database_url
        self._connection: asyncpg.Connection | None = None
        self._subscribers: dict[str, set[asyncio.Queue[UUID | None]]] = defaultdict(set)

    async def start(self) -> None:
        self._connection = await asyncpg.connect(self._database_url)
        await self._connection.add_listener(ALERTS_CHANNEL, self._on_notification)

    async def stop(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    @contextlib.contextmanager
    def subscribe(self, unit_code: str) -> Iterator[asyncio.Queue[UUID | None]]:
        queue: asyncio.Queue[UUID | None] = asyncio.Queue(QUEUE_SIZE + 1)
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
            alert_id = UUID(message["alert_id"])
            units = message["units"]
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignored a malformed alert notification %r: %r", payload, exc)
            return
        for unit in units:
            for queue in list(self._subscribers.get(unit, ())):
                if queue.qsize() >= QUEUE_SIZE:
                    queue.put_nowait(DISCONNECT)
                    self._subscribers[unit].discard(queue)
                else:
                    queue.put_nowait(alert_id)


def notification(alert_id: UUID, units: list[str]) -> str:
    return json.dumps({"alert_id": str(alert_id), "units": units})
