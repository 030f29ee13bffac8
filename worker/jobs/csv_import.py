"""import: a first pass over the stored file finds the emails that occur in more than one row.
Then the file is parsed, validated and staged (COPY into import_rows) by a task that runs
beside the batches, so Postgres merges one part of the file while this process parses the
next. Each batch merges its staged rows into contacts, memberships and enrollments, except the
rows of an email that occurs more than once: those are held, and merged after the last batch,
when the last row of each such email (which wins) is known."""

from __future__ import annotations

import asyncio
import contextlib
from array import array
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from listmill.csvimport import (
    CsvReader,
    Header,
    ParsedRow,
    RowError,
    contact_from_row,
    email_key,
    read_header,
)
from listmill.db import Connection, Pool
from listmill.queries import contacts as contact_queries
from listmill.queries import imports as queries
from listmill.queries.memberships import Consent
from listmill.records import JobRow
from listmill.settings import Settings

from .base import BatchOutcome, Plan, Prepared
from .memberships import Joining, join_list

# where a staged record (imports.STAGED_COLUMNS) holds these
ROW_NUMBER, EMAIL, EMAIL_NORMALIZED = 2, 3, 4
YIELD_EVERY_ROWS = 1000  # ~5 ms of parsing: how long the event loop may be held
KEY_BITS = 0xFFFF_FFFF  # email keys are compared by a 32-bit hash: a collision only holds a row


class _DryRun(Exception):
    """Raised to roll a dry run's batch back once its counts are known."""


async def _file_rows(
    conn: Connection, job: JobRow
) -> AsyncIterator[tuple[Header, list[ParsedRow]]]:
    """The stored file's rows, a chunk's worth at a time, with the file's header."""
    first = await queries.read_chunk(conn, job.id, 0) or b""
    reader = CsvReader(read_header(first))
    chunk: bytes | None = first
    seq = 0
    while chunk is not None:
        rows = list(reader.feed(chunk))
        seq += 1
        chunk = await queries.read_chunk(conn, job.id, seq)
        if chunk is None:
            rows += list(reader.finish())
        yield reader.header, rows


async def repeated_keys(conn: Connection, job: JobRow) -> tuple[int, frozenset[int]]:
    """The first pass: the file's data row count, and the hashes of the email keys that more
    than one row has. Memory: four bytes a row."""
    import numpy as np  # only imports need it

    keys = array("I")
    async for header, rows in _file_rows(conn, job):
        keys.extend(hash(email_key(header, row)) & KEY_BITS for row in rows)
        await asyncio.sleep(0)
    values, counts = np.unique(np.frombuffer(keys, dtype=np.uint32), return_counts=True)
    return len(keys), frozenset(values[counts > 1].tolist())


def _record(
    job: JobRow, position: int, row: ParsedRow, contact: dict[str, Any], held: bool
) -> tuple[Any, ...]:
    return (
        job.id, position, row.number, contact["email"], contact["email_normalized"],
        contact.get("first_name"), contact.get("last_name"), contact.get("country"),
        contact.get("time_zone"), contact["data"], False, held,
    )  # fmt: skip


def _present(job: JobRow, position: int, error: RowError) -> tuple[Any, ...]:
    """An error row whose email is valid, staged for a mirror import only: its person is in
    the file and stays a member, and nothing else is applied (staged as a duplicate)."""
    return (
        job.id, position, error.number, error.email, error.email_normalized,
        None, None, None, None, {}, True, False,
    )  # fmt: skip


@dataclass
class _Batch:
    """The parsed rows of one batch: staged records (see imports.STAGED_COLUMNS) of its rows
    whose email no other row has (merged now), of its held rows and, for a mirror import,
    of its error rows whose person is in the file; and its error rows."""

    after: int
    upto: int
    unique: list[tuple[Any, ...]] = field(default_factory=list)
    held: list[tuple[Any, ...]] = field(default_factory=list)
    outcome: BatchOutcome = field(default_factory=BatchOutcome)


@dataclass
class _Parser:
    """Pass two, a task beside the batches: parses the rows after a position into batches,
    one ahead of the batch being written, so that this process parses the next batch while
    Postgres writes the last one. It only reads: every write is in a batch's transaction."""

    job: JobRow
    repeated: frozenset[int]
    after: int
    batch_size: int
    error_cap: int
    ready: asyncio.Queue[_Batch | BaseException] = field(
        default_factory=lambda: asyncio.Queue(maxsize=1)
    )
    errors_kept: int = 0

    async def run(self, conn: Connection) -> None:
        try:
            await self._parse(conn)
        except Exception as exc:
            await self.ready.put(exc)

    async def _parse(self, conn: Connection) -> None:
        job, total = self.job, self.job.total or 0
        mirror = job.params["mode"] == "mirror"
        position = 0
        batch = self._next(self.after, total)
        async for header, rows in _file_rows(conn, job):
            for row in rows:
                position += 1
                if position <= self.after:
                    continue
                if position % YIELD_EVERY_ROWS == 0:
                    await asyncio.sleep(0)  # the batches and other jobs run meanwhile
                parsed = contact_from_row(header, row)
                if isinstance(parsed, RowError):
                    self._error(batch.outcome, parsed)
                    if mirror and parsed.email_normalized:
                        batch.held.append(_present(job, position, parsed))
                elif hash(parsed["email_normalized"]) & KEY_BITS in self.repeated:
                    batch.held.append(_record(job, position, row, parsed, True))
                else:
                    batch.unique.append(_record(job, position, row, parsed, False))
                if position == batch.upto:
                    await self.ready.put(batch)
                    batch = self._next(position, total)

    def _next(self, after: int, total: int) -> _Batch:
        return _Batch(after, min(after + self.batch_size, total))

    def _error(self, outcome: BatchOutcome, error: RowError) -> None:
        outcome.counts["invalid"] += 1
        if self.errors_kept < self.error_cap:  # the runner keeps the job's first ones only
            self.errors_kept += 1
            outcome.error(error.number, error.email, error.code, error.message)
        else:
            outcome.errors_dropped += 1

    async def batch(self, after: int, upto: int) -> _Batch:
        batch = await self.ready.get()
        if isinstance(batch, BaseException):
            raise batch
        if (batch.after, batch.upto) != (after, upto):
            raise RuntimeError(f"parsed rows ({batch.after}, {batch.upto}] for ({after}, {upto}]")
        return batch


@dataclass
class _ImportRun:
    """One run of an import job in this worker: its first pass and its parsing task."""

    pool: Pool
    settings: Settings
    repeated: frozenset[int] | None = None
    parser: _Parser | None = None
    task: asyncio.Task[None] | None = None
    lent: list[Any] = field(default_factory=list)  # the parsing task's pool connection

    async def prepare(
        self, conn: Connection, job: JobRow, settings: Settings, pool: Pool
    ) -> Prepared:
        total, self.repeated = await repeated_keys(conn, job)
        return Prepared(total=total, outcome=BatchOutcome())

    async def _parsing(self, conn: Connection, job: JobRow, after: int) -> _Parser:
        if self.parser is None:
            if self.repeated is None:  # a resumed job: its first pass is made again
                _, self.repeated = await repeated_keys(conn, job)
            settings = self.settings
            self.parser = _Parser(
                job, self.repeated, after, settings.import_batch_size, settings.job_error_cap
            )
            reader = await self.pool.acquire()
            self.lent.append(reader)
            self.task = asyncio.create_task(self.parser.run(reader))
        return self.parser

    async def apply_range(
        self, conn: Connection, job: JobRow, after: int, upto: int
    ) -> BatchOutcome:
        parser = await self._parsing(conn, job, after)
        batch = await parser.batch(after, upto)
        outcome = batch.outcome
        # staged for the last batch, whether a dry run or not: the held rows, and for a mirror
        # import every row (its last batch looks for every email of the file)
        mirror = job.params["mode"] == "mirror"
        await queries.stage_rows(conn, batch.held + batch.unique if mirror else batch.held)
        last = upto == job.total
        if last:  # every held row of an email but its last one is a duplicate
            outcome.counts["duplicate"] += await queries.mark_duplicates(conn, job.id)
        if not job.params["dry_run"]:
            await _apply_batch(conn, job, batch, last)
            return outcome
        try:
            async with conn.transaction():  # a savepoint: everything is computed, nothing kept
                await _apply_batch(conn, job, batch, last)
                raise _DryRun()
        except _DryRun:
            pass
        return outcome

    async def close(self) -> None:
        """Stop the parsing task and give its connection back, however the run ended."""
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        for reader in self.lent:
            await self.pool.release(reader)
        self.lent.clear()


async def _apply_batch(conn: Connection, job: JobRow, batch: _Batch, last: bool) -> None:
    outcome = batch.outcome
    joined = await _merge_unique(conn, job, batch)
    await _join(conn, job, joined, outcome)
    if not last:
        return
    staged, created, changed = await contact_queries.merge_staged(
        conn, job.project_id, job.id, 0, batch.upto, True, _mode(job)
    )
    _count(outcome, staged, created, changed)
    await _join(conn, job, await queries.staged_emails(conn, job.id, 0, batch.upto, True), outcome)
    list_id = job.params.get("list_id")
    if job.params["mode"] == "mirror" and list_id is not None:
        outcome.counts["unsubscribed"] += await queries.mirror_unsubscribe(
            conn, job.project_id, list_id, job.id
        )


async def _merge_unique(conn: Connection, job: JobRow, batch: _Batch) -> list[tuple[str, int, str]]:
    """Merge the batch's rows whose email no other row has; their (email_normalized,
    row_number, email). The new contacts among them are COPYed straight into contacts, in
    email order; the others are merged (sent as arrays) unless they would change nothing,
    and all of them are if someone else inserted one of the new emails meanwhile (the COPY
    fails on it). A mirror import's rows are staged already, and merged from there."""
    records, outcome = batch.unique, batch.outcome
    if job.params["mode"] == "mirror":
        await _merge_staged(conn, job, batch)
    elif records:
        mode = _mode(job)
        existing = await contact_queries.existing_contacts(
            conn, job.project_id, [r[EMAIL_NORMALIZED] for r in records]
        )
        new, rest = [], []
        for r in records:
            current = existing.get(r[EMAIL_NORMALIZED])
            if current is None:
                new.append(r)
            elif contact_queries.merge_changes_nothing(mode, current, r[5:10]):
                outcome.counts["unchanged"] += 1
            else:
                rest.append(r)
        new.sort(key=lambda r: r[EMAIL_NORMALIZED])
        try:
            async with conn.transaction():  # a savepoint: a failed COPY leaves nothing
                await contact_queries.copy_new(conn, job.project_id, [r[3:10] for r in new])
            outcome.counts["created"] += len(new)
        except asyncpg.UniqueViolationError:
            outcome.counts["unchanged"] -= len(records) - len(new) - len(rest)
            rest = records
        rest.sort(key=lambda r: r[EMAIL_NORMALIZED])
        counts = await contact_queries.merge_rows(
            conn, job.project_id, [r[3:10] for r in rest], mode
        )
        _count(outcome, *counts)
    return [(r[EMAIL_NORMALIZED], r[ROW_NUMBER], r[EMAIL]) for r in records]


async def _merge_staged(conn: Connection, job: JobRow, batch: _Batch) -> None:
    """Merge the batch's staged rows that are not held."""
    counts = await contact_queries.merge_staged(
        conn, job.project_id, job.id, batch.after, batch.upto, False, _mode(job)
    )
    _count(batch.outcome, *counts)


def _mode(job: JobRow) -> str:
    return "fill_blanks" if job.params["mode"] == "fill_blanks" else "upsert"


def _count(outcome: BatchOutcome, staged: int, created: int, changed: int) -> None:
    outcome.counts["created"] += created
    outcome.counts["updated"] += changed - created
    outcome.counts["unchanged"] += staged - changed


async def _join(
    conn: Connection, job: JobRow, rows: list[tuple[str, int, str]], outcome: BatchOutcome
) -> None:
    """Resubscribe the merged rows' contacts if asked, and join them to the list if any:
    ``rows`` are (email_normalized, row_number, email)."""
    params = job.params
    list_id = params.get("list_id")
    if not rows or (list_id is None and not params["resubscribe"]):
        return
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


def import_plan(pool: Pool, settings: Settings) -> Plan:
    """The plan of one run of an import: its state lives as long as the run."""
    run = _ImportRun(pool, settings)
    return Plan(
        apply_range=run.apply_range,
        prepare=run.prepare,
        cleanup=cleanup_import,
        close=run.close,
        batch_size=lambda settings: settings.import_batch_size,
    )
