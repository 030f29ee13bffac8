"""Operations: the queue report for operators, and the dashboard page that draws it."""

from __future__ import annotations

from importlib.resources import files

from aiohttp import web

from api.context import POOL, REDIS, SETTINGS, auth_of
from api.http import data_response, public, requires
from listmill.errors import NotFound
from listmill.ops import queue_report
from listmill.queries import keys as key_queries

ASSETS = {"ops.js": "text/javascript", "ops.css": "text/css"}
# The page and its script come from this service only; the report is fetched from it too.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'self'"
    ),
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _asset(name: str) -> str:
    return files("api.static").joinpath(name).read_text(encoding="utf-8")


@requires("ops:read")
async def queues(request: web.Request) -> web.Response:
    """GET /api/v1/ops/queues: lanes, throughput, running jobs, failures, workers, crons.
    A tenant's key sees its own project's jobs; a key of an operator project sees all."""
    app, project_id = request.app, auth_of(request).project_id
    async with app[POOL].acquire() as conn:
        name = await key_queries.project_name(conn, project_id)
    operator = name is not None and app[SETTINGS].is_operator_project(name)
    report = await queue_report(
        app[POOL], app[REDIS], app[SETTINGS], None if operator else project_id
    )
    return data_response(report)


@public
async def dashboard(request: web.Request) -> web.Response:
    """GET /ops: the page; its script asks for an ops:read key and reads the JSON report."""
    return web.Response(text=_asset("ops.html"), content_type="text/html", headers=PAGE_HEADERS)


@public
async def dashboard_asset(request: web.Request) -> web.Response:
    """GET /ops/{name}: the dashboard's script and style sheet."""
    name = request.match_info["name"]
    if name not in ASSETS:
        raise NotFound()
    return web.Response(text=_asset(name), content_type=ASSETS[name], headers=PAGE_HEADERS)
