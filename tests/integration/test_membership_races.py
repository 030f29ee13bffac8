"""Membership writes that race: another transaction changes the same list or contacts while a
job is between its statements. Each test holds the other transaction at the moment that
mattered (a row lock) and asserts the state some serial order would give."""

from __future__ import annotations

import asyncio

import asyncpg

from tests.conftest import Api
from tests.integration.test_members import make_list

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

