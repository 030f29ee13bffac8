"""POST /contacts/import: the CSV is streamed into Postgres in chunks as it arrives (never
held whole in memory, never written to local disk), its header checked, and a job queued."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.helpers import parse_mimetype

from api.context import POOL, REDIS, SETTINGS, auth_of
from api.handlers.bulk import idempotency_key
from api.http import data_response, requires, validate
from api.metrics import METRICS
from api.models import ImportOptions
from listmill.charsets import NotInCharset, Transcoder, UnknownCharset
from listmill.csvimport import HeaderError, read_header
from listmill.db import Connection
from listmill.errors import (
    BadRequest,
    Conflict,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
)
from listmill.jobs.submit import Replay, Submission, earlier_job, fingerprint, store, wake
from listmill.queries import imports as queries
from listmill.queries import lists as list_queries
from listmill.records import Job, JobKind, ListStatus, OptInProcess
from listmill.uploadtext import UploadText

MAX_FIELD_BYTES = 4096  # an option's value; only the file part is large
# the least a read of the file asks for, whatever UPLOAD_CHUNK_BYTES is: a form's part refuses
# a read shorter than its boundary (+ 2), and a boundary, in a header line, is under 8 KiB
MIN_READ_BYTES = 16 * 1024
# what aiohttp raises for a broken form: a bad boundary or header, an unknown charset or
# transfer encoding, bytes that are not UTF-8
FORM_ERRORS = (ValueError, AssertionError, LookupError, RuntimeError)
CSV_TYPES = ("text/csv", "application/csv", "text/plain", "application/vnd.ms-excel")
Read = Callable[[int], Awaitable[bytes]]


async def _chunks(read: Read, size: int) -> AsyncIterator[tuple[bytes, bool]]:
    """The stream cut into chunks of ``size`` bytes (the last one shorter), each with whether
    more of the file follows it (a file may end at a chunk's end). Each read asks for a whole
    chunk, and never less than MIN_READ_BYTES."""
    buffer = bytearray()
    cut: bytes | None = None  # yielded once it is known whether anything follows
    while data := await read(max(size, MIN_READ_BYTES)):
        buffer += data
        while len(buffer) >= size:
            if cut is not None:
                yield cut, True
            cut = bytes(buffer[:size])
            del buffer[:size]
    if cut is not None:
        yield cut, bool(buffer)
    if buffer:
        yield bytes(buffer), False


async def _store_file(
    conn: Connection, request: web.Request, job_id: uuid.UUID, source: Source
) -> str:
    """Stream the file into chunks in the caller's transaction; the sha256 of its bytes.
    413 past the upload limit, 422 when the header row has no email column. A file sent in
    another charset than UTF-8 (declared) is stored as UTF-8 (listmill.charsets): 415 for a
    charset that is not one of text, 422 for bytes that cannot be read in it. Old Mac line
    ends are stored as line feeds, and Excel's sep= line is dropped (listmill.uploadtext)."""
    settings = request.app[SETTINGS]
    size, seq, digest = 0, 0, hashlib.sha256()
    try:
        transcoder, text = Transcoder(source.charset), UploadText()
        async for chunk, more in _chunks(source.read, settings.upload_chunk_bytes):
            size += len(chunk)
            if size > settings.max_upload_bytes:
                raise PayloadTooLarge(f"the file is larger than {settings.max_upload_bytes} bytes")
            digest.update(chunk)
            await _store_chunk(conn, job_id, seq, text.feed(transcoder.feed(chunk)), more)
            seq += 1
        if rest := text.feed(transcoder.finish()) + text.finish():
            await _store_chunk(conn, job_id, seq, rest, more=False)
            seq += 1
    except UnknownCharset as exc:
        raise UnsupportedMediaType(f"{exc}: send the CSV as UTF-8") from None
    except NotInCharset as exc:
        raise ValidationFailed.on("file", str(exc), "csv_charset") from None
    if seq == 0:
        raise ValidationFailed.on("file", "the file is empty", "empty_file")
    return digest.hexdigest()


async def _store_chunk(
    conn: Connection, job_id: uuid.UUID, seq: int, chunk: bytes, more: bool
) -> None:
    """Store a chunk of the file; the first one's header row is checked first, and must end
    within it if ``more`` of the file may follow."""
    if seq == 0:
        _check_header(chunk, more)
    await queries.insert_chunk(conn, job_id, seq, chunk)


def _check_header(first_chunk: bytes, more: bool) -> None:
    try:
        read_header(first_chunk, more=more)
    except HeaderError as exc:
        raise ValidationFailed.on("file", str(exc), "csv_header") from None


async def _check_list(conn: Connection, project_id: int, options: ImportOptions) -> dict[str, Any]:
    """Import parameters derived from the target list (404 unknown, 409 archived)."""
    if options.list_id is None:
        return {"default_status": "subscribed"}
    found = await list_queries.get_list(conn, project_id, options.list_id)
    if found is None:
        raise NotFound("list not found")
    if found.status is ListStatus.ARCHIVED:
        raise Conflict("the list is archived: it takes no new members")
    double = found.opt_in_process is OptInProcess.DOUBLE
    return {"default_status": "pending" if double else "subscribed"}


@dataclass
class Source:
    """Where the CSV bytes come from; for a form, the reader of the parts after the file."""

    read: Read
    form: MultipartReader | None = None
    charset: str | None = None  # as the request or the file part declares it


async def _source(request: web.Request, options: dict[str, str]) -> Source:
    """The CSV's source; form fields before the file join ``options`` (checked at once)."""
    if request.content_type in CSV_TYPES:
        return Source(request.content.read, charset=request.charset)
    if request.content_type != "multipart/form-data":
        raise UnsupportedMediaType("send the CSV as multipart/form-data (field file) or text/csv")
    reader = await request.multipart()
    file = await _fields_until_file(reader, options)
    if file is None:
        raise ValidationFailed.on("file", "no file part in the form", "missing")
    validate(ImportOptions, options)  # checked before the upload is read
    return Source(file.read_chunk, reader, _charset_of(file.headers.get("Content-Type")))


def _charset_of(content_type: str | None) -> str | None:
    """The charset a file part declares in its own Content-Type (a form's ``_charset_`` field
    is about its text fields, not a file's bytes)."""
    return parse_mimetype(content_type).parameters.get("charset") if content_type else None


async def _fields_after_file(source: Source, options: dict[str, str]) -> None:
    """Form fields sent after the file join ``options`` too; a second file is refused."""
    if source.form is not None and await _fields_until_file(source.form, options) is not None:
        raise ValidationFailed.on("file", "send one file per import", "duplicate")


async def _fields_until_file(
    reader: MultipartReader, options: dict[str, str]
) -> BodyPartReader | None:
    """Read form fields into ``options`` up to the next file part (returned), or the end."""
    try:
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise BadRequest("nested multipart bodies are not supported")
            if part.name == "file":
                return part
            _add_field(options, part.name, await _field_text(part))
    except FORM_ERRORS as exc:  # aiohttp's words for a broken form
        raise BadRequest(f"the multipart body is malformed: {exc}") from None
    return None


async def _field_text(part: BodyPartReader) -> str:
    """An option field's value: short UTF-8 text (413 past MAX_FIELD_BYTES)."""
    data = bytearray()
    while chunk := await part.read_chunk(MAX_FIELD_BYTES):
        data += chunk
        if len(data) > MAX_FIELD_BYTES:
            raise PayloadTooLarge(f"the form field {part.name} is over {MAX_FIELD_BYTES} bytes")
    return data.decode("utf-8")


def _add_field(options: dict[str, str], name: str | None, value: str) -> None:
    if not name:
        raise ValidationFailed.on("body", "a form field has no name", "missing")
    if name in options:
        raise ValidationFailed.on(
            name, "given twice (in the query, the form, or both)", "duplicate"
        )
    options[name] = value


@requires("contacts:write")
async def import_contacts(request: web.Request) -> web.Response:
    """POST /contacts/import -> 202 job, on the large lane."""
    project_id = auth_of(request).project_id
    key = idempotency_key(request)
    raw_options: dict[str, str] = {}
    for name, value in request.query.items():  # every pair: one given twice is refused
        _add_field(raw_options, name, value)
    validate(ImportOptions, raw_options)
    source = await _source(request, raw_options)
    pool, settings, job_id = request.app[POOL], request.app[SETTINGS], uuid.uuid4()
    try:
        async with pool.acquire() as conn, conn.transaction():
            file_digest = await _store_file(conn, request, job_id, source)
            await _fields_after_file(source, raw_options)
            options = validate(ImportOptions, raw_options)
            params = options.model_dump(mode="json") | await _check_list(conn, project_id, options)
            # the charset joins what a retry must repeat only where one was declared
            stored = [file_digest, params] + ([source.charset] if source.charset else [])
            submission = Submission(
                project_id=project_id, kind=JobKind.IMPORT, params=params, payload=None,
                total=None, counts={}, idempotency_key=key,
                fingerprint=fingerprint("POST", request.path, stored),
            )  # fmt: skip
            job = await store(conn, settings, submission, job_id)
    except Replay as replay:
        job = await earlier_job(pool, project_id, replay)
        return data_response(Job.from_row(job), headers={"Location": f"/api/v1/jobs/{job.id}"})
    await wake(pool, request.app[REDIS], settings, job)
    request.app[METRICS].jobs_submitted.labels(JobKind.IMPORT.value).inc()
    location = f"/api/v1/jobs/{job.id}"
    return data_response(Job.from_row(job), status=202, headers={"Location": location})
