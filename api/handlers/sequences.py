"""Sequences and their enrollments."""

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
from api.models import PageQuery, SequenceCreate, SequencePatch
from listmill.db import Connection
from listmill.errors import NotFound, ValidationFailed
from listmill.pagination import decode_id_cursor, page_meta
from listmill.queries import lists as list_queries
from listmill.queries import sequences as queries
from listmill.records import TriggerConfig

SEQUENCE_NOT_FOUND = "sequence not found"


async def _check_trigger(conn: Connection, project_id: int, trigger: TriggerConfig) -> None:
    """A trigger must name a list of the caller's own project."""
    if await list_queries.get_list(conn, project_id, trigger.list_id) is None:
        raise ValidationFailed.on("trigger_config.list_id", "list not found", "not_found")


@requires("lists:read")
async def list_sequences(request: web.Request) -> web.Response:
    project_id = auth_of(request).project_id
    query = parse_query(request, PageQuery)
    after_id = decode_id_cursor(query.cursor)
    async with request.app[POOL].acquire() as conn:
        rows = await queries.list_sequences(conn, project_id, after_id=after_id, limit=query.limit)
        total = await queries.count_sequences(conn, project_id) if after_id is None else None
    items, meta = page_meta(rows, query.limit, lambda s: [s.id], total)
    return page_response(items, meta)


@requires("lists:write")
async def create_sequence(request: web.Request) -> web.Response:
    project_id = auth_of(request).project_id
    body = await parse_body(request, SequenceCreate)
    async with request.app[POOL].acquire() as conn:
        await _check_trigger(conn, project_id, body.trigger_config)
        created = await queries.insert_sequence(
            conn, project_id, body.name, body.status, body.trigger_config.model_dump(mode="json")
        )
    return data_response(created, status=201)


@requires("lists:read")
async def get_sequence(request: web.Request) -> web.Response:
    project_id = auth_of(request).project_id
    async with request.app[POOL].acquire() as conn:
        found = await queries.get_sequence(conn, project_id, path_id(request))
    if found is None:
        raise NotFound(SEQUENCE_NOT_FOUND)
    return data_response(found)


@requires("lists:write")
async def patch_sequence(request: web.Request) -> web.Response:
    project_id = auth_of(request).project_id
    sequence_id = path_id(request)
    body = await parse_body(request, SequencePatch)
    changes = patch_changes(body)
    async with request.app[POOL].acquire() as conn:
        if body.trigger_config is not None:
            await _check_trigger(conn, project_id, body.trigger_config)
        updated = await queries.update_sequence(conn, project_id, sequence_id, changes)
    if updated is None:
        raise NotFound(SEQUENCE_NOT_FOUND)
    return data_response(updated)


@requires("lists:write")
async def delete_sequence(request: web.Request) -> web.Response:
    project_id = auth_of(request).project_id
    async with request.app[POOL].acquire() as conn:
        deleted = await queries.delete_sequence(conn, project_id, path_id(request))
    if not deleted:
        raise NotFound(SEQUENCE_NOT_FOUND)
    return web.Response(status=204)


@requires("lists:read")
async def list_enrollments(request: web.Request) -> web.Response:
    project_id = auth_of(request).project_id
    sequence_id = path_id(request)
    query = parse_query(request, PageQuery)
    after_id = decode_id_cursor(query.cursor)
    async with request.app[POOL].acquire() as conn:
        if await queries.get_sequence(conn, project_id, sequence_id) is None:
            raise NotFound(SEQUENCE_NOT_FOUND)
        rows = await queries.list_enrollments(
            conn, project_id, sequence_id, after_id=after_id, limit=query.limit
        )
    items, meta = page_meta(rows, query.limit, lambda e: [e.contact_id], None)
    return page_response(items, meta)
