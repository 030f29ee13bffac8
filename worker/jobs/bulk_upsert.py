"""bulk_upsert: merge up to 10,000 contacts, one set-based statement per batch.

Items were deduplicated at submission (last one wins); each carries its request ``row``."""

from __future__ import annotations

from typing import Any

from listmill.db import Connection
from listmill.queries import contacts as contact_queries
from listmill.records import JobRow
from listmill.validation import normalize_email

from .base import BatchOutcome


async def apply_bulk_upsert(
    conn: Connection, job: JobRow, items: list[Any], first: int
) -> BatchOutcome:
    outcome = BatchOutcome()
    rows: list[dict[str, Any]] = []
    for offset, item in enumerate(items):
        try:
            email, normalized = normalize_email(item["email"])
        except ValueError as exc:
            row_number = item.get("row", first + offset)
            outcome.error(row_number, str(item["email"])[:320], "invalid_email", str(exc))
            outcome.counts["invalid"] += 1
            continue
        rows.append({**item, "email": email, "email_normalized": normalized})
    distinct = len({row["email_normalized"] for row in rows})
    changed = await contact_queries.merge_contacts(conn, job.project_id, rows)
    created = sum(1 for _, _, was_created in changed if was_created)
    outcome.counts["created"] += created
    outcome.counts["updated"] += len(changed) - created
    outcome.counts["unchanged"] += distinct - len(changed)
    return outcome
