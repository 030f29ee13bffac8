"""Prometheus metrics of the web process. Each app has its own registry; queue gauges are
refreshed from Postgres and Redis when scraped, so every web process reports the same truth.
Workers expose their own job metrics (worker/metrics.py)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from api.http import public
from listmill.ops import queue_report

LANE_GAUGES = {
    "depth": ("listmill_queue_depth", "Jobs queued and due, by lane"),
    "scheduled": ("listmill_queue_scheduled", "Jobs waiting for a retry backoff, by lane"),
    "in_progress": ("listmill_jobs_in_progress", "Jobs running now, by lane"),
    "oldest_queued_age_seconds": (
        "listmill_queue_oldest_age_seconds",
        "Age of the oldest queued job, by lane (0 when none is queued)",
    ),
}


class WebMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "listmill_http_requests", "HTTP requests by route template, method and status",
            ["method", "route", "status"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "listmill_http_request_duration_seconds", "HTTP request latency by route template",
            ["method", "route"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )  # fmt: skip
        self.jobs_submitted = Counter(
            "listmill_jobs_submitted", "Jobs accepted, by kind", ["kind"], registry=self.registry
        )
        self.lanes = {
            key: Gauge(name, text, ["lane"], registry=self.registry)
            for key, (name, text) in LANE_GAUGES.items()
        }
        self.workers = Gauge(
            "listmill_workers_alive", "Worker processes with a live heartbeat, by lane", ["lane"],
            registry=self.registry,
        )  # fmt: skip

    def observe(self, request: web.Request, status: int, seconds: float) -> None:
        """Count a request under its route template (bounded labels, never raw paths)."""
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        self.requests.labels(request.method, route, str(status)).inc()
        self.latency.labels(request.method, route).observe(seconds)


METRICS = web.AppKey("metrics", WebMetrics)


@public
async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus text format."""
    from api.context import POOL, REDIS, SETTINGS

    app, collected = request.app, request.app[METRICS]
    report = await queue_report(app[POOL], app[REDIS], app[SETTINGS])
    for lane in report["lanes"]:
        for key, gauge in collected.lanes.items():
            gauge.labels(lane["lane"]).set(lane[key] or 0)
        alive = sum(1 for w in report["workers"] if lane["lane"] in w["lanes"])
        collected.workers.labels(lane["lane"]).set(alive)
    body = generate_latest(collected.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
