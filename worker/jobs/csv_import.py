"""import: stage the whole file with COPY (parsed, validated and deduplicated: the last row
of an email wins), then merge it batch by batch into contacts, memberships and enrollments."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from listmill.csvimport import CsvReader, ParsedRow, RowError, contact_from_row, read_header
from listmill.db import Connection, Pool
from listmill.queries import contacts as contact_queries
from listmill.queries import imports as queries
from listmill.queries.memberships import Consent
from listmill.records import JobRow
from listmill.settings import Settings

from .base import BatchOutcome, Plan, Prepared
from .memberships import Joining, join_list

YIELD_EVERY_ROWS = 1000  # ~10 ms of parsing: how long the event loop may be held


class _DryRun(Exception):
    """Raised to roll a dry run's batch back once its counts are known."""


def _record(job: JobRow, position: int, row: ParsedRow, contact: dict[str, Any]) -> tuple[Any, ...]:
    return (
        job.id, position, row.number, contact["email"], contact["email_normalized"],
        contact.get("first_name"), contact.get("last_name"), contact.get("country"),
        contact.get("time_zone"), contact["data"], False,
    )  # fmt: skip


def _present(job: JobRow, position: int, error: RowError) -> tuple[Any, ...]:
    """An error row whose email is valid, staged for a mirror import only: its person is in
    the file and stays a member, and nothing else is applied (staged as a duplicate)."""
    return (
        job.id, position, error.number, error.email, error.email_normalized,
        None, None, None, None, {}, True,
    )  # fmt: skip


async def prepare_import(conn: Connection, job: JobRow, settings: Settings, pool: Pool) -> Prepared:
    """Parse the stored file chunk by chunk and COPY its valid rows into the staging table;
    invalid rows become error rows. One COPY is fed as the rows are parsed, so Postgres takes
    in one part of the file while this process parses the next; the chunks are read on a
    second connection meanwhile. Memory holds one chunk's rows at a time."""
    outcome, staging = BatchOutcome(), _Staging(job, settings)
    async with pool.acquire() as reader:
        await queries.stage_rows(conn, staging.records(reader, outcome))
    outcome.counts["duplicate"] += await queries.mark_duplicates(conn, job.id)
    return Prepared(total=staging.position, outcome=outcome)


@dataclass
class _Staging:
    job: JobRow
    settings: Settings
    position: int = 0  # data rows seen so far, valid or not

    async def records(
        self, reader: Connection, outcome: BatchOutcome
    ) -> AsyncIterator[tuple[Any, ...]]:
        """The staged records of the file's valid rows, in file order."""
        job, cap = self.job, self.settings.job_error_cap
        mirror = job.params["mode"] == "mirror"
        first = await queries.read_chunk(reader, job.id, 0) or b""
        csv_reader = CsvReader(read_header(first))
        header = csv_reader.header
        chunk: bytes | None = first
        seq = 0
        while chunk is not None:
            rows = list(csv_reader.feed(chunk))
            seq += 1
            chunk = await queries.read_chunk(reader, job.id, seq)
            if chunk is None:
                rows += list(csv_reader.finish())
            for row in rows:
                self.position += 1
                if self.position % YIELD_EVERY_ROWS == 0:
                    await asyncio.sleep(0)  # a COPY being fed never waits: let other jobs run
                parsed = contact_from_row(header, row)
                if isinstance(parsed, RowError):
                    _row_error(outcome, parsed, cap)
                    if mirror and parsed.email_normalized:
                        yield _present(job, self.position, parsed)
                else:
                    yield _record(job, self.position, row, parsed)


def _row_error(outcome: BatchOutcome, error: RowError, cap: int) -> None:
    outcome.counts["invalid"] += 1
    if len(outcome.errors) < cap:
        outcome.error(error.number, error.email, error.code, error.message)
    else:
        outcome.errors_dropped += 1


async def apply_import_range(conn: Connection, job: JobRow, after: int, upto: int) -> BatchOutcome:
    outcome = BatchOutcome()
    if not job.params["dry_run"]:
        await _apply(conn, job, after, upto, outcome)
        return outcome
    try:
        async with conn.transaction():  # a savepoint: everything is computed, nothing kept
            await _apply(conn, job, after, upto, outcome)
            raise _DryRun()
    except _DryRun:
        pass
    return outcome


async def _apply(
    conn: Connection, job: JobRow, after: int, upto: int, outcome: BatchOutcome
) -> None:
    params = job.params
    mode = "fill_blanks" if params["mode"] == "fill_blanks" else "upsert"
    staged, created, changed = await contact_queries.merge_staged(
        conn, job.project_id, job.id, after, upto, mode
    )
    outcome.counts["created"] += created
    outcome.counts["updated"] += changed - created
    outcome.counts["unchanged"] += staged - changed
    list_id = params.get("list_id")
    if list_id is None and not params["resubscribe"]:
        return
    rows = await queries.staged_emails(conn, job.id, after, upto)
    emails = [email for email, _, _ in rows]
    if params["resubscribe"]:
        outcome.counts["resubscribed"] += await contact_queries.resubscribe(
            conn, job.project_id, emails
        )
    if list_id is None:
        return
    found = await contact_queries.find_by_emails(conn, job.project_id, emails)
    targets = {found[email][0]: (row, shown) for email, row, shown in rows}
    statuses = {contact_id: status for contact_id, status in found.values()}
    await join_list(conn, job, targets, statuses, _joining(params), outcome)
    if params["mode"] == "mirror" and upto == job.total:
        outcome.counts["unsubscribed"] += await queries.mirror_unsubscribe(
            conn, job.project_id, list_id, job.id
        )


def _joining(params: dict[str, Any]) -> Joining:
    return Joining(
        list_id=params["list_id"],
        new_status=params["status"] or params["default_status"],
        requested_status="subscribed" if params["resubscribe"] else None,
        source=params["source"],
        trigger_sequences=params["trigger_sequences"],
        consent=Consent(
            params.get("consent_source"),
            params.get("consent_text_version"),
            params.get("consent_ip"),
        ),
    )


async def cleanup_import(conn: Connection, job: JobRow, settings: Settings) -> None:
    """Staged rows go at once; the file too unless a retention period keeps it for a while.
    A real import may have grown contacts a lot: its statistics are refreshed."""
    await queries.discard_staging(
        conn, job.id, with_file=settings.import_file_retention_seconds == 0
    )
    if not job.params["dry_run"]:
        await contact_queries.refresh_statistics(conn)


IMPORT_PLAN = Plan(
    apply_range=apply_import_range,
    prepare=prepare_import,
    cleanup=cleanup_import,
    batch_size=lambda settings: settings.import_batch_size,
)
