"""The job engine: claim a job in Postgres, apply it batch by batch, each batch committed with
the job's counters and checkpoint, and end it. arq only delivers the wake-up."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import redis.exceptions
import structlog

from listmill.db import Connection, Pool
from listmill.jobs.queue import wake_worker
from listmill.queries import jobs as queries
from listmill.records import JobRow, JobStatus
from listmill.settings import Settings
from worker.context import WorkerContext
from worker.jobs import plan_for
from worker.jobs.base import BatchOutcome, Plan
from worker.metrics import JOB_DURATION, JOB_RETRIES, JOBS_FINISHED, ROWS_WRITTEN

log = structlog.get_logger(__name__)

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


class LeaseLost(Exception):
    """Another worker took this job over: stop without committing anything more."""


class JobCancelled(Exception):
    """The client cancelled the job; what was committed stays."""


def retry_delay(settings: Settings, attempt: int) -> float:
    """Exponential backoff with jitter, capped at a minute."""
    base = settings.job_retry_base_seconds * 2 ** max(attempt - 1, 0)
    return float(min(base, 60.0) * random.uniform(0.8, 1.2))


async def run_job(ctx: WorkerContext, job_id: str) -> str:
    """The arq task: run job ``job_id`` if it can be claimed. Safe to deliver any number of
    times: only the delivery that claims the job does anything."""
    settings, pool = ctx["settings"], ctx["pool"]
    lease = uuid4()
    structlog.contextvars.bind_contextvars(job_id=job_id, job_try=ctx.get("job_try"))
    async with pool.acquire() as conn:
        claimed = await queries.claim_job(
            conn, UUID(job_id), lease, ctx["worker_id"], settings.job_lease_seconds
        )
    if claimed is None:
        log.info("job_not_claimable")
        return "not_claimable"
    job, payload = claimed
    structlog.contextvars.bind_contextvars(project_id=job.project_id, kind=job.kind.value)
    heart = asyncio.create_task(_heartbeat(ctx, job.id, lease))
    running = ctx.get("running_jobs", set())
    running.add(job_id)
    try:
        return await _run_claimed(ctx, job, payload, lease, heart)
    finally:
        running.discard(job_id)
        heart.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heart


async def _run_claimed(
    ctx: WorkerContext, job: JobRow, payload: Any, lease: UUID, heart: asyncio.Task[None]
) -> str:
    started = time.monotonic()
    status, error = JobStatus.SUCCEEDED, None
    try:
        await _apply_batches(ctx, job, payload, lease, heart)
    except JobCancelled:
        status = JobStatus.CANCELLED
    except LeaseLost:
        log.warning("job_lease_lost")
        return "lease_lost"
    except asyncio.CancelledError:
        shutdown = _give_back(
            ctx, job, payload, lease, "the worker shut down", delay=0, refund=True
        )
        await asyncio.shield(shutdown)
        raise
    except TRANSIENT_ERRORS as exc:
        return await _retry_or_fail(ctx, job, payload, lease, exc)
    except Exception as exc:
        status, error = JobStatus.FAILED, f"{type(exc).__name__}: {exc}"
        log.exception("job_failed", error=error)
    JOBS_FINISHED.labels(job.kind.value, status.value).inc()
    JOB_DURATION.labels(job.kind.value).observe(time.monotonic() - started)
    async with ctx["pool"].acquire() as conn:
        await queries.finish_job(conn, job.id, lease, status, error)
        await _clean_up(ctx, conn, job, payload)
    log.info("job_finished", status=status, seconds=round(time.monotonic() - started, 3))
    return status.value


async def _clean_up(ctx: WorkerContext, conn: Connection, job: JobRow, payload: Any) -> None:
    """What the job's kind does once the job ended, however it ended (an import drops its
    staged rows, and its file unless a retention keeps it)."""
    cleanup = plan_for(job.kind, payload, ctx["pool"], ctx["settings"]).cleanup
    if cleanup is not None:
        await cleanup(conn, job, ctx["settings"])


async def _apply_batches(
    ctx: WorkerContext, job: JobRow, payload: Any, lease: UUID, heart: asyncio.Task[None]
) -> None:
    """Prepare once if the kind needs it, then apply the items after the checkpoint, one
    transaction per batch, each committing the job's counters and checkpoint with it."""
    settings, pool = ctx["settings"], ctx["pool"]
    plan = plan_for(job.kind, payload, pool, settings)
    try:
        await _run_plan(plan, job, lease, heart, pool, settings)
    finally:
        if plan.close is not None:
            await plan.close()


async def _run_plan(
    plan: Plan, job: JobRow, lease: UUID, heart: asyncio.Task[None], pool: Pool, settings: Settings
) -> None:
    progress = _Progress(job)
    if job.total is None and plan.prepare is not None:
        async with pool.acquire() as conn, conn.transaction():
            prepared = await plan.prepare(conn, job, settings, pool)
            job.total = prepared.total
            await progress.commit(
                conn, lease, job.checkpoint, prepared.outcome, settings, total=job.total
            )
        progress.started = time.monotonic()  # the rate counts batches, not the preparation
    await _Batches(plan, job, lease, pool, settings, progress).write(heart)


class BatchWaitTimeout(TimeoutError):
    """A batch written ahead waited too long for the batch before to commit (_Turn): it is
    rolled back, and the job retried as after any transient error."""


class _BatchAbandoned(Exception):
    """The batch before this one was not committed: this one is rolled back unfinished."""


@dataclass
class _Turn:
    """How a batch's transaction ended, for the batch after it: ``cancel`` is None until it
    committed (the client's cancel flag then), and stays None if it was rolled back."""

    ended: asyncio.Event = field(default_factory=asyncio.Event)
    cancel: bool | None = None

    async def committed(self, patience: float) -> None:
        """Wait for the batch's end; raise unless it committed and no cancel was asked. The
        batch after it, written ahead, holds its rows' locks meanwhile, a wait Postgres
        cannot see: were another writer of those contacts in between (a job of the project
        that began after _depth looked), the three would wait for each other for good. So
        it gives up after ``patience`` seconds."""
        try:
            await asyncio.wait_for(self.ended.wait(), patience)
        except TimeoutError:
            raise BatchWaitTimeout(f"the batch before did not commit in {patience} s") from None
        if self.cancel is None:
            raise _BatchAbandoned()
        if self.cancel:
            raise JobCancelled()


@dataclass
class _Batches:
    """The batches after the checkpoint, each in its own transaction. A plan with an overlap
    has two batches written at a time (see _depth): the next one starts once this one has
    taken its items, and writes its ahead part meanwhile; the rest of each waits for the
    commit of the one before, so batches commit in order and a checkpoint never passes an
    uncommitted batch."""

    plan: Plan
    job: JobRow
    lease: UUID
    pool: Pool
    settings: Settings
    progress: _Progress

    async def write(self, heart: asyncio.Task[None]) -> None:
        job, plan = self.job, self.plan
        position, total, batch_size = job.checkpoint, job.total or 0, plan.batch_size(self.settings)
        writing: deque[asyncio.Task[None]] = deque()
        before: _Turn | None = None
        try:
            while position < total or writing:
                if writing and writing[0].done():  # the oldest ended: its outcome comes first
                    await writing.popleft()
                    continue
                depth = await self._depth(len(writing))
                if position < total and len(writing) < depth:
                    if heart.done():
                        raise LeaseLost()
                    upto, turn, taken = min(position + batch_size, total), _Turn(), asyncio.Event()
                    batch = self._batch(position, upto, before, turn, taken)
                    writing.append(asyncio.create_task(batch))
                    before, position = turn, upto
                    await _first_of(writing[-1], taken)  # batches take their items in order
                    continue
                await writing.popleft()  # the oldest: it commits first, or raises first
        except BaseException:  # a batch failed, or the worker shuts down: the others stop
            for task in writing:
                task.cancel()
            raise
        finally:
            await _settle(list(writing))

    async def _depth(self, writing: int) -> int:
        """How many batches may be written at a time: two for a plan with an overlap, but
        one while another job of the project, or a job of another lane, waits or runs. On
        two cores, two batches leave a small job little of either; and a batch written
        ahead holds the locks of its rows while it waits here for the batch before, a wait
        Postgres cannot see: with another writer of the same contacts between them, neither
        would ever go on (see _Turn)."""
        if self.plan.overlap is None or writing != 1:
            return 1 if self.plan.overlap is None else 2
        async with self.pool.acquire() as conn:
            busy = await queries.others_busy(conn, self.job.id, self.job.project_id, self.job.lane)
        return 1 if busy else 2

    async def _batch(
        self, after: int, upto: int, before: _Turn | None, turn: _Turn, taken: asyncio.Event
    ) -> None:
        plan, job = self.plan, self.job
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                if plan.overlap is not None:
                    await plan.overlap.take(conn, job, after, upto)
                    taken.set()
                    await plan.overlap.write_ahead(conn, job, after, upto)
                if before is not None:  # ended already, unless this one was written ahead
                    await before.committed(self.settings.batch_overlap_wait_seconds)
                outcome = await plan.apply_range(conn, job, after, upto)
                cancel = await self.progress.commit(conn, self.lease, upto, outcome, self.settings)
            turn.cancel = cancel
            log.debug("batch_committed", checkpoint=upto, **outcome.counts)
            if cancel:
                raise JobCancelled()
        finally:
            taken.set()
            turn.ended.set()


async def _first_of(task: asyncio.Task[None], event: asyncio.Event) -> None:
    """Wait until the event is set or the task ended."""
    waiting = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait([task, waiting], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()


async def _settle(tasks: list[asyncio.Task[None]]) -> None:
    """Wait for batches that were started and will not commit; their errors follow from the
    one raised."""
    for done in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(done, BaseException) and not isinstance(
            done, (_BatchAbandoned, JobCancelled, LeaseLost, asyncio.CancelledError)
        ):
            log.warning("batch_abandoned", error=repr(done))


class _Progress:
    """The job's counters as committed so far, and the one fenced write that advances them."""

    def __init__(self, job: JobRow):
        self.job = job
        self.counts = Counter(job.counts)
        self.errors_count = job.errors_count
        self.started = time.monotonic()
        self.items = 0
        self.first_checkpoint = self.position = job.checkpoint

    async def commit(
        self,
        conn: Connection,
        lease: UUID,
        checkpoint: int,
        outcome: BatchOutcome,
        settings: Settings,
        total: int | None = None,
    ) -> bool:
        """Record a batch in its transaction; True if the client asked to cancel. Raises
        LeaseLost (rolling the batch back) if another worker holds the job now."""
        room = max(settings.job_error_cap - self.errors_count, 0)
        # in row order (a batch finds some, a list's suppressed members say, after the others)
        kept = sorted(outcome.errors, key=lambda error: (error[0] is None, error[0] or 0))[:room]
        if kept:
            await queries.insert_errors(conn, self.job.id, self.errors_count + 1, kept)
        self.counts.update(outcome.counts)
        elapsed = max(time.monotonic() - self.started, 1e-6)
        cancel = await queries.commit_progress(
            conn,
            self.job.id,
            lease,
            checkpoint=checkpoint,
            processed=checkpoint,
            total=total,
            counts={kind: n for kind, n in self.counts.items() if n},
            errors_added=len(kept),
            errors_truncated=len(kept) < len(outcome.errors) or outcome.errors_dropped > 0,
            rows_per_second=(checkpoint - self.first_checkpoint) / elapsed if checkpoint else None,
        )
        if cancel is None:
            raise LeaseLost()
        ROWS_WRITTEN.labels(self.job.kind.value).inc(checkpoint - self.position)
        self.position = checkpoint
        self.errors_count += len(kept)
        return cancel


async def _heartbeat(ctx: WorkerContext, job_id: UUID, lease: UUID) -> None:
    """Extend the lease until cancelled; returns (ending the task) once the lease is lost."""
    settings = ctx["settings"]
    while True:
        await asyncio.sleep(settings.job_heartbeat_seconds)
        try:
            async with ctx["pool"].acquire() as conn:
                held = await queries.heartbeat(conn, job_id, lease, settings.job_lease_seconds)
        except TRANSIENT_ERRORS as exc:
            log.warning("heartbeat_failed", error=repr(exc))
            continue
        if not held:
            return


async def _retry_or_fail(
    ctx: WorkerContext, job: JobRow, payload: Any, lease: UUID, exc: BaseException
) -> str:
    message = f"{type(exc).__name__}: {exc}"
    if job.attempts >= job.max_attempts:
        log.error("job_failed", error=message, attempts=job.attempts, transient=True)
        with contextlib.suppress(*TRANSIENT_ERRORS):
            async with ctx["pool"].acquire() as conn:
                await queries.finish_job(
                    conn,
                    job.id,
                    lease,
                    JobStatus.FAILED,
                    f"gave up after {job.attempts} attempts; last error: {message}",
                )
                await _clean_up(ctx, conn, job, payload)
        return JobStatus.FAILED.value
    JOB_RETRIES.labels(job.kind.value).inc()
    delay = retry_delay(ctx["settings"], job.attempts)
    log.warning("job_retry_scheduled", error=message, attempts=job.attempts, delay=round(delay, 2))
    await _give_back(ctx, job, payload, lease, message, delay)
    return "retry"


async def _give_back(
    ctx: WorkerContext,
    job: JobRow,
    payload: Any,
    lease: UUID,
    reason: str,
    delay: float,
    refund: bool = False,
) -> None:
    """Return the job to the queue (or end it, cancelled, if that was asked); if Postgres or
    Redis is down, the reaper does it later."""
    with contextlib.suppress(*TRANSIENT_ERRORS):
        async with ctx["pool"].acquire() as conn:
            status = await queries.release_for_retry(
                conn, job.id, lease, delay, reason, refund_attempt=refund
            )
            if status == JobStatus.CANCELLED:
                await _clean_up(ctx, conn, job, payload)
        if status == "queued":
            next_attempt = job.attempts if refund else job.attempts + 1
            await wake_worker(ctx["redis"], ctx["settings"], job.id, job.lane, next_attempt, delay)
