"""One membership at a time (PUT/DELETE /memberships, public links), with the consent rules."""

from __future__ import annotations

from typing import Any

from listmill.db import Connection
from listmill.errors import Conflict, NotFound
from listmill.queries import contacts as contact_queries
from listmill.queries import lists as list_queries
from listmill.queries import memberships as queries
from listmill.queries.memberships import Consent
from listmill.records import ListStatus, MailingList, Membership, OptInProcess
from listmill.validation import normalize_email

LIST_NOT_FOUND = "list not found"
CONTACT_NOT_FOUND = "contact not found"
MEMBERSHIP_NOT_FOUND = "membership not found"


async def _list(conn: Connection, project_id: int, list_id: int) -> MailingList:
    found = await list_queries.get_list(conn, project_id, list_id)
    if found is None:
        raise NotFound(LIST_NOT_FOUND)
    return found


async def _contact_id(
    conn: Connection, project_id: int, contact_id: int | None, contact: dict[str, Any] | None
) -> int | None:
    """The contact named by id, or by email (created if new, blanks filled, when ``contact``
    carries more than a lookup); None if the email is unknown and nothing may be created."""
    if contact_id is not None:
        if not await contact_queries.find_by_ids(conn, project_id, [contact_id]):
            raise NotFound(CONTACT_NOT_FOUND)
        return contact_id
    assert contact is not None
    email, normalized = normalize_email(contact["email"])
    await contact_queries.merge_contacts(
        conn,
        project_id,
        [{**contact, "email": email, "email_normalized": normalized}],
        "fill_blanks",
    )
    found = await contact_queries.find_by_emails(conn, project_id, [normalized])
    return found[normalized][0]


async def put_membership(
    conn: Connection,
    project_id: int,
    target: dict[str, Any],
    *,
    status: str | None,
    source: str,
    consent: Consent,
) -> tuple[Membership, bool]:
    """Create or update one membership in the caller's transaction; (membership, created).

    Raises NotFound for an unknown list or contact, Conflict for an archived list or a status
    change the consent rules forbid (a complained member is never silently re-subscribed)."""
    mailing_list = await _list(conn, project_id, target["list_id"])
    contact_id = await _contact_id(
        conn, project_id, target.get("contact_id"), target.get("contact")
    )
    assert contact_id is not None
    existing = await queries.get_member(conn, project_id, mailing_list.id, contact_id)
    if existing is None and mailing_list.status is ListStatus.ARCHIVED:
        raise Conflict("the list is archived: it takes no new members")
    double = mailing_list.opt_in_process is OptInProcess.DOUBLE
    new_status = status or ("pending" if double else "subscribed")
    result = await queries.add_members(
        conn, project_id, mailing_list.id, [contact_id],
        new_status=new_status, requested_status=status, source=source, consent=consent,
    )  # fmt: skip
    before, changed = result[contact_id]
    if before is not None and status is not None and not changed and before != status:
        raise Conflict(f"a {before} member cannot be moved to {status}")
    newly = queries.newly_active(result, new_status, status)
    await queries.enroll_in_list_sequences(conn, project_id, mailing_list.id, newly, None)
    member = await queries.get_member(conn, project_id, mailing_list.id, contact_id)
    assert member is not None
    return member, before is None


async def unsubscribe_membership(
    conn: Connection, project_id: int, list_id: int, contact_id: int | None, email: str | None
) -> Membership:
    """Set one membership unsubscribed (kept as suppression history); NotFound if none."""
    await _list(conn, project_id, list_id)
    if contact_id is None:
        assert email is not None
        member = await queries.find_member_by_email(
            conn, project_id, list_id, normalize_email(email)[1]
        )
        contact_id = member.contact_id if member else None
    if contact_id is None:
        raise NotFound(MEMBERSHIP_NOT_FOUND)
    result = await queries.unsubscribe_members(conn, list_id, [contact_id])
    if result[contact_id][0] is None:
        raise NotFound(MEMBERSHIP_NOT_FOUND)
    found = await queries.get_member(conn, project_id, list_id, contact_id)
    assert found is not None
    return found


async def confirm(conn: Connection, list_id: int, contact_id: int) -> str | None:
    """A double opt-in confirmation: pending -> confirmed, then enrollment; the status after."""
    status = await queries.confirm_member(conn, list_id, contact_id)
    project_id = await list_queries.project_of(conn, list_id)
    if status == "confirmed" and project_id is not None:
        await queries.enroll_in_list_sequences(conn, project_id, list_id, [contact_id], None)
    return status
