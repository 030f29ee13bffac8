"""`listmill queues`: the operators' queue report as a table in the terminal."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from arq.connections import ArqRedis

from listmill.db import create_pool
from listmill.ops import queue_report
from listmill.settings import Settings

LANE_COLUMNS = (
    ("lane", "LANE"), ("depth", "DEPTH"), ("scheduled", "SCHED"), ("in_progress", "RUNNING"),
    ("oldest_queued_age_seconds", "OLDEST_S"), ("finished_5m", "DONE_5M"),
    ("failed_5m", "FAIL_5M"), ("finished_60m", "DONE_60M"), ("failed_60m", "FAIL_60M"),
    ("rows_per_second_5m", "ROWS/S"), ("redis_messages", "REDIS"),
)  # fmt: skip


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [headers, *[["-" if v is None else str(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]


def render(report: dict[str, Any]) -> str:
    """The report as text: lanes, running jobs, workers, scheduled runs, recent failures."""
    lines = [f"listmill queues at {report['generated_at']}", ""]
    lines += _table(
        [h for _, h in LANE_COLUMNS],
        [[lane[k] for k, _ in LANE_COLUMNS] for lane in report["lanes"]],
    )
    running = [
        [j["id"][:8], j["kind"], j["lane"], j["progress"]["processed"], j["progress"]["total"],
         j["progress"]["percent"], j["progress"]["rows_per_second"], j["progress"]["eta_seconds"]]
        for j in report["running_jobs"]
    ]  # fmt: skip
    if running:
        lines += ["", "running jobs"]
        lines += _table(["JOB", "KIND", "LANE", "DONE", "TOTAL", "%", "ROWS/S", "ETA_S"], running)
    workers = [
        [w["worker_id"], ",".join(w["lanes"]), len(w["current_jobs"]), w["last_seen"]]
        for w in report["workers"]
    ]
    lines += ["", f"workers: {len(workers)} alive"]
    if workers:
        lines += _table(["WORKER", "LANES", "JOBS", "LAST_SEEN"], workers)
    runs = [
        [r["name"], r["last_run_at"], r["last_outcome"], r["next_run_at"]]
        for r in report["scheduled_runs"]
    ]
    if runs:
        lines += ["", "scheduled runs"]
        lines += _table(["NAME", "LAST_RUN", "OUTCOME", "NEXT_RUN"], runs)
    failures = [
        [f["id"][:8], f["kind"], f["finished_at"], f["error"][:80]]
        for f in report["recent_failures"][:5]
    ]
    if failures:
        lines += ["", "recent failures"]
        lines += _table(["JOB", "KIND", "FINISHED", "ERROR"], failures)
    return "\n".join(lines)


async def show_queues(settings: Settings, watch: float | None) -> int:
    """Print the report once, or every ``watch`` seconds until interrupted."""
    pool = await create_pool(settings.model_copy(update={"db_pool_max": 2, "db_pool_min": 1}))
    redis: ArqRedis = ArqRedis.from_url(settings.redis_url, socket_timeout=2.0)
    try:
        while True:
            text = render(await queue_report(pool, redis, settings))
            if watch is None:
                print(text)
                return 0
            sys.stdout.write("\x1b[2J\x1b[H" + text + "\n")
            sys.stdout.flush()
            await asyncio.sleep(watch)
    finally:
        await redis.aclose()
        await pool.close()
