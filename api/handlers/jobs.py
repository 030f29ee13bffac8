"""Job reads, the error report, and cancellation."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import datetime
from typing import Any
from uuid import UUID

from aiohttp import web

from api.context import EVENTS, POOL, SETTINGS, auth_of
from api.http import data_response, page_response, parse_query, requires
from api.models import JobQuery, PageQuery
from listmill.errors import Conflict, NotFound
from listmill.pagination import decode_cursor, decode_id_cursor, invalid_cursor, page_meta
from listmill.queries import imports as import_queries
from listmill.queries import jobs as queries
from listmill.records import Job, JobRow, JobStatus, Progress

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
    async with request.app[POOL].acquire() as conn, conn.transaction():
        cancelled = await queries.request_cancel(conn, job.project_id, job.id)
        assert cancelled is not None
        if cancelled.status == JobStatus.CANCELLED:  # it was queued (maybe for a retry): it ended
            retention = request.app[SETTINGS].import_file_retention_seconds
            await import_queries.discard_staging(conn, job.id, retention)
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


EVENT_REREAD_SECONDS = 2.0


def _event_id(job: Job) -> str:
    return f"{job.progress.processed}-{job.status.value}"


async def _send(response: web.StreamResponse, job: Job) -> None:
    name = "end" if job.status.finished else "progress"
    payload = job.model_dump_json()
    await response.write(f"id: {_event_id(job)}\nevent: {name}\ndata: {payload}\n\n".encode())


def _advance(job: Job, event: dict[str, Any]) -> Job:
    """The job with a NOTIFY payload's progress applied (one event per committed batch)."""
    status = JobStatus(event["status"])
    progress = Progress.of(
        event["total"], event["processed"], event["rows_per_second"], status.finished
    )
    return job.model_copy(
        update={"status": status, "counts": event["counts"],
                "errors_count": event["errors_count"], "progress": progress}
    )  # fmt: skip


@requires("jobs:read")
async def job_events(request: web.Request) -> web.StreamResponse:
    """GET /jobs/{id}/events: Server-Sent Events, ``progress`` per committed batch, then
    ``end`` with the final state, then the stream closes. Resumes after ``Last-Event-ID``."""
    job = await _load(request)
    last_sent = request.headers.get("Last-Event-ID")
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                 "X-Accel-Buffering": "no"}
    )  # fmt: skip
    await response.prepare(request)
    async with request.app[EVENTS].follow(str(job.id)) as events:
        current = Job.from_row(await _load(request))  # read after following: nothing is missed
        while True:
            if _event_id(current) != last_sent:
                await _send(response, current)
                last_sent = _event_id(current)
            if current.status.finished:
                break
            try:
                event = await asyncio.wait_for(events.get(), EVENT_REREAD_SECONDS)
                current = _advance(current, event)
                if current.status.finished:
                    current = Job.from_row(await _load(request))
            except TimeoutError:
                current = Job.from_row(await _load(request))
                await response.write(b": keep-alive\n\n")
    await response.write_eof()
    return response
