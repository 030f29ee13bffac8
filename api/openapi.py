"""The OpenAPI 3.1 document, generated from the pydantic models that validate requests and
shape responses, and from the handlers themselves (their scopes): a table of operations,
checked against the router by the tests so no route goes undocumented."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from api import models as m
from api.handlers import bulk, contacts, health, imports, jobs, lists, members, ops, public
from api.handlers import sequences as seq
from api.http import Handler
from api.http import public as public_route
from api.metrics import metrics
from listmill import records as r

API = "/api/v1"
REF = "#/components/schemas/{model}"
BIG_ID = {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}
UUID = {"type": "string", "format": "uuid"}
JOB_PATHS = (f"{API}/jobs/", f"{API}/contacts/import/", f"{API}/contacts/bulk/")
ERROR_TEXT = {
    400: "Malformed request", 401: "No or bad API key", 403: "The key lacks the scope",
    404: "Not found (also another project's ids)", 409: "Conflict", 413: "Body too large",
    415: "Unsupported content type", 422: "Validation failed; details name each field",
    429: "Rate limited (see Retry-After)", 503: "Postgres or Redis is down",
}  # fmt: skip
SERVER_REFUSED = "a request line or header too long (8 KiB), or not HTTP: plain text, from aiohttp"


class ErrorRow(BaseModel):
    row_number: int | None
    email: str | None
    code: str
    message: str


class PageMeta(BaseModel):
    has_more: bool
    next_cursor: str | None
    total: int | None = None
    truncated: bool | None = None


class OpsReport(BaseModel):
    """The queue report (see README, Operations)."""

    generated_at: str
    lanes: list[dict[str, Any]]
    throughput: list[dict[str, Any]]
    running_jobs: list[dict[str, Any]]
    recent_failures: list[dict[str, Any]]
    workers: list[dict[str, Any]]
    scheduled_runs: list[dict[str, Any]]


@dataclass(frozen=True)
class Op:
    method: str
    path: str
    handler: Handler
    summary: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    shape: str = "one"  # one | page | none | html | text | sse | import | raw | asset
    status: int = 200
    errors: tuple[int, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


JSON_BODY = (400, 413, 415, 422)
ITEM = (404,)
OPERATIONS: list[Op] = [
    Op("get", "/healthz", health.healthz, "Liveness", shape="raw"),
    Op(
        "get",
        "/readyz",
        health.readyz,
        "Readiness of Postgres and Redis",
        shape="raw",
        errors=(503,),
    ),
    Op("get", "/metrics", metrics, "Prometheus metrics", shape="text"),
    Op(
        "get",
        "/unsubscribe/{token}",
        public.unsubscribe_page,
        "Unsubscribe page",
        shape="html",
        errors=ITEM,
    ),
    Op(
        "post",
        "/unsubscribe/{token}",
        public.unsubscribe,
        "One-click unsubscribe (RFC 8058)",
        shape="html",
        errors=ITEM,
    ),
    Op(
        "get",
        "/confirm/{token}",
        public.confirm,
        "Double opt-in confirmation",
        shape="html",
        errors=ITEM,
    ),
    Op("get", "/ops", ops.dashboard, "The operators' dashboard page", shape="html"),
    Op(
        "get",
        "/ops/{name}",
        ops.dashboard_asset,
        "The dashboard's script and style sheet",
        shape="asset",
        errors=ITEM,
    ),
    Op(
        "get",
        f"{API}/contacts",
        contacts.list_contacts,
        "List contacts",
        query=m.ContactQuery,
        response=r.Contact,
        shape="page",
        errors=(422,),
    ),
    Op(
        "post",
        f"{API}/contacts",
        contacts.upsert_contact,
        "Upsert a contact by email (201 created, 200 updated)",
        body=m.ContactUpsert,
        response=r.Contact,
        status=201,
        errors=JSON_BODY,
        extra={"200": "Updated"},
    ),
    Op(
        "get",
        f"{API}/contacts/{{id}}",
        contacts.get_contact,
        "Get a contact",
        response=r.Contact,
        errors=ITEM,
    ),
    Op(
        "patch",
        f"{API}/contacts/{{id}}",
        contacts.patch_contact,
        "Change a contact; data merges",
        body=m.ContactPatch,
        response=r.Contact,
        errors=(*JSON_BODY, 404, 409),
    ),
    Op(
        "delete",
        f"{API}/contacts/{{id}}",
        contacts.delete_contact,
        "Delete a contact",
        shape="none",
        status=204,
        errors=ITEM,
    ),
    Op(
        "post",
        f"{API}/contacts/bulk-upsert",
        bulk.bulk_upsert,
        "Upsert up to 10,000 contacts (job)",
        body=m.BulkUpsertRequest,
        response=r.Job,
        status=202,
        errors=(*JSON_BODY, 409),
        extra={"200": "Idempotent replay"},
    ),
    *[
        Op(
            "post",
            f"{API}/contacts/{name}",
            bulk.bulk_contacts,
            f"{name} (job)",
            body=m.BulkContactsRequest,
            response=r.Job,
            status=202,
            errors=(*JSON_BODY, 404, 409),
            extra={"200": "Idempotent replay"},
        )
        for name in ("bulk-subscribe", "bulk-unsubscribe", "bulk-delete")
    ],
    Op(
        "post",
        f"{API}/contacts/import",
        imports.import_contacts,
        "Import a CSV (job)",
        query=m.ImportOptions,
        response=r.Job,
        shape="import",
        status=202,
        errors=(*JSON_BODY, 404, 409),
        extra={"200": "Idempotent replay"},
    ),
    Op(
        "get",
        f"{API}/contacts/import/{{id}}",
        jobs.get_job,
        "An import job (alias of /jobs/{id})",
        response=r.Job,
        errors=ITEM,
    ),
    Op(
        "get",
        f"{API}/contacts/bulk/{{id}}",
        jobs.get_job,
        "A bulk job (alias of /jobs/{id})",
        response=r.Job,
        errors=ITEM,
    ),
    Op(
        "get",
        f"{API}/lists",
        lists.list_lists,
        "List lists",
        query=m.ListQuery,
        response=r.MailingList,
        shape="page",
        errors=(422,),
    ),
    Op(
        "post",
        f"{API}/lists",
        lists.create_list,
        "Create a list",
        body=m.ListCreate,
        response=r.MailingList,
        status=201,
        errors=(*JSON_BODY, 409),
    ),
    Op(
        "get",
        f"{API}/lists/{{id}}",
        lists.get_list,
        "Get a list",
        response=r.MailingList,
        errors=ITEM,
    ),
    Op(
        "patch",
        f"{API}/lists/{{id}}",
        lists.patch_list,
        "Change or archive a list",
        body=m.ListPatch,
        response=r.MailingList,
        errors=(*JSON_BODY, 404, 409),
    ),
    Op(
        "delete",
        f"{API}/lists/{{id}}",
        lists.delete_list,
        "Delete a list and its memberships",
        shape="none",
        status=204,
        errors=ITEM,
    ),
    Op(
        "get",
        f"{API}/lists/{{id}}/members",
        members.list_members,
        "List members",
        query=m.MemberQuery,
        response=r.Membership,
        shape="page",
        errors=(404, 422),
    ),
    Op(
        "post",
        f"{API}/lists/{{id}}/members",
        members.add_members,
        "Add members (job)",
        body=m.AddMembersRequest,
        response=r.Job,
        status=202,
        errors=(*JSON_BODY, 404, 409),
        extra={"200": "Idempotent replay"},
    ),
    Op(
        "delete",
        f"{API}/lists/{{id}}/members",
        members.remove_members,
        "Remove members (job)",
        body=m.RemoveMembersRequest,
        query=m.RemoveMembersQuery,
        response=r.Job,
        status=202,
        errors=(*JSON_BODY, 404, 409),
        extra={"200": "Idempotent replay"},
    ),
    Op(
        "post",
        f"{API}/lists/{{id}}/members/search",
        members.search_members,
        "Find a member by email",
        body=m.MemberSearch,
        response=r.Membership,
        shape="page",
        errors=(*JSON_BODY, 404),
    ),
    Op(
        "get",
        f"{API}/lists/{{id}}/members/{{contact_id}}",
        members.get_member,
        "Get a membership",
        response=r.Membership,
        errors=ITEM,
    ),
    Op(
        "put",
        f"{API}/memberships",
        members.put_membership,
        "Create or update one membership",
        body=m.MembershipPut,
        response=r.Membership,
        errors=(*JSON_BODY, 404, 409, 429),
        extra={"201": "Created"},
    ),
    Op(
        "delete",
        f"{API}/memberships",
        members.delete_membership,
        "Unsubscribe one membership",
        body=m.MembershipTarget,
        response=r.Membership,
        errors=(*JSON_BODY, 404, 429),
    ),
    Op(
        "get",
        f"{API}/sequences",
        seq.list_sequences,
        "List sequences",
        query=m.PageQuery,
        response=r.Sequence,
        shape="page",
        errors=(422,),
    ),
    Op(
        "post",
        f"{API}/sequences",
        seq.create_sequence,
        "Create a sequence",
        body=m.SequenceCreate,
        response=r.Sequence,
        status=201,
        errors=JSON_BODY,
    ),
    Op(
        "get",
        f"{API}/sequences/{{id}}",
        seq.get_sequence,
        "Get a sequence",
        response=r.Sequence,
        errors=ITEM,
    ),
    Op(
        "patch",
        f"{API}/sequences/{{id}}",
        seq.patch_sequence,
        "Change a sequence",
        body=m.SequencePatch,
        response=r.Sequence,
        errors=(*JSON_BODY, 404),
    ),
    Op(
        "delete",
        f"{API}/sequences/{{id}}",
        seq.delete_sequence,
        "Delete a sequence",
        shape="none",
        status=204,
        errors=ITEM,
    ),
    Op(
        "get",
        f"{API}/sequences/{{id}}/enrollments",
        seq.list_enrollments,
        "List enrollments",
        query=m.PageQuery,
        response=r.Enrollment,
        shape="page",
        errors=(404, 422),
    ),
    Op("get", f"{API}/ops/queues", ops.queues, "Queue report for operators", response=OpsReport),
    Op(
        "get",
        f"{API}/jobs",
        jobs.list_jobs,
        "List jobs, newest first",
        query=m.JobQuery,
        response=r.Job,
        shape="page",
        errors=(422,),
    ),
    Op("get", f"{API}/jobs/{{id}}", jobs.get_job, "Get a job", response=r.Job, errors=ITEM),
    Op(
        "get",
        f"{API}/jobs/{{id}}/errors",
        jobs.list_errors,
        "A job's error rows (JSON pages, or CSV)",
        query=m.PageQuery,
        response=ErrorRow,
        shape="page",
        errors=(404, 422),
        extra={"csv": True},
    ),
    Op(
        "get",
        f"{API}/jobs/{{id}}/events",
        jobs.job_events,
        "Progress as Server-Sent Events",
        shape="sse",
        errors=ITEM,
    ),
    Op(
        "post",
        f"{API}/jobs/{{id}}/cancel",
        jobs.cancel_job,
        "Cancel a job",
        response=r.Job,
        errors=(404, 409),
    ),
]


def _param_schema(path: str, name: str) -> dict[str, Any]:
    if name == "token":
        return {"type": "string", "minLength": 1}
    if name == "name":
        return {"type": "string", "enum": sorted(ops.ASSETS)}
    return UUID if path.startswith(JOB_PATHS) else BIG_ID


def _components() -> dict[str, Any]:
    used: list[tuple[type[BaseModel], Any]] = []
    for op in OPERATIONS:
        for model, mode in ((op.body, "validation"), (op.query, "validation")):
            if model is not None:
                used.append((model, mode))
        if op.response is not None:
            used.append((op.response, "serialization"))
    used += [(PageMeta, "serialization")]
    _, schema = models_json_schema(list(dict.fromkeys(used)), ref_template=REF)
    defs: dict[str, Any] = schema.get("$defs", {})
    defs["Error"] = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "details"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "details": {"type": "array", "items": {"type": "object"}},
                },
            }
        },
    }
    return defs


def _ref(model: type[BaseModel], defs: dict[str, Any]) -> dict[str, Any]:
    name = model.__name__
    for candidate in (name, f"{name}-Output", f"{name}-Input"):
        if candidate in defs:
            return {"$ref": REF.format(model=candidate)}
    raise KeyError(name)


def _success(op: Op, defs: dict[str, Any]) -> dict[str, Any]:
    if op.shape == "none":
        return {"description": "Done"}
    if op.shape == "asset":
        text = {"schema": {"type": "string"}}
        return {"description": op.summary, "content": {"text/javascript": text, "text/css": text}}
    if op.shape in ("html", "text", "sse", "raw"):
        kind = {"html": "text/html", "text": "text/plain", "sse": "text/event-stream"}
        if op.shape == "raw":
            return {
                "description": op.summary,
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        return {
            "description": op.summary,
            "content": {kind[op.shape]: {"schema": {"type": "string"}}},
        }
    assert op.response is not None
    item = _ref(op.response, defs)
    if op.shape == "page":
        body = {
            "type": "object", "required": ["data", "meta"],
            "properties": {"data": {"type": "array", "items": item}, "meta": _ref(PageMeta, defs)},
        }  # fmt: skip
    else:
        body = {"type": "object", "required": ["data"], "properties": {"data": item}}
    content: dict[str, Any] = {"application/json": {"schema": body}}
    if op.extra.get("csv"):
        content["text/csv"] = {"schema": {"type": "string"}}
    return {"description": op.summary, "content": content}


def _parameters(op: Op, defs: dict[str, Any]) -> list[dict[str, Any]]:
    names = [part[1:-1] for part in op.path.split("/") if part.startswith("{")]
    params = [
        {"name": n, "in": "path", "required": True, "schema": _param_schema(op.path, n)}
        for n in names
    ]
    if op.query is not None:
        model = defs[_ref(op.query, defs)["$ref"].rsplit("/", 1)[-1]]
        for name, schema in model.get("properties", {}).items():
            params.append({"name": name, "in": "query", "required": False, "schema": schema})
    return params


def _operation_id(op: Op) -> str:
    words = op.path.strip("/").replace("{", "").replace("}", "").replace("-", "_").split("/")
    return "_".join([op.method, *words])


def _operation(op: Op, defs: dict[str, Any]) -> dict[str, Any]:
    responses: dict[str, Any] = {str(op.status): _success(op, defs)}
    for code, text in op.extra.items():
        if code.isdigit():
            responses[code] = {**_success(op, defs), "description": text}
    scope = getattr(op.handler, "listmill_scope", None)
    errors = set(op.errors) | ({401, 403, 503} if scope else set())
    for status in sorted(errors):
        error = {"application/json": {"schema": {"$ref": REF.format(model="Error")}}}
        responses[str(status)] = {"description": ERROR_TEXT[status], "content": error}
    # before any handler: aiohttp's own answer to a request it cannot read
    plain = {"text/plain": {"schema": {"type": "string"}}}
    if "400" in responses:
        responses["400"]["description"] += f"; or {SERVER_REFUSED}"
        responses["400"]["content"] |= plain
    else:
        responses["400"] = {
            "description": SERVER_REFUSED[:1].upper() + SERVER_REFUSED[1:],
            "content": plain,
        }
    operation: dict[str, Any] = {
        "summary": op.summary,
        "operationId": _operation_id(op),
        "parameters": _parameters(op, defs),
        "responses": responses,
        "security": [{"bearer": [scope]}] if scope else [],
    }
    if op.body is not None:
        schema = _ref(op.body, defs)
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
    if op.shape == "import":
        operation["requestBody"] = _import_body()
    return operation


def _import_body() -> dict[str, Any]:
    csv_file = {"type": "string", "contentMediaType": "text/csv"}
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["file"], "properties": {"file": csv_file}}
            },
            "text/csv": {"schema": {"type": "string"}},
        },
    }


@functools.cache
def build_document() -> dict[str, Any]:
    """The whole OpenAPI 3.1 document (built once: it depends on nothing but the code)."""
    defs = _components()
    paths: dict[str, Any] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op, defs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "listmill",
            "version": "1",
            "description": "Email-audience data with durable bulk jobs. Every error answers "
            'with the envelope {"error": {"code", "message", "details"}}.',
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": defs,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "sk_ or rk_ key"}
            },
        },
    }


@public_route
async def openapi_json(request: web.Request) -> web.Response:
    """GET /api/v1/openapi.json"""
    return web.json_response(build_document())


OPERATIONS.append(Op("get", f"{API}/openapi.json", openapi_json, "This document", shape="raw"))
