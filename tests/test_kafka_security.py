"""Kafka authentication and TLS: the settings, the one helper every client is built with,
and clients that really go through TLS.

The embedded broker (Tansu) speaks PLAINTEXT only, so the TLS tests put a TLS-terminating
proxy in front of a broker of their own that advertises the proxy: every connection a
client makes (bootstrap, then the advertised broker) goes through TLS, checked against our
throwaway CA, with a client certificate the proxy requires. SASL/SCRAM itself is Kafka's
and aiokafka's; here we check that the settings reach aiokafka's clients and faust's.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from pydantic import ValidationError

from giapranh.embedded import EmbeddedBroker, free_port
from services.matcher.app import broker_credentials
from services.matcher.settings import MatcherSettings
from shared.kafka import (
    LogWatch,
    client_options,
    consumer_options,
    create_consumer,
    ensure_topics,
    producer_options,
    publish_all,
    security_options,
    start_producer,
    stop_quietly,
    wait_for_broker,
)
from shared.settings import CommonSettings
from shared.topics import SIGHTINGS
from tests.conftest import MatcherProcess

SCRAM = {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_username": "giapranh",
         "kafka_sasl_password": "s3cret-s3cret"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA, a broker certificate for localhost and a client certificate."""
    directory = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("giapranh-client")
    other_ca = trustme.CA()
    paths = {name: directory / f"{name}.pem" for name in
             ("ca", "server", "client_cert", "client_key", "other_ca")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    other_ca.cert_pem.write_to_path(str(paths["other_ca"]))
    server.private_key_and_cert_chain_pem.write_to_path(str(paths["server"]))
    client.cert_chain_pems[0].write_to_path(str(paths["client_cert"]))
    client.private_key_pem.write_to_path(str(paths["client_key"]))
    return paths


def settings(**values: object) -> CommonSettings:
    return CommonSettings.model_validate(values)


# --- settings -----------------------------------------------------------------------------

def test_the_default_is_plaintext_for_the_embedded_broker():
    plain = CommonSettings()
    assert plain.kafka_security_protocol == "PLAINTEXT"
    assert security_options(plain) == {"security_protocol": "PLAINTEXT"}


def test_sasl_needs_a_user_and_a_password():
    with pytest.raises(ValidationError, match="needs GIAPRANH_KAFKA_SASL_USERNAME and "
                                              "GIAPRANH_KAFKA_SASL_PASSWORD"):
        settings(kafka_security_protocol="SASL_SSL")
    with pytest.raises(ValidationError, match="needs GIAPRANH_KAFKA_SASL_PASSWORD"):
        settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="giapranh")


def test_credentials_without_sasl_are_refused_rather_than_ignored():
    with pytest.raises(ValidationError, match="does not use them: set it to SASL_SSL"):
        settings(kafka_sasl_username="giapranh", kafka_sasl_password="x")


def test_tls_files_without_tls_are_refused(pki):
    with pytest.raises(ValidationError, match="GIAPRANH_KAFKA_SSL_CAFILE set but .*"
                                              "does not use TLS"):
        settings(**SCRAM, kafka_ssl_cafile=pki["ca"])


def test_a_key_needs_its_certificate(pki):
    with pytest.raises(ValidationError, match="KEYFILE needs GIAPRANH_KAFKA_SSL_CERTFILE"):
        settings(kafka_security_protocol="SSL", kafka_ssl_keyfile=pki["client_key"])


def test_a_missing_tls_file_is_named(tmp_path):
    with pytest.raises(ValidationError, match="kafka_ssl_cafile"):
        settings(kafka_security_protocol="SSL", kafka_ssl_cafile=tmp_path / "nope.pem")


def test_plain_sends_the_password_so_only_over_tls():
    with pytest.raises(ValidationError, match="PLAIN sends the password"):
        settings(**SCRAM, kafka_sasl_mechanism="PLAIN")
    assert settings(**{**SCRAM, "kafka_security_protocol": "SASL_SSL"},
                    kafka_sasl_mechanism="PLAIN")


def test_an_unknown_protocol_or_mechanism_is_refused():
    with pytest.raises(ValidationError, match="kafka_security_protocol"):
        settings(kafka_security_protocol="TLS")
    with pytest.raises(ValidationError, match="kafka_sasl_mechanism"):
        settings(**SCRAM, kafka_sasl_mechanism="GSSAPI")


def test_production_refuses_an_unauthenticated_broker(pki):
    production = {"environment": "production", "api_key_pepper": "x" * 32}
    with pytest.raises(ValidationError, match="PLAINTEXT in production"):
        settings(**production)
    with pytest.raises(ValidationError, match="SSL without GIAPRANH_KAFKA_SSL_CERTFILE"):
        settings(**production, kafka_security_protocol="SSL", kafka_ssl_cafile=pki["ca"])
    assert settings(**production, **SCRAM)
    assert settings(**production, kafka_security_protocol="SSL",
                    kafka_ssl_certfile=pki["client_cert"], kafka_ssl_keyfile=pki["client_key"])


def test_the_settings_are_read_from_the_environment(monkeypatch, pki):
    for name, value in {"SECURITY_PROTOCOL": "SASL_SSL", "SASL_MECHANISM": "SCRAM-SHA-256",
                        "SASL_USERNAME": "giapranh", "SASL_PASSWORD": "pw-from-env",
                        "SSL_CAFILE": str(pki["ca"])}.items():
        monkeypatch.setenv(f"GIAPRANH_KAFKA_{name}", value)
    from_env = CommonSettings()
    assert from_env.kafka_security_protocol == "SASL_SSL"
    assert from_env.kafka_sasl_mechanism == "SCRAM-SHA-256"
    assert from_env.kafka_sasl_password.get_secret_value() == "pw-from-env"
    assert "pw-from-env" not in repr(from_env)


# --- the helper, on real aiokafka clients -------------------------------------------------

async def clients(config: CommonSettings) -> AsyncIterator[object]:
    """Every kind of client giapranh builds, built the way shared/kafka.py builds them
    (never started: nothing listens; closed after the check)."""
    for client in (AIOKafkaProducer(client_id="t", **producer_options(config)),
                   AIOKafkaConsumer(group_id="g", client_id="t", **consumer_options(config)),
                   AIOKafkaAdminClient(client_id="t", **client_options(config))):
        try:
            yield client
        finally:
            await (client.close() if isinstance(client, AIOKafkaAdminClient)
                   else client.stop())


def connection_settings(client: object) -> dict[str, object]:
    inner = getattr(client, "client", None) or client._client  # type: ignore[attr-defined]
    return {"protocol": inner._security_protocol, "mechanism": inner._sasl_mechanism,
            "username": inner._sasl_plain_username, "password": inner._sasl_plain_password,
            "ssl": inner._ssl_context}


async def test_sasl_scram_reaches_every_client():
    config = settings(**SCRAM)
    assert security_options(config) == {
        "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "giapranh", "sasl_plain_password": "s3cret-s3cret"}
    async for client in clients(config):
        assert connection_settings(client) == {
            "protocol": "SASL_PLAINTEXT", "mechanism": "SCRAM-SHA-512",
            "username": "giapranh", "password": "s3cret-s3cret", "ssl": None}, client


async def test_sasl_ssl_verifies_the_broker_against_the_ca(pki):
    config = settings(**{**SCRAM, "kafka_security_protocol": "SASL_SSL"},
                      kafka_sasl_mechanism="SCRAM-SHA-256", kafka_ssl_cafile=pki["ca"])
    async for client in clients(config):
        found = connection_settings(client)
        assert found["protocol"] == "SASL_SSL" and found["mechanism"] == "SCRAM-SHA-256"
        context = found["ssl"]
        assert isinstance(context, ssl.SSLContext)
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
        trusted = [dict(part[0] for part in ca["subject"]) for ca in context.get_ca_certs()]
        assert len(trusted) == 1 and trusted[0]["organizationName"].startswith("trustme")


async def test_plaintext_clients_get_no_credentials():
    async for client in clients(CommonSettings()):
        assert connection_settings(client) == {"protocol": "PLAINTEXT", "mechanism": "PLAIN",
                                               "username": None, "password": None,
                                               "ssl": None}


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL"])
async def test_the_matcher_faust_app_gets_the_same_credentials(protocol, pki):
    values: dict[str, object] = {"kafka_security_protocol": protocol}
    if protocol.startswith("SASL"):
        values |= {"kafka_sasl_username": "giapranh", "kafka_sasl_password": "pw"}
    if protocol.endswith("SSL"):
        values |= {"kafka_ssl_cafile": pki["ca"]}
    config = MatcherSettings.model_validate(values)
    # What faust's own aiokafka driver derives from the credentials, on a real consumer.
    auth = dict(credentials_to_aiokafka_auth(broker_credentials(config)))
    ours = security_options(config)
    assert {k: v for k, v in auth.items() if k != "ssl_context" and v is not None} == \
        {k: v for k, v in ours.items() if k != "ssl_context"}
    assert (auth.get("ssl_context") is not None) == ("ssl_context" in ours)
    consumer = AIOKafkaConsumer(bootstrap_servers="localhost:1", **auth)
    assert connection_settings(consumer)["protocol"] == protocol
    await consumer.stop()


# --- real TLS -----------------------------------------------------------------------------

class TlsProxy:
    """Terminates TLS (client certificate required) and forwards to a plain broker."""

    def __init__(self, pki: dict[str, Path], upstream_port: int):
        self.port = free_port()
        self.upstream_port = upstream_port
        self.connections = 0
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH,
                                                  cafile=str(pki["ca"]))
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.context.load_cert_chain(str(pki["server"]))
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> TlsProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port,
                                                  ssl=self.context)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        tasks = [asyncio.create_task(pipe(reader, up_writer)),
                 asyncio.create_task(pipe(up_reader, writer))]
        self._tasks.update(tasks)
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self._tasks.difference_update(tasks)


@pytest.fixture
async def tls_broker(pki, tmp_path) -> AsyncIterator[tuple[TlsProxy, str]]:
    """A broker reachable only through TLS; yields the proxy and the bootstrap address."""
    port = free_port()
    proxy = TlsProxy(pki, port)
    bootstrap = f"localhost:{proxy.port}"
    broker = EmbeddedBroker(port, tmp_path / "tls-broker.log", advertised=bootstrap)
    broker.start()
    try:
        async with proxy:
            yield proxy, bootstrap
    finally:
        broker.stop()


def tls_settings(pki, bootstrap: str, **overrides: object) -> CommonSettings:
    return CommonSettings.model_validate({
        "kafka_bootstrap_servers": bootstrap, "kafka_idempotent_producer": False,
        "kafka_session_timeout_seconds": 2, "kafka_fetch_max_wait_ms": 20,
        "topic_prefix": f"tls{uuid.uuid4().hex[:8]}.", "topic_partitions": 1,
        "kafka_security_protocol": "SSL", "kafka_ssl_cafile": pki["ca"],
        "kafka_ssl_certfile": pki["client_cert"], "kafka_ssl_keyfile": pki["client_key"],
        **overrides})


async def test_every_client_works_through_tls_with_a_client_certificate(pki, tls_broker):
    proxy, bootstrap = tls_broker
    config = tls_settings(pki, bootstrap)
    await wait_for_broker(config, timeout=15)
    assert await ensure_topics(config, [SIGHTINGS])
    topic = config.topic(SIGHTINGS.name)
    watch = LogWatch(config, client_id="tls-watch")
    producer = await start_producer(config, "tls-producer")
    try:
        assert await publish_all(producer, [(topic, b"k", b"over tls")], watch=watch) == 1
        assert await watch.check([topic]) == set()
    finally:
        await stop_quietly(producer)
        await watch.close()
    consumer = create_consumer(config, topic, group_id=f"{config.topic_prefix}g", client_id="c")
    await consumer.start()
    try:
        batch = await consumer.getmany(timeout_ms=10_000)
        assert [record.value for records in batch.values() for record in records] == \
            [b"over tls"]
    finally:
        await stop_quietly(consumer)
    assert proxy.connections >= 4


async def test_a_broker_certificate_from_another_ca_is_refused(pki, tls_broker):
    _, bootstrap = tls_broker
    with pytest.raises(TimeoutError, match="did not answer"):
        await wait_for_broker(tls_settings(pki, bootstrap, kafka_ssl_cafile=pki["other_ca"]),
                              timeout=2)


async def test_a_client_without_its_certificate_is_refused(pki, tls_broker):
    _, bootstrap = tls_broker
    with pytest.raises(TimeoutError, match="did not answer"):
        await wait_for_broker(tls_settings(pki, bootstrap, kafka_ssl_certfile=None,
                                           kafka_ssl_keyfile=None), timeout=2)


async def test_the_matcher_worker_runs_through_tls(env, topics, directory, pki,
                                                   tls_broker):
    """The whole worker, faust's own clients included, with every connection over TLS."""
    proxy, bootstrap = tls_broker
    await ensure_topics(env.settings(CommonSettings, kafka_bootstrap_servers=bootstrap,
                                     kafka_security_protocol="SSL", kafka_ssl_cafile=pki["ca"],
                                     kafka_ssl_certfile=pki["client_cert"],
                                     kafka_ssl_keyfile=pki["client_key"]))
    process = MatcherProcess(env, free_port(), GIAPRANH_KAFKA_BOOTSTRAP_SERVERS=bootstrap,
                             GIAPRANH_KAFKA_SECURITY_PROTOCOL="SSL",
                             GIAPRANH_KAFKA_SSL_CAFILE=str(pki["ca"]),
                             GIAPRANH_KAFKA_SSL_CERTFILE=str(pki["client_cert"]),
                             GIAPRANH_KAFKA_SSL_KEYFILE=str(pki["client_key"]))
    try:
        before = proxy.connections
        await process.wait_ready()
        assert proxy.connections > before
    finally:
        # In a thread: the proxy runs on this event loop, and the worker's clients close
        # their TLS sessions with it as they stop.
        await asyncio.to_thread(process.stop)
