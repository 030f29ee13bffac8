"""List members: additions and removals as jobs, reads, search, and one membership at a time."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from api.context import POOL, SETTINGS, auth_of
from api.handlers.bulk import accept_job, first_occurrences
from api.http import (
    data_response,
    off_loop,
    page_response,
    parse_body,
    parse_query,
    path_id,
    read_json,
    requires,
    validate,
)
from api.links import with_links
from api.models import (
    AddMembersRequest,
    MemberQuery,
    MemberSearch,
    MembershipPut,
    MembershipTarget,
    RemoveMembersQuery,
    RemoveMembersRequest,
)
from api.ratelimit import rate_limited
from listmill.errors import Conflict, NotFound
from listmill.pagination import decode_id_cursor, page_meta
from listmill.queries import lists as list_queries
from listmill.queries import memberships as queries
from listmill.queries.memberships import Consent
from listmill.records import JobKind, ListStatus, MailingList, OptInProcess
from listmill.services import memberships as service
from listmill.validation import normalize_email

MEMBER_NOT_FOUND = "membership not found"


async def _list(request: web.Request) -> MailingList:
    async with request.app[POOL].acquire() as conn:
        found = await list_queries.get_list(conn, auth_of(request).project_id, path_id(request))
    if found is None:
        raise NotFound("list not found")
    return found


@requires("lists:write")
async def add_members(request: web.Request) -> web.Response:
    """POST /lists/{id}/members -> 202 job."""
    raw = await read_json(request)
    body = await off_loop(request, validate, AddMembersRequest, raw)
    mailing_list = await _list(request)
    if mailing_list.status is ListStatus.ARCHIVED:
        raise Conflict("the list is archived: it takes no new members")
    items: list[dict[str, Any]] = [
        {"contact_id": cid, "row": n} for n, cid in enumerate(body.contact_ids, start=1)
    ]
    first = len(items) + 1
    items += [
        {"contact": c.model_dump(mode="json", exclude_none=True), "row": n}
        for n, c in enumerate(body.contacts, start=first)
    ]
    double = mailing_list.opt_in_process is OptInProcess.DOUBLE
    params = body.model_dump(mode="json", exclude={"contact_ids", "contacts"}) | {
        "list_id": mailing_list.id,
        "default_status": "pending" if double else "subscribed",
    }
    return await accept_job(
        request, JobKind.ADD_MEMBERS, raw, params=params, payload=items, total=len(items), counts={}
    )


@requires("lists:write")
async def remove_members(request: web.Request) -> web.Response:
    """DELETE /lists/{id}/members[?mode=unsubscribe] -> 202 job."""
    raw = await read_json(request)
    body = await off_loop(request, validate, RemoveMembersRequest, raw)
    query = parse_query(request, RemoveMembersQuery)
    mailing_list = await _list(request)
    items = first_occurrences(body.contact_ids)
    params = {"list_id": mailing_list.id, "mode": query.mode, "identify_by": "contact_ids"}
    return await accept_job(
        request,
        JobKind.REMOVE_MEMBERS,
        {"body": raw, "mode": query.mode},
        params=params,
        payload=items,
        total=len(items),
        counts={},
    )


@requires("lists:read")
async def list_members(request: web.Request) -> web.Response:
    query = parse_query(request, MemberQuery)
    after = decode_id_cursor(query.cursor)
    mailing_list = await _list(request)
    project_id = auth_of(request).project_id
    async with request.app[POOL].acquire() as conn:
        rows = await queries.list_members(
            conn, project_id, mailing_list.id, status=query.status, after_contact_id=after,
            limit=query.limit,
        )  # fmt: skip
        total = None if after else await queries.count_members(conn, mailing_list.id, query.status)
    items, meta = page_meta(rows, query.limit, lambda m: [m.contact_id], total)
    settings = request.app[SETTINGS]
    return page_response([with_links(settings, m) for m in items], meta)


@requires("lists:read")
async def get_member(request: web.Request) -> web.Response:
    mailing_list = await _list(request)
    async with request.app[POOL].acquire() as conn:
        member = await queries.get_member(
            conn, auth_of(request).project_id, mailing_list.id, path_id(request, "contact_id")
        )
    if member is None:
        raise NotFound(MEMBER_NOT_FOUND)
    return data_response(with_links(request.app[SETTINGS], member))


@requires("lists:read")
async def search_members(request: web.Request) -> web.Response:
    """POST /lists/{id}/members/search {"email": …}: case-insensitive, exact address."""
    body = await parse_body(request, MemberSearch)
    mailing_list = await _list(request)
    async with request.app[POOL].acquire() as conn:
        member = await queries.find_member_by_email(
            conn, auth_of(request).project_id, mailing_list.id, normalize_email(body.email)[1]
        )
    found = [with_links(request.app[SETTINGS], member)] if member else []
    return page_response(found, {"has_more": False, "next_cursor": None, "total": len(found)})


@requires("lists:write")
@rate_limited("memberships")
async def put_membership(request: web.Request) -> web.Response:
    """PUT /memberships: one membership, synchronously; 201 new, 200 updated."""
    body = await parse_body(request, MembershipPut)
    consent = Consent(body.consent_source, body.consent_text_version, body.consent_ip)
    target = body.model_dump(mode="json", include={"list_id", "contact_id", "contact"})
    async with request.app[POOL].acquire() as conn, conn.transaction():
        member, created = await service.put_membership(
            conn, auth_of(request).project_id, target,
            status=body.status, source=body.source, consent=consent,
        )  # fmt: skip
    return data_response(with_links(request.app[SETTINGS], member), status=201 if created else 200)


@requires("lists:write")
@rate_limited("memberships")
async def delete_membership(request: web.Request) -> web.Response:
    """DELETE /memberships: the membership becomes unsubscribed (kept as history)."""
    body = await parse_body(request, MembershipTarget)
    email = body.contact.email if body.contact else None
    async with request.app[POOL].acquire() as conn, conn.transaction():
        member = await service.unsubscribe_membership(
            conn, auth_of(request).project_id, body.list_id, body.contact_id, email
        )
    return data_response(with_links(request.app[SETTINGS], member))
