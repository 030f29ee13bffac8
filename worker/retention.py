"""Retention (arq cron): idempotency keys, error rows, finished jobs and import files go once
they are past their configured ages."""

from __future__ import annotations

import structlog

from listmill.queries import ops as queries
from worker.context import WorkerContext

log = structlog.get_logger(__name__)


async def apply_retention(ctx: WorkerContext) -> dict[str, int]:
    settings = ctx["settings"]
    async with ctx["pool"].acquire() as conn:
        removed = await queries.apply_retention(
            conn,
            idempotency_hours=settings.idempotency_ttl_hours,
            error_days=settings.error_retention_days,
            job_days=settings.job_retention_days,
            file_seconds=settings.import_file_retention_seconds,
        )
    log.info("retention_applied", **removed)
    return removed
