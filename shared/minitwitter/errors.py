"""One error hierarchy for the whole service; ``http.error_response`` maps it to HTTP.

::

    MinitwitterError (500)
    ├── BadRequest (400)            malformed request: bad JSON, bad cursor
    ├── Unauthorized (401)          missing or invalid token / credentials
    ├── Forbidden (403)
    ├── NotFound (404)              missing, or not yours to change
    ├── MethodNotAllowed (405)      carries the allowed methods
    ├── Conflict (409)
    ├── PayloadTooLarge (413)
    ├── ValidationFailed (422)      per-field ``details``
    ├── RateLimited (429)           carries ``retry_after`` seconds
    └── DependencyUnavailable (503) PostgreSQL or another required dependency is down

Domain code raises these; nothing below ``http`` knows status codes exist. Messages are written
for API clients: they never contain SQL, stack traces or internal names.
"""

from __future__ import annotations

from typing import Any


class MinitwitterError(Exception):
    """Base of every error the service reports to a client."""

    status = 500
    message = "internal error"

    def __init__(self, message: str | None = None, details: dict[str, Any] | None = None) -> None:
        self.message = message or type(self).message
        self.details: dict[str, Any] = details or {}
        super().__init__(self.message)


class BadRequest(MinitwitterError):
    status = 400
    message = "malformed request"


class Unauthorized(MinitwitterError):
    status = 401
    message = "authentication required"


class Forbidden(MinitwitterError):
    status = 403
    message = "not allowed"


class NotFound(MinitwitterError):
    status = 404
    message = "not found"


class MethodNotAllowed(MinitwitterError):
    status = 405
    message = "method not allowed"

    def __init__(self, allowed: list[str] | tuple[str, ...]) -> None:
        self.allowed = sorted(allowed)
        super().__init__(details={"allowed": self.allowed})


class Conflict(MinitwitterError):
    status = 409
    message = "conflict"


class PayloadTooLarge(MinitwitterError):
    status = 413
    message = "request body too large"


class ValidationFailed(MinitwitterError):
    """422 with ``details`` mapping each offending field to a list of messages."""

    status = 422
    message = "validation failed"


class RateLimited(MinitwitterError):
    status = 429
    message = "rate limit exceeded"

    def __init__(self, retry_after: int, limit: int, reset_at: int) -> None:
        self.retry_after = max(1, retry_after)
        self.limit = limit
        self.reset_at = reset_at
        super().__init__(details={"retry_after": self.retry_after})


class DependencyUnavailable(MinitwitterError):
    status = 503
    message = "a dependency is unavailable, try again later"
