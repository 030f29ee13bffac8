"""An arq Worker that looks at its queue as soon as a job is enqueued, not only every poll delay.

arq has no blocking pop: a plain worker looks at its queue every poll delay, so a job waited
half that delay on average before it started, and every look of an idle worker cost CPU.
Here whoever enqueues a job also publishes on its lane's Redis channel
(``listmill.jobs.queue.wake_worker``); every worker of the lane is subscribed and looks at
once. After each look a worker waits until it is woken, until the earliest job deferred to
later (a retry, the reaper's cron run) falls due, or at most ``WORKER_POLL_DELAY``: that
covers wake-ups sent while it was not subscribed, and arq's own bookkeeping (its health key,
cron runs).

It leans on three methods of arq's Worker (arq is pinned below 0.29): ``_poll_iteration``, one
look at the queue, ``_release_sem_dec_counter_on_complete``, a job's end, and ``heart_beat``,
which queues cron runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from typing import Any

import structlog
from arq.utils import timestamp_ms
from arq.worker import Worker
from redis import exceptions as redis_errors
from redis.asyncio import ConnectionPool, Redis

log = structlog.get_logger(__name__)

RESUBSCRIBE_SECONDS = 1.0
CRON_WINDOW_SECONDS = 0.5  # arq's least: a cron run is queued this far ahead of its time


class LaneWorker(Worker):
    """An arq Worker woken by its lane's channel; without a channel (burst mode), plain arq."""

    def __init__(self, *, wake_channel: str | None, poll_delay: float, **kwargs: Any):
        # with a channel, arq's loop looks back to back and the wait between looks is ours
        super().__init__(poll_delay=0 if wake_channel else poll_delay, **kwargs)
        self.wake_channel = wake_channel
        self.longest_wait = poll_delay
        self._woken = asyncio.Event()  # a job was announced, or a slot freed
        self._slot_freed = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self._closing = False

    async def _poll_iteration(self) -> None:
        await super()._poll_iteration()
        if self.wake_channel is None:
            return
        if self._listener is None and not self._closing:
            self._listener = asyncio.create_task(self._listen(self.wake_channel))
        if self.job_counter >= self.max_jobs:  # full: no announced job could start
            event, wait = self._slot_freed, self.longest_wait
        else:
            event, wait = self._woken, await self._seconds_to_next_due()
        # asyncio.timeout, not wait_for: wait_for drops a cancel (close) that comes as the
        # event is set
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await event.wait()
        # cleared before the next look: a job enqueued from now on is seen by that look
        self._woken.clear()
        self._slot_freed.clear()

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        self._slot_freed.set()  # a job that found the worker full can start now
        self._woken.set()

    async def heart_beat(self) -> None:
        """arq's, with cron runs queued as far ahead as the longest wait between looks (arq
        sizes that window from its poll delay, which is 0 here), so none starts late."""
        if self.wake_channel is None:
            return await super().heart_beat()
        await self.record_health()
        window = max(self.longest_wait, CRON_WINDOW_SECONDS)
        await self.run_cron(datetime.now(tz=self.timezone), window)

    async def _seconds_to_next_due(self) -> float:
        """Until the earliest job deferred to later, at most ``longest_wait``. Jobs due now are
        not counted: they have started or wait for a free slot (a job's end wakes the worker)."""
        now = timestamp_ms()
        later = await self.pool.zrangebyscore(
            self.queue_name, min=f"({now}", max="+inf", start=0, num=1, withscores=True
        )
        if not later:
            return self.longest_wait
        due_ms = float(later[0][1])
        return min(self.longest_wait, max(0.0, (due_ms - now) / 1000))

    async def _listen(self, channel: str) -> None:
        """Wake the worker on each message of ``channel``; resubscribe when Redis drops it.
        Its connection is named ``listmill-wake:<channel>`` (Redis' CLIENT LIST)."""
        pool = self.pool.connection_pool
        kwargs = {**pool.connection_kwargs, "client_name": f"listmill-wake:{channel}"}
        client = Redis(connection_pool=ConnectionPool(pool.connection_class, **kwargs))
        try:
            while True:
                # every message wakes the worker, Redis' confirmation of the subscription too:
                # from then on nothing announced is missed, and whatever was announced before
                # is found by the look it causes
                pubsub = client.pubsub()
                try:
                    await pubsub.subscribe(channel)
                    async for _ in pubsub.listen():
                        self._woken.set()
                except (OSError, redis_errors.RedisError) as exc:
                    log.warning("wake_channel_lost", channel=channel, error=repr(exc))
                except Exception:  # the worker still polls; the listener must not die quietly
                    log.exception("wake_listener_failed", channel=channel)
                finally:
                    with contextlib.suppress(OSError, redis_errors.RedisError):
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
                await asyncio.sleep(RESUBSCRIBE_SECONDS)
        finally:
            with contextlib.suppress(OSError, redis_errors.RedisError):
                await client.aclose(close_connection_pool=True)

    async def close(self) -> None:
        self._closing = True
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        await super().close()
