"""The aiohttp application: create_app(settings) wires state, middleware and routes."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from arq.connections import ArqRedis

from api.context import EVENTS, POOL, REDIS, SETTINGS
from api.events import JobEventHub
from api.metrics import METRICS, WebMetrics
from api.middleware import authenticate, request_context
from api.routes import setup_routes
from listmill.db import create_pool
from listmill.settings import Settings


def redis_client(settings: Settings) -> ArqRedis:
    """An arq client that connects lazily: the web starts, and accepts jobs, with Redis down."""
    client: ArqRedis = ArqRedis.from_url(
        settings.redis_url, socket_connect_timeout=1.0, socket_timeout=2.0
    )
    return client


async def _postgres(app: web.Application) -> AsyncIterator[None]:
    app[POOL] = await create_pool(app[SETTINGS])
    yield
    await app[POOL].close()


async def _events(app: web.Application) -> AsyncIterator[None]:
    app[EVENTS] = JobEventHub(app[SETTINGS].database_url)
    yield
    await app[EVENTS].close()


async def _redis(app: web.Application) -> AsyncIterator[None]:
    app[REDIS] = redis_client(app[SETTINGS])
    yield
    await app[REDIS].aclose()


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[request_context, authenticate],
        client_max_size=settings.max_json_body_bytes,
    )
    app[SETTINGS] = settings
    app[METRICS] = WebMetrics()
    app.cleanup_ctx.extend([_postgres, _redis, _events])
    setup_routes(app)
    return app
