"""Operations: the queue report for operators."""

from __future__ import annotations

from aiohttp import web

from api.context import POOL, REDIS, SETTINGS
from api.http import data_response, requires
from listmill.ops import queue_report


@requires("ops:read")
async def queues(request: web.Request) -> web.Response:
    """GET /api/v1/ops/queues: lanes, throughput, running jobs, failures, workers, crons."""
    app = request.app
    return data_response(await queue_report(app[POOL], app[REDIS], app[SETTINGS]))
