"""SQL for projects and API keys."""

from __future__ import annotations

from listmill.db import Connection
from listmill.records import ApiKey

KEY_COLUMNS = "id, project_id, kind, prefix, scopes, created_at, last_used_at, revoked_at"


async def ensure_project(conn: Connection, name: str) -> tuple[int, bool]:
    """The id of project ``name``, created if missing; and whether it was created."""
    row = await conn.fetchrow(
        "INSERT INTO projects (name) VALUES ($1) ON CONFLICT (name) DO NOTHING RETURNING id", name
    )
    if row is not None:
        return int(row["id"]), True
    existing = await conn.fetchval("SELECT id FROM projects WHERE name = $1", name)
    return int(existing), False


async def project_name(conn: Connection, project_id: int) -> str | None:
    name: str | None = await conn.fetchval("SELECT name FROM projects WHERE id = $1", project_id)
    return name


async def insert_key(
    conn: Connection, project_id: int, kind: str, prefix: str, secret_hash: bytes, scopes: list[str]
) -> ApiKey:
    row = await conn.fetchrow(
        f"""
        INSERT INTO api_keys (project_id, kind, prefix, secret_hash, scopes)
        VALUES ($1, $2, $3, $4, $5)
        RETURNING {KEY_COLUMNS}
        """,
        project_id,
        kind,
        prefix,
        secret_hash,
        scopes,
    )
    return ApiKey.of(row)


async def find_active_key(conn: Connection, secret_hash: bytes) -> ApiKey | None:
    """The unrevoked key with this hash; marks it used (at most once a minute). One statement:
    every request of the service makes it."""
    row = await conn.fetchrow(
        f"""
        WITH found AS (
            SELECT {KEY_COLUMNS} FROM api_keys WHERE secret_hash = $1 AND revoked_at IS NULL
        ), used AS (
            UPDATE api_keys SET last_used_at = now()
            WHERE id = (SELECT id FROM found)
              AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
        )
        SELECT * FROM found
        """,
        secret_hash,
    )
    return None if row is None else ApiKey.of(row)


async def revoke_key(conn: Connection, prefix: str) -> bool:
    """Revoke the key with this visible prefix; False if none is active."""
    status = await conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE prefix = $1 AND revoked_at IS NULL", prefix
    )
    return bool(status != "UPDATE 0")
