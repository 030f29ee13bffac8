"""Job kinds: each maps to the function that applies one batch of its items."""

from __future__ import annotations

from typing import Any

from listmill.records import JobKind

from .add_members import apply_add_members
from .base import ApplyBatch, Plan, payload_plan, refresh_contact_statistics
from .bulk_status import apply_bulk_status, apply_remove_members
from .bulk_upsert import apply_bulk_upsert
from .csv_import import IMPORT_PLAN

BATCH_APPLIERS: dict[JobKind, ApplyBatch] = {
    JobKind.BULK_SUBSCRIBE: apply_bulk_status,
    JobKind.BULK_UNSUBSCRIBE: apply_bulk_status,
    JobKind.BULK_DELETE: apply_bulk_status,
    JobKind.BULK_UPSERT: apply_bulk_upsert,
    JobKind.ADD_MEMBERS: apply_add_members,
    JobKind.REMOVE_MEMBERS: apply_remove_members,
}


def plan_for(kind: JobKind, payload: Any) -> Plan:
    """How to run a job of ``kind``."""
    if kind is JobKind.IMPORT:
        return IMPORT_PLAN
    creates_contacts = kind in (JobKind.BULK_UPSERT, JobKind.ADD_MEMBERS)
    cleanup = refresh_contact_statistics if creates_contacts else None
    return payload_plan(BATCH_APPLIERS[kind], payload, cleanup)
