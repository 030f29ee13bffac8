"""An import's two batches at a time, where they could go wrong: its parsing task failing
while both are written, and two imports of one project locking each other's contacts."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

from listmill.queries import imports as import_queries
from listmill.queries import jobs as job_queries
from listmill.records import JobRow
from listmill.settings import Settings
from tests.conftest import Api, make_settings
from tests.integration.test_import import upload
from worker.context import WorkerContext
from worker.jobs import csv_import
from worker.jobs.csv_import import import_plan
from worker.runner import TRANSIENT_ERRORS, BatchWaitTimeout, _run_plan


@pytest.fixture
def settings(database_url: str, redis_url: str) -> Settings:
    return make_settings(
        database_url, redis_url, upload_chunk_bytes=4096, import_batch_size=50,
        db_pool_max=20, batch_overlap_wait_seconds=3,
    )  # fmt: skip


async def claimed(api: Api, context: WorkerContext, data: bytes) -> tuple[JobRow, UUID]:
    status, body = await upload(api, data)
    assert status == 202, body
    lease = uuid4()
    async with context["pool"].acquire() as conn:
        found = await job_queries.claim_job(conn, UUID(body["data"]["id"]), lease, "test", 60)
    assert found is not None
    return found[0], lease


async def run(context: WorkerContext, settings: Settings, job: JobRow, lease: UUID) -> None:
    plan = import_plan(context["pool"], settings)
    heart = asyncio.create_task(asyncio.sleep(3600))  # a lease that holds
    try:
        await _run_plan(plan, job, lease, heart, context["pool"], settings)
    finally:
        heart.cancel()
        assert plan.close is not None
        await plan.close()


async def test_the_parsing_task_failing_fails_the_batches_being_written(
    api: Api, worker_context: WorkerContext, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = "".join(f"u{i}@example.com,N{i}\n" for i in range(2000))
    job, lease = await claimed(api, worker_context, f"email,first_name\n{rows}".encode())
    read_chunk, reads = import_queries.read_chunk, {5: 0}

    async def dropped(conn: Any, job_id: UUID, seq: int) -> bytes | None:
        reads[seq] = reads.get(seq, 0) + 1
        if seq == 5 and reads[seq] == 2:  # pass two's read: its connection drops
            raise asyncpg.ConnectionDoesNotExistError("connection was closed")
        return await read_chunk(conn, job_id, seq)

    monkeypatch.setattr(import_queries, "read_chunk", dropped)
    with pytest.raises(asyncpg.ConnectionDoesNotExistError):  # transient: the job is retried
        await asyncio.wait_for(run(worker_context, settings, job, lease), timeout=20)


# each file's first batch completes a repeated email's group (merging it locks that contact)
# while its second batch, written ahead, merges the other file's repeated email
CROSSED = [
    b"email,first_name\ny@example.com,A\ny@example.com,A\nx@example.com,A\na1@example.com,A\n",
    b"email,first_name\nx@example.com,B\nx@example.com,B\ny@example.com,B\nb1@example.com,B\n",
]


@pytest.mark.parametrize("looked_too_early", [False, True])
async def test_two_imports_of_one_project_never_wait_for_each_other_for_good(
    api: Api,
    worker_context: WorkerContext,
    settings: Settings,
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
    looked_too_early: bool,
) -> None:
    """Found by a review: batch two of each import held a contact the other's batch one
    needed, and waited in Python for its own batch one; Postgres saw no deadlock. Now an
    import writes one batch at a time beside another job of its project; and if it looked
    before the other began, the batch written ahead gives up its wait (and its locks) after
    batch_overlap_wait_seconds: the job is retried."""
    settings = settings.model_copy(update={"import_batch_size": 2})
    for email in ("x@example.com", "y@example.com"):
        await db.execute(
            "INSERT INTO contacts (project_id, email, email_normalized, first_name)"
            " VALUES ($1, $2, $2, 'Old')",
            api.project_id, email,
        )  # fmt: skip
    jobs = [await claimed(api, worker_context, data) for data in CROSSED]
    if looked_too_early:
        monkeypatch.setattr(job_queries, "others_busy", _never_busy)
    stage_rows = csv_import.queries.stage_rows

    async def later(conn: Any, records: Any) -> None:  # batch one's rest begins a little late
        await asyncio.sleep(1)
        await stage_rows(conn, records)

    monkeypatch.setattr(csv_import.queries, "stage_rows", later)
    runs = [asyncio.create_task(run(worker_context, settings, *job)) for job in jobs]
    done, pending = await asyncio.wait(runs, timeout=20)
    for task in pending:
        task.cancel()
    assert not pending, "the imports waited for each other"
    for task in done:  # each finished, or failed as a deadlock is (retried)
        assert task.exception() is None or isinstance(task.exception(), TRANSIENT_ERRORS)
    if looked_too_early:
        assert any(isinstance(t.exception(), BatchWaitTimeout) for t in done)


async def _never_busy(*args: Any) -> bool:
    return False
