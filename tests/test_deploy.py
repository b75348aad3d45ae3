"""The production stack stays true to the code (no Docker engine here, so: consistency).

The compose file parses; every GIAPRANH_* variable it sets is a real setting of the
service it is set for; the services use the idempotent producer on Apache Kafka; every
metric the dashboard queries is declared in shared/metrics.py; every scrape target is a
service of the compose file on the port that service listens on.
"""

import json
import re

import pytest
import yaml
from prometheus_client import REGISTRY

from services.ingest.settings import IngestSettings
from services.matcher.settings import MatcherSettings
from services.notifier.settings import NotifierSettings
from shared import metrics  # noqa: F401 - registers every metric
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
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
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


def test_every_scrape_target_is_a_service_on_its_port(compose):
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert set(jobs) == set(SETTINGS)
    for name, job in jobs.items():
        listens = int(compose["services"][name]["environment"][PORT_SETTING[name]])
        targets = [t for config in job.get("static_configs", []) for t in config["targets"]]
        targets += [f"{dns}:{config['port']}" for config in job.get("dns_sd_configs", [])
                    for dns in config["names"]]
        assert targets == [f"{name}:{listens}"]


def test_grafana_is_provisioned_with_the_datasource_and_dashboard(compose):
    datasource = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/giapranh.yml").read_text())
    mounted = compose["services"]["grafana"]["volumes"]
    path = provider["providers"][0]["options"]["path"]
    assert f"./deploy/grafana/dashboards:{path}:ro" in mounted
