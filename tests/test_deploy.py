"""The production stack stays true to the code (no Docker engine here, so: consistency).

The compose file parses; every GIAPRANH_* variable it sets is a real setting of the
service it is set for; the services use the idempotent producer on Apache Kafka; every
metric the dashboard queries is declared in shared/metrics.py; every scrape target is a
service of the compose file on the port that serves its /metrics (GIAPRANH_METRICS_PORT if
set, else the service's own), reachable on the compose network and published nowhere.

Kafka: the broker's start-up script (deploy/kafka/start.sh) is run here for real, with
stand-ins for Kafka's two tools, and the configuration it writes is read: no listener
reachable from outside the broker's container is PLAINTEXT, the published one is SASL_SSL
once a certificate is given, the SCRAM users the services log in as are created, every
service gets every Kafka credentials setting the settings class has, and the broker keeps
reports for 7 days, less than the sighting retention period.
"""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

from services.ingest.settings import IngestSettings
from services.matcher.settings import MatcherSettings
from services.notifier.settings import NotifierSettings
from shared import metrics  # noqa: F401 - registers every metric
from shared.settings import CommonSettings
from tests.conftest import ROOT

SETTINGS = {"ingest": IngestSettings, "matcher": MatcherSettings, "notifier": NotifierSettings}
PORT_SETTING = {"ingest": "GIAPRANH_INGEST_PORT", "matcher": "GIAPRANH_MATCHER_PORT",
                "notifier": "GIAPRANH_NOTIFIER_PORT"}


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_the_compose_file_has_the_whole_stack(compose):
    assert set(compose["services"]) == {"kafka", "postgres", *SETTINGS, "prometheus", "grafana"}
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert kafka["command"] == ["/bin/bash", "/opt/giapranh/start-kafka.sh"]  # KRaft: below
    for name in SETTINGS:
        service = compose["services"][name]
        assert service["build"] == "."
        assert service["command"] == ["python", "-m", f"services.{name}"]
    assert (ROOT / "Dockerfile").exists()


def test_every_container_restarts_and_the_services_report_their_readiness(compose):
    for name, service in compose["services"].items():
        assert service.get("restart") == "unless-stopped", name
    for name in SETTINGS:
        service = compose["services"][name]
        port = service["environment"][PORT_SETTING[name]]
        check = " ".join(service["healthcheck"]["test"])
        assert f"http://localhost:{port}/readyz" in check, name


@pytest.mark.parametrize("name", SETTINGS)
def test_every_variable_set_for_a_service_is_one_of_its_settings(compose, name):
    real = {f"GIAPRANH_{field.upper()}" for field in SETTINGS[name].model_fields}
    environment = compose["services"][name]["environment"]
    ours = {key for key in environment if key.startswith("GIAPRANH_")}
    assert ours and ours <= real, ours - real
    assert environment["GIAPRANH_KAFKA_IDEMPOTENT_PRODUCER"] == "true"
    assert environment["GIAPRANH_ENVIRONMENT"] == "production"


def test_every_dashboard_metric_is_declared():
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/giapranh.json").read_text())
    queried = {name for panel in dashboard["panels"] for target in panel["targets"]
               for name in re.findall(r"giapranh_[a-z_]+", target["expr"])}
    declared = {sample.name for family in REGISTRY.collect() if family.name.startswith("giapranh_")
                for sample in family.samples} | {
        family.name for family in REGISTRY.collect() if family.name.startswith("giapranh_")}
    histogram_parts = {f"{family.name}{suffix}" for family in REGISTRY.collect()
                       if family.type == "histogram" for suffix in ("_bucket", "_sum", "_count")}
    counters = {f"{family.name}_total" for family in REGISTRY.collect() if family.type == "counter"}
    assert queried, "the dashboard queries nothing"
    assert queried <= declared | histogram_parts | counters, queried - declared - histogram_parts - counters


def test_every_scrape_target_is_a_service_on_its_metrics_port(compose):
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert set(jobs) == set(SETTINGS)
    for name, job in jobs.items():
        service = compose["services"][name]
        environment = service["environment"]
        if "GIAPRANH_METRICS_PORT" in environment:
            # A listener of its own: the service's port does not serve /metrics then.
            metrics_port = int(environment["GIAPRANH_METRICS_PORT"])
            assert metrics_port != int(environment[PORT_SETTING[name]]), name
            # Bound where Prometheus, another container, reaches it (default: loopback).
            assert environment["GIAPRANH_METRICS_HOST"] == "0.0.0.0", name
        else:
            metrics_port = int(environment[PORT_SETTING[name]])
        # Whatever port serves /metrics is on the compose network only.
        assert metrics_port not in published_container_ports(service), name
        targets = [t for config in job.get("static_configs", []) for t in config["targets"]]
        targets += [f"{dns}:{config['port']}" for config in job.get("dns_sd_configs", [])
                    for dns in config["names"]]
        assert targets == [f"{name}:{metrics_port}"]


def test_grafana_is_provisioned_with_the_datasource_and_dashboard(compose):
    datasource = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/giapranh.yml").read_text())
    mounted = compose["services"]["grafana"]["volumes"]
    path = provider["providers"][0]["options"]["path"]
    assert f"./deploy/grafana/dashboards:{path}:ro" in mounted


# --- Kafka security ------------------------------------------------------------------------

KAFKA_CREDENTIALS = sorted(
    f"GIAPRANH_{name.upper()}" for name in CommonSettings.model_fields
    if name == "kafka_security_protocol" or name.startswith("kafka_sasl_"))
INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?::?([-?])([^}]*))?\}")


def resolved(value: str, secrets: dict[str, str]) -> str:
    """A compose value with its ${VAR...} references filled in as a deployment would:
    from `secrets`, else the reference's default (`:-`), else a made-up secret."""
    def fill(match: re.Match[str]) -> str:
        name, kind, default = match.groups()
        if name in secrets:
            return secrets[name]
        return default if kind == "-" else f"{name.lower().replace('_', '-')}-0123456789"
    return INTERPOLATION.sub(fill, str(value))


def properties(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """`NAME://host:port,...` -> {NAME: (host, port)}"""
    found = {}
    for listener in value.split(","):
        name, address = listener.split("://")
        host, port = address.rsplit(":", 1)
        found[name] = (host, int(port))
    return found


def run_kafka_start(compose, tmp_path: Path, *, certificate: bool,
                    **overrides: str) -> subprocess.CompletedProcess[str]:
    """deploy/kafka/start.sh with the compose file's environment, Kafka's tools replaced
    by stand-ins that record their arguments; the script's files land in tmp_path."""
    kafka = compose["services"]["kafka"]
    mounted = [volume.split(":")[1] for volume in kafka["volumes"]
               if volume.startswith("./deploy/kafka/start.sh:")]
    assert mounted == [kafka["command"][-1]]  # the script run is this one
    home = tmp_path / "kafka"
    (home / "bin").mkdir(parents=True, exist_ok=True)
    for tool in ("kafka-storage.sh", "kafka-server-start.sh"):
        stub = home / "bin" / tool
        stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{tmp_path}/{tool}.args"\n')
        stub.chmod(0o755)
    tls = tmp_path / "tls"
    tls.mkdir(exist_ok=True)
    if certificate:
        (tls / "server.pem").write_text("(key and chain)")
    environment = {key: resolved(value, {}) for key, value in kafka["environment"].items()}
    environment |= {"KAFKA_HOME": str(home), "KAFKA_DATA_DIR": str(tmp_path / "data"),
                    "KAFKA_RUN_DIR": str(tmp_path / "run"), "KAFKA_TLS_DIR": str(tls),
                    "PATH": os.environ["PATH"], **overrides}
    tls_mount = next(volume for volume in kafka["volumes"]
                     if volume.startswith("./deploy/kafka/tls:"))
    assert tls_mount.split(":")[1] == "/etc/kafka/tls"  # the script's default KAFKA_TLS_DIR
    return subprocess.run(["bash", str(ROOT / "deploy/kafka/start.sh")], env=environment,
                          capture_output=True, text=True, timeout=30)


def published_container_ports(service: dict) -> set[int]:
    return {int(str(port).split(":")[-1].split("/")[0]) for port in service.get("ports", [])}


@pytest.mark.parametrize("certificate", [False, True], ids=["no-certificate", "certificate"])
def test_no_kafka_listener_published_outside_the_compose_network_is_plaintext(
        compose, tmp_path, certificate):
    started = run_kafka_start(compose, tmp_path, certificate=certificate)
    assert started.returncode == 0, started.stderr
    config = properties(tmp_path / "run" / "server.properties")
    assert config["process.roles"] == "broker,controller"  # KRaft, no ZooKeeper
    bound = listeners(config["listeners"])
    protocols = dict(item.split(":") for item in
                     config["listener.security.protocol.map"].split(","))
    assert set(protocols) == set(bound)
    published = published_container_ports(compose["services"]["kafka"])
    assert published, "the broker publishes no port: nothing outside could use Kafka"
    outside = {name for name, (_, port) in bound.items() if port in published}
    assert outside == {"EXTERNAL"}
    for name in outside:
        assert protocols[name] == ("SASL_SSL" if certificate else "SASL_PLAINTEXT"), name
    for name, (host, _) in bound.items():
        # A PLAINTEXT listener may only listen on the container's own loopback.
        if protocols[name] in {"PLAINTEXT", "SSL"}:
            assert host == "localhost" and name not in outside, name
    assert protocols[config["inter.broker.listener.name"]].startswith("SASL_")
    if certificate:
        assert config["listener.name.external.ssl.keystore.location"].endswith("/server.pem")
    # The broker (its own user on the inter-broker listener) and the health check log in.
    assert "sasl.jaas.config" in properties(tmp_path / "run" / "admin.properties")
    advertised = listeners(config["advertised.listeners"])
    assert advertised["EXTERNAL"] == ("localhost", 9092)  # KAFKA_EXTERNAL_HOST's default
    # Reports leave the broker after 7 days (README, "Privacy"), long before the services
    # purge an unmatched sighting's subject from PostgreSQL.
    assert int(config["log.retention.hours"]) == 7 * 24
    purged_after_days = float(compose["services"]["ingest"]["environment"].get(
        "GIAPRANH_SIGHTING_RETENTION_DAYS",
        IngestSettings.model_fields["sighting_retention_days"].default))
    assert int(config["log.retention.hours"]) < purged_after_days * 24
    assert (tmp_path / "kafka-server-start.sh.args").read_text().split() == [
        str(tmp_path / "run" / "server.properties")]


def test_every_service_gets_the_kafka_credentials_settings(compose, tmp_path, monkeypatch):
    assert KAFKA_CREDENTIALS == ["GIAPRANH_KAFKA_SASL_MECHANISM", "GIAPRANH_KAFKA_SASL_PASSWORD",
                                 "GIAPRANH_KAFKA_SASL_USERNAME",
                                 "GIAPRANH_KAFKA_SECURITY_PROTOCOL"]
    started = run_kafka_start(compose, tmp_path, certificate=False)
    assert started.returncode == 0, started.stderr
    config = properties(tmp_path / "run" / "server.properties")
    bound = listeners(config["advertised.listeners"])
    protocols = dict(item.split(":") for item in
                     config["listener.security.protocol.map"].split(","))
    created = (tmp_path / "kafka-storage.sh.args").read_text().split("\n")
    kafka = compose["services"]["kafka"]["environment"]
    secrets = {"KAFKA_GIAPRANH_PASSWORD": "g" * 32, "KAFKA_ADMIN_PASSWORD": "a" * 32,
               "POSTGRES_PASSWORD": "p", "GIAPRANH_API_KEY_PEPPER": "x" * 32}
    for name in SETTINGS:
        environment = compose["services"][name]["environment"]
        missing = [setting for setting in KAFKA_CREDENTIALS if setting not in environment]
        assert not missing, f"{name} lacks {missing}"
        # Secrets come from the deployment's environment, never from the file.
        password = environment["GIAPRANH_KAFKA_SASL_PASSWORD"]
        assert INTERPOLATION.fullmatch(password) and ":?" in password, password
        assert password == kafka["KAFKA_CLIENT_PASSWORD"]
        assert environment["GIAPRANH_KAFKA_SASL_USERNAME"] == kafka["KAFKA_CLIENT_USER"]
        # The services reach the listener of the compose network, which authenticates too,
        # with the mechanism the broker enables and a user it created at format time.
        host, port = environment["GIAPRANH_KAFKA_BOOTSTRAP_SERVERS"].split(":")
        listener = next(n for n, address in bound.items() if address == (host, int(port)))
        assert environment["GIAPRANH_KAFKA_SECURITY_PROTOCOL"] == protocols[listener]
        mechanism = environment["GIAPRANH_KAFKA_SASL_MECHANISM"]
        assert mechanism in config["sasl.enabled.mechanisms"].split(",")
        user = environment["GIAPRANH_KAFKA_SASL_USERNAME"]
        assert f"{mechanism}=[name={user},password={resolved(password, {})}]" in created
        # And the service accepts it all as production settings.
        for key, value in environment.items():
            monkeypatch.setenv(key, resolved(value, secrets))
        configured = SETTINGS[name]()
        assert configured.kafka_security_protocol == protocols[listener]
        assert configured.kafka_sasl_password.get_secret_value() == "g" * 32
        for key in environment:
            monkeypatch.delenv(key)


@pytest.mark.parametrize(("variable", "value", "complaint"), [
    ("KAFKA_ADMIN_PASSWORD", "", "set KAFKA_ADMIN_PASSWORD"),
    ("KAFKA_CLIENT_PASSWORD", "short", "at least 16"),
    ("KAFKA_CLIENT_PASSWORD", 'with"quote-0123456789', "at least 16"),
    ("KAFKA_CLIENT_USER", "admin", "must not be admin"),
    ("KAFKA_LOG_RETENTION_HOURS", "7d", "whole number of hours"),
])
def test_the_broker_refuses_to_start_with_unusable_credentials(compose, tmp_path, variable,
                                                               value, complaint):
    started = run_kafka_start(compose, tmp_path, certificate=False, **{variable: value})
    assert started.returncode != 0
    assert complaint in started.stderr
    assert not (tmp_path / "kafka-storage.sh.args").exists()
