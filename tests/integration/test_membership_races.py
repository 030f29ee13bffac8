"""Membership writes that race: another transaction changes the same list or contacts while a
job is between its statements. Each test holds the other transaction at the moment that
mattered (a row lock) and asserts the state some serial order would give."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import pytest

from listmill.queries import memberships as member_queries
from tests.conftest import Api, RunJobs, wait_for_job
from tests.integration.test_import import upload
from tests.integration.test_members import make_list, make_sequence

T = TypeVar("T")
MEMBER = """
    INSERT INTO list_memberships AS m (list_id, contact_id, project_id, status)
    VALUES ($1, $2, $3, $4)
    ON CONFLICT (list_id, contact_id) DO UPDATE SET status = EXCLUDED.status
"""


async def contact_ids(api: Api, *emails: str) -> list[int]:
    ids = []
    for email in emails:
        status, body = await api.post("/contacts", {"email": email})
        assert status == 201, body
        ids.append(int(body["data"]["id"]))
    return ids


async def waiting_for_a_lock(db: asyncpg.Connection, count: int = 1) -> None:
    """Until ``count`` other sessions of this database wait for a lock."""
    for _ in range(500):
        waiting = await db.fetchval(
            """
            SELECT count(*) FROM pg_stat_activity
            WHERE datname = current_database() AND wait_event_type = 'Lock'
            """
        )
        if waiting >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("nobody waited for a lock")


async def test_two_writers_of_one_lists_memberships_do_not_deadlock(
    api: Api, db: asyncpg.Connection, database_url: str
) -> None:
    """A mirror import's last batch joins members (the count changes) and then unsubscribes
    the members its file lacks; a bulk subscribe of one of those, meanwhile, writes its
    membership and then its count change. When the count lived in the list's row alone, each
    waited for the other: a deadlock, and a job retried or failed."""
    list_id = await make_list(api)
    joining, missing = await contact_ids(api, "joins@example.com", "missing@example.com")
    await db.execute(MEMBER, list_id, missing, api.project_id, "unsubscribed")
    mirror, bulk = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        async with mirror.transaction():
            await mirror.execute(MEMBER, list_id, joining, api.project_id, "subscribed")
            async with bulk.transaction():
                # (it waited here for the mirror's commit, which waited for it below)
                await asyncio.wait_for(
                    bulk.execute(MEMBER, list_id, missing, api.project_id, "subscribed"), 5
                )
                unsubscribe = asyncio.ensure_future(
                    mirror.execute(
                        """
                        UPDATE list_memberships SET status = 'unsubscribed'
                        WHERE list_id = $1 AND contact_id = $2
                        """,
                        list_id,
                        missing,
                    )
                )
                await waiting_for_a_lock(db)  # for the bulk subscribe's commit
            assert await unsubscribe == "UPDATE 1"
    finally:
        await mirror.close()
        await bulk.close()
    _, body = await api.get(f"/lists/{list_id}")
    assert body["data"]["member_count"] == 1  # joins; missing, unsubscribed after its subscribe


async def changed_meanwhile(
    db: asyncpg.Connection,
    database_url: str,
    contact_id: int,
    change: str,
    work: Callable[[], Awaitable[T]],
) -> T:
    """Run ``work`` while another transaction holds the contact (FOR UPDATE, as a deletion
    does); once ``work`` waits for it, that transaction deletes or unsubscribes the contact
    and commits. What ``work`` gave."""
    other = await asyncpg.connect(database_url)
    try:
        async with other.transaction():
            await other.execute("SELECT FROM contacts WHERE id = $1 FOR UPDATE", contact_id)
            running = asyncio.ensure_future(work())
            await waiting_for_a_lock(db)
            if change == "delete":
                await other.execute("DELETE FROM contacts WHERE id = $1", contact_id)
            else:
                await other.execute(
                    "UPDATE contacts SET status = 'unsubscribed' WHERE id = $1", contact_id
                )
        return await running
    finally:
        await other.close()


async def submit_joining(api: Api, kind: str, list_id: int, contact_id: int, email: str) -> str:
    """A job that joins one contact to the list: its id."""
    if kind == "import":
        status, body = await upload(api, f"email\n{email}\n".encode(), list_id=list_id)
    elif kind == "add_members":
        status, body = await api.post(f"/lists/{list_id}/members", {"contact_ids": [contact_id]})
    else:
        body_ = {"contact_ids": [contact_id], "list_id": list_id}
        status, body = await api.post("/contacts/bulk-subscribe", body_)
    assert status == 202, body
    return str(body["data"]["id"])


@pytest.mark.parametrize("kind", ["import", "add_members", "bulk_subscribe"])
@pytest.mark.parametrize("change", ["delete", "unsubscribe"])
async def test_a_contact_changed_while_a_job_joins_it(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection, database_url: str, kind: str, change: str
) -> None:
    """Another transaction holds the contact (FOR UPDATE, as a deletion does) while the job
    reads it, then deletes or unsubscribes it and commits while the job's membership insert
    waits for it. The deleted contact failed the job (the membership's foreign key); now it
    is an error row. The unsubscribed one became a subscribed member never enrolled (the
    enrollment read its status again), a state no order of the two gives; now the status the
    job read decides, and the unsubscribe comes after the joining: member, enrolled."""
    list_id = await make_list(api)
    await make_sequence(api, list_id, "Welcome")
    email = "racer@example.com"
    (contact_id,) = await contact_ids(api, email)
    job_id = await submit_joining(api, kind, list_id, contact_id, email)
    await changed_meanwhile(db, database_url, contact_id, change, run_jobs)
    job: dict[str, Any] = await wait_for_job(api, job_id)
    assert job["status"] == "succeeded", job
    _, errors = await api.get(f"/jobs/{job_id}/errors")
    _, body = await api.get(f"/lists/{list_id}")
    memberships = await db.fetchval("SELECT count(*) FROM list_memberships")
    enrollments = await db.fetchval("SELECT count(*) FROM sequence_enrollments")
    if change == "delete":
        assert job["counts"].get("not_found") == 1, job["counts"]
        assert [e["code"] for e in errors["data"]] == ["not_found"]
        assert (memberships, enrollments, body["data"]["member_count"]) == (0, 0, 0)
    else:
        joined = "subscribed" if kind == "bulk_subscribe" else "added"
        assert job["counts"][joined] == job["counts"]["enrolled"] == 1, job["counts"]
        assert errors["data"] == []
        assert (memberships, enrollments, body["data"]["member_count"]) == (1, 1, 1)
        assert await db.fetchval("SELECT status FROM contacts") == "unsubscribed"


@pytest.mark.parametrize("kind", ["import", "add_members", "bulk_subscribe"])
async def test_a_job_joins_beside_an_update_of_its_contact_without_waiting(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection, database_url: str, kind: str
) -> None:
    """An update of the contact (an unsubscribe, another import's merge) that has not
    committed does not hold the job up: the status it read decides, and the update comes
    after the joining, as if it had begun later. Member and enrolled, then unsubscribed."""
    list_id = await make_list(api)
    await make_sequence(api, list_id, "Welcome")
    email = "racer@example.com"
    (contact_id,) = await contact_ids(api, email)
    other = await asyncpg.connect(database_url)
    try:
        async with other.transaction():
            await other.execute(
                "UPDATE contacts SET status = 'unsubscribed' WHERE id = $1", contact_id
            )
            job_id = await submit_joining(api, kind, list_id, contact_id, email)
            await asyncio.wait_for(run_jobs(), 30)
            job: dict[str, Any] = await wait_for_job(api, job_id)
    finally:
        await other.close()
    assert job["status"] == "succeeded", job
    assert job["counts"]["enrolled"] == 1, job["counts"]
    assert await db.fetchval("SELECT status FROM contacts") == "unsubscribed"
    assert await db.fetchval("SELECT status FROM list_memberships") == "subscribed"
    assert await db.fetchval("SELECT count(*) FROM sequence_enrollments") == 1


@pytest.mark.parametrize("change", ["delete", "unsubscribe"])
async def test_put_membership_waits_for_a_change_of_its_contact(
    api: Api, db: asyncpg.Connection, database_url: str, change: str
) -> None:
    """PUT /memberships, the same race: the contact gone is a 404, unsubscribed a 409."""
    list_id = await make_list(api)
    (contact_id,) = await contact_ids(api, "racer@example.com")
    body = {"list_id": list_id, "contact_id": contact_id}
    status, reply = await changed_meanwhile(
        db, database_url, contact_id, change, lambda: api.put("/memberships", body)
    )
    assert status == (404 if change == "delete" else 409), reply
    assert await db.fetchval("SELECT count(*) FROM list_memberships") == 0


async def test_a_mirror_import_sees_a_bulk_subscribe_committed_meanwhile_whole(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection, database_url: str
) -> None:
    """A bulk subscribe of two contacts the file lacks, one a subscribed member already (its
    row locked, unchanged) and one new, commits while the mirror import's last batch is under
    way. The mirror's unsubscribe saw the member (it waited for its row) but not the one
    inserted: the bulk subscribe was split in two, one contact unsubscribed as if after it
    and one subscribed as if before. Now the mirror waits for it before its batch writes a
    membership, and unsubscribes both."""
    list_id = await make_list(api)
    kept, existing, new = await contact_ids(
        api, "kept@example.com", "existing@example.com", "new@example.com"
    )
    await db.execute(MEMBER, list_id, existing, api.project_id, "subscribed")
    status, body = await upload(api, b"email\nkept@example.com\n", list_id=list_id, mode="mirror")
    assert status == 202, body
    bulk = await asyncpg.connect(database_url)
    try:
        async with bulk.transaction():
            await member_queries.add_members(
                bulk, api.project_id, list_id, [existing, new],
                new_status="subscribed", requested_status="subscribed", source="api",
            )  # fmt: skip
            running = asyncio.ensure_future(run_jobs())
            await waiting_for_a_lock(db)
        await running
    finally:
        await bulk.close()
    job = await wait_for_job(api, body["data"]["id"])
    assert job["counts"]["unsubscribed"] == 2, job["counts"]
    statuses = dict(await db.fetch("SELECT contact_id, status FROM list_memberships"))
    assert statuses == {kept: "subscribed", existing: "unsubscribed", new: "unsubscribed"}
    _, answer = await api.get(f"/lists/{list_id}")
    assert answer["data"]["member_count"] == 1


@pytest.mark.parametrize("kind", ["import", "add_members", "bulk_subscribe"])
@pytest.mark.parametrize("deleted", ["list", "sequence"])
async def test_a_list_or_sequence_deleted_while_a_job_joins_leaves_nothing_of_it(
    api: Api,
    run_jobs: RunJobs,
    db: asyncpg.Connection,
    database_url: str,
    kind: str,
    deleted: str,
) -> None:
    """Memberships have no foreign key to their list, nor enrollments to their sequence
    (schema.sql): a job takes the list's row and the sequences' once, as the checks did per
    row. Another transaction deletes the one or the other (its trigger deletes what it has
    of it) and commits while the job waits for that row. The list gone fails the job with a
    message that says so; the sequence gone enrolls nobody. Neither leaves a row behind."""
    list_id = await make_list(api)
    sequence_id = await make_sequence(api, list_id, "Welcome")
    email = "racer@example.com"
    (contact_id,) = await contact_ids(api, email)
    job_id = await submit_joining(api, kind, list_id, contact_id, email)
    table, row = ("lists", list_id) if deleted == "list" else ("sequences", sequence_id)
    other = await asyncpg.connect(database_url)
    try:
        async with other.transaction():
            await other.execute(f"DELETE FROM {table} WHERE id = $1", row)
            running = asyncio.ensure_future(run_jobs())
            await waiting_for_a_lock(db)
        await asyncio.wait_for(running, 30)
    finally:
        await other.close()
    job: dict[str, Any] = await wait_for_job(api, job_id)
    memberships = await db.fetchval("SELECT count(*) FROM list_memberships")
    enrollments = await db.fetchval("SELECT count(*) FROM sequence_enrollments")
    if deleted == "list":
        assert job["status"] == "failed", job
        assert job["error"] == f"NotFound: {member_queries.LIST_DELETED}"
        assert (memberships, enrollments) == (0, 0)
    else:
        assert job["status"] == "succeeded", job
        assert "enrolled" not in job["counts"], job["counts"]
        assert (memberships, enrollments) == (1, 0)


async def test_put_membership_into_a_list_deleted_meanwhile_is_a_404(
    api: Api, db: asyncpg.Connection, database_url: str
) -> None:
    """The same race for PUT /memberships: the list it read is deleted before it joins."""
    list_id = await make_list(api)
    (contact_id,) = await contact_ids(api, "racer@example.com")
    other = await asyncpg.connect(database_url)
    try:
        async with other.transaction():
            await other.execute("DELETE FROM lists WHERE id = $1", list_id)
            put = asyncio.ensure_future(
                api.put("/memberships", {"list_id": list_id, "contact_id": contact_id})
            )
            await waiting_for_a_lock(db)
        status, body = await asyncio.wait_for(put, 30)
    finally:
        await other.close()
    assert status == 404, body
    assert body["error"]["message"] == member_queries.LIST_DELETED
    assert await db.fetchval("SELECT count(*) FROM list_memberships") == 0


@pytest.fixture
async def repeatable_read(database_url: str) -> None:
    """The test's database runs REPEATABLE READ by default (before the web's pool connects)."""
    conn = await asyncpg.connect(database_url)
    try:
        name = await conn.fetchval("SELECT current_database()")
        await conn.execute(
            f"ALTER DATABASE \"{name}\" SET default_transaction_isolation = 'repeatable read'"
        )
    finally:
        await conn.close()


@pytest.mark.parametrize("deleted", ["list", "sequence"])
async def test_a_list_or_sequence_deleted_after_a_job_joined_leaves_nothing_of_it(
    repeatable_read: None, api: Api, db: asyncpg.Connection, database_url: str, deleted: str
) -> None:
    """The other order: a writer has joined a contact to the list and enrolled it (it holds
    the list's row and the sequence's, FOR KEY SHARE) when DELETE /lists or /sequences comes;
    the deletion waits, and its trigger deletes what the writer committed. In a database
    whose default isolation is REPEATABLE READ too: under it the trigger would look with the
    snapshot the deletion began with, before the writer's commit, and leave its rows behind
    (the foreign keys these tables had raised a serialization error instead); the service's
    connections run READ COMMITTED whatever the database says (listmill.db.create_pool).
    (A list's deletion leaves its sequence and that sequence's enrollments.)"""
    assert await db.fetchval("SHOW transaction_isolation") == "repeatable read"
    list_id = await make_list(api)
    sequence_id = await make_sequence(api, list_id, "Welcome")
    (contact_id,) = await contact_ids(api, "racer@example.com")
    writer = await asyncpg.connect(database_url)
    try:
        async with writer.transaction():
            await member_queries.add_members(
                writer, api.project_id, list_id, [contact_id],
                new_status="subscribed", requested_status="subscribed", source="api",
            )  # fmt: skip
            enrolled = await member_queries.enroll_in_list_sequences(
                writer, api.project_id, list_id, [contact_id], None
            )
            assert enrolled == 1
            path = f"/lists/{list_id}" if deleted == "list" else f"/sequences/{sequence_id}"
            deletion = asyncio.ensure_future(api.delete(path))
            await waiting_for_a_lock(db)
        status, body = await asyncio.wait_for(deletion, 30)
    finally:
        await writer.close()
    assert status == 204, body
    memberships = await db.fetchval("SELECT count(*) FROM list_memberships")
    enrollments = await db.fetchval("SELECT count(*) FROM sequence_enrollments")
    assert (memberships, enrollments) == ((0, 1) if deleted == "list" else (1, 0))
