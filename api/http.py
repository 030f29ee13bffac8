"""Request parsing and response helpers shared by every handler."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from listmill.errors import BadRequest, NotFound, UnsupportedMediaType, ValidationFailed

M = TypeVar("M", bound=BaseModel)
P = ParamSpec("P")
T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_ID = 2**63 - 1
MAX_JSON_DEPTH = 32  # far past any contact's custom data, far short of any parser's limit
# a body past this is parsed and validated in a thread (off_loop)
OFF_LOOP_BYTES = 64 * 1024


def requires(scope: str) -> Callable[[Handler], Handler]:
    """Mark a handler as needing an API key with ``scope``."""

    def mark(handler: Handler) -> Handler:
        handler.listmill_scope = scope  # type: ignore[attr-defined]
        return handler

    return mark


def public(handler: Handler) -> Handler:
    """Mark a handler as needing no API key."""
    handler.listmill_public = True  # type: ignore[attr-defined]
    return handler


def validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    """Pydantic errors as the envelope's ``details``: one entry per field."""
    return [
        {
            "field": ".".join(str(part) for part in err["loc"]) or "body",
            "message": err["msg"],
            "type": err["type"],
        }
        for err in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


def validate(model: type[M], data: Any) -> M:
    """``model`` from ``data``, or ValidationFailed naming each bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed(details=validation_details(exc)) from exc


async def off_loop(
    request: web.Request, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs
) -> T:
    """``work(*args, **kwargs)``, in a thread when the request's body is large. Parsing and
    validating 10,000 contacts holds the CPU for 150-300 ms; on the event loop that would hold
    every other request of the process as long, where in a thread the loop gets the GIL back
    every 5 ms (Python's switch interval). A chunked body has no Content-Length: its size is
    that of the body read (aiohttp keeps it; every caller has read it)."""
    size = request.content_length
    if size is None and request.body_exists:
        size = len(await request.read())
    if (size or 0) < OFF_LOOP_BYTES:
        return work(*args, **kwargs)
    return await asyncio.to_thread(work, *args, **kwargs)


async def read_json(request: web.Request) -> Any:
    """The JSON body; 415 for another content type, 400 when it does not parse."""
    if request.content_type not in ("application/json", "application/octet-stream", ""):
        raise UnsupportedMediaType("send the body as application/json")
    raw = await request.read()
    if not raw:
        raise BadRequest("a JSON body is required")
    return await off_loop(request, _parse_json, raw)


def _parse_json(raw: bytes) -> Any:
    try:
        body = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise BadRequest(f"the body is nested more than {MAX_JSON_DEPTH} levels deep") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from exc
    if _depth(body) > MAX_JSON_DEPTH:
        raise BadRequest(f"the body is nested more than {MAX_JSON_DEPTH} levels deep")
    return body


def _refuse_constant(name: str) -> Any:
    """NaN and Infinity are not JSON (RFC 8259), and Postgres' jsonb cannot keep them."""
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is too large a number")
    return number


def _depth(value: Any) -> int:
    """How deeply arrays and objects nest in ``value`` (iterative: no recursion limit)."""
    deepest, stack = 0, [(value, 1)]
    while stack and deepest <= MAX_JSON_DEPTH:
        node, depth = stack.pop()
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in node)
    return deepest


async def parse_body(request: web.Request, model: type[M]) -> M:
    return validate(model, await read_json(request))


def parse_query(request: web.Request, model: type[M]) -> M:
    return validate(model, dict(request.query))


def path_id(request: web.Request, name: str = "id") -> int:
    """A numeric path id; ids out of range are simply not found, and so is any other digit
    than 0-9 (str.isdigit() takes "¹", which int() refuses, and "٣", which it reads as 3)."""
    raw = request.match_info[name]
    if not (raw.isascii() and raw.isdigit()) or not 0 < int(raw) <= MAX_ID:
        raise NotFound()
    return int(raw)


def data_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response({"data": _jsonable(data)}, status=status, headers=headers)


def page_response(items: list[Any], meta: dict[str, Any]) -> web.Response:
    return web.json_response({"data": [_jsonable(i) for i in items], "meta": meta})


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def patch_changes(body: BaseModel, nullable: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The fields a PATCH sent; null clears a field only where the field is nullable."""
    changes = body.model_dump(exclude_unset=True, mode="json")
    nulls = sorted(f for f, v in changes.items() if v is None and f not in nullable)
    if nulls:
        raise ValidationFailed(
            f"may not be null: {', '.join(nulls)}",
            [{"field": f, "message": "may not be null", "type": "null"} for f in nulls],
        )
    return changes
