"""Prometheus metrics of a worker process, served on WORKER_METRICS_PORT (0: not served).
Each worker process has its own port: scrape every worker (see README, Operations)."""

from __future__ import annotations

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

log = structlog.get_logger(__name__)

REGISTRY = CollectorRegistry()
JOBS_FINISHED = Counter(
    "listmill_jobs_finished", "Jobs ended by this worker, by kind and final status",
    ["kind", "status"], registry=REGISTRY,
)  # fmt: skip
JOB_RETRIES = Counter(
    "listmill_job_retries", "Jobs given back after a transient failure, by kind", ["kind"],
    registry=REGISTRY,
)  # fmt: skip
JOB_DURATION = Histogram(
    "listmill_job_duration_seconds", "Run time of a job attempt, by kind", ["kind"],
    registry=REGISTRY, buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)  # fmt: skip
ROWS_WRITTEN = Counter(
    "listmill_rows_written", "Items applied in committed batches, by kind", ["kind"],
    registry=REGISTRY,
)  # fmt: skip


def serve_metrics(port: int) -> None:
    """Serve /metrics on ``port``; a taken port is logged, never fatal to the worker."""
    if not port:
        return
    try:
        start_http_server(port, addr="0.0.0.0", registry=REGISTRY)
    except OSError as exc:
        log.warning("worker_metrics_not_served", port=port, error=repr(exc))
