"""API keys: sk_ (every scope) and rk_ (listed scopes); only a hash is ever stored."""

from __future__ import annotations

import hashlib
import secrets

from listmill.db import Connection
from listmill.queries import keys as key_queries

SCOPES = (
    "contacts:read",
    "contacts:write",
    "lists:read",
    "lists:write",
    "jobs:read",
    "ops:read",
)


def hash_key(key: str) -> bytes:
    """The stored form of a key: keys carry 192 random bits, so a plain SHA-256 suffices."""
    return hashlib.sha256(key.encode()).digest()


async def create_key(conn: Connection, project_id: int, scopes: list[str] | None) -> str:
    """Create a key and return it: the only time the whole key is ever seen."""
    if scopes is None:
        kind, prefix_letters, granted = "secret", "sk", list(SCOPES)
    else:
        unknown = sorted(set(scopes) - set(SCOPES))
        if unknown:
            raise ValueError(f"unknown scopes: {', '.join(unknown)}; known: {', '.join(SCOPES)}")
        kind, prefix_letters, granted = "restricted", "rk", sorted(set(scopes))
    secret = secrets.token_urlsafe(24)
    key = f"{prefix_letters}_{secret}"
    prefix = key[:11]
    await key_queries.insert_key(conn, project_id, kind, prefix, hash_key(key), granted)
    return key
