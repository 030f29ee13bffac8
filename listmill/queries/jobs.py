"""SQL for jobs: submission, idempotency, the claim and lease, batch commits, the reaper.

Every write a worker makes to a running job is fenced by its ``lease_token``: a worker whose
lease was taken over (it was presumed dead) can no longer commit anything.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from listmill.db import Connection
from listmill.records import JobRow

JOB_EVENTS = "listmill_job_events"
# The progress of a job, as its listeners hear it (a NOTIFY payload stays far below 8 kB).
NOTIFY = f"""pg_notify('{JOB_EVENTS}', json_build_object(
    'id', id, 'status', status, 'processed', processed, 'total', total, 'counts', counts,
    'errors_count', errors_count, 'rows_per_second', rows_per_second)::text)"""

COLUMNS = """
    id, project_id, kind, lane, status, params, total, processed, counts, checkpoint, attempts,
    max_attempts, cancel_requested, lease_token, errors_count, errors_truncated, error,
    rows_per_second, created_at, started_at, updated_at, finished_at, heartbeat_at, worker_id
"""


async def insert_job(
    conn: Connection,
    *,
    job_id: UUID,
    project_id: int,
    kind: str,
    lane: str,
    params: dict[str, Any],
    payload: Any,
    total: int | None,
    max_attempts: int,
    counts: dict[str, int],
) -> JobRow:
    row = await conn.fetchrow(
        f"""
        INSERT INTO jobs
            (id, project_id, kind, lane, params, payload, total, max_attempts, counts, enqueued_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now())
        RETURNING {COLUMNS}
        """,
        job_id,
        project_id,
        kind,
        lane,
        params,
        payload,
        total,
        max_attempts,
        counts,
    )
    return JobRow.of(row)


async def claim_idempotency_key(
    conn: Connection, project_id: int, key: str, fingerprint: str, job_id: UUID
) -> tuple[UUID, str] | None:
    """Record ``key`` for ``job_id``; if it was already used, the earlier (job_id, fingerprint).

    Keys older than ``ttl`` are pruned by retention, so an old key is simply taken over.
    """
    row = await conn.fetchrow(
        """
        INSERT INTO idempotency_keys (project_id, key, fingerprint, job_id)
        VALUES ($1, $2, $3, $4)
        ON CONFLICT (project_id, key) DO NOTHING
        RETURNING job_id
        """,
        project_id,
        key,
        fingerprint,
        job_id,
    )
    if row is not None:
        return None
    earlier = await conn.fetchrow(
        "SELECT job_id, fingerprint FROM idempotency_keys WHERE project_id = $1 AND key = $2",
        project_id,
        key,
    )
    assert earlier is not None
    return earlier["job_id"], earlier["fingerprint"]


async def mark_not_enqueued(conn: Connection, job_id: UUID) -> None:
    """The wake-up could not be sent: the reaper's next run sends it."""
    await conn.execute("UPDATE jobs SET enqueued_at = NULL WHERE id = $1", job_id)


async def get_job(conn: Connection, project_id: int, job_id: UUID) -> JobRow | None:
    row = await conn.fetchrow(
        f"SELECT {COLUMNS} FROM jobs WHERE project_id = $1 AND id = $2", project_id, job_id
    )
    return JobRow.of(row) if row else None


async def list_jobs(
    conn: Connection,
    project_id: int,
    *,
    status: str | None,
    kind: str | None,
    before: tuple[datetime, UUID] | None,
    limit: int,
) -> list[JobRow]:
    """Newest first; ``before`` is the (created_at, id) of the last row of the previous page."""
    rows = await conn.fetch(
        f"""
        SELECT {COLUMNS} FROM jobs
        WHERE project_id = $1
          AND ($2::text IS NULL OR status = $2)
          AND ($3::text IS NULL OR kind = $3)
          AND ($4::timestamptz IS NULL OR (created_at, id) < ($4, $5::uuid))
        ORDER BY created_at DESC, id DESC
        LIMIT $6
        """,
        project_id,
        status,
        kind,
        before[0] if before else None,
        before[1] if before else None,
        limit + 1,
    )
    return [JobRow.of(r) for r in rows]


async def count_jobs(
    conn: Connection, project_id: int, *, status: str | None, kind: str | None
) -> int:
    total = await conn.fetchval(
        """
        SELECT count(*) FROM jobs
        WHERE project_id = $1
          AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR kind = $3)
        """,
        project_id,
        status,
        kind,
    )
    return int(total)


async def request_cancel(conn: Connection, project_id: int, job_id: UUID) -> JobRow | None:
    """A queued job is cancelled at once; a running one is flagged and stops after its batch."""
    row = await conn.fetchrow(
        f"""
        WITH updated AS (
            UPDATE jobs SET
                cancel_requested = status IN ('queued', 'running'),
                status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE status END,
                finished_at = CASE WHEN status = 'queued' THEN now() ELSE finished_at END,
                updated_at = now()
            WHERE project_id = $1 AND id = $2
            RETURNING *
        )
        SELECT {COLUMNS}, {NOTIFY} AS notified FROM updated
        """,
        project_id,
        job_id,
    )
    return JobRow.of(row) if row else None


async def claim_job(
    conn: Connection, job_id: UUID, lease_token: UUID, worker_id: str, lease_seconds: int
) -> tuple[JobRow, Any] | None:
    """Take the job if it is queued and due; the job and its payload, or None if not claimable."""
    row = await conn.fetchrow(
        f"""
        UPDATE jobs SET
            status = 'running', attempts = attempts + 1, lease_token = $2, worker_id = $3,
            lease_expires_at = now() + make_interval(secs => $4), heartbeat_at = now(),
            started_at = COALESCE(started_at, now()), run_after = NULL, updated_at = now()
        WHERE id = $1 AND status = 'queued' AND NOT cancel_requested
          AND (run_after IS NULL OR run_after <= now())
        RETURNING {COLUMNS}, payload
        """,
        job_id,
        lease_token,
        worker_id,
        float(lease_seconds),
    )
    if row is None:
        return None
    return JobRow.of(row), row["payload"]


async def heartbeat(conn: Connection, job_id: UUID, lease_token: UUID, lease_seconds: int) -> bool:
    """Extend the lease; False if this worker no longer holds the job."""
    status = await conn.execute(
        """
        UPDATE jobs SET heartbeat_at = now(), lease_expires_at = now() + make_interval(secs => $3)
        WHERE id = $1 AND lease_token = $2 AND status = 'running'
        """,
        job_id,
        lease_token,
        float(lease_seconds),
    )
    return bool(status == "UPDATE 1")


async def others_busy(conn: Connection, job_id: UUID, project_id: int, lane: str) -> bool:
    """Whether another job of the project, or a job of another lane, is running, or queued
    and due."""
    busy = await conn.fetchval(
        """
        SELECT EXISTS (
            SELECT 1 FROM jobs
            WHERE status IN ('queued', 'running') AND id <> $1
              AND (project_id = $2 OR lane <> $3)
              AND (status = 'running' OR run_after IS NULL OR run_after <= now())
        )
        """,
        job_id,
        project_id,
        lane,
    )
    return bool(busy)


async def commit_progress(
    conn: Connection,
    job_id: UUID,
    lease_token: UUID,
    *,
    checkpoint: int,
    processed: int,
    total: int | None,
    counts: dict[str, int],
    errors_added: int,
    errors_truncated: bool,
    rows_per_second: float | None,
) -> bool | None:
    """Record a committed batch; None if the lease was lost, else whether cancel was asked.
    Listeners of JOB_EVENTS hear of it when the batch's transaction commits."""
    return await conn.fetchval(  # type: ignore[no-any-return]
        f"""
        WITH updated AS (
            UPDATE jobs SET
                checkpoint = $3, processed = $4, counts = $5, errors_count = errors_count + $6,
                errors_truncated = errors_truncated OR $7, rows_per_second = $8,
                total = COALESCE($9, total),
                heartbeat_at = now(), updated_at = now()
            WHERE id = $1 AND lease_token = $2 AND status = 'running'
            RETURNING *
        )
        SELECT cancel_requested, {NOTIFY} FROM updated
        """,
        job_id,
        lease_token,
        checkpoint,
        processed,
        counts,
        errors_added,
        errors_truncated,
        rows_per_second,
        total,
    )


async def finish_job(
    conn: Connection, job_id: UUID, lease_token: UUID, status: str, error: str | None = None
) -> bool:
    """End a job this worker holds: succeeded, cancelled or failed."""
    result = await conn.execute(
        f"""
        WITH updated AS (
            UPDATE jobs SET status = $3, error = $4, finished_at = now(), updated_at = now(),
                            lease_token = NULL, lease_expires_at = NULL
            WHERE id = $1 AND lease_token = $2 AND status = 'running'
            RETURNING *
        )
        SELECT {NOTIFY} FROM updated
        """,
        job_id,
        lease_token,
        status,
        error,
    )
    return bool(result == "SELECT 1")


async def release_for_retry(
    conn: Connection,
    job_id: UUID,
    lease_token: UUID,
    delay_seconds: float,
    error: str,
    *,
    refund_attempt: bool = False,
) -> str | None:
    """Give a job back, to be retried after ``delay_seconds`` (``refund_attempt``: a graceful
    shutdown, which does not count against the job's attempts). A job whose cancel was asked
    ends cancelled instead. The job's new status, or None if this worker no longer held it."""
    return await conn.fetchval(  # type: ignore[no-any-return]
        """
        UPDATE jobs SET
            status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'queued' END,
            finished_at = CASE WHEN cancel_requested THEN now() END,
            run_after = now() + make_interval(secs => $3), enqueued_at = now(), error = $4,
            attempts = attempts - CASE WHEN $5 THEN 1 ELSE 0 END,
            lease_token = NULL, lease_expires_at = NULL, updated_at = now()
        WHERE id = $1 AND lease_token = $2 AND status = 'running'
        RETURNING status
        """,
        job_id,
        lease_token,
        delay_seconds,
        error,
        refund_attempt,
    )


async def insert_errors(conn: Connection, job_id: UUID, first_seq: int, rows: list[Any]) -> None:
    """Append error rows (row_number, email, code, message) numbered from ``first_seq``."""
    await conn.executemany(
        """
        INSERT INTO job_errors (job_id, seq, row_number, email, code, message)
        VALUES ($1, $2, $3, $4, $5, $6)
        """,
        [(job_id, first_seq + i, *row) for i, row in enumerate(rows)],
    )


async def list_errors(
    conn: Connection, job_id: UUID, *, after_seq: int, limit: int | None
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """
        SELECT seq, row_number, email, code, message FROM job_errors
        WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3
        """,
        job_id,
        after_seq,
        limit,
    )
    return [dict(r) for r in rows]


async def reap_expired_leases(conn: Connection) -> list[tuple[UUID, str, str, int]]:
    """Running jobs whose worker stopped heart-beating: requeue, fail past their attempts, or
    end cancelled when their cancel was asked.

    Safe with several reapers: each row changes status once, so only one reaper gets it.
    Returns (id, new status, lane, attempts).
    """
    rows = await conn.fetch(
        """
        UPDATE jobs SET
            status = CASE WHEN cancel_requested THEN 'cancelled'
                          WHEN attempts >= max_attempts THEN 'failed' ELSE 'queued' END,
            error = CASE WHEN cancel_requested THEN error
                         WHEN attempts >= max_attempts
                         THEN format('the job was interrupted %s times (worker lost); giving up',
                                     attempts)
                         ELSE error END,
            finished_at = CASE WHEN cancel_requested OR attempts >= max_attempts THEN now() END,
            enqueued_at = now(), lease_token = NULL, lease_expires_at = NULL, updated_at = now()
        WHERE status = 'running' AND lease_expires_at < now()
        RETURNING id, status, lane, attempts
        """
    )
    return [(r["id"], r["status"], r["lane"], r["attempts"]) for r in rows]


async def reap_stale_queued(conn: Connection, stale_seconds: int) -> list[tuple[UUID, str, int]]:
    """Queued, due jobs that no worker picked up for ``stale_seconds``: their wake-up was lost.

    Marks them re-enqueued now, so concurrent reapers do not both take them.
    Returns (id, lane, attempts).
    """
    rows = await conn.fetch(
        """
        UPDATE jobs SET enqueued_at = now()
        WHERE status = 'queued' AND NOT cancel_requested
          AND (run_after IS NULL OR run_after <= now())
          AND (enqueued_at IS NULL OR enqueued_at < now() - make_interval(secs => $1))
        RETURNING id, lane, attempts
        """,
        float(stale_seconds),
    )
    return [(r["id"], r["lane"], r["attempts"]) for r in rows]
