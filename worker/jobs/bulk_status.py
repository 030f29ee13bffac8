"""bulk_subscribe, bulk_unsubscribe and bulk_delete: by contact ids or emails, on the contact
itself or, with ``list_id``, on its membership of that list."""

from __future__ import annotations

from typing import Any

from listmill.db import Connection
from listmill.queries import contacts as contact_queries
from listmill.queries import memberships as member_queries
from listmill.records import JobKind, JobRow
from listmill.validation import normalize_email

from .base import BatchOutcome
from .memberships import add_members_present, subscribable

NOT_FOUND = "no contact with this id or email in this project"


Found = dict[int, tuple[int, str | None, str]]  # contact id -> (row number, email, status)


async def _resolve(
    conn: Connection, job: JobRow, items: list[Any], first: int, outcome: BatchOutcome
) -> Found:
    """The project's contacts among these items, with the row that named each and its
    marketing status; the rest are error rows (counted by _count_errors). A None is a repeat
    of an earlier item (api.handlers.bulk.first_occurrences): a duplicate."""
    outcome.counts["duplicate"] += sum(1 for item in items if item is None)
    if job.params["identify_by"] == "contact_ids":
        return await _resolve_ids(conn, job, items, first, outcome)
    return await _resolve_emails(conn, job, items, first, outcome)


async def _resolve_ids(
    conn: Connection, job: JobRow, items: list[int | None], first: int, outcome: BatchOutcome
) -> Found:
    ids = [item for item in items if item is not None]
    by_id = await contact_queries.find_by_ids(conn, job.project_id, ids)
    found: Found = {}
    for offset, contact_id in enumerate(items):
        if contact_id is None:
            continue
        if contact_id in by_id:
            found[contact_id] = (first + offset, None, by_id[contact_id])
        else:
            outcome.error(first + offset, None, "not_found", f"{NOT_FOUND}: {contact_id}")
    return found


async def _resolve_emails(
    conn: Connection, job: JobRow, items: list[str | None], first: int, outcome: BatchOutcome
) -> Found:
    normalized: dict[int, str] = {}
    seen: set[str] = set()
    for offset, raw in enumerate(items):
        if raw is None:
            continue
        try:
            email = normalize_email(raw)[1]
        except ValueError as exc:
            outcome.error(first + offset, raw[:320], "invalid_email", str(exc))
            continue
        if email in seen:  # one the web kept, in a job stored by a release before
            outcome.counts["duplicate"] += 1
            continue
        seen.add(email)
        normalized[offset] = email
    by_email = await contact_queries.find_by_emails(conn, job.project_id, list(normalized.values()))
    found: Found = {}
    for offset, email in normalized.items():
        if email in by_email:
            contact_id, status = by_email[email]
            found[contact_id] = (first + offset, email, status)
        else:
            outcome.error(first + offset, email, "not_found", NOT_FOUND)
    return found


def _count_errors(outcome: BatchOutcome) -> None:
    for _, _, code, _ in outcome.errors:
        outcome.counts["invalid" if code == "invalid_email" else "not_found"] += 1


# the membership operation each kind performs when it names a list
LIST_OPERATIONS = {
    JobKind.BULK_SUBSCRIBE: "subscribe",
    JobKind.BULK_UNSUBSCRIBE: "unsubscribe",
    JobKind.BULK_DELETE: "delete",
}


async def apply_bulk_status(
    conn: Connection, job: JobRow, items: list[Any], first: int
) -> BatchOutcome:
    outcome = BatchOutcome()
    found = await _resolve(conn, job, items, first, outcome)
    _count_errors(outcome)
    if found:
        list_id = job.params.get("list_id")
        if list_id is None:
            await _apply_to_contacts(conn, job, {i: f[2] for i, f in found.items()}, outcome)
        else:
            operation = LIST_OPERATIONS[job.kind]
            await apply_to_memberships(conn, job, list_id, found, operation, outcome)
    return outcome


async def apply_remove_members(
    conn: Connection, job: JobRow, items: list[Any], first: int
) -> BatchOutcome:
    """remove_members: delete the memberships, or (mode=unsubscribe) keep them unsubscribed."""
    outcome = BatchOutcome()
    found = await _resolve(conn, job, items, first, outcome)
    _count_errors(outcome)
    if found:
        operation = "unsubscribe" if job.params["mode"] == "unsubscribe" else "delete"
        await apply_to_memberships(conn, job, job.params["list_id"], found, operation, outcome)
    return outcome


async def _apply_to_contacts(
    conn: Connection, job: JobRow, before: dict[int, str], outcome: BatchOutcome
) -> None:
    ids = list(before)
    if job.kind is JobKind.BULK_DELETE:
        deleted = await contact_queries.delete_contacts(conn, job.project_id, ids)
        outcome.counts["deleted"] += len(deleted)
        return
    if job.kind is JobKind.BULK_SUBSCRIBE:
        # an explicit re-subscribe; bounced and complained addresses stay suppressed
        status, movable = "subscribed", ("unsubscribed",)
    else:
        status, movable = "unsubscribed", ("subscribed",)
    moved = await contact_queries.set_status(conn, job.project_id, ids, status, movable)
    for contact_id in ids:
        if contact_id in moved:
            outcome.counts[status] += 1
        elif before.get(contact_id) == status or job.kind is JobKind.BULK_UNSUBSCRIBE:
            outcome.counts["unchanged"] += 1
        else:
            outcome.counts["skipped"] += 1


async def apply_to_memberships(
    conn: Connection,
    job: JobRow,
    list_id: int,
    found: Found,
    operation: str,
    outcome: BatchOutcome,
) -> None:
    """subscribe | unsubscribe | delete the contacts' memberships of one list. A contact whose
    own marketing status is not subscribed is never subscribed to a list (suppressed)."""
    ids = list(found)
    if operation == "delete":
        removed = await member_queries.delete_members(conn, list_id, ids)
        outcome.counts["deleted"] += len(removed)
        outcome.counts["skipped"] += len(ids) - len(removed)
        return
    if operation == "unsubscribe":
        result = await member_queries.unsubscribe_members(conn, list_id, ids)
        for before, changed in result.values():
            key = "unsubscribed" if changed else ("skipped" if before is None else "unchanged")
            outcome.counts[key] += 1
        return
    # an explicit subscribe: new members and pending or unsubscribed ones become subscribed
    targets = {contact_id: (row, email) for contact_id, (row, email, _) in found.items()}
    statuses = {contact_id: status for contact_id, (_, _, status) in found.items()}
    ids = subscribable(targets, statuses, outcome)
    if not ids:
        return
    result = await add_members_present(
        conn, job, list_id, ids, targets, outcome,
        new_status="subscribed", requested_status="subscribed", source="api",
    )  # fmt: skip
    for before, changed in result.values():
        active = before in member_queries.ACTIVE
        outcome.counts["subscribed" if changed else "unchanged" if active else "skipped"] += 1
    if job.params.get("trigger_sequences", True):
        newly = member_queries.newly_active(result, "subscribed", "subscribed")
        outcome.counts["enrolled"] += await member_queries.enroll_in_list_sequences(
            conn, job.project_id, list_id, newly, job.id
        )
