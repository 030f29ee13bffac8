"""Real chaos: worker processes SIGKILLed mid-job and Redis flushed under a running service.
Each run compares the disturbed job with an undisturbed run of the same request."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
from arq.connections import ArqRedis

from listmill.settings import Settings
from tests.conftest import Api, RunJobs, wait_for_job

pytestmark = pytest.mark.chaos

WorkerProcess = Callable[[], subprocess.Popen[bytes]]


def worker_env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "QUEUE_PREFIX": settings.queue_prefix,
        "BATCH_SIZE": "50",
        "IMPORT_BATCH_SIZE": "500",
        "JOB_LEASE_SECONDS": "2",
        "JOB_HEARTBEAT_SECONDS": "0.5",
        "JOB_STALE_QUEUED_SECONDS": "1",
        "REAPER_INTERVAL_SECONDS": "1",
        "WORKER_POLL_DELAY": "0.05",
        "LOG_LEVEL": "WARNING",
        "WORKER_METRICS_PORT": "0",
    }


@pytest.fixture
async def worker_process(settings: Settings) -> AsyncIterator[WorkerProcess]:
    """Start real `listmill worker` processes; any still running are killed afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [sys.executable, "-m", "listmill.cli", "worker"], env=worker_env(settings)
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def mixed_contacts(n: int) -> list[dict[str, Any]]:
    """New, duplicate (any case), invalid and pre-existing rows, as a real sync sends them."""
    rows: list[dict[str, Any]] = []
    for i in range(n):
        if i % 97 == 0:
            rows.append({"email": f"broken-{i}"})
        elif i % 50 == 0:
            rows.append({"email": f"USER{i - 1}@Example.com", "last_name": f"L{i}"})
        else:
            rows.append({"email": f"user{i}@example.com", "first_name": f"U{i}", "data": {"n": i}})
    return rows


async def snapshot(db: asyncpg.Connection, project_id: int) -> list[tuple[Any, ...]]:
    rows = await db.fetch(
        """
        SELECT email_normalized, first_name, last_name, data::text, status FROM contacts
        WHERE project_id = $1 ORDER BY email_normalized
        """,
        project_id,
    )
    return [tuple(r) for r in rows]


async def seed(api: Api) -> None:
    for i in (1, 2, 3):
        await api.post("/contacts", {"email": f"user{i}@example.com", "first_name": "Old"})


async def test_sigkill_mid_job_then_a_new_worker_finishes_it_exactly(
    api: Api,
    other_api: Api,
    run_jobs: RunJobs,
    worker_process: WorkerProcess,
    db: asyncpg.Connection,
) -> None:
    rows = mixed_contacts(10_000)
    # the undisturbed run, in another project with the same starting data
    await seed(other_api)
    _, body = await other_api.post("/contacts/bulk-upsert", {"contacts": rows})
    await run_jobs()
    expected = await wait_for_job(other_api, body["data"]["id"])

    await seed(api)
    _, body = await api.post("/contacts/bulk-upsert", {"contacts": rows})
    job_id = body["data"]["id"]
    first = worker_process()
    while (await api.get(f"/jobs/{job_id}"))[1]["data"]["progress"]["processed"] < 1000:
        await asyncio.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.wait()
    _, mid = await api.get(f"/jobs/{job_id}")
    assert mid["data"]["status"] == "running"
    assert mid["data"]["progress"]["processed"] < mid["data"]["progress"]["total"]

    worker_process()  # its reaper sees the lease expire, and it resumes after the checkpoint
    job = await wait_for_job(api, job_id, timeout=60)
    assert job["status"] == "succeeded" and job["attempts"] == 2
    assert job["counts"] == expected["counts"]
    assert job["errors_count"] == expected["errors_count"]
    assert await snapshot(db, api.project_id) == await snapshot(db, other_api.project_id)


async def test_redis_flushed_under_a_running_service_loses_no_job(
    api: Api, settings: Settings, worker_process: WorkerProcess, db: asyncpg.Connection
) -> None:
    rows = mixed_contacts(2_000)
    _, body = await api.post("/contacts/bulk-upsert", {"contacts": rows})
    redis: ArqRedis = ArqRedis.from_url(settings.redis_url)
    try:
        await redis.flushdb()  # the wake-up is gone before any worker saw it
    finally:
        await redis.aclose()
    worker_process()
    job = await wait_for_job(api, body["data"]["id"], timeout=60)
    assert job["status"] == "succeeded"
    assert job["progress"]["processed"] == job["progress"]["total"]
    assert await db.fetchval("SELECT count(*) FROM contacts") == job["counts"]["created"]


async def test_sigterm_gives_the_job_back_at_once(
    api: Api, worker_process: WorkerProcess, db: asyncpg.Connection
) -> None:
    _, body = await api.post("/contacts/bulk-upsert", {"contacts": mixed_contacts(10_000)})
    job_id = body["data"]["id"]
    first = worker_process()
    while (await api.get(f"/jobs/{job_id}"))[1]["data"]["progress"]["processed"] < 500:
        await asyncio.sleep(0.01)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=20) == 0
    _, mid = await api.get(f"/jobs/{job_id}")
    assert mid["data"]["status"] == "queued"  # released, not waiting for its lease to expire
    assert mid["data"]["attempts"] == 0  # a graceful shutdown does not use up an attempt
    worker_process()
    job = await wait_for_job(api, job_id, timeout=60)
    assert job["status"] == "succeeded" and job["attempts"] == 1
    assert await db.fetchval("SELECT count(*) FROM contacts") == job["counts"]["created"]


async def test_member_addition_killed_mid_job_enrolls_each_contact_exactly_once(
    api: Api, worker_process: WorkerProcess, db: asyncpg.Connection
) -> None:
    _, made = await api.post("/lists", {"name": "Chaos"})
    list_id = made["data"]["id"]
    for name in ("One", "Two", "Three"):
        trigger = {"type": "list_added", "list_id": list_id}
        await api.post("/sequences", {"name": name, "trigger_config": trigger})
    contacts = [{"email": f"k{i}@example.com"} for i in range(1000)]
    _, body = await api.post(f"/lists/{list_id}/members", {"contacts": contacts})
    job_id = body["data"]["id"]
    first = worker_process()
    while (await api.get(f"/jobs/{job_id}"))[1]["data"]["progress"]["processed"] < 100:
        await asyncio.sleep(0.005)
    first.send_signal(signal.SIGKILL)
    first.wait()
    worker_process()
    job = await wait_for_job(api, job_id, timeout=60)
    assert job["status"] == "succeeded" and job["attempts"] == 2
    assert job["counts"] == {"added": 1000, "contacts_created": 1000, "enrolled": 3000}
    assert await db.fetchval("SELECT count(*) FROM sequence_enrollments") == 3000
    _, mailing_list = await api.get(f"/lists/{list_id}")
    assert mailing_list["data"]["member_count"] == 1000


def csv_file(rows: int) -> bytes:
    lines = [b"Email,First Name,Plan"]
    for i in range(rows):
        if i % 101 == 0:
            lines.append(b"broken-%d,X,free" % i)
        elif i % 40 == 0:
            lines.append(b"USER%d@Example.com,Dup,pro" % (i - 1))
        elif i % 100 == 7 and i > 1500:  # repeats an email 1,500 rows back: across batches
            lines.append(b"user%d@example.com,Far,pro" % (i - 1500))
        else:
            lines.append(b"user%d@example.com,U%d,free" % (i, i))
    return b"\n".join(lines) + b"\n"


async def test_import_killed_mid_file_resumes_with_exact_counts(
    api: Api,
    other_api: Api,
    run_jobs: RunJobs,
    worker_process: WorkerProcess,
    db: asyncpg.Connection,
) -> None:
    from tests.integration.test_import import upload

    data = csv_file(20_000)
    await seed(other_api)
    _, body = await upload(other_api, data)
    await run_jobs()
    expected = await wait_for_job(other_api, body["data"]["id"], timeout=60)
    assert expected["status"] == "succeeded"

    await seed(api)
    _, body = await upload(api, data)
    job_id = body["data"]["id"]
    first = worker_process()
    while (await api.get(f"/jobs/{job_id}"))[1]["data"]["progress"]["processed"] < 2000:
        await asyncio.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.wait()
    worker_process()
    job = await wait_for_job(api, job_id, timeout=90)
    assert job["status"] == "succeeded" and job["attempts"] == 2
    assert job["counts"] == expected["counts"]
    assert job["errors_count"] == expected["errors_count"]
    assert await snapshot(db, api.project_id) == await snapshot(db, other_api.project_id)
