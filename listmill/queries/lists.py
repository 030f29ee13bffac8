"""SQL for lists."""

from __future__ import annotations

from typing import Any

import asyncpg

from listmill.db import Connection
from listmill.errors import Conflict
from listmill.records import MailingList

# a list's member count: its folded count and the changes since (schema.sql)
MEMBER_COUNT = """
    member_count + COALESCE((SELECT sum(c.delta) FROM list_member_count_changes c
                             WHERE c.list_id = lists.id), 0) AS member_count
"""
COLUMNS = f"""
    id, name, description, opt_in_process, status, {MEMBER_COUNT}, created_at, updated_at
"""
DUPLICATE_NAME = "a list with this name already exists"


async def list_lists(
    conn: Connection, project_id: int, *, status: str | None, after_id: int | None, limit: int
) -> list[MailingList]:
    rows = await conn.fetch(
        f"""
        SELECT {COLUMNS} FROM lists
        WHERE project_id = $1 AND ($2::text IS NULL OR status = $2) AND id > $3
        ORDER BY id LIMIT $4
        """,
        project_id,
        status,
        after_id or 0,
        limit + 1,
    )
    return [MailingList.of(r) for r in rows]


async def count_lists(conn: Connection, project_id: int, *, status: str | None) -> int:
    total = await conn.fetchval(
        "SELECT count(*) FROM lists WHERE project_id = $1 AND ($2::text IS NULL OR status = $2)",
        project_id,
        status,
    )
    return int(total)


async def get_list(conn: Connection, project_id: int, list_id: int) -> MailingList | None:
    row = await conn.fetchrow(
        f"SELECT {COLUMNS} FROM lists WHERE project_id = $1 AND id = $2", project_id, list_id
    )
    return MailingList.of(row) if row else None


async def insert_list(
    conn: Connection, project_id: int, name: str, description: str | None, opt_in_process: str
) -> MailingList:
    try:
        row = await conn.fetchrow(
            f"""
            INSERT INTO lists (project_id, name, description, opt_in_process)
            VALUES ($1, $2, $3, $4) RETURNING {COLUMNS}
            """,
            project_id,
            name,
            description,
            opt_in_process,
        )
    except asyncpg.UniqueViolationError as exc:
        raise Conflict(DUPLICATE_NAME) from exc
    return MailingList.of(row)


async def update_list(
    conn: Connection, project_id: int, list_id: int, changes: dict[str, Any]
) -> MailingList | None:
    if not changes:
        return await get_list(conn, project_id, list_id)
    columns = list(changes)
    assignments = ", ".join(f"{c} = ${i + 3}" for i, c in enumerate(columns))
    try:
        row = await conn.fetchrow(
            f"""
            UPDATE lists SET {assignments}, updated_at = now()
            WHERE project_id = $1 AND id = $2 RETURNING {COLUMNS}
            """,
            project_id,
            list_id,
            *changes.values(),
        )
    except asyncpg.UniqueViolationError as exc:
        raise Conflict(DUPLICATE_NAME) from exc
    return MailingList.of(row) if row else None


async def delete_list(conn: Connection, project_id: int, list_id: int) -> bool:
    status = await conn.execute(
        "DELETE FROM lists WHERE project_id = $1 AND id = $2", project_id, list_id
    )
    return bool(status == "DELETE 1")


async def project_of(conn: Connection, list_id: int) -> int | None:
    """The project that owns a list (for public links, which carry no key)."""
    project_id = await conn.fetchval("SELECT project_id FROM lists WHERE id = $1", list_id)
    return int(project_id) if project_id is not None else None
