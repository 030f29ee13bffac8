"""The /ops dashboard in a real headless Chromium: it loads without console errors, tells the
same story as the JSON report and the database, shows a running job's progress advancing, and
leaves a screenshot in tests/artifacts/."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from arq.connections import ArqRedis

from listmill.db import Connection
from listmill.presence import publish_worker, record_run
from listmill.queries import jobs as job_queries
from listmill.settings import Settings
from tests.browser import Page, chromium_path, open_page
from tests.conftest import ROOT, Api, RunJobs, new_key, wait_for_job
from worker.context import WorkerContext

ARTIFACTS = ROOT / "tests" / "artifacts"
HOSTILE_ERROR = "boom <img src=x onerror=alert(1)><script>alert(2)</script>"


@pytest.fixture
async def page() -> AsyncIterator[Page]:
    executable = chromium_path()
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI: `make browser` installs it")
        pytest.skip("no chromium on this machine: `make browser` installs it (needs root)")
    async with open_page(executable) as opened:
        yield opened


@pytest.fixture
async def engine_db(worker_context: WorkerContext) -> AsyncIterator[Connection]:
    """A connection with the engine's codecs, for playing the worker's part."""
    async with worker_context["pool"].acquire() as conn:
        yield conn


async def _claim(db: Connection, job_id: str) -> uuid.UUID:
    """Take the job as a worker would (the engine's own claim)."""
    lease = uuid.uuid4()
    claimed = await job_queries.claim_job(db, uuid.UUID(job_id), lease, "test-worker", 60)
    assert claimed is not None
    return lease


async def _progress(db: Connection, job_id: str, lease: uuid.UUID, done: int) -> None:
    """Commit a batch's progress as the engine does."""
    answer = await job_queries.commit_progress(
        db, uuid.UUID(job_id), lease, checkpoint=done, processed=done, total=1000,
        counts={"created": done}, errors_added=0, errors_truncated=False, rows_per_second=500.0,
    )  # fmt: skip
    assert answer is False


def _percent(job_id: str) -> str:
    return f"document.querySelector('[data-job-id=\"{job_id}\"] .percent')?.textContent"


async def _lane_cells(page: Page, lane: str) -> list[str]:
    cells = await page.evaluate(
        f"[...document.querySelectorAll('#lanes tr[data-lane=\"{lane}\"] td')]"
        ".map(td => td.textContent)"
    )
    assert isinstance(cells, list)
    return cells


async def _arrange(
    api: Api, db: Connection, run_jobs: RunJobs, settings: Settings
) -> dict[str, object]:
    """One finished job (for the chart), one failed, one running; a live worker; a cron run."""
    _, done = await api.post(
        "/contacts/bulk-upsert", {"contacts": [{"email": f"d{i}@example.com"} for i in range(40)]}
    )
    await run_jobs()
    assert (await wait_for_job(api, done["data"]["id"]))["status"] == "succeeded"
    _, failing = await api.post("/contacts/bulk-subscribe", {"contact_ids": [1]})
    failed_lease = await _claim(db, failing["data"]["id"])
    await job_queries.finish_job(
        db, uuid.UUID(failing["data"]["id"]), failed_lease, "failed", HOSTILE_ERROR
    )
    contacts = [{"email": f"r{i}@example.com"} for i in range(1000)]
    _, running = await api.post("/contacts/bulk-upsert", {"contacts": contacts})
    running_id = running["data"]["id"]
    lease = await _claim(db, running_id)
    await _progress(db, running_id, lease, 300)
    redis = ArqRedis.from_url(settings.redis_url)
    try:
        record = {
            "worker_id": "test-worker",
            "host": "ci",
            "pid": 4242,
            "lanes": ["small", "large"],
        }
        await publish_worker(redis, settings, {**record, "current_jobs": [running_id]})
        await record_run(redis, settings, "reaper", "ok", 10)
    finally:
        await redis.aclose()
    return {"running": running_id, "lease": lease, "failed": failing["data"]["id"]}


async def test_dashboard_shows_the_queues_and_a_running_jobs_progress_advancing(
    api: Api,
    db: asyncpg.Connection,
    engine_db: Connection,
    run_jobs: RunJobs,
    settings: Settings,
    page: Page,
) -> None:
    arranged = await _arrange(api, engine_db, run_jobs, settings)
    running, lease = str(arranged["running"]), arranged["lease"]
    assert isinstance(lease, uuid.UUID)
    _, ops_key = await new_key(db, "ops", ["ops:read"])

    await page.goto(str(api.client.make_url(f"/ops?every=1#key={ops_key}")))
    assert await page.wait_for(_percent(running)) == "30%"
    assert "key=" not in await page.evaluate("location.href"), "the key leaves the address bar"
    await page.screenshot(ARTIFACTS / "ops-dashboard-30.png")

    await _progress(engine_db, running, lease, 700)
    await page.wait_for(f"{_percent(running)} === '70%'")
    width = await page.evaluate(
        f"document.querySelector('[data-job-id=\"{running}\"] .bar > div').style.width"
    )
    assert width == "70%"

    # the same story as the JSON report, which reads Postgres and Redis
    _, report = await api.get("/ops/queues", key=ops_key)
    small = next(lane for lane in report["data"]["lanes"] if lane["lane"] == "small")
    cells = await _lane_cells(page, "small")
    assert cells[0] == "small"
    assert [int(c) for c in cells[1:4]] == [small["depth"], small["scheduled"], 1]
    assert int(cells[5]) == small["finished_5m"] == 1 and int(cells[6]) == small["failed_5m"] == 1
    rows = sum(minute["rows"] for minute in report["data"]["throughput"])
    assert rows >= 40
    chart = "document.querySelector('#chart svg').getAttribute('aria-label')"
    assert await page.evaluate(chart) == f"{rows} rows written in the last hour"
    failure = await page.evaluate(
        f"document.querySelector('#failures tr[data-job-id=\"{arranged['failed']}\"] td.error')"
        ".textContent"
    )
    assert failure == HOSTILE_ERROR, "an error is shown as text, never run as markup"
    assert (
        await page.evaluate("document.querySelectorAll('#failures img, #failures script').length")
        == 0
    )
    worker = await page.evaluate(
        "document.querySelector('#workers tr[data-worker-id=\"test-worker\"]').textContent"
    )
    assert "4242" in worker and "small, large" in worker
    assert "ok" in await page.evaluate(
        "document.querySelector('#scheduled tr[data-run=\"reaper\"]').textContent"
    )
    await page.screenshot(ARTIFACTS / "ops-dashboard.png")

    await job_queries.finish_job(engine_db, uuid.UUID(running), lease, "succeeded")
    await page.wait_for(
        "document.querySelector('#running').textContent.includes('nothing running')"
    )
    assert page.console_errors == []


async def test_dashboard_asks_for_a_key_and_refuses_one_without_the_scope(
    api: Api, db: asyncpg.Connection, page: Page
) -> None:
    await page.goto(str(api.client.make_url("/ops")))
    await page.wait_for("!document.getElementById('key-form').hidden")
    assert await page.evaluate("document.getElementById('report').hidden") is True
    _, weak_key = await new_key(db, "acme-readonly", ["contacts:read"])
    await page.evaluate(f"document.getElementById('key-input').value = '{weak_key}'")
    await page.evaluate("document.querySelector('#key-form button').click()")
    await page.wait_for(
        "document.getElementById('status').textContent.includes('lacks the scope ops:read')"
    )
    assert await page.evaluate("sessionStorage.getItem('listmill.ops.key')") is None
    assert not [e for e in page.console_errors if "ops/queues" not in e], page.console_errors


async def test_dashboard_files_are_served_with_a_strict_policy(api: Api) -> None:
    for path, kind in (
        ("/ops", "text/html"),
        ("/ops/ops.js", "text/javascript"),
        ("/ops/ops.css", "text/css"),
    ):
        response = await api.client.get(path)
        assert response.status == 200 and response.content_type == kind
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    missing = await api.client.get("/ops/secrets.txt")
    assert missing.status == 404 and (await missing.json())["error"]["code"] == "not_found"
