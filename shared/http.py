"""The HTTP shell shared by the ingest and notifier APIs.

- `GiapranhError` (shared.errors) and request validation rendered as `{"error": {...}}`,
  naming the field at fault.
- Unit authentication by API key (`Authorization: Bearer <key>` or `X-API-Key`), resolved by
  the service's `KeyStore` (shared.auth).
- Request counting and the Prometheus `/metrics` endpoint; `/healthz` and `/readyz`.
- A body-size limit, the app factory and the foreground runner.
- The OpenAPI document: every refusal an operation can answer with, in the error format
  above (`ErrorBody`, `error_responses`), and how a key is sent.

A service's lifespan builds its adapters and hands the shell what it needs as one typed
`ServiceState` (`set_state`); dependencies read it back with `service_state(request)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, NoReturn

import asyncpg
from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from shared import metrics
from shared.auth import KeyStore, Principal
from shared.db import DATABASE_ERRORS, database_history
from shared.errors import (
    Forbidden,
    GiapranhError,
    Overloaded,
    PayloadTooLarge,
    Unauthorized,
    UnitBusy,
)
from shared.i18n import Language, negotiate, translate
from shared.ratelimit import RateLimit
from shared.runtime import calm_garbage_collector

log = logging.getLogger(__name__)


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
    history: str | None = None
    """The database's history when the service started (`shared.db.database_history`):
    `/readyz` fails once it differs (restored to a point in time since)."""


def set_state(app: FastAPI, state: ServiceState) -> None:
    app.state.service = state


def service_state(request: Request) -> ServiceState:
    return request.app.state.service


def _field_path(loc: tuple[object, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    # Drop pydantic's union/function markers such as "function-after[...]".
    return ".".join(p for p in parts if "[" not in p) or "body"


class FieldError(BaseModel):
    field: str = Field(description="The field at fault, as a dotted path.")
    message: str
    type: str = Field(description="pydantic's error type, e.g. `missing`, `string_too_long`.")


class ErrorDetail(BaseModel):
    code: str = Field(description="What went wrong: `invalid`, `unauthorized`, `forbidden`, "
                      "`not_found`, `conflict`, `invalid_transition`, `payload_too_large`, "
                      "`rate_limited`, ...")
    message: str = Field(description="For people; names the field at fault, if any.")
    field: str | None = Field(None, description="The field at fault, as a dotted path "
                              "(`sightings.17.subject.national_id`).")
    errors: list[FieldError] | None = Field(
        None, description="Every field at fault (request validation only).")


class ErrorBody(BaseModel):
    """Every refusal of the API, whatever its status."""

    error: ErrorDetail


def language_of(request: Request) -> Language:
    """The language a person reading this answer asked for (`Accept-Language`: Vietnamese
    or English; English when it names neither)."""
    return negotiate(request.headers.get("accept-language"))


async def _answer_language(
    request: Request,
    accept_language: Annotated[str | None, Header(
        max_length=500, description="`vi` for Vietnamese texts (reasons, why you, history, "
        "errors); English otherwise.")] = None,
) -> Language:
    return negotiate(accept_language)


AnswerLanguage = Annotated[Language, Depends(_answer_language)]
"""The language of the texts in an answer, from `Accept-Language` (documented)."""


def install_error_handlers(app: FastAPI, service: str) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.HTTP_REJECTIONS.labels(service=service, reason="invalid").inc()
        language = language_of(request)
        errors = [
            # Malformed JSON is located by character offset, not by field: the body is at fault.
            {"field": "body" if e["type"] == "json_invalid" else _field_path(tuple(e["loc"])),
             "message": translate(e["msg"], language), "type": e["type"]}
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"field": "body",
                                          "message": translate("invalid request", language)}
        body = {
            "code": "invalid",
            "message": f"{first['field']}: {first['message']}",
            "field": first["field"],
            "errors": errors,
        }
        return JSONResponse({"error": body}, status_code=422)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> Response:
        """The client left before its body ended: nothing is answered (the server drops what
        is sent to a closed connection), and the request is counted as 499, nginx's "client
        closed request", not logged as an error of the app with its traceback."""
        return Response(status_code=499)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Starlette's own refusals (unknown route, wrong method) in our error format."""
        if isinstance(exc.__cause__, ClientDisconnect):  # (FastAPI's, reading a body)
            return await _gone(request, exc.__cause__)
        if exc.status_code == 400 and exc.__cause__ is not None:
            # FastAPI could not read the body as JSON (not UTF-8, nested too deeply, a number
            # too long to convert): invalid JSON like any other, not a 400 naming nothing.
            return await _invalid(request, RequestValidationError([{
                "type": "json_invalid", "loc": ("body",), "msg": "not valid JSON"}]))
        codes = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}
        metrics.HTTP_REJECTIONS.labels(
            service=service, reason=codes.get(exc.status_code, str(exc.status_code))).inc()
        body = {"code": codes.get(exc.status_code, "http_error"),
                "message": translate(str(exc.detail), language_of(request))}
        return JSONResponse({"error": body}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(GiapranhError)
    async def _refused(request: Request, exc: GiapranhError) -> JSONResponse:
        metrics.HTTP_REJECTIONS.labels(service=service, reason=exc.code).inc()
        body: dict[str, object] = {"code": exc.code,
                                   "message": translate(exc.message, language_of(request))}
        if exc.field:
            body["field"] = exc.field
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            headers = {"Retry-After": str(max(1, math.ceil(retry_after)))}
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
            requests_counter(self.service, getattr(scope.get("route"), "path", "unmatched"),
                             scope["method"], status).inc()


@functools.lru_cache(maxsize=4096)
def requests_counter(service: str, route: str, method: str, status: int) -> Any:
    """`giapranh_http_requests_total`'s counter for these labels, looked up once
    (`labels()` cost ~1 % of a request); as many as routes, methods the parser knows and
    statuses."""
    return metrics.HTTP_REQUESTS.labels(service=service, route=route, method=method,
                                        status=str(status))


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


_PRINCIPAL = "giapranh.principal"
"""Where a request's scope keeps its caller once authenticated (by `KeyFirstRoute`)."""


async def authenticate(request: Request) -> Principal:
    known = request.scope.get(_PRINCIPAL)
    if known is not None:  # (authenticated before its body was read: taken once)
        return known
    key = _key_from_headers(request)
    if key is None:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    state = service_state(request)
    principal = await state.keys.principal(key)
    if principal is None:
        raise Unauthorized("unknown or revoked API key")
    if state.requests is not None:
        state.requests.take(principal.key_id)
    request.scope[_PRINCIPAL] = principal
    return principal


def _needs_key(dependant: Any) -> bool:
    return any(d.call is authenticate or _needs_key(d) for d in dependant.dependencies)


class KeyFirstRoute(APIRoute):
    """A route whose dependencies authenticate the caller does so before anything else,
    before its body is read: every router's `route_class`.

    FastAPI reads a request's body before it solves any dependency. A client without a
    key could announce a body and never send it, and hold its request among those in
    flight (`LoadShedding`) for as long as it kept the connection open: 512 such
    connections refused everyone else (an attacking helper, README). Now it is answered
    401 as soon as its head is read, and the body, if it ever comes, is dropped unread.

    The request then takes one of its unit's places (`UnitSlots`) until its answer is
    written (a live stream's until it starts)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if not _needs_key(self.dependant):
            return handler

        async def key_first(request: Request) -> Response:
            principal = await authenticate(request)
            slots: UnitSlots | None = getattr(request.app.state, "unit_slots", None)
            if slots is not None:
                request.scope[_SLOT] = slots.take(principal)
            return await handler(request)

        return key_first

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The route, its unit's place given back once its answer is written (FastAPI
        writes it after the handler returns), or when a live stream starts."""
        give_back = functools.partial(_give_back, scope)
        try:
            await super().handle(scope, receive,
                                 released_as_stream_starts(scope, send, give_back))
        finally:
            give_back()


def released_as_stream_starts(scope: Scope, send: Send, release: Callable[[], None]) -> Send:
    """`send`, calling `release` as the response of a long-lived stream (`STREAM_PATHS`)
    starts: what counts requests in flight stops counting a live stream there. `release`
    may be called again when the request ends, and must then do nothing."""
    if scope.get("path") not in STREAM_PATHS:
        return send

    async def started(message: Any) -> None:
        if message["type"] == "http.response.start":
            release()
        await send(message)

    return started


_SLOT = "giapranh.slot"


def _give_back(scope: Scope) -> None:
    release = scope.pop(_SLOT, None)
    if release is not None:
        release()


UNIT_BUSY_LOG_SECONDS = 60.0


class UnitSlots:
    """At most `limit` requests of one unit's keys in flight on this instance, from its
    authentication until its answer is written: its body read, its work done, its answer
    sent (a live stream's until it starts; streams have their own caps). And the last
    `reserve` of the instance's places (`instance_limit`) are kept for units with fewer
    than `reserve` requests in flight.

    Without it, a key's holder, broken or hostile, could take every place `LoadShedding`
    counts, with bodies trickled at just over the least rate a body must keep, or answers
    left unread (a third attack and a review, README): now the other units keep the rest.
    Per unit, not per key: a unit admin mints keys at will. With the cap alone, four
    units took every place (a fourth attack); with the reserve, units holding many keep
    clear of the last places, which a unit asking for few still gets. Refused at once:
    429 `unit_busy` with `Retry-After`, naming the setting."""

    def __init__(self, limit: int, instance_limit: int = 0, retry_after: int = 1):
        self.limit = limit
        self.instance_limit = instance_limit
        self.reserve = max(1, limit // 4) if instance_limit else 0
        self.retry_after = retry_after
        self.total = 0
        self._held: dict[str, int] = {}
        self._told: dict[str, float] = {}  # unit -> when its refusals were last logged

    def held(self, unit: str) -> int:
        return self._held.get(unit, 0)

    def take(self, principal: Principal) -> Callable[[], None]:
        """One of the unit's places, or `UnitBusy`; the callable gives it back (once)."""
        unit = principal.unit_code
        held = self._held.get(unit, 0)
        if held >= self.limit:
            self._refuse(principal, held, "the most one unit's keys may have at once")
        if (self.reserve and held >= self.reserve
                and self.total >= self.instance_limit - self.reserve):
            self._refuse(principal, held, f"and the last {self.reserve} places of this "
                         f"instance are kept for units with fewer")
        self._held[unit] = held + 1
        self.total += 1
        given_back = False

        def give_back() -> None:
            nonlocal given_back
            if given_back:
                return
            given_back = True
            self.total -= 1
            left = self._held[unit] - 1
            if left:
                self._held[unit] = left
            else:
                del self._held[unit]

        return give_back

    def _refuse(self, principal: Principal, held: int, why: str) -> NoReturn:
        unit, now = principal.unit_code, time.monotonic()
        if now - self._told.get(unit, -UNIT_BUSY_LOG_SECONDS) >= UNIT_BUSY_LOG_SECONDS:
            if len(self._told) > 10_000:
                self._told.clear()
            self._told[unit] = now
            log.warning("unit %s has %d requests in flight, %s "
                        "(GIAPRANH_MAX_REQUESTS_IN_FLIGHT_PER_UNIT); refusing its next ones 429 "
                        "unit_busy, this one on key %s (logged once a minute per unit)",
                        unit, held, why, principal.key_id)
        raise UnitBusy(f"{held} requests of this unit are being handled, {why} "
                       f"(GIAPRANH_MAX_REQUESTS_IN_FLIGHT_PER_UNIT): try again after "
                       f"{self.retry_after} s", retry_after=self.retry_after,
                       field="Authorization")


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
            return await self._refuse(scope, send)
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
            await self._refuse(scope, send)

    async def _refuse(self, scope: Any, send: Any) -> None:
        metrics.HTTP_REJECTIONS.labels(service=self.service, reason="payload_too_large").inc()
        response = JSONResponse(
            {"error": {"code": PayloadTooLarge.code, "field": "body",
                       "message": translate(f"request body larger than {self.max_bytes} "
                                            "bytes", _scope_language(scope))}},
            status_code=413,
        )
        await response({"type": "http"}, None, send)  # type: ignore[arg-type]


UNSHED_PATHS = ("/healthz", "/readyz", "/metrics")
"""Never refused by `LoadShedding` (nor counted): probes and scrapes must see an overloaded
service as it is."""


STREAM_PATHS = ("/v1/alerts/stream",)
"""Long-lived streams: `LoadShedding` counts them only until their response starts (they
have their own limits per key and unit). Named exactly: `/v1/watchlist/stream` on ingest
is an entry called "stream"."""


class LoadShedding:
    """Refuses a request at once, 503 `overloaded` with `Retry-After`, while `limit`
    requests are already being handled (a long-lived stream, `STREAM_PATHS`, counts until
    its response starts: its authentication and checks are work like any other request's,
    and a flood of streams with bad keys is shed too): beyond its capacity a service
    answers in milliseconds and clients back off, instead of queueing until they time out
    and retry, which makes a storm of it.

    It is the outermost layer of the app (`create_http_app`), and a refusal is bytes made once
    per language: when a burst of clients comes back together after their `Retry-After`,
    the last refusal waits for every one before it, so each must cost next to nothing."""

    def __init__(self, app: Any, limit: int, service: str, retry_after: int = 1):
        self.app = app
        self.limit = limit
        self.service = service
        self.retry_after = retry_after
        self.in_flight = 0
        self._refusals: dict[Language, tuple[dict[str, Any], dict[str, Any], bytes]] = {}
        self._rejected = metrics.HTTP_REJECTIONS.labels(service=service, reason="overloaded")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in UNSHED_PATHS:
            return await self.app(scope, receive, send)
        if self.in_flight >= self.limit:
            return await self.refuse(scope, send)
        self.in_flight += 1
        counted = True

        def uncount() -> None:
            nonlocal counted
            if counted:
                counted = False
                self.in_flight -= 1

        try:
            await self.app(scope, receive, released_as_stream_starts(scope, send, uncount))
        finally:
            uncount()

    async def refuse(self, scope: Any, send: Any) -> None:
        start, body, _ = self._refusal(scope)
        # (Each a copy: a server may add to the message it is given.)
        await send({**start, "headers": list(start["headers"])})
        await send(dict(body))

    def refusal_now(self, scope: Any) -> tuple[int, bytes, bytes] | None:
        """For the HTTP protocol (`shared/http_protocol.py`, `early_refusal`): the refusal's
        status, header lines and body to write as soon as the request's head is parsed, or
        None to let the request in. The same answer as `refuse`, without a task for it: a
        task would wait one more turn of the event loop, behind every request accepted."""
        if self.in_flight < self.limit or scope["path"] in UNSHED_PATHS:
            return None
        _, body, head = self._refusal(scope)
        return 503, head, body["body"]

    def _refusal(self, scope: Any) -> tuple[dict[str, Any], dict[str, Any], bytes]:
        """Counts a refusal; its ASGI messages and its header lines, made once per language."""
        self._rejected.inc()
        requests_counter(self.service, "unmatched", scope["method"], 503).inc()
        language = _scope_language(scope)
        refusal = self._refusals.get(language)
        if refusal is None:
            body = json.dumps({"error": {"code": Overloaded.code, "message": translate(
                f"{self.limit} requests are being handled, the most this instance takes on "
                f"(GIAPRANH_MAX_REQUESTS_IN_FLIGHT): try again after {self.retry_after} s",
                language)}}, ensure_ascii=False, separators=(",", ":")).encode()
            headers = [(b"content-type", b"application/json"),
                       (b"content-length", str(len(body)).encode()),
                       (b"retry-after", str(self.retry_after).encode()), *SECURITY_HEADERS]
            refusal = self._refusals[language] = (
                {"type": "http.response.start", "status": 503, "headers": headers},
                {"type": "http.response.body", "body": body},
                b"".join(b"%s: %s\r\n" % header for header in headers))
        return refusal


def _scope_language(scope: Any) -> Language:
    for name, value in scope.get("headers", ()):
        if name == b"accept-language":
            return negotiate(value.decode("latin-1"))
    return "en"


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
    service_lifespan = lifespan

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with service_lifespan(app):
            calm_garbage_collector()  # (once it has loaded what it keeps: shared/runtime.py)
            yield

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
    install_metrics(app, service, public=not own_listener)  # outside it: counts the 413s too
    if settings is not None and getattr(settings, "max_requests_in_flight", 0):
        # Outside every other layer, FastAPI's own too (see `LoadShedding`).
        build, limit = app.build_middleware_stack, settings.max_requests_in_flight

        def build_with_shedding() -> LoadShedding:
            app.state.load_shedding = LoadShedding(build(), limit=limit, service=service)
            return app.state.load_shedding

        app.build_middleware_stack = build_with_shedding  # type: ignore[method-assign]
    per_unit = getattr(settings, "max_requests_in_flight_per_unit", None)
    if per_unit is None:  # (unset: a quarter of the instance's, none if it has none)
        in_flight = getattr(settings, "max_requests_in_flight", 0)
        per_unit = max(1, in_flight // 4) if in_flight else 0
    if settings is not None and per_unit:
        app.state.unit_slots = UnitSlots(per_unit,
                                         getattr(settings, "max_requests_in_flight", 0))
    install_openapi(app)

    @app.get("/healthz", include_in_schema=False)
    async def healthz(request: Request) -> dict[str, object]:
        """The process is up (liveness)."""
        extra = service_state(request).health
        return {"status": "ok", **(extra() if extra else {})}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        """The database answers and the service's other checks pass (readiness)."""
        state = service_state(request)
        checks: dict[str, bool | None] = {"database": await _database_answers(state.pool)}
        if state.history is not None and checks["database"]:
            checks["database_history"] = await same_history(state.pool, state.history,
                                                             service)
        checks.update({name: check() for name, check in state.readiness.items()})
        ready = all(checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    return app


async def same_history(pool: asyncpg.Pool, started: str, service: str) -> bool | None:
    """Whether the database still has the history `started` (False, said loudly, once it
    was restored to a point in time or replaced, or a standby promoted: what the service
    built from it belongs to a history left behind); None when it cannot be read now."""
    try:
        now = await database_history(pool)
    except (*DATABASE_ERRORS, TimeoutError):
        return None
    same = now == started
    metrics.DATABASE_HISTORY_CHANGED.labels(service=service).set(0 if same else 1)
    if not same:
        log.error("the database's history changed since %s started (%s, now %s: restored "
                  "to a point in time, or a standby promoted?); see the README, after a "
                  "point-in-time restore", service, started, now)
    return same


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


def early_refusal(app: Any) -> Callable[[Any], tuple[int, bytes, bytes] | None]:
    """For `http_protocol`: the app's overload refusal (`LoadShedding.refusal_now`), once
    the app has built its middleware (on start); None before, or without load shedding.
    (`app` may be a `LoadShedding` itself.)"""
    if isinstance(app, LoadShedding):
        return app.refusal_now
    state = app.state if isinstance(app, FastAPI) else None

    def refusal(scope: Any) -> tuple[int, bytes, bytes] | None:
        shedding = getattr(state, "load_shedding", None)
        return None if shedding is None else shedding.refusal_now(scope)

    return refusal


def serve(app: FastAPI, *, service: str, host: str, port: int, settings: Any) -> None:
    """Run an HTTP service in the foreground (the `python -m services.X` entry points)."""
    import uvicorn

    from shared.http_protocol import http_protocol
    from shared.logs import logging_config

    config = logging_config(service, settings.log_level, settings.log_format,
                                  events=settings.log_events)
    # Open SSE streams never end by themselves: give them 5 s on shutdown, then close them
    # (desks reconnect to another instance and reload what they missed).
    uvicorn.run(app, host=host, port=port, log_config=config,
                log_level=settings.log_level.lower(), access_log=False,
                timeout_graceful_shutdown=5,
                # httptools, with bounds on what a client can make it keep (h11 costs a
                # request twice the CPU; shared/http_protocol.py).
                http=http_protocol(service, early_refusal=early_refusal(app)),
                ws="none")  # (no service speaks WebSocket)


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


def json_body_openapi(model: type[BaseModel]) -> dict[str, Any]:
    """The request body of a route reading it with `json_body(model)`: a reference to the
    model, carrying its schema and those it refers to in `$defs`, which `install_openapi`
    moves to the document's components."""
    schema = model.model_json_schema(ref_template=SCHEMAS + "{model}")
    defs = {**schema.pop("$defs", {}), model.__name__: schema}
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": SCHEMAS + model.__name__, "$defs": defs}}}}}


# ------------------------------------------------------------------------- OpenAPI document


SCHEMAS = "#/components/schemas/"

_REFUSALS: dict[int, tuple[str, dict[str, Any]]] = {
    401: ("No API key, or one that is unknown, revoked or expired.",
          {"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}}),
    403: ("The calling unit's key may not do this.", {}),
    404: ("No such thing for the calling unit (whether or not it exists).", {}),
    409: ("In conflict with what is stored (a reused event id, a workflow step the current "
          "state does not allow, a duplicate).", {}),
    413: ("The request body is larger than the service accepts.", {}),
    422: ("The request is invalid: `error.field` names the field at fault.", {}),
    503: ("A service the request needs cannot answer now, or more requests are waiting "
          "than it takes on (`overloaded`): try again after `Retry-After` seconds.",
          {"Retry-After": {"schema": {"type": "integer", "minimum": 1}, "required": False,
                           "description": "Seconds to wait, when known."}}),
    429: ("Over a rate limit of the key (`rate_limited`), or as many requests of its unit "
          "in flight as one unit may have (`unit_busy`): try again after `Retry-After` "
          "seconds.",
          {"Retry-After": {"schema": {"type": "integer", "minimum": 1}, "required": True,
                           "description": "Seconds to wait."}}),
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for these refusals, in the error format (`ErrorBody`), for the
    `responses=` of a router (401 and 429 where every route takes a key) or of a route
    (403, 404, 409). `install_openapi` adds 413 and 422 wherever there is a body or a
    parameter to refuse."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        description, headers = _REFUSALS[status]
        response: dict[str, Any] = {"description": description, "content": {
            "application/json": {"schema": {"$ref": f"{SCHEMAS}{ErrorBody.__name__}"}}}}
        if headers:
            response["headers"] = headers
        responses[status] = response
    return responses


SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer",
               "description": "The unit's API key: `Authorization: Bearer <key>`."},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
               "description": "The unit's API key, in the other header."},
}


def install_openapi(app: FastAPI) -> None:
    """Serve the document FastAPI generates (and caches) completed by `complete_openapi`,
    encoded once: FastAPI encodes it again for every request (5.5 ms for 78 kB, needing
    no key: 840 pipelined requests for it held legitimate ones up for seconds)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        return complete_openapi(generate())  # in place: completing it again changes nothing

    app.openapi = openapi  # type: ignore[method-assign]
    encoded: dict[str, bytes] = {}  # by root path (a server's setting, not a client's)

    async def openapi_json(request: Request) -> Response:
        root_path = request.scope.get("root_path", "").rstrip("/")
        body = encoded.get(root_path)
        if body is None:
            schema = app.openapi()
            # (as FastAPI's own route: the root path the app is served under as a server)
            if root_path and app.root_path_in_servers and root_path not in {
                    server.get("url") for server in schema.get("servers", [])}:
                schema = {**schema, "servers": [{"url": root_path},
                                                *schema.get("servers", [])]}
            body = encoded[root_path] = JSONResponse(schema).body
        return Response(body, media_type="application/json")

    for index, route in enumerate(app.router.routes):
        if isinstance(route, Route) and route.path == app.openapi_url:
            app.router.routes[index] = Route(route.path, openapi_json, name=route.name,
                                             include_in_schema=False)
            break
    else:
        raise RuntimeError(f"FastAPI's {app.openapi_url} route was not found to replace")


def complete_openapi(document: dict[str, Any]) -> dict[str, Any]:
    """Document the refusals every operation can answer with in our error format (not
    FastAPI's), how operations that answer 401 take a key, and keep the document within
    OpenAPI 3.1 with every reference resolving in its components."""
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    _add_schema(schemas, ErrorBody)
    components["securitySchemes"] = SECURITY_SCHEMES
    for path in document.get("paths", {}).values():
        for operation in path.values():
            responses = operation["responses"]
            statuses = set()
            if "requestBody" in operation:
                statuses |= {413, 422}
            if "401" in responses:
                statuses.add(503)  # `LoadShedding` may refuse any of them
            if operation.get("parameters"):
                statuses.add(422)
            for status, response in error_responses(*sorted(statuses)).items():
                if _is_fastapi_validation_error(responses.get(str(status))):
                    del responses[str(status)]  # not the body our handler sends
                responses.setdefault(str(status), response)
            if "401" in responses:
                operation["security"] = [{name: []} for name in SECURITY_SCHEMES]
            for content in [*operation.get("requestBody", {}).get("content", {}).values(),
                            *(c for r in responses.values()
                              for c in r.get("content", {}).values())]:
                # A `json_body` model brings the models it refers to.
                schemas.update({name: definition for name, definition in
                                content.get("schema", {}).pop("$defs", {}).items()
                                if name not in schemas})
                # FastAPI describes server-sent events with OpenAPI 3.2's itemSchema,
                # which 3.1 does not have; the route documents its events itself.
                if content.pop("itemSchema", None) is not None:
                    content.setdefault("schema", {"type": "string"})
    if not any(_is_fastapi_validation_error(response)
               for path in document.get("paths", {}).values() for operation in path.values()
               for response in operation["responses"].values()):
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
    return document


def _is_fastapi_validation_error(response: dict[str, Any] | None) -> bool:
    schema = (response or {}).get("content", {}).get("application/json", {}).get("schema", {})
    return schema.get("$ref") == f"{SCHEMAS}HTTPValidationError"


def _add_schema(schemas: dict[str, Any], model: type[BaseModel]) -> None:
    """The model's schema and those it refers to, as components."""
    schema = model.model_json_schema(ref_template=SCHEMAS + "{model}")
    for name, definition in {**schema.pop("$defs", {}), model.__name__: schema}.items():
        schemas.setdefault(name, definition)
