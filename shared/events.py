"""Event contracts: the common envelope and every event that crosses a topic.

Events are frozen, typed and named in the past tense. Every event carries the envelope
(`event_id`, `type`, `schema_version`, `occurred_at`, `recorded_at`, `producer_unit`,
`correlation_id`); its own fields are typed value objects, never free-form dicts.

Identifying fields (names, ids, plates) are carried as the reporting officer typed them;
normalisation for matching belongs to the matcher. Validation here only rejects what is
impossible (a national id that is neither 9 nor 12 digits, a birth date in the future,
coordinates off the globe), so the ingest API and the consumers share one set of rules.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Annotated, Literal
from uuid import UUID, uuid4

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    field_validator,
    model_validator,
)

UNIT_CODE_PATTERN = r"^[A-Z][A-Z0-9-]{1,31}$"
UnitCode = Annotated[str, Field(pattern=UNIT_CODE_PATTERN, examples=["CA-30307"])]
EntryId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")]

# What no text may carry: control characters (they break the XML of CAP messages and Atom
# feeds, and NUL breaks PostgreSQL), lone surrogates and the noncharacters U+FFFE/U+FFFF.
_NOT_IN_LINE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
_NOT_IN_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def _one_line(value: str) -> str:
    if (bad := _NOT_IN_LINE.search(value)) is not None:
        raise ValueError(f"control or invalid character U+{ord(bad.group()):04X} at "
                         f"position {bad.start()}")
    return value


def _plain_text(value: str) -> str:
    if (bad := _NOT_IN_TEXT.search(value)) is not None:
        raise ValueError(f"control or invalid character U+{ord(bad.group()):04X} at "
                         f"position {bad.start()} (only tabs and line breaks are allowed)")
    return value


def _sane_time(value: datetime) -> datetime:
    """Times a person could mean: its UTC instant between the years 1900 and 2200."""
    try:
        year = value.astimezone(UTC).year
    except OverflowError:
        year = 0
    if not 1900 <= year <= 2200:
        raise ValueError("time out of range (years 1900 to 2200)")
    return value


Line = Annotated[str, AfterValidator(_one_line)]
"""One line of text: no control characters."""
ShortText = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_one_line)]
LongText = Annotated[str, Field(max_length=4000), AfterValidator(_plain_text)]
Timestamp = Annotated[AwareDatetime, AfterValidator(_sane_time)]
"""A time with its UTC offset, between 1900 and 2200."""

_ID_SEPARATORS = re.compile(r"[\s.\-]")


def utcnow() -> datetime:
    return datetime.now(UTC)


def national_id_digits(raw: str) -> str:
    """The digits of a national id as typed: spaces, dots and dashes removed."""
    return _ID_SEPARATORS.sub("", raw)


def check_national_id(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    digits = national_id_digits(value)
    if not digits.isdigit() or len(digits) not in (9, 12):
        raise ValueError(
            "national id must be 12 digits (CCCD) or 9 digits (CMND); "
            "spaces, dots and dashes are allowed between digits"
        )
    return value


class Contract(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


class Category(StrEnum):
    WANTED_PERSON = "wanted_person"
    MANAGED_PERSON = "managed_person"
    MISSING_PERSON = "missing_person"
    STOLEN_VEHICLE = "stolen_vehicle"
    INCIDENT_SUSPECT = "incident_suspect"
    """A hot-list entry made from an incident's suspect (temporary, owned by its unit)."""
    INCIDENT_VEHICLE = "incident_vehicle"
    """A hot-list entry made from an incident's vehicle."""


HOT_LIST = frozenset({Category.INCIDENT_SUSPECT, Category.INCIDENT_VEHICLE})
"""Categories only incidents make (`PUT /v1/watchlist` refuses them)."""


class RequiredAction(StrEnum):
    """What the listing unit asks for on a hit (as SIS's Article 26/36 alerts do)."""

    ARREST = "arrest"
    DISCREET_CHECK = "discreet_check"
    """Check and report without alerting the subject."""
    LOCATE_AND_REPORT = "locate_and_report"


class Caution(StrEnum):
    """Officer-safety flags (as NCIC's caution codes)."""

    ARMED = "armed"
    VIOLENT = "violent"
    ESCAPE_RISK = "escape_risk"
    MEDICAL_CONDITION = "medical_condition"


class Gender(StrEnum):
    MALE = "male"
    FEMALE = "female"


class SharingScope(StrEnum):
    """Who may receive alerts on an entry (MISP-style distribution levels)."""

    OWNER_ONLY = "owner_only"
    """Only the listing unit and the unit where the subject was seen."""
    AGREEMENT_PARTNERS = "agreement_partners"
    """Plus the units that share a coordination agreement with the place."""
    NEIGHBOURS = "neighbours"
    """Plus adjacent and nearby units (the default)."""
    ALL_UNITS = "all_units"


class Urgency(StrEnum):
    """How fast the listing unit must confirm a hit (NCIC: 10 minutes urgent, 1 hour routine)."""

    URGENT = "urgent"
    ROUTINE = "routine"


URGENT_BY_DEFAULT = frozenset({"wanted_person", "missing_person", "incident_suspect",
                               "incident_vehicle"})


class Subject(Contract):
    """The identifying fields of a person or vehicle as reported; every field optional."""

    name: ShortText | None = None
    gender: Gender | None = None
    birth_date: date | None = None
    birth_year: int | None = Field(None, ge=1900, le=2100)
    national_id: Line | None = Field(
        None, max_length=32, description="12-digit CCCD or 9-digit CMND; spaces/dots allowed."
    )
    plate: Line | None = Field(None, min_length=3, max_length=20, examples=["51F-123.45"])
    description: LongText | None = None

    @field_validator("national_id")
    @classmethod
    def _national_id_shape(cls, value: str | None) -> str | None:
        return check_national_id(value)

    @field_validator("birth_date")
    @classmethod
    def _birth_date_not_in_future(cls, value: date | None) -> date | None:
        if value is not None and value > utcnow().date():
            raise ValueError("birth date is in the future")
        return value

    @model_validator(mode="after")
    def _birth_year_agrees_with_birth_date(self) -> Subject:
        if self.birth_date and self.birth_year and self.birth_date.year != self.birth_year:
            raise ValueError(
                f"birth_year {self.birth_year} contradicts birth_date {self.birth_date}"
            )
        return self

    def is_empty(self) -> bool:
        return not (self.name or self.national_id or self.plate)


class Place(Contract):
    """Where something happened: the unit whose territory it is, and optionally more."""

    unit_code: UnitCode
    lat: float | None = Field(None, ge=-90, le=90)
    lon: float | None = Field(None, ge=-180, le=180)
    address: LongText | None = None

    @field_validator("lat", "lon")
    @classmethod
    def _no_negative_zero(cls, value: float | None) -> float | None:
        """-0.0 is 0.0: PostgreSQL's jsonb keeps no negative zero, so a place stored and
        read back must not differ from the place as it came."""
        return None if value is None else value + 0.0

    @model_validator(mode="after")
    def _lat_and_lon_together(self) -> Place:
        if (self.lat is None) != (self.lon is None):
            raise ValueError("lat and lon must be given together")
        return self


class Vehicle(Contract):
    plate: Line = Field(min_length=3, max_length=20)
    description: LongText | None = None
    action: RequiredAction | None = Field(None, description="What to do on a hit.")
    cautions: tuple[Caution, ...] = Field((), max_length=4)


class Suspect(Subject):
    """An incident's suspect: a subject, and what to do and beware of when found."""

    action: RequiredAction | None = Field(None, description="What to do on a hit.")
    cautions: tuple[Caution, ...] = Field((), max_length=4, description="Officer safety.")


class WatchlistEntryFields(Contract):
    """What a unit says about a listed subject (the body of a watchlist create/update)."""

    category: Category
    full_name: ShortText | None = None
    aliases: tuple[ShortText, ...] = ()
    gender: Gender | None = None
    birth_date: date | None = None
    birth_year: int | None = Field(None, ge=1900, le=2100)
    national_id: Line | None = Field(None, max_length=32)
    plates: tuple[Annotated[Line, Field(min_length=3, max_length=20)], ...] = ()
    description: LongText | None = None
    sharing_scope: SharingScope = SharingScope.NEIGHBOURS
    urgency: Urgency | None = Field(
        None, description="Confirmation urgency of hits; default: urgent for wanted and "
        "missing persons, routine otherwise.")
    valid_until: Timestamp | None = None
    action: RequiredAction | None = Field(
        None, description="What the listing unit asks for on a hit: arrest, a discreet "
        "check (do not alert the subject), or locate and report.")
    cautions: tuple[Caution, ...] = Field(
        (), max_length=4, description="Officer-safety flags, shown first on every alert.")

    def effective_urgency(self) -> Urgency:
        if self.urgency is not None:
            return self.urgency
        return Urgency.URGENT if self.category.value in URGENT_BY_DEFAULT else Urgency.ROUTINE

    @field_validator("national_id")
    @classmethod
    def _national_id_shape(cls, value: str | None) -> str | None:
        return check_national_id(value)

    @model_validator(mode="after")
    def _identifies_someone(self) -> WatchlistEntryFields:
        if not (self.full_name or self.national_id or self.plates):
            raise ValueError("an entry needs at least a full_name, a national_id or a plate")
        if self.category is Category.STOLEN_VEHICLE and not self.plates:
            raise ValueError("a stolen_vehicle entry needs at least one plate")
        return self


class WatchlistEntry(WatchlistEntryFields):
    """One listed subject, as its owner unit keeps it. `version` grows with each change."""

    entry_id: EntryId
    owner_unit: UnitCode
    version: int = Field(1, ge=1)
    incident_id: UUID | None = Field(
        None, description="The incident whose hot list this entry is (set by the server).")


class MatchReason(Contract):
    feature: str
    detail: str


class Recipient(Contract):
    unit_code: UnitCode
    reasons: tuple[str, ...]


# ----------------------------------------------------------------------------- envelope


class Event(Contract):
    """The envelope every event carries. Subclasses fix `type` to their own name."""

    event_id: UUID = Field(default_factory=uuid4)
    type: str
    schema_version: int = 1
    occurred_at: Timestamp
    recorded_at: Timestamp = Field(default_factory=utcnow)
    producer_unit: UnitCode | None = Field(
        None, description="The unit that published it; None for system events."
    )
    correlation_id: UUID | None = Field(
        None, description="Id of the event that started the chain (a sighting's own id)."
    )

    def correlation(self) -> UUID:
        return self.correlation_id or self.event_id


class SightingReported(Event):
    type: Literal["SightingReported"] = "SightingReported"
    subject: Subject
    place: Place

    @model_validator(mode="after")
    def _subject_is_identifiable(self) -> SightingReported:
        if self.subject.is_empty():
            raise ValueError("a sighting needs at least a name, a national_id or a plate")
        return self


class Severity(StrEnum):
    """How fast neighbours must act on an incident (CAP urgency)."""

    IMMEDIATE = "immediate"
    EXPECTED = "expected"


class IncidentOutcome(StrEnum):
    CAUGHT = "caught"
    LOST = "lost"
    FALSE_REPORT = "false_report"


Bearing = Annotated[int, Field(ge=0, le=359, description="Degrees from north, clockwise.")]


class IncidentReported(Event):
    type: Literal["IncidentReported"] = "IncidentReported"
    incident_type: ShortText
    summary: LongText | None = None
    place: Place
    suspects: tuple[Suspect, ...] = Field((), max_length=100)
    vehicles: tuple[Vehicle, ...] = Field((), max_length=100)
    severity: Severity = Severity.EXPECTED
    fled_towards: tuple[UnitCode, ...] = Field(
        (), max_length=20, description="Units the suspects fled towards.")
    fled_bearing: Bearing | None = Field(None, description="Direction of flight, if known.")
    hot_list_hours: int | None = Field(
        None, ge=1, le=720, description="How long its suspects and vehicles stay on the hot "
        "list (default: GIAPRANH_HOT_LIST_HOURS, 72).")


class IncidentUpdated(Event):
    """The reporting unit adds suspects or vehicles, or a new direction of flight."""

    type: Literal["IncidentUpdated"] = "IncidentUpdated"
    incident_id: UUID
    suspects: tuple[Suspect, ...] = Field((), max_length=100)
    vehicles: tuple[Vehicle, ...] = Field((), max_length=100)
    fled_towards: tuple[UnitCode, ...] = Field((), max_length=20)
    fled_bearing: Bearing | None = None
    note: LongText | None = None


class IncidentClosed(Event):
    """The reporting unit closes the incident: its hot list expires, open alerts close."""

    type: Literal["IncidentClosed"] = "IncidentClosed"
    incident_id: UUID
    outcome: IncidentOutcome
    note: LongText | None = None


class WatchlistEntryUpserted(Event):
    type: Literal["WatchlistEntryUpserted"] = "WatchlistEntryUpserted"
    entry: WatchlistEntry


class WatchlistEntryCancelled(Event):
    type: Literal["WatchlistEntryCancelled"] = "WatchlistEntryCancelled"
    entry_id: EntryId
    owner_unit: UnitCode
    version: int = Field(ge=1)
    reason: ShortText


class HitFound(Event):
    """The matcher's verdict that a reported subject is a listed one."""

    type: Literal["HitFound"] = "HitFound"
    hit_id: UUID = Field(description="Deterministic: one id per source event and entry, whatever "
                         "the entry's version (`services.matcher.hits.hit_id`).")
    entry: WatchlistEntry
    source_event_id: UUID
    source_type: Literal["SightingReported", "IncidentReported"]
    subject: Subject
    place: Place
    seen_at: AwareDatetime
    reported_at: AwareDatetime = Field(description="When ingest recorded the source report.")
    score: float = Field(ge=0, le=1)
    reasons: tuple[MatchReason, ...]
    late: bool = Field(False, description="Found by re-matching a new entry against the past.")
    reported_by: UnitCode | None = Field(
        None, description="The unit that filed the report (it always hears of its hits).")


class HitsWithdrawn(Event):
    """An entry was cancelled: downstream withdraws the open alerts raised on it."""

    type: Literal["HitsWithdrawn"] = "HitsWithdrawn"
    entry_id: EntryId
    owner_unit: UnitCode
    version: int = Field(ge=1, description="The cancelled version of the entry.")
    reason: ShortText


class AlertRaised(Event):
    type: Literal["AlertRaised"] = "AlertRaised"
    alert_id: UUID
    hit_id: UUID
    entry_id: EntryId
    category: Category
    recipients: tuple[Recipient, ...]


AnyEvent = Annotated[
    SightingReported
    | IncidentReported
    | IncidentUpdated
    | IncidentClosed
    | WatchlistEntryUpserted
    | WatchlistEntryCancelled
    | HitFound
    | HitsWithdrawn
    | AlertRaised,
    Field(discriminator="type"),
]
_any_event = TypeAdapter(AnyEvent)


def encode_event(event: Event) -> bytes:
    return event.model_dump_json().encode()


def decode_event(raw: bytes | str) -> Event:
    """Decode any event; raises pydantic.ValidationError on malformed input."""
    return _any_event.validate_json(raw)


class DeadLetter(Contract):
    """A message a consumer could not process, parked with the reason (not a domain event)."""

    service: ShortText
    source_topic: str
    partition: int
    offset: int
    key: str | None = None
    payload: str = Field(description="The original value, as UTF-8 text (invalid bytes replaced).")
    error: str
    failed_at: AwareDatetime = Field(default_factory=utcnow)
