"""The one error hierarchy of giapranh: what went wrong, for whom, and which field.

Stores, directory functions and workflow rules raise these; they know nothing of HTTP. Each
carries the status an API answers with (as yente's `exc.py` does), so the HTTP shell
(`shared.http`) renders any of them as `{"error": {"code", "message", "field"}}` and the
CLI prints the message.
"""

from __future__ import annotations


class GiapranhError(Exception):
    """A refusal a caller can act on: never a server fault."""

    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class Unauthorized(GiapranhError):
    status_code = 401
    code = "unauthorized"


class Forbidden(GiapranhError):
    status_code = 403
    code = "forbidden"


class NotFound(GiapranhError):
    status_code = 404
    code = "not_found"


class Conflict(GiapranhError):
    status_code = 409
    code = "conflict"


class InvalidTransition(Conflict):
    """A workflow step that the item's current state does not allow."""

    code = "invalid_transition"


class PayloadTooLarge(GiapranhError):
    status_code = 413
    code = "payload_too_large"


class Unprocessable(GiapranhError):
    status_code = 422
    code = "invalid"


class TooManyRequests(GiapranhError):
    """Over a rate limit: try again after `retry_after` seconds (the `Retry-After` header)."""

    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float, field: str | None = None):
        super().__init__(message, field=field)
        self.retry_after = retry_after


class UnitBusy(TooManyRequests):
    """The key's unit has as many requests in flight as one unit may
    (`shared.http.UnitSlots`)."""

    code = "unit_busy"


class ServiceUnavailable(GiapranhError):
    """A service this request needs cannot answer now: try again shortly (after
    `retry_after` seconds, the `Retry-After` header, when known)."""

    status_code = 503
    code = "unavailable"

    def __init__(self, message: str, *, field: str | None = None,
                 retry_after: float | None = None):
        super().__init__(message, field=field)
        self.retry_after = retry_after


class Overloaded(ServiceUnavailable):
    """More work waiting than the service takes on: refused at once, so that clients back
    off instead of timing out."""

    code = "overloaded"
