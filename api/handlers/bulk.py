"""Bulk contact operations: validate, store the job, answer 202 with its id."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from aiohttp import web

from api.context import POOL, REDIS, SETTINGS, auth_of
from api.http import data_response, off_loop, read_json, requires, validate
from api.metrics import METRICS
from api.models import BulkContactsRequest, BulkUpsertRequest
from listmill.errors import Conflict, NotFound, ValidationFailed
from listmill.jobs.submit import Submission, fingerprint, submit
from listmill.queries import lists as list_queries
from listmill.records import Job, JobKind, ListStatus
from listmill.validation import normalize_email

BULK_KINDS = {
    "bulk-subscribe": JobKind.BULK_SUBSCRIBE,
    "bulk-unsubscribe": JobKind.BULK_UNSUBSCRIBE,
    "bulk-delete": JobKind.BULK_DELETE,
}
IDEMPOTENCY_HEADER = "Idempotency-Key"


def first_occurrences(
    items: list[Any], key: Callable[[Any], Hashable] = lambda item: item
) -> list[Any]:
    """The items with each repeat (of an earlier item's key) replaced by None, in place: the
    worker counts a None as a duplicate, and every other item keeps its position in the
    request, which its error row names."""
    seen: set[Hashable] = set()
    kept: list[Any] = []
    for item in items:
        k = key(item)
        kept.append(None if k in seen else item)
        seen.add(k)
    return kept


def _email_identity(email: str) -> str:
    """Whom an email names: two that differ only in case or surrounding space name one
    contact; an invalid one is its own (it gets its error row)."""
    try:
        return normalize_email(email)[1]
    except ValueError:
        return email


def idempotency_key(request: web.Request) -> str | None:
    """The request's Idempotency-Key, if any (1 to 255 characters)."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None and not 0 < len(key) <= 255:
        raise ValidationFailed.on(IDEMPOTENCY_HEADER, "must be 1 to 255 characters")
    return key


async def accept_job(request: web.Request, kind: JobKind, body: Any, **job: Any) -> web.Response:
    """Store and enqueue the job; 202 with its location, or 200 for an idempotent replay."""
    key = idempotency_key(request)
    submission = Submission(
        project_id=auth_of(request).project_id,
        kind=kind,
        idempotency_key=key,
        fingerprint=await off_loop(request, fingerprint, request.method, request.path, body),
        **job,
    )
    app = request.app
    stored, replayed = await submit(app[POOL], app[REDIS], app[SETTINGS], submission)
    if not replayed:
        app[METRICS].jobs_submitted.labels(kind.value).inc()
    location = f"/api/v1/jobs/{stored.id}"
    return data_response(
        Job.from_row(stored), status=200 if replayed else 202, headers={"Location": location}
    )


async def _check_list(request: web.Request, list_id: int | None, kind: JobKind) -> None:
    if list_id is None:
        return
    async with request.app[POOL].acquire() as conn:
        found = await list_queries.get_list(conn, auth_of(request).project_id, list_id)
    if found is None:
        raise NotFound("list not found")
    if found.status is ListStatus.ARCHIVED and kind is JobKind.BULK_SUBSCRIBE:
        raise Conflict("the list is archived: it takes no new members")


@requires("contacts:write")
async def bulk_contacts(request: web.Request) -> web.Response:
    """POST /contacts/bulk-subscribe | bulk-unsubscribe | bulk-delete."""
    kind = BULK_KINDS[request.match_info["operation"]]
    raw = await read_json(request)
    body = await off_loop(request, validate, BulkContactsRequest, raw)
    await _check_list(request, body.list_id, kind)
    identify_by = "contact_ids" if body.contact_ids is not None else "emails"
    given: list[Any] = body.contact_ids or body.emails or []
    items = first_occurrences(given, _email_identity) if body.emails else first_occurrences(given)
    params = body.model_dump(exclude={"contact_ids", "emails"}) | {"identify_by": identify_by}
    return await accept_job(
        request, kind, raw, params=params, payload=items, total=len(items), counts={}
    )


def _upsert_items(body: BulkUpsertRequest) -> list[dict[str, Any]]:
    """One item per email, the last row of an email winning; each keeps its request row."""
    by_email: dict[str, dict[str, Any]] = {}
    invalid: list[dict[str, Any]] = []
    for index, contact in enumerate(body.contacts, start=1):
        item = contact.model_dump(mode="json", exclude_none=True) | {"row": index}
        try:
            key = normalize_email(contact.email)[1]
        except ValueError:
            invalid.append(item)
            continue
        by_email.pop(key, None)
        by_email[key] = item
    return sorted([*by_email.values(), *invalid], key=lambda item: int(item["row"]))


@requires("contacts:write")
async def bulk_upsert(request: web.Request) -> web.Response:
    """POST /contacts/bulk-upsert: 1 to 10,000 contacts merged by email."""
    raw = await read_json(request)
    body = await off_loop(request, validate, BulkUpsertRequest, raw)
    items = await off_loop(request, _upsert_items, body)
    duplicates = len(body.contacts) - len(items)
    return await accept_job(
        request,
        JobKind.BULK_UPSERT,
        raw,
        params={"received": len(body.contacts)},
        payload=items,
        total=len(items),
        counts={"duplicate": duplicates} if duplicates else {},
    )
