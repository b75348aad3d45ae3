"""The OpenAPI documents of both services: valid OpenAPI 3.1 whose references all resolve,
and true to the services. Schemathesis runs against the real apps (database, broker, keys
of the roles each operation needs) and must meet no 5xx, no answer outside its documented
schema, content type or headers, and no undocumented status code, on every operation; the
key and audit operations must also succeed at least once each.

A deeper run than CI's: `GIAPRANH_SCHEMATHESIS_EXAMPLES=250 GIAPRANH_SCHEMATHESIS_SEED=7
pytest tests/test_openapi.py` (about a minute and a half; the defaults take about 25 s).
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
from openapi_spec_validator import validate

from giapranh.embedded import free_port
from services.ingest.app import create_app as create_ingest
from services.ingest.settings import IngestSettings
from services.notifier.app import create_app as create_notifier
from services.notifier.settings import NotifierSettings
from shared.auth import issue_api_key
from shared.settings import CommonSettings
from tests.conftest import MatcherProcess, bearer, eventually, served
from tests.notifier_helpers import WANTED, make_hit, send

if TYPE_CHECKING:
    from tests.conftest import TestEnv

REPORTER = "CA-31212"
"""Reports sightings and incidents: the key of the ingest run."""
LISTER = "CA-30307"
"""Lists the demo's wanted person, so it may acknowledge, confirm, reject and close the
alerts the notifier run starts with: the key of the notifier run."""
KEYS_ADMIN = "CAT-52"
"""Its province admin works the key and audit operations: a province none of the other keys
belongs to, so that what those operations rotate or revoke (the keys of its units, its own
key even) is no key the rest of the run depends on."""
CHECKS = ["not_a_server_error", "status_code_conformance", "response_schema_conformance",
          "content_type_conformance", "response_headers_conformance"]
MAX_EXAMPLES = int(os.environ.get("GIAPRANH_SCHEMATHESIS_EXAMPLES", "50"))
"""Cases per operation and phase: about 3,000 requests over both services."""
SEED = os.environ.get("GIAPRANH_SCHEMATHESIS_SEED", "20261120")
"""Fixed, so that CI runs the same cases each time."""
MIN_REQUESTS = 1000


# ------------------------------------------------------------------------- the documents


def _references(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [ref for key, value in node.items()
                for ref in ([value] if key == "$ref" else _references(value))]
    if isinstance(node, list):
        return [ref for item in node for ref in _references(item)]
    return []


async def test_both_documents_are_valid_openapi_whose_references_resolve(ingest, notifier):
    for client in (ingest, notifier):
        document = (await client.get("/openapi.json")).json()
        validate(document)  # raises, saying what is invalid
        references = _references(document)
        assert references
        for reference in references:
            assert reference.startswith("#/components/schemas/"), reference
            assert reference.rsplit("/", 1)[1] in document["components"]["schemas"], reference
        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                if "401" in operation["responses"]:
                    assert operation["security"], (method, path)


async def test_the_document_is_served_as_fastapi_would_under_any_root_path(env, topics):
    """Encoded once (`install_openapi`), the document is still FastAPI's own: the same
    bytes, and served under a root path (behind a proxy) it names that path as its
    server, as FastAPI's route does, whatever path was asked for first."""
    app = create_ingest(env.settings(IngestSettings))
    async with app.router.lifespan_context(app):
        plain = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                  base_url="http://test")
        behind = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, root_path="/gr"),
                                   base_url="http://test")
        async with plain, behind:
            under = await behind.get("/openapi.json")
            first, again = await plain.get("/openapi.json"), await plain.get("/openapi.json")
    assert first.status_code == under.status_code == 200
    assert first.headers["content-type"] == "application/json"
    assert first.content == again.content == json.dumps(
        app.openapi(), ensure_ascii=False, allow_nan=False, indent=None,
        separators=(",", ":")).encode()
    assert "servers" not in first.json()
    assert under.json()["servers"] == [{"url": "/gr"}]
    assert {**under.json(), "servers": None} == {**first.json(), "servers": None}


# ------------------------------------------------------------------------- schemathesis


def _config(path: Path, operations: list[dict[str, Any]]) -> Path:
    """A schemathesis configuration: our checks, how many cases, per-operation settings."""
    lines = ["checks.enabled = false",
             *(f"checks.{check}.enabled = true" for check in CHECKS),
             f"generation.max-examples = {MAX_EXAMPLES}",
             # Nothing kept between runs, in the work tree or elsewhere.
             'generation.database = "none"', "cache.enabled = false"]
    for operation in operations:
        lines += ["", "[[operations]]", *(f"{key} = {_toml(value)}"
                                          for key, value in operation.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{key} = {_toml(item)}" for key, item in value.items()) + " }"
    return json.dumps(value)


async def _schemathesis(url: str, key: str, config: Path, reports: Path) -> tuple[int, str]:
    """`schemathesis run` on the service's own document, as CI would run it by hand."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
        f"{url}/openapi.json", "--header", f"Authorization: Bearer {key}",
        "--seed", SEED, "--report", "har", "--report-dir", str(reports), "--no-color",
        # One worker: hypothesis parses lambdas' source with `ast`, which CPython 3.11.7
        # cannot do in several threads at once ("AST constructor recursion depth mismatch").
        "--workers", "1",
        # Hypothesis's own cache in the run's directory, not in the work tree.
        env={**os.environ, "HYPOTHESIS_STORAGE_DIRECTORY": str(reports / "hypothesis")},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await process.communicate()
    return process.returncode or 0, output.decode(errors="replace")


def _requests(reports: Path) -> list[tuple[str, str, int]]:
    """(method, path, status) of every request the run sent, from its HAR report."""
    [har] = glob.glob(str(reports / "har-*.json"))
    return [(entry["request"]["method"], urlsplit(entry["request"]["url"]).path,
             entry["response"]["status"])
            for entry in json.loads(Path(har).read_text())["log"]["entries"]]


def _statuses(document: dict[str, Any],
              requests: list[tuple[str, str, int]]) -> dict[str, set[int]]:
    """The statuses each of the document's operations answered (none: no request reached
    it); a request counts for the most literal template it matches (`/v1/alerts/stream`,
    not `/v1/alerts/{alert_id}`)."""
    templates = sorted(document["paths"], key=lambda template: template.count("{"))
    patterns = {template: re.compile("^" + re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(template))
                                     + "$") for template in templates}
    answered: dict[str, set[int]] = {
        f"{method.upper()} {template}": set()
        for template, operations in document["paths"].items() for method in operations}
    for method, path, status in requests:
        template = next((t for t in templates if patterns[t].match(path)), None)
        if template is not None and f"{method} {template}" in answered:
            answered[f"{method} {template}"].add(status)
    return answered


async def _alerts_to_work_on(env: TestEnv, url: str, key: str, count: int = 4) -> None:
    """Alerts at the listing unit's desk, so that the workflow operations meet real ones
    (the stateful phase follows their ids from `GET /v1/alerts`)."""
    await send(env, *(make_hit(WANTED) for _ in range(count)))

    async def listed() -> bool:
        async with httpx.AsyncClient(base_url=url, headers=bearer(key)) as client:
            return len((await client.get("/v1/alerts")).json()) >= count

    await eventually(listed, what=f"{count} alerts at {LISTER}'s desk")


async def test_schemathesis_finds_nothing_wrong_with_either_service(env, topics, directory, pool):
    pepper = env.settings(CommonSettings).api_key_pepper.get_secret_value()
    directory_admin = await issue_api_key(pool, "CAT-91", pepper, role="province_admin",
                                          person="schemathesis", label="schemathesis")
    keys_admin = await issue_api_key(pool, KEYS_ADMIN, pepper, role="province_admin",
                                     person="schemathesis", label="schemathesis")
    # Rate limits would answer most requests with 429 (documented, but it tests nothing).
    unlimited = {"requests_per_minute_per_key": 1e9}
    # A real matcher worker answers the checks (without one they are all 503s).
    matcher = MatcherProcess(env, free_port())
    await matcher.wait_ready()
    ingest_app = create_ingest(env.settings(IngestSettings, relay_idle_seconds=0.2,
                                            watchlist_writes_per_minute=1e9,
                                            matcher_url=f"http://127.0.0.1:{matcher.port}",
                                            **unlimited))
    notifier_app = create_notifier(env.settings(NotifierSettings, **unlimited))
    runs = {
        "ingest": (ingest_app, directory[REPORTER], [
            # The admin operations with keys of the roles they need, so that they do more
            # than refuse.
            {"include-path-regex": "^/v1/admin/",
             "headers": {"Authorization": f"Bearer {directory_admin}"}},
            {"include-path-regex": "^/v1/(keys|audit)",
             "headers": {"Authorization": f"Bearer {keys_admin}"}},
        ]),
        "notifier": (notifier_app, directory[LISTER], [
            # A live stream does not end: read it for half a second, then go on.
            {"include-name": "GET /v1/alerts/stream", "request-timeout": 0.5,
             "generation.max-examples": 3},
        ]),
    }
    started = time.monotonic()
    try:
        async with served(ingest_app) as ingest_url, served(notifier_app) as notifier_url:
            urls = {"ingest": ingest_url, "notifier": notifier_url}
            await _alerts_to_work_on(env, notifier_url, directory[LISTER])
            results = await asyncio.gather(*(
                _schemathesis(urls[name], key,
                              _config(env.tmp_path / f"{name}.toml", operations),
                              env.tmp_path / name)
                for name, (_, key, operations) in runs.items()))
    finally:
        matcher.stop()
    elapsed = time.monotonic() - started

    total = 0
    for (name, (app, _, _)), (code, output) in zip(runs.items(), results, strict=True):
        assert code == 0, f"schemathesis found problems with {name}:\n{output[-20_000:]}"
        requests = _requests(env.tmp_path / name)
        answered = _statuses(app.openapi(), requests)
        assert not [op for op, statuses in answered.items() if not statuses], (name, answered)
        # The key and audit operations did their work, not only refuse it (a key revoking
        # the one it is sent with would leave nothing but 401s).
        refusing = [op for op, statuses in answered.items() if re.search(r" /v1/(keys|audit)", op)
                    and not any(200 <= status < 300 for status in statuses)]
        assert not refusing, (name, {op: answered[op] for op in refusing})
        total += len(requests)
        print(f"{name}: {len(requests)} requests")
    print(f"{total} requests in {elapsed:.0f} s")
    assert total >= MIN_REQUESTS
