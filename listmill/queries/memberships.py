"""SQL for list memberships and the enrollments they trigger.

A list's member count is kept by triggers in schema.sql (lists.member_count and the changes
since, in list_member_count_changes): no statement here but the fold and the reconciliation
touches it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from listmill.consent import MemberStatus, allowed_from
from listmill.db import Connection, execute_planned, fetch_planned
from listmill.errors import NotFound
from listmill.queries import lists
from listmill.records import Membership

ACTIVE = ("subscribed", "confirmed")
LIST_DELETED = "the list was deleted"
JOINING = frozenset({"pending", "subscribed", "confirmed"})  # statuses that would mail it
MEMBER_COLUMNS = """
    m.list_id, m.contact_id, m.status, m.source, m.subscribed_at, m.confirmed_at,
    m.unsubscribed_at, m.consent_source, m.consent_text_version, host(m.consent_ip) AS consent_ip,
    m.created_at, m.updated_at,
    json_build_object('id', c.id, 'email', c.email, 'first_name', c.first_name,
                      'last_name', c.last_name, 'status', c.status) AS contact
"""


@dataclass(frozen=True)
class Consent:
    source: str | None = None
    text_version: str | None = None
    ip: str | None = None  # already anonymised


async def add_members(
    conn: Connection,
    project_id: int,
    list_id: int,
    contact_ids: list[int],
    *,
    new_status: str,
    requested_status: str | None,
    source: str,
    consent: Consent | None = None,
    moved_from: Sequence[str] | None = None,
) -> dict[int, tuple[str | None, bool]]:
    """Make contacts members of a list, set-based. New members get ``new_status``; existing
    ones move to ``requested_status`` only if given and allowed (``consent.ALLOWED_FROM``,
    or those in ``moved_from`` if given: an import's resubscribe).
    Consent is recorded when a membership has none yet, never overwritten.
    Returns contact id -> (status before or None if new, changed)."""
    consent = consent or Consent()
    allowed = allowed_from(MemberStatus(requested_status)) if requested_status else []
    if moved_from is not None:
        allowed = list(moved_from)
    await share_list(conn, list_id)
    rows = await fetch_planned(
        conn,
        """
        WITH target AS (SELECT DISTINCT unnest($3::bigint[]) AS contact_id),
        old AS (
            SELECT m.contact_id, m.status FROM list_memberships m
            WHERE m.list_id = $2 AND m.contact_id = ANY($3::bigint[])
        ),
        written AS (
            INSERT INTO list_memberships AS m
                (list_id, contact_id, project_id, status, source, subscribed_at, confirmed_at,
                 consent_source, consent_text_version, consent_ip)
            SELECT $2, contact_id, $1, $4, $7,
                   CASE WHEN $4 IN ('subscribed', 'confirmed') THEN now() END,
                   CASE WHEN $4 = 'confirmed' THEN now() END,
                   $8, $9, $10::inet
            FROM target ORDER BY contact_id  -- rows locked in one order by every writer
            ON CONFLICT (list_id, contact_id) DO UPDATE SET
                status = $5,
                subscribed_at = CASE WHEN $5 IN ('subscribed', 'confirmed')
                                      AND m.status NOT IN ('subscribed', 'confirmed')
                                     THEN now() ELSE m.subscribed_at END,
                confirmed_at = CASE WHEN $5 = 'confirmed' THEN now() ELSE m.confirmed_at END,
                unsubscribed_at = CASE WHEN $5 = 'unsubscribed' THEN now()
                                       WHEN $5 IN ('pending', 'subscribed', 'confirmed') THEN NULL
                                       ELSE m.unsubscribed_at END,
                consent_source = COALESCE(m.consent_source, EXCLUDED.consent_source),
                consent_text_version =
                    COALESCE(m.consent_text_version, EXCLUDED.consent_text_version),
                consent_ip = COALESCE(m.consent_ip, EXCLUDED.consent_ip),
                updated_at = now()
            WHERE $5::text IS NOT NULL AND m.status <> $5 AND m.status = ANY($6::text[])
            RETURNING m.contact_id
        )
        SELECT t.contact_id, o.status AS before, w.contact_id IS NOT NULL AS changed
        FROM target t LEFT JOIN old o USING (contact_id) LEFT JOIN written w USING (contact_id)
        """,
        project_id,
        list_id,
        contact_ids,
        new_status,
        requested_status,
        allowed,
        source,
        consent.source,
        consent.text_version,
        consent.ip,
    )
    return {r["contact_id"]: (r["before"], r["changed"]) for r in rows}


async def share_list(conn: Connection, list_id: int) -> None:
    """Take the list's row FOR KEY SHARE until the transaction ends, before any of its
    memberships is written: such writers do not wait for each other, a mirror import's
    unsubscribe (take_list) waits for them all to commit and keeps new ones out until it
    commits, and the list cannot be deleted meanwhile (list_memberships.list_id has no
    foreign key: this is the lock its check took per row). NotFound if it was deleted."""
    await _lock_list(conn, list_id, "FOR KEY SHARE")


async def _lock_list(conn: Connection, list_id: int, strength: str) -> None:
    if await conn.fetchval(f"SELECT id FROM lists WHERE id = $1 {strength}", list_id) is None:
        raise NotFound(LIST_DELETED)


async def take_list(conn: Connection, list_id: int) -> None:
    """Take the list's row FOR UPDATE until the transaction ends, before any of its
    memberships is written: no other writer of its memberships (share_list) is under way
    meanwhile. For a mirror import's unsubscribe of the members its file lacks: a statement
    that updates rows sees the rows another transaction updates once it commits, but not the
    rows that transaction inserts, so a bulk subscribe committing meanwhile was split in two,
    its existing members unsubscribed and its new ones left subscribed. NotFound if it was
    deleted."""
    await _lock_list(conn, list_id, "FOR UPDATE")


def newly_active(
    result: dict[int, tuple[str | None, bool]], new_status: str, requested_status: str | None
) -> list[int]:
    """The contacts an ``add_members`` call made subscribed or confirmed just now."""
    active = []
    for contact_id, (before, changed) in result.items():
        now = new_status if before is None else requested_status
        if changed and now in ACTIVE and before not in ACTIVE:
            active.append(contact_id)
    return active


async def unsubscribe_members(
    conn: Connection, list_id: int, contact_ids: list[int]
) -> dict[int, tuple[str | None, bool]]:
    """Set members' status to unsubscribed, keeping the membership (suppression history).
    Returns contact id -> (status before, changed); status None means not a member."""
    rows = await fetch_planned(
        conn,
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
    rows = await fetch_planned(
        conn,
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
    happen. Returns enrollments made. The callers join only contacts whose marketing status
    was subscribed when they read it, and it is not read again here: an unsubscribe that
    committed in between left a subscribed member never enrolled, a state no order of the
    two gives (with the status read deciding, the unsubscribe came after the joining).
    The sequences and the job are taken FOR KEY SHARE, once (their enrollments have no
    foreign key to them, see schema.sql): a sequence deleted meanwhile enrolls nobody, and a
    job deleted meanwhile leaves its enrollments without one, as its deletion would have."""
    if not contact_ids:
        return 0
    result = await execute_planned(
        conn,
        """
        WITH triggered AS (
            SELECT s.id FROM sequences s
            WHERE s.project_id = $1 AND s.status = 'active'
              AND s.trigger_config ->> 'type' = 'list_added'
              AND s.trigger_config ->> 'list_id' = $2::bigint::text
            FOR KEY SHARE
        ),
        job AS (SELECT id FROM jobs WHERE id = $4 FOR KEY SHARE)
        INSERT INTO sequence_enrollments (sequence_id, contact_id, project_id, job_id)
        SELECT s.id, c.id, $1, (SELECT id FROM job)
        FROM triggered s
        JOIN contacts c ON c.project_id = $1 AND c.id = ANY($3::bigint[])
        ON CONFLICT (sequence_id, contact_id) DO NOTHING
        """,
        project_id,
        list_id,
        contact_ids,
        job_id,
    )
    return int(result.split()[-1])


async def list_members(
    conn: Connection,
    project_id: int,
    list_id: int,
    *,
    status: str | None,
    after_contact_id: int | None,
    limit: int,
) -> list[Membership]:
    rows = await conn.fetch(
        f"""
        SELECT {MEMBER_COLUMNS}
        FROM list_memberships m JOIN contacts c ON c.id = m.contact_id
        WHERE m.project_id = $1 AND m.list_id = $2 AND ($3::text IS NULL OR m.status = $3)
          AND m.contact_id > $4
        ORDER BY m.contact_id LIMIT $5
        """,
        project_id,
        list_id,
        status,
        after_contact_id or 0,
        limit + 1,
    )
    return [Membership.of(r) for r in rows]


async def count_members(conn: Connection, list_id: int, status: str | None) -> int:
    total = await conn.fetchval(
        """
        SELECT count(*) FROM list_memberships
        WHERE list_id = $1 AND ($2::text IS NULL OR status = $2)
        """,
        list_id,
        status,
    )
    return int(total)


async def get_member(
    conn: Connection, project_id: int, list_id: int, contact_id: int
) -> Membership | None:
    row = await conn.fetchrow(
        f"""
        SELECT {MEMBER_COLUMNS}
        FROM list_memberships m JOIN contacts c ON c.id = m.contact_id
        WHERE m.project_id = $1 AND m.list_id = $2 AND m.contact_id = $3
        """,
        project_id,
        list_id,
        contact_id,
    )
    return Membership.of(row) if row else None


async def find_member_by_email(
    conn: Connection, project_id: int, list_id: int, email_normalized: str
) -> Membership | None:
    row = await conn.fetchrow(
        f"""
        SELECT {MEMBER_COLUMNS}
        FROM list_memberships m JOIN contacts c ON c.id = m.contact_id
        WHERE m.project_id = $1 AND m.list_id = $2 AND c.email_normalized = $3
        """,
        project_id,
        list_id,
        email_normalized,
    )
    return Membership.of(row) if row else None


async def confirm_member(conn: Connection, list_id: int, contact_id: int) -> str | None:
    """pending -> confirmed; the member's status afterwards (None if not a member)."""
    return await conn.fetchval(  # type: ignore[no-any-return]
        """
        WITH done AS (
            UPDATE list_memberships SET status = 'confirmed', confirmed_at = now(),
                                        subscribed_at = COALESCE(subscribed_at, now()),
                                        updated_at = now()
            WHERE list_id = $1 AND contact_id = $2 AND status = 'pending'
            RETURNING status
        )
        SELECT COALESCE((SELECT status FROM done),
                        (SELECT status FROM list_memberships
                         WHERE list_id = $1 AND contact_id = $2))
        """,
        list_id,
        contact_id,
    )


async def fold_member_counts(conn: Connection) -> int:
    """Fold the member-count changes into lists.member_count; the lists folded. Changes
    committed meanwhile stay for the next fold, as do those of lists deleted meanwhile, which
    are dropped."""
    folded = await conn.fetchval(
        """
        WITH folded AS (DELETE FROM list_member_count_changes RETURNING list_id, delta),
        sums AS (SELECT list_id, sum(delta) AS n FROM folded GROUP BY list_id),
        written AS (
            UPDATE lists l SET member_count = l.member_count + s.n
            FROM sums s WHERE l.id = s.list_id AND s.n <> 0
            RETURNING l.id
        )
        SELECT count(*) FROM sums
        """
    )
    return int(folded)


async def reconcile_member_count(conn: Connection, list_id: int) -> tuple[int, int] | None:
    """Recount one list; (believed, actual) when they differed, and then a change that makes
    up the difference is added, else None. One statement, so one snapshot: a membership
    change and its count change commit together, and either both are in it or neither."""
    row = await conn.fetchrow(
        f"""
        SELECT {lists.MEMBER_COUNT},
               (SELECT count(*) FROM list_memberships m
                WHERE m.list_id = lists.id AND m.status IN ('subscribed', 'confirmed')) AS actual
        FROM lists WHERE id = $1
        """,
        list_id,
    )
    if row is None or row["member_count"] == row["actual"]:
        return None
    believed, actual = int(row["member_count"]), int(row["actual"])
    await conn.execute(
        "INSERT INTO list_member_count_changes (list_id, delta) VALUES ($1, $2)",
        list_id,
        actual - believed,
    )
    return believed, actual


async def all_list_ids(conn: Connection) -> list[Any]:
    return [r["id"] for r in await conn.fetch("SELECT id FROM lists ORDER BY id")]


async def member_exists(conn: Connection, list_id: int, contact_id: int) -> bool:
    found = await conn.fetchval(
        "SELECT 1 FROM list_memberships WHERE list_id = $1 AND contact_id = $2",
        list_id,
        contact_id,
    )
    return found is not None
