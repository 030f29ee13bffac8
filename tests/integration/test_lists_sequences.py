"""Lists and sequences: CRUD, conflicts, archive, validated triggers, tenant isolation."""

from __future__ import annotations

from tests.conftest import Api


async def test_list_crud_and_duplicate_name(api: Api) -> None:
    status, body = await api.post("/lists", {"name": "News", "opt_in_process": "double"})
    assert status == 201
    created = body["data"]
    assert created["member_count"] == 0 and created["status"] == "active"
    status, body = await api.post("/lists", {"name": "News"})
    assert status == 409 and body["error"]["code"] == "conflict"
    list_id = created["id"]
    status, body = await api.patch(f"/lists/{list_id}", {"status": "archived", "description": "x"})
    assert status == 200 and body["data"]["status"] == "archived"
    _, body = await api.get("/lists", params={"status": "archived"})
    assert [m["id"] for m in body["data"]] == [list_id] and body["meta"]["total"] == 1
    await api.post("/lists", {"name": "Other"})
    status, body = await api.patch(f"/lists/{list_id}", {"name": "Other"})
    assert status == 409
    assert (await api.delete(f"/lists/{list_id}"))[0] == 204
    status, body = await api.get(f"/lists/{list_id}")
    assert status == 404 and body["error"]["message"] == "list not found"


async def test_list_validation(api: Api) -> None:
    for bad in ({}, {"name": ""}, {"name": "x" * 256}, {"name": "x", "opt_in_process": "triple"}):
        status, body = await api.post("/lists", bad)
        assert status == 422, (bad, body)


async def test_sequence_crud_with_validated_trigger(api: Api) -> None:
    _, body = await api.post("/lists", {"name": "Trial"})
    list_id = body["data"]["id"]
    trigger = {"type": "list_added", "list_id": list_id}
    status, body = await api.post("/sequences", {"name": "Welcome", "trigger_config": trigger})
    assert status == 201, body
    sequence = body["data"]
    assert sequence["trigger_config"] == trigger and sequence["status"] == "active"
    status, body = await api.patch(f"/sequences/{sequence['id']}", {"status": "paused"})
    assert status == 200 and body["data"]["status"] == "paused"
    status, body = await api.get(f"/sequences/{sequence['id']}/enrollments")
    assert status == 200 and body["data"] == []
    for bad_trigger in (
        {"type": "list_added", "list_id": 987654},
        {"type": "tag_added", "list_id": list_id},
        {"type": "list_added"},
        {"type": "list_added", "list_id": list_id, "extra": 1},
    ):
        status, body = await api.post("/sequences", {"name": "S", "trigger_config": bad_trigger})
        assert status == 422, (bad_trigger, body)
    assert (await api.delete(f"/sequences/{sequence['id']}"))[0] == 204
    assert (await api.get(f"/sequences/{sequence['id']}"))[0] == 404


async def test_other_projects_lists_and_sequences_are_invisible(api: Api, other_api: Api) -> None:
    _, body = await api.post("/lists", {"name": "Mine"})
    list_id = body["data"]["id"]
    trigger = {"type": "list_added", "list_id": list_id}
    _, body = await api.post("/sequences", {"name": "Mine", "trigger_config": trigger})
    sequence_id = body["data"]["id"]
    assert (await other_api.get(f"/lists/{list_id}"))[0] == 404
    assert (await other_api.patch(f"/lists/{list_id}", {"name": "x"}))[0] == 404
    assert (await other_api.delete(f"/lists/{list_id}"))[0] == 404
    assert (await other_api.get(f"/sequences/{sequence_id}"))[0] == 404
    assert (await other_api.delete(f"/sequences/{sequence_id}"))[0] == 404
    # another project cannot point its sequence at my list
    status, _ = await other_api.post("/sequences", {"name": "Sneaky", "trigger_config": trigger})
    assert status == 422
    _, body = await api.get(f"/lists/{list_id}")
    assert body["data"]["name"] == "Mine"
