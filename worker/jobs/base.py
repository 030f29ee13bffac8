"""What a job kind provides to the engine: how to apply one batch of its items."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from listmill.db import Connection, Pool
from listmill.queries import contacts as contact_queries
from listmill.records import JobRow
from listmill.settings import Settings

# (row_number, email, code, message), as the error report shows it
ErrorRow = tuple[int | None, str | None, str, str]


@dataclass
class BatchOutcome:
    counts: Counter[str] = field(default_factory=Counter)
    errors: list[ErrorRow] = field(default_factory=list)
    errors_dropped: int = 0  # error rows past the job's cap, counted but not kept

    def error(self, row_number: int, email: str | None, code: str, message: str) -> None:
        self.errors.append((row_number, email, code, message))


# apply(conn, job, items, first_row_number) — runs inside the batch's transaction
ApplyBatch = Callable[[Connection, JobRow, list[Any], int], Awaitable[BatchOutcome]]


# apply_range(conn, job, after, upto) — the items at positions (after, upto], in the batch's
# transaction
ApplyRange = Callable[[Connection, JobRow, int, int], Awaitable[BatchOutcome]]


@dataclass
class Prepared:
    """What a kind's one-off preparation found: the item count, and counts and error rows
    that belong to no batch (none for an import: its first pass gives its total, its
    batches count their own rows)."""

    total: int
    outcome: BatchOutcome


# prepare(conn, job, settings, pool) — runs once, in one transaction on ``conn``, before the
# first batch; ``pool`` lends connections for reads of committed data beside that transaction
Prepare = Callable[[Connection, JobRow, Settings, Pool], Awaitable[Prepared]]
# cleanup(conn, job, settings) — after the job ended, whatever its status
Cleanup = Callable[[Connection, JobRow, Settings], Awaitable[None]]


# take / write_ahead(conn, job, after, upto) — in the batch's transaction, before apply_range
BatchStep = Callable[[Connection, JobRow, int, int], Awaitable[None]]


@dataclass(frozen=True)
class Overlap:
    """A kind whose batch has a part that needs nothing the batch before it writes (an
    import's merge of rows whose email no other row has). The engine writes two batches at
    a time: ``take`` takes a batch's items, in batch order, and the next batch starts once it
    returned; ``write_ahead`` writes that part meanwhile, beside the batch before; then
    ``apply_range`` writes the rest once the batch before has committed."""

    take: BatchStep
    write_ahead: BatchStep


@dataclass
class Plan:
    apply_range: ApplyRange
    overlap: Overlap | None = None
    prepare: Prepare | None = None
    cleanup: Cleanup | None = None
    close: Callable[[], Awaitable[None]] | None = None  # after this run's batches, however they end
    batch_size: Callable[[Settings], int] = lambda settings: settings.batch_size


def payload_plan(apply: ApplyBatch, payload: list[Any], cleanup: Cleanup | None = None) -> Plan:
    """The plan of a kind whose items were stored with the job (ids, emails, contacts)."""

    async def apply_range(conn: Connection, job: JobRow, after: int, upto: int) -> BatchOutcome:
        return await apply(conn, job, payload[after:upto], after + 1)

    return Plan(apply_range=apply_range, cleanup=cleanup)


async def refresh_contact_statistics(conn: Connection, job: JobRow, settings: Settings) -> None:
    """Cleanup of the kinds that create contacts: see contacts.refresh_statistics."""
    await contact_queries.refresh_statistics(conn)
