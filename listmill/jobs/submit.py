"""Accepting a job: store it (and consume the idempotency key) in one transaction, then wake a
worker. Redis being down never loses an accepted job: the reaper wakes a worker later."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any

import redis.exceptions
import structlog
from arq.connections import ArqRedis

from listmill.db import Connection, Pool
from listmill.errors import Conflict
from listmill.queries import jobs as queries
from listmill.records import JobKind, JobRow
from listmill.settings import Lane, Settings

from .queue import wake_worker

log = structlog.get_logger(__name__)

IDEMPOTENCY_REUSED = "this Idempotency-Key was already used with a different request"


@dataclass(frozen=True)
class Submission:
    """What a client asked for, validated."""

    project_id: int
    kind: JobKind
    params: dict[str, Any]
    payload: Any
    total: int | None
    counts: dict[str, int]
    idempotency_key: str | None
    fingerprint: str


class Replay(Exception):
    """The request repeats an earlier one (same Idempotency-Key, same body)."""

    def __init__(self, job_id: uuid.UUID):
        self.job_id = job_id


def fingerprint(method: str, path: str, body: Any) -> str:
    """The identity of a request, for comparing an idempotent retry with the original."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{method} {path}\n{canonical}".encode()).hexdigest()


def lane_for(kind: JobKind, total: int | None, settings: Settings) -> Lane:
    """Imports and large batches go to the large lane, so small jobs never wait behind them."""
    if kind is JobKind.IMPORT or total is None or total > settings.large_job_threshold:
        return Lane.LARGE
    return Lane.SMALL


async def store(
    conn: Connection, settings: Settings, submission: Submission, job_id: uuid.UUID
) -> JobRow:
    """Insert the job and consume its idempotency key, in the caller's transaction. Raises
    Replay when the key was already used with the same request, Conflict otherwise."""
    job = await queries.insert_job(
        conn,
        job_id=job_id,
        project_id=submission.project_id,
        kind=submission.kind,
        lane=lane_for(submission.kind, submission.total, settings),
        params=submission.params,
        payload=submission.payload,
        total=submission.total,
        max_attempts=settings.job_max_attempts,
        counts=submission.counts,
    )
    if submission.idempotency_key is not None:
        await _consume_key(conn, submission, job_id)
    return job


async def earlier_job(pool: Pool, project_id: int, replay: Replay) -> JobRow:
    """The job an idempotent replay answers with."""
    async with pool.acquire() as conn:
        earlier = await queries.get_job(conn, project_id, replay.job_id)
    if earlier is None:  # the key outlived its job
        raise Conflict(IDEMPOTENCY_REUSED)
    return earlier


async def submit(
    pool: Pool, redis_client: ArqRedis, settings: Settings, submission: Submission
) -> tuple[JobRow, bool]:
    """Store and enqueue a job; returns (job, replayed) where replayed means an earlier job
    answered the same Idempotency-Key and body. Raises Conflict for a key reused otherwise."""
    try:
        async with pool.acquire() as conn, conn.transaction():
            job = await store(conn, settings, submission, uuid.uuid4())
    except Replay as replay:
        return await earlier_job(pool, submission.project_id, replay), True
    await wake(pool, redis_client, settings, job)
    return job, False


async def _consume_key(conn: Connection, submission: Submission, job_id: uuid.UUID) -> None:
    assert submission.idempotency_key is not None
    earlier = await queries.claim_idempotency_key(
        conn, submission.project_id, submission.idempotency_key, submission.fingerprint, job_id
    )
    if earlier is None:
        return
    earlier_job, earlier_fingerprint = earlier
    if earlier_fingerprint != submission.fingerprint:
        raise Conflict(IDEMPOTENCY_REUSED)
    raise Replay(earlier_job)


async def wake(pool: Pool, redis_client: ArqRedis, settings: Settings, job: JobRow) -> None:
    """Send the wake-up; if Redis is down the reaper's next run sends it."""
    try:
        await wake_worker(redis_client, settings, job.id, job.lane, job.attempts + 1)
    except (OSError, redis.exceptions.RedisError) as exc:
        log.warning("enqueue_deferred_to_reaper", job_id=str(job.id), error=repr(exc))
        async with pool.acquire() as conn:
            await queries.mark_not_enqueued(conn, job.id)
