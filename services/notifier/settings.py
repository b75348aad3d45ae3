from pydantic import Field

from shared.settings import CommonSettings


class NotifierSettings(CommonSettings):
    notifier_host: str = Field("127.0.0.1", description="Address the notifier binds to.")
    notifier_port: int = Field(8001, ge=1, le=65535, description="Port of the notifier.")
    notifier_group_id: str = Field(
        "giapranh-notifier", description="Consumer group of the notifier instances."
    )
    notifier_batch_size: int = Field(500, ge=1, le=10_000, description="Hits per batch.")
