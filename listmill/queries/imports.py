"""SQL for imports: the uploaded file's chunks and the staged rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from listmill.db import Connection

STAGED_COLUMNS = (
    "job_id", "position", "row_number", "email", "email_normalized", "first_name", "last_name",
    "country", "time_zone", "data", "duplicate", "key_hash",
)  # fmt: skip


async def insert_chunk(conn: Connection, job_id: UUID, seq: int, data: bytes) -> None:
    await conn.execute(
        "INSERT INTO job_file_chunks (job_id, seq, data) VALUES ($1, $2, $3)", job_id, seq, data
    )


async def read_chunk(conn: Connection, job_id: UUID, seq: int) -> bytes | None:
    return await conn.fetchval(  # type: ignore[no-any-return]
        "SELECT data FROM job_file_chunks WHERE job_id = $1 AND seq = $2", job_id, seq
    )


async def stage_rows(conn: Connection, records: Sequence[Sequence[Any]]) -> None:
    """COPY parsed rows into the staging table (none: no round trip, 7 ms a batch)."""
    if records:
        await conn.copy_records_to_table("import_rows", records=records, columns=STAGED_COLUMNS)


async def discard_staged_after(conn: Connection, job_id: UUID, position: int) -> int:
    """Delete the rows staged past a position (see csv_import._ImportRun._parsing); how many."""
    result = await conn.execute(
        "DELETE FROM import_rows WHERE job_id = $1 AND position > $2", job_id, position
    )
    return int(result.split()[-1])


async def held_row(conn: Connection, job_id: UUID) -> tuple[str, int] | None:
    """One held row of the job, (email_normalized, key_hash): which hash staged it."""
    row = await conn.fetchrow(
        "SELECT email_normalized, key_hash FROM import_rows"
        " WHERE job_id = $1 AND key_hash IS NOT NULL LIMIT 1",
        job_id,
    )
    return None if row is None else (str(row["email_normalized"]), int(row["key_hash"]))


async def mark_duplicates(conn: Connection, job_id: UUID, key_hashes: list[int]) -> int:
    """Flag every held row of these key hashes whose email a later row repeats (the last
    row wins); rows staged already flagged (a mirror's error rows) are neither counted nor
    win. Only held rows can share an email: no other row has the key of the others."""
    result = await conn.execute(
        """
        WITH earlier AS MATERIALIZED (
            SELECT position FROM (
                SELECT position, row_number() OVER (
                    PARTITION BY email_normalized ORDER BY position DESC) AS nth
                FROM import_rows
                WHERE job_id = $1 AND key_hash = ANY($2::bigint[]) AND NOT duplicate
            ) ranked
            WHERE nth > 1
        )
        UPDATE import_rows r SET duplicate = true
        FROM earlier WHERE r.job_id = $1 AND r.position = earlier.position
        """,
        job_id,
        key_hashes,
    )
    return int(result.split()[-1])


async def held_emails(
    conn: Connection, job_id: UUID, key_hashes: list[int]
) -> list[tuple[str, int, str]]:
    """(email_normalized, row_number, email) of the winning held rows of these key hashes."""
    rows = await conn.fetch(
        """
        SELECT email_normalized, row_number, email FROM import_rows
        WHERE job_id = $1 AND key_hash = ANY($2::bigint[]) AND NOT duplicate
        ORDER BY row_number
        """,
        job_id,
        key_hashes,
    )
    return [(r["email_normalized"], r["row_number"], r["email"]) for r in rows]


async def mirror_unsubscribe(conn: Connection, project_id: int, list_id: int, job_id: UUID) -> int:
    """Unsubscribe (never delete) the list's members whose email is not in the file: none if
    no row of the file names a valid email (a broken export never empties a list)."""
    result = await conn.execute(
        """
        UPDATE list_memberships m
        SET status = 'unsubscribed', unsubscribed_at = now(), updated_at = now()
        WHERE m.list_id = $2 AND m.status IN ('pending', 'subscribed', 'confirmed')
          AND EXISTS (SELECT 1 FROM import_rows WHERE job_id = $3)
          AND NOT EXISTS (
              SELECT 1 FROM contacts c JOIN import_rows r
                ON r.job_id = $3 AND r.email_normalized = c.email_normalized
              WHERE c.id = m.contact_id AND c.project_id = $1
          )
        """,
        project_id,
        list_id,
        job_id,
    )
    return int(result.split()[-1])


async def discard_staging(conn: Connection, job_id: UUID, file_retention_seconds: int) -> None:
    """An ended import's staged rows, and its file unless a retention keeps it (the retention
    cron deletes it then)."""
    await conn.execute("DELETE FROM import_rows WHERE job_id = $1", job_id)
    if file_retention_seconds == 0:
        await conn.execute("DELETE FROM job_file_chunks WHERE job_id = $1", job_id)
