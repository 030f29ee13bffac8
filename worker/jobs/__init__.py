"""Job kinds: each maps to the function that applies one batch of its items."""

from __future__ import annotations

from listmill.records import JobKind

from .add_members import apply_add_members
from .base import ApplyBatch
from .bulk_status import apply_bulk_status, apply_remove_members
from .bulk_upsert import apply_bulk_upsert

BATCH_APPLIERS: dict[JobKind, ApplyBatch] = {
    JobKind.BULK_SUBSCRIBE: apply_bulk_status,
    JobKind.BULK_UNSUBSCRIBE: apply_bulk_status,
    JobKind.BULK_DELETE: apply_bulk_status,
    JobKind.BULK_UPSERT: apply_bulk_upsert,
    JobKind.ADD_MEMBERS: apply_add_members,
    JobKind.REMOVE_MEMBERS: apply_remove_members,
}
