"""The HTTP shell shared by the ingest and notifier APIs.

- `GiapranhError` (shared.errors) and request validation rendered as `{"error": {...}}`,
  naming the field at fault.
- Unit authentication by API key (`Authorization: Bearer <key>` or `X-API-Key`), resolved by
  the service's `KeyStore` (shared.auth).
- Request counting and the Prometheus `/metrics` endpoint; `/healthz` and `/readyz`.
- A body-size limit, the app factory and the foreground runner.

A service's lifespan builds its adapters and hands the shell what it needs as one typed
`ServiceState` (`set_state`); dependencies read it back with `service_state(request)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared import metrics
from shared.auth import KeyStore, Principal
from shared.errors import (
    Forbidden,
    GiapranhError,
    PayloadTooLarge,
    TooManyRequests,
    Unauthorized,
)
from shared.ratelimit import RateLimit


@dataclass
class ServiceState:
    """What the HTTP shell needs from a running service."""

    pool: asyncpg.Pool
    keys: KeyStore
    requests: RateLimit | None = None
    """Requests per API key (None: unlimited)."""
    readiness: dict[str, Callable[[], bool]] = field(default_factory=dict)
    """Extra `/readyz` checks beside the database (e.g. `broker`)."""
    health: Callable[[], dict[str, object]] | None = None
    """Extra fields of `/healthz`."""


def set_state(app: FastAPI, state: ServiceState) -> None:
    app.state.service = state


def service_state(request: Request) -> ServiceState:
    return request.app.state.service


def _field_path(loc: tuple[object, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    # Drop pydantic's union/function markers such as "function-after[...]".
    return ".".join(p for p in parts if "[" not in p) or "body"


def install_error_handlers(app: FastAPI, service: str) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.HTTP_REJECTIONS.labels(service=service, reason="invalid").inc()
        errors = [
            {"field": _field_path(tuple(e["loc"])), "message": e["msg"], "type": e["type"]}
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"field": "body", "message": "invalid request"}
        body = {
            "code": "invalid",
            "message": f"{first['field']}: {first['message']}",
            "field": first["field"],
            "errors": errors,
        }
        return JSONResponse({"error": body}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Starlette's own refusals (unknown route, wrong method, unreadable body) in our
        error format."""
        codes = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}
        metrics.HTTP_REJECTIONS.labels(
            service=service, reason=codes.get(exc.status_code, str(exc.status_code))).inc()
        body = {"code": codes.get(exc.status_code, "http_error"), "message": str(exc.detail)}
        return JSONResponse({"error": body}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(GiapranhError)
    async def _refused(request: Request, exc: GiapranhError) -> JSONResponse:
        metrics.HTTP_REJECTIONS.labels(service=service, reason=exc.code).inc()
        body: dict[str, object] = {"code": exc.code, "message": exc.message}
        if exc.field:
            body["field"] = exc.field
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        if isinstance(exc, TooManyRequests):
            headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
        return JSONResponse({"error": body}, status_code=exc.status_code, headers=headers)


SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
"""On every response (pages add their own Content-Security-Policy)."""


class RequestMetrics:
    """Counts requests by route template, method and status, and adds `SECURITY_HEADERS`
    to every response (a plain ASGI middleware:
    `BaseHTTPMiddleware` would wrap errors of the app in exception groups and cost a task
    per request)."""

    def __init__(self, app: Any, service: str):
        self.app = app
        self.service = service

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500

        async def sending(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            metrics.HTTP_REQUESTS.labels(
                service=self.service, route=getattr(route, "path", "unmatched"),
                method=scope["method"], status=str(status)).inc()


def install_metrics(app: FastAPI, service: str, *, public: bool = True) -> None:
    """Count requests by route template and status; serve the registry on /metrics unless
    it has a listener of its own (`metrics_listener`)."""
    app.add_middleware(RequestMetrics, service=service)
    if not public:
        return

    @app.get("/metrics", include_in_schema=False)
    async def _metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@contextlib.contextmanager
def metrics_listener(settings: Any) -> Iterator[None]:
    """/metrics on `settings.metrics_port` (a thread of prometheus_client's) while inside,
    when that is set."""
    if settings.metrics_port is None:
        yield
        return
    from prometheus_client import start_http_server

    server, thread = start_http_server(settings.metrics_port, addr=settings.metrics_host)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# ------------------------------------------------------------------------- authentication


def _key_from_headers(request: Request) -> str | None:
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key") or None


async def authenticate(request: Request) -> Principal:
    key = _key_from_headers(request)
    if key is None:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    state = service_state(request)
    principal = await state.keys.principal(key)
    if principal is None:
        raise Unauthorized("unknown or revoked API key")
    if state.requests is not None:
        state.requests.take(principal.key_id)
    return principal


CurrentUnit = Annotated[Principal, Depends(authenticate)]
"""The caller, whatever its role (a reporter or above)."""


def requires(role: str) -> Any:
    """The caller, if its key's role is `role` or above (403 otherwise)."""

    async def allowed(principal: CurrentUnit) -> Principal:
        if not principal.may(role):
            raise Forbidden(f"this key's role is {principal.role}; this needs {role} or above",
                            field="role")
        return principal

    return Annotated[Principal, Depends(allowed)]


DeskKey = requires("desk")
"""A duty desk's key or above: works alerts."""
UnitAdminKey = requires("unit_admin")
"""A unit admin's key or above: the unit's people, keys, webhook, audit log."""
ProvinceAdminKey = requires("province_admin")
"""A province admin's key: the directory, and the units under its own."""


# ------------------------------------------------------------------------- service shell


class BodySizeLimit:
    """Refuses request bodies over `max_bytes` with 413, counted as they stream in."""

    def __init__(self, app: Any, max_bytes: int, service: str):
        self.app = app
        self.max_bytes = max_bytes
        self.service = service

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send)
        seen = 0

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        metrics.HTTP_REJECTIONS.labels(service=self.service, reason="payload_too_large").inc()
        response = JSONResponse(
            {"error": {"code": PayloadTooLarge.code, "field": "body",
                       "message": f"request body larger than {self.max_bytes} bytes"}},
            status_code=413,
        )
        await response({"type": "http"}, None, send)  # type: ignore[arg-type]


class _TooLarge(BaseException):
    """Raised while the body streams in; not an `Exception`, so that FastAPI's body
    parsing, which turns any exception into a 400, lets it through to `BodySizeLimit`."""


def create_http_app(
    *, service: str, summary: str, lifespan: Any, routers: Sequence[APIRouter],
    max_body_bytes: int = 2_000_000, settings: Any = None,
) -> FastAPI:
    """The common shell of an HTTP service: errors, metrics, its routers, /healthz, /readyz.

    The service's `lifespan` builds its adapters and calls `set_state` before yielding.
    With `settings.metrics_port`, /metrics is served there only, while the app runs.
    """
    own_listener = settings is not None and settings.metrics_port is not None
    if own_listener:
        inner = lifespan

        @contextlib.asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            with metrics_listener(settings):
                async with inner(app):
                    yield

    app = FastAPI(title=f"giapranh {service}", summary=summary, version="1", lifespan=lifespan)
    install_error_handlers(app, service)
    for router in routers:
        app.include_router(router)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes, service=service)
    install_metrics(app, service, public=not own_listener)  # outermost: counts the 413s too

    @app.get("/healthz", include_in_schema=False)
    async def healthz(request: Request) -> dict[str, object]:
        """The process is up (liveness)."""
        extra = service_state(request).health
        return {"status": "ok", **(extra() if extra else {})}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        """The database answers and the service's other checks pass (readiness)."""
        state = service_state(request)
        checks: dict[str, bool] = {"database": await _database_answers(state.pool)}
        checks.update({name: check() for name, check in state.readiness.items()})
        ready = all(checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    return app


async def _database_answers(pool: asyncpg.Pool) -> bool:
    try:
        return await pool.fetchval("SELECT 1", timeout=2) == 1
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False


@contextlib.asynccontextmanager
async def background(coro: Coroutine[Any, Any, None], name: str) -> AsyncIterator[None]:
    """Run `coro` as a task for the duration of the block; cancel and await it after."""
    task = asyncio.create_task(coro, name=name)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def serve(app: FastAPI, *, service: str, host: str, port: int, settings: Any) -> None:
    """Run an HTTP service in the foreground (the `python -m services.X` entry points)."""
    import uvicorn

    from shared.logs import logging_config

    config = logging_config(service, settings.log_level, settings.log_format)
    # Open SSE streams never end by themselves: give them 5 s on shutdown, then close them
    # (desks reconnect to another instance and reload what they missed).
    uvicorn.run(app, host=host, port=port, log_config=config,
                log_level=settings.log_level.lower(), access_log=False,
                timeout_graceful_shutdown=5)


def json_body(model: type[Any]) -> Any:
    """A dependency validating the raw body with `model.model_validate_json`.

    pydantic's own JSON parser is several times faster than FastAPI's json.loads plus
    validation, which matters for bulk endpoints. Errors render like any other 422. Pair it
    with `openapi_extra=json_body_openapi(model)` so the API docs still show the schema.
    """

    async def parse(request: Request) -> Any:
        try:
            return model.model_validate_json(await request.body())
        except ValidationError as exc:
            raise RequestValidationError(
                [{**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False)]
            ) from None

    return Depends(parse)


def json_body_openapi(model: type[Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": model.model_json_schema()}}}}
