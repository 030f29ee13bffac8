"""Submit-to-finished latency of small bulk jobs, against a bare arq round trip.

Starts one `listmill web` and one `listmill worker` on a fresh database, then measures:

* baseline: an in-script arq Worker running a no-op, enqueue_job -> job.result(), polling
  its queue every 50 ms (plain arq has no wake-up; 50 ms was listmill's poll delay before
  its workers were woken by a channel, and arq's own default is 500 ms);
* A: N sequential 1,000-id bulk-unsubscribe/bulk-subscribe jobs (alternating, so every job
  changes every row), from sending the POST to the first 5 ms poll that sees the job finished;
* B: the same while a background client keeps the large lane busy with 10,000-contact upserts;
* the worker's CPU use while idle.

Each scenario has a deadline (--scenario-seconds): a scenario cut short is reported as such,
its unfinished job is cancelled and waited for, and the exit status is 2 (1 if a job failed).

Usage: .venv/bin/python bench/bulk_latency.py [--jobs 100]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import Worker
from common import (
    API,
    FINISHED,
    ROLES,
    SPLIT_ROLES,
    Api,
    Service,
    add_service_args,
    interruptible,
    percentiles,
    running_service,
    service_of,
)

from listmill.settings import Settings

UNFINISHED = "unfinished"  # the client stopped waiting at the scenario's deadline
POLL_SECONDS = 0.005
LOAD_POLL_SECONDS = 0.05
SETTLE_POLL_SECONDS = 0.1
SETTLE_SECONDS = 60.0
SEED_CONTACTS = 1_000
LARGE_CONTACTS = 10_000
ARQ_WARMUP = 3
BREAKDOWN = (
    "accepted_202",
    "post_to_stored",
    "stored_to_claimed",
    "claimed_to_finished",
    "finished_to_seen",
    "polls",
)
HEADINGS = ("202 answered", "POST->stored", "->claimed", "->finished", "->seen", "polls")
DEFAULT_POLL_DELAY = float(Settings.model_fields["worker_poll_delay"].default)
ARQ_POLL_DELAY = 0.05
DEFAULT_THRESHOLD = int(Settings.model_fields["large_job_threshold"].default)


@dataclass(frozen=True)
class Config:
    svc: Service
    jobs: int
    large_job_threshold: int | None
    scenario_seconds: float
    analyze_every: float
    idle_seconds: float
    split_lanes: bool = False


@dataclass
class JobRun:
    """One job as the client saw it: client clocks plus the server's timestamps."""

    id: str
    kind: str
    status: str  # the job's, or UNFINISHED
    lane: str
    counts: dict[str, int]
    latency_ms: float  # POST sent -> first poll that saw a finished status
    accepted_ms: float  # POST sent -> 202 received
    sent_at: float  # wall clock, to line up with the server's timestamps
    seen_at: float
    created_at: float
    started_at: float | None
    finished_at: float | None
    polls: int


@dataclass
class Scenario:
    runs: list[JobRun]
    planned: int
    settled: str | None = None  # the final status of a job left unfinished at the deadline

    @property
    def complete(self) -> bool:
        return len(self.runs) == self.planned and all(r.status != UNFINISHED for r in self.runs)


@dataclass
class LoadStats:
    runs: list[JobRun] = field(default_factory=list)
    first_running: asyncio.Event = field(default_factory=asyncio.Event)


# ---------------------------------------------------------------- configuration and processes


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100, help="measured jobs per scenario")
    add_service_args(parser, port=18080)
    parser.add_argument(
        "--large-job-threshold",
        type=int,
        help=f"LARGE_JOB_THRESHOLD for the service (default: its own, {DEFAULT_THRESHOLD})",
    )
    parser.add_argument("--scenario-seconds", type=float, default=90.0, help="deadline per run")
    parser.add_argument(
        "--analyze-every",
        type=float,
        default=0.0,
        help="ANALYZE contacts every this many seconds during the scenarios, standing in for "
        "autovacuum where the server has it off (default 0: never, measure as is)",
    )
    parser.add_argument("--idle-seconds", type=float, default=10.0, help="idle CPU window")
    parser.add_argument(
        "--split-lanes",
        action="store_true",
        help="one worker process per lane (WORKER_LANES=small / large), as README advises",
    )
    args = parser.parse_args(argv)
    if args.jobs < 2:
        parser.error("--jobs must be at least 2")
    env = {}
    if args.large_job_threshold is not None:
        env["LARGE_JOB_THRESHOLD"] = str(args.large_job_threshold)
    return Config(
        svc=service_of(args, env),
        jobs=args.jobs,
        large_job_threshold=args.large_job_threshold,
        scenario_seconds=args.scenario_seconds,
        analyze_every=args.analyze_every,
        idle_seconds=args.idle_seconds,
        split_lanes=args.split_lanes,
    )


# ---------------------------------------------------------------- statistics and Postgres


def breakdown(runs: list[JobRun]) -> dict[str, float]:
    """Medians of where a job's time went, in ms (server timestamps are Postgres now())."""
    parts: dict[str, list[float]] = {
        "post_to_stored": [],
        "stored_to_claimed": [],
        "claimed_to_finished": [],
        "finished_to_seen": [],
    }
    for r in runs:
        if r.started_at is None or r.finished_at is None:
            continue
        parts["post_to_stored"].append(r.created_at - r.sent_at)
        parts["stored_to_claimed"].append(r.started_at - r.created_at)
        parts["claimed_to_finished"].append(r.finished_at - r.started_at)
        parts["finished_to_seen"].append(r.seen_at - r.finished_at)
    medians = {name: round(1000 * statistics.median(v), 1) for name, v in parts.items() if v}
    medians["accepted_202"] = round(statistics.median(r.accepted_ms for r in runs), 1)
    medians["polls"] = statistics.median(r.polls for r in runs)
    return medians


def read_cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


async def idle_cpu_percent(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """Percent of one core each process used over ``seconds`` of doing nothing."""
    ticks = os.sysconf("SC_CLK_TCK")
    before = {name: read_cpu_ticks(pid) for name, pid in pids.items()}
    start = time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - start
    after = {name: read_cpu_ticks(pid) for name, pid in pids.items()}
    return {name: round(100 * (after[name] - before[name]) / ticks / elapsed, 2) for name in pids}


async def autovacuum_setting(database_url: str) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        return str(await conn.fetchval("SHOW autovacuum"))
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def periodic_analyze(cfg: Config) -> AsyncIterator[None]:
    """ANALYZE contacts every --analyze-every seconds while the body runs (0: never)."""

    async def loop() -> None:
        conn = await asyncpg.connect(cfg.svc.database_url)
        try:
            while True:
                await conn.execute("ANALYZE contacts")
                await asyncio.sleep(cfg.analyze_every)
        finally:
            await conn.close()

    task = asyncio.create_task(loop()) if cfg.analyze_every > 0 else None
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


# ---------------------------------------------------------------- the API client


def _stamp(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


async def contact_ids(api: Api) -> list[int]:
    ids: list[int] = []
    cursor: str | None = None
    while True:
        query = "?limit=100" + (f"&cursor={cursor}" if cursor else "")
        page = await api.call("GET", f"{API}/contacts{query}")
        ids += [contact["id"] for contact in page["data"]]
        cursor = page["meta"]["next_cursor"]
        if not page["meta"]["has_more"]:
            return ids


def job_run(job: dict[str, Any], status: str, clocks: dict[str, float], polls: int) -> JobRun:
    return JobRun(
        id=job["id"],
        kind=job["kind"],
        status=status,
        lane=job["lane"],
        counts=job["counts"],
        latency_ms=1000 * (time.perf_counter() - clocks["start"]),
        accepted_ms=clocks["accepted_ms"],
        sent_at=clocks["sent_at"],
        seen_at=time.time(),
        created_at=datetime.fromisoformat(job["created_at"]).timestamp(),
        started_at=_stamp(job["started_at"]),
        finished_at=_stamp(job["finished_at"]),
        polls=polls,
    )


async def run_job(
    api: Api,
    path: str,
    body: Any,
    *,
    poll: float = POLL_SECONDS,
    running: asyncio.Event | None = None,
    deadline: float = float("inf"),
) -> JobRun:
    """POST a job, then poll it every ``poll`` seconds until it has finished (or, at the
    monotonic ``deadline``, give up and call it UNFINISHED)."""
    clocks = {"sent_at": time.time(), "start": time.perf_counter()}
    accepted = await api.call("POST", f"{API}{path}", body, expect=(202,))
    clocks["accepted_ms"] = 1000 * (time.perf_counter() - clocks["start"])
    job_path, polls = f"{API}/jobs/{accepted['data']['id']}", 0
    while True:
        tick = time.perf_counter()
        job = (await api.call("GET", job_path))["data"]
        polls += 1
        if job["status"] in FINISHED or time.monotonic() >= deadline:
            status = job["status"] if job["status"] in FINISHED else UNFINISHED
            return job_run(job, status, clocks, polls)
        if running is not None and job["status"] == "running":
            running.set()
        await asyncio.sleep(max(poll - (time.perf_counter() - tick), 0))


async def settle(api: Api, run: JobRun) -> str:
    """Cancel a job the client gave up on and wait (bounded) until it has ended."""
    job_path = f"{API}/jobs/{run.id}"
    await api.call("POST", f"{job_path}/cancel", expect=(200, 409))
    deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < deadline:
        status = str((await api.call("GET", job_path))["data"]["status"])
        if status in FINISHED:
            return status
        await asyncio.sleep(SETTLE_POLL_SECONDS)
    return UNFINISHED


# ---------------------------------------------------------------- baseline and scenarios


async def noop(ctx: dict[str, Any]) -> None:
    """The baseline's task: nothing."""


async def arq_baseline(cfg: Config, rounds: int) -> list[float]:
    """enqueue_job -> job.result() round trips through a bare arq Worker in this loop."""
    settings = RedisSettings.from_dsn(cfg.svc.redis_url)
    queue = f"{cfg.svc.queue_prefix}:baseline"
    worker = Worker(
        functions=[noop],
        queue_name=queue,
        redis_settings=settings,
        poll_delay=ARQ_POLL_DELAY,
        handle_signals=False,
        keep_result=60,
    )
    task = asyncio.create_task(worker.async_run())
    redis = await create_pool(settings, default_queue_name=queue)
    samples: list[float] = []
    try:
        for i in range(ARQ_WARMUP + rounds):
            start = time.perf_counter()
            job = await redis.enqueue_job("noop", _job_id=f"{queue}:{i}")
            assert job is not None
            await job.result(timeout=10, poll_delay=POLL_SECONDS)
            if i >= ARQ_WARMUP:
                samples.append(1000 * (time.perf_counter() - start))
    finally:
        # the last job's task may still be storing what it did after its result was seen:
        # closed meanwhile, arq's close raised its CancelledError (one run in several)
        if worker.tasks:
            await asyncio.wait(list(worker.tasks.values()), timeout=5)
        await worker.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await redis.aclose()
    return samples


def status_job(index: int) -> tuple[str, str]:
    """Contacts start subscribed: even jobs unsubscribe them all, odd ones subscribe them."""
    return (
        ("bulk-unsubscribe", "unsubscribed") if index % 2 == 0 else ("bulk-subscribe", "subscribed")
    )


async def sequential_jobs(
    api: Api, ids: list[int], first: int, count: int, seconds: float
) -> Scenario:
    """``count`` status jobs one after another, or as many as fit in ``seconds``."""
    deadline = time.monotonic() + seconds
    scenario = Scenario(runs=[], planned=count)
    for index in range(first, first + count):
        if time.monotonic() >= deadline:
            break
        path = f"/contacts/{status_job(index)[0]}"
        run = await run_job(api, path, {"contact_ids": ids}, deadline=deadline)
        scenario.runs.append(run)
        if run.status == UNFINISHED:
            scenario.settled = await settle(api, run)
    return scenario


def unchanged_jobs(runs: list[JobRun], first: int, size: int) -> int:
    """Finished jobs that did not move every contact (each should change all ``size`` rows)."""
    return sum(
        1
        for i, run in enumerate(runs, start=first)
        if run.status != UNFINISHED and run.counts.get(status_job(i)[1]) != size
    )


async def large_lane_load(api: Api, cfg: Config, stop: asyncio.Event, stats: LoadStats) -> None:
    """10,000-contact upserts of new emails, one after another, until ``stop`` is set."""
    batch = 0
    while not stop.is_set():
        contacts = [
            {"email": f"load-{cfg.svc.token}-{batch}-{i}@bench.example.com"}
            for i in range(LARGE_CONTACTS)
        ]
        body = {"contacts": contacts}
        running = stats.first_running
        run = await run_job(
            api, "/contacts/bulk-upsert", body, poll=LOAD_POLL_SECONDS, running=running
        )
        stats.runs.append(run)
        running.set()  # even if it finished before a poll saw it running
        batch += 1


async def scenario_b(
    api: Api, load_api: Api, cfg: Config, ids: list[int]
) -> tuple[Scenario, LoadStats]:
    """Scenario A's jobs again, with the large lane kept busy from before the first one."""
    stats, stop = LoadStats(), asyncio.Event()
    load = asyncio.create_task(large_lane_load(load_api, cfg, stop, stats))
    try:
        await asyncio.wait_for(stats.first_running.wait(), timeout=60)
        scenario = await sequential_jobs(api, ids, cfg.jobs, cfg.jobs, cfg.scenario_seconds)
        stop.set()
        await load
    finally:
        stop.set()
        if not load.done():
            load.cancel()
            await asyncio.gather(load, return_exceptions=True)
    return scenario, stats


# ---------------------------------------------------------------- orchestration and report


async def seed(api: Api, cfg: Config) -> tuple[list[int], JobRun]:
    """1,000 contacts by one bulk upsert; their ids."""
    contacts = [
        {"email": f"seed-{cfg.svc.token}-{i}@bench.example.com"} for i in range(SEED_CONTACTS)
    ]
    run = await run_job(api, "/contacts/bulk-upsert", {"contacts": contacts})
    if run.status != "succeeded":
        raise RuntimeError(f"the seed upsert ended {run.status}: {run.counts}")
    return await contact_ids(api), run


async def measure(
    cfg: Config, key: str, procs: dict[str, subprocess.Popen[bytes]]
) -> dict[str, Any]:
    base = cfg.svc.base
    async with aiohttp.ClientSession() as session, aiohttp.ClientSession() as load_session:
        api, load_api = Api(session, base, key), Api(load_session, base, key)
        ids, seed_run = await seed(api, cfg)
        baseline = await arq_baseline(cfg, cfg.jobs)
        async with periodic_analyze(cfg):
            a = await sequential_jobs(api, ids, 0, cfg.jobs, cfg.scenario_seconds)
            b, load = await scenario_b(api, load_api, cfg, ids)
    await asyncio.sleep(1.0)  # let the last wake-ups and log writes settle
    pids = {role: proc.pid for role, proc in procs.items()}
    idle = await idle_cpu_percent(pids, cfg.idle_seconds)
    autovacuum = await autovacuum_setting(cfg.svc.database_url)
    figures = summarize(cfg, ids, baseline, a, b, load)
    failed = count_failed([seed_run, *a.runs, *b.runs, *load.runs], [a, b])
    return figures | {"idle_cpu_pct": idle, "autovacuum": autovacuum, "failed_jobs": failed}


def count_failed(runs: list[JobRun], scenarios: list[Scenario]) -> int:
    """Jobs the service failed or cancelled; a job this script cancelled counts only if it
    failed instead."""
    ended_badly = sum(1 for r in runs if r.status in FINISHED - {"succeeded"})
    return ended_badly + sum(1 for s in scenarios if s.settled == "failed")


def scenario_figures(
    name: str, s: Scenario, arq_p50: float, size: int, first: int
) -> dict[str, Any]:
    figures = percentiles([r.latency_ms for r in s.runs])
    return {
        f"scenario_{name}_ms": figures,
        f"ratio_{name}_p50": round(figures["p50"] / arq_p50, 2),
        f"breakdown_{name}_p50_ms": breakdown(s.runs),
        f"scenario_{name}_completed": sum(1 for r in s.runs if r.status != UNFINISHED),
        f"scenario_{name}_cut_off_job_ended": s.settled,
        f"scenario_{name}_not_changing_all_rows": unchanged_jobs(s.runs, first, size),
        f"scenario_{name}_lanes": sorted({r.lane for r in s.runs}),
    }


def load_figures(load: LoadStats) -> dict[str, Any]:
    """How many large jobs ran during scenario B, in which lane, how long each took."""
    return {
        "large_jobs": len(load.runs),
        "large_job_lanes": sorted({r.lane for r in load.runs}),
        "large_job_p50_s": round(statistics.median(r.latency_ms for r in load.runs) / 1000, 2),
    }


def summarize(
    cfg: Config, ids: list[int], baseline: list[float], a: Scenario, b: Scenario, load: LoadStats
) -> dict[str, Any]:
    arq = percentiles(baseline)
    threshold = cfg.large_job_threshold
    return {
        "bench": "bulk_latency",
        "jobs": cfg.jobs,
        "contacts": len(ids),
        "worker_poll_delay_s": DEFAULT_POLL_DELAY,
        "arq_poll_delay_s": ARQ_POLL_DELAY,
        "client_poll_s": POLL_SECONDS,
        "large_job_threshold": DEFAULT_THRESHOLD if threshold is None else threshold,
        "scenario_seconds": cfg.scenario_seconds,
        "worker_processes": "one per lane" if cfg.split_lanes else "one for both lanes",
        "analyze_every_s": cfg.analyze_every,
        "cpus": os.cpu_count(),
        "arq_baseline_ms": arq,
        **scenario_figures("a", a, arq["p50"], len(ids), 0),
        **scenario_figures("b", b, arq["p50"], len(ids), cfg.jobs),
        **load_figures(load),
        "complete": a.complete and b.complete,
    }


def row(label: str, figures: dict[str, float], ratio: float | str) -> str:
    values = "".join(f"{figures[k]:>9.1f}" for k in ("p50", "p95", "p99", "max"))
    return f"{label:<40}{values}{ratio:>11}"


def print_header(r: dict[str, Any]) -> None:
    print(
        f"\nlistmill bulk-job latency: {r['jobs']} jobs per scenario, {r['contacts']} contact "
        f"ids each, client polls every {r['client_poll_s'] * 1000:.0f} ms, "
        f"WORKER_POLL_DELAY {r['worker_poll_delay_s']} s (the arq baseline polls every "
        f"{r['arq_poll_delay_s']} s), {r['cpus']} CPUs, "
        f"Postgres autovacuum {r['autovacuum']}, {r['worker_processes']}"
        + (f", ANALYZE contacts every {r['analyze_every_s']} s" if r["analyze_every_s"] else "")
    )
    print(f"{'ms':<40}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}{'p50/arq':>11}")


def print_report(r: dict[str, Any]) -> None:
    print_header(r)
    print(row("arq round trip, no-op task", r["arq_baseline_ms"], "1.00"))
    for name, label in (("a", "A  1,000-id bulk (un)subscribe"), ("b", "B  same, large lane busy")):
        print(row(label, r[f"scenario_{name}_ms"], f"{r[f'ratio_{name}_p50']:.2f}"))
        if r[f"scenario_{name}_completed"] < r["jobs"]:
            print(
                f"   CUT OFF at {r['scenario_seconds']:.0f} s: {r[f'scenario_{name}_completed']}"
                f" of {r['jobs']} jobs finished (figures include the one given up on, as a lower"
                f" bound); it then ended {r[f'scenario_{name}_cut_off_job_ended']}"
            )
    print(
        f"   during B: {r['large_jobs']} x 10,000-contact upserts ran, lane "
        f"{'/'.join(r['large_job_lanes'])}, p50 {r['large_job_p50_s']} s each "
        f"(LARGE_JOB_THRESHOLD={r['large_job_threshold']})"
    )
    print(f"\n{'p50 ms, where the time goes':<40}" + "".join(f"{h:>13}" for h in HEADINGS))
    for name in ("a", "b"):
        figures = r[f"breakdown_{name}_p50_ms"]
        cells = "".join(f"{figures.get(part, float('nan')):>13.1f}" for part in BREAKDOWN)
        print(f"{name.upper():<40}{cells}")
    idle = r["idle_cpu_pct"]
    print(
        "\nidle CPU, % of one core: "
        + ", ".join(f"{role} {percent:.2f}" for role, percent in sorted(idle.items()))
    )
    unchanged = r["scenario_a_not_changing_all_rows"] + r["scenario_b_not_changing_all_rows"]
    print(
        f"failed jobs: {r['failed_jobs']}; jobs that did not change all rows: {unchanged}; "
        f"small-job lanes: {'/'.join(sorted({*r['scenario_a_lanes'], *r['scenario_b_lanes']}))}"
    )
    print(json.dumps(r, separators=(",", ":")))


def bench(cfg: Config) -> dict[str, Any]:
    """Start the service, measure; see ``running_service`` for the clean-up."""
    roles = SPLIT_ROLES if cfg.split_lanes else ROLES
    with running_service(cfg.svc, roles) as (key, procs):
        return asyncio.run(measure(cfg, key, procs))


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    report = interruptible(lambda: bench(cfg))
    if report is None:
        return 130
    print_report(report)
    if report["failed_jobs"]:
        return 1
    return 0 if report["complete"] else 2


if __name__ == "__main__":
    sys.exit(main())
