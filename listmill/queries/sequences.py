"""SQL for sequences and their enrollments."""

from __future__ import annotations

from typing import Any

from listmill.db import Connection
from listmill.records import Enrollment, Sequence

COLUMNS = "id, name, status, trigger_config, created_at, updated_at"


async def list_sequences(
    conn: Connection, project_id: int, *, after_id: int | None, limit: int
) -> list[Sequence]:
    rows = await conn.fetch(
        f"""
        SELECT {COLUMNS} FROM sequences WHERE project_id = $1 AND id > $2 ORDER BY id LIMIT $3
        """,
        project_id,
        after_id or 0,
        limit + 1,
    )
    return [Sequence.of(r) for r in rows]


async def count_sequences(conn: Connection, project_id: int) -> int:
    total = await conn.fetchval("SELECT count(*) FROM sequences WHERE project_id = $1", project_id)
    return int(total)


async def get_sequence(conn: Connection, project_id: int, sequence_id: int) -> Sequence | None:
    row = await conn.fetchrow(
        f"SELECT {COLUMNS} FROM sequences WHERE project_id = $1 AND id = $2",
        project_id,
        sequence_id,
    )
    return Sequence.of(row) if row else None


async def insert_sequence(
    conn: Connection, project_id: int, name: str, status: str, trigger_config: dict[str, Any]
) -> Sequence:
    row = await conn.fetchrow(
        f"""
        INSERT INTO sequences (project_id, name, status, trigger_config)
        VALUES ($1, $2, $3, $4) RETURNING {COLUMNS}
        """,
        project_id,
        name,
        status,
        trigger_config,
    )
    return Sequence.of(row)


async def update_sequence(
    conn: Connection, project_id: int, sequence_id: int, changes: dict[str, Any]
) -> Sequence | None:
    if not changes:
        return await get_sequence(conn, project_id, sequence_id)
    columns = list(changes)
    assignments = ", ".join(f"{c} = ${i + 3}" for i, c in enumerate(columns))
    row = await conn.fetchrow(
        f"""
        UPDATE sequences SET {assignments}, updated_at = now()
        WHERE project_id = $1 AND id = $2 RETURNING {COLUMNS}
        """,
        project_id,
        sequence_id,
        *changes.values(),
    )
    return Sequence.of(row) if row else None


async def delete_sequence(conn: Connection, project_id: int, sequence_id: int) -> bool:
    status = await conn.execute(
        "DELETE FROM sequences WHERE project_id = $1 AND id = $2", project_id, sequence_id
    )
    return bool(status == "DELETE 1")


async def list_enrollments(
    conn: Connection, project_id: int, sequence_id: int, *, after_id: int | None, limit: int
) -> list[Enrollment]:
    rows = await conn.fetch(
        """
        SELECT sequence_id, contact_id, status, enrolled_at, job_id FROM sequence_enrollments
        WHERE project_id = $1 AND sequence_id = $2 AND contact_id > $3
        ORDER BY contact_id LIMIT $4
        """,
        project_id,
        sequence_id,
        after_id or 0,
        limit + 1,
    )
    return [Enrollment.of(r) for r in rows]
