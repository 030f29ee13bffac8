"""A re-import compares its rows with the project's contacts as it began (knowncontacts):
an unchanged row is told without asking Postgres, a new one is COPYed, only the others are
merged; the counts and the contacts are those of the merge of every row."""

from __future__ import annotations

from typing import Any

import asyncpg
import pyarrow as pa
import pytest

from listmill.csvcolumns import Block, columns_of, jsonb_string, jsonb_text
from listmill.csvimport import CsvReader, read_header
from listmill.db import create_pool
from listmill.keyhash import text_hashes
from listmill.knowncontacts import read_known, worth_reading
from listmill.queries import contacts as contact_queries
from listmill.settings import Settings
from tests.conftest import Api, RunJobs, wait_for_job
from tests.integration.test_import import run_import
from worker.jobs import csv_import

# custom columns out of jsonb's key order, one of them not ASCII; values with what COPY's
# text format and JSON escape (backslash, quote, tab inside quotes), blanks, accents
FILE = (
    "email\tfirst_name\tlast_name\tZone\tcountry\tb\tÄrger\n"
    "ann@example.com\tAnn\tLee\tEU\tGB\t1\tja\n"
    'Bob@Example.com\tBo\\b\t"O""Neil"\t\tUS\t\t"tab\there"\n'
    "cy@example.com\t\t\tAPAC\t\t2\t\n"
    "dee@example.com\tDée\tSmith\tEU\tFR\t3\tnein\n"
    "eve@example.com\tEve\t\t\t\t\t\n"
).encode()


def fast_lines(data: bytes) -> list[str]:
    header = read_header(data)
    lines: list[str] = []
    for block in CsvReader(header, simple=True).feed(data):
        assert isinstance(block, Block)
        lines += columns_of(header, block).fast_contacts(1).lines().to_pylist()
    return lines


async def project_lines(db: asyncpg.Connection, project_id: int) -> list[str]:
    """The lines copy_lines gives: a kept hash and the email, or \\N and the line."""
    pieces: list[bytes] = []

    async def take(piece: bytes) -> None:
        pieces.append(piece)

    await contact_queries.copy_lines(db, project_id, take)
    return b"".join(pieces).decode().splitlines()


async def kept_hashes(db: asyncpg.Connection) -> dict[str, int | None]:
    rows = await db.fetch("SELECT email_normalized, line_hash FROM contacts")
    return {r["email_normalized"]: r["line_hash"] for r in rows}


async def contacts(db: asyncpg.Connection) -> list[tuple[Any, ...]]:
    rows = await db.fetch(
        "SELECT email, first_name, last_name, country, data::text AS data FROM contacts"
        " ORDER BY email_normalized"
    )
    return [tuple(r) for r in rows]


async def test_a_fast_rows_line_is_the_line_postgres_gives_for_its_contact(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    """And the import keeps the hash of that line with the contact (schema.sql, line_hash):
    the same hash a later import makes of the line when none was kept."""
    job = await run_import(api, run_jobs, FILE)
    assert job["counts"] == {"created": 5}, job
    kept = await kept_hashes(db)
    assert None not in kept.values()
    given = await project_lines(db, api.project_id)
    assert sorted(line.split("\t")[:2] for line in given) == sorted(
        [f"\\\\x{h & (1 << 64) - 1:016x}", email] for email, h in kept.items() if h is not None
    )
    await db.execute("UPDATE contacts SET line_hash = NULL")
    lines = await project_lines(db, api.project_id)
    assert all(line.startswith("\\N\t") for line in lines)
    lines = [line.removeprefix("\\N\t") for line in lines]
    assert sorted(fast_lines(FILE)) == sorted(lines)
    emails = [line.split("\t")[0] for line in lines]
    made = dict(zip(emails, text_hashes(pa.array(lines)).tolist(), strict=True))
    assert kept == made


async def test_jsonb_text_is_how_postgres_writes_a_jsonb(db: asyncpg.Connection) -> None:
    texts = ["", "plain", 'quo"te', "back\\slash", "é日🎉", *map(chr, range(1, 32)), "\x7f"]
    for text in texts:
        assert jsonb_string(text) == await db.fetchval("SELECT to_jsonb($1::text)::text", text)
    data = {"b": "1", "aa": "2", "a": "x", "é": "v", "zz": "", "ä": "\t"}
    assert jsonb_text(data) == await db.fetchval("SELECT $1::jsonb::text", jsonb_text(data))
    assert jsonb_text({}) == "{}"


@pytest.mark.parametrize("mode", ["upsert", "fill_blanks"])
async def test_a_reimport_counts_and_writes_as_the_merge_of_every_row(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection, mode: str
) -> None:
    await run_import(api, run_jobs, FILE)
    first = await contacts(db)
    # since: Ann's first name edited, Dee deleted, Eve given a last name the file leaves blank
    found = await db.fetch("SELECT id, email_normalized FROM contacts")
    ids = {r["email_normalized"]: r["id"] for r in found}
    assert (await api.patch(f"/contacts/{ids['ann@example.com']}", {"first_name": "X"}))[0] == 200
    assert (await api.delete(f"/contacts/{ids['dee@example.com']}"))[0] in (200, 204)
    assert (await api.patch(f"/contacts/{ids['eve@example.com']}", {"last_name": "E"}))[0] == 200
    dry = await run_import(api, run_jobs, FILE, mode=mode, dry_run=True)
    job = await run_import(api, run_jobs, FILE, mode=mode)
    # Ann's name back (upsert) or kept (fill_blanks: it is not blank); Dee made again; Eve's
    # last name kept (a blank given value never overwrites); Bob and Cy unchanged
    expected = {"created": 1, "updated": 1, "unchanged": 3} if mode == "upsert" else {
        "created": 1, "unchanged": 4
    }  # fmt: skip
    assert job["counts"] == dry["counts"] == expected, job
    after = {row[0]: row for row in await contacts(db)}
    before = {row[0]: row for row in first}
    assert after["ann@example.com"][1] == ("Ann" if mode == "upsert" else "X")
    assert after["dee@example.com"] == before["dee@example.com"]
    assert after["eve@example.com"][2] == "E"
    assert after["Bob@Example.com"] == before["Bob@Example.com"]


async def test_a_kept_hash_goes_with_any_change_of_the_line(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    """A hash kept that no longer fits its contact would have the row that restores it
    counted unchanged, and not written: every change of a line's columns clears it (the
    merges, PATCH: test_a_reimport_counts_and_writes_as_the_merge_of_every_row; an UPDATE
    from outside the service: the trigger), and a status change, not in the line, keeps it."""
    await run_import(api, run_jobs, FILE)
    await db.execute("UPDATE contacts SET first_name = 'Zed' WHERE email = 'ann@example.com'")
    await db.execute("UPDATE contacts SET status = 'unsubscribed' WHERE email = 'cy@example.com'")
    _, body = await api.post(
        "/contacts/bulk-upsert", {"contacts": [{"email": "dee@example.com", "last_name": "O"}]}
    )
    await run_jobs()
    assert (await wait_for_job(api, body["data"]["id"]))["counts"] == {"updated": 1}
    kept = await kept_hashes(db)
    assert kept["ann@example.com"] is None and kept["dee@example.com"] is None
    assert None not in [kept[e] for e in ("bob@example.com", "cy@example.com", "eve@example.com")]
    job = await run_import(api, run_jobs, FILE)
    assert job["counts"] == {"updated": 2, "unchanged": 3}, job
    names = dict(await db.fetch("SELECT email, coalesce(first_name, last_name) FROM contacts"))
    assert names["ann@example.com"] == "Ann" and names["dee@example.com"] == "Dée"
    assert await db.fetchval("SELECT last_name FROM contacts WHERE email = 'dee@example.com'") == (
        "Smith"
    )
    again = await run_import(api, run_jobs, FILE)  # the lines of the hashes cleared are read
    assert again["counts"] == {"unchanged": 5}, again


async def test_a_contact_made_meanwhile_is_merged_not_copied(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone makes one of the file's new contacts after the import read the project's: the
    batch's COPY of its new rows fails, and they are merged instead."""
    await db.execute(
        "INSERT INTO contacts (project_id, email, email_normalized, first_name)"
        " VALUES ($1, 'old@example.com', 'old@example.com', 'Old')",
        api.project_id,
    )

    async def read_then_insert(conn: Any, project_id: int, expected: int) -> Any:
        known = await read_known(conn, project_id, expected)
        await db.execute(
            "INSERT INTO contacts (project_id, email, email_normalized, first_name)"
            " VALUES ($1, 'cy@example.com', 'cy@example.com', 'Someone')",
            project_id,
        )
        return known

    monkeypatch.setattr(csv_import, "read_known", read_then_insert)
    job = await run_import(api, run_jobs, FILE)
    assert job["status"] == "succeeded", job
    assert job["counts"] == {"created": 4, "updated": 1}, job
    cy = await db.fetchrow("SELECT first_name, data::text AS data FROM contacts WHERE email = $1",
                           "cy@example.com")  # fmt: skip
    assert cy is not None and cy["first_name"] == "Someone"  # the file's is blank: kept
    assert cy["data"] == '{"b": "2", "Zone": "APAC"}'


def test_the_contacts_are_read_only_for_a_file_large_next_to_them() -> None:
    assert not worth_reading(0, 1_000)
    assert worth_reading(4_000, 1_000)
    assert not worth_reading(4_001, 1_000)


async def test_the_contacts_read_are_the_same_however_many_were_expected(
    api: Api, db: asyncpg.Connection
) -> None:
    await db.execute(
        "INSERT INTO contacts (project_id, email, email_normalized, first_name)"
        " SELECT $1, 'u' || i || '@x.io', 'u' || i || '@x.io', 'U' || i"
        " FROM generate_series(1, 3000) i",
        api.project_id,
    )
    few = await read_known(db, api.project_id, 10)  # the arrays grow
    enough = await read_known(db, api.project_id, 3000)
    assert len(few) == len(enough) == 3000
    assert few.keys.tolist() == enough.keys.tolist()
    assert few.lines.tolist() == enough.lines.tolist()


async def test_a_patch_keeps_the_hash_unless_it_changes_the_line(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    """PATCH leaves the hash to the trigger: a status or an email's case (neither in the line)
    keeps it, a name clears it."""
    await run_import(api, run_jobs, FILE)
    ids = dict(await db.fetch("SELECT email_normalized, id FROM contacts"))
    for email, change in [
        ("ann@example.com", {"status": "unsubscribed"}),
        ("cy@example.com", {"email": "CY@example.com"}),
        ("eve@example.com", {"first_name": "Evie"}),
    ]:
        assert (await api.patch(f"/contacts/{ids[email]}", change))[0] == 200
    kept = await kept_hashes(db)
    assert kept["ann@example.com"] is not None and kept["cy@example.com"] is not None
    assert kept["eve@example.com"] is None
    job = await run_import(api, run_jobs, FILE)
    assert job["counts"] == {"updated": 1, "unchanged": 4}, job


async def test_the_pool_reads_kept_hashes_in_hex_whatever_the_database_says(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection, settings: Settings
) -> None:
    """copy_lines' hashes are parsed as bytea's hex output: under a database's 'escape' every
    row would seem new (and the COPY of them fail into a merge of the whole batch)."""
    await run_import(api, run_jobs, FILE)
    await db.execute(f"ALTER DATABASE \"{await db.fetchval('SELECT current_database()')}\""
                     " SET bytea_output = 'escape'")  # fmt: skip
    pool = await create_pool(settings)
    pieces: list[bytes] = []

    async def take(piece: bytes) -> None:
        pieces.append(piece)

    try:
        async with pool.acquire() as conn:
            await contact_queries.copy_lines(conn, api.project_id, take)
    finally:
        await pool.close()
    lines = b"".join(pieces).decode().splitlines()
    assert len(lines) == 5 and all(line.startswith("\\\\x") for line in lines), lines
