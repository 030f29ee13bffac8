"""The scheduled runs every worker carries (arq cron, unique per tick across workers): each
logs one summary line and records its outcome in Redis for `ops/queues`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

import structlog
from arq.cron import CronJob, cron

from listmill.presence import record_run
from listmill.settings import Settings
from worker.context import WorkerContext
from worker.reaper import reap
from worker.reconcile import reconcile_member_counts
from worker.retention import apply_retention

log = structlog.get_logger(__name__)
Run = Callable[[WorkerContext], Awaitable[dict[str, int]]]


def recorded(name: str, run: Run, every_seconds: int) -> Callable[[WorkerContext], Awaitable[str]]:
    """``run``, with its outcome (or its failure) recorded for operators."""

    async def scheduled(ctx: WorkerContext) -> str:
        try:
            summary = await run(ctx)
        except Exception as exc:
            outcome = f"error: {type(exc).__name__}: {exc}"
            log.exception("scheduled_run_failed", name=name)
            await record_run(ctx["redis"], ctx["settings"], name, outcome, every_seconds)
            raise
        outcome = "ok: " + ", ".join(f"{k}={v}" for k, v in summary.items())
        await record_run(ctx["redis"], ctx["settings"], name, outcome, every_seconds)
        return outcome

    scheduled.__qualname__ = name
    return scheduled


def _every(seconds: int) -> dict[str, Any]:
    """arq cron fields for "every ``seconds``" (at most hourly)."""
    if seconds < 60:
        return {"second": set(range(0, 60, max(1, seconds)))}
    minutes = max(1, min(seconds // 60, 60))
    return {"minute": set(range(0, 60, minutes)), "second": 0}


def scheduled_runs(settings: Settings) -> list[CronJob]:
    plan: list[tuple[str, Run, int, bool]] = [
        ("reaper", reap, settings.reaper_interval_seconds, True),
        ("reconcile_member_counts", reconcile_member_counts,
         settings.reconcile_interval_minutes * 60, False),
        ("retention", apply_retention, settings.retention_interval_minutes * 60, False),
    ]  # fmt: skip
    return [
        cron(
            cast(Any, recorded(name, run, every)),
            name=name,
            run_at_startup=at_startup,
            unique=True,
            timeout=600,
            keep_result=0,
            **_every(every),
        )
        for name, run, every, at_startup in plan
    ]
