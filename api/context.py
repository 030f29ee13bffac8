"""Typed application state and the per-request auth context."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from arq.connections import ArqRedis

from api.events import JobEventHub
from listmill.db import Pool
from listmill.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", Pool)
REDIS = web.AppKey("redis", ArqRedis)
EVENTS = web.AppKey("events", JobEventHub)


@dataclass(frozen=True)
class Auth:
    """Who is calling: the key's project and scopes."""

    project_id: int
    key_id: int
    scopes: frozenset[str]


AUTH_KEY = web.RequestKey("auth", Auth)


def auth_of(request: web.Request) -> Auth:
    """The caller of an authenticated route (set by the auth middleware)."""
    auth: Auth = request[AUTH_KEY]
    return auth
