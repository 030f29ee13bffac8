"""The real-services harness: Postgres and Redis found (or started) once per run, a template
database built once from schema.sql, a fresh database and Redis key space per test."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis
from aiohttp import FormData
from aiohttp.test_utils import TestClient
from arq.connections import ArqRedis

from api.app import create_app
from listmill.db import apply_schema, create_database
from listmill.devservices import Services, ensure_services
from listmill.queries.keys import ensure_project
from listmill.services.keys import create_key
from listmill.settings import Lane, Settings
from worker.context import WorkerContext
from worker.lane_worker import LaneWorker
from worker.reaper import reap
from worker.settings import in_process_workers, make_context

ROOT = Path(__file__).resolve().parents[1]
TEST_REDIS_DB = int(os.environ.get("LISTMILL_TEST_REDIS_DB", "15"))


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    found = ensure_services(
        os.environ.get("DATABASE_URL"),
        os.environ.get("REDIS_URL"),
        embedded=os.environ.get("LISTMILL_EMBEDDED") == "1",
        data_dir=ROOT / ".listmill",
    )
    yield found
    found.stop()


@pytest.fixture(scope="session")
def redis_url(services: Services) -> str:
    return urlunsplit(urlsplit(services.redis_url)._replace(path=f"/{TEST_REDIS_DB}"))


async def _drop(server_url: str, name: str) -> None:
    conn = await asyncpg.connect(with_database(server_url, "postgres"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def template_database(services: Services) -> Iterator[str]:
    """A database built once from schema.sql; each test copies it."""
    name = f"listmill_tpl_{os.getpid()}"
    url = with_database(services.database_url, name)
    asyncio.run(_drop(services.database_url, name))
    asyncio.run(create_database(url))
    asyncio.run(apply_schema(url))
    yield name
    asyncio.run(_drop(services.database_url, name))


@pytest.fixture
async def database_url(services: Services, template_database: str) -> AsyncIterator[str]:
    name = f"listmill_t_{uuid.uuid4().hex[:16]}"
    conn = await asyncpg.connect(with_database(services.database_url, "postgres"))
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    finally:
        await conn.close()
    yield with_database(services.database_url, name)
    await _drop(services.database_url, name)


PREFIXES: list[tuple[str, str]] = []  # (redis url, queue prefix) of every test's key space


@pytest.fixture(scope="session", autouse=True)
def drop_key_spaces() -> Iterator[None]:
    """At the end of the run, delete every key a test's key space left in Redis: its own
    prefix and the arq job keys of the wake-ups still queued under it."""
    yield
    for url, prefix in PREFIXES:
        client = redis.Redis.from_url(url)
        try:
            keys = list(client.scan_iter(match=f"{prefix}:*", count=500))
            queues = [k for k in keys if k.decode().startswith(f"{prefix}:queue:")]
            for queue in queues:
                for job_id in client.zrange(queue, 0, -1):
                    name = job_id.decode()
                    keys += [f"arq:{kind}:{name}".encode() for kind in ARQ_KEY_KINDS]
            if keys:
                client.delete(*keys)
        except redis.RedisError:
            pass  # the chaos tests stop Redis; what they left goes with the next FLUSH
        finally:
            client.close()


ARQ_KEY_KINDS = ("job", "in-progress", "retry", "result")


def make_settings(database_url: str, redis_url: str, **overrides: Any) -> Settings:
    prefix = f"lmtest:{uuid.uuid4().hex[:12]}"
    PREFIXES.append((redis_url, overrides.get("queue_prefix", prefix)))
    values: dict[str, Any] = {
        "database_url": database_url,
        "redis_url": redis_url,
        "queue_prefix": prefix,
        "worker_poll_delay": 0.01,
        "job_heartbeat_seconds": 0.5,
        "job_lease_seconds": 5,
        "job_retry_base_seconds": 0.05,
        "job_stale_queued_seconds": 1,
        "reaper_interval_seconds": 1,
        "batch_size": 100,
        "import_batch_size": 100,
        "db_pool_max": 5,
        "log_format": "json",
        "log_level": "WARNING",
    }
    return Settings(**(values | overrides))


@pytest.fixture
def settings(database_url: str, redis_url: str) -> Settings:
    return make_settings(database_url, redis_url)


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection to the test's database, for arranging and checking rows."""
    conn = await asyncpg.connect(settings.database_url)
    yield conn
    await conn.close()


@dataclass
class Api:
    """The app under test, called as an integrator would, with one project's key."""

    client: TestClient
    key: str
    project_id: int
    headers: dict[str, str] = field(default_factory=dict)

    async def call(
        self,
        method: str,
        path: str,
        json: Any = None,
        *,
        key: str | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
    ) -> tuple[int, Any]:
        sent = {"Authorization": f"Bearer {key or self.key}", **(headers or {})}
        response = await self.client.request(method, path, json=json, headers=sent, params=params)
        body = await response.json() if response.content_type == "application/json" else None
        return response.status, body

    async def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        return await self.call("GET", f"/api/v1{path}", **kw)

    async def post(self, path: str, json: Any = None, **kw: Any) -> tuple[int, Any]:
        return await self.call("POST", f"/api/v1{path}", json, **kw)

    async def patch(self, path: str, json: Any = None, **kw: Any) -> tuple[int, Any]:
        return await self.call("PATCH", f"/api/v1{path}", json, **kw)

    async def delete(self, path: str, json: Any = None, **kw: Any) -> tuple[int, Any]:
        return await self.call("DELETE", f"/api/v1{path}", json, **kw)

    async def put(self, path: str, json: Any = None, **kw: Any) -> tuple[int, Any]:
        return await self.call("PUT", f"/api/v1{path}", json, **kw)


async def new_key(
    db: asyncpg.Connection, project: str, scopes: list[str] | None = None
) -> tuple[int, str]:
    project_id, _ = await ensure_project(db, project)
    return project_id, await create_key(db, project_id, scopes)


@pytest.fixture
async def client(
    settings: Settings, aiohttp_client: Callable[..., Awaitable[TestClient]]
) -> TestClient:
    return await aiohttp_client(create_app(settings))


@pytest.fixture
async def api(client: TestClient, db: asyncpg.Connection) -> Api:
    project_id, key = await new_key(db, "acme")
    return Api(client, key, project_id)


@pytest.fixture
async def other_api(client: TestClient, db: asyncpg.Connection) -> Api:
    """A second tenant on the same service."""
    project_id, key = await new_key(db, "globex")
    return Api(client, key, project_id)


@pytest.fixture
async def worker_context(settings: Settings) -> AsyncIterator[WorkerContext]:
    context = await make_context(settings)
    yield context
    await context["pool"].close()


RunJobs = Callable[[], Awaitable[None]]


@pytest.fixture
def run_jobs(settings: Settings, worker_context: WorkerContext) -> RunJobs:
    """Run the reaper once, then in-process arq workers (every lane, burst mode) until the
    queues are empty."""

    async def run() -> None:
        redis: ArqRedis = ArqRedis.from_url(settings.redis_url)
        try:
            await reap(WorkerContext(**worker_context, redis=redis))
        finally:
            await redis.aclose()
        for worker in in_process_workers(settings, worker_context, burst=True):
            try:
                await worker.async_run()
            finally:
                await worker.close()

    return run


async def stop_workers(workers: list[LaneWorker], tasks: list[asyncio.Task[None]]) -> None:
    """As the service stops its workers: a job still running is cancelled."""
    for worker in workers:
        with contextlib.suppress(asyncio.CancelledError):
            await worker.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def subscribed(redis: ArqRedis, channel: str) -> None:
    """Wait until a client listens on ``channel``: a worker that listens has had its first
    look at the queue and is waiting."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while dict(await redis.pubsub_numsub(channel)).get(channel.encode(), 0) < 1:
        assert loop.time() < deadline, f"nobody subscribed to {channel}"
        await asyncio.sleep(0.01)


@pytest.fixture
async def workers(settings: Settings, worker_context: WorkerContext) -> AsyncIterator[None]:
    """The service's own workers, for every lane, running (and listening for wake-ups) in the
    background for the whole test."""
    running = in_process_workers(settings, worker_context)
    tasks = [asyncio.create_task(worker.async_run()) for worker in running]
    redis: ArqRedis = ArqRedis.from_url(settings.redis_url)
    try:
        for lane in Lane:
            await subscribed(redis, settings.lane_wake_channel(lane))
    finally:
        await redis.aclose()
    yield
    await stop_workers(running, tasks)


async def analyze_count(db: asyncpg.Connection) -> int:
    """How many times contacts was ANALYZEd by a command (autovacuum's runs not counted)."""
    await db.execute("SELECT pg_stat_clear_snapshot()")
    count = await db.fetchval(
        "SELECT analyze_count FROM pg_stat_user_tables WHERE relname = 'contacts'"
    )
    return int(count)


async def wait_for_job(api: Api, job_id: str, timeout: float = 30) -> dict[str, Any]:
    """Poll the job until it ends, as an integrator would."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status, body = await api.get(f"/jobs/{job_id}")
        assert status == 200, body
        if body["data"]["status"] in ("succeeded", "failed", "cancelled"):
            return dict(body["data"])
        if loop.time() > deadline:
            raise AssertionError(f"job {job_id} did not finish: {body['data']}")
        await asyncio.sleep(0.05)


async def form_post(
    api: Api, fields: list[tuple[str, Any]], headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """A multipart import with these parts, in this order (a part named file carries bytes)."""
    form = FormData()
    for name, value in fields:
        if name == "file":
            form.add_field(
                name, io.BytesIO(value), filename="contacts.csv", content_type="text/csv"
            )
        else:
            form.add_field(name, value)
    sent = {"Authorization": f"Bearer {api.key}", **(headers or {})}
    response = await api.client.post("/api/v1/contacts/import", data=form, headers=sent)
    return response.status, await response.json()
