"""Joining contacts to a list, shared by add_members and imports with a list_id."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg

from listmill.db import Connection
from listmill.queries import contacts as contact_queries
from listmill.queries import memberships as member_queries
from listmill.queries.memberships import Consent
from listmill.records import JobRow

from .base import BatchOutcome

SUPPRESSED = "the contact is {status} for all email: it is not added to lists"
DELETED = "the contact was deleted while this job ran: it is not added to the list"


@dataclass(frozen=True)
class Joining:
    list_id: int
    new_status: str  # for new members
    requested_status: str | None  # for existing members, when the transition is allowed
    source: str
    trigger_sequences: bool
    consent: Consent | None = None
    moved_from: tuple[str, ...] | None = None  # if given, members in these are moved (only)
    moved_count: str = "updated"  # the count of the members moved


def subscribable(
    targets: Mapping[int, tuple[int, str | None]],
    statuses: Mapping[int, str],
    outcome: BatchOutcome,
) -> list[int]:
    """Of the target contacts (id -> (row, email)), those whose marketing status, as the job
    read it, lets them join a list; the others are error rows (suppressed). That read decides:
    a change of the status that commits later comes after the joining (enrollment does not
    read it again), as a status change does not touch memberships."""
    kept = []
    for contact_id, (row, email) in targets.items():
        status = statuses[contact_id]
        if status == "subscribed":
            kept.append(contact_id)
        else:
            outcome.error(row, email, "suppressed", SUPPRESSED.format(status=status))
            outcome.counts["suppressed"] += 1
    return kept


async def add_members_present(
    conn: Connection,
    job: JobRow,
    list_id: int,
    contact_ids: list[int],
    targets: Mapping[int, tuple[int, str | None]],
    outcome: BatchOutcome,
    **adding: Any,
) -> dict[int, tuple[str | None, bool]]:
    """member_queries.add_members of these contacts, which the job read a moment ago. One
    that another transaction deleted since fails its membership's foreign key (it failed the
    job): then the contacts are locked against deletion (contact_queries.lock_for_joining),
    those gone are error rows (not found), and the others are added. The common case pays a
    savepoint only: locking every contact up front made each re-import into a list 13-15 %
    slower (a lock is written into every row it takes)."""
    try:
        async with conn.transaction():  # a savepoint
            return await member_queries.add_members(
                conn, job.project_id, list_id, contact_ids, **adding
            )
    except asyncpg.ForeignKeyViolationError:
        locked = await contact_queries.lock_for_joining(conn, job.project_id, contact_ids)
    for contact_id in contact_ids:
        if contact_id not in locked:
            row, email = targets[contact_id]
            outcome.error(row, email, "not_found", DELETED)
            outcome.counts["not_found"] += 1
    present = [contact_id for contact_id in contact_ids if contact_id in locked]
    if not present:
        return {}
    return await member_queries.add_members(conn, job.project_id, list_id, present, **adding)


async def join_list(
    conn: Connection,
    job: JobRow,
    targets: Mapping[int, tuple[int, str | None]],
    statuses: Mapping[int, str],
    joining: Joining,
    outcome: BatchOutcome,
) -> None:
    """Add the target contacts (id -> (row, email)) that may join (subscribable) to the list;
    enrollment follows in this same transaction. Counts: added, updated (moved_count),
    skipped, suppressed, not_found, enrolled."""
    kept = subscribable(targets, statuses, outcome)
    if not kept:
        return
    result = await add_members_present(
        conn, job, joining.list_id, kept, targets, outcome,
        new_status=joining.new_status, requested_status=joining.requested_status,
        moved_from=joining.moved_from, source=joining.source, consent=joining.consent,
    )  # fmt: skip
    for before, changed in result.values():
        moved = joining.moved_count
        outcome.counts["added" if before is None else moved if changed else "skipped"] += 1
    if joining.trigger_sequences:
        newly = member_queries.newly_active(result, joining.new_status, joining.requested_status)
        outcome.counts["enrolled"] += await member_queries.enroll_in_list_sequences(
            conn, job.project_id, joining.list_id, newly, job.id
        )
