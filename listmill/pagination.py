"""Keyset cursors: opaque to clients, stable under concurrent inserts."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

from listmill.errors import ValidationFailed

MAX_LIMIT = 100
DEFAULT_LIMIT = 25


def encode_cursor(key: list[Any]) -> str:
    """The cursor that resumes after the row whose sort key is ``key``."""
    raw = json.dumps(key, separators=(",", ":"), default=str).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> list[Any]:
    """The sort key in ``cursor``; raises ValidationFailed on anything a client forged."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        key = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, UnicodeError) as exc:
        raise invalid_cursor() from exc
    if not isinstance(key, list) or not key:
        raise invalid_cursor()
    return key


def decode_id_cursor(cursor: str | None) -> int | None:
    """The id in a cursor over an id-ordered listing."""
    if cursor is None:
        return None
    key = decode_cursor(cursor)
    if len(key) != 1 or not isinstance(key[0], int) or not 0 < key[0] < 2**63:
        raise invalid_cursor()
    return key[0]


def invalid_cursor() -> ValidationFailed:
    return ValidationFailed.on("cursor", "not a cursor this API issued", "cursor")


def page_meta(
    rows: list[Any], limit: int, key: Callable[[Any], list[Any]], total: int | None
) -> tuple[list[Any], dict[str, Any]]:
    """Cut the ``limit + 1`` fetched rows to a page and describe what follows."""
    has_more = len(rows) > limit
    items = rows[:limit]
    meta: dict[str, Any] = {
        "has_more": has_more,
        "next_cursor": encode_cursor(key(items[-1])) if has_more else None,
    }
    if total is not None:
        meta["total"] = total
    return items, meta
