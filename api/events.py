"""Job progress for Server-Sent Events: one LISTEN connection per web process fans the
NOTIFY of every committed batch out to the streams that follow that job."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import structlog

from listmill.queries.jobs import JOB_EVENTS

log = structlog.get_logger(__name__)


class JobEventHub:
    def __init__(self, database_url: str):
        self._database_url = database_url
        self._conn: asyncpg.Connection[Any] | None = None
        self._lock = asyncio.Lock()
        self._followers: dict[str, set[asyncio.Queue[dict[str, Any]]]] = defaultdict(set)

    async def _listen(self) -> None:
        async with self._lock:
            if self._conn is not None and not self._conn.is_closed():
                return
            self._conn = await asyncpg.connect(self._database_url)
            await self._conn.add_listener(JOB_EVENTS, self._heard)

    def _heard(self, conn: object, pid: int, channel: str, payload: object) -> None:
        event = json.loads(str(payload))
        for queue in self._followers.get(event["id"], ()):
            queue.put_nowait(event)

    @asynccontextmanager
    async def follow(self, job_id: str) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        """A queue of the job's progress events, from now on, while the context lasts."""
        try:
            await self._listen()
        except (OSError, asyncpg.PostgresError) as exc:  # the stream falls back to re-reading
            log.warning("job_events_unavailable", error=repr(exc))
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._followers[job_id].add(queue)
        try:
            yield queue
        finally:
            self._followers[job_id].discard(queue)
            if not self._followers[job_id]:
                del self._followers[job_id]

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
