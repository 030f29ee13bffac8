"""Keys, scopes, request ids and the error envelope for what aiohttp itself refuses."""

from __future__ import annotations

import asyncio
import io

import asyncpg

from listmill.queries.keys import revoke_key
from tests.conftest import Api, new_key


async def test_missing_or_bad_key_is_401_with_envelope(api: Api) -> None:
    response = await api.client.get("/api/v1/contacts")
    assert response.status == 401
    assert (await response.json())["error"]["code"] == "unauthorized"
    status, body = await api.get("/contacts", key="sk_not-a-real-key")
    assert status == 401 and body["error"]["code"] == "unauthorized"
    response = await api.client.get("/api/v1/contacts", headers={"Authorization": "Basic abc"})
    assert response.status == 401


async def test_a_key_that_is_not_ascii_is_401_not_500(api: Api) -> None:
    host, port = api.client.server.host, api.client.server.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        b"GET /api/v1/contacts HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Authorization: Bearer sk_\xc3\xa9\xff\r\n\r\n"
    )
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b'"code": "unauthorized"' in answer


async def test_revoked_key_is_refused(api: Api, db: asyncpg.Connection) -> None:
    assert (await api.get("/contacts"))[0] == 200
    assert await revoke_key(db, api.key[:11])
    assert (await api.get("/contacts"))[0] == 401


async def test_a_key_is_marked_used_at_most_once_a_minute(api: Api, db: asyncpg.Connection) -> None:
    used = "SELECT last_used_at FROM api_keys WHERE prefix = $1"
    prefix = api.key[:11]
    await db.execute("UPDATE api_keys SET last_used_at = NULL")
    assert (await api.get("/contacts"))[0] == 200
    first = await db.fetchval(used, prefix)
    assert first is not None
    assert (await api.get("/contacts"))[0] == 200
    assert await db.fetchval(used, prefix) == first  # within the minute: not written again
    await db.execute("UPDATE api_keys SET last_used_at = now() - interval '2 minutes'")
    earlier = await db.fetchval(used, prefix)
    assert (await api.get("/contacts"))[0] == 200
    assert await db.fetchval(used, prefix) > earlier


async def test_only_a_hash_of_the_key_is_stored(api: Api, db: asyncpg.Connection) -> None:
    rows = await db.fetch("SELECT prefix, secret_hash::text AS h, kind, scopes FROM api_keys")
    assert len(rows) == 1
    assert api.key not in rows[0]["h"] and rows[0]["prefix"] == api.key[:11]
    assert rows[0]["kind"] == "secret" and "ops:read" in rows[0]["scopes"]


async def test_read_only_key_cannot_write(api: Api, db: asyncpg.Connection) -> None:
    _, key = await new_key(db, "acme", ["contacts:read", "jobs:read"])
    assert key.startswith("rk_")
    status, _ = await api.get("/contacts", key=key)
    assert status == 200
    status, body = await api.post("/contacts", {"email": "x@example.com"}, key=key)
    assert status == 403 and body["error"]["code"] == "forbidden"
    assert "contacts:write" in body["error"]["message"]
    status, _ = await api.post("/contacts/bulk-delete", {"contact_ids": [1]}, key=key)
    assert status == 403
    status, _ = await api.get("/lists", key=key)
    assert status == 403


async def test_request_id_is_echoed_or_made(api: Api) -> None:
    response = await api.client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert response.headers["X-Request-ID"] == "abc-123"
    response = await api.client.get("/api/v1/nowhere")
    assert len(response.headers["X-Request-ID"]) == 32


async def test_aiohttp_errors_use_the_envelope(api: Api) -> None:
    response = await api.client.get("/api/v1/nowhere")
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "not_found"
    response = await api.client.put("/healthz")
    assert response.status == 405
    assert (await response.json())["error"]["code"] == "method_not_allowed"
    huge = b'{"email": "' + b"a" * (9 * 1024 * 1024) + b'"}'
    response = await api.client.post(
        "/api/v1/contacts",
        data=io.BytesIO(huge),
        headers={"Authorization": f"Bearer {api.key}", "Content-Type": "application/json"},
    )
    assert response.status == 413
    assert (await response.json())["error"]["code"] == "payload_too_large"
