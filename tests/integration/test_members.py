"""Lists and members: additions and removals as jobs, consent, enrollment, links, counts."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import asyncpg
from aiohttp.test_utils import TestClient
from arq.connections import ArqRedis

from api.app import create_app
from listmill.settings import Settings
from tests.conftest import Api, RunJobs, wait_for_job
from worker.context import WorkerContext
from worker.reconcile import reconcile_member_counts
from worker.runner import run_job


async def make_list(api: Api, name: str = "News", **fields: Any) -> int:
    status, body = await api.post("/lists", {"name": name, **fields})
    assert status == 201, body
    return int(body["data"]["id"])


async def make_sequence(api: Api, list_id: int, name: str, status: str = "active") -> int:
    trigger = {"type": "list_added", "list_id": list_id}
    _, body = await api.post(
        "/sequences", {"name": name, "trigger_config": trigger, "status": status}
    )
    return int(body["data"]["id"])


async def add(api: Api, run_jobs: RunJobs, list_id: int, **body: Any) -> dict[str, Any]:
    status, answer = await api.post(f"/lists/{list_id}/members", body)
    assert status == 202, answer
    await run_jobs()
    return await wait_for_job(api, answer["data"]["id"])


async def test_new_members_follow_the_lists_opt_in(api: Api, run_jobs: RunJobs) -> None:
    single = await make_list(api, "Single")
    double = await make_list(api, "Double", opt_in_process="double")
    contacts = [{"email": "a@example.com"}]
    assert (await add(api, run_jobs, single, contacts=contacts))["counts"] == {
        "added": 1, "contacts_created": 1
    }  # fmt: skip
    await add(api, run_jobs, double, contacts=contacts)
    _, body = await api.get(f"/lists/{single}/members")
    assert body["data"][0]["status"] == "subscribed"
    _, body = await api.get(f"/lists/{double}/members")
    assert body["data"][0]["status"] == "pending"
    _, lists = await api.get("/lists")
    assert {m["name"]: m["member_count"] for m in lists["data"]} == {"Single": 1, "Double": 0}


async def test_a_mixed_batch_gives_exact_counts(
    api: Api, other_api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    list_id = await make_list(api)
    _, existing = await api.post("/contacts", {"email": "existing@example.com"})
    _, gone = await api.post("/contacts", {"email": "gone@example.com", "status": "unsubscribed"})
    _, theirs = await other_api.post("/contacts", {"email": "theirs@example.com"})
    await add(api, run_jobs, list_id, contact_ids=[existing["data"]["id"]])
    job = await add(
        api,
        run_jobs,
        list_id,
        contact_ids=[existing["data"]["id"], gone["data"]["id"], theirs["data"]["id"], 424242],
        contacts=[{"email": "new@example.com", "first_name": "New"}, {"email": "bad"}],
    )
    assert job["counts"] == {
        "skipped": 1, "suppressed": 1, "not_found": 2, "added": 1, "contacts_created": 1,
        "invalid": 1,
    }  # fmt: skip
    _, errors = await api.get(f"/jobs/{job['id']}/errors")
    assert [(e["row_number"], e["code"]) for e in errors["data"]] == [
        (2, "suppressed"), (3, "not_found"), (4, "not_found"), (6, "invalid_email")
    ]  # fmt: skip
    assert (
        await db.fetchval(
            "SELECT count(*) FROM list_memberships WHERE contact_id = $1", theirs["data"]["id"]
        )
        == 0
    )


async def test_contacts_by_email_fill_blanks_and_never_overwrite(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    list_id = await make_list(api)
    await api.post("/contacts", {"email": "ann@example.com", "first_name": "Ann", "data": {"a": 1}})
    contacts = [
        {
            "email": "ANN@example.com",
            "first_name": "Anne",
            "last_name": "Lee",
            "data": {"a": 2, "b": 3},
        }
    ]
    await add(api, run_jobs, list_id, contacts=contacts)
    row = await db.fetchrow("SELECT first_name, last_name, data FROM contacts")
    assert row is not None
    assert (row["first_name"], row["last_name"]) == ("Ann", "Lee")
    assert row["data"] == '{"a": 1, "b": 3}'


async def test_thousand_additions_with_three_sequences_enroll_three_thousand(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    list_id = await make_list(api)
    other_list = await make_list(api, "Other")
    for name in ("One", "Two", "Three"):
        await make_sequence(api, list_id, name)
    await make_sequence(api, list_id, "Paused", status="paused")
    await make_sequence(api, other_list, "Elsewhere")
    contacts = [{"email": f"m{i}@example.com"} for i in range(1000)]
    job = await add(api, run_jobs, list_id, contacts=contacts)
    assert job["counts"] == {"added": 1000, "contacts_created": 1000, "enrolled": 3000}
    assert await db.fetchval("SELECT count(*) FROM sequence_enrollments") == 3000
    assert await db.fetchval("SELECT count(DISTINCT job_id) FROM sequence_enrollments") == 1
    # adding them again enrolls nobody twice
    again = await add(api, run_jobs, list_id, contacts=contacts)
    assert again["counts"] == {"skipped": 1000}
    assert await db.fetchval("SELECT count(*) FROM sequence_enrollments") == 3000


async def test_no_enrollment_for_pending_or_untriggered(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    double = await make_list(api, "Double", opt_in_process="double")
    await make_sequence(api, double, "Welcome")
    job = await add(
        api, run_jobs, double, contacts=[{"email": "p@example.com"}], trigger_sequences=True
    )
    assert "enrolled" not in job["counts"]
    single = await make_list(api, "Single")
    await make_sequence(api, single, "Hello")
    job = await add(
        api, run_jobs, single, contacts=[{"email": "q@example.com"}], trigger_sequences=False
    )
    assert job["counts"] == {"added": 1, "contacts_created": 1}
    assert await db.fetchval("SELECT count(*) FROM sequence_enrollments") == 0


async def test_a_job_delivered_twice_enrolls_once(
    api: Api, worker_context: WorkerContext, settings: Settings, db: asyncpg.Connection
) -> None:
    list_id = await make_list(api)
    await make_sequence(api, list_id, "Welcome")
    contacts = [{"email": f"d{i}@example.com"} for i in range(300)]
    _, body = await api.post(f"/lists/{list_id}/members", {"contacts": contacts})
    redis: ArqRedis = ArqRedis.from_url(settings.redis_url)
    try:
        contexts = [
            WorkerContext(**{**worker_context, "worker_id": f"w{i}"}, redis=redis, job_try=1)
            for i in range(3)
        ]
        outcomes = await asyncio.gather(*(run_job(ctx, body["data"]["id"]) for ctx in contexts))
    finally:
        await redis.aclose()
    assert sorted(outcomes) == ["not_claimable", "not_claimable", "succeeded"]
    assert await db.fetchval("SELECT count(*) FROM sequence_enrollments") == 300


async def test_status_on_addition_updates_existing_members_when_allowed(
    api: Api, run_jobs: RunJobs
) -> None:
    list_id = await make_list(api, "Double", opt_in_process="double")
    await add(
        api, run_jobs, list_id, contacts=[{"email": "a@example.com"}, {"email": "b@example.com"}]
    )
    _, members = await api.get(f"/lists/{list_id}/members")
    b_id = members["data"][1]["contact_id"]
    await api.put("/memberships", {"list_id": list_id, "contact_id": b_id, "status": "complained"})
    job = await add(
        api, run_jobs, list_id, contacts=[{"email": "a@example.com"}, {"email": "b@example.com"}],
        status="subscribed",
    )  # fmt: skip
    assert job["counts"] == {"updated": 1, "skipped": 1}


async def test_archived_list_refuses_additions(api: Api) -> None:
    list_id = await make_list(api)
    await api.patch(f"/lists/{list_id}", {"status": "archived"})
    status, body = await api.post(f"/lists/{list_id}/members", {"contact_ids": [1]})
    assert status == 409
    status, body = await api.post(f"/lists/{list_id}/members", {"contact_ids": []})
    assert status == 422
    status, body = await api.post("/lists/999999/members", {"contact_ids": [1]})
    assert status == 404 and body["error"]["message"] == "list not found"


async def test_member_removal_deletes_or_keeps_suppression(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    list_id = await make_list(api)
    await add(api, run_jobs, list_id, contacts=[{"email": f"r{i}@example.com"} for i in range(3)])
    _, members = await api.get(f"/lists/{list_id}/members")
    ids = [m["contact_id"] for m in members["data"]]
    _, body = await api.delete(
        f"/lists/{list_id}/members", {"contact_ids": [ids[0], 999]}, params={"mode": "unsubscribe"}
    )
    await run_jobs()
    job = await wait_for_job(api, body["data"]["id"])
    assert job["counts"] == {"unsubscribed": 1, "not_found": 1}
    row = await db.fetchrow(
        "SELECT status, unsubscribed_at FROM list_memberships WHERE contact_id = $1", ids[0]
    )
    assert (
        row is not None and row["status"] == "unsubscribed" and row["unsubscribed_at"] is not None
    )
    _, body = await api.delete(f"/lists/{list_id}/members", {"contact_ids": ids})
    await run_jobs()
    job = await wait_for_job(api, body["data"]["id"])
    assert job["counts"] == {"deleted": 3}
    _, mailing_list = await api.get(f"/lists/{list_id}")
    assert mailing_list["data"]["member_count"] == 0
    assert (
        await api.delete(f"/lists/{list_id}/members", {"contact_ids": ids}, params={"mode": "x"})
    )[0] == 422


async def test_member_reads(api: Api, run_jobs: RunJobs, client: TestClient) -> None:
    list_id = await make_list(api)
    await add(
        api,
        run_jobs,
        list_id,
        contacts=[{"email": f"Read{i}@Example.com", "first_name": f"R{i}"} for i in range(3)],
    )
    _, page = await api.get(f"/lists/{list_id}/members", params={"limit": 2})
    assert page["meta"]["total"] == 3 and page["meta"]["has_more"]
    member = page["data"][0]
    assert (
        member["contact"]["email"] == "Read0@Example.com"
        and member["contact"]["first_name"] == "R0"
    )
    assert urlsplit(member["unsubscribe_url"]).path.startswith("/unsubscribe/")
    _, rest = await api.get(
        f"/lists/{list_id}/members", params={"cursor": page["meta"]["next_cursor"]}
    )
    assert len(rest["data"]) == 1
    _, filtered = await api.get(f"/lists/{list_id}/members", params={"status": "pending"})
    assert filtered["data"] == [] and filtered["meta"]["total"] == 0
    status, one = await api.get(f"/lists/{list_id}/members/{member['contact_id']}")
    assert status == 200 and one["data"]["status"] == "subscribed"
    status, found = await api.post(
        f"/lists/{list_id}/members/search", {"email": "READ1@example.COM"}
    )
    assert status == 200 and [m["contact"]["first_name"] for m in found["data"]] == ["R1"]
    status, body = await api.get(f"/lists/{list_id}/members/987654")
    assert status == 404 and body["error"]["message"] == "membership not found"


async def test_put_membership_rules(api: Api, db: asyncpg.Connection) -> None:
    list_id = await make_list(api)
    await make_sequence(api, list_id, "Welcome")
    first = {
        "list_id": list_id, "contact": {"email": "c@example.com", "first_name": "C"},
        "consent_source": "signup-form", "consent_text_version": "v1",
        "consent_ip": "203.0.113.77",
    }  # fmt: skip
    status, body = await api.put("/memberships", first)
    assert status == 201, body
    member = body["data"]
    assert member["status"] == "subscribed" and member["consent_ip"] == "203.0.113.0"
    assert await db.fetchval("SELECT count(*) FROM sequence_enrollments") == 1
    contact_id = member["contact_id"]
    target = {"list_id": list_id, "contact_id": contact_id}
    status, body = await api.delete("/memberships", target)
    assert status == 200 and body["data"]["status"] == "unsubscribed"
    # re-subscribing keeps the first consent record
    again = {
        **target,
        "status": "subscribed",
        "consent_source": "other",
        "consent_ip": "2001:db8:1:2::9",
    }
    status, body = await api.put("/memberships", again)
    assert status == 200 and body["data"]["consent_source"] == "signup-form"
    assert body["data"]["consent_ip"] == "203.0.113.0"
    assert await db.fetchval("SELECT count(*) FROM sequence_enrollments") == 1
    # a complaint is not silently undone
    await api.put("/memberships", {**target, "status": "complained"})
    status, body = await api.put("/memberships", {**target, "status": "subscribed"})
    assert status == 409 and "complained" in body["error"]["message"]
    status, body = await api.put("/memberships", target)
    assert status == 200 and body["data"]["status"] == "complained"


async def test_put_membership_errors(api: Api, other_api: Api) -> None:
    list_id = await make_list(api)
    _, theirs = await other_api.post("/contacts", {"email": "t@example.com"})
    cases = [
        ({"list_id": 999, "contact_id": 1}, 404, "list not found"),
        ({"list_id": list_id, "contact_id": theirs["data"]["id"]}, 404, "contact not found"),
    ]
    for body, status, message in cases:
        got, answer = await api.put("/memberships", body)
        assert (got, answer["error"]["message"]) == (status, message)
    for bad in (
        {"list_id": list_id},
        {"list_id": list_id, "contact_id": 1, "contact": {"email": "x@example.com"}},
        {"list_id": list_id, "contact": {"email": "x@example.com"}, "consent_ip": "999.1.1.1"},
        {"list_id": list_id, "contact": {"email": "x@example.com"}, "status": "weird"},
        {"list_id": list_id, "contact": {"email": "not-an-email"}},
    ):
        got, answer = await api.put("/memberships", bad)
        assert got == 422, (bad, answer)
    got, answer = await api.delete(
        "/memberships", {"list_id": list_id, "contact": {"email": "t@example.com"}}
    )
    assert (got, answer["error"]["message"]) == (404, "membership not found")


async def test_membership_rate_limit_is_shared_by_web_processes(
    database_url: str, redis_url: str, api: Api, aiohttp_client: Any
) -> None:
    from tests.conftest import make_settings

    shared = make_settings(database_url, redis_url, membership_rate_limit=4)
    clients: list[TestClient] = [await aiohttp_client(create_app(shared)) for _ in range(2)]
    list_id = await make_list(api)
    body = {"list_id": list_id, "contact": {"email": "rl@example.com"}}
    statuses = []
    for i in range(6):
        response = await clients[i % 2].put(
            "/api/v1/memberships", json=body, headers={"Authorization": f"Bearer {api.key}"}
        )
        statuses.append(response.status)
        if response.status == 429:
            assert int(response.headers["Retry-After"]) >= 1
            assert response.headers["RateLimit-Remaining"] == "0"
            assert (await response.json())["error"]["code"] == "rate_limited"
        else:
            assert response.headers["RateLimit-Limit"] == "4"
    assert statuses == [201, 200, 200, 200, 429, 429]


async def test_unsubscribe_and_confirm_links(
    api: Api, run_jobs: RunJobs, settings: Settings, db: asyncpg.Connection
) -> None:
    from api.links import link
    from listmill.consent import LinkPurpose

    list_id = await make_list(api, "Double", opt_in_process="double")
    await make_sequence(api, list_id, "Welcome")
    _, body = await api.put(
        "/memberships", {"list_id": list_id, "contact": {"email": "l@example.com"}}
    )
    contact_id = body["data"]["contact_id"]
    assert body["data"]["status"] == "pending"
    confirm = urlsplit(link(settings, LinkPurpose.CONFIRM, list_id, contact_id)).path
    forged = confirm[:-2] + ("AA" if not confirm.endswith("AA") else "BB")
    assert (await api.client.get(forged)).status == 404
    response = await api.client.get(confirm)
    assert response.status == 200 and "confirmed" in await response.text()
    _, member = await api.get(f"/lists/{list_id}/members/{contact_id}")
    assert member["data"]["status"] == "confirmed"
    assert await db.fetchval("SELECT count(*) FROM sequence_enrollments") == 1

    unsubscribe = urlsplit(member["data"]["unsubscribe_url"]).path
    response = await api.client.get(unsubscribe)
    assert response.status == 200 and "<form" in await response.text()
    _, member = await api.get(f"/lists/{list_id}/members/{contact_id}")
    assert member["data"]["status"] == "confirmed"  # a GET changes nothing
    assert (await api.client.post(unsubscribe[:-1] + "x")).status == 404
    response = await api.client.post(unsubscribe, data={"List-Unsubscribe": "One-Click"})
    assert response.status == 200
    _, member = await api.get(f"/lists/{list_id}/members/{contact_id}")
    assert member["data"]["status"] == "unsubscribed"
    _, mailing_list = await api.get(f"/lists/{list_id}")
    assert mailing_list["data"]["member_count"] == 0


async def test_member_count_is_exact_and_drift_is_repaired(
    api: Api, run_jobs: RunJobs, worker_context: WorkerContext, db: asyncpg.Connection
) -> None:
    list_id = await make_list(api)
    await add(api, run_jobs, list_id, contacts=[{"email": f"n{i}@example.com"} for i in range(5)])
    contact_id = await db.fetchval("SELECT min(contact_id) FROM list_memberships")
    await api.delete(f"/contacts/{contact_id}")  # a cascade from a contact deletion
    _, body = await api.get(f"/lists/{list_id}")
    assert body["data"]["member_count"] == 4
    await db.execute("UPDATE lists SET member_count = 99")  # drift made by hand
    summary = await reconcile_member_counts(worker_context)
    assert summary == {"lists": 1, "folded": 1, "repaired": 1}
    _, body = await api.get(f"/lists/{list_id}")
    assert body["data"]["member_count"] == 4
    # the repair is a change too: the next run folds it, and finds nothing to repair
    summary = await reconcile_member_counts(worker_context)
    assert summary == {"lists": 1, "folded": 1, "repaired": 0}
    assert await db.fetchval("SELECT member_count FROM lists") == 4
    assert await db.fetchval("SELECT count(*) FROM list_member_count_changes") == 0
    _, body = await api.get(f"/lists/{list_id}")
    assert body["data"]["member_count"] == 4


async def test_member_endpoints_are_tenant_isolated(
    api: Api, other_api: Api, run_jobs: RunJobs
) -> None:
    list_id = await make_list(api)
    await add(api, run_jobs, list_id, contacts=[{"email": "iso@example.com"}])
    _, members = await api.get(f"/lists/{list_id}/members")
    contact_id = members["data"][0]["contact_id"]
    target = {"list_id": list_id, "contact_id": contact_id}
    assert (await other_api.get(f"/lists/{list_id}/members"))[0] == 404
    assert (await other_api.get(f"/lists/{list_id}/members/{contact_id}"))[0] == 404
    assert (await other_api.post(f"/lists/{list_id}/members/search", {"email": "iso@example.com"}))[
        0
    ] == 404
    assert (await other_api.post(f"/lists/{list_id}/members", {"contact_ids": [contact_id]}))[
        0
    ] == 404
    assert (await other_api.delete(f"/lists/{list_id}/members", {"contact_ids": [contact_id]}))[
        0
    ] == 404
    assert (await other_api.put("/memberships", target))[0] == 404
    assert (await other_api.delete("/memberships", target))[0] == 404
    _, member = await api.get(f"/lists/{list_id}/members/{contact_id}")
    assert member["data"]["status"] == "subscribed"


async def test_deleting_a_project_deletes_its_memberships_and_enrollments(
    api: Api, db: asyncpg.Connection
) -> None:
    """Their project_id has no foreign key (schema.sql): they go with their list or sequence
    and their contact, each of which goes with the project."""
    list_id = await make_list(api)
    await make_sequence(api, list_id, "Welcome")
    status, body = await api.put(
        "/memberships", {"list_id": list_id, "contact": {"email": "gone@example.com"}}
    )
    assert status == 201, body
    assert await db.fetchval("SELECT count(*) FROM sequence_enrollments") == 1
    await db.execute("DELETE FROM projects WHERE id = $1", api.project_id)
    assert await db.fetchval("SELECT count(*) FROM list_memberships") == 0
    assert await db.fetchval("SELECT count(*) FROM sequence_enrollments") == 0


async def test_a_lists_memberships_and_a_sequences_enrollments_go_with_it(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    """They have no foreign key to it (schema.sql): triggers do what ON DELETE did, for a
    DELETE and a TRUNCATE; and the enrollments of a job deleted (by the retention) keep no
    job, as ON DELETE SET NULL did."""
    list_id = await make_list(api)
    sequence_id = await make_sequence(api, list_id, "Welcome")
    ids = [int((await api.post("/contacts", {"email": f"m{i}@example.com"}))[1]["data"]["id"])
           for i in range(3)]  # fmt: skip
    job = await add(api, run_jobs, list_id, contact_ids=ids)
    assert job["counts"] == {"added": 3, "enrolled": 3}, job["counts"]
    enrolled_by = "SELECT count(*) FROM sequence_enrollments WHERE job_id = $1"
    assert await db.fetchval(enrolled_by, job["id"]) == 3
    await db.execute("DELETE FROM jobs WHERE id = $1", job["id"])
    assert await db.fetchval("SELECT count(job_id) FROM sequence_enrollments") == 0
    assert (await api.delete(f"/sequences/{sequence_id}"))[0] == 204
    assert await db.fetchval("SELECT count(*) FROM sequence_enrollments") == 0
    assert (await api.delete(f"/lists/{list_id}"))[0] == 204
    assert await db.fetchval("SELECT count(*) FROM list_memberships") == 0

    list_id = await make_list(api, "Again")
    await make_sequence(api, list_id, "Again")
    await add(api, run_jobs, list_id, contact_ids=ids)
    assert await db.fetchval("SELECT count(job_id) FROM sequence_enrollments") == 3
    await db.execute("TRUNCATE jobs CASCADE")
    assert await db.fetchval("SELECT count(job_id) FROM sequence_enrollments") == 0
    await db.execute("TRUNCATE sequences")
    assert await db.fetchval("SELECT count(*) FROM sequence_enrollments") == 0
    await db.execute("TRUNCATE lists")
    assert await db.fetchval("SELECT count(*) FROM list_memberships") == 0
    await db.execute("TRUNCATE lists, list_memberships")  # both named: one empties the other
