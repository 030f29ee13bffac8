"""The operators' view of the queues: Postgres says what is queued, running and done; Redis
says which workers are alive and how the scheduled runs went. One report for the JSON
endpoint, the dashboard, the metrics and `listmill queues`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from arq.connections import ArqRedis

from listmill.db import Pool
from listmill.presence import live_workers, scheduled_runs
from listmill.queries import ops as queries
from listmill.records import Progress
from listmill.settings import Lane, Settings

LANE_FIELDS = (
    "depth", "scheduled", "in_progress", "finished_5m", "failed_5m", "finished_60m", "failed_60m"
)  # fmt: skip


def _lane(lane: Lane, figures: dict[str, Any], redis_messages: int | None) -> dict[str, Any]:
    report: dict[str, Any] = {"lane": lane.value}
    report.update({name: int(figures.get(name) or 0) for name in LANE_FIELDS})
    age = figures.get("oldest_queued_age_seconds")
    report["oldest_queued_age_seconds"] = round(age, 1) if age is not None else None
    report["rows_per_second_5m"] = round(int(figures.get("rows_5m") or 0) / 300, 1)
    report["redis_messages"] = redis_messages
    return report


def _running(row: dict[str, Any]) -> dict[str, Any]:
    progress = Progress.of(row["total"], row["processed"], row["rows_per_second"], False)
    return {
        "id": str(row["id"]), "kind": row["kind"], "lane": row["lane"],
        "project_id": row["project_id"], "worker_id": row["worker_id"],
        "started_at": row["started_at"].isoformat() if row["started_at"] else None,
        "progress": progress.model_dump(),
    }  # fmt: skip


async def _redis_messages(redis: ArqRedis, settings: Settings, lane: Lane) -> int | None:
    """Wake-up messages waiting in the lane's arq queue (None when Redis does not answer)."""
    try:
        return int(await redis.zcard(settings.lane_queue(lane)))
    except OSError:
        return None


def _own_jobs_only(
    workers: list[dict[str, Any]], running: list[dict[str, Any]], project_id: int | None
) -> list[dict[str, Any]]:
    """A tenant sees which of its own jobs a worker runs, not other projects' job ids."""
    if project_id is None:
        return workers
    own = {str(r["id"]) for r in running}
    return [
        {**w, "current_jobs": [j for j in w.get("current_jobs", []) if j in own]} for w in workers
    ]


async def queue_report(
    pool: Pool, redis: ArqRedis, settings: Settings, project_id: int | None = None
) -> dict[str, Any]:
    """The report. Lane figures, throughput, workers and scheduled runs cover the whole
    service; running jobs and failures only ``project_id``'s, unless it is None (all)."""
    async with pool.acquire() as conn:
        lanes = await queries.lane_figures(conn)
        minutes = await queries.throughput(conn)
        running = await queries.running_jobs(conn, project_id)
        failures = await queries.recent_failures(conn, project_id)
    return {
        "generated_at": datetime.now(UTC).isoformat(),
        "lanes": [
            _lane(lane, lanes.get(lane.value, {}), await _redis_messages(redis, settings, lane))
            for lane in Lane
        ],
        "throughput": [
            {**m, "minute": m["minute"].isoformat(), "rows": int(m["rows"])} for m in minutes
        ],
        "running_jobs": [_running(r) for r in running],
        "recent_failures": [
            {**f, "id": str(f["id"]), "finished_at": f["finished_at"].isoformat()} for f in failures
        ],
        "workers": _own_jobs_only(await live_workers(redis, settings), running, project_id),
        "scheduled_runs": await scheduled_runs(redis, settings),
    }
