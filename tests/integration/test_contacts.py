"""Contacts: upsert, read, filter, paginate, patch, delete; errors and tenant isolation."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from listmill.db import apply_schema
from tests.conftest import Api


async def test_upsert_creates_then_updates_and_merges_data(api: Api) -> None:
    status, body = await api.post(
        "/contacts", {"email": "ann@example.com", "first_name": "Ann", "data": {"plan": "pro"}}
    )
    assert status == 201
    created = body["data"]
    status, body = await api.post(
        "/contacts", {"email": "ANN@example.com ", "last_name": "Lee", "data": {"seats": 3}}
    )
    assert status == 200
    updated = body["data"]
    assert updated["id"] == created["id"]
    assert updated["first_name"] == "Ann" and updated["last_name"] == "Lee"
    assert updated["data"] == {"plan": "pro", "seats": 3}
    assert updated["updated_at"] > created["updated_at"]


async def test_unchanged_upsert_keeps_updated_at(api: Api) -> None:
    _, first = await api.post("/contacts", {"email": "bo@example.com", "first_name": "Bo"})
    status, again = await api.post("/contacts", {"email": "bo@example.com", "first_name": "Bo"})
    assert status == 200
    assert again["data"]["updated_at"] == first["data"]["updated_at"]


async def test_upsert_never_resubscribes_an_unsubscribed_contact(api: Api) -> None:
    _, body = await api.post("/contacts", {"email": "cy@example.com", "status": "unsubscribed"})
    assert body["data"]["status"] == "unsubscribed"
    _, body = await api.post("/contacts", {"email": "cy@example.com", "status": "subscribed"})
    assert body["data"]["status"] == "unsubscribed"
    contact_id = body["data"]["id"]
    status, body = await api.patch(f"/contacts/{contact_id}", {"status": "subscribed"})
    assert status == 200 and body["data"]["status"] == "subscribed"


async def test_invalid_bodies_get_422_naming_each_field(api: Api) -> None:
    status, body = await api.post("/contacts", {"email": "nope", "first_name": 5, "extra": 1})
    assert status == 422
    assert body["error"]["code"] == "validation_failed"
    fields = {d["field"] for d in body["error"]["details"]}
    assert fields == {"email", "first_name", "extra"}


async def test_malformed_json_is_400_and_wrong_type_415(api: Api) -> None:
    response = await api.client.post(
        "/api/v1/contacts",
        data=b"{not json",
        headers={"Authorization": f"Bearer {api.key}", "Content-Type": "application/json"},
    )
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "bad_request"
    response = await api.client.post(
        "/api/v1/contacts",
        data=b"email=a@b.co",
        headers={"Authorization": f"Bearer {api.key}", "Content-Type": "text/plain"},
    )
    assert response.status == 415


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested more than 32 levels"),
        (b'{"email": "d@example.com", "data": {"k": ' + b"[" * 40 + b"]" * 40 + b"}}", "nested"),
        (b'{"email": "n@example.com", "data": {"k": NaN}}', "NaN is not a JSON value"),
        (b'{"email": "i@example.com", "data": {"k": -Infinity}}', "not a JSON value"),
        (b'{"email": "e@example.com", "data": {"k": 1e999}}', "too large a number"),
    ],
)
async def test_bodies_json_cannot_keep_are_400_not_500(api: Api, body: bytes, says: str) -> None:
    response = await api.client.post(
        "/api/v1/contacts",
        data=body,
        headers={"Authorization": f"Bearer {api.key}", "Content-Type": "application/json"},
    )
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["code"] == "bad_request" and says in error["message"]
    assert (await api.get("/contacts"))[1]["meta"]["total"] == 0


async def test_nul_characters_are_422_not_500(api: Api) -> None:
    status, body = await api.post("/contacts", {"email": "d@example.com", "data": {"k": "a\x00"}})
    assert status == 422, body
    status, body = await api.get("/contacts", params={"email": "a\x00"})
    assert status == 422, body
    response = await api.client.post(
        "/api/v1/contacts",
        data=b'{"email": "s@example.com", "first_name": "\\ud800", "data": {"\\udfff": 1}}',
        headers={"Authorization": f"Bearer {api.key}", "Content-Type": "application/json"},
    )
    assert response.status == 422
    details = (await response.json())["error"]["details"]
    assert {d["field"] for d in details} == {"first_name", "data"}


async def test_list_filters_by_partial_email_case_insensitively(api: Api) -> None:
    for email in ("ann@acme.io", "bob@ACME.io", "cat@other.io", "100%_@x.io"):
        await api.post("/contacts", {"email": email})
    status, body = await api.get("/contacts", params={"email": "AcMe"})
    assert status == 200
    assert sorted(c["email"] for c in body["data"]) == ["ann@acme.io", "bob@ACME.io"]
    assert body["meta"]["total"] == 2
    _, body = await api.get("/contacts", params={"email": "%_"})
    assert [c["email"] for c in body["data"]] == ["100%_@x.io"]


async def test_cursor_pagination_is_stable_under_concurrent_inserts(api: Api) -> None:
    for i in range(7):
        await api.post("/contacts", {"email": f"p{i}@example.com"})
    seen: list[int] = []
    status, body = await api.get("/contacts", params={"limit": 3})
    assert body["meta"]["total"] == 7 and body["meta"]["has_more"]
    seen += [c["id"] for c in body["data"]]
    cursor = body["meta"]["next_cursor"]
    # inserts between pages land after the cursor: nothing is skipped or repeated
    await asyncio.gather(*(api.post("/contacts", {"email": f"n{i}@example.com"}) for i in range(3)))
    while cursor:
        status, body = await api.get("/contacts", params={"limit": 3, "cursor": cursor})
        assert status == 200 and "total" not in body["meta"]
        seen += [c["id"] for c in body["data"]]
        cursor = body["meta"]["next_cursor"]
    assert len(seen) == len(set(seen)) == 10
    assert seen == sorted(seen)


async def test_bad_paging_parameters_are_422(api: Api) -> None:
    for params in ({"limit": 0}, {"limit": 101}, {"limit": "x"}, {"cursor": "garbage"}):
        status, body = await api.get("/contacts", params=params)
        assert status == 422, (params, body)


async def test_patch_changes_email_and_conflicts_on_a_taken_one(api: Api) -> None:
    _, a = await api.post("/contacts", {"email": "a@example.com"})
    await api.post("/contacts", {"email": "b@example.com"})
    contact_id = a["data"]["id"]
    status, body = await api.patch(f"/contacts/{contact_id}", {"email": "a2@example.com"})
    assert status == 200 and body["data"]["email"] == "a2@example.com"
    status, body = await api.patch(f"/contacts/{contact_id}", {"email": "B@example.com"})
    assert status == 409 and body["error"]["code"] == "conflict"
    status, body = await api.patch(f"/contacts/{contact_id}", {"first_name": None, "data": None})
    assert status == 422 and body["error"]["details"][0]["field"] == "data"


async def test_get_and_delete(api: Api) -> None:
    _, created = await api.post("/contacts", {"email": "gone@example.com"})
    contact_id = created["data"]["id"]
    assert (await api.get(f"/contacts/{contact_id}"))[0] == 200
    assert (await api.delete(f"/contacts/{contact_id}"))[0] == 204
    status, body = await api.get(f"/contacts/{contact_id}")
    assert status == 404 and body["error"]["message"] == "contact not found"
    _, kept = await api.post("/contacts", {"email": "kept@example.com"})
    arabic_indic = "".join(chr(0x0660 + int(d)) for d in str(kept["data"]["id"]))
    # digits str.isdigit() takes: "¹" was a 500 (found by schemathesis), "٢" contact 2
    odd = ["/contacts/\u00b9", f"/contacts/{arabic_indic}"]
    for path in ["/contacts/0", "/contacts/abc", "/contacts/99999999999999999999", *odd]:
        status, body = await api.get(path)
        assert status == 404 and body["error"]["code"] == "not_found", (path, body)


async def test_another_projects_contacts_are_invisible_and_untouched(
    api: Api, other_api: Api, db: asyncpg.Connection
) -> None:
    _, created = await api.post("/contacts", {"email": "mine@example.com", "first_name": "M"})
    contact_id = created["data"]["id"]
    assert (await other_api.get(f"/contacts/{contact_id}"))[0] == 404
    assert (await other_api.patch(f"/contacts/{contact_id}", {"first_name": "X"}))[0] == 404
    assert (await other_api.delete(f"/contacts/{contact_id}"))[0] == 404
    _, listing = await other_api.get("/contacts")
    assert listing["data"] == [] and listing["meta"]["total"] == 0
    row = await db.fetchrow("SELECT first_name FROM contacts WHERE id = $1", contact_id)
    assert row is not None and row["first_name"] == "M"
    # the same email is a separate contact in the other project
    status, _ = await other_api.post("/contacts", {"email": "mine@example.com"})
    assert status == 201


async def test_deleting_a_project_deletes_its_contacts(api: Api, db: asyncpg.Connection) -> None:
    """contacts.project_id has no foreign key (see schema.sql): a trigger does its cascade."""
    await api.post("/contacts", {"email": "gone@example.com"})
    other = await db.fetchval("INSERT INTO projects (name) VALUES ('kept') RETURNING id")
    await db.execute(
        "INSERT INTO contacts (project_id, email, email_normalized)"
        " VALUES ($1, 'k@x.io', 'k@x.io')",
        other,
    )
    await db.execute("DELETE FROM projects WHERE id = $1", api.project_id)
    assert await db.fetchval("SELECT array_agg(email) FROM contacts") == ["k@x.io"]


async def test_custom_data_keeps_integers_past_64_bits_exact(api: Api) -> None:
    big = 123456789012345678901234567890
    _, created = await api.post("/contacts", {"email": "big@example.com", "data": {"n": big}})
    _, read = await api.get(f"/contacts/{created['data']['id']}")
    assert read["data"]["data"] == {"n": big}


async def test_contacts_pages_keep_room_for_next_versions_also_on_an_older_table(
    database_url: str,
) -> None:
    """schema.sql's fillfactor: on a table it makes, and on one made before it."""
    conn = await asyncpg.connect(database_url)
    try:
        options = "SELECT reloptions FROM pg_class WHERE oid = 'contacts'::regclass"
        assert await conn.fetchval(options) == ["fillfactor=95"]
        await conn.execute("ALTER TABLE contacts RESET (fillfactor)")
        await conn.execute("DELETE FROM schema_applied")  # as an install made before it
        assert await conn.fetchval(options) is None
        assert await apply_schema(database_url)
        assert await conn.fetchval(options) == ["fillfactor=95"]
    finally:
        await conn.close()
