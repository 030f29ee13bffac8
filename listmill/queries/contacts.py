"""SQL for contacts: reads, the single-contact writes, and the set-based merge."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import asyncpg

from listmill.db import Connection, fetch_planned
from listmill.errors import Conflict
from listmill.records import Contact

COLUMNS = (
    "id, email, first_name, last_name, country, time_zone, data, status, created_at, updated_at"
)
FIELDS = ("first_name", "last_name", "country", "time_zone")


def _filters(email: str | None, status: str | None) -> tuple[str, list[Any]]:
    clauses, args = [], []
    if email:
        escaped = email.strip().lower()
        for special in ("\\", "%", "_"):
            escaped = escaped.replace(special, "\\" + special)
        args.append(f"%{escaped}%")
        clauses.append(f"email_normalized LIKE ${len(args) + 1}")
    if status:
        args.append(status)
        clauses.append(f"status = ${len(args) + 1}")
    return "".join(f" AND {c}" for c in clauses), args


async def list_contacts(
    conn: Connection,
    project_id: int,
    *,
    email: str | None,
    status: str | None,
    after_id: int | None,
    limit: int,
) -> list[Contact]:
    """Contacts by ascending id after ``after_id``; ``limit + 1`` rows tell if more follow."""
    where, args = _filters(email, status)
    rows = await conn.fetch(
        f"""
        SELECT {COLUMNS} FROM contacts
        WHERE project_id = $1{where} AND id > ${len(args) + 2}
        ORDER BY id LIMIT ${len(args) + 3}
        """,
        project_id,
        *args,
        after_id or 0,
        limit + 1,
    )
    return [Contact.of(r) for r in rows]


async def count_contacts(
    conn: Connection, project_id: int, *, email: str | None, status: str | None
) -> int:
    where, args = _filters(email, status)
    total = await conn.fetchval(
        f"SELECT count(*) FROM contacts WHERE project_id = $1{where}", project_id, *args
    )
    return int(total)


async def get_contact(conn: Connection, project_id: int, contact_id: int) -> Contact | None:
    row = await conn.fetchrow(
        f"SELECT {COLUMNS} FROM contacts WHERE project_id = $1 AND id = $2", project_id, contact_id
    )
    return Contact.of(row) if row else None


async def get_contact_by_email(
    conn: Connection, project_id: int, email_normalized: str
) -> Contact | None:
    row = await conn.fetchrow(
        f"SELECT {COLUMNS} FROM contacts WHERE project_id = $1 AND email_normalized = $2",
        project_id,
        email_normalized,
    )
    return Contact.of(row) if row else None


# The one merge of contacts, for a single POST and for every bulk batch. Input rows are a JSON
# array; within it the last row of an email wins. A row that would change nothing is not updated
# (updated_at stays). A contact's marketing status is only ever moved away from `subscribed` by a
# merge: re-subscribing someone who unsubscribed, bounced or complained takes an explicit PATCH
# or bulk-subscribe. Two modes differ only in which side wins for a field that both have:
#   upsert      - given (non-null) values overwrite; `data` merges key by key, given keys winning
#   fill_blanks - only empty fields and `data` keys are filled (missing, null, or blank text);
#                 existing values are kept
# What a merge sets on a contact it changes, and when it changes one (the modes' expressions
# below fill in the braces).
_ASSIGNMENTS = """
    first_name = {first_name}, last_name = {last_name}, country = {country},
    time_zone = {time_zone}, data = {data}, status = {status}, updated_at = now(),
    line_hash = NULL"""  # (schema.sql: the hash of the line the import made it from)
_CHANGES = """(c.first_name, c.last_name, c.country, c.time_zone, c.data, c.status)
      IS DISTINCT FROM ({first_name}, {last_name}, {country}, {time_zone}, {data}, {status})"""
_MERGE_TEMPLATE = """
WITH input AS ({input})
INSERT INTO contacts AS c
    (project_id, email, email_normalized, first_name, last_name, country, time_zone, data, status,
     line_hash)
SELECT $1, email, email_normalized, first_name, last_name, country, time_zone,
       COALESCE(data, '{{}}'::jsonb), COALESCE(status, 'subscribed'), line_hash
FROM input
ON CONFLICT (project_id, email_normalized) DO UPDATE SET {assignments}
WHERE {changes}
RETURNING c.id, c.email_normalized, (xmax = 0) AS created
"""
_KEEP_SUPPRESSION = (
    "CASE WHEN EXCLUDED.status = 'subscribed' THEN c.status ELSE EXCLUDED.status END"
)
# Rows from a JSON array ($2), the last row of an email winning.
JSON_INPUT = """
    SELECT DISTINCT ON (r.email_normalized) r.*, NULL::bigint AS line_hash
    FROM ROWS FROM (
             jsonb_to_recordset($2::jsonb)
             AS (email text, email_normalized text, first_name text, last_name text,
                 country text, time_zone text, data jsonb, status text)
         ) WITH ORDINALITY
         AS r(email, email_normalized, first_name, last_name, country, time_zone, data, status,
              ord)
    ORDER BY r.email_normalized, r.ord DESC
"""
# Staged rows of an import ($2 job), deduplicated: those not held between two positions
# ($3, $4], or the held ones of some key hashes ($3). An import never sets a marketing status
# ('subscribed' keeps the contact's own, see above).
_STAGED = """
    SELECT email, email_normalized, first_name, last_name, country, time_zone, data,
           'subscribed'::text AS status, NULL::bigint AS line_hash
    FROM import_rows
    WHERE job_id = $2 AND {which} AND NOT duplicate
"""
STAGED_INPUT = _STAGED.format(which="position > $3 AND position <= $4 AND key_hash IS NULL")
HELD_INPUT = _STAGED.format(which="key_hash = ANY($3::bigint[])")
# fill_blanks: a field or `data` key is empty if it is missing, null, or a text of nothing but
# spaces (the API stores "" as given); it is filled by a given value that is not empty
_FILL_FIELD = (
    "CASE WHEN NULLIF(btrim(c.{f}), '') IS NULL AND NULLIF(btrim(EXCLUDED.{f}), '') IS NOT NULL"
    " THEN EXCLUDED.{f} ELSE c.{f} END"
)
_FILL_DATA = """c.data || COALESCE((
            SELECT jsonb_object_agg(given.key, given.value)
            FROM jsonb_each(EXCLUDED.data) AS given
            WHERE NULLIF(btrim(c.data ->> given.key), '') IS NULL
              AND NULLIF(btrim(given.value #>> '{}'), '') IS NOT NULL
        ), '{}'::jsonb)"""
_SETS = {
    "upsert": {
        **{f: f"COALESCE(EXCLUDED.{f}, c.{f})" for f in FIELDS},
        "data": "c.data || EXCLUDED.data",
        "status": _KEEP_SUPPRESSION,
    },
    "fill_blanks": {
        **{f: _FILL_FIELD.format(f=f) for f in FIELDS},
        "data": _FILL_DATA,
        "status": "c.status",
    },
}


# an import with resubscribe=true: its rows' contacts become subscribed again, whatever they
# were, and such a row changes its contact (updated, its updated_at moves)
_IMPORT_SETS = {
    **_SETS,
    **{
        f"{mode}_resubscribe": {**sets, "status": "EXCLUDED.status"} for mode, sets in _SETS.items()
    },
}


def _for_modes(
    template: str, sets_of: dict[str, dict[str, str]] = _IMPORT_SETS, **parts: str
) -> dict[str, str]:
    """A merge statement for each mode: the shared pieces, then the mode's expressions."""
    shared = template.replace("{assignments}", _ASSIGNMENTS).replace("{changes}", _CHANGES)
    return {mode: shared.format(**sets, **parts) for mode, sets in sets_of.items()}


MERGE_MODES = _for_modes(_MERGE_TEMPLATE, _SETS, input=JSON_INPUT)
# An import's batch counts in Postgres: (staged rows, created, changed), no row comes back.
_COUNTED = """
WITH input AS MATERIALIZED ({input}),
merged AS ({merge})
SELECT (SELECT count(*) FROM input) AS staged,
       count(*) FILTER (WHERE created) AS created, count(*) AS changed
FROM merged
"""
_MERGES = _for_modes(_MERGE_TEMPLATE.replace("WITH input AS ({input})\n", ""))


def _counted(input_rows: str) -> dict[str, str]:
    """The counted merge of each mode, from these input rows."""
    return {mode: _COUNTED.format(input=input_rows, merge=m) for mode, m in _MERGES.items()}


# An import's rows of a batch in a temporary table (their COPY text, see copy_new_text): the
# rows new to the project or that the merge would change, found by one probe of the unique
# index each and the merge's own test, are merged; an unchanged row costs no write.
_BATCH_TABLE = """
CREATE TEMPORARY TABLE import_batch (
    project_id bigint, email text, email_normalized text, first_name text, last_name text,
    country text, time_zone text, data jsonb, line_hash bigint,
    status text NOT NULL DEFAULT 'subscribed'
) ON COMMIT DROP"""
_BATCH_INPUT = """
    SELECT b.email, b.email_normalized, b.first_name, b.last_name, b.country, b.time_zone,
           b.data, b.status, b.line_hash
    FROM import_batch b LEFT JOIN LATERAL (
        SELECT * FROM contacts
        WHERE project_id = $1 AND email_normalized = b.email_normalized
        LIMIT 1
    ) c ON true
    WHERE c.id IS NULL OR {changes}
"""
MERGE_BATCH = {
    mode: _COUNTED.format(
        input=_BATCH_INPUT.format(
            changes=_CHANGES.format(**{k: v.replace("EXCLUDED.", "b.") for k, v in sets.items()})
        ),
        merge=_MERGES[mode],
    )
    for mode, sets in _IMPORT_SETS.items()
}
MERGE_STAGED = _counted(STAGED_INPUT)
MERGE_HELD = _counted(HELD_INPUT)


async def merge_contacts(
    conn: Connection, project_id: int, rows: list[dict[str, Any]], mode: str = "upsert"
) -> list[tuple[int, str, bool]]:
    """Merge normalised contact rows (``MERGE_MODES``); returns (id, email_normalized, created)
    of changed rows. Rows absent from the result were unchanged. One statement per batch."""
    result = await fetch_planned(conn, MERGE_MODES[mode], project_id, rows)
    return [(int(r["id"]), str(r["email_normalized"]), bool(r["created"])) for r in result]


async def update_contact(
    conn: Connection, project_id: int, contact_id: int, changes: dict[str, Any]
) -> Contact | None:
    """Apply a PATCH; ``data`` merges. Raises Conflict if the new email is taken."""
    if not changes:
        return await get_contact(conn, project_id, contact_id)
    sets, args = [], [project_id, contact_id]
    for column, value in changes.items():
        args.append(value)
        expression = f"data || ${len(args)}" if column == "data" else f"${len(args)}"
        sets.append(f"{column} = {expression}")
    assignments = ", ".join(sets)
    changed = " OR ".join(f"{s.split(' = ')[0]} IS DISTINCT FROM {s.split(' = ')[1]}" for s in sets)
    try:
        row = await conn.fetchrow(
            f"""
            UPDATE contacts SET {assignments}, updated_at = now()
            WHERE project_id = $1 AND id = $2 AND ({changed})
            RETURNING {COLUMNS}
            """,
            *args,
        )
    except asyncpg.UniqueViolationError as exc:
        raise Conflict("another contact already has this email") from exc
    if row is None:
        return await get_contact(conn, project_id, contact_id)
    return Contact.of(row)


async def delete_contact(conn: Connection, project_id: int, contact_id: int) -> bool:
    status = await conn.execute(
        "DELETE FROM contacts WHERE project_id = $1 AND id = $2", project_id, contact_id
    )
    return bool(status == "DELETE 1")


# Contacts by id: `= ANY` of the array too, never a join with it (see _BY_EMAILS). A bulk
# subscribe's UPDATE joined with unnest(ids) was planned, once the statistics said no contact
# of the project was unsubscribed (so none would match), as a nested loop that scanned the
# 1,000 ids for each of the project's 1,000 contacts: 400-600 ms instead of 10.
async def find_by_ids(conn: Connection, project_id: int, ids: list[int]) -> dict[int, str]:
    """The project's contacts among ``ids``: id -> marketing status. Others are absent."""
    rows = await fetch_planned(
        conn,
        """
        SELECT c.id, c.status FROM contacts c WHERE c.project_id = $1 AND c.id = ANY($2::bigint[])
        """,
        project_id,
        ids,
    )
    return {r["id"]: r["status"] for r in rows}


async def lock_for_joining(conn: Connection, project_id: int, ids: list[int]) -> dict[int, str]:
    """Lock the project's contacts among ``ids`` against deletion until the transaction ends
    (FOR KEY SHARE, the lock a membership's foreign key takes, in id order): id -> their
    marketing status now; a contact deleted meanwhile is absent, and one whose deletion is
    under way is waited for. An update of them (a status change, an import's merge) is not
    waited for. Taken where a deletion would fail a membership's or enrollment's insert:
    a batch's joining that met one (worker.jobs.memberships.add_members_present), and
    PUT /memberships and a double opt-in confirmation, one contact each."""
    rows = await fetch_planned(
        conn,
        """
        SELECT c.id, c.status FROM contacts c WHERE c.project_id = $1 AND c.id = ANY($2::bigint[])
        ORDER BY c.id FOR KEY SHARE
        """,
        project_id,
        ids,
    )
    return {r["id"]: r["status"] for r in rows}


# Contacts by email: `= ANY` of the array, never a join with it. A join of many emails with a
# table that grows during an import (its statistics behind) was planned as a hash join over a
# scan of the whole table, and a lookup per email (LATERAL … LIMIT 1) as a walk of the
# project's (project_id, id) index per email when the statistics did not know the project.
# With `= ANY` the worst plan is one pass over the project's rows, the usual one a probe of
# the unique index per email.
_BY_EMAILS = "FROM contacts c WHERE c.project_id = $1 AND c.email_normalized = ANY($2::text[])"


# An import's lookup per batch, three times faster than `= ANY` (a nested loop, one probe of
# the unique index per email; LIMIT 1 keeps it a loop), but only while the statistics know
# the project: the import sees to that (keep_statistics) before a batch's first lookup.
async def find_by_emails(
    conn: Connection, project_id: int, emails_normalized: list[str]
) -> dict[str, tuple[int, str]]:
    """The project's contacts among these emails: email -> (id, marketing status)."""
    rows = await fetch_planned(
        conn,
        f"SELECT c.id, c.email_normalized, c.status {_BY_EMAILS}",
        project_id,
        emails_normalized,
    )
    return {r["email_normalized"]: (r["id"], r["status"]) for r in rows}


async def set_status(
    conn: Connection, project_id: int, ids: list[int], status: str, from_statuses: tuple[str, ...]
) -> set[int]:
    """Move contacts whose status is one of ``from_statuses`` to ``status``; the ids moved."""
    rows = await fetch_planned(
        conn,
        """
        UPDATE contacts c SET status = $3, updated_at = now()
        WHERE c.project_id = $1 AND c.id = ANY($2::bigint[]) AND c.status = ANY($4::text[])
        RETURNING c.id
        """,
        project_id,
        ids,
        status,
        list(from_statuses),
    )
    return {r["id"] for r in rows}


async def delete_contacts(conn: Connection, project_id: int, ids: list[int]) -> set[int]:
    """Delete contacts (memberships and enrollments go with them); the ids deleted."""
    rows = await fetch_planned(
        conn,
        """
        DELETE FROM contacts c WHERE c.project_id = $1 AND c.id = ANY($2::bigint[]) RETURNING c.id
        """,
        project_id,
        ids,
    )
    return {r["id"] for r in rows}


async def merge_staged(
    conn: Connection, project_id: int, job_id: Any, after: int, upto: int, mode: str
) -> tuple[int, int, int]:
    """``merge_contacts`` for the staged rows of an import between two positions that are
    not held; (rows staged there, contacts created, contacts changed: created or updated)."""
    [row] = await fetch_planned(conn, MERGE_STAGED[mode], project_id, job_id, after, upto)
    return _counts(row)


async def merge_held(
    conn: Connection, project_id: int, job_id: Any, key_hashes: list[int], mode: str
) -> tuple[int, int, int]:
    """``merge_staged`` for the held rows of some key hashes, duplicates marked already."""
    [row] = await fetch_planned(conn, MERGE_HELD[mode], project_id, job_id, key_hashes)
    return _counts(row)


# the project last: a line of an import's COPY text ends with it (Contacts.copy_text)
NEW_COLUMNS = (
    "email", "email_normalized", "first_name", "last_name", "country", "time_zone", "data",
    "line_hash", "project_id",
)  # fmt: skip


async def copy_new_text(conn: Connection, text: memoryview) -> None:
    """COPY new contacts in, given in COPY's text format in the order of NEW_COLUMNS (an import's
    rows, csvcolumns.Contacts.copy_text, sorted by email: an index fills fastest so). Raises
    UniqueViolationError if one of them exists after all."""
    if text:
        await _copy_in(conn, "contacts", text)


async def _copy_in(conn: Connection, table: str, text: memoryview) -> None:
    # asyncpg sends what the iterable gives through a memoryview of it, so any buffer will do
    # (its stubs say bytes): the text is not copied out of Arrow's memory first
    source = _whole(text)
    await conn.copy_to_table(table, source=source, columns=NEW_COLUMNS, format="text")  # type: ignore[arg-type]


async def _whole(text: memoryview) -> AsyncIterator[memoryview]:
    """COPY data in one piece. asyncpg reads a file-like object in a thread, through a class
    it makes per call, which keeps the file (and so a batch's text) until a full garbage
    collection; bytes it would take for a file name."""
    yield text


async def merge_text(
    conn: Connection, project_id: int, text: memoryview, mode: str
) -> tuple[int, int]:
    """``merge_contacts`` for rows given as COPY text (copy_new_text), each email once; (contacts
    created, contacts changed). Only the rows that are new or would change are merged."""
    # a statement of a batch is planned to cost enough for JIT compilation, which took longer
    # (5 ms) than it saved; the setting lasts until the batch's transaction ends
    await conn.execute(f"SET LOCAL jit = off; {_BATCH_TABLE}")
    await _copy_in(conn, "import_batch", text)
    [row] = await fetch_planned(conn, MERGE_BATCH[mode], project_id)
    return int(row["created"]), int(row["changed"])


def _counts(row: asyncpg.Record) -> tuple[int, int, int]:
    """(rows merged, contacts created, contacts changed) of a counted merge."""
    return int(row["staged"]), int(row["created"]), int(row["changed"])


async def count_not_subscribed(
    conn: Connection, project_id: int, emails_normalized: list[str]
) -> int:
    """How many of these contacts are not subscribed (an import with resubscribe=true counts
    them before its merge sets them subscribed)."""
    [row] = await fetch_planned(
        conn,
        """
        SELECT count(*) FROM contacts
        WHERE project_id = $1 AND email_normalized = ANY($2::text[]) AND status <> 'subscribed'
        """,
        project_id,
        emails_normalized,
    )
    return int(row[0])


async def keep_statistics(conn: Connection, project_id: int, known: int) -> bool:
    """For an import: ANALYZE contacts when the planner believes the project holds fewer
    than half of the ``known`` contacts it has at least; whether it did. A project the
    statistics do not know (a new one) is believed to hold about one contact, and a lookup
    by email was then planned as a walk of the project's (project_id, id) index, once per
    email: minutes per batch. As the import doubles a project, it ANALYZEs about once: the
    two columns those lookups are planned with (50,000 contacts: 24 ms, against 135 ms for
    every column; 1,000,000: 100 ms against 225), and the table's size. The others wait for
    refresh_statistics once the import ended, or autovacuum, whose count of changes since
    the last ANALYZE only an ANALYZE of every column resets."""
    if known < 1000 or await believed_count(conn, project_id) * 2 >= known:
        return False
    await conn.execute("ANALYZE contacts (project_id, email_normalized)")
    return True


async def believed_count(conn: Connection, project_id: int) -> int:
    """How many contacts the planner believes the project has (no row is read)."""
    plan = await conn.fetchval(
        f"EXPLAIN (FORMAT JSON) SELECT 1 FROM contacts WHERE project_id = {int(project_id)}"
    )
    return int(plan[0]["Plan"]["Plan Rows"])  # a pool's connection decodes json


async def has_contacts(conn: Connection, project_id: int) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM contacts WHERE project_id = $1)", project_id
        )
    )


async def count_project(conn: Connection, project_id: int) -> int:
    """How many contacts the project has (an index-only count)."""
    return int(
        await conn.fetchval("SELECT count(*) FROM contacts WHERE project_id = $1", project_id)
    )


async def copy_lines(
    conn: Connection, project_id: int, output: Callable[[bytes], Coroutine[Any, Any, None]]
) -> None:
    """The project's contacts in COPY's text format, a line each, to ``output`` in pieces (an
    import compares its rows with these, knowncontacts): the hash of its line (its 8 bytes,
    big-endian, which COPY writes as ``\\\\x`` and 16 hexadecimal digits) and the email of one
    whose import kept it (schema.sql, line_hash), the others' ``\\N`` and then their line (the
    columns of csvcolumns.LINE_COLUMNS). Only for the second kind does Postgres turn a jsonb
    into text, half the cost of a line: 1,000,000 of the first kind took 0.40 s, of the
    second 0.72. (The hash in decimal took 0.05 s less here, and 0.3 s more to read.)"""
    await conn.copy_from_query(
        """
        SELECT int8send(line_hash), email_normalized,
               CASE WHEN line_hash IS NULL THEN first_name END,
               CASE WHEN line_hash IS NULL THEN last_name END,
               CASE WHEN line_hash IS NULL THEN country END,
               CASE WHEN line_hash IS NULL THEN time_zone END,
               CASE WHEN line_hash IS NULL THEN data END
        FROM contacts WHERE project_id = $1
        """,
        project_id,
        output=output,
    )


async def refresh_statistics(conn: Connection) -> bool:
    """ANALYZE contacts if it has grown by a fifth (and 50 pages) since its statistics were
    taken; whether it did. Cached plans and estimates follow the statistics (see
    db.fetch_planned), and autovacuum can be off or minutes behind a fast-growing table.
    Sizes come from pg_class and the file itself, never from the lagging statistics views."""
    stale = await conn.fetchval(
        """
        SELECT pg_relation_size(c.oid) / current_setting('block_size')::int
               > greatest(c.relpages, 0) * 1.2 + 50
        FROM pg_class c WHERE c.oid = 'contacts'::regclass
        """
    )
    if stale:
        await conn.execute("ANALYZE contacts")
    return bool(stale)
