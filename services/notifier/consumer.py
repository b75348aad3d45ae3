"""The notifier's hit stream: hits in, alerts and deliveries stored, `AlertRaised` out.

A handler for the shared `StreamRunner` (`shared.stream`), which owns polling, decoding,
dead letters, retries and commits: each batch's hits and withdrawals are stored in one
transaction, then each new alert is announced on the alerts topic; the batch's offsets
are committed once those are acknowledged (at least once). Repeats are harmless: an alert
is unique per hit id, so a redelivered hit creates nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from datetime import timedelta
from typing import Any
from uuid import uuid4

from services.notifier.service import AlertService, NewAlert
from services.notifier.settings import NotifierSettings
from shared import metrics
from shared.db import DATABASE_ERRORS
from shared.events import AlertRaised, utcnow
from shared.kafka import stop_if_cancelled
from shared.logs import event_logger
from shared.stream import Message, Outcome, Stream, StreamRunner
from shared.topics import ALERTS, HITS, INCIDENTS, TopicSpec

log = logging.getLogger(__name__)
events_log = event_logger("notifier")
REANNOUNCE_WINDOW = timedelta(minutes=5)
"""After the broker lost the alerts topic, alerts raised this recently are announced again
(its readers are outside the core pipeline and drop repeats by alert id)."""


def hit_stream(settings: NotifierSettings, alerts: AlertService) -> StreamRunner:
    async def handle(messages: Iterable[Message]) -> Outcome:
        created = await alerts.store_hits([message.event for message in messages])
        return Outcome(publish=[(ALERTS, announcement(alert)) for alert in created])

    async def announce_again(topics: set[str]) -> list[tuple[TopicSpec, Any]]:
        """The broker lost the alerts topic's log: announce the recent alerts again."""
        if settings.topic(ALERTS.name) not in topics:
            return []
        return [(ALERTS, event) for event in
                await alerts.raised_since(utcnow() - REANNOUNCE_WINDOW)]

    return StreamRunner(settings, Stream(
        name="notifier.hits", service="notifier", specs=(HITS,),
        group_id=settings.notifier_group_id, batch_size=settings.notifier_batch_size,
        on_log_lost=announce_again,
        resend_dropped=True,  # (its readers drop repeats by alert id, in any order)
    ), handle)


def incident_stream(settings: NotifierSettings, alerts: AlertService) -> StreamRunner:
    """Incidents in: the units each concerns are alerted at once; updates and closings
    follow (`AlertService.store_incident_events`)."""
    async def handle(messages: Iterable[Message]) -> Outcome:
        await alerts.store_incident_events([message.event for message in messages])
        return Outcome()

    return StreamRunner(settings, Stream(
        name="notifier.incidents", service="notifier", specs=(INCIDENTS,),
        group_id=f"{settings.notifier_group_id}-incidents",
        batch_size=settings.notifier_batch_size,
    ), handle)


async def replay_incidents(alerts: AlertService, interval: float,
                           window: timedelta = timedelta(days=3),
                           settle: timedelta = timedelta(seconds=5)) -> None:
    """PostgreSQL is the system of record: incident events ingest recorded that never
    reached the notifier (a broker that lost its log, a notifier that was down) are
    handled from ingest's `ingest_incident_events`, each once."""
    while True:
        stop_if_cancelled()
        try:
            events = await alerts.unhandled_incident_events(window, settle)
            if events:
                log.warning("%d incident event(s) never received from the broker: "
                            "handling them from ingest's record", len(events))
                await alerts.store_incident_events(events)
                metrics.INCIDENTS_REPLAYED.inc(len(events))
        except DATABASE_ERRORS as exc:
            log.warning("incident replay failed, retrying: %r", exc)
        await asyncio.sleep(interval)


_STORED = metrics.DELIVERIES.labels(channel="store", result="ok")
_BY_UNIT: dict[str, Any] = {}
"""Each unit's alert counter (as many as there are units)."""


def announcement(alert: NewAlert) -> AlertRaised:
    """The `AlertRaised` of a new alert, counted and logged."""
    now = utcnow()
    metrics.ALERTS_RAISED.inc()
    if events_log.isEnabledFor(logging.DEBUG):  # counted in giapranh_alerts_raised_total
        events_log.debug(
            "alert raised for %s", ", ".join(r.unit_code for r in alert.recipients),
            extra={"alert_id": alert.alert_id, "hit_id": alert.hit.hit_id,
                   "correlation_id": alert.hit.correlation(),
                   "entry_id": alert.hit.entry.entry_id})
    _STORED.inc(len(alert.recipients))
    for recipient in alert.recipients:
        counter = _BY_UNIT.get(recipient.unit_code)
        if counter is None:  # (a label lookup each time cost more than the count)
            counter = _BY_UNIT[recipient.unit_code] = metrics.ALERTS_BY_UNIT.labels(
                unit=recipient.unit_code)
        counter.inc()
    metrics.SIGHTING_TO_ALERT.observe(max(0.0, (now - alert.hit.reported_at).total_seconds()))
    # Built without validating again what was validated already (the hit, as it was
    # decoded; the recipients, as they were chosen): a thousand a second.
    # (every field given: for one left to its default_factory, model_construct inspects
    # the factory's signature each time, ~3 % of the notifier's CPU at a thousand a second)
    return AlertRaised.model_construct(
        event_id=uuid4(), type="AlertRaised", schema_version=1, producer_unit=None,
        occurred_at=now, recorded_at=now, correlation_id=alert.hit.correlation(),
        alert_id=alert.alert_id, hit_id=alert.hit.hit_id, entry_id=alert.hit.entry.entry_id,
        category=alert.hit.entry.category, recipients=tuple(alert.recipients),
    )
