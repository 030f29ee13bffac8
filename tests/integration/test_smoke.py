"""The service end to end: health, a contact, and a bulk job run by a worker."""

from __future__ import annotations

from listmill.settings import Settings
from tests.conftest import Api, RunJobs, wait_for_job


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


async def test_pool_plans_every_statement_for_its_values(settings: Settings) -> None:
    """A generic plan cached while a table was small outlives its size (see db.server_settings)."""
    from listmill.db import create_pool

    pool = await create_pool(settings)
    try:
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW plan_cache_mode") == "force_custom_plan"
    finally:
        await pool.close()
    pgbouncer = settings.model_copy(update={"db_statement_cache_size": 0})
    pool = await create_pool(pgbouncer)
    try:
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW plan_cache_mode") == "auto"
    finally:
        await pool.close()
