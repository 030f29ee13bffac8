"""However an import ends, its staged rows and its file go (the file stays for
IMPORT_FILE_RETENTION_SECONDS, 0 here): not only when its worker ends it after its last batch,
but when it is cancelled while queued for a retry, when the reaper ends it after its worker
died, when it runs out of attempts, and, should its worker die between ending it and clearing
it, by the retention cron."""

from __future__ import annotations

from uuid import UUID

import asyncpg

from tests.conftest import Api, wait_for_job
from tests.integration.test_import import upload
from tests.integration.test_jobs import FAIL_ONCE
from worker.context import WorkerContext
from worker.reaper import reap
from worker.retention import apply_retention
from worker.settings import in_process_workers

EXPIRED_LEASE = """
    UPDATE jobs SET status = 'running', attempts = $2, lease_token = gen_random_uuid(),
                    lease_expires_at = now() - interval '1 second'
    WHERE id = $1
"""


async def staged_import(api: Api, db: asyncpg.Connection) -> UUID:
    """An import whose file is stored, with a row staged as an earlier attempt leaves one (a
    row held for its repeated email; a mirror import stages all)."""
    status, body = await upload(api, b"email\na@example.com\na@example.com\n")
    assert status == 202, body
    job_id = UUID(body["data"]["id"])
    await db.execute(
        """
        INSERT INTO import_rows (job_id, position, row_number, email, email_normalized, data)
        VALUES ($1, 1, 2, 'a@example.com', 'a@example.com', '{}')
        """,
        job_id,
    )
    return job_id


async def leftovers(db: asyncpg.Connection, job_id: UUID) -> tuple[int, int]:
    """(staged rows, file chunks) of the job."""
    staged = await db.fetchval("SELECT count(*) FROM import_rows WHERE job_id = $1", job_id)
    chunks = await db.fetchval("SELECT count(*) FROM job_file_chunks WHERE job_id = $1", job_id)
    return int(staged), int(chunks)


async def test_cancelled_while_queued_for_a_retry(api: Api, db: asyncpg.Connection) -> None:
    job_id = await staged_import(api, db)
    await db.execute(
        "UPDATE jobs SET attempts = 1, run_after = now() + interval '1 hour' WHERE id = $1", job_id
    )
    status, body = await api.post(f"/jobs/{job_id}/cancel")
    assert status == 200 and body["data"]["status"] == "cancelled", body
    assert await leftovers(db, job_id) == (0, 0)


async def test_cancelled_and_its_worker_died(
    api: Api, db: asyncpg.Connection, worker_context: WorkerContext
) -> None:
    job_id = await staged_import(api, db)
    await db.execute(EXPIRED_LEASE, job_id, 1)
    status, body = await api.post(f"/jobs/{job_id}/cancel")
    assert status == 200 and body["data"]["cancel_requested"], body
    assert await leftovers(db, job_id) == (1, 1)  # running: its worker would clear it
    await reap(worker_context)
    assert (await wait_for_job(api, str(job_id)))["status"] == "cancelled"
    assert await leftovers(db, job_id) == (0, 0)


async def test_out_of_attempts_when_its_worker_died(
    api: Api, db: asyncpg.Connection, worker_context: WorkerContext
) -> None:
    job_id = await staged_import(api, db)
    await db.execute(EXPIRED_LEASE, job_id, 5)
    await reap(worker_context)
    assert (await wait_for_job(api, str(job_id)))["status"] == "failed"
    assert await leftovers(db, job_id) == (0, 0)


async def test_out_of_attempts_on_transient_errors(
    api: Api, db: asyncpg.Connection, worker_context: WorkerContext
) -> None:
    await db.execute(FAIL_ONCE.format(times=1000, code="40P01"))  # a deadlock, every write
    job_id = await staged_import(api, db)
    await db.execute("UPDATE jobs SET max_attempts = 2 WHERE id = $1", job_id)
    for worker in in_process_workers(worker_context["settings"], worker_context, burst=True):
        await worker.async_run()
        await worker.close()
    job = await wait_for_job(api, str(job_id))
    assert job["status"] == "failed" and job["error"].startswith("gave up after 2 attempts")
    assert await leftovers(db, job_id) == (0, 0)


async def test_cleared_by_retention_if_its_worker_died_between(
    api: Api, db: asyncpg.Connection, worker_context: WorkerContext
) -> None:
    job_id = await staged_import(api, db)
    await db.execute(
        "UPDATE jobs SET status = 'failed', finished_at = now() - interval '1 s' WHERE id = $1",
        job_id,
    )
    removed = await apply_retention(worker_context)
    assert removed["staged_rows"] == 1 and removed["file_chunks"] == 1
    assert await leftovers(db, job_id) == (0, 0)
