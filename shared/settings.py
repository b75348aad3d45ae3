"""Settings shared by every service: one env prefix (`GIAPRANH_`), one class per service.

Each service subclasses `CommonSettings` with its own fields. Settings are read and
validated once, at start-up, by the service's wiring function; nothing reads the
environment at import time.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import Field, FilePath, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "GIAPRANH_"
DEV_PEPPER = "dev-only-api-key-pepper"


class Environment(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


class KafkaSecurityProtocol(StrEnum):
    PLAINTEXT = "PLAINTEXT"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"
    SSL = "SSL"

    @property
    def sasl(self) -> bool:
        return self in (KafkaSecurityProtocol.SASL_PLAINTEXT, KafkaSecurityProtocol.SASL_SSL)

    @property
    def tls(self) -> bool:
        return self in (KafkaSecurityProtocol.SSL, KafkaSecurityProtocol.SASL_SSL)


class KafkaSaslMechanism(StrEnum):
    SCRAM_SHA_512 = "SCRAM-SHA-512"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    PLAIN = "PLAIN"


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    environment: Environment = Field(
        Environment.DEVELOPMENT,
        description="development, test or production; production refuses development secrets.",
    )
    database_url: str = Field(
        "postgresql://giapranh@localhost:5432/giapranh",
        description="PostgreSQL DSN (asyncpg). The system of record.",
    )
    db_pool_max_size: int = Field(10, ge=1, le=200, description="Connections per process.")
    kafka_bootstrap_servers: str = Field(
        "localhost:9092", description="Comma-separated host:port list of the Kafka brokers."
    )
    kafka_idempotent_producer: bool = Field(
        True,
        description="Idempotent producer (enable.idempotence). On for Apache Kafka; "
        "must be off on the embedded Tansu broker, which lacks InitProducerId.",
    )
    kafka_session_timeout_seconds: float = Field(
        10.0,
        ge=1.0,
        le=300.0,
        description="Consumer group session timeout. Tansu delays a group's first join by "
        "half of it, so the embedded stack uses 2 s.",
    )
    kafka_fetch_max_wait_ms: int = Field(
        500,
        ge=1,
        le=10_000,
        description="Longest a consumer's fetch waits for data. Apache Kafka answers as soon "
        "as data arrives; Tansu waits the full time, so the embedded stack uses 20 ms.",
    )
    kafka_request_timeout_seconds: float = Field(
        15.0,
        ge=1.0,
        le=300.0,
        description="How long a produce may wait for the broker before it fails and the "
        "sender rebuilds its producer (the relay then retries from the outbox).",
    )
    kafka_security_protocol: KafkaSecurityProtocol = Field(
        KafkaSecurityProtocol.PLAINTEXT,
        description="How clients reach the brokers: PLAINTEXT (the embedded dev broker only), "
        "SASL_PLAINTEXT (user and password, no encryption: inside a private network), "
        "SASL_SSL (user and password over TLS) or SSL (TLS; a client certificate "
        "authenticates). Production refuses an unauthenticated broker.",
    )
    kafka_sasl_mechanism: KafkaSaslMechanism = Field(
        KafkaSaslMechanism.SCRAM_SHA_512,
        description="SASL mechanism with SASL_*: SCRAM-SHA-512, SCRAM-SHA-256, or PLAIN "
        "(sends the password itself: SASL_SSL only).",
    )
    kafka_sasl_username: str = Field(
        "", description="SASL user with SASL_*; empty otherwise.")
    kafka_sasl_password: SecretStr = Field(
        SecretStr(""), description="SASL password with SASL_*; empty otherwise.")
    kafka_ssl_cafile: FilePath | None = Field(
        None,
        description="PEM file of the CA(s) that signed the brokers' certificates, with SSL "
        "or SASL_SSL; unset: the system's CAs.",
    )
    kafka_ssl_certfile: FilePath | None = Field(
        None,
        description="PEM client certificate (chain) with SSL or SASL_SSL, for brokers that "
        "require one; may hold the key too.",
    )
    kafka_ssl_keyfile: FilePath | None = Field(
        None, description="PEM private key (unencrypted) of the client certificate.")
    topic_prefix: str = Field(
        "giapranh.", pattern=r"^[A-Za-z0-9._-]*$", description="Prefix of every topic name."
    )
    topic_partitions: int = Field(6, ge=1, le=1000, description="Partitions of created topics.")
    topic_replication: int = Field(1, ge=1, le=10, description="Replication of created topics.")
    api_key_pepper: SecretStr = Field(
        SecretStr(DEV_PEPPER),
        description="Server-side secret mixed into API-key hashes. Required in production.",
    )
    max_requests_in_flight: int = Field(
        512, ge=0, le=100_000,
        description="Requests an instance handles at once (live streams counted until they "
        "start); "
        "beyond it, 503 `overloaded` with Retry-After at once (0: no limit).")
    max_requests_in_flight_per_unit: int | None = Field(
        None, ge=0, le=100_000,
        description="Requests one unit's API keys together may have in flight at once on an "
        "instance, from authentication until the answer is written (unset: a quarter of "
        "GIAPRANH_MAX_REQUESTS_IN_FLIGHT; 0: no limit); beyond it, 429 `unit_busy` with "
        "Retry-After at once, so that one unit's clients, broken or hostile, cannot take "
        "every place. The instance's last places, a quarter of this, go only to units with "
        "fewer than that in flight.")
    key_cache_seconds: float = Field(
        10.0, ge=0, le=300,
        description="Seconds a resolved API key is kept in memory (0: ask the database on "
        "every request). Any change of a key or unit drops it at once (NOTIFY).")
    requests_per_minute_per_key: float = Field(
        6000, gt=0,
        description="Requests one API key may make per minute (bursts of a tenth of it), per "
        "process; 429 with Retry-After above.")
    metrics_port: int | None = Field(
        None, ge=1, le=65535,
        description="Serve /metrics only on this port, a listener of its own (keep it off "
        "the published network), instead of on the service's API port.")
    metrics_host: str = Field(
        "127.0.0.1", description="Address the separate /metrics listener binds to.")
    log_level: str = Field("INFO", description="Python log level of the services.")
    log_format: Literal["json", "text"] = Field(
        "json", description="json: one object per line with event and correlation ids; text."
    )
    log_events: bool = Field(
        False, description="Also log one line per accepted event, hit and alert (logger "
        "`giapranh.events`), to follow a report by its id; off by default: they are counted "
        "in the metrics, and at a thousand a second the lines cost more than the work.")

    @model_validator(mode="after")
    def _refuse_development_secrets_in_production(self) -> CommonSettings:
        if self.environment is Environment.PRODUCTION:
            if self.api_key_pepper.get_secret_value() == DEV_PEPPER:
                raise ValueError(
                    "GIAPRANH_API_KEY_PEPPER still has its development value; "
                    "set a long random secret in production"
                )
            if len(self.api_key_pepper.get_secret_value()) < 16:
                raise ValueError("GIAPRANH_API_KEY_PEPPER must be at least 16 characters")
        return self

    @model_validator(mode="after")
    def _check_kafka_security(self) -> CommonSettings:
        protocol = self.kafka_security_protocol
        username, password = self.kafka_sasl_username, self.kafka_sasl_password.get_secret_value()
        if protocol.sasl:
            missing = [name for name, value in (("GIAPRANH_KAFKA_SASL_USERNAME", username),
                                                ("GIAPRANH_KAFKA_SASL_PASSWORD", password))
                       if not value]
            if missing:
                raise ValueError(f"GIAPRANH_KAFKA_SECURITY_PROTOCOL={protocol} needs "
                                 f"{' and '.join(missing)}")
            if (self.kafka_sasl_mechanism is KafkaSaslMechanism.PLAIN
                    and protocol is KafkaSecurityProtocol.SASL_PLAINTEXT):
                raise ValueError("GIAPRANH_KAFKA_SASL_MECHANISM=PLAIN sends the password "
                                 "itself: use it with SASL_SSL only, or use SCRAM-SHA-512")
        elif username or password:
            raise ValueError(f"GIAPRANH_KAFKA_SASL_USERNAME/PASSWORD are set but "
                             f"GIAPRANH_KAFKA_SECURITY_PROTOCOL={protocol} does not use them: "
                             "set it to SASL_SSL or SASL_PLAINTEXT")
        tls_files = {name: value for name, value in (
            ("GIAPRANH_KAFKA_SSL_CAFILE", self.kafka_ssl_cafile),
            ("GIAPRANH_KAFKA_SSL_CERTFILE", self.kafka_ssl_certfile),
            ("GIAPRANH_KAFKA_SSL_KEYFILE", self.kafka_ssl_keyfile)) if value is not None}
        if tls_files and not protocol.tls:
            raise ValueError(f"{', '.join(tls_files)} set but "
                             f"GIAPRANH_KAFKA_SECURITY_PROTOCOL={protocol} does not use TLS: "
                             "set it to SASL_SSL or SSL")
        if self.kafka_ssl_keyfile is not None and self.kafka_ssl_certfile is None:
            raise ValueError("GIAPRANH_KAFKA_SSL_KEYFILE needs GIAPRANH_KAFKA_SSL_CERTFILE "
                             "(the certificate it is the key of)")
        if self.environment is Environment.PRODUCTION:
            if protocol is KafkaSecurityProtocol.PLAINTEXT:
                raise ValueError(
                    "GIAPRANH_KAFKA_SECURITY_PROTOCOL=PLAINTEXT in production: whoever reaches "
                    "the broker could read every report and forge events; use SASL_SSL (or "
                    "SASL_PLAINTEXT inside a private network) with GIAPRANH_KAFKA_SASL_USERNAME "
                    "and GIAPRANH_KAFKA_SASL_PASSWORD")
            if protocol is KafkaSecurityProtocol.SSL and self.kafka_ssl_certfile is None:
                raise ValueError(
                    "GIAPRANH_KAFKA_SECURITY_PROTOCOL=SSL without GIAPRANH_KAFKA_SSL_CERTFILE "
                    "in production: the broker would not know who connects; give a client "
                    "certificate or use SASL_SSL")
        return self

    def topic(self, logical_name: str) -> str:
        """The full topic name of a registry topic under this deployment's prefix."""
        return f"{self.topic_prefix}{logical_name}"


def default_data_dir() -> Path:
    """Where the embedded stack keeps its files: `.giapranh/` in the working directory."""
    return Path(".giapranh")
