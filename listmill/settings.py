"""Runtime configuration, read once from the environment at the entry points."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/listmill"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class Lane(StrEnum):
    """An arq queue: small latency-sensitive jobs never wait behind large ones."""

    SMALL = "small"
    LARGE = "large"


class Settings(BaseSettings):
    """Every setting listmill reads; see README "Configuration"."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", case_sensitive=False)

    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str = DEFAULT_REDIS_URL
    listmill_embedded: bool = Field(False, description="force embedded Postgres and Redis")
    listmill_data_dir: Path = Path(".listmill")

    host: str = "0.0.0.0"
    port: int = 8080
    public_base_url: str = "http://localhost:8080"
    link_secret: str = Field(
        "dev-only-link-secret-change-me",
        description="signs unsubscribe and confirmation links; rotate it to revoke them all",
    )
    membership_rate_limit: int = 30
    membership_rate_window_seconds: int = 60
    reconcile_interval_minutes: int = 60
    retention_interval_minutes: int = 60
    job_retention_days: int = 90
    error_retention_days: int = 30
    operator_projects: str = Field(
        "ops", description="projects whose ops:read keys see every project's jobs in the report"
    )
    worker_metrics_port: int = 9108
    log_format: Literal["json", "console", "auto"] = "auto"
    log_level: str = "INFO"

    db_pool_min: int = 1
    db_pool_max: int = 20
    db_statement_cache_size: int = 100
    worker_synchronous_commit: bool = Field(
        False, description="workers' commits wait for the WAL flush (on), or not (off)"
    )

    queue_prefix: str = "listmill"
    worker_lanes: str = "small,large"
    worker_max_jobs: int = 4
    # a worker looks at its queue when woken (a job enqueued) and at the latest this often
    worker_poll_delay: float = 0.5
    batch_size: int = 1000
    import_batch_size: int = 20_000
    job_max_attempts: int = 5
    job_retry_base_seconds: float = 1.0
    job_lease_seconds: int = 30
    # a batch written ahead of another (an import's) waits this long for it to commit, then
    # gives up and the job is retried: it may be a deadlock Postgres cannot see (runner._Turn)
    batch_overlap_wait_seconds: float = 30.0
    job_heartbeat_seconds: float = 5.0
    job_stale_queued_seconds: int = 30
    job_error_cap: int = 10_000
    reaper_interval_seconds: int = 10
    large_job_threshold: int = 2_000

    max_json_body_bytes: int = 8 * 1024 * 1024
    max_upload_bytes: int = 256 * 1024 * 1024
    upload_chunk_bytes: int = 1024 * 1024
    import_file_retention_seconds: int = 0
    idempotency_ttl_hours: int = 48

    def lane_queue(self, lane: Lane) -> str:
        """The Redis key of the arq queue that serves ``lane``."""
        return f"{self.queue_prefix}:queue:{lane.value}"

    def lane_wake_channel(self, lane: Lane) -> str:
        """The Redis channel that tells the workers of ``lane`` a job was enqueued."""
        return f"{self.queue_prefix}:wake:{lane.value}"

    def is_operator_project(self, name: str) -> bool:
        """Whether ``name`` is listed in OPERATOR_PROJECTS (comma-separated)."""
        return name in {n.strip() for n in self.operator_projects.split(",") if n.strip()}

    def lanes(self) -> list[Lane]:
        """The lanes this worker process serves (WORKER_LANES, comma-separated)."""
        return [Lane(name.strip()) for name in self.worker_lanes.split(",") if name.strip()]
