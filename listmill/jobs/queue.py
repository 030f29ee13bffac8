"""Waking a worker: the arq message carries only the job id; Postgres holds the rest."""

from __future__ import annotations

from uuid import UUID

import structlog
from arq.connections import ArqRedis
from redis import exceptions as redis_errors

from listmill.settings import Lane, Settings

RUN_JOB = "run_job"

log = structlog.get_logger(__name__)


async def wake_worker(
    redis: ArqRedis,
    settings: Settings,
    job_id: UUID,
    lane: str,
    next_attempt: int,
    delay: float = 0,
) -> None:
    """Enqueue the wake-up for ``next_attempt`` of a job.

    The arq id names the attempt, so a re-enqueue after a crash is never refused as a
    duplicate, while two wake-ups for the same attempt collapse into one. The job is also
    announced on its lane's channel: the lane's workers look at their queue at once rather
    than at their next poll, and start it, or, if it is deferred, time their next look for
    when it falls due (worker.lane_worker). The announcement is a shortcut: if it is lost,
    the job is queued all the same and found at the workers' next poll (WORKER_POLL_DELAY),
    so a failure to publish is logged, not raised.
    """
    await redis.enqueue_job(
        RUN_JOB,
        str(job_id),
        _job_id=f"{job_id}:{next_attempt}",
        _queue_name=settings.lane_queue(Lane(lane)),
        _defer_by=delay or None,
    )
    try:
        await redis.publish(settings.lane_wake_channel(Lane(lane)), str(job_id))
    except (OSError, redis_errors.RedisError) as exc:
        log.warning("wake_announcement_lost", job_id=str(job_id), lane=lane, error=repr(exc))
