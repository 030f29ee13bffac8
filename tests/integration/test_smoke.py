"""The service end to end: health, a contact, and a bulk job run by a worker."""

from __future__ import annotations

import asyncpg

from tests.conftest import Api, RunJobs, analyze_count, wait_for_job


async def test_healthz_needs_no_key(api: Api) -> None:
    response = await api.client.get("/healthz")
    assert response.status == 200
    assert (await response.json())["data"]["status"] == "ok"


async def test_readyz_reports_both_services(api: Api) -> None:
    response = await api.client.get("/readyz")
    assert response.status == 200
    assert (await response.json())["data"]["checks"] == {"postgres": "ok", "redis": "ok"}


async def test_contact_upsert_then_bulk_unsubscribe(api: Api, run_jobs: RunJobs) -> None:
    status, body = await api.post("/contacts", {"email": "Ann@Example.com", "first_name": "Ann"})
    assert status == 201, body
    contact_id = body["data"]["id"]

    status, body = await api.post("/contacts/bulk-unsubscribe", {"contact_ids": [contact_id, 999]})
    assert status == 202, body
    job_id = body["data"]["id"]

    await run_jobs()
    job = await wait_for_job(api, job_id)
    assert job["status"] == "succeeded"
    assert job["counts"] == {"unsubscribed": 1, "not_found": 1}
    status, body = await api.get(f"/contacts/{contact_id}")
    assert body["data"]["status"] == "unsubscribed"


async def test_jobs_that_grow_contacts_refresh_its_statistics(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    """A generic plan cached while contacts was small lives until the next ANALYZE
    (see contacts.refresh_statistics); jobs that grow the table by a fifth take one."""

    async def upsert(contacts: list[dict[str, str]]) -> None:
        _, body = await api.post("/contacts/bulk-upsert", {"contacts": contacts})
        await run_jobs()
        assert (await wait_for_job(api, body["data"]["id"]))["status"] == "succeeded"

    reltuples = "SELECT reltuples FROM pg_class WHERE oid = 'contacts'::regclass"
    contacts = [{"email": f"s{i}@example.com"} for i in range(5_000)]
    before = await analyze_count(db)
    await upsert(contacts)
    assert await analyze_count(db) == before + 1
    assert await db.fetchval(reltuples) == 5_000
    await upsert(contacts[:10])
    assert await analyze_count(db) == before + 1, "a job that grew nothing does not analyze"
    await db.execute(
        "INSERT INTO contacts (project_id, email, email_normalized) "
        "SELECT $1, 'x' || g || '@e.com', 'x' || g || '@e.com' FROM generate_series(1, 20000) g",
        api.project_id,
    )
    await upsert(contacts[:10])
    assert await analyze_count(db) == before + 2, "grown by more than a fifth: analyzed again"
    assert await db.fetchval(reltuples) == 25_000
