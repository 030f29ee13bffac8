"""Workers start a job when it is enqueued, not at their next poll: the lane's wake-up channel
(worker.lane_worker). Every worker here polls only once a minute, so a job that starts
within seconds was started by a wake-up, a deferred job's timer or a freed slot."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from arq.connections import ArqRedis, RedisSettings
from arq.cron import cron
from arq.worker import func
from redis import exceptions as redis_errors
from redis.asyncio.client import PubSub
from structlog.testing import capture_logs

from listmill.jobs.queue import RUN_JOB, wake_worker
from listmill.settings import Lane, Settings
from tests.conftest import Api, make_settings, stop_workers, subscribed, wait_for_job
from worker.lane_worker import LaneWorker

POLL_DELAY = 60.0  # far longer than any wait below
STARTED_WITHIN = 10.0  # a job that starts later than this was not woken
SETTLE = 0.3  # for the looks a worker takes on its own (on subscribing, at a job's end)


@pytest.fixture
def settings(database_url: str, redis_url: str) -> Settings:
    """Workers that poll once a minute, and a reaper (a cron run, so a timer of the small
    lane's worker) that runs once an hour."""
    return make_settings(
        database_url, redis_url, worker_poll_delay=POLL_DELAY, reaper_interval_seconds=3600
    )


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[ArqRedis]:
    client: ArqRedis = ArqRedis.from_url(settings.redis_url)
    yield client
    await client.aclose()


class Recorder:
    """A LaneWorker whose run_job notes the job id and when it started, then waits for
    ``release`` (set from the start unless a test holds jobs running)."""

    def __init__(self, settings: Settings) -> None:
        self.started: asyncio.Queue[tuple[str, float]] = asyncio.Queue()
        self.release = asyncio.Event()
        self.release.set()
        self.channel = settings.lane_wake_channel(Lane.SMALL)
        self.worker = LaneWorker(
            wake_channel=self.channel,
            poll_delay=POLL_DELAY,
            functions=[func(self._run, name=RUN_JOB)],
            queue_name=settings.lane_queue(Lane.SMALL),
            redis_settings=RedisSettings.from_dsn(settings.redis_url),
            handle_signals=False,
            max_jobs=1,  # one slot: a test that holds a job running makes the worker full
            keep_result=0,
        )

    async def _run(self, ctx: dict[str, Any], job_id: str) -> None:
        await self.started.put((job_id, time.monotonic()))
        await self.release.wait()

    async def next_started(self) -> tuple[str, float]:
        return await asyncio.wait_for(self.started.get(), STARTED_WITHIN)


@pytest.fixture
async def recorder(settings: Settings, redis: ArqRedis) -> AsyncIterator[Recorder]:
    recorder = Recorder(settings)
    task = asyncio.create_task(recorder.worker.async_run())
    await subscribed(redis, recorder.channel)
    yield recorder
    recorder.release.set()
    await stop_workers([recorder.worker], [task])


async def enqueue(redis: ArqRedis, settings: Settings, delay: float = 0) -> str:
    job_id = uuid.uuid4()
    await wake_worker(redis, settings, job_id, Lane.SMALL.value, 1, delay=delay)
    return str(job_id)


async def test_a_job_due_now_starts_at_once(
    recorder: Recorder, redis: ArqRedis, settings: Settings
) -> None:
    for _ in range(3):
        job_id = await enqueue(redis, settings)
        assert (await recorder.next_started())[0] == job_id


async def test_a_deferred_job_starts_when_it_falls_due(
    recorder: Recorder, redis: ArqRedis, settings: Settings
) -> None:
    """A retry is enqueued for later: its announcement sets the worker's timer for it."""
    await enqueue(redis, settings)
    await recorder.next_started()
    await asyncio.sleep(SETTLE)  # the worker has looked after that job's end and waits
    enqueued = time.monotonic()
    job_id = await enqueue(redis, settings, delay=0.5)
    started, at = await recorder.next_started()
    assert started == job_id
    assert at - enqueued >= 0.45  # not before it was due (arq's scores are whole ms)


async def test_a_job_that_found_the_worker_full_starts_when_a_slot_frees(
    recorder: Recorder, redis: ArqRedis, settings: Settings
) -> None:
    recorder.release.clear()
    first = await enqueue(redis, settings)
    assert (await recorder.next_started())[0] == first
    second = await enqueue(redis, settings)  # announced while the only slot is taken
    await asyncio.sleep(0.2)
    assert recorder.started.empty()
    recorder.release.set()
    assert (await recorder.next_started())[0] == second


async def drop_subscription(redis: ArqRedis, channel: str) -> None:
    """Kill the listener's connection (named after its channel), as a Redis restart would."""
    name = f"listmill-wake:{channel}"
    ours = [c["id"] for c in await redis.client_list(_type="pubsub") if c["name"] == name]
    assert ours
    for client_id in ours:
        await redis.client_kill_filter(_id=client_id)


async def test_a_worker_resubscribes_when_redis_drops_its_subscription(
    recorder: Recorder, redis: ArqRedis, settings: Settings
) -> None:
    await drop_subscription(redis, recorder.channel)
    await subscribed(redis, recorder.channel)  # again, on a new connection
    job_id = await enqueue(redis, settings)
    assert (await recorder.next_started())[0] == job_id


async def test_a_job_enqueued_while_the_subscription_was_down_starts_when_it_is_back(
    recorder: Recorder, redis: ArqRedis, settings: Settings
) -> None:
    """Its announcement went to nobody: the worker looks once it has subscribed again."""
    await drop_subscription(redis, recorder.channel)
    job_id = str(uuid.uuid4())
    await redis.enqueue_job(  # as wake_worker does, less the announcement
        RUN_JOB, job_id, _job_id=f"{job_id}:1", _queue_name=settings.lane_queue(Lane.SMALL)
    )
    assert (await recorder.next_started())[0] == job_id


async def test_a_listener_that_fails_otherwise_logs_it_and_subscribes_again(
    recorder: Recorder, redis: ArqRedis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error that is not Redis' (a bug, a message it cannot read) is logged, and the
    listener subscribes again rather than dying and leaving the worker to its polls."""
    listen, failures = PubSub.listen, []

    def listen_once_failing(pubsub: PubSub) -> AsyncIterator[Any]:
        if not failures:
            failures.append(pubsub)
            raise RuntimeError("not Redis' fault")
        return listen(pubsub)

    monkeypatch.setattr(PubSub, "listen", listen_once_failing)
    with capture_logs() as logs:
        await drop_subscription(redis, recorder.channel)  # it subscribes again, and fails
        await asyncio.sleep(3 * SETTLE)
        await subscribed(redis, recorder.channel)  # and again, and listens
        job_id = await enqueue(redis, settings)
        assert (await recorder.next_started())[0] == job_id
    assert failures
    assert "wake_listener_failed" in [entry["event"] for entry in logs]


async def test_a_job_whose_announcement_fails_is_queued_all_the_same(
    redis: ArqRedis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The announcement is a shortcut: its failure is logged, and the job, already queued,
    is found at the workers' next poll."""

    async def publish(channel: str, message: str) -> int:
        raise redis_errors.ConnectionError("Redis went away between the two commands")

    monkeypatch.setattr(redis, "publish", publish)
    with capture_logs() as logs:
        job_id = await enqueue(redis, settings)
    assert await redis.zscore(settings.lane_queue(Lane.SMALL), f"{job_id}:1") is not None
    lost = [entry for entry in logs if entry["event"] == "wake_announcement_lost"]
    assert [entry["job_id"] for entry in lost] == [job_id]


async def test_a_full_worker_does_not_look_for_every_announcement(
    recorder: Recorder, redis: ArqRedis, settings: Settings
) -> None:
    recorder.release.clear()
    first = await enqueue(redis, settings)
    assert (await recorder.next_started())[0] == first  # its only slot is taken
    await asyncio.sleep(SETTLE)
    looks = 0
    look = recorder.worker._poll_iteration

    async def counted() -> None:
        nonlocal looks
        looks += 1
        await look()

    recorder.worker._poll_iteration = counted  # type: ignore[method-assign]
    for _ in range(100):
        await redis.publish(recorder.channel, "nothing")
    await asyncio.sleep(SETTLE)
    assert looks == 0
    second = await enqueue(redis, settings)
    recorder.release.set()
    assert (await recorder.next_started())[0] == second


@pytest.mark.parametrize(
    ("contacts", "lane"), [(10, Lane.SMALL), (2_001, Lane.LARGE)], ids=["small", "large"]
)
async def test_a_posted_job_is_started_by_its_lanes_wake_up(
    api: Api, workers: None, contacts: int, lane: Lane
) -> None:
    """Through the service: the web's POST announces the job on its lane's channel."""
    for round_ in range(2):
        await asyncio.sleep(SETTLE)
        rows = [{"email": f"r{round_}-{i}@example.com"} for i in range(contacts)]
        status, body = await api.post("/contacts/bulk-upsert", {"contacts": rows})
        assert status == 202, body
        assert body["data"]["lane"] == lane.value
        job = await wait_for_job(api, body["data"]["id"], timeout=STARTED_WITHIN)
        assert job["status"] == "succeeded"
        assert job["counts"]["created"] == contacts


async def test_a_worker_stops_when_cancelled_as_it_is_woken(recorder: Recorder) -> None:
    """Stopping cancels the worker's loop; a wake-up in the same turn must not swallow that
    (asyncio.wait_for in Python 3.11 did)."""
    worker = recorder.worker
    assert worker.main_task is not None
    worker._woken.set()
    await asyncio.sleep(0)  # the wait has its event, and resumes on the next turn
    worker.main_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(worker.main_task), STARTED_WITHIN)
    assert worker.main_task.cancelled()


async def test_cron_runs_start_on_time_however_long_a_worker_waits(
    settings: Settings, redis: ArqRedis
) -> None:
    """arq queues a cron run ahead of its time only within a window it sizes from its poll
    delay; a LaneWorker's waits can be longer, and its window follows them."""
    started: asyncio.Queue[float] = asyncio.Queue()

    async def tick(ctx: dict[str, Any]) -> None:
        await started.put(time.time())

    worker = LaneWorker(
        wake_channel=settings.lane_wake_channel(Lane.SMALL),
        poll_delay=3.0,  # looks every 3 s when nothing happens
        functions=[],
        cron_jobs=[cron(tick, name="tick", second=set(range(0, 60, 2)), microsecond=100_000)],
        queue_name=settings.lane_queue(Lane.SMALL),
        redis_settings=RedisSettings.from_dsn(settings.redis_url),
        handle_signals=False,
        keep_result=0,
    )
    task = asyncio.create_task(worker.async_run())
    try:
        starts = [await asyncio.wait_for(started.get(), 10) for _ in range(4)]
    finally:
        await stop_workers([worker], [task])
    # the first run may be queued late, at the first look; every later one on its second
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts[1:])]
    assert all(abs(gap - 2) < 0.5 for gap in gaps), gaps
    assert all((start - 0.1) % 2 < 0.5 for start in starts[1:]), starts
