"""The reaper (arq cron): Postgres says which jobs are unfinished and unheld; wake them again.

Together with the claim it makes a job survive a SIGKILLed worker and the loss of Redis.
Safe with any number of workers: each UPDATE hands a job to exactly one reaper.
"""

from __future__ import annotations

import structlog

from listmill.jobs.queue import wake_worker
from listmill.queries import imports as import_queries
from listmill.queries import jobs as queries
from worker.context import WorkerContext

log = structlog.get_logger(__name__)


async def reap(ctx: WorkerContext) -> dict[str, int]:
    settings = ctx["settings"]
    async with ctx["pool"].acquire() as conn:
        expired = await queries.reap_expired_leases(conn)
        stale = await queries.reap_stale_queued(conn, settings.job_stale_queued_seconds)
        for job_id, status, _, _ in expired:
            if status != "queued":  # it ended (cancelled, or out of attempts): as the runner does
                await import_queries.discard_staging(
                    conn, job_id, settings.import_file_retention_seconds
                )
    requeued = [
        (job_id, lane, attempts) for job_id, status, lane, attempts in expired if status == "queued"
    ]
    failed = sum(1 for _, status, _, _ in expired if status == "failed")
    for job_id, lane, attempts in [*requeued, *stale]:
        await wake_worker(ctx["redis"], settings, job_id, lane, attempts + 1)
    summary = {
        "lease_expired": len(requeued),
        "failed": failed,
        "rewoken": len(stale),
    }
    if any(summary.values()):
        log.info("reaper_ran", **summary)
    return summary
