"""arq wiring: one arq Worker per lane in one process, the reaper as a cron run."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
from typing import Any, cast

import structlog
from arq.connections import ArqRedis, RedisSettings
from redis import exceptions as redis_errors

from listmill.db import create_pool
from listmill.logs import configure_logging
from listmill.presence import now_iso, publish_worker, remove_worker
from listmill.settings import Lane, Settings
from worker.context import WorkerContext
from worker.lane_worker import LaneWorker
from worker.metrics import serve_metrics
from worker.runner import run_job
from worker.scheduled import scheduled_runs

log = structlog.get_logger(__name__)

# arq re-runs a SIGKILLed task only after its timeout; Postgres leases do that job here, so the
# timeout is only an upper bound for one run and results are not kept (the id frees at once).
JOB_TIMEOUT_SECONDS = 6 * 3600
PRESENCE_SECONDS = 5
# collections of the oldest generation: one per this many of the middle one (Python's is 10)
GC_FULL_EVERY = 1000


def make_worker(
    settings: Settings, lane: Lane, context: WorkerContext, *, burst: bool = False
) -> LaneWorker:
    """An arq Worker for one lane, woken by its lane's channel; the small lane's also runs the
    reaper. Not in burst mode, which polls as plain arq does: a cron's next run, always
    queued, would keep the worker from ever finishing."""
    crons = scheduled_runs(settings) if lane is Lane.SMALL and not burst else []
    return LaneWorker(
        wake_channel=None if burst else settings.lane_wake_channel(lane),
        functions=[cast(Any, run_job)],
        queue_name=settings.lane_queue(lane),
        cron_jobs=crons,
        redis_settings=RedisSettings.from_dsn(settings.redis_url),
        burst=burst,
        handle_signals=False,
        max_jobs=settings.worker_max_jobs,
        job_timeout=JOB_TIMEOUT_SECONDS,
        keep_result=0,
        poll_delay=settings.worker_poll_delay,
        max_tries=1000,
        ctx=dict(context),
        health_check_key=f"{settings.queue_prefix}:health:{lane.value}:{context['worker_id']}",
    )


async def make_context(settings: Settings) -> WorkerContext:
    """What every job of this process shares. Its commits are asynchronous unless
    WORKER_SYNCHRONOUS_COMMIT is on: a worker writes nothing that cannot be written again from
    what the web committed durably (the job, its items or file), and Postgres loses, in a crash,
    only the last commits, in order; so a crash sets a job back to a state it had passed
    through, from which it resumes. A commit then no longer waits for the disk to flush the WAL
    an import writes beside it (10-70 ms a commit, three commits a small job)."""
    return WorkerContext(
        settings=settings,
        pool=await create_pool(settings, synchronous_commit=settings.worker_synchronous_commit),
        worker_id=f"{socket.gethostname()}:{os.getpid()}",
        running_jobs=set(),
    )


async def _publish_presence(settings: Settings, context: WorkerContext) -> None:
    """One heartbeat per worker process, for operators: lanes, host, pid, current jobs."""
    redis: ArqRedis = ArqRedis.from_url(settings.redis_url, socket_timeout=2.0)
    record = {
        "worker_id": context["worker_id"],
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "lanes": [lane.value for lane in settings.lanes()],
        "started_at": now_iso(),
    }
    try:
        while True:
            try:
                await publish_worker(
                    redis, settings, {**record, "current_jobs": sorted(context["running_jobs"])}
                )
            except (OSError, redis_errors.RedisError) as exc:
                log.warning("presence_not_published", error=repr(exc))
            await asyncio.sleep(PRESENCE_SECONDS)
    finally:
        with contextlib.suppress(OSError, redis_errors.RedisError):
            await remove_worker(redis, settings, context["worker_id"])
        await redis.aclose()


async def serve(settings: Settings) -> None:
    """Run a Worker per configured lane until SIGINT or SIGTERM; running jobs are given back."""
    context = await make_context(settings)
    serve_metrics(settings.worker_metrics_port)
    _tune_gc()
    workers = [make_worker(settings, lane, context) for lane in settings.lanes()]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(w.async_run()) for w in workers]
    presence = asyncio.create_task(_publish_presence(settings, context))
    log.info("worker_started", lanes=[lane.value for lane in settings.lanes()])
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for w in workers:
        with contextlib.suppress(asyncio.CancelledError):
            await w.close()
    for task in [*tasks, presence]:
        task.cancel()
    await asyncio.gather(*tasks, presence, return_exceptions=True)
    await context["pool"].close()
    log.info("worker_stopped")


def _tune_gc() -> None:
    """Fewer full collections. A full one walks every object the process holds, and an import
    holds some 200,000 (its batches of rows): with Python's thresholds a 1,000,000-row import
    ran about 100 of them, 7 of its 22 seconds (bench/import_throughput.py; 15 s with these).
    Young objects are collected as often as before, so cycles of tasks and frames still go;
    the objects made at start are set aside for good."""
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, GC_FULL_EVERY)


def run_worker(settings: Settings) -> None:
    configure_logging(settings)
    asyncio.run(serve(settings))


def in_process_workers(
    settings: Settings, context: WorkerContext, **kwargs: Any
) -> list[LaneWorker]:
    """Workers for every lane, for tests and benchmarks that run jobs in-process."""
    return [make_worker(settings, lane, context, **kwargs) for lane in Lane]
