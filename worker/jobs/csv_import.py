"""import: a first pass over the stored file finds the emails that more than one row has (by
a hash of each row's email key) and where the last of those rows is. Then a task parses the
file into batches, one batch ahead of the batches being written, so that this process parses
while Postgres writes. Most blocks of a file are parsed and validated a column at a time
(csvcolumns: "fast" rows), the others row by row (records), which then join the fast ones as
columns. Each batch, in its one transaction:
- merges its rows whose email no other row has (write_ahead): COPYs them straight into
  contacts, in email order, while no batch has met an existing contact; else, or if that COPY
  meets one, merges them from a temporary table in which Postgres finds the new and the
  changed ones; a row that would change nothing is not written. No other batch has these
  contacts, so the engine runs this beside the batch before (two batches at a time);
- then, once the batch before has committed (apply_range): joins the rows to the list, if
  any; stages its rows of a repeated email in import_rows ("held"), and once the last row of a
  group of them has been parsed, merges the group: the last row of each email wins.
A mirror import stages every row, for its last batch looks for every email of the file."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import asyncpg
import structlog

from listmill.csvcolumns import Block, Columns, Contacts, columns_of, concat, contacts_of
from listmill.csvimport import (
    CsvReader,
    Header,
    ParsedRow,
    RowError,
    contact_from_row,
    read_header,
)
from listmill.csvkeys import KeyHashes, KeyReader, Keys, hashed_keys
from listmill.db import Connection, Pool
from listmill.keyhash import key_hashes, legacy_key_hashes
from listmill.knowncontacts import KnownContacts, read_known, worth_reading
from listmill.queries import contacts as contact_queries
from listmill.queries import imports as queries
from listmill.queries import memberships as member_queries
from listmill.queries.memberships import JOINING, Consent
from listmill.records import JobRow
from listmill.settings import Settings

from .base import BatchOutcome, Overlap, Plan, Prepared
from .memberships import Joining, join_list

if TYPE_CHECKING:
    import numpy as np

log = structlog.get_logger(__name__)

# where a staged record (imports.STAGED_COLUMNS) holds these
EMAIL_NORMALIZED, KEY_HASH = 4, 11
Record = tuple[Any, ...]
YIELD_EVERY_ROWS = 1000  # ~8 ms of parsing: how long the event loop may be held


class _DryRun(Exception):
    """Raised to roll a dry run's batch back once its counts are known."""


Parsed = ParsedRow | Block | Columns


async def _file_rows(
    conn: Connection, job: JobRow
) -> AsyncIterator[tuple[Header, list[Parsed], bool]]:
    """The stored file's rows, a chunk's worth at a time, with the file's header: simple
    blocks of them read and validated by Arrow (csvcolumns: Columns), the others one by one;
    and, with the last rows, whether a quote in it never closed (CsvReader)."""
    first = await queries.read_chunk(conn, job.id, 0) or b""
    reader = CsvReader(read_header(first), simple=True)
    # a chunk is parsed in a thread (Arrow lets go of the GIL) while the one before is taken,
    # and this loop goes on serving the batches' COPYs meanwhile
    parsing = asyncio.ensure_future(asyncio.to_thread(_fed, reader, first))
    seq = 0
    try:
        while True:
            rows = await parsing
            seq += 1
            chunk = await queries.read_chunk(conn, job.id, seq)
            if chunk is None:
                rows += await asyncio.to_thread(_validated, reader.header, reader.finish())
                yield reader.header, rows, reader.quote_never_closed
                return
            parsing = asyncio.ensure_future(asyncio.to_thread(_fed, reader, chunk))
            yield reader.header, rows, False
    finally:
        parsing.cancel()


def _fed(reader: CsvReader, chunk: bytes) -> list[Parsed]:
    return _validated(reader.header, reader.feed(chunk))


def _validated(header: Header, rows: Iterable[ParsedRow | Block]) -> list[Parsed]:
    return [columns_of(header, row) if isinstance(row, Block) else row for row in rows]


@dataclass(frozen=True)
class Repeats:
    """Pass one's findings: the file's data row count, and the email-key hashes that more
    than one row has (sorted), each with the position of its last row. Rows of one email
    have one hash; two emails may share one (then both are held, and still told apart).
    The hash is the same in every process (key_hash), so a job resumed elsewhere holds and
    groups the same rows."""

    total: int
    hashes: np.ndarray[Any, Any]
    last: np.ndarray[Any, Any]

    def held(self, hashes: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """For each of these hashes, whether more than one row has it."""
        import numpy as np

        return np.isin(hashes, self.hashes)

    def completed(self, after: int, upto: int) -> list[int]:
        """The hashes whose last row is between these positions: their groups are whole."""
        return self.hashes[(self.last > after) & (self.last <= upto)].tolist()  # type: ignore[no-any-return]


async def file_key_hashes(
    conn: Connection, job: JobRow, hashes: KeyHashes = key_hashes
) -> np.ndarray[Any, Any]:
    """The first pass: the hash of each row's email key, in file order (8 bytes a row). The
    keys of a chunk are cut out (csvkeys) in a thread while the next chunk is fetched and
    those of the chunk before are hashed in another."""
    import numpy as np  # only imports need it

    first = await queries.read_chunk(conn, job.id, 0) or b""
    reader = KeyReader(read_header(first), hashes)
    hashed: list[np.ndarray[Any, Any]] = []
    cutting: asyncio.Future[list[Keys]] | None = None
    hashing: asyncio.Future[np.ndarray[Any, Any]] | None = None
    chunk: bytes | None = first
    seq = 0
    try:
        while chunk is not None:
            cutting = asyncio.ensure_future(asyncio.to_thread(reader.feed, chunk))
            seq += 1
            chunk = await queries.read_chunk(conn, job.id, seq)
            keys = await cutting
            if chunk is None:
                keys += reader.finish()
            if hashing is not None:
                hashed.append(await hashing)
            hashing = asyncio.ensure_future(asyncio.to_thread(hashed_keys, keys, hashes))
        assert hashing is not None
        hashed.append(await hashing)
    finally:
        for task in (cutting, hashing):
            if task is not None and not task.done():
                task.cancel()
    return np.concatenate(hashed)


def repeats_of(keys: np.ndarray[Any, Any]) -> Repeats:
    """Repeats of the rows' key hashes, in file order."""
    import numpy as np

    ordered = np.sort(keys)
    repeated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    del ordered
    positions = np.flatnonzero(np.isin(keys, repeated))  # 0-based, of repeated rows
    # the last row of each repeated hash: its first occurrence among them, read backwards
    hashes, first = np.unique(keys[positions][::-1], return_index=True)
    return Repeats(len(keys), hashes, positions[::-1][first] + 1)


def _record(job: JobRow, position: int, row: ParsedRow, contact: dict[str, Any]) -> Record:
    """A valid row, as staged (its key hash is set once it is found to be held)."""
    return (
        job.id, position, row.number, contact["email"], contact["email_normalized"],
        contact.get("first_name"), contact.get("last_name"), contact.get("country"),
        contact.get("time_zone"), contact["data"], False, None,
    )  # fmt: skip


def _fast_records(job: JobRow, contacts: Contacts, hashes: list[int] | None = None) -> list[Record]:
    """Fast rows (csvcolumns) as staged records, with their key hash if given."""
    tails = [(False, None)] * len(contacts) if hashes is None else [(False, h) for h in hashes]
    return [(job.id, *row, *tail) for row, tail in zip(contacts.rows(), tails, strict=True)]


def _present(job: JobRow, position: int, error: RowError) -> Record:
    """An error row whose email is valid, staged for a mirror import only: its person is in
    the file and stays a member, and nothing else is applied (staged as a duplicate)."""
    return (
        job.id, position, error.number, error.email, error.email_normalized,
        None, None, None, None, {}, True, None,
    )  # fmt: skip


@dataclass
class _Batch:
    """The parsed rows of one batch: its rows whose email no other row has, as staged records
    (``unique``, see imports.STAGED_COLUMNS) and column-wise (``fast``, csvcolumns); its held
    rows plus, for a mirror import, its error rows whose person is in the file (``held``); and
    its error rows."""

    after: int
    upto: int
    unique: list[Record] = field(default_factory=list)
    fast: list[Contacts] = field(default_factory=list)  # more unique rows, column-wise
    held: list[Record] = field(default_factory=list)
    outcome: BatchOutcome = field(default_factory=BatchOutcome)
    new: Contacts | None = None  # fast rows no contact had as the import began (existing)
    # once its unique rows are merged (_merge_unique): those to join, and whether all were new
    merged: list[tuple[str, int, str]] | None = None
    none_existed: bool = True
    cut_short: bool = False  # the file's last batch, and a quote in the file never closed


class _ParsingEnded(Exception):
    """The file had fewer rows than pass one counted (it cannot, unless changed meanwhile)."""


@dataclass
class _Parser:
    """Pass two, a task beside the batches: parses the rows after a position into batches,
    one ahead of the batch being written. It only reads: every write is in a batch's
    transaction, so a batch is kept exactly when its checkpoint is."""

    job: JobRow
    repeats: Repeats
    hashes: KeyHashes
    existing: KnownContacts | None  # the project's contacts as the import began, if read
    after: int
    batch_size: int
    error_cap: int
    ready: asyncio.Queue[_Batch | BaseException] = field(
        default_factory=lambda: asyncio.Queue(maxsize=1)
    )
    errors_kept: int = 0
    position: int = 0  # rows parsed so far
    failed: BaseException | None = None  # why parsing ended early, once a batch met it
    quote_never_closed: bool = False  # in the file (known with its last rows)
    filling: _Batch = field(init=False)  # the batch being filled

    def __post_init__(self) -> None:
        self.filling = self._next(self.after, self.repeats.total)

    async def run(self, conn: Connection) -> None:
        try:
            if not await self._parse(conn):
                ended = _ParsingEnded(f"the file ended before row {self.repeats.total}")
                await self.ready.put(ended)
        except Exception as exc:
            await self.ready.put(exc)

    async def _parse(self, conn: Connection) -> bool:
        """Whether the file had its every row (its last batch is delivered)."""
        async for header, rows, quote_never_closed in _file_rows(conn, self.job):
            self.quote_never_closed = quote_never_closed
            for batch in await self._take(header, rows):
                await self.ready.put(batch)
                if batch.upto == self.repeats.total:
                    return True
        return False

    async def _take(self, header: Header, rows: list[Parsed]) -> list[_Batch]:
        """Sort a chunk's rows into batches; the batches completed."""
        done: list[_Batch] = []
        run: list[ParsedRow] = []
        for row in rows:
            if isinstance(row, Columns):
                await self._take_rows(header, run, done)
                run = []
                await self._take_block(header, row, done)
            elif isinstance(row, ParsedRow):
                run.append(row)
            else:
                raise TypeError(f"a block not validated: {row!r}")
        await self._take_rows(header, run, done)
        return done

    async def _take_rows(self, header: Header, rows: list[ParsedRow], done: list[_Batch]) -> None:
        batch, position = self.filling, self.position
        for row in rows:
            position += 1
            if position <= self.after:
                continue
            if position % YIELD_EVERY_ROWS == 0:
                self.filling, self.position = batch, position
                await asyncio.sleep(0)  # the batches, heartbeats and other jobs run meanwhile
            self._take_row(batch, position, header, row)
            if position == batch.upto:
                batch = await self._complete(batch, done)
        self.filling, self.position = batch, position

    async def _take_block(self, header: Header, columns: Columns, done: list[_Batch]) -> None:
        """A simple block's rows: its fast ones stay column-wise, the others go one by one."""
        start, count = self.position, len(columns)
        taken = max(0, self.after - start)  # rows up to the checkpoint were written before
        while taken < count:
            batch = self.filling
            upto = min(count, batch.upto - start)
            piece = columns.slice(taken, upto)
            batch.fast.append(piece.fast_contacts(start + taken + 1))
            for index, number, values in piece.slow_rows():
                self._take_row(batch, start + taken + index + 1, header, ParsedRow(number, values))
            taken = upto
            if start + upto == batch.upto:
                await self._complete(batch, done)
            self.position = start + upto
            await asyncio.sleep(0)
        self.position = start + count

    def _take_row(self, batch: _Batch, position: int, header: Header, row: ParsedRow) -> None:
        parsed = contact_from_row(header, row)
        if isinstance(parsed, RowError):
            self._error(batch.outcome, parsed)
            if self.job.params["mode"] == "mirror" and parsed.email_normalized:
                batch.held.append(_present(self.job, position, parsed))
        else:
            batch.unique.append(_record(self.job, position, row, parsed))

    async def _complete(self, batch: _Batch, done: list[_Batch]) -> _Batch:
        """The batch is parsed: its held rows set apart (in a thread), it is done; the next."""
        # a file with a quote that never closed: cut short inside a quoted field, maybe, or
        # a stray quote took in lines of other rows: who else is in the file is not known
        batch.cut_short = batch.upto == self.repeats.total and self.quote_never_closed
        await asyncio.to_thread(self._hold, batch)
        done.append(batch)
        self.filling = self._next(batch.upto, self.repeats.total)
        return self.filling

    def _next(self, after: int, total: int) -> _Batch:
        return _Batch(after, min(after + self.batch_size, total))

    def _hold(self, batch: _Batch) -> None:
        """Move the batch's rows of a repeated email to its held rows, with their hash. A
        mirror import stages every row: its fast rows become records too."""
        job, fast = self.job, concat(batch.fast)
        if job.params["mode"] == "mirror":
            batch.unique += _fast_records(job, fast)
            fast = concat([])
        hashes = self.hashes([r[EMAIL_NORMALIZED] for r in batch.unique])
        unique = []
        for record, hashed, held in zip(
            batch.unique, hashes.tolist(), self.repeats.held(hashes).tolist(), strict=True
        ):
            if held:
                batch.held.append((*record[:KEY_HASH], hashed))
            else:
                unique.append(record)
        batch.unique = unique
        keys = self.hashes(fast.table.column("email_normalized"))
        repeated = self.repeats.held(keys)
        if repeated.any():
            batch.held += _fast_records(job, fast.where(repeated), keys[repeated].tolist())
            fast, keys = fast.where(~repeated), keys[~repeated]
        fast = fast.hashed()  # (their COPY keeps it: a later import compares with it)
        if self.existing is not None and len(fast):  # keys are key_hashes then
            same, new = self.existing.compare(keys, fast.line_hashes())
            batch.outcome.counts["unchanged"] += int(same.sum())
            batch.new = fast.where(new).ahead(job.project_id)
            fast = fast.where(~same & ~new)
        batch.fast = [fast.ahead(job.project_id)]

    def _error(self, outcome: BatchOutcome, error: RowError) -> None:
        outcome.counts["invalid"] += 1
        if self.errors_kept < self.error_cap:  # the runner keeps the job's first ones only
            self.errors_kept += 1
            outcome.error(error.number, error.email, error.code, error.message)
        else:
            outcome.errors_dropped += 1

    async def batch(self, after: int, upto: int) -> _Batch:
        if self.failed is not None:  # it ended: every later batch fails as the first did
            raise self.failed
        batch = await self.ready.get()
        if isinstance(batch, BaseException):
            self.failed = batch
            raise batch
        if (batch.after, batch.upto) != (after, upto):
            raise RuntimeError(f"parsed rows ({batch.after}, {batch.upto}] for ({after}, {upto}]")
        return batch


@dataclass
class _ImportRun:
    """One run of an import job in this worker: its first pass and its parsing task."""

    pool: Pool
    settings: Settings
    repeats: Repeats | None = None
    parser: _Parser | None = None
    task: asyncio.Task[None] | None = None
    lent: list[Any] = field(default_factory=list)  # the parsing task's pool connection
    known: int = 0  # contacts the project has at least: to keep the statistics in step
    existing: KnownContacts | None = None  # its contacts as the import began, if read
    counted: bool = False  # the invalid and duplicate rows were counted by an earlier release
    all_new: bool = False  # no batch found an existing contact yet: the next one is COPYed at once
    hashes: KeyHashes = key_hashes
    taken: dict[int, _Batch] = field(default_factory=dict)  # by position after: being written
    analyzing: asyncio.Task[None] | None = None  # _statistics_behind's, if under way

    async def prepare(
        self, conn: Connection, job: JobRow, settings: Settings, pool: Pool
    ) -> Prepared:
        self.repeats = await self._first_pass(conn, job)
        return Prepared(total=self.repeats.total, outcome=BatchOutcome())

    async def _first_pass(self, conn: Connection, job: JobRow) -> Repeats:
        """Pass one; meanwhile, on connections of their own, the project's contacts are
        counted (and its statistics kept, _planned), and, if the import may skip unchanged
        rows without asking Postgres (knowncontacts), read, and kept if the file proves large
        enough next to them. (Counted first, a project of 1,000,000 held pass one up 0.1 s.)"""
        params = job.params
        side: list[asyncio.Task[Any]] = [asyncio.create_task(self._count(job))]
        if (
            await contact_queries.has_contacts(conn, job.project_id)
            and params["mode"] != "mirror"  # it stages every row
            and params.get("list_id") is None  # whose every row is joined to the list
            and not params["resubscribe"]
            and self.hashes is key_hashes
        ):
            side.append(asyncio.create_task(self._read_known(job.project_id)))
        try:
            keys = await file_key_hashes(conn, job, self.hashes)
            # sorts of 8 bytes a row, in a thread: numpy lets go of the GIL to sort, and this
            # loop serves other jobs meanwhile (1,000,000 rows: about 200 ms)
            repeats = await asyncio.to_thread(repeats_of, keys)
            self.known = await side[0]
            if len(side) > 1 and worth_reading(self.known, repeats.total):
                self.existing = await side[1]
                if len(self.existing) > repeats.total:  # only the file's are worth keeping
                    self.existing = await asyncio.to_thread(self.existing.only, keys)
        finally:
            for task in side:
                task.cancel()  # if not done: not needed, or this pass failed
            await asyncio.wait(side)
            for task in side:
                if not task.cancelled():
                    task.exception()  # the error of a task not waited for is no one's
        return repeats

    async def _count(self, job: JobRow) -> int:
        """The project's contacts, with statistics that know them: before the batches, two
        of which look up at a time, and each would take the ANALYZE."""
        async with self.pool.acquire() as conn:
            known = await contact_queries.count_project(conn, job.project_id)
            await _planned(conn, job, known)
            return known

    async def _read_known(self, project_id: int) -> KnownContacts:
        async with self.pool.acquire() as reader:
            believed = await contact_queries.believed_count(reader, project_id)
            return await read_known(reader, project_id, believed)

    async def _parsing(self, conn: Connection, job: JobRow, after: int) -> _Parser:
        if self.parser is None:
            # rows staged past the checkpoint: none by this code, which stages in the batch's
            # transaction, but a release before it staged the whole file at once and counted
            # (and reported) its invalid and duplicate rows then: they are not counted again
            self.counted = await queries.discard_staged_after(conn, job.id, after) > 0
            if self.repeats is None:  # a resumed job: its first pass is made again
                self.hashes = await _hashes_of(conn, job)
                self.repeats = await self._first_pass(conn, job)
            self.all_new = self.known == 0
            settings = self.settings
            error_cap = 0 if self.counted else settings.job_error_cap
            self.parser = _Parser(
                job,
                self.repeats,
                self.hashes,
                self.existing,
                after,
                settings.import_batch_size,
                error_cap,
            )
            reader = await self.pool.acquire()
            self.lent.append(reader)
            self.task = asyncio.create_task(self.parser.run(reader))
        return self.parser

    async def take(self, conn: Connection, job: JobRow, after: int, upto: int) -> None:
        """The batch's parsed rows (the engine takes batches in order)."""
        parser = await self._parsing(conn, job, after)
        self.taken[after] = await parser.batch(after, upto)

    async def write_ahead(self, conn: Connection, job: JobRow, after: int, upto: int) -> None:
        """Merge the rows whose email no other row has: no other batch has their contacts,
        so this needs nothing of the batch before. A dry run's batch and a mirror import's
        are merged in apply_range (a savepoint, the staged rows)."""
        batch = self.taken[after]
        if not job.params["dry_run"] and job.params["mode"] != "mirror":
            batch.merged, batch.none_existed = await _merge_unique(
                conn, job, batch, self.all_new, self.known
            )
            self.all_new = batch.none_existed

    async def apply_range(
        self, conn: Connection, job: JobRow, after: int, upto: int
    ) -> BatchOutcome:
        """The rest of the batch, once the batch before is committed: its held rows, the
        groups it completes, its joins to the list."""
        assert self.repeats is not None
        batch = self.taken.pop(after)
        outcome = batch.outcome
        # staged whether a dry run or not: the held rows, and a mirror import's every row
        mirror = job.params["mode"] == "mirror"
        await queries.stage_rows(conn, batch.held + batch.unique if mirror else batch.held)
        completed = self.repeats.completed(after, upto)
        if completed:  # every row of an email in these groups but its last is a duplicate
            outcome.counts["duplicate"] += await queries.mark_duplicates(conn, job.id, completed)
        if self.counted:
            for counted in ("invalid", "duplicate"):
                outcome.counts.pop(counted, None)
            outcome.errors_dropped = 0
        if not job.params["dry_run"]:
            merged_ahead = batch.merged is not None  # then write_ahead set all_new already
            none_existed = await _apply_batch(conn, job, batch, completed, self.all_new, self.known)
            self.all_new = self.all_new if merged_ahead else none_existed
            self._statistics_behind(job)  # of the batches before, committed
            self.known += outcome.counts["created"]
            return outcome
        try:
            async with conn.transaction():  # a savepoint: everything is computed, nothing kept
                self.all_new = await _apply_batch(
                    conn, job, batch, completed, self.all_new, self.known
                )
                raise _DryRun()
        except _DryRun:
            pass
        return outcome

    def _statistics_behind(self, job: JobRow) -> None:
        """Keep the statistics up with the contacts committed so far (keep_statistics), on a
        connection of its own, beside the batches, which do not wait for the ANALYZE. Other
        jobs' and requests' lookups of the project by email are planned with them: believed
        to hold no contact, a project of 300,000 was walked whole for each (2.8 s)."""
        if self.analyzing is None or self.analyzing.done():
            self.analyzing = asyncio.create_task(self._keep_statistics(job.project_id, self.known))

    async def _keep_statistics(self, project_id: int, known: int) -> None:
        try:
            async with self.pool.acquire() as conn:
                await contact_queries.keep_statistics(conn, project_id, known)
        except (asyncpg.PostgresError, OSError) as exc:  # the next batch tries again
            log.warning("import_statistics_not_kept", error=repr(exc))

    async def close(self) -> None:
        """Stop the parsing task and give its connection back, however the run ended."""
        if self.analyzing is not None:  # let it end: others plan with what it finds
            await asyncio.wait([self.analyzing])
        if self.task is not None:
            self.task.cancel()
            await asyncio.wait([self.task])
        for reader in self.lent:
            await self.pool.release(reader)
        self.lent.clear()


async def _hashes_of(conn: Connection, job: JobRow) -> KeyHashes:
    """The key hash a resumed job's held rows were staged with: the release before hashed
    with blake2b, and a job it started goes on with that, to hold and group as it did."""
    held = await queries.held_row(conn, job.id)
    if held is not None and int(legacy_key_hashes([held[0]])[0]) == held[1]:
        return legacy_key_hashes
    return key_hashes


async def _apply_batch(
    conn: Connection, job: JobRow, batch: _Batch, completed: list[int], all_new: bool, known: int
) -> bool:
    """Write the batch (see _merge_unique, unless merged ahead); whether all its unique rows
    were new contacts. ``known``: how many contacts the project has at least (_planned)."""
    outcome, mode = batch.outcome, _mode(job)
    # the list whose members the file lacks this batch unsubscribes: a mirror's last batch,
    # unless the file ends inside a quoted field (cut short, maybe: who was after the cut is
    # not known, and nobody is unsubscribed)
    last = batch.upto == job.total and not batch.cut_short
    mirrored = job.params.get("list_id") if job.params["mode"] == "mirror" and last else None
    if mirrored is not None:  # before this batch writes any membership (see take_list)
        await member_queries.take_list(conn, mirrored)
    if batch.merged is None:
        batch.merged, batch.none_existed = await _merge_unique(conn, job, batch, all_new, known)
    if completed or job.params.get("list_id") is not None:  # looked up by email: the joins too
        await _planned(conn, job, known)
    await _join(conn, job, batch.merged, outcome)
    if completed:
        held = await queries.held_emails(conn, job.id, completed)
        await _count_resubscribed(conn, job, [email for email, _, _ in held], outcome)
        counts = await contact_queries.merge_held(conn, job.project_id, job.id, completed, mode)
        _count(outcome, *counts)
        await _join(conn, job, held, outcome)
    if mirrored is not None:
        outcome.counts["unsubscribed"] += await queries.mirror_unsubscribe(
            conn, job.project_id, mirrored, job.id
        )
    return batch.none_existed


async def _merge_unique(
    conn: Connection, job: JobRow, batch: _Batch, all_new: bool, known: int
) -> tuple[list[tuple[str, int, str]], bool]:
    """Merge the batch's rows whose email no other row has; their (email_normalized,
    row_number, email) in file order if they are to be joined to anything, and whether all
    of them were new contacts. The rows parsed one by one join the fast ones as columns.
    Rows known to be new (see below) are COPYed straight into contacts, in email order; the
    others are merged from a temporary table, in which Postgres tells the new and the
    changed ones. A mirror import's rows are staged already, and merged from there."""
    outcome, mode = batch.outcome, _mode(job)
    rows = concat(batch.fast)
    if batch.unique:
        rows = concat([rows, contacts_of([r[1:10] for r in batch.unique])])
    none_existed = True
    if job.params["resubscribe"] or job.params["mode"] == "mirror":  # both look up by email
        await _planned(conn, job, known)
    await _count_resubscribed(conn, job, rows, outcome)
    if job.params["mode"] == "mirror":
        counts = await contact_queries.merge_staged(
            conn, job.project_id, job.id, batch.after, batch.upto, mode
        )
        _count(outcome, *counts)
    else:
        # by COPY: the rows no contact had as the import began, if it read them (existing),
        # else all of them while no batch has met an existing contact; the others, and those
        # too if their COPY meets a contact someone made meanwhile, are merged
        if batch.new is not None:
            to_copy, to_merge = batch.new, rows
        else:
            to_copy, to_merge = (rows, concat([])) if all_new else (concat([]), rows)
        if len(to_copy) and not await _copy_new(conn, job, to_copy, outcome):
            to_merge = concat([to_merge, to_copy])
        if to_merge:
            await _planned(conn, job, known)
            created, changed = await contact_queries.merge_text(
                conn, job.project_id, to_merge.copy_text(job.project_id), mode
            )
            _count(outcome, len(to_merge), created, changed)
            none_existed = created == len(to_merge)
    if job.params.get("list_id") is None:
        return [], none_existed  # nothing to join them to
    if batch.new is not None:
        rows = concat([rows, batch.new])  # every one of them is joined
    emails, numbers = rows.column("email_normalized"), rows.column("row_number")
    joined = list(zip(emails, numbers, rows.column("email"), strict=True))
    joined.sort(key=lambda row: row[1])  # in file order: so are the error rows of the joins
    return joined, none_existed


async def _copy_new(conn: Connection, job: JobRow, rows: Contacts, outcome: BatchOutcome) -> bool:
    """COPY these rows in as new contacts, in one COPY in email order (an index fills fastest
    so, and two imports of one project insert the same emails in the same order), and count
    them created; False, and nothing written or counted, if one of them exists. A batch's
    other statements (its merge, its held rows) each go in email order too, but one after
    another: two imports of overlapping files can still wait for each other the other way
    round, a deadlock Postgres ends, and the batch is retried (an attempt used)."""
    try:
        async with conn.transaction():  # a savepoint: a failed COPY leaves nothing
            await contact_queries.copy_new_text(conn, rows.copy_text(job.project_id))
    except asyncpg.UniqueViolationError:
        return False
    outcome.counts["created"] += len(rows)
    return True


async def _planned(conn: Connection, job: JobRow, known: int) -> None:
    """Before a batch first looks contacts up by email: statistics that know the project
    has ``known`` contacts at least (keep_statistics), or the lookups may be planned as a walk
    of the whole project per email. Rows COPYed in as new look nothing up: a new project's
    import, whose batches are all COPYed, leaves the ANALYZEs that other lookups need to
    _statistics_behind (25-100 ms each, five of them in a 1,000,000-row import; in the
    batch, the first one held the second batch up)."""
    await contact_queries.keep_statistics(conn, job.project_id, known)


def _mode(job: JobRow) -> str:
    """The merge's mode (queries.contacts._SETS): resubscribe=true sets every row's contact
    subscribed again, and such a row is one that changes its contact."""
    mode = "fill_blanks" if job.params["mode"] == "fill_blanks" else "upsert"
    return f"{mode}_resubscribe" if job.params["resubscribe"] else mode


async def _count_resubscribed(
    conn: Connection, job: JobRow, rows: Contacts | list[str], outcome: BatchOutcome
) -> None:
    """With resubscribe=true, count the contacts of these rows (or normalized emails) that
    their merge (next) is about to set subscribed again. Without it, the rows' emails are
    never taken out of Arrow (a batch's worth holds the event loop for milliseconds)."""
    if not job.params["resubscribe"] or not len(rows):
        return
    emails = rows.column("email_normalized") if isinstance(rows, Contacts) else rows
    outcome.counts["resubscribed"] += await contact_queries.count_not_subscribed(
        conn, job.project_id, emails
    )


def _count(outcome: BatchOutcome, staged: int, created: int, changed: int) -> None:
    outcome.counts["created"] += created
    outcome.counts["updated"] += changed - created
    outcome.counts["unchanged"] += staged - changed


async def _join(
    conn: Connection, job: JobRow, rows: list[tuple[str, int, str]], outcome: BatchOutcome
) -> None:
    """Join the merged rows' contacts to the list, if any: ``rows`` are (email_normalized,
    row_number, email)."""
    params = job.params
    if not rows or params.get("list_id") is None:
        return
    emails = [email for email, _, _ in rows]
    found = await contact_queries.find_by_emails(conn, job.project_id, emails)
    # a contact deleted by someone else since its row was merged is not joined: as if the
    # deletion came after this batch (which it did, or the merge would have made it again)
    targets = {found[email][0]: (row, shown) for email, row, shown in rows if email in found}
    statuses = {contact_id: status for contact_id, status in found.values()}
    await join_list(conn, job, targets, statuses, _joining(params), outcome)


def _joining(params: dict[str, Any]) -> Joining:
    """New members get the status asked for, else the list's (pending for double opt-in);
    with resubscribe=true, members who unsubscribed get it too if it is pending, subscribed or
    confirmed (and are counted members_resubscribed: updated counts contacts), and nobody
    else is moved."""
    new_status = params["status"] or params["default_status"]
    joined = new_status in JOINING
    return Joining(
        list_id=params["list_id"],
        new_status=new_status,
        requested_status=new_status if params["resubscribe"] and joined else None,
        moved_from=("unsubscribed",),
        moved_count="members_resubscribed",
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
    await queries.discard_staging(conn, job.id, settings.import_file_retention_seconds)
    if not job.params["dry_run"]:
        await contact_queries.refresh_statistics(conn)


def import_plan(pool: Pool, settings: Settings) -> Plan:
    """The plan of one run of an import: its state lives as long as the run."""
    run = _ImportRun(pool, settings)
    return Plan(
        apply_range=run.apply_range,
        overlap=Overlap(take=run.take, write_ahead=run.write_ahead),
        prepare=run.prepare,
        cleanup=cleanup_import,
        close=run.close,
        batch_size=lambda settings: settings.import_batch_size,
    )
