import ipaddress

from pydantic import Field, field_validator

from shared.settings import CommonSettings


class NotifierSettings(CommonSettings):
    notifier_host: str = Field("127.0.0.1", description="Address the notifier binds to.")
    notifier_port: int = Field(8001, ge=1, le=65535, description="Port of the notifier.")
    notifier_group_id: str = Field(
        "giapranh-notifier", description="Consumer group of the notifier instances."
    )
    notifier_batch_size: int = Field(
        2000, ge=1, le=10_000,
        description="Most hits taken and stored at once (fewer when fewer are waiting): a "
        "notifier behind catches up in larger transactions.")
    notifier_radius_km: float = Field(
        5.0, ge=0, le=200,
        description="Units within this distance of a sighting's coordinates receive its "
        "alerts (scope `neighbours` and wider); 0 turns it off.")
    pursuit_radius_km: float = Field(
        30.0, ge=0, le=500,
        description="An incident with a direction of flight (a bearing) alerts the units "
        "lying that way (45° either side) within this distance; 0 turns it off.")
    incident_replay_seconds: float = Field(
        10, gt=0, le=3600,
        description="How often incident events the broker never delivered are looked for "
        "in ingest's record (and handled from there).")
    urgent_deadline_seconds: float = Field(
        600, gt=0, description="Time the listing unit has to confirm an urgent hit (NCIC: 10 min).")
    routine_deadline_seconds: float = Field(
        3600, gt=0, description="Time to confirm a routine hit (NCIC: 1 hour).")
    deadline_check_seconds: float = Field(
        5.0, gt=0, description="How often missed confirmation deadlines are looked for.")
    webhook_max_attempts: int = Field(
        8, ge=1, le=100, description="Attempts before a webhook delivery is dead-lettered.")
    webhook_retry_base_seconds: float = Field(
        5.0, gt=0, description="First retry delay; doubles with each failure.")
    webhook_retry_max_seconds: float = Field(600, gt=0, description="Longest retry delay.")
    webhook_timeout_seconds: float = Field(10, gt=0, description="Timeout of one webhook POST, as a whole.")
    webhook_poll_seconds: float = Field(
        0.5, gt=0, description="How often queued webhook deliveries are looked for.")
    cap_sender: str = Field(
        "giapranh", pattern=r"^[^\s,<&]+$",
        description="CAP `sender` of this deployment's messages (no spaces or commas).")
    notifier_public_url: str | None = Field(
        None, pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$",
        description="The notifier's address as desks and receivers reach it (e.g. "
        "`https://canhbao.congan.example.vn`), for the links of the Atom feed; unset: the "
        "address each request came to (its `Host` header, which a client chooses).")
    notifier_max_streams_per_key: int = Field(
        5, ge=1, le=1000,
        description="Live alert streams (SSE) one API key may hold open at once (429 above).")
    notifier_max_streams_per_unit: int = Field(
        50, ge=1, le=100_000,
        description="Live alert streams one unit may hold open at once, all its keys together "
        "(429 above): a unit admin mints keys at will.")
    webhook_allowed_networks: str = Field(
        "", description="Comma-separated networks (CIDR) webhooks may reach although they are "
        "not public, e.g. `10.20.0.0/16` for a province's own receivers; empty: public only.")

    @field_validator("webhook_allowed_networks")
    @classmethod
    def _networks(cls, value: str) -> str:
        for network in filter(None, (part.strip() for part in value.split(","))):
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError as exc:
                raise ValueError(f"not a network: {network!r} ({exc})") from None
        return value

    def allowed_networks(self) -> list[str]:
        return [p.strip() for p in self.webhook_allowed_networks.split(",") if p.strip()]
