"""What workers publish about themselves in Redis, and how operators read it back: one
heartbeat per worker process, and the outcome of every scheduled (cron) run."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from arq.connections import ArqRedis

from listmill.settings import Settings

WORKER_TTL_SECONDS = 15


def _worker_key(settings: Settings, worker_id: str) -> str:
    return f"{settings.queue_prefix}:worker:{worker_id}"


def _scheduled_key(settings: Settings, name: str) -> str:
    return f"{settings.queue_prefix}:scheduled:{name}"


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


async def publish_worker(redis: ArqRedis, settings: Settings, record: dict[str, Any]) -> None:
    """Refresh this worker's heartbeat; it disappears WORKER_TTL_SECONDS after the last one."""
    key = _worker_key(settings, record["worker_id"])
    await redis.set(key, json.dumps({**record, "last_seen": now_iso()}), ex=WORKER_TTL_SECONDS)


async def remove_worker(redis: ArqRedis, settings: Settings, worker_id: str) -> None:
    await redis.delete(_worker_key(settings, worker_id))


async def _records(redis: ArqRedis, pattern: str) -> list[dict[str, Any]]:
    keys = [key async for key in redis.scan_iter(match=pattern, count=200)]
    values = await redis.mget(keys) if keys else []
    return sorted((json.loads(v) for v in values if v), key=lambda r: json.dumps(r))


async def live_workers(redis: ArqRedis, settings: Settings) -> list[dict[str, Any]]:
    return await _records(redis, _worker_key(settings, "*"))


async def record_run(
    redis: ArqRedis, settings: Settings, name: str, outcome: str, every_seconds: int
) -> None:
    """Remember a scheduled run's outcome and when the next one is due."""
    now = datetime.now(UTC)
    record = {
        "name": name,
        "last_run_at": now.isoformat(),
        "last_outcome": outcome,
        "next_run_at": (now + timedelta(seconds=every_seconds)).isoformat(),
    }
    await redis.set(_scheduled_key(settings, name), json.dumps(record))


async def scheduled_runs(redis: ArqRedis, settings: Settings) -> list[dict[str, Any]]:
    return await _records(redis, _scheduled_key(settings, "*"))
