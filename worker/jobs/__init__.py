"""Job kinds: each maps to the function that applies one batch of its items."""

from __future__ import annotations

from typing import Any

from listmill.db import Pool
from listmill.records import JobKind
from listmill.settings import Settings

from .add_members import apply_add_members
from .base import ApplyBatch, Plan, payload_plan, refresh_contact_statistics
from .bulk_status import apply_bulk_status, apply_remove_members
from .bulk_upsert import apply_bulk_upsert
from .csv_import import import_plan

BATCH_APPLIERS: dict[JobKind, ApplyBatch] = {
    JobKind.BULK_SUBSCRIBE: apply_bulk_status,
    JobKind.BULK_UNSUBSCRIBE: apply_bulk_status,
    JobKind.BULK_DELETE: apply_bulk_status,
    JobKind.BULK_UPSERT: apply_bulk_upsert,
    JobKind.ADD_MEMBERS: apply_add_members,
    JobKind.REMOVE_MEMBERS: apply_remove_members,
}


def plan_for(kind: JobKind, payload: Any, pool: Pool, settings: Settings) -> Plan:
    """How to run a job of ``kind``, for one run of it."""
    if kind is JobKind.IMPORT:
        return import_plan(pool, settings)
    creates_contacts = kind in (JobKind.BULK_UPSERT, JobKind.ADD_MEMBERS)
    cleanup = refresh_contact_statistics if creates_contacts else None
    return payload_plan(BATCH_APPLIERS[kind], payload, cleanup)
