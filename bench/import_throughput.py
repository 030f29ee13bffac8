"""End-to-end CSV import throughput, against a raw asyncpg COPY of the same rows.

Starts one `listmill web` and one `listmill worker` (or one per lane with --split-lanes: the
import's is then worker:large) on a fresh database, generates CSV files
(email with a realistic case mix, first and last name, country, two custom columns) and, each
through HTTP (streamed from disk as a text/csv body) and then polled until the job finished:

* small: a --small-rows import into a project of its own (the processes' RSS for a small file);
* first: the --rows file into an empty project: end-to-end rows/s, peak web and worker RSS;
* COPY: the same rows, with their normalised email and project id, COPYed by asyncpg into an
  empty table `LIKE contacts INCLUDING ALL` (the same indexes): rows/s, and the ratio
  import ÷ COPY; the same again sorted by the unique key, for reference;
* reimport: the same file again (every row unchanged): rows/s and speed-up over the first;
* half-new: a --rows file of which every other row is one of the first file's, the rest new;
  meanwhile 1,000-email bulk (un)subscribe jobs of another project, submit-to-finished latency.

Exit status 1 if a job did not succeed or its counts are not the expected ones.

"counted" is when the job's first pass had counted the file's rows (its total was known).

Usage: .venv/bin/python bench/import_throughput.py [--rows 1000000] [--skip copy,half-new]
       [--split-lanes] [--quote-all] [--list]

--quote-all quotes every field, as some exports do: such a file takes the row-by-row path
(csvcolumns takes only blocks without quotes).

--list imports the large files into a list (`list_id`) with an active sequence on it: their
contacts join it and are enrolled (a re-import then finds every one a member). The import ÷
COPY ratio is then of an import that writes memberships and enrollments too.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from common import (
    API,
    ROLES,
    SPLIT_ROLES,
    Api,
    RssPeaks,
    Service,
    add_service_args,
    interruptible,
    percentiles,
    run_listmill,
    running_service,
    service_of,
)

PARTS = ("small", "copy", "reimport", "half-new", "bulk")
HEADER = ("Email Address", "First Name", "Last Name", "Country", "Plan", "Signup Source")
FIRST = "Ada Alan Grace Linus Barbara Ken Margaret Dennis Edsger Frances Radia Guido Anita John "
FIRST += "Sophie Tim Hedy Donald Shafi Niklaus Joan Yukihiro Katherine Bjarne Leslie Fran Jim"
LAST = "Lovelace Turing Hopper Torvalds Liskov Thompson Hamilton Ritchie Dijkstra Allen Perlman "
LAST += "van-Rossum Borg McCarthy Wilson Berners-Lee Lamarr Knuth Goldwasser Wirth Clarke Matsumoto"
DOMAINS = ("example.com", "Example.org", "mail.example.net", "EXAMPLE.IO", "corp.example.co.uk")
COUNTRIES = ("GB", "US", "DE", "FR", "NL", "SE", "JP", "BR", "IN", "", "ES", "IT")
PLANS = ("free", "pro", "team", "enterprise")
SOURCES = ("web", "api", "event", "referral", "partner", "")
IMPORT_POLL_SECONDS = 0.02
BULK_POLL_SECONDS = 0.005
BULK_GAP_SECONDS = 0.25
BULK_CONTACTS = 1_000
COPY_TABLE = "bench_copy_contacts"
COPY_COLUMNS = (
    "project_id", "email", "email_normalized", "first_name", "last_name", "country", "data",
)  # fmt: skip


@dataclass(frozen=True)
class Config:
    svc: Service
    rows: int
    small_rows: int
    skip: frozenset[str]
    bulk_jobs: int
    job_timeout: float
    workdir: Path
    own_workdir: bool  # made by this run: removed at the end
    split_lanes: bool = False  # one worker process per lane: the import's is worker:large
    quote_all: bool = False  # every field quoted, as some exports do: the row-by-row path
    list_import: bool = False  # the large files go into a list with a sequence on it


@dataclass
class ImportRun:
    """One import as the client saw it."""

    name: str
    rows: int
    status: str
    counts: dict[str, int]
    expected: dict[str, int]
    seconds: float  # POST sent -> first poll that saw the job finished
    upload_seconds: float  # POST sent -> 202 received (the file is stored by then)
    server_seconds: float  # the job's created_at -> finished_at
    counted_seconds: float  # POST sent -> first poll that saw the rows counted (total known)
    rss_mb: dict[str, float] = field(default_factory=dict)  # peak per role while it ran

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds

    @property
    def ok(self) -> bool:
        counted = {k: self.counts.get(k, 0) for k in self.expected}
        return self.status == "succeeded" and counted == self.expected


# ---------------------------------------------------------------- the rows


def contact(i: int) -> tuple[str, str, str, str, str, str]:
    """Row ``i`` of every file: the same i always gives the same row. Emails are unique per i,
    scattered in sort order, and 60% lower case, 30% as typed, 10% upper case."""
    h = (i * 2654435761) & 0xFFFFFFFF
    first, last = FIRST_NAMES[h % len(FIRST_NAMES)], LAST_NAMES[(h >> 7) % len(LAST_NAMES)]
    email = f"{first}.{last}{i}@{DOMAINS[(h >> 13) % len(DOMAINS)]}"
    case = (h >> 17) % 10
    email = email.lower() if case < 6 else email.upper() if case == 9 else email
    return (
        email,
        first,
        "" if (h >> 21) % 20 == 0 else last,
        COUNTRIES[(h >> 3) % len(COUNTRIES)],
        PLANS[(h >> 11) % len(PLANS)],
        SOURCES[(h >> 23) % len(SOURCES)],
    )


FIRST_NAMES, LAST_NAMES = FIRST.split(), LAST.split()


def first_file(rows: int) -> range:
    return range(rows)


def half_new_file(rows: int) -> Iterator[int]:
    """Every other row is one of the first file's (unchanged), the rest are new."""
    for j in range(rows):
        yield j // 2 if j % 2 == 0 else rows + j // 2


def write_csv(path: Path, indices: Iterator[int] | range, quote_all: bool = False) -> Path:
    with path.open("w", newline="") as out:
        writer = csv.writer(out, quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL)
        writer.writerow(HEADER)
        writer.writerows(contact(i) for i in indices)
    return path


def copy_record(project_id: int, i: int) -> tuple[Any, ...]:
    """Row ``i`` as the import stores it in contacts (blank fields NULL, custom ones in data)."""
    email, first, last, country, plan, source = contact(i)
    data = {k: v for k, v in (("Plan", plan), ("Signup Source", source)) if v}
    row = (project_id, email, email.lower(), first, last or None, country or None)
    return (*row, json.dumps(data))


# ---------------------------------------------------------------- imports and bulk jobs


def _stamp(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


async def run_import(
    api: Api,
    cfg: Config,
    name: str,
    path: Path,
    rows: int,
    expected: dict[str, int],
    pids: Any,
    list_id: int | None = None,
) -> ImportRun:
    """POST the file as a text/csv body streamed from disk (into the list, if given), poll
    until the job finished; the peak RSS of the service's processes meanwhile."""
    async with RssPeaks(pids) as rss:
        start = time.perf_counter()
        with path.open("rb") as body:
            headers = {**api.headers, "Content-Type": "text/csv"}
            url = f"{api.base}{API}/contacts/import"
            if list_id is not None:
                url += f"?list_id={list_id}"
            async with api.session.post(url, data=body, headers=headers) as resp:
                text = await resp.text()
                if resp.status != 202:
                    raise RuntimeError(f"import {name}: {resp.status}: {text}")
        upload = time.perf_counter() - start
        job_id = json.loads(text)["data"]["id"]
        deadline, counted = time.monotonic() + cfg.job_timeout, [float("nan")]

        def seen(job: Any) -> None:
            if job["progress"]["total"] is not None and math.isnan(counted[0]):
                counted[0] = time.perf_counter() - start

        job = await api.wait_job(job_id, IMPORT_POLL_SECONDS, deadline, seen)
        seconds = time.perf_counter() - start
    finished = _stamp(job["finished_at"]) if job["finished_at"] else float("nan")
    return ImportRun(
        name=name, rows=rows, status=job["status"], counts=job["counts"], expected=expected,
        seconds=seconds, upload_seconds=upload, counted_seconds=counted[0],
        server_seconds=finished - _stamp(job["created_at"]), rss_mb=dict(rss.peaks),
    )  # fmt: skip


def side_emails(cfg: Config) -> list[str]:
    return [f"side-{cfg.svc.token}-{i}@bench.example.com" for i in range(BULK_CONTACTS)]


@dataclass(frozen=True)
class BulkRun:
    """A bulk job's submit-to-finished ms, and its parts: the POST's answer (submitted), from
    the job's row to its start (the queue) and from its start to its end (the run)."""

    status: str
    ms: float
    submitted_ms: float
    queued_ms: float
    ran_ms: float


async def bulk_job(api: Api, path: str, body: Any, seconds: float) -> BulkRun:
    """POST a bulk job, poll it every 5 ms."""
    start = time.perf_counter()
    accepted = await api.call("POST", f"{API}{path}", body, expect=(202,))
    job_id = accepted["data"]["id"]
    submitted = 1000 * (time.perf_counter() - start)
    job = await api.wait_job(job_id, BULK_POLL_SECONDS, time.monotonic() + seconds)
    ms = 1000 * (time.perf_counter() - start)
    created, started, finished = (
        _stamp(job[key]) if job[key] else float("nan")
        for key in ("created_at", "started_at", "finished_at")
    )
    queued, ran = 1000 * (started - created), 1000 * (finished - started)
    return BulkRun(job["status"], ms, submitted, queued, ran)


async def bulk_beside(api: Api, cfg: Config, stop: asyncio.Event) -> list[BulkRun]:
    """1,000-email bulk-unsubscribe and bulk-subscribe jobs in turn (each changes every
    contact), one every BULK_GAP_SECONDS, until ``stop`` is set or --bulk-jobs ran."""
    runs: list[BulkRun] = []
    body = {"emails": side_emails(cfg)}
    while not stop.is_set() and len(runs) < cfg.bulk_jobs:
        path = "/contacts/bulk-unsubscribe" if len(runs) % 2 == 0 else "/contacts/bulk-subscribe"
        runs.append(await bulk_job(api, path, body, cfg.job_timeout))
        await asyncio.sleep(BULK_GAP_SECONDS)
    return runs


# ---------------------------------------------------------------- the raw COPY baseline


async def copy_baseline(cfg: Config, project_id: int, sort: bool) -> float:
    """COPY the first file's rows into an empty table LIKE contacts INCLUDING ALL (its
    indexes, defaults and checks) and with its storage parameters (fillfactor), in one
    transaction; rows/s. The rows are built before the clock starts: this is the COPY alone."""
    records = [copy_record(project_id, i) for i in first_file(cfg.rows)]
    if sort:
        records.sort(key=lambda r: r[2])
    conn = await asyncpg.connect(cfg.svc.database_url)
    try:
        await conn.execute(f"DROP TABLE IF EXISTS {COPY_TABLE}")
        await conn.execute(f"CREATE TABLE {COPY_TABLE} (LIKE contacts INCLUDING ALL)")
        options = await conn.fetchval(
            "SELECT reloptions FROM pg_class WHERE oid = 'contacts'::regclass"
        )
        if options:
            await conn.execute(f"ALTER TABLE {COPY_TABLE} SET ({', '.join(options)})")
        await conn.execute("CHECKPOINT")  # like before every import: no dirty pages inherited
        start = time.perf_counter()
        async with conn.transaction():
            await conn.copy_records_to_table(COPY_TABLE, records=records, columns=COPY_COLUMNS)
        seconds = time.perf_counter() - start
        await conn.execute(f"DROP TABLE {COPY_TABLE}")
    finally:
        await conn.close()
    return len(records) / seconds


async def sql(cfg: Config, statement: str, *args: Any) -> Any:
    conn = await asyncpg.connect(cfg.svc.database_url)
    try:
        return await conn.fetchval(statement, *args)
    finally:
        await conn.close()


# ---------------------------------------------------------------- orchestration


def upload_limit(rows: int) -> int:
    """The service's upload limit: its default (256 MB) or, for larger files, room for them
    (a row has about 64 bytes, 76 quoted throughout)."""
    return max(256 * 1024 * 1024, 160 * rows)


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the large files")
    parser.add_argument("--small-rows", type=int, default=10_000, help="rows of the small file")
    parser.add_argument(
        "--skip", default="", help=f"comma-separated parts to leave out: {', '.join(PARTS)}"
    )
    parser.add_argument("--bulk-jobs", type=int, default=40, help="at most this many bulk jobs")
    parser.add_argument("--job-timeout", type=float, default=3600.0, help="seconds per job")
    parser.add_argument("--workdir", type=Path, help="where the CSV files go (default: a tmp dir)")
    parser.add_argument(
        "--split-lanes", action="store_true", help="one worker process per lane (WORKER_LANES)"
    )
    parser.add_argument(
        "--quote-all",
        action="store_true",
        help="quote every field of the files, as some exports do (the row-by-row parsing path)",
    )
    parser.add_argument(
        "--list",
        action="store_true",
        help="import the large files into a list with a sequence on it (joins, enrollments)",
    )
    add_service_args(parser, port=18081)
    args = parser.parse_args(argv)
    skip = frozenset(filter(None, args.skip.split(",")))
    if skip - set(PARTS):
        parser.error(f"--skip takes {', '.join(PARTS)}")
    if args.rows < 2 or args.small_rows < 1:
        parser.error("--rows must be at least 2, --small-rows at least 1")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="listmill-bench-"))
    limits = {"MAX_UPLOAD_BYTES": str(upload_limit(args.rows))}
    return Config(
        svc=service_of(args, limits), rows=args.rows, small_rows=args.small_rows, skip=skip,
        bulk_jobs=args.bulk_jobs, job_timeout=args.job_timeout, workdir=workdir,
        own_workdir=args.workdir is None, split_lanes=args.split_lanes, quote_all=args.quote_all,
        list_import=args.list,
    )  # fmt: skip


@dataclass
class Session:
    """What the measuring needs: the config, one client per project, the processes' pids."""

    cfg: Config
    api: Api
    small: Api
    side: Api
    pids: dict[str, int]
    files: dict[str, Path] = field(default_factory=dict)
    list_id: int | None = None  # with --list: the large files' list

    async def imported(
        self, name: str, file: str, rows: int, expected: dict[str, int]
    ) -> ImportRun:
        """Import the file; ``expected`` counts contacts (with --list, its joins are added:
        each new contact joins the list and is enrolled, each other one is a member already)."""
        await sql(self.cfg, "CHECKPOINT")
        api, list_id = (self.small, None) if name == "small" else (self.api, self.list_id)
        if list_id is not None:
            created, unchanged = expected.get("created", 0), expected.get("unchanged", 0)
            expected = expected | {"added": created, "enrolled": created, "skipped": unchanged}
            expected = {k: v for k, v in expected.items() if v}
        path = self.files[file]
        return await run_import(api, self.cfg, name, path, rows, expected, self.pids, list_id)

    async def make_list(self) -> None:
        """The large files' list, and an active sequence that enrolls whoever joins it."""
        made = await self.api.call("POST", f"{API}/lists", {"name": "bench"}, expect=(201,))
        self.list_id = int(made["data"]["id"])
        trigger = {"type": "list_added", "list_id": self.list_id}
        sequence = {"name": "bench", "trigger_config": trigger}
        await self.api.call("POST", f"{API}/sequences", sequence, expect=(201,))


def generate(cfg: Config) -> dict[str, Path]:
    n, started = cfg.rows, time.perf_counter()
    quote = cfg.quote_all
    files = {"first": write_csv(cfg.workdir / "first.csv", first_file(n), quote)}
    if "small" not in cfg.skip:
        small = range(10 * n, 10 * n + cfg.small_rows)  # emails of no other file
        files["small"] = write_csv(cfg.workdir / "small.csv", small, quote)
    if "half-new" not in cfg.skip:
        files["half-new"] = write_csv(cfg.workdir / "half-new.csv", half_new_file(n), quote)
    print(f"generated {len(files)} files in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return files


async def measure(cfg: Config, keys: dict[str, str], procs: dict[str, Any]) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        apis = {name: Api(http, cfg.svc.base, key) for name, key in keys.items()}
        s = Session(cfg, apis["main"], apis["small"], apis["side"], pids={})
        s.pids = {role: proc.pid for role, proc in procs.items()}
        s.files = generate(cfg)
        if cfg.list_import:
            await s.make_list()
        return await scenarios(s)


async def scenarios(s: Session) -> dict[str, Any]:
    cfg, n, runs = s.cfg, s.cfg.rows, []
    if "small" not in cfg.skip:
        runs.append(await s.imported("small", "small", cfg.small_rows, {"created": cfg.small_rows}))
    runs.append(await s.imported("first", "first", n, {"created": n}))
    report: dict[str, Any] = {"runs": runs, "bulk": []}
    if "copy" not in cfg.skip:
        project = await sql(
            cfg, "SELECT id FROM projects WHERE name = $1", f"bench-{s.cfg.svc.token}"
        )
        report["copy_rows_per_s"] = await copy_baseline(cfg, project, sort=False)
        report["copy_sorted_rows_per_s"] = await copy_baseline(cfg, project, sort=True)
    if "reimport" not in cfg.skip:
        runs.append(await s.imported("reimport", "first", n, {"unchanged": n}))
    if "half-new" not in cfg.skip:
        half = {"created": n // 2, "unchanged": n - n // 2}
        run, report["bulk"] = await half_new_with_bulk(s, half)
        runs.append(run)
    return report


async def half_new_with_bulk(
    s: Session, expected: dict[str, int]
) -> tuple[ImportRun, list[BulkRun]]:
    """The half-new import, with 1,000-email bulk jobs of another project beside it."""
    if "bulk" in s.cfg.skip:
        return await s.imported("half-new", "half-new", s.cfg.rows, expected), []
    seed = {"contacts": [{"email": email} for email in side_emails(s.cfg)]}
    status = (await bulk_job(s.side, "/contacts/bulk-upsert", seed, s.cfg.job_timeout)).status
    if status != "succeeded":
        raise RuntimeError(f"the side project's seed upsert ended {status}")
    stop = asyncio.Event()
    bulk = asyncio.create_task(bulk_beside(s.side, s.cfg, stop))
    try:
        run = await s.imported("half-new", "half-new", s.cfg.rows, expected)
    finally:
        stop.set()
    return run, await bulk


# ---------------------------------------------------------------- the report


def summarize(cfg: Config, measured: dict[str, Any]) -> dict[str, Any]:
    runs: dict[str, ImportRun] = {run.name: run for run in measured["runs"]}
    first = runs["first"]
    report: dict[str, Any] = {
        "bench": "import_throughput",
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "rows": cfg.rows,
        "small_rows": cfg.small_rows,
        "worker_processes": "one per lane" if cfg.split_lanes else "one for both lanes",
        "into_a_list": cfg.list_import,
        "imports": {name: run_figures(run) for name, run in runs.items()},
        "failed_jobs": [name for name, run in runs.items() if not run.ok],
    }
    if "copy_rows_per_s" in measured:
        report["copy_rows_per_s"] = round(measured["copy_rows_per_s"])
        report["copy_sorted_rows_per_s"] = round(measured["copy_sorted_rows_per_s"])
        report["import_to_copy_ratio"] = round(
            first.rows_per_second / measured["copy_rows_per_s"], 3
        )
    if "reimport" in runs:
        report["reimport_speedup"] = round(
            runs["reimport"].rows_per_second / first.rows_per_second, 2
        )
    if "small" in runs:
        small = runs["small"].rss_mb
        report["rss_growth_mb"] = {
            role: round(first.rss_mb[role] - small[role], 1) for role in small
        }
    bulk = measured["bulk"]
    if bulk:
        report["bulk_beside_import_ms"] = percentiles([run.ms for run in bulk]) | {
            "jobs": len(bulk),
            "submitted_p50": round(statistics.median(run.submitted_ms for run in bulk), 1),
            "queued_p50": round(statistics.median(run.queued_ms for run in bulk), 1),
            "ran_p50": round(statistics.median(run.ran_ms for run in bulk), 1),
        }
        report["failed_jobs"] += [f"bulk {run.status}" for run in bulk if run.status != "succeeded"]
    return report


def run_figures(run: ImportRun) -> dict[str, Any]:
    return {
        "rows_per_s": round(run.rows_per_second),
        "seconds": round(run.seconds, 2),
        "upload_seconds": round(run.upload_seconds, 2),
        "counted_seconds": round(run.counted_seconds, 2),
        "server_seconds": round(run.server_seconds, 2),
        "status": run.status,
        "counts": run.counts,
        "expected": run.expected,
        "peak_rss_mb": {role: round(mb, 1) for role, mb in run.rss_mb.items()},
    }


def print_report(r: dict[str, Any]) -> None:
    print(f"\nlistmill import throughput, {r['rows']:,} rows, {r['cpus']} CPUs, {r['date']}, "
          f"worker processes: {r['worker_processes']}"
          + (", the large files into a list" if r["into_a_list"] else ""))  # fmt: skip
    print(f"{'':<10}{'rows':>10}{'rows/s':>10}{'seconds':>9}{'uploaded':>9}{'counted':>8}"
          f"{'web MB':>8}{'worker MB':>10}  counts")  # fmt: skip
    for name, f in r["imports"].items():
        rss = f["peak_rss_mb"]
        worker = rss.get("worker", rss.get("worker:large", 0))
        rows = f["counts"].get("created", 0) + f["counts"].get("unchanged", 0)
        print(
            f"{name:<10}{rows:>10,}{f['rows_per_s']:>10,}{f['seconds']:>9.1f}"
            f"{f['upload_seconds']:>9.1f}{f['counted_seconds']:>8.1f}"
            f"{rss['web']:>8.0f}{worker:>10.0f}  "
            + ", ".join(f"{k} {v:,}" for k, v in sorted(f["counts"].items()))
        )
    if "copy_rows_per_s" in r:
        print(
            f"raw COPY into an empty contacts-like table: {r['copy_rows_per_s']:,} rows/s "
            f"(sorted by email: {r['copy_sorted_rows_per_s']:,}); "
            f"import ÷ COPY = {r['import_to_copy_ratio']:.2f}"
        )
    if "reimport_speedup" in r:
        print(f"re-import of the unchanged file: {r['reimport_speedup']:.2f}x the first import")
    if "rss_growth_mb" in r:
        growth = r["rss_growth_mb"]
        print("peak RSS, large minus small import: "
              + ", ".join(f"{role} {mb:+.0f} MB" for role, mb in growth.items()))  # fmt: skip
    if "bulk_beside_import_ms" in r:
        b = r["bulk_beside_import_ms"]
        print(f"{b['jobs']} bulk jobs of 1,000 emails beside the half-new import: "
              f"p50 {b['p50']:.0f} ms, p99 {b['p99']:.0f} ms, max {b['max']:.0f} ms "
              f"(medians: submitted {b['submitted_p50']:.0f} ms, "
              f"queued {b['queued_p50']:.0f} ms, ran {b['ran_p50']:.0f} ms)")  # fmt: skip
    print(f"failed or miscounted jobs: {', '.join(r['failed_jobs']) or 'none'}")
    print(json.dumps(r, separators=(",", ":")))


def bench(cfg: Config) -> dict[str, Any]:
    with running_service(cfg.svc, SPLIT_ROLES if cfg.split_lanes else ROLES) as (key, procs):
        keys = {"main": key}
        for name in ("small", "side"):
            keys[name] = run_listmill(
                cfg.svc, "keys", "create", "--project", f"{name}-{cfg.svc.token}"
            )
        return summarize(cfg, asyncio.run(measure(cfg, keys, procs)))


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    try:
        report = interruptible(lambda: bench(cfg))
    finally:
        for path in cfg.workdir.glob("*.csv"):
            path.unlink()
        if cfg.own_workdir:
            cfg.workdir.rmdir()
    if report is None:
        return 130
    print_report(report)
    return 1 if report["failed_jobs"] else 0


if __name__ == "__main__":
    sys.exit(main())
