"""SQL for list memberships and the enrollments they trigger.

``lists.member_count`` is kept by triggers in schema.sql, so no statement here touches it.
"""

from __future__ import annotations

from uuid import UUID

from listmill.db import Connection

ACTIVE = ("subscribed", "confirmed")


async def subscribe_members(
    conn: Connection, project_id: int, list_id: int, contact_ids: list[int], source: str
) -> dict[int, tuple[str | None, bool]]:
    """Make the contacts subscribed members of the list: new members are added; pending and
    unsubscribed ones are re-subscribed (asked for explicitly); bounced, complained and cleaned
    members are left alone. Returns contact id -> (status before, changed)."""
    rows = await conn.fetch(
        """
        WITH target AS (SELECT unnest($3::bigint[]) AS contact_id),
        old AS (
            SELECT m.contact_id, m.status FROM list_memberships m
            WHERE m.list_id = $2 AND m.contact_id = ANY($3::bigint[])
        ),
        written AS (
            INSERT INTO list_memberships AS m
                (list_id, contact_id, project_id, status, source, subscribed_at)
            SELECT $2, contact_id, $1, 'subscribed', $4, now() FROM target
            ON CONFLICT (list_id, contact_id) DO UPDATE SET
                status = 'subscribed', subscribed_at = now(), unsubscribed_at = NULL,
                updated_at = now()
            WHERE m.status IN ('pending', 'unsubscribed')
            RETURNING m.contact_id
        )
        SELECT t.contact_id, o.status AS before, w.contact_id IS NOT NULL AS changed
        FROM target t LEFT JOIN old o USING (contact_id) LEFT JOIN written w USING (contact_id)
        """,
        project_id,
        list_id,
        contact_ids,
        source,
    )
    return {r["contact_id"]: (r["before"], r["changed"]) for r in rows}


async def unsubscribe_members(
    conn: Connection, list_id: int, contact_ids: list[int]
) -> dict[int, tuple[str | None, bool]]:
    """Set members' status to unsubscribed, keeping the membership (suppression history).
    Returns contact id -> (status before, changed); status None means not a member."""
    rows = await conn.fetch(
        """
        WITH target AS (SELECT unnest($2::bigint[]) AS contact_id),
        old AS (
            SELECT m.contact_id, m.status FROM list_memberships m
            WHERE m.list_id = $1 AND m.contact_id = ANY($2::bigint[])
        ),
        written AS (
            UPDATE list_memberships m SET status = 'unsubscribed', unsubscribed_at = now(),
                                          updated_at = now()
            WHERE m.list_id = $1 AND m.contact_id = ANY($2::bigint[])
              AND m.status IN ('pending', 'subscribed', 'confirmed')
            RETURNING m.contact_id
        )
        SELECT t.contact_id, o.status AS before, w.contact_id IS NOT NULL AS changed
        FROM target t LEFT JOIN old o USING (contact_id) LEFT JOIN written w USING (contact_id)
        """,
        list_id,
        contact_ids,
    )
    return {r["contact_id"]: (r["before"], r["changed"]) for r in rows}


async def delete_members(conn: Connection, list_id: int, contact_ids: list[int]) -> set[int]:
    """Delete memberships; returns the contact ids that were members."""
    rows = await conn.fetch(
        """
        DELETE FROM list_memberships WHERE list_id = $1 AND contact_id = ANY($2::bigint[])
        RETURNING contact_id
        """,
        list_id,
        contact_ids,
    )
    return {r["contact_id"] for r in rows}


async def enroll_in_list_sequences(
    conn: Connection, project_id: int, list_id: int, contact_ids: list[int], job_id: UUID | None
) -> int:
    """Enroll contacts who just became active members of ``list_id`` in every active sequence
    of the project triggered by that list; once per (sequence, contact), whatever retries
    happen; only contacts whose marketing status is subscribed. Returns enrollments made."""
    if not contact_ids:
        return 0
    result = await conn.execute(
        """
        INSERT INTO sequence_enrollments (sequence_id, contact_id, project_id, job_id)
        SELECT s.id, c.id, $1, $4
        FROM sequences s
        JOIN contacts c ON c.project_id = $1 AND c.id = ANY($3::bigint[])
                       AND c.status = 'subscribed'
        WHERE s.project_id = $1 AND s.status = 'active'
          AND s.trigger_config ->> 'type' = 'list_added'
          AND s.trigger_config ->> 'list_id' = $2::bigint::text
        ON CONFLICT (sequence_id, contact_id) DO NOTHING
        """,
        project_id,
        list_id,
        contact_ids,
        job_id,
    )
    return int(result.split()[-1])
