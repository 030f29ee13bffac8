"""member_count reconciliation (arq cron): folds the count changes the triggers add into each
list's count; the triggers keep counts exact, this proves it, and repairs and logs any drift
(say, after a manual SQL fix)."""

from __future__ import annotations

import structlog

from listmill.queries import memberships as queries
from worker.context import WorkerContext

log = structlog.get_logger(__name__)


async def reconcile_member_counts(ctx: WorkerContext) -> dict[str, int]:
    repaired = 0
    async with ctx["pool"].acquire() as conn:
        folded = await queries.fold_member_counts(conn)
        list_ids = await queries.all_list_ids(conn)
        for list_id in list_ids:
            async with conn.transaction():
                drift = await queries.reconcile_member_count(conn, list_id)
            if drift is not None:
                repaired += 1
                log.warning(
                    "member_count_drift_repaired", list_id=list_id, stored=drift[0], actual=drift[1]
                )
    summary = {"lists": len(list_ids), "folded": folded, "repaired": repaired}
    log.info("member_counts_reconciled", **summary)
    return summary
