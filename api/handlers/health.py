"""Liveness and readiness."""

from __future__ import annotations

import asyncio

from aiohttp import web

from api.context import POOL, REDIS
from api.http import public

CHECK_TIMEOUT = 2.0


@public
async def healthz(request: web.Request) -> web.Response:
    """The process is alive."""
    return web.json_response({"data": {"status": "ok"}})


async def _postgres_ok(request: web.Request) -> bool:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT), request.app[POOL].acquire() as conn:
            await conn.fetchval("SELECT 1")
    except Exception:
        return False
    return True


async def _redis_ok(request: web.Request) -> bool:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await request.app[REDIS].ping()
    except Exception:
        return False
    return True


@public
async def readyz(request: web.Request) -> web.Response:
    """Postgres and Redis both answer; otherwise 503 naming what is down."""
    postgres, redis = await asyncio.gather(_postgres_ok(request), _redis_ok(request))
    checks = {"postgres": "ok" if postgres else "down", "redis": "ok" if redis else "down"}
    down = [name for name, state in checks.items() if state == "down"]
    if down:
        body = {
            "error": {
                "code": "service_unavailable",
                "message": f"not ready: {', '.join(down)} down",
                "details": [{"service": name, "status": "down"} for name in down],
            }
        }
        return web.json_response(body, status=503)
    return web.json_response({"data": {"status": "ready", "checks": checks}})
