from pathlib import Path

from pydantic import Field

from shared.settings import CommonSettings


class MatcherSettings(CommonSettings):
    matcher_group_id: str = Field(
        "giapranh-matcher", description="Consumer group (faust app id) of the matcher workers."
    )
    matcher_host: str = Field("127.0.0.1", description="Address of the matcher's HTTP endpoints.")
    matcher_port: int = Field(8002, ge=1, le=65535, description="Port of /healthz and /metrics.")
    matcher_batch_size: int = Field(
        2000, ge=1, le=50_000, description="Most reports fetched and matched per batch."
    )
    late_match_window_days: float = Field(
        5, gt=0, le=60, description="New entries are checked against reports this recent."
    )
    incident_lookback_hours: float = Field(
        2, gt=0, le=24 * 60,
        description="An incident's hot list is checked against the reports of this many "
        "hours before it was made (the camera that read the plate before the report).")
    late_match_max_reports: int = Field(
        100_000, ge=0, description="Most recent reports kept in memory for late matching."
    )
    matcher_data_dir: Path = Field(
        Path(".giapranh/matcher"), description="faust's working directory for this worker."
    )
    matcher_reconcile_seconds: float = Field(
        5, gt=0, le=300, description="How often hits without an alert are looked for.")
    matcher_redrive_after_seconds: float = Field(
        30, gt=0, le=3600,
        description="A hit with no alert after this long is published again.")
    matcher_max_redrives: int = Field(
        5, ge=0, le=100, description="Publications again before a hit counts as stuck.")
    matcher_record_days: float = Field(
        2, gt=0, description="How long verdicts and delivered hits are kept (ingest needs a "
        "verdict only until it has verified the report, seconds to minutes).")
