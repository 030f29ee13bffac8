"""`listmill migrate` (apply_schema): a text applied before is not applied again, so a deploy's
migrate takes no lock that would stop the running jobs' writes; a new text is applied."""

from __future__ import annotations

import asyncio

import asyncpg

from listmill.cli import _parser
from listmill.db import apply_schema


async def test_a_migrate_with_nothing_new_does_not_wait_for_running_writes(
    database_url: str,
) -> None:
    """A transaction that writes contacts and import_rows (as an import's batch does) stays
    open while migrate runs: migrate ends at once, without a lock on either table."""
    writer = await asyncpg.connect(database_url)
    try:
        async with writer.transaction():
            await writer.execute("LOCK TABLE contacts, import_rows IN ROW EXCLUSIVE MODE")
            applied = await asyncio.wait_for(apply_schema(database_url), timeout=10)
            assert applied is False
            locks = await writer.fetchval(
                "SELECT count(*) FROM pg_locks WHERE relation = 'contacts'::regclass"
                " AND pid <> pg_backend_pid()"
            )
            assert locks == 0
    finally:
        await writer.close()


async def test_a_schema_text_not_applied_before_is_applied_and_recorded(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("DELETE FROM schema_applied")
        await conn.execute("DROP INDEX contacts_project_id")  # as a release before it lacked
        assert await apply_schema(database_url) is True
        index = await conn.fetchval("SELECT to_regclass('contacts_project_id')::text")
        assert index == "contacts_project_id"
        assert await conn.fetchval("SELECT count(*) FROM schema_applied") == 1
        assert await apply_schema(database_url) is False
    finally:
        await conn.close()


async def test_a_database_made_before_schema_applied_is_migrated(database_url: str) -> None:
    """An install of a release before the digest: its first migrate applies the text."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("DROP TABLE schema_applied")
        assert await apply_schema(database_url) is True
        assert await conn.fetchval("SELECT count(*) FROM schema_applied") == 1
    finally:
        await conn.close()


async def test_force_applies_the_text_again_to_repair_a_hand_edit(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("DROP INDEX contacts_project_id")  # by hand: the digest is current
        assert await apply_schema(database_url) is False
        assert await conn.fetchval("SELECT to_regclass('contacts_project_id')") is None
        assert await apply_schema(database_url, force=True) is True
        assert await conn.fetchval("SELECT to_regclass('contacts_project_id')::text") is not None
    finally:
        await conn.close()


def test_migrate_takes_force() -> None:
    assert _parser().parse_args(["migrate", "--force"]).force is True
    assert _parser().parse_args(["migrate"]).force is False
