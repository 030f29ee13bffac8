"""SQL for operators: queue figures per lane, throughput, running jobs, failures, retention."""

from __future__ import annotations

from typing import Any

from listmill.db import Connection


async def lane_figures(conn: Connection) -> dict[str, dict[str, Any]]:
    """Per lane: depth (queued and due), scheduled (waiting on a retry backoff), in progress,
    oldest queued age, and jobs finished/failed and rows written over 5 and 60 minutes."""
    rows = await conn.fetch(
        """
        WITH live AS (
            SELECT lane,
                   count(*) FILTER (WHERE status = 'queued'
                                    AND (run_after IS NULL OR run_after <= now())) AS depth,
                   count(*) FILTER (WHERE status = 'queued' AND run_after > now()) AS scheduled,
                   count(*) FILTER (WHERE status = 'running') AS in_progress,
                   extract(epoch FROM now() - min(created_at) FILTER (
                       WHERE status = 'queued' AND (run_after IS NULL OR run_after <= now())
                   ))::float8 AS oldest_queued_age_seconds
            FROM jobs WHERE status IN ('queued', 'running') GROUP BY lane
        ), done AS (
            SELECT lane,
                   count(*) FILTER (WHERE status <> 'failed'
                                    AND finished_at > now() - interval '5 minutes') AS finished_5m,
                   count(*) FILTER (WHERE status = 'failed'
                                    AND finished_at > now() - interval '5 minutes') AS failed_5m,
                   count(*) FILTER (WHERE status <> 'failed') AS finished_60m,
                   count(*) FILTER (WHERE status = 'failed') AS failed_60m,
                   coalesce(sum(processed) FILTER (
                       WHERE finished_at > now() - interval '5 minutes'), 0) AS rows_5m
            FROM jobs WHERE finished_at > now() - interval '60 minutes' GROUP BY lane
        )
        SELECT coalesce(live.lane, done.lane) AS lane, live.depth, live.scheduled,
               live.in_progress, live.oldest_queued_age_seconds, done.finished_5m,
               done.failed_5m, done.finished_60m, done.failed_60m, done.rows_5m
        FROM live FULL JOIN done ON done.lane = live.lane
        """
    )
    return {r["lane"]: dict(r) for r in rows}


async def throughput(conn: Connection) -> list[dict[str, Any]]:
    """Rows written and jobs ended per minute over the last hour, oldest first."""
    rows = await conn.fetch(
        """
        SELECT date_trunc('minute', finished_at) AS minute, coalesce(sum(processed), 0) AS rows,
               count(*) FILTER (WHERE status <> 'failed') AS finished,
               count(*) FILTER (WHERE status = 'failed') AS failed
        FROM jobs WHERE finished_at > now() - interval '60 minutes'
        GROUP BY 1 ORDER BY 1
        """
    )
    return [dict(r) for r in rows]


async def running_jobs(
    conn: Connection, project_id: int | None, limit: int = 50
) -> list[dict[str, Any]]:
    """Running jobs, oldest first: of one project, or of all when ``project_id`` is None."""
    rows = await conn.fetch(
        """
        SELECT id, kind, lane, project_id, total, processed, rows_per_second, started_at,
               worker_id
        FROM jobs WHERE status = 'running' AND ($2::bigint IS NULL OR project_id = $2)
        ORDER BY started_at LIMIT $1
        """,
        limit,
        project_id,
    )
    return [dict(r) for r in rows]


async def recent_failures(
    conn: Connection, project_id: int | None, limit: int = 20
) -> list[dict[str, Any]]:
    """Failed jobs, newest first: of one project, or of all when ``project_id`` is None."""
    rows = await conn.fetch(
        """
        SELECT id, kind, lane, project_id, error, finished_at FROM jobs
        WHERE status = 'failed' AND finished_at IS NOT NULL
          AND ($2::bigint IS NULL OR project_id = $2)
        ORDER BY finished_at DESC LIMIT $1
        """,
        limit,
        project_id,
    )
    return [dict(r) for r in rows]


async def apply_retention(
    conn: Connection, *, idempotency_hours: int, error_days: int, job_days: int, file_seconds: int
) -> dict[str, int]:
    """Delete what has outlived its configured age; counts of what went, by kind."""
    statements = {
        "idempotency_keys": (
            "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(hours => $1)",
            idempotency_hours,
        ),
        "error_rows": (
            """
            DELETE FROM job_errors e USING jobs j WHERE e.job_id = j.id
              AND j.finished_at < now() - make_interval(days => $1)
            """,
            error_days,
        ),
        "jobs": (
            "DELETE FROM jobs WHERE finished_at < now() - make_interval(days => $1)",
            job_days,
        ),
        "file_chunks": (
            """
            DELETE FROM job_file_chunks f USING jobs j WHERE f.job_id = j.id
              AND j.finished_at < now() - make_interval(secs => $1::float8)
            """,
            file_seconds,
        ),
        # an ended import's staged rows go as it ends; these are of one whose worker died then
        "staged_rows": (
            """
            DELETE FROM import_rows r USING jobs j WHERE r.job_id = j.id
              AND j.finished_at < now() - make_interval(secs => $1::float8)
            """,
            0,
        ),
    }
    removed = {}
    for name, (sql, age) in statements.items():
        result = await conn.execute(sql, age)
        removed[name] = int(result.split()[-1])
    return removed
