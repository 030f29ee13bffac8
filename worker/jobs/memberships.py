"""Joining contacts to a list, shared by add_members and imports with a list_id."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

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


async def subscribable(
    conn: Connection,
    job: JobRow,
    targets: Mapping[int, tuple[int, str | None]],
    outcome: BatchOutcome,
) -> list[int]:
    """Of the target contacts (id -> (row, email)), those that may join a list, locked until
    the batch commits (contact_queries.lock_for_joining). The others are error rows: a
    contact whose marketing status is not subscribed is suppressed, one deleted since it was
    looked up is not found."""
    statuses = await contact_queries.lock_for_joining(conn, job.project_id, list(targets))
    kept = []
    for contact_id, (row, email) in targets.items():
        status = statuses.get(contact_id)
        if status is None:
            outcome.error(row, email, "not_found", DELETED)
            outcome.counts["not_found"] += 1
        elif status != "subscribed":
            outcome.error(row, email, "suppressed", SUPPRESSED.format(status=status))
            outcome.counts["suppressed"] += 1
        else:
            kept.append(contact_id)
    return kept


async def join_list(
    conn: Connection,
    job: JobRow,
    targets: Mapping[int, tuple[int, str | None]],
    joining: Joining,
    outcome: BatchOutcome,
) -> None:
    """Add the target contacts (id -> (row, email)) that may join (subscribable) to the list;
    enrollment follows in this same transaction. Counts: added, updated (moved_count),
    skipped, suppressed, not_found, enrolled."""
    kept = await subscribable(conn, job, targets, outcome)
    if not kept:
        return
    result = await member_queries.add_members(
        conn, job.project_id, joining.list_id, kept,
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
