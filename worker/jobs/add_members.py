"""add_members: contacts (by id, or by email: created if new, blanks filled) join a list,
with list-triggered sequence enrollment in the same transaction."""

from __future__ import annotations

from typing import Any

from listmill.db import Connection
from listmill.queries import contacts as contact_queries
from listmill.records import JobRow
from listmill.validation import normalize_email

from .base import BatchOutcome
from .memberships import Joining, join_list

NOT_FOUND = "no contact with this id in this project"


async def _contact_ids(
    conn: Connection, job: JobRow, items: list[dict[str, Any]], outcome: BatchOutcome
) -> tuple[dict[int, tuple[int, str | None]], dict[int, str]]:
    """contact id -> (row number, email) for the items that name a contact of this project,
    and contact id -> marketing status."""
    by_id = [item for item in items if "contact_id" in item]
    found = await contact_queries.find_by_ids(
        conn, job.project_id, [i["contact_id"] for i in by_id]
    )
    targets: dict[int, tuple[int, str | None]] = {}
    statuses = dict(found)
    for item in by_id:
        if item["contact_id"] in targets:
            outcome.counts["duplicate"] += 1
        elif item["contact_id"] in found:
            targets[item["contact_id"]] = (item["row"], None)
        else:
            outcome.error(item["row"], None, "not_found", f"{NOT_FOUND}: {item['contact_id']}")
            outcome.counts["not_found"] += 1
    rows: dict[str, dict[str, Any]] = {}
    for item in (i for i in items if "contact" in i):
        contact = item["contact"]
        try:
            email, normalized = normalize_email(contact["email"])
        except ValueError as exc:
            outcome.error(item["row"], str(contact["email"])[:320], "invalid_email", str(exc))
            outcome.counts["invalid"] += 1
            continue
        if normalized in rows:
            outcome.counts["duplicate"] += 1
        rows[normalized] = {
            **contact,
            "email": email,
            "email_normalized": normalized,
            "row": item["row"],
        }
    if rows:
        merged = await contact_queries.merge_contacts(
            conn, job.project_id, list(rows.values()), "fill_blanks"
        )
        outcome.counts["contacts_created"] += sum(1 for _, _, created in merged if created)
        by_email = await contact_queries.find_by_emails(conn, job.project_id, list(rows))
        for normalized, row in rows.items():
            contact_id, status = by_email[normalized]
            statuses[contact_id] = status
            if contact_id in targets:
                outcome.counts["duplicate"] += 1
            else:
                targets[contact_id] = (row["row"], row["email"])
    return targets, statuses


async def apply_add_members(
    conn: Connection, job: JobRow, items: list[Any], first: int
) -> BatchOutcome:
    outcome = BatchOutcome()
    targets, statuses = await _contact_ids(conn, job, items, outcome)
    if targets:
        params = job.params
        joining = Joining(
            list_id=params["list_id"],
            new_status=params["status"] or params["default_status"],
            requested_status=params["status"],
            source=params["source"],
            trigger_sequences=params["trigger_sequences"],
        )
        await join_list(conn, job, targets, statuses, joining, outcome)
    return outcome
