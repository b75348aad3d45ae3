from pydantic import Field

from shared.settings import CommonSettings


class IngestSettings(CommonSettings):
    ingest_host: str = Field("127.0.0.1", description="Address the ingest API binds to.")
    ingest_port: int = Field(8000, ge=1, le=65535, description="Port of the ingest API.")
    ingest_max_wait_seconds: float = Field(
        1.0, gt=0, le=60,
        description="Longest a single report may wait to be written (group commit); while "
        "the oldest has waited longer, new ones get 503 `overloaded` with Retry-After.")
    ingest_write_timeout_seconds: float = Field(
        10.0, gt=0, le=300,
        description="Longest one group of reports may take to be written; past it the "
        "write is cancelled and its requests get 503 with Retry-After (a retry with the "
        "same event id is safe).")
    relay_batch_size: int = Field(
        1000, ge=1, le=50_000, description="Outbox rows published per relay round."
    )
    relay_idle_seconds: float = Field(
        1.0, gt=0, le=60, description="Relay poll interval when no NOTIFY wakes it."
    )
    max_body_bytes: int = Field(
        2_000_000, ge=1024, description="Largest request body accepted (413 above)."
    )
    max_future_skew_seconds: float = Field(
        300, ge=0, description="How far in the future an event's occurred_at may be."
    )
    reconcile_after_seconds: float = Field(
        30, gt=0, le=3600,
        description="A published report or watchlist change with no matcher verdict after "
        "this long is published again (the wait doubles with each attempt).")
    reconcile_interval_seconds: float = Field(
        5, gt=0, le=300, description="How often published events are checked for verdicts.")
    reconcile_max_redrives: int = Field(
        5, ge=0, le=100,
        description="Publications again before an event without a verdict counts as stuck.")
    reconcile_alarm_seconds: float = Field(
        120, gt=0,
        description="/readyz fails while a published event has waited longer than this for "
        "its verdict, or one is stuck.")
    max_lookalikes_per_unit: int = Field(
        3, ge=1, le=10_000,
        description="Active entries one unit may list with the same name and birth year, or "
        "the same national id (422 above): copies must not crowd another unit's entry out.")
    watchlist_writes_per_minute: float = Field(
        120, gt=0,
        description="Watchlist creations, updates and cancellations per API key and minute, "
        "per ingest instance (429 with Retry-After above).")
    sighting_retention_days: float = Field(
        90, gt=0, le=36_500,
        description="Sightings that raised no alert lose their subject's identifying fields "
        "this many days after they happened (alerts, incidents and the audit log are kept).")
    matcher_url: str = Field(
        "http://127.0.0.1:8002",
        description="A matcher worker's HTTP address: checks (POST /v1/checks) are matched "
        "there.")
    check_timeout_seconds: float = Field(
        2.0, gt=0, le=60, description="Longest wait for the matcher's answer to a check "
        "(503 after).")
    hot_list_hours: int = Field(
        72, ge=1, le=720,
        description="How long an incident's suspects and vehicles stay on its hot list "
        "(an incident may ask for another duration).")
    purge_interval_seconds: float = Field(
        3600, gt=0, description="How often ingest removes what the retention period ended.")
