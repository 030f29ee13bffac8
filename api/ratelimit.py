"""Per-key rate limits counted in Redis, so every web process shares them."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import redis.exceptions
import structlog
from aiohttp import web

from api.context import REDIS, SETTINGS, auth_of
from api.http import Handler
from listmill.errors import RateLimited

log = structlog.get_logger(__name__)


async def _count(request: web.Request, group: str, window: int) -> tuple[int, float]:
    """Requests of this key in the current fixed window, and seconds until it resets."""
    now = time.time()
    start = int(now // window) * window
    settings = request.app[SETTINGS]
    key = f"{settings.queue_prefix}:ratelimit:{group}:{auth_of(request).key_id}:{start}"
    async with request.app[REDIS].pipeline(transaction=True) as pipe:
        pipe.incr(key)
        pipe.expire(key, window + 1)
        count, _ = await pipe.execute()
    return int(count), start + window - now


def rate_limited(group: str) -> Callable[[Handler], Handler]:
    """Limit a handler to ``MEMBERSHIP_RATE_LIMIT`` requests per key per window; answers carry
    RateLimit-Limit/Remaining/Reset, and 429 adds Retry-After. If Redis is down the request is
    let through (availability over strictness) and the fact is logged."""

    def wrap(handler: Handler) -> Handler:
        async def limited(request: web.Request) -> web.StreamResponse:
            settings = request.app[SETTINGS]
            limit, window = settings.membership_rate_limit, settings.membership_rate_window_seconds
            try:
                count, reset = await _count(request, group, window)
            except (OSError, redis.exceptions.RedisError) as exc:
                log.warning("rate_limit_unavailable", error=repr(exc))
                return await handler(request)
            headers = {
                "RateLimit-Limit": str(limit),
                "RateLimit-Remaining": str(max(limit - count, 0)),
                "RateLimit-Reset": str(math.ceil(reset)),
            }
            if count > limit:
                error = RateLimited(f"at most {limit} requests per {window} s for this key")
                error.headers = headers | {"Retry-After": str(math.ceil(reset))}
                raise error
            response = await handler(request)
            response.headers.update(headers)
            return response

        for attribute in ("listmill_scope", "listmill_public"):
            if hasattr(handler, attribute):
                setattr(limited, attribute, getattr(handler, attribute))
        return limited

    return wrap
