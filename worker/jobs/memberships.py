"""Joining contacts to a list, shared by add_members and imports with a list_id."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from listmill.db import Connection
from listmill.queries import memberships as member_queries
from listmill.queries.memberships import Consent
from listmill.records import JobRow

from .base import BatchOutcome

SUPPRESSED = "the contact is {status} for all email: it is not added to lists"


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


async def join_list(
    conn: Connection,
    job: JobRow,
    targets: Mapping[int, tuple[int, str | None]],
    statuses: dict[int, str],
    joining: Joining,
    outcome: BatchOutcome,
) -> None:
    """Add the target contacts (id -> (row, email)) to the list. Contacts whose marketing
    status is not subscribed are skipped as suppressed; enrollment follows in this same
    transaction. Counts: added, updated (moved_count), skipped, suppressed, enrolled."""
    kept = []
    for contact_id, (row, email) in targets.items():
        if statuses[contact_id] == "subscribed":
            kept.append(contact_id)
        else:
            outcome.error(row, email, "suppressed", SUPPRESSED.format(status=statuses[contact_id]))
            outcome.counts["suppressed"] += 1
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
