"""The operators' queue report: figures from Postgres and Redis that agree with each other."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator

import asyncpg
import pytest
from arq.connections import ArqRedis

from listmill.presence import publish_worker
from listmill.settings import Settings
from tests.conftest import Api, RunJobs, new_key, wait_for_job
from worker.context import WorkerContext


@pytest.fixture
async def worker(settings: Settings) -> AsyncIterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "QUEUE_PREFIX": settings.queue_prefix,
        "LOG_LEVEL": "WARNING",
        "WORKER_METRICS_PORT": "0",
    }
    process = subprocess.Popen([sys.executable, "-m", "listmill.cli", "worker"], env=env)  # noqa: ASYNC220
    yield process
    process.terminate()
    process.wait(timeout=20)


async def report(api: Api) -> dict:
    status, body = await api.get("/ops/queues")
    assert status == 200, body
    return dict(body["data"])


async def test_queue_report_counts_what_postgres_holds(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    for _ in range(2):
        await api.post("/contacts/bulk-subscribe", {"contact_ids": [1]})
    await api.post(
        "/contacts/bulk-upsert", {"contacts": [{"email": f"l{i}@x.io"} for i in range(5_000)]}
    )
    data = await report(api)
    lanes = {lane["lane"]: lane for lane in data["lanes"]}
    assert lanes["small"]["depth"] == 2 and lanes["large"]["depth"] == 1
    assert lanes["small"]["redis_messages"] == 2 and lanes["large"]["redis_messages"] == 1
    assert lanes["small"]["oldest_queued_age_seconds"] >= 0
    await run_jobs()
    data = await report(api)
    lanes = {lane["lane"]: lane for lane in data["lanes"]}
    assert lanes["small"]["depth"] == 0 and lanes["small"]["finished_5m"] == 2
    assert (
        lanes["large"]["finished_60m"] == 1 and lanes["large"]["oldest_queued_age_seconds"] is None
    )
    assert sum(m["rows"] for m in data["throughput"]) == 5_002
    assert lanes["large"]["rows_per_second_5m"] == round(5_000 / 300, 1)


async def test_failures_and_running_jobs_are_listed(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    await db.execute(
        "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "RAISE EXCEPTION 'no' USING ERRCODE = '23514'; END $$;"
        "CREATE TRIGGER boom BEFORE INSERT ON contacts FOR EACH STATEMENT EXECUTE FUNCTION boom();"
    )
    _, body = await api.post("/contacts/bulk-upsert", {"contacts": [{"email": "a@x.io"}]})
    await run_jobs()
    await wait_for_job(api, body["data"]["id"])
    data = await report(api)
    assert [f["id"] for f in data["recent_failures"]] == [body["data"]["id"]]
    assert data["recent_failures"][0]["error"] == "CheckViolationError: no"
    assert {lane["lane"]: lane["failed_5m"] for lane in data["lanes"]} == {"small": 1, "large": 0}
    await db.execute(
        "UPDATE jobs SET status = 'running', total = 10, processed = 4, rows_per_second = 2"
    )
    running = (await report(api))["running_jobs"]
    assert running[0]["progress"] == {
        "total": 10, "processed": 4, "percent": 40.0, "rows_per_second": 2.0, "eta_seconds": 3.0
    }  # fmt: skip


async def test_a_tenant_sees_only_its_own_jobs_an_operator_project_sees_all(
    api: Api, other_api: Api, db: asyncpg.Connection, settings: Settings
) -> None:
    _, body = await api.post("/contacts/bulk-subscribe", {"contact_ids": [1]})
    await db.execute("UPDATE jobs SET status = 'failed', finished_at = now(), error = 'acme only'")
    tenant = await report(other_api)
    assert tenant["recent_failures"] == [] and tenant["running_jobs"] == []
    assert {lane["lane"]: lane["failed_5m"] for lane in tenant["lanes"]} == {"small": 1, "large": 0}
    _, operator_key = await new_key(db, "ops", ["ops:read"])
    _, everything = await other_api.get("/ops/queues", key=operator_key)
    assert [f["id"] for f in everything["data"]["recent_failures"]] == [body["data"]["id"]]
    # a worker running acme's job shows it to operators and to acme, never to globex
    await db.execute("UPDATE jobs SET status = 'running', finished_at = NULL, error = NULL")
    redis = ArqRedis.from_url(settings.redis_url)
    try:
        record = {"worker_id": "w1", "current_jobs": [body["data"]["id"]]}
        await publish_worker(redis, settings, record)
    finally:
        await redis.aclose()
    seen = {
        name: (await caller.get("/ops/queues", key=key))[1]["data"]["workers"][0]["current_jobs"]
        for name, caller, key in (
            ("acme", api, api.key), ("globex", other_api, other_api.key),
            ("ops", other_api, operator_key),
        )
    }  # fmt: skip
    assert seen == {"acme": [body["data"]["id"]], "globex": [], "ops": [body["data"]["id"]]}


async def test_live_workers_and_scheduled_runs_are_reported(
    api: Api, worker: subprocess.Popen[bytes]
) -> None:
    for _ in range(100):
        data = await report(api)
        if data["workers"] and data["scheduled_runs"]:
            break
        await asyncio.sleep(0.1)
    [seen] = data["workers"]
    assert seen["pid"] == worker.pid and seen["lanes"] == ["small", "large"]
    assert seen["current_jobs"] == []
    reaper = next(run for run in data["scheduled_runs"] if run["name"] == "reaper")
    assert reaper["last_outcome"].startswith("ok: lease_expired=0")
    assert reaper["next_run_at"] > reaper["last_run_at"]
    worker.terminate()
    worker.wait(timeout=20)
    assert (await report(api))["workers"] == []


async def test_ops_needs_the_ops_scope(api: Api, db: asyncpg.Connection) -> None:
    _, key = await new_key(db, "acme", ["jobs:read"])
    assert (await api.get("/ops/queues", key=key))[0] == 403
    _, key = await new_key(db, "acme", ["ops:read"])
    assert (await api.get("/ops/queues", key=key))[0] == 200


async def test_metrics_in_prometheus_text(api: Api, run_jobs: RunJobs) -> None:
    from prometheus_client.exposition import generate_latest

    from worker.metrics import REGISTRY

    await api.post("/contacts/bulk-subscribe", {"contact_ids": [1]})
    await api.get("/contacts/12345")
    response = await api.client.get("/metrics")
    assert response.status == 200 and response.content_type == "text/plain"
    text = await response.text()
    assert 'listmill_jobs_submitted_total{kind="bulk_subscribe"} 1.0' in text
    assert 'listmill_queue_depth{lane="small"} 1.0' in text
    assert (
        'listmill_http_requests_total{method="GET",route="/api/v1/contacts/{id}",status="404"} 1.0'
        in text
    )
    assert 'listmill_workers_alive{lane="small"} 0.0' in text
    await run_jobs()
    worker_text = generate_latest(REGISTRY).decode()
    assert 'listmill_jobs_finished_total{kind="bulk_subscribe",status="succeeded"}' in worker_text
    assert 'listmill_rows_written_total{kind="bulk_subscribe"}' in worker_text
    text = await (await api.client.get("/metrics")).text()
    assert 'listmill_queue_depth{lane="small"} 0.0' in text


async def test_queues_table_shows_the_same_figures(
    api: Api, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    from listmill.queues_table import show_queues

    for _ in range(3):
        await api.post("/contacts/bulk-subscribe", {"contact_ids": [1]})
    assert await show_queues(settings, None) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("LANE"))
    header, small, large = lines[start : start + 3]
    assert header.split()[:4] == ["LANE", "DEPTH", "SCHED", "RUNNING"]
    assert small.split()[:4] == ["small", "3", "0", "0"]
    assert large.split()[:2] == ["large", "0"]
    assert "workers: 0 alive" in text


async def test_retention_removes_only_what_outlived_its_age(
    api: Api, run_jobs: RunJobs, worker_context: WorkerContext, db: asyncpg.Connection
) -> None:
    from worker.retention import apply_retention

    for key in ("old", "new"):
        await api.post(
            "/contacts/bulk-unsubscribe",
            {"emails": ["x@nowhere.io"]},
            headers={"Idempotency-Key": key},
        )
    await run_jobs()
    await db.execute(
        "UPDATE idempotency_keys SET created_at = now() - interval '49 hours' WHERE key = 'old'"
    )
    old_job = await db.fetchval("SELECT job_id FROM idempotency_keys WHERE key = 'old'")
    await db.execute(
        "UPDATE jobs SET finished_at = now() - interval '31 days' WHERE id = $1", old_job
    )
    removed = await apply_retention(worker_context)
    assert removed == {
        "idempotency_keys": 1, "error_rows": 1, "jobs": 0, "file_chunks": 0, "staged_rows": 0
    }  # fmt: skip
    assert await db.fetchval("SELECT count(*) FROM job_errors") == 1
    await db.execute(
        "UPDATE jobs SET finished_at = now() - interval '91 days' WHERE id = $1", old_job
    )
    assert (await apply_retention(worker_context))["jobs"] == 1
    assert await db.fetchval("SELECT count(*) FROM jobs") == 1
