"""Lists: create, read, update (archive), delete."""

from __future__ import annotations

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
from api.models import ListCreate, ListPatch, ListQuery
from listmill.errors import NotFound
from listmill.pagination import decode_id_cursor, page_meta
from listmill.queries import lists as queries

LIST_NOT_FOUND = "list not found"


@requires("lists:read")
async def list_lists(request: web.Request) -> web.Response:
    project_id = auth_of(request).project_id
    query = parse_query(request, ListQuery)
    after_id = decode_id_cursor(query.cursor)
    async with request.app[POOL].acquire() as conn:
        rows = await queries.list_lists(
            conn, project_id, status=query.status, after_id=after_id, limit=query.limit
        )
        total = None
        if after_id is None:
            total = await queries.count_lists(conn, project_id, status=query.status)
    items, meta = page_meta(rows, query.limit, lambda m: [m.id], total)
    return page_response(items, meta)


@requires("lists:write")
async def create_list(request: web.Request) -> web.Response:
    project_id = auth_of(request).project_id
    body = await parse_body(request, ListCreate)
    async with request.app[POOL].acquire() as conn:
        created = await queries.insert_list(
            conn, project_id, body.name, body.description, body.opt_in_process
        )
    return data_response(created, status=201)


@requires("lists:read")
async def get_list(request: web.Request) -> web.Response:
    project_id = auth_of(request).project_id
    async with request.app[POOL].acquire() as conn:
        found = await queries.get_list(conn, project_id, path_id(request))
    if found is None:
        raise NotFound(LIST_NOT_FOUND)
    return data_response(found)


@requires("lists:write")
async def patch_list(request: web.Request) -> web.Response:
    """Rename, describe, or archive (``status: archived``) a list."""
    project_id = auth_of(request).project_id
    list_id = path_id(request)
    body = await parse_body(request, ListPatch)
    changes = patch_changes(body, nullable=frozenset({"description"}))
    async with request.app[POOL].acquire() as conn:
        updated = await queries.update_list(conn, project_id, list_id, changes)
    if updated is None:
        raise NotFound(LIST_NOT_FOUND)
    return data_response(updated)


@requires("lists:write")
async def delete_list(request: web.Request) -> web.Response:
    project_id = auth_of(request).project_id
    async with request.app[POOL].acquire() as conn:
        deleted = await queries.delete_list(conn, project_id, path_id(request))
    if not deleted:
        raise NotFound(LIST_NOT_FOUND)
    return web.Response(status=204)
