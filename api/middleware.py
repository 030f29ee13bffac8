"""Request id, access log, the JSON error envelope, and API-key auth."""

from __future__ import annotations

import time
import uuid

import asyncpg
import redis.exceptions
import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from api.context import AUTH_KEY, POOL, Auth
from api.http import Handler
from api.metrics import METRICS
from listmill.errors import (
    BadRequest,
    DependencyDown,
    Forbidden,
    ListmillError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
)
from listmill.queries import keys as key_queries
from listmill.services.keys import hash_key

log = structlog.get_logger(__name__)

HTTP_ERRORS: dict[int, type[ListmillError]] = {
    400: BadRequest,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
}
DEPENDENCY_ERRORS = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


def _error_response(error: ListmillError, request_id: str) -> web.Response:
    headers = {"X-Request-ID": request_id}
    headers.update(error.headers)
    return web.json_response(error.body(), status=error.status, headers=headers)


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind a request id into every log line, answer every error with the envelope."""
    request_id = request.headers.get("X-Request-ID", "")[:128] or uuid.uuid4().hex
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    started = time.perf_counter()
    try:
        response = await _handle(request, handler, request_id)
    finally:
        structlog.contextvars.unbind_contextvars("project_id")
    if not response.prepared:
        response.headers["X-Request-ID"] = request_id
    seconds = time.perf_counter() - started
    request.app[METRICS].observe(request, response.status, seconds)
    log.info(
        "request_finished",
        method=request.method,
        path=request.path,
        status=response.status,
        duration_ms=round(seconds * 1000, 2),
    )
    return response


async def _handle(request: web.Request, handler: Handler, request_id: str) -> web.StreamResponse:
    try:
        return await handler(request)
    except ListmillError as error:
        return _error_response(error, request_id)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        mapped = HTTP_ERRORS.get(exc.status)
        if mapped is None:
            return web.json_response(
                {"error": {"code": "http_error", "message": exc.reason, "details": []}},
                status=exc.status,
                headers={"X-Request-ID": request_id},
            )
        return _error_response(mapped(), request_id)
    except HttpProcessingError as exc:  # a malformed multipart part or chunked body
        return _error_response(BadRequest(f"the body is malformed: {exc.message}"), request_id)
    except DEPENDENCY_ERRORS as exc:
        log.warning("dependency_unavailable", error=repr(exc))
        return _error_response(DependencyDown(), request_id)
    except Exception:
        log.exception("request_failed")
        return _error_response(ListmillError("internal error; quote the request id"), request_id)


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Resolve the bearer key to a project and enforce the route's scope."""
    route_handler = request.match_info.handler
    if request.match_info.http_exception is not None or getattr(
        route_handler, "listmill_public", False
    ):
        return await handler(request)
    scope: str | None = getattr(route_handler, "listmill_scope", None)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized()
    if not token.isascii():  # keys are ASCII; aiohttp hands other bytes over as surrogates
        raise Unauthorized("this API key is not valid or has been revoked")
    async with request.app[POOL].acquire() as conn:
        key = await key_queries.find_active_key(conn, hash_key(token.strip()))
    if key is None:
        raise Unauthorized("this API key is not valid or has been revoked")
    if scope is not None and scope not in key.scopes:
        raise Forbidden(f"this API key lacks the scope {scope}")
    request[AUTH_KEY] = Auth(project_id=key.project_id, key_id=key.id, scopes=frozenset(key.scopes))
    structlog.contextvars.bind_contextvars(project_id=key.project_id)
    return await handler(request)
