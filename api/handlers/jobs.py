"""Job reads, the error report, and cancellation."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from uuid import UUID

from aiohttp import web

from api.context import POOL, auth_of
from api.http import data_response, page_response, parse_query, requires
from api.models import JobQuery, PageQuery
from listmill.errors import Conflict, NotFound
from listmill.pagination import decode_cursor, decode_id_cursor, invalid_cursor, page_meta
from listmill.queries import jobs as queries
from listmill.records import Job, JobRow

JOB_NOT_FOUND = "job not found"
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
ERROR_COLUMNS = ("row_number", "email", "code", "message")


def _job_id(request: web.Request) -> UUID:
    try:
        return UUID(request.match_info["id"])
    except ValueError:
        raise NotFound(JOB_NOT_FOUND) from None


async def _load(request: web.Request) -> JobRow:
    async with request.app[POOL].acquire() as conn:
        job = await queries.get_job(conn, auth_of(request).project_id, _job_id(request))
    if job is None:
        raise NotFound(JOB_NOT_FOUND)
    return job


def _before(cursor: str | None) -> tuple[datetime, UUID] | None:
    if cursor is None:
        return None
    key = decode_cursor(cursor)
    try:
        created_at, job_id = key
        return datetime.fromisoformat(created_at), UUID(job_id)
    except (ValueError, TypeError):
        raise invalid_cursor() from None


def _job_key(job: JobRow) -> list[str]:
    return [job.created_at.isoformat(), str(job.id)]


@requires("jobs:read")
async def list_jobs(request: web.Request) -> web.Response:
    project_id = auth_of(request).project_id
    query = parse_query(request, JobQuery)
    before = _before(query.cursor)
    async with request.app[POOL].acquire() as conn:
        rows = await queries.list_jobs(
            conn, project_id, status=query.status, kind=query.kind, before=before, limit=query.limit
        )
        total = None
        if before is None:
            total = await queries.count_jobs(conn, project_id, status=query.status, kind=query.kind)
    items, meta = page_meta(rows, query.limit, _job_key, total)
    return page_response([Job.from_row(j) for j in items], meta)


@requires("jobs:read")
async def get_job(request: web.Request) -> web.Response:
    """GET /jobs/{id}, and its seed-style aliases /contacts/import/{id}, /contacts/bulk/{id}."""
    return data_response(Job.from_row(await _load(request)))


@requires("contacts:write")
async def cancel_job(request: web.Request) -> web.Response:
    """A queued job never starts; a running one stops after its current batch."""
    job = await _load(request)
    if job.status.finished:
        raise Conflict(f"the job has already finished ({job.status.value})")
    async with request.app[POOL].acquire() as conn:
        cancelled = await queries.request_cancel(conn, job.project_id, job.id)
    assert cancelled is not None
    return data_response(Job.from_row(cancelled))


def neutralise(cell: object) -> str:
    """A cell a spreadsheet will show as text, never run as a formula."""
    text = "" if cell is None else str(cell)
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


@requires("jobs:read")
async def list_errors(request: web.Request) -> web.StreamResponse:
    """The job's per-row errors: JSON pages, or the whole report as CSV (Accept: text/csv)."""
    job = await _load(request)
    if "text/csv" in request.headers.get("Accept", ""):
        return await _errors_csv(request, job)
    query = parse_query(request, PageQuery)
    after = decode_id_cursor(query.cursor)
    async with request.app[POOL].acquire() as conn:
        rows = await queries.list_errors(conn, job.id, after_seq=after or 0, limit=query.limit + 1)
    total = job.errors_count if after is None else None
    items, meta = page_meta(rows, query.limit, lambda e: [e["seq"]], total)
    meta["truncated"] = job.errors_truncated
    return page_response([{k: e[k] for k in ERROR_COLUMNS} for e in items], meta)


async def _errors_csv(request: web.Request, job: JobRow) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": f'attachment; filename="job-{job.id}-errors.csv"',
        }
    )
    await response.prepare(request)
    after = 0
    while True:
        async with request.app[POOL].acquire() as conn:
            rows = await queries.list_errors(conn, job.id, after_seq=after, limit=5000)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        if after == 0:
            writer.writerow(ERROR_COLUMNS)
        writer.writerows([[neutralise(r[c]) for c in ERROR_COLUMNS] for r in rows])
        await response.write(buffer.getvalue().encode())
        if len(rows) < 5000:
            break
        after = rows[-1]["seq"]
    await response.write_eof()
    return response
