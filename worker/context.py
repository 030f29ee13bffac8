"""The typed context every job and cron run receives."""

from __future__ import annotations

from typing import TypedDict

from arq.connections import ArqRedis

from listmill.db import Pool
from listmill.settings import Settings


class WorkerContext(TypedDict, total=False):
    """arq's ctx: its own keys (redis, job_id, job_try) plus what on_startup puts there."""

    redis: ArqRedis
    job_id: str
    job_try: int
    settings: Settings
    pool: Pool
    worker_id: str
    running_jobs: set[str]  # ids of the jobs this process is running now
