"""Event contracts and the topic registry: examples, round trips, validation rules."""

import json
import typing
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from shared import events
from shared.events import Place, SightingReported, Subject, decode_event, encode_event
from shared.settings import CommonSettings
from shared.topics import ALL_TOPICS


@pytest.mark.parametrize("spec", ALL_TOPICS, ids=lambda s: s.name)
def test_every_topic_example_is_valid_for_its_value_type(spec):
    value = spec.decode(json.dumps(spec.example()))
    assert isinstance(value, spec.value_types)


@pytest.mark.parametrize("spec", ALL_TOPICS, ids=lambda s: s.name)
def test_every_topic_example_survives_a_json_round_trip(spec):
    value = spec.decode(json.dumps(spec.example()))
    assert spec.decode(value.model_dump_json()) == value


@pytest.mark.parametrize("spec", [s for s in ALL_TOPICS if len(s.value_types) > 1],
                         ids=lambda s: s.name)
def test_a_message_is_checked_against_the_type_it_names_only(spec):
    """A topic carrying several event types tells them apart by `type`: a broken message
    is refused for what its own type lacks (not once per type the topic carries, which
    also doubled the cost of every message), and an unknown type is refused as such."""
    named = spec.value_types[-1].__name__
    with pytest.raises(ValidationError) as refused:
        spec.decode(json.dumps({"type": named}))
    assert refused.value.errors()
    assert all(error["loc"][0] == named for error in refused.value.errors())
    with pytest.raises(ValidationError) as unknown:
        spec.decode(json.dumps({"type": "NoSuchEvent"}))
    assert [error["type"] for error in unknown.value.errors()] == ["union_tag_invalid"]


def test_every_event_type_is_carried_by_exactly_one_topic():
    union_members = typing.get_args(typing.get_args(events.AnyEvent)[0])
    carried = [t for spec in ALL_TOPICS for t in spec.value_types]
    for event_type in union_members:
        assert carried.count(event_type) == 1, event_type.__name__


def test_topic_names_are_unique_and_every_topic_has_owners():
    names = [spec.name for spec in ALL_TOPICS]
    assert len(names) == len(set(names))
    for spec in ALL_TOPICS:
        assert spec.producers and spec.consumers and spec.key


def test_events_decode_to_their_own_class_by_type():
    sighting = SightingReported(
        occurred_at=datetime.now(UTC), producer_unit="CA-31212",
        subject=Subject(national_id="089 091 004 217"), place=Place(unit_code="CA-31212"),
    )
    assert decode_event(encode_event(sighting)) == sighting


def test_events_are_frozen():
    subject = Subject(name="Nguyễn Văn Hùng")
    with pytest.raises(ValidationError):
        subject.name = "other"


@pytest.mark.parametrize("national_id", ["12345", "08909100421X", "0890910042171"])
def test_national_id_must_have_9_or_12_digits(national_id):
    with pytest.raises(ValidationError, match="national id must be 12 digits"):
        Subject(national_id=national_id)


@pytest.mark.parametrize("national_id", ["089091004217", "089 091 004 217", "089.091.004.217",
                                         "123456789"])
def test_national_id_accepts_separators_and_old_cmnd(national_id):
    assert Subject(national_id=national_id).national_id == national_id


def test_birth_date_in_the_future_is_rejected():
    with pytest.raises(ValidationError, match="birth date is in the future"):
        Subject(name="A", birth_date=(datetime.now(UTC) + timedelta(days=2)).date())


def test_lat_without_lon_is_rejected():
    with pytest.raises(ValidationError, match="lat and lon must be given together"):
        Place(unit_code="CA-31212", lat=10.2)


def test_a_sighting_must_identify_someone():
    with pytest.raises(ValidationError, match="at least a name, a national_id or a plate"):
        SightingReported(occurred_at=datetime.now(UTC), subject=Subject(description="áo đen"),
                         place=Place(unit_code="CA-31212"))


def test_production_refuses_the_development_pepper():
    with pytest.raises(ValidationError, match="GIAPRANH_API_KEY_PEPPER"):
        CommonSettings(environment="production")
    assert CommonSettings(environment="production", api_key_pepper="x" * 32,
                          kafka_security_protocol="SASL_SSL", kafka_sasl_username="giapranh",
                          kafka_sasl_password="y" * 32)


def test_the_notifiers_announcement_is_a_valid_alert_raised():
    """`announcement` builds its event without validating again: what it writes must
    still be what the contract reads."""
    import uuid

    from services.notifier.consumer import announcement
    from services.notifier.service import NewAlert
    from shared.topics import ALERTS, HITS

    hit = events.HitFound.model_validate(HITS.example())
    alert = NewAlert(uuid.uuid4(), hit, (events.Recipient(unit_code="CA-30307",
                                                          reasons=("this unit listed it",)),))
    _, key, value = ALERTS.record(CommonSettings(), announcement(alert))
    decoded = events.AlertRaised.model_validate_json(value)
    assert decoded.alert_id == alert.alert_id and decoded.hit_id == hit.hit_id
    assert decoded.entry_id == hit.entry.entry_id and decoded.category == hit.entry.category
    assert [r.unit_code for r in decoded.recipients] == ["CA-30307"]
    assert decoded.correlation_id == hit.correlation()
    assert decoded.event_id and decoded.type == "AlertRaised"
