"""What the benchmarks share: a `listmill web` and `listmill worker` on a fresh database, the API
client, peak-RSS sampling, percentiles, and a clean-up that runs whatever happens."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
from arq import create_pool
from arq.connections import RedisSettings

FINISHED = frozenset({"succeeded", "failed", "cancelled"})
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
API = "/api/v1"
ROLES = ("web", "worker")
SPLIT_ROLES = ("web", "worker:small", "worker:large")  # one worker process per lane


@dataclass(frozen=True)
class Service:
    """Where the benchmark's service runs, and the environment it is started with."""

    port: int
    database_url: str
    own_database: bool  # created for this run: dropped at the end
    redis_url: str
    queue_prefix: str
    token: str  # this run's name, in the database, the queues and the generated emails
    env: dict[str, str] = field(default_factory=dict)  # settings on top of the defaults

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def add_service_args(parser: argparse.ArgumentParser, port: int) -> None:
    parser.add_argument("--port", type=int, default=port, help="port of `listmill web`")
    parser.add_argument("--database-url", help="default: a fresh listmill_bench_<pid>, dropped")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")


def service_of(args: argparse.Namespace, env: dict[str, str] | None = None) -> Service:
    token = str(os.getpid())
    url = args.database_url or f"postgresql://postgres@127.0.0.1:5432/listmill_bench_{token}"
    return Service(
        port=args.port,
        database_url=url,
        own_database=args.database_url is None,
        redis_url=args.redis_url,
        queue_prefix=f"listmill_bench_{token}",
        token=token,
        env=env or {},
    )


def service_env(svc: Service) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": svc.database_url,
        "REDIS_URL": svc.redis_url,
        "HOST": "127.0.0.1",
        "PORT": str(svc.port),
        "QUEUE_PREFIX": svc.queue_prefix,
        "LOG_LEVEL": "WARNING",
        "WORKER_METRICS_PORT": "0",  # never collide with another worker's metrics port
        **svc.env,
    }


def listmill_command() -> list[str]:
    script = Path(sys.executable).with_name("listmill")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "listmill.cli"]


def run_listmill(svc: Service, *args: str) -> str:
    """Run a short `listmill` command; its stdout."""
    done = subprocess.run(
        [*listmill_command(), *args],
        env=service_env(svc),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"listmill {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout.strip()


def start_service(svc: Service, role: str) -> subprocess.Popen[bytes]:
    """Start `listmill web|worker` (``worker:LANE``: a worker of that lane alone) in its own
    session, so Ctrl-C reaches only this script."""
    command, _, lane = role.partition(":")
    env = service_env(svc) | ({"WORKER_LANES": lane} if lane else {})
    return subprocess.Popen(
        [*listmill_command(), command],
        env=env,
        stdout=subprocess.DEVNULL,  # aiohttp's banner; warnings and tracebacks go to stderr
        start_new_session=True,
    )


def stop_services(procs: Iterable[subprocess.Popen[bytes]]) -> None:
    """SIGTERM, wait, then SIGKILL whatever is left."""
    procs = [p for p in procs if p.poll() is None]
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for proc in procs:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def running_service(
    svc: Service, roles: Iterable[str] = ROLES
) -> Iterator[tuple[str, dict[str, subprocess.Popen[bytes]]]]:
    """Migrate, start the processes, wait for /readyz, create a project key; yields (key,
    processes by role). The processes are stopped, this run's Redis keys deleted and its
    database dropped whatever happens, Ctrl-C and SIGTERM included."""
    signal.signal(signal.SIGTERM, _terminate)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        run_listmill(svc, "migrate")
        procs = {role: start_service(svc, role) for role in roles}
        asyncio.run(wait_ready(svc, list(procs.values())))
        yield run_listmill(svc, "keys", "create", "--project", f"bench-{svc.token}"), procs
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second signal must not skip clean-up
            signal.signal(sig, signal.SIG_IGN)
        stop_services(procs.values())
        asyncio.run(clean_up(svc))


def interruptible(run: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    """A benchmark's report, or None (having said so) if Ctrl-C or SIGTERM stopped it."""
    try:
        return run()
    except KeyboardInterrupt:
        print("interrupted; the service was stopped", file=sys.stderr)
        return None


async def wait_ready(svc: Service, procs: list[subprocess.Popen[bytes]]) -> None:
    async with aiohttp.ClientSession() as session:
        await Api(session, svc.base).wait_ready(procs)


# ---------------------------------------------------------------- clean-up


async def job_ids(database_url: str) -> set[str]:
    """Every job id of this run's database (their arq keys are not named after the prefix)."""
    conn = await asyncpg.connect(database_url)
    try:
        return {str(row["id"]) for row in await conn.fetch("SELECT id FROM jobs")}
    finally:
        await conn.close()


async def clean_redis(svc: Service, jobs: set[str]) -> None:
    """Delete this run's queues, health keys, baseline results and its jobs' arq keys."""
    redis = await create_pool(RedisSettings.from_dsn(svc.redis_url))
    try:
        ours = [key async for key in redis.scan_iter(match=f"*{svc.queue_prefix}*")]
        async for key in redis.scan_iter(match="arq:*"):
            parts = key.decode().split(":")
            if len(parts) > 2 and parts[2] in jobs:  # arq:<kind>:<job id>:<attempt>
                ours.append(key)
        if ours:
            await redis.delete(*ours)
    finally:
        await redis.aclose()


async def drop_database(database_url: str) -> None:
    parts = urlsplit(database_url)
    name = parts.path.lstrip("/")
    conn = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
    try:
        quoted = '"' + name.replace('"', '""') + '"'
        await conn.execute(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")
    finally:
        await conn.close()


async def clean_up(svc: Service) -> None:
    """Drop this run's Redis keys and (if the script made it) its database; warn on failure."""
    jobs: set[str] = set()
    with contextlib.suppress(OSError, asyncpg.PostgresError):
        jobs = await job_ids(svc.database_url)
    steps = [clean_redis(svc, jobs)]
    if svc.own_database:
        steps.append(drop_database(svc.database_url))
    for step in steps:
        try:
            await step
        except Exception as exc:
            print(f"clean-up failed: {exc!r}", file=sys.stderr)


# ---------------------------------------------------------------- measuring


def percentiles(samples: list[float]) -> dict[str, float]:
    if len(samples) < 2:
        samples = samples * 2 or [float("nan")] * 2
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {
        "p50": round(cuts[49], 1),
        "p95": round(cuts[94], 1),
        "p99": round(cuts[98], 1),
        "max": round(max(samples), 1),
    }


def rss_mb(pid: int) -> float:
    """A process's resident set size now, in MB (VmRSS of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class RssPeaks:
    """The peak RSS of some processes over a stretch of time, polled every ``interval`` s.

    Polled rather than read from VmHWM: the high-water mark only ever grows, so it cannot
    tell one import's peak from an earlier, larger one's in the same process."""

    def __init__(self, pids: dict[str, int], interval: float = 0.05):
        self.pids, self.interval = pids, interval
        self.peaks = {name: 0.0 for name in pids}
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        for name, pid in self.pids.items():
            self.peaks[name] = max(self.peaks[name], rss_mb(pid))

    async def _poll(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    async def __aenter__(self) -> RssPeaks:
        self.sample()
        self._task = asyncio.create_task(self._poll())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self.sample()


# ---------------------------------------------------------------- the API client


class Api:
    """The service's HTTP API, through one ClientSession."""

    def __init__(self, session: aiohttp.ClientSession, base: str, key: str | None = None):
        self.session = session
        self.base = base
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    async def call(
        self, method: str, path: str, body: Any = None, expect: Collection[int] = (200,)
    ) -> Any:
        url = f"{self.base}{path}"
        async with self.session.request(method, url, json=body, headers=self.headers) as resp:
            text = await resp.text()
            if resp.status not in expect:
                raise RuntimeError(f"{method} {path}: {resp.status} (wanted {expect}): {text}")
            return json.loads(text)

    async def wait_ready(self, procs: list[subprocess.Popen[bytes]]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in procs):
                raise RuntimeError("a listmill process exited before /readyz answered 200")
            try:
                async with self.session.get(f"{self.base}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError(f"/readyz did not answer 200 within {READY_TIMEOUT:.0f} s")

    async def wait_job(
        self,
        job_id: str,
        poll: float,
        deadline: float = float("inf"),
        seen: Callable[[Any], None] | None = None,
    ) -> Any:
        """Poll a job every ``poll`` s until it has finished or the monotonic ``deadline``
        passed, handing each state to ``seen``; the job as last seen."""
        while True:
            tick = time.perf_counter()
            job = (await self.call("GET", f"{API}/jobs/{job_id}"))["data"]
            if seen is not None:
                seen(job)
            if job["status"] in FINISHED or time.monotonic() >= deadline:
                return job
            await asyncio.sleep(max(poll - (time.perf_counter() - tick), 0))
