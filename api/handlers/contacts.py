"""Contacts: the synchronous endpoints."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from api.context import POOL, auth_of
from api.http import (
    data_response,
    page_response,
    parse_body,
    parse_query,
    patch_changes,
    path_id,
    requires,
)
from api.models import ContactPatch, ContactQuery, ContactUpsert
from listmill.errors import NotFound
from listmill.pagination import decode_id_cursor, page_meta
from listmill.queries import contacts as queries
from listmill.validation import normalize_email

CONTACT_NOT_FOUND = "contact not found"


def contact_row(body: ContactUpsert) -> dict[str, Any]:
    """A contact as the merge statement takes it."""
    email, normalized = normalize_email(body.email)
    row = body.model_dump(exclude={"email"}, mode="json")
    return {**row, "email": email, "email_normalized": normalized}


@requires("contacts:read")
async def list_contacts(request: web.Request) -> web.Response:
    project_id = auth_of(request).project_id
    query = parse_query(request, ContactQuery)
    after_id = decode_id_cursor(query.cursor)
    async with request.app[POOL].acquire() as conn:
        rows = await queries.list_contacts(
            conn,
            project_id,
            email=query.email,
            status=query.status,
            after_id=after_id,
            limit=query.limit,
        )
        total = None
        if after_id is None:
            total = await queries.count_contacts(
                conn, project_id, email=query.email, status=query.status
            )
    items, meta = page_meta(rows, query.limit, lambda c: [c.id], total)
    return page_response(items, meta)


@requires("contacts:write")
async def upsert_contact(request: web.Request) -> web.Response:
    """Create the contact, or update the one with this email: 201 created, 200 otherwise."""
    project_id = auth_of(request).project_id
    body = await parse_body(request, ContactUpsert)
    row = contact_row(body)
    async with request.app[POOL].acquire() as conn, conn.transaction():
        changed = await queries.merge_contacts(conn, project_id, [row])
        contact = await queries.get_contact_by_email(conn, project_id, row["email_normalized"])
    created = bool(changed and changed[0][2])
    return data_response(contact, status=201 if created else 200)


@requires("contacts:read")
async def get_contact(request: web.Request) -> web.Response:
    project_id = auth_of(request).project_id
    async with request.app[POOL].acquire() as conn:
        contact = await queries.get_contact(conn, project_id, path_id(request))
    if contact is None:
        raise NotFound(CONTACT_NOT_FOUND)
    return data_response(contact)


@requires("contacts:write")
async def patch_contact(request: web.Request) -> web.Response:
    project_id = auth_of(request).project_id
    contact_id = path_id(request)
    body = await parse_body(request, ContactPatch)
    changes = patch_changes(body, nullable=frozenset(queries.FIELDS))
    if "email" in changes:
        changes["email"], changes["email_normalized"] = normalize_email(changes["email"])
    async with request.app[POOL].acquire() as conn:
        contact = await queries.update_contact(conn, project_id, contact_id, changes)
    if contact is None:
        raise NotFound(CONTACT_NOT_FOUND)
    return data_response(contact)


@requires("contacts:write")
async def delete_contact(request: web.Request) -> web.Response:
    project_id = auth_of(request).project_id
    async with request.app[POOL].acquire() as conn:
        deleted = await queries.delete_contact(conn, project_id, path_id(request))
    if not deleted:
        raise NotFound(CONTACT_NOT_FOUND)
    return web.Response(status=204)
