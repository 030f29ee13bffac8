"""The job engine: 202 + job, exact counts, idempotency, cancellation, retries, duplicates,
and a job that survives losing its Redis message."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from arq.connections import ArqRedis

from api import http
from api.app import create_app
from api.context import POOL
from api.http import OFF_LOOP_BYTES
from listmill.settings import Settings
from tests.conftest import Api, RunJobs, make_settings, wait_for_job
from worker.context import WorkerContext
from worker.runner import run_job
from worker.settings import in_process_workers, make_context


def contacts(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {"email": f"user{i}@example.com", "first_name": f"U{i}"} for i in range(start, start + n)
    ]


async def test_bulk_upsert_counts_every_row(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    await api.post("/contacts", {"email": "user0@example.com", "first_name": "U0"})  # unchanged
    await api.post("/contacts", {"email": "user1@example.com", "first_name": "Old"})  # updated
    rows = [*contacts(5), {"email": "USER4@example.com", "last_name": "L"}, {"email": "bad"}]
    status, body = await api.post("/contacts/bulk-upsert", {"contacts": rows})
    assert status == 202, body
    assert body["data"]["status"] == "queued"
    await run_jobs()
    job = await wait_for_job(api, body["data"]["id"])
    assert job["status"] == "succeeded"
    assert job["counts"] == {
        "created": 3, "updated": 1, "unchanged": 1, "invalid": 1, "duplicate": 1
    }  # fmt: skip
    assert job["progress"]["processed"] == job["progress"]["total"] == 6
    assert job["progress"]["percent"] == 100.0
    # the last row of an email wins; fields it omits keep their values
    user4 = await db.fetchrow(
        "SELECT first_name, last_name FROM contacts WHERE email_normalized = 'user4@example.com'"
    )
    assert user4 is not None and tuple(user4) == (None, "L")
    status, errors = await api.get(f"/jobs/{job['id']}/errors")
    assert errors["data"] == [
        {
            "row_number": 7,
            "email": "bad",
            "code": "invalid_email",
            "message": errors["data"][0]["message"],
        }
    ]
    assert errors["meta"]["total"] == 1


async def test_submission_is_202_with_location_and_seed_aliases(api: Api) -> None:
    response = await api.client.post(
        "/api/v1/contacts/bulk-subscribe",
        json={"emails": ["a@example.com"]},
        headers={"Authorization": f"Bearer {api.key}"},
    )
    assert response.status == 202
    job = (await response.json())["data"]
    assert response.headers["Location"] == f"/api/v1/jobs/{job['id']}"
    for path in (
        f"/jobs/{job['id']}",
        f"/contacts/bulk/{job['id']}",
        f"/contacts/import/{job['id']}",
    ):
        status, body = await api.get(path)
        assert status == 200 and body["data"]["id"] == job["id"]
    assert body["data"]["params"] == {
        "identify_by": "emails",
        "list_id": None,
        "trigger_sequences": True,
    }


async def test_bulk_validation_errors(api: Api) -> None:
    cases: list[Any] = [
        {},
        {"contact_ids": []},
        {"contact_ids": list(range(1, 1002))},
        {"contact_ids": [1], "emails": ["a@b.co"]},
        {"contact_ids": ["x"]},
        {"contact_ids": [0]},
        {"contact_ids": [2**63]},
        [1, 2],
    ]
    for body in cases:
        status, answer = await api.post("/contacts/bulk-delete", body)
        assert status == 422, (body, answer)
    status, answer = await api.post(
        "/contacts/bulk-upsert", {"contacts": [{"email": "a@b.co"}] * 10_001}
    )
    assert status == 422
    status, answer = await api.post(
        "/contacts/bulk-subscribe", {"contact_ids": [1], "list_id": 999}
    )
    assert status == 404 and answer["error"]["message"] == "list not found"


async def test_other_projects_ids_are_not_found_and_untouched(
    api: Api, other_api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    _, theirs = await other_api.post("/contacts", {"email": "theirs@example.com"})
    _, mine = await api.post("/contacts", {"email": "mine@example.com"})
    ids = [mine["data"]["id"], theirs["data"]["id"], 123456789]
    _, body = await api.post("/contacts/bulk-delete", {"contact_ids": ids})
    await run_jobs()
    job = await wait_for_job(api, body["data"]["id"])
    assert job["counts"] == {"deleted": 1, "not_found": 2}
    assert (
        await db.fetchval("SELECT count(*) FROM contacts WHERE id = $1", theirs["data"]["id"]) == 1
    )
    assert (await other_api.get(f"/jobs/{job['id']}"))[0] == 404
    assert (await other_api.get(f"/jobs/{job['id']}/errors"))[0] == 404
    assert (await other_api.post(f"/jobs/{job['id']}/cancel"))[0] == 404


async def test_bulk_repeats_are_duplicates_and_every_row_keeps_its_position(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    """The repeats of an email (any case, surrounding space) or of an id are counted
    duplicate, and an error row names its item's position in the request, repeats or not."""
    await api.post("/contacts", {"email": "a@example.com"})
    _, b = await api.post("/contacts", {"email": "b@example.com"})
    emails = ["A@example.com", "a@example.com", " a@EXAMPLE.com ", "b@example.com", "nope"]
    _, answer = await api.post("/contacts/bulk-unsubscribe", {"emails": emails})
    await run_jobs()
    job = await wait_for_job(api, answer["data"]["id"])
    assert job["counts"] == {"unsubscribed": 2, "duplicate": 2, "invalid": 1}
    assert job["progress"]["processed"] == job["progress"]["total"] == 5
    _, errors = await api.get(f"/jobs/{job['id']}/errors")
    assert [(e["row_number"], e["code"]) for e in errors["data"]] == [(5, "invalid_email")]
    ids = [b["data"]["id"], b["data"]["id"], 123456789]
    _, answer = await api.post("/contacts/bulk-subscribe", {"contact_ids": ids})
    await run_jobs()
    job = await wait_for_job(api, answer["data"]["id"])
    assert job["counts"] == {"subscribed": 1, "duplicate": 1, "not_found": 1}
    _, errors = await api.get(f"/jobs/{job['id']}/errors")
    assert [(e["row_number"], e["code"]) for e in errors["data"]] == [(3, "not_found")]
    # a job stored by a release whose web kept two emails of one contact
    _, answer = await api.post("/contacts/bulk-unsubscribe", {"emails": ["b@example.com"]})
    await db.execute(
        "UPDATE jobs SET payload = $2::jsonb, total = 3 WHERE id = $1",
        uuid.UUID(answer["data"]["id"]),
        json.dumps(["b@example.com", "B@example.com", "a@example.com"]),
    )
    await run_jobs()
    job = await wait_for_job(api, answer["data"]["id"])
    assert job["counts"] == {"unsubscribed": 1, "unchanged": 1, "duplicate": 1}


async def test_bulk_operations_on_list_memberships(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    _, made = await api.post("/lists", {"name": "Weekly"})
    list_id = made["data"]["id"]
    trigger = {"type": "list_added", "list_id": list_id}
    await api.post("/sequences", {"name": "Welcome", "trigger_config": trigger})
    ids = []
    for i in range(3):
        _, c = await api.post("/contacts", {"email": f"m{i}@example.com"})
        ids.append(c["data"]["id"])
    await db.execute("UPDATE contacts SET status = 'unsubscribed' WHERE id = $1", ids[2])

    async def run(path: str, **body: Any) -> dict[str, int]:
        _, answer = await api.post(path, {"list_id": list_id, **body})
        await run_jobs()
        return dict((await wait_for_job(api, answer["data"]["id"]))["counts"])

    # the contact unsubscribed from all email is suppressed: it joins no list
    assert await run("/contacts/bulk-subscribe", contact_ids=ids) == {
        "subscribed": 2,
        "suppressed": 1,
        "enrolled": 2,
    }
    assert await run("/contacts/bulk-subscribe", contact_ids=ids) == {
        "unchanged": 2,
        "suppressed": 1,
    }
    _, weekly = await api.get(f"/lists/{list_id}")
    assert weekly["data"]["member_count"] == 2
    assert await run("/contacts/bulk-unsubscribe", emails=["M0@example.com", "zz@example.com"]) == {
        "unsubscribed": 1, "not_found": 1
    }  # fmt: skip
    assert await run("/contacts/bulk-delete", contact_ids=ids) == {"deleted": 2, "skipped": 1}
    _, weekly = await api.get(f"/lists/{list_id}")
    assert weekly["data"]["member_count"] == 0
    # the contacts themselves are untouched by list-scoped operations
    assert await db.fetchval("SELECT count(*) FROM contacts") == 3


async def test_idempotent_replay_and_conflict(api: Api, db: asyncpg.Connection) -> None:
    headers = {"Idempotency-Key": "sync-2026-11-23"}
    body = {"contact_ids": [1, 2, 3]}
    status, first = await api.post("/contacts/bulk-unsubscribe", body, headers=headers)
    assert status == 202
    status, again = await api.post("/contacts/bulk-unsubscribe", body, headers=headers)
    assert status == 200 and again["data"]["id"] == first["data"]["id"]
    status, conflict = await api.post(
        "/contacts/bulk-unsubscribe", {"contact_ids": [1]}, headers=headers
    )
    assert status == 409 and conflict["error"]["code"] == "conflict"
    status, _ = await api.post("/contacts/bulk-subscribe", body, headers=headers)
    assert status == 409
    assert await db.fetchval("SELECT count(*) FROM jobs") == 1


async def test_concurrent_replays_make_one_job(api: Api, db: asyncpg.Connection) -> None:
    headers = {"Idempotency-Key": "race"}
    answers = await asyncio.gather(
        *(
            api.post("/contacts/bulk-subscribe", {"contact_ids": [7]}, headers=headers)
            for _ in range(5)
        )
    )
    assert sorted(status for status, _ in answers) == [200, 200, 200, 200, 202]
    assert len({body["data"]["id"] for _, body in answers}) == 1
    assert await db.fetchval("SELECT count(*) FROM jobs") == 1


async def test_cancel_a_queued_job(api: Api, run_jobs: RunJobs, db: asyncpg.Connection) -> None:
    await api.post("/contacts", {"email": "keep@example.com"})
    _, body = await api.post("/contacts/bulk-delete", {"emails": ["keep@example.com"]})
    job_id = body["data"]["id"]
    status, cancelled = await api.post(f"/jobs/{job_id}/cancel")
    assert status == 200 and cancelled["data"]["status"] == "cancelled"
    await run_jobs()
    job = await wait_for_job(api, job_id)
    assert job["status"] == "cancelled" and job["started_at"] is None and job["counts"] == {}
    assert await db.fetchval("SELECT count(*) FROM contacts") == 1
    status, _ = await api.post(f"/jobs/{job_id}/cancel")
    assert status == 409


async def test_cancel_a_running_job_keeps_committed_batches(
    api: Api, settings: Settings, worker_context: WorkerContext, db: asyncpg.Connection
) -> None:
    _, body = await api.post("/contacts/bulk-upsert", {"contacts": contacts(10_000)})
    job_id = body["data"]["id"]
    workers = in_process_workers(settings, worker_context, burst=True)
    running = asyncio.gather(*(w.async_run() for w in workers))
    while (await api.get(f"/jobs/{job_id}"))[1]["data"]["progress"]["processed"] == 0:
        await asyncio.sleep(0.01)
    status, _ = await api.post(f"/jobs/{job_id}/cancel")
    assert status == 200
    await running
    for w in workers:
        await w.close()
    job = await wait_for_job(api, job_id)
    assert job["status"] == "cancelled"
    committed = await db.fetchval("SELECT count(*) FROM contacts")
    assert 0 < committed < 10_000
    assert job["counts"] == {"created": committed}
    assert job["progress"]["processed"] == committed


async def test_a_job_delivered_twice_concurrently_is_applied_once(
    api: Api, settings: Settings, worker_context: WorkerContext, db: asyncpg.Connection
) -> None:
    _, body = await api.post("/contacts/bulk-upsert", {"contacts": contacts(500)})
    job_id = body["data"]["id"]
    redis: ArqRedis = ArqRedis.from_url(settings.redis_url)
    try:
        ctx_a = WorkerContext(**worker_context, redis=redis, job_try=1)
        ctx_b = WorkerContext(**{**worker_context, "worker_id": "other"}, redis=redis, job_try=1)
        outcomes = await asyncio.gather(run_job(ctx_a, job_id), run_job(ctx_b, job_id))
    finally:
        await redis.aclose()
    assert sorted(outcomes) == ["not_claimable", "succeeded"]
    job = await wait_for_job(api, job_id)
    assert job["counts"] == {"created": 500} and job["attempts"] == 1
    assert await db.fetchval("SELECT count(*) FROM contacts") == 500


async def test_job_completes_after_its_redis_message_is_lost(
    api: Api, settings: Settings, run_jobs: RunJobs
) -> None:
    _, body = await api.post("/contacts/bulk-upsert", {"contacts": contacts(3)})
    redis: ArqRedis = ArqRedis.from_url(settings.redis_url)
    try:
        await redis.flushdb()
    finally:
        await redis.aclose()
    await asyncio.sleep(settings.job_stale_queued_seconds + 0.1)
    await run_jobs()  # the reaper (run at worker start) re-wakes it
    job = await wait_for_job(api, body["data"]["id"])
    assert job["status"] == "succeeded" and job["counts"] == {"created": 3}


async def test_submission_with_redis_down_is_accepted_then_completes(
    database_url: str,
    settings: Settings,
    run_jobs: RunJobs,
    aiohttp_client: Any,
    api: Api,
    db: asyncpg.Connection,
) -> None:
    down = make_settings(database_url, "redis://127.0.0.1:1/0")
    client: TestClient = await aiohttp_client(create_app(down))
    offline = Api(client, api.key, api.project_id)
    status, body = await offline.post("/contacts/bulk-upsert", {"contacts": contacts(2)})
    assert status == 202, body
    response = await client.get("/readyz")
    assert response.status == 503
    assert (await response.json())["error"]["message"] == "not ready: redis down"
    await run_jobs()  # Redis "is back": the reaper finds the job that was never enqueued
    job = await wait_for_job(api, body["data"]["id"])
    assert job["status"] == "succeeded" and job["counts"] == {"created": 2}


FAIL_ONCE = """
CREATE SEQUENCE fault_calls;
CREATE FUNCTION fault() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF nextval('fault_calls') <= {times} THEN
        RAISE EXCEPTION 'injected fault' USING ERRCODE = '{code}';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER fault BEFORE INSERT ON contacts FOR EACH STATEMENT EXECUTE FUNCTION fault();
"""


async def test_transient_failure_is_retried_then_succeeds(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    await db.execute(FAIL_ONCE.format(times=1, code="40001"))  # a real serialization failure
    _, body = await api.post("/contacts/bulk-upsert", {"contacts": contacts(3)})
    await run_jobs()
    job = await wait_for_job(api, body["data"]["id"])
    assert job["status"] == "succeeded" and job["attempts"] == 2
    assert job["counts"] == {"created": 3}


async def test_permanent_failure_fails_the_job_with_its_error(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    await db.execute(FAIL_ONCE.format(times=1000, code="23514"))  # a check violation
    _, body = await api.post("/contacts/bulk-upsert", {"contacts": contacts(3)})
    await run_jobs()
    job = await wait_for_job(api, body["data"]["id"])
    assert job["status"] == "failed" and job["attempts"] == 1
    assert job["error"] == "CheckViolationError: injected fault"


async def test_transient_failures_past_max_attempts_fail_the_job(
    api: Api,
    database_url: str,
    redis_url: str,
    worker_context: WorkerContext,
    db: asyncpg.Connection,
) -> None:
    await db.execute(FAIL_ONCE.format(times=1000, code="40P01"))  # deadlock, every time
    _, body = await api.post("/contacts/bulk-upsert", {"contacts": contacts(1)})
    await db.execute("UPDATE jobs SET max_attempts = 3")
    settings = worker_context["settings"]
    for worker in in_process_workers(settings, worker_context, burst=True):
        await worker.async_run()
        await worker.close()
    job = await wait_for_job(api, body["data"]["id"])
    assert job["status"] == "failed" and job["attempts"] == 3
    assert job["error"].startswith("gave up after 3 attempts; last error: DeadlockDetectedError")


async def test_job_listing_filters_and_pages(api: Api) -> None:
    for _ in range(3):
        await api.post("/contacts/bulk-subscribe", {"contact_ids": [1]})
    await api.post("/contacts/bulk-delete", {"contact_ids": [1]})
    status, body = await api.get("/jobs", params={"kind": "bulk_subscribe", "limit": 2})
    assert status == 200 and body["meta"]["total"] == 3 and body["meta"]["has_more"]
    first_page = [j["id"] for j in body["data"]]
    _, body = await api.get(
        "/jobs", params={"kind": "bulk_subscribe", "cursor": body["meta"]["next_cursor"]}
    )
    assert len(body["data"]) == 1 and body["data"][0]["id"] not in first_page
    _, body = await api.get("/jobs", params={"status": "queued"})
    assert body["meta"]["total"] == 4
    assert (await api.get("/jobs", params={"status": "nope"}))[0] == 422
    assert (await api.get(f"/jobs/{uuid.uuid4()}"))[0] == 404
    assert (await api.get("/jobs/not-a-uuid"))[0] == 404


async def test_error_report_as_csv_neutralises_formulas(api: Api, run_jobs: RunJobs) -> None:
    _, body = await api.post(
        "/contacts/bulk-unsubscribe", {"emails": ["=HYPERLINK(1)", "ok@example.com"]}
    )
    await run_jobs()
    job = await wait_for_job(api, body["data"]["id"])
    response = await api.client.get(
        f"/api/v1/jobs/{job['id']}/errors",
        headers={"Authorization": f"Bearer {api.key}", "Accept": "text/csv"},
    )
    assert response.status == 200 and response.content_type == "text/csv"
    lines = (await response.text()).splitlines()
    assert lines[0] == "row_number,email,code,message"
    assert lines[1].startswith("1,'=HYPERLINK(1),invalid_email,")
    assert lines[2].startswith("2,ok@example.com,not_found,")


@pytest.mark.parametrize("operation", ["bulk-subscribe", "bulk-unsubscribe"])
async def test_contact_status_operations(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection, operation: str
) -> None:
    ids = []
    for status in ("subscribed", "unsubscribed", "bounced", "complained"):
        _, c = await api.post("/contacts", {"email": f"{status}@example.com"})
        await db.execute("UPDATE contacts SET status = $1 WHERE id = $2", status, c["data"]["id"])
        ids.append(c["data"]["id"])
    _, body = await api.post(f"/contacts/{operation}", {"contact_ids": ids})
    await run_jobs()
    job = await wait_for_job(api, body["data"]["id"])
    statuses = [r["status"] for r in await db.fetch("SELECT status FROM contacts ORDER BY id")]
    if operation == "bulk-subscribe":
        # an explicit re-subscribe; bounced and complained addresses stay suppressed
        assert job["counts"] == {"subscribed": 1, "unchanged": 1, "skipped": 2}
        assert statuses == ["subscribed", "subscribed", "bounced", "complained"]
    else:
        assert job["counts"] == {"unsubscribed": 1, "unchanged": 3}
        assert statuses == ["unsubscribed", "unsubscribed", "bounced", "complained"]


async def test_a_cancelled_job_whose_worker_died_ends_cancelled(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    _, body = await api.post("/contacts/bulk-upsert", {"contacts": contacts(3)})
    job_id = body["data"]["id"]
    # a worker took it, the client asked to cancel, then the worker vanished
    await db.execute(
        """
        UPDATE jobs SET status = 'running', attempts = 1, lease_token = gen_random_uuid(),
                        lease_expires_at = now() - interval '1 second'
        """
    )
    status, answer = await api.post(f"/jobs/{job_id}/cancel")
    assert status == 200 and answer["data"]["cancel_requested"]
    await run_jobs()  # the reaper finds the expired lease
    job = await wait_for_job(api, job_id)
    assert job["status"] == "cancelled" and job["finished_at"] is not None


async def test_workers_commit_without_waiting_for_the_disk_and_the_web_waits(
    settings: Settings, worker_context: WorkerContext, client: TestClient
) -> None:
    """What the web accepts is on disk before its 202; a worker's writes can all be written
    again from that, so they do not wait for the WAL flush (worker.settings.make_context)."""
    for _ in range(2):  # a startup parameter: every use of a connection has it
        async with worker_context["pool"].acquire() as conn:
            assert await conn.fetchval("SHOW synchronous_commit") == "off"
            # and, as the web's (test_membership_races), READ COMMITTED whatever the database says
            assert await conn.fetchval("SHOW default_transaction_isolation") == "read committed"
    async with client.app[POOL].acquire() as conn:
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
    durable = await make_context(settings.model_copy(update={"worker_synchronous_commit": True}))
    try:
        async with durable["pool"].acquire() as conn:
            assert await conn.fetchval("SHOW synchronous_commit") == "on"
    finally:
        await durable["pool"].close()


async def test_a_connection_given_back_is_as_a_new_one(worker_context: WorkerContext) -> None:
    """A guard, not a test of _keep_session (the pool sends no reset query): a transaction
    left open is still rolled back (asyncpg does it either way), so the next use sees
    nothing of what the code may leave, SET LOCAL and ON COMMIT DROP tables."""
    pool = worker_context["pool"]
    async with pool.acquire() as conn:
        await conn.execute("BEGIN")
        await conn.execute("SET LOCAL statement_timeout = 1234")
        await conn.execute("CREATE TEMPORARY TABLE left_open (a int) ON COMMIT DROP")
        backend = await conn.fetchval("SELECT pg_backend_pid()")
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT pg_backend_pid()") == backend  # the same one
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SHOW statement_timeout") == "0"
        assert await conn.fetchval("SELECT to_regclass('pg_temp.left_open')") is None


async def test_a_large_body_is_read_in_a_thread_with_the_same_answers(
    api: Api, run_jobs: RunJobs, client: TestClient
) -> None:
    """Bodies past OFF_LOOP_BYTES are parsed and validated off the event loop: the same 202,
    counts, 422 and 400 as a small body gets."""
    rows = [{"email": f"user{i}@example.com", "first_name": "x" * 40} for i in range(2_000)]
    rows.append({"email": "bad"})
    body = {"contacts": rows}
    assert len(json.dumps(body)) > OFF_LOOP_BYTES
    status, answer = await api.post("/contacts/bulk-upsert", body)
    assert status == 202, answer
    await run_jobs()
    job = await wait_for_job(api, answer["data"]["id"])
    assert job["counts"] == {"created": 2_000, "invalid": 1}
    status, answer = await api.post("/contacts/bulk-upsert", {"contacts": [*rows, {}]})
    assert status == 422
    assert answer["error"]["code"] == "validation_failed"
    assert [d["field"] for d in answer["error"]["details"]] == ["contacts.2001.email"]
    text = json.dumps(body)[:-1]  # cut short
    response = await client.post(
        "/api/v1/contacts/bulk-upsert",
        data=text,
        headers={"Authorization": f"Bearer {api.key}", "Content-Type": "application/json"},
    )
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "bad_request"


@pytest.mark.parametrize(
    ("rows", "in_thread"), [(10, False), (2_000, True)], ids=["small", "large"]
)
async def test_a_chunked_body_is_read_in_a_thread_by_its_size(
    api: Api, client: TestClient, monkeypatch: pytest.MonkeyPatch, rows: int, in_thread: bool
) -> None:
    """A chunked body has no Content-Length: it goes to a thread by the size of what was read."""
    threads: list[threading.Thread] = []
    parse = http._parse_json

    def noted(raw: bytes) -> Any:
        threads.append(threading.current_thread())
        return parse(raw)

    monkeypatch.setattr(http, "_parse_json", noted)
    contacts = [{"email": f"user{i}@example.com", "first_name": "x" * 40} for i in range(rows)]
    text = json.dumps({"contacts": contacts}).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(text), 16 * 1024):
            yield text[start : start + 16 * 1024]

    response = await client.post(
        "/api/v1/contacts/bulk-upsert",
        data=chunks(),
        headers={"Authorization": f"Bearer {api.key}", "Content-Type": "application/json"},
    )
    assert response.status == 202, await response.text()
    assert response.request_info.headers.get("Transfer-Encoding") == "chunked"
    assert len(threads) == 1
    assert (threads[0] is not threading.main_thread()) == in_thread
