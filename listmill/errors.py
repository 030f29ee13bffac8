"""The errors a client can see: one class per failure, each with its status and code."""

from __future__ import annotations

from typing import Any, ClassVar


class ListmillError(Exception):
    """Something went wrong."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str | None = None, details: list[dict[str, Any]] | None = None):
        self.message = message or (self.__doc__ or "").strip()
        self.details = details or []
        self.headers: dict[str, str] = {}
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        """The JSON error envelope."""
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class BadRequest(ListmillError):
    """The request is malformed."""

    status, code = 400, "bad_request"


class Unauthorized(ListmillError):
    """A valid API key is required: send Authorization: Bearer <key>."""

    status, code = 401, "unauthorized"


class Forbidden(ListmillError):
    """This API key lacks the scope this request needs."""

    status, code = 403, "forbidden"


class NotFound(ListmillError):
    """Not found."""

    status, code = 404, "not_found"


class MethodNotAllowed(ListmillError):
    """This method is not allowed on this resource."""

    status, code = 405, "method_not_allowed"


class Conflict(ListmillError):
    """The request conflicts with the current state."""

    status, code = 409, "conflict"


class PayloadTooLarge(ListmillError):
    """The request body is too large."""

    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ListmillError):
    """Unsupported content type."""

    status, code = 415, "unsupported_media_type"


class ValidationFailed(ListmillError):
    """The request is invalid."""

    status, code = 422, "validation_failed"

    @classmethod
    def on(cls, field: str, message: str, kind: str = "invalid") -> ValidationFailed:
        """A validation failure of one field."""
        return cls(f"{field}: {message}", [{"field": field, "message": message, "type": kind}])


class RateLimited(ListmillError):
    """Too many requests: slow down and retry after the given time."""

    status, code = 429, "rate_limited"


class DependencyDown(ListmillError):
    """A service listmill depends on is not answering; retry shortly."""

    status, code = 503, "service_unavailable"
