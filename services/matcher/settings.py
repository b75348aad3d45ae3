from pathlib import Path

from pydantic import Field

from shared.settings import CommonSettings


class MatcherSettings(CommonSettings):
    matcher_group_id: str = Field(
        "giapranh-matcher", description="Consumer group (faust app id) of the matcher workers."
    )
    matcher_host: str = Field("127.0.0.1", description="Address of the matcher's HTTP endpoints.")
    matcher_port: int = Field(8002, ge=1, le=65535, description="Port of /healthz and /metrics.")
    matcher_batch_size: int = Field(500, ge=1, le=10_000, description="Events per batch.")
    matcher_batch_window_seconds: float = Field(
        0.02, gt=0, le=5, description="Longest wait to fill a batch."
    )
    matcher_data_dir: Path = Field(
        Path(".giapranh/matcher"), description="faust's working directory for this worker."
    )
