"""The engine's two batches at a time (Plan.overlap): a batch's ahead part runs beside the
batch before it, yet batches commit in order, each with its checkpoint, and a batch after
one that fails or is cancelled is rolled back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

from listmill.db import Connection
from listmill.queries import jobs as job_queries
from listmill.records import JobRow
from listmill.settings import Settings
from tests.conftest import Api
from worker.context import WorkerContext
from worker.jobs.base import BatchOutcome, Overlap, Plan
from worker.runner import JobCancelled, _run_plan

BATCH = 2
ROWS = 8  # four batches


@dataclass
class Recorder:
    """A plan that marks each step of each batch in the batch's own transaction, and keeps
    the order the steps ran in. Each batch's ahead part waits until the next batch has
    taken its items: without the overlap it would wait in vain."""

    fail_at: int | None = None  # the batch whose apply_range raises
    overlapping: bool = True  # whether each ahead part waits for the next batch's take
    slow_takes: frozenset[int] = frozenset()  # batches slow to take their items
    steps: list[tuple[str, int]] = field(default_factory=list)
    taken: dict[int, asyncio.Event] = field(default_factory=dict)

    def event(self, after: int) -> asyncio.Event:
        return self.taken.setdefault(after, asyncio.Event())

    async def mark(self, conn: Connection, step: str, after: int) -> None:
        self.steps.append((step, after))
        await conn.execute("INSERT INTO overlap_marks VALUES ($1, $2)", step, after)

    async def take(self, conn: Connection, job: JobRow, after: int, upto: int) -> None:
        if after in self.slow_takes:
            await asyncio.sleep(0.3)
        await self.mark(conn, "take", after)
        self.event(after).set()

    async def write_ahead(self, conn: Connection, job: JobRow, after: int, upto: int) -> None:
        await self.mark(conn, "ahead", after)
        if self.overlapping and upto < ROWS:
            await asyncio.wait_for(self.event(upto).wait(), timeout=10)

    async def apply_range(
        self, conn: Connection, job: JobRow, after: int, upto: int
    ) -> BatchOutcome:
        await self.mark(conn, "apply", after)
        if after == self.fail_at:
            raise RuntimeError("this batch fails")
        outcome = BatchOutcome()
        outcome.counts["seen"] += upto - after
        return outcome

    def plan(self) -> Plan:
        return Plan(
            apply_range=self.apply_range,
            overlap=Overlap(take=self.take, write_ahead=self.write_ahead),
            batch_size=lambda settings: BATCH,
        )


@pytest.fixture
async def claimed(
    api: Api, db: asyncpg.Connection, worker_context: WorkerContext
) -> AsyncIterator[tuple[JobRow, UUID]]:
    """A job of ROWS items, claimed as a worker claims it."""
    rows = [{"email": f"user{i}@example.com"} for i in range(ROWS)]
    _, body = await api.post("/contacts/bulk-upsert", {"contacts": rows})
    await db.execute("CREATE TABLE overlap_marks (step text, after int)")
    lease = uuid4()
    async with worker_context["pool"].acquire() as conn:
        found = await job_queries.claim_job(conn, UUID(body["data"]["id"]), lease, "test", 60)
    assert found is not None
    yield found[0], lease
    await db.execute("DROP TABLE overlap_marks")


async def run(recorder: Recorder, job: JobRow, lease: UUID, context: WorkerContext) -> None:
    settings: Settings = context["settings"]
    heart = asyncio.create_task(asyncio.sleep(3600))  # a lease that holds
    try:
        await _run_plan(recorder.plan(), job, lease, heart, context["pool"], settings)
    finally:
        heart.cancel()


async def committed(db: asyncpg.Connection) -> list[tuple[str, int]]:
    return [(r["step"], r["after"]) for r in await db.fetch("SELECT * FROM overlap_marks")]


async def progress(db: asyncpg.Connection, job: JobRow) -> tuple[int, Any]:
    row = await db.fetchrow("SELECT checkpoint, counts FROM jobs WHERE id = $1", job.id)
    assert row is not None
    return row["checkpoint"], json.loads(row["counts"])


async def test_the_next_batch_is_written_beside_and_committed_after(
    claimed: tuple[JobRow, UUID], worker_context: WorkerContext, db: asyncpg.Connection
) -> None:
    job, lease = claimed
    recorder = Recorder()
    await run(recorder, job, lease, worker_context)
    applied = [after for step, after in recorder.steps if step == "apply"]
    assert applied == [0, 2, 4, 6]
    for after in (0, 2, 4):  # the next batch took its items before this one applied its own
        assert recorder.steps.index(("take", after + BATCH)) < recorder.steps.index(
            ("apply", after)
        )
    assert sorted(await committed(db)) == sorted(recorder.steps)
    assert await progress(db, job) == (ROWS, {"seen": ROWS})


async def test_a_batch_after_one_that_fails_is_rolled_back(
    claimed: tuple[JobRow, UUID], worker_context: WorkerContext, db: asyncpg.Connection
) -> None:
    job, lease = claimed
    recorder = Recorder(fail_at=4)
    with pytest.raises(RuntimeError, match="this batch fails"):
        await run(recorder, job, lease, worker_context)
    assert ("ahead", 6) in recorder.steps  # the batch after it had written its ahead part
    kept = await committed(db)
    assert sorted({after for _, after in kept}) == [0, 2]
    assert await progress(db, job) == (4, {"seen": 4})


async def test_a_cancel_keeps_the_batch_that_saw_it_and_rolls_the_next_back(
    claimed: tuple[JobRow, UUID], worker_context: WorkerContext, db: asyncpg.Connection
) -> None:
    job, lease = claimed
    # the client's cancel arrives while the second batch commits (a trigger plays the client)
    await db.execute(
        """
        CREATE FUNCTION cancel_at_second_batch() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN NEW.cancel_requested := NEW.checkpoint >= 4; RETURN NEW; END $$;
        CREATE TRIGGER cancel_at_second_batch BEFORE UPDATE ON jobs
            FOR EACH ROW EXECUTE FUNCTION cancel_at_second_batch();
        """
    )
    recorder = Recorder(overlapping=False)  # no batch after the cancel
    with pytest.raises(JobCancelled):
        await run(recorder, job, lease, worker_context)
    assert ("ahead", 4) in recorder.steps
    assert sorted({after for _, after in await committed(db)}) == [0, 2]
    assert await progress(db, job) == (4, {"seen": 4})


async def test_one_batch_at_a_time_while_another_lane_has_a_job(
    api: Api, claimed: tuple[JobRow, UUID], worker_context: WorkerContext, db: asyncpg.Connection
) -> None:
    job, lease = claimed
    rows = [{"email": f"other{i}@example.com"} for i in range(3_000)]
    _, body = await api.post("/contacts/bulk-upsert", {"contacts": rows})
    assert body["data"]["lane"] != job.lane  # queued: nobody runs it here
    recorder = Recorder(overlapping=False)
    await run(recorder, job, lease, worker_context)
    for after in (0, 2, 4):  # the next batch took its items after this one had committed
        assert recorder.steps.index(("take", after + BATCH)) > recorder.steps.index(
            ("apply", after)
        )
    assert await progress(db, job) == (ROWS, {"seen": ROWS})


async def test_batches_take_their_items_in_order_however_slow_one_is(
    claimed: tuple[JobRow, UUID], worker_context: WorkerContext, db: asyncpg.Connection
) -> None:
    """Found by a review: the second batch written was not waited for; once the first
    committed, a third could take its items before it (the import's parser refuses that)."""
    job, lease = claimed
    recorder = Recorder(overlapping=False, slow_takes=frozenset({2}))
    await run(recorder, job, lease, worker_context)
    assert [after for step, after in recorder.steps if step == "take"] == [0, 2, 4, 6]
    assert await progress(db, job) == (ROWS, {"seen": ROWS})
