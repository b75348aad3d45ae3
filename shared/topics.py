"""The topic registry: every topic declared once, with key, value type, who writes, who reads.

Each topic has an example payload in `shared/examples/<name>.json`; a test decodes every
example with the topic's value type, so the examples double as living documentation.
Full topic names carry the deployment's prefix (`CommonSettings.topic`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from pydantic import TypeAdapter

from shared.events import (
    AlertAcknowledged,
    AlertRaised,
    DeadLetter,
    HitFound,
    HitsWithdrawn,
    IncidentReported,
    SightingReported,
    WatchlistEntryCancelled,
    WatchlistEntryUpserted,
)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    key: str
    value_types: tuple[type, ...]
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    description: str
    compacted: bool = False
    adapter: TypeAdapter[Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        union = self.value_types[0] if len(self.value_types) == 1 else _union(self.value_types)
        object.__setattr__(self, "adapter", TypeAdapter(union))

    def decode(self, raw: bytes | str) -> Any:
        return self.adapter.validate_json(raw)

    def example(self) -> dict[str, Any]:
        text = resources.files("shared").joinpath("examples", f"{self.name}.json").read_text()
        return json.loads(text)


def _union(types: tuple[type, ...]) -> Any:
    from typing import Union

    return Union[types]  # noqa: UP007 - built at run time from a tuple


SIGHTINGS = TopicSpec(
    name="sightings",
    key="reporting unit code (keeps one unit's reports in order)",
    value_types=(SightingReported,),
    producers=("ingest",),
    consumers=("matcher",),
    description="A person or vehicle seen at a place and time.",
)
INCIDENTS = TopicSpec(
    name="incidents",
    key="reporting unit code",
    value_types=(IncidentReported,),
    producers=("ingest",),
    consumers=("matcher",),
    description="A crime or disorder event with its suspects and vehicles.",
)
WATCHLIST = TopicSpec(
    name="watchlist",
    key="entry id (per-entry order; compaction keeps the latest state)",
    value_types=(WatchlistEntryUpserted, WatchlistEntryCancelled),
    producers=("ingest",),
    consumers=("matcher (every worker reads every partition)",),
    description="Watchlist entries created, updated and cancelled by their owner units.",
    compacted=True,
)
HITS = TopicSpec(
    name="hits",
    key="entry id (one entry's hits, and then its withdrawal, stay in order)",
    value_types=(HitFound, HitsWithdrawn),
    producers=("matcher",),
    consumers=("notifier",),
    description="A reported subject matched a listed one, with score and reasons; or an "
    "entry was cancelled and its open alerts are withdrawn.",
)
ALERTS = TopicSpec(
    name="alerts",
    key="alert id",
    value_types=(AlertRaised, AlertAcknowledged),
    producers=("notifier",),
    consumers=("audit, reporting (outside the core pipeline)",),
    description="Alert lifecycle: raised for its recipients, acknowledged by duty desks.",
)
DEAD_LETTER = TopicSpec(
    name="dead-letter",
    key="source topic name",
    value_types=(DeadLetter,),
    producers=("matcher", "notifier"),
    consumers=("operators",),
    description="Messages a consumer could not decode or process, with the error.",
)

ALL_TOPICS: tuple[TopicSpec, ...] = (SIGHTINGS, INCIDENTS, WATCHLIST, HITS, ALERTS, DEAD_LETTER)
