"""Live progress as Server-Sent Events: an event per committed batch, then the final state."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import ClientResponse

from listmill.settings import Settings
from tests.conftest import Api, RunJobs
from worker.context import WorkerContext
from worker.settings import in_process_workers


async def read_events(response: ClientResponse) -> list[dict[str, Any]]:
    events, current = [], {}
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if not line:
            if current:
                events.append(current)
            current = {}
        elif line.startswith("data: "):
            current["data"] = json.loads(line[6:])
        elif line.startswith(("id: ", "event: ")):
            name, _, value = line.partition(": ")
            current[name] = value
    return events


async def stream(api: Api, job_id: str, last_event_id: str | None = None) -> ClientResponse:
    headers = {"Authorization": f"Bearer {api.key}"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    response = await api.client.get(f"/api/v1/jobs/{job_id}/events", headers=headers)
    assert response.status == 200
    assert response.content_type == "text/event-stream"
    return response


async def test_one_event_per_batch_then_the_end(
    api: Api, settings: Settings, worker_context: WorkerContext
) -> None:
    contacts = [{"email": f"e{i}@example.com"} for i in range(1000)]
    _, body = await api.post("/contacts/bulk-upsert", {"contacts": contacts})
    job_id = body["data"]["id"]
    response = await stream(api, job_id)
    collecting = asyncio.create_task(read_events(response))
    for worker in in_process_workers(settings, worker_context, burst=True):
        await worker.async_run()
        await worker.close()
    events = await asyncio.wait_for(collecting, 20)
    progress = [e["data"]["progress"] for e in events if e["event"] == "progress"]
    assert [p["processed"] for p in progress] == [100 * n for n in range(11)]
    assert [p["percent"] for p in progress] == [10.0 * n for n in range(11)]
    end = events[-1]
    assert end["event"] == "end" and end["data"]["status"] == "succeeded"
    assert end["data"]["counts"] == {"created": 1000} and end["data"]["finished_at"]
    assert len({e["id"] for e in events}) == len(events)


async def test_reconnection_resumes_after_last_event_id(api: Api, run_jobs: RunJobs) -> None:
    _, body = await api.post("/contacts/bulk-upsert", {"contacts": [{"email": "r@example.com"}]})
    job_id = body["data"]["id"]
    await run_jobs()
    events = await read_events(await stream(api, job_id))
    assert [e["event"] for e in events] == ["end"]
    assert await read_events(await stream(api, job_id, last_event_id=events[0]["id"])) == []
    assert len(await read_events(await stream(api, job_id, last_event_id="0-queued"))) == 1


async def test_events_of_another_projects_job_are_404(api: Api, other_api: Api) -> None:
    _, body = await api.post("/contacts/bulk-subscribe", {"contact_ids": [1]})
    response = await other_api.client.get(
        f"/api/v1/jobs/{body['data']['id']}/events",
        headers={"Authorization": f"Bearer {other_api.key}"},
    )
    assert response.status == 404
