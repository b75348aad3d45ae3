"""With GIAPRANH_METRICS_PORT (as docker-compose.yml sets it for ingest and the notifier),
/metrics is served on that listener and not on the service's own port. Ingest is checked
in tests/test_ingest_surface.py; here the notifier (the shared HTTP shell) and the matcher
(its faust worker's web server)."""

import httpx

from giapranh.embedded import free_port
from services.notifier.app import create_app
from services.notifier.settings import NotifierSettings
from tests.conftest import MatcherProcess, served


async def test_the_notifier_serves_metrics_on_its_metrics_port_only(env, topics):
    port = free_port()
    async with served(create_app(env.settings(NotifierSettings, metrics_port=port))) as url:
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{url}/metrics")).status_code == 404
            internal = await client.get(f"http://127.0.0.1:{port}/metrics")
    assert internal.status_code == 200
    assert "giapranh_http_requests_total" in internal.text


async def test_the_matcher_serves_metrics_on_its_metrics_port_only(env, topics, directory):
    port = free_port()
    matcher = MatcherProcess(env, free_port(), GIAPRANH_METRICS_PORT=str(port))
    try:
        await matcher.wait_ready()
        async with httpx.AsyncClient() as client:
            own = await client.get(f"http://127.0.0.1:{matcher.port}/metrics")
            internal = await client.get(f"http://127.0.0.1:{port}/metrics")
    finally:
        matcher.stop()
    assert own.status_code == 404
    assert internal.status_code == 200
    assert "# TYPE giapranh_watchlist_entries gauge" in internal.text  # the matcher's own
