"""One membership at a time (PUT/DELETE /memberships, public links), with the consent rules."""

from __future__ import annotations

from typing import Any

from listmill.db import Connection
from listmill.errors import Conflict, NotFound
from listmill.queries import contacts as contact_queries
from listmill.queries import lists as list_queries
from listmill.queries import memberships as queries
from listmill.queries.memberships import JOINING, Consent
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


async def _contact(
    conn: Connection, project_id: int, contact_id: int | None, contact: dict[str, Any] | None
) -> tuple[int, str]:
    """The contact named by id, or by email (created if new, blanks filled): its id and
    marketing status. NotFound for an unknown id."""
    if contact_id is not None:
        found = await contact_queries.find_by_ids(conn, project_id, [contact_id])
        if contact_id not in found:
            raise NotFound(CONTACT_NOT_FOUND)
        return contact_id, found[contact_id]
    assert contact is not None
    email, normalized = normalize_email(contact["email"])
    await contact_queries.merge_contacts(
        conn,
        project_id,
        [{**contact, "email": email, "email_normalized": normalized}],
        "fill_blanks",
    )
    by_email = await contact_queries.find_by_emails(conn, project_id, [normalized])
    return by_email[normalized]


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

    Raises NotFound for an unknown list or contact, Conflict for an archived list, a contact
    suppressed for all email (unsubscribed, bounced, complained) that would become an active
    member, or a status change the consent rules forbid (a complained member is never
    silently re-subscribed)."""
    mailing_list = await _list(conn, project_id, target["list_id"])
    contact_id, _ = await _contact(
        conn, project_id, target.get("contact_id"), target.get("contact")
    )
    # its status now, and no deletion of it until this commits (lock_for_joining)
    locked = await contact_queries.lock_for_joining(conn, project_id, [contact_id])
    if contact_id not in locked:
        raise NotFound(CONTACT_NOT_FOUND)
    contact_status = locked[contact_id]
    existing = await queries.get_member(conn, project_id, mailing_list.id, contact_id)
    if existing is None and mailing_list.status is ListStatus.ARCHIVED:
        raise Conflict("the list is archived: it takes no new members")
    double = mailing_list.opt_in_process is OptInProcess.DOUBLE
    new_status = status or ("pending" if double else "subscribed")
    if contact_status != "subscribed" and new_status in JOINING:
        raise Conflict(
            f"the contact is {contact_status} for all email: it does not join lists; if it "
            "opted in again, set its status to subscribed first (PATCH /contacts/{id})"
        )
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
        # enrolled only while the contact takes email at all
        locked = await contact_queries.lock_for_joining(conn, project_id, [contact_id])
        if locked.get(contact_id) == "subscribed":
            await queries.enroll_in_list_sequences(conn, project_id, list_id, [contact_id], None)
    return status
