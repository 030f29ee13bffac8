"""The integrator's client against the real app on a TCP port, with real workers running:
upload, events (and the polling fallback), the counts, the error report, exit statuses."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.typedefs import Middleware

from api.app import create_app
from api.http import Handler
from listmill import client
from listmill.cli import main
from listmill.records import Job, JobStatus
from listmill.settings import Settings
from tests.conftest import Api, wait_for_job
from tests.integration.test_jobs import FAIL_ONCE

CSV = b"Email Address,First Name\nann@example.com,Ann\nnot-an-email,X\nbob@example.com,Bob\n"


@dataclass
class Service:
    """The app served on a real port, and the requests it saw (method, path, Last-Event-ID)."""

    url: str
    seen: list[tuple[str, str, str | None]] = field(default_factory=list)

    def paths(self, suffix: str) -> list[str | None]:
        """The Last-Event-ID of each request whose path ends with ``suffix``."""
        return [last_id for _, path, last_id in self.seen if path.endswith(suffix)]


Serve = Callable[..., Awaitable[Service]]


@pytest.fixture
async def serve(settings: Settings) -> AsyncIterator[Serve]:
    """Start the app on 127.0.0.1 (port 0): extra middlewares go in front, keyword
    arguments override settings."""
    runners: list[web.AppRunner] = []

    async def start(*middlewares: Middleware, **overrides: Any) -> Service:
        app = create_app(settings.model_copy(update=overrides))
        service = Service(url="")

        @web.middleware
        async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
            service.seen.append(
                (request.method, request.path, request.headers.get("Last-Event-ID"))
            )
            return await handler(request)

        for middleware in reversed((record, *middlewares)):
            app.middlewares.insert(0, middleware)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        service.url = f"http://{host}:{port}"
        return service

    yield start
    for runner in runners:
        await runner.cleanup()


async def cli(*argv: str) -> int:
    """`listmill ARGV` as a person runs it (its own event loop, in a thread)."""
    return await asyncio.to_thread(main, list(argv))


def table(text: str) -> dict[str, str]:
    """The rows of the client's final table (the app's own log lines, interleaved, skipped)."""
    return dict(re.findall(r"^([a-z][a-z ]*[a-z]) {2,}(.*)$", text, re.MULTILINE))


def job_ids(text: str) -> list[str]:
    """The lines that are a job id (the app's own log lines, interleaved, skipped)."""
    return re.findall(r"^[0-9a-f-]{36}$", text, re.MULTILINE)


@pytest.mark.usefixtures("workers")
async def test_import_wait_follows_events_prints_counts_and_fetches_the_report(
    api: Api,
    serve: Serve,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    db: asyncpg.Connection,
) -> None:
    _, made = await api.post("/lists", {"name": "Customers"})
    list_id = made["data"]["id"]
    service = await serve()
    (tmp_path / "contacts.csv").write_bytes(CSV)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LISTMILL_URL", service.url)
    monkeypatch.setenv("LISTMILL_KEY", api.key)

    status = await cli(
        "import", "contacts.csv", "--list", str(list_id), "--mode", "upsert", "--wait"
    )

    out, err = capsys.readouterr()
    assert status == 0, err
    rows = table(out)
    assert rows["status"] == "succeeded" and rows["rows"] == "3 of 3"
    assert (rows["created"], rows["invalid"], rows["error rows"]) == ("2", "1", "1")
    report = Path(f"job-{rows['job']}-errors.csv")
    assert rows["report"] == str(report)
    header, *errors = csv.reader(io.StringIO((tmp_path / report).read_bytes().decode()))
    assert header == ["row_number", "email", "code", "message"]
    assert [error[:3] for error in errors] == [["3", "not-an-email", "invalid_email"]]
    assert errors[0][3].startswith("invalid email:")
    assert "upload [########################] 100.0%" in err
    assert "succeeded [########################] 100.0%  3 of 3 rows" in err
    # followed through the event stream: no polling
    assert service.paths(f"/jobs/{rows['job']}/events") == [None]
    assert service.paths(f"/jobs/{rows['job']}") == []
    members = await db.fetchval("SELECT count(*) FROM list_memberships WHERE list_id = $1", list_id)
    assert members == 2


async def test_import_without_wait_prints_the_job_id_and_replays_by_idempotency_key(
    api: Api, serve: Serve, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service = await serve()
    path = tmp_path / "contacts.csv"
    path.write_bytes(CSV)
    flags = ["--url", service.url, "--key", api.key, "--idempotency-key", "nightly-1"]
    assert await cli("import", str(path), "--dry-run", *flags) == 0
    [first] = job_ids(capsys.readouterr().out)
    assert await cli("import", str(path), "--dry-run", *flags) == 0
    assert job_ids(capsys.readouterr().out) == [first]
    status, body = await api.get(f"/jobs/{first}")
    assert status == 200 and body["data"]["params"]["dry_run"] is True


@pytest.mark.usefixtures("workers")
async def test_import_charset_declares_the_files_charset(
    api: Api, serve: Serve, tmp_path: Path, db: asyncpg.Connection
) -> None:
    service = await serve()
    path = tmp_path / "excel.csv"
    path.write_bytes("email;first_name\r\nzoe@example.com;Zoë\r\n".encode("cp1252"))
    flags = ["--url", service.url, "--key", api.key, "--wait"]
    assert await cli("import", str(path), "--charset", "windows-1252", *flags) == 0
    assert await db.fetchval("SELECT first_name FROM contacts") == "Zoë"


async def upload_peak(integrator: client.Client, path: Path) -> tuple[list[int], int]:
    """The bytes-sent reports of an upload, and the peak of memory traced meanwhile."""
    progress: list[int] = []
    tracemalloc.start()
    try:
        await integrator.upload(
            path, client.ImportRequest(), on_sent=lambda sent, _: progress.append(sent)
        )
        return progress, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


async def test_a_file_is_streamed_in_chunks_and_memory_stays_flat(
    api: Api, serve: Serve, tmp_path: Path, settings: Settings
) -> None:
    service = await serve()
    peaks = []
    for rows in (500_000, 2_500_000):  # both past the size where the buffers are all in use
        path = tmp_path / f"{rows}.csv"
        path.write_bytes(b"email\n" + b"".join(b"u%d@example.com\n" % i for i in range(rows)))
        size = path.stat().st_size
        async with client.Client(service.url, api.key) as integrator:
            progress, peak = await upload_peak(integrator, path)
        assert progress[-1] == size and len(progress) == -(-size // client.UPLOAD_CHUNK_BYTES)
        peaks.append(peak)
    # five times the file (38 MB more), about the same peak (client and server, in this one
    # process): what is in flight at the peak varies by a chunk or two with the machine's load
    # (7.4 and 9.5 MB in one run of the whole suite), never by the file's size
    assert peaks[1] < peaks[0] + 4 * settings.upload_chunk_bytes, peaks


@pytest.mark.usefixtures("workers")
async def test_a_failed_job_exits_1_with_its_error(
    api: Api, serve: Serve, db: asyncpg.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    await db.execute(FAIL_ONCE.format(times=1000, code="23514"))  # a check violation
    _, body = await api.post("/contacts/bulk-upsert", {"contacts": [{"email": "a@example.com"}]})
    service = await serve()
    flags = ["--url", service.url, "--key", api.key]

    assert await cli("jobs", "wait", body["data"]["id"], *flags) == 1
    rows = table(capsys.readouterr().out)
    assert rows["status"] == "failed"
    assert rows["error"] == "CheckViolationError: injected fault"

    assert await cli("jobs", "show", body["data"]["id"], *flags) == 1
    assert table(capsys.readouterr().out)["status"] == "failed"


async def test_refusals_exit_2_with_the_services_message(
    api: Api, serve: Serve, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service = await serve()
    path = tmp_path / "contacts.csv"
    path.write_bytes(CSV)
    assert await cli("import", str(path), "--url", service.url, "--key", "sk_wrong") == 2
    err = capsys.readouterr().err
    assert "this API key is not valid or has been revoked (HTTP 401, unauthorized)" in err
    assert (
        await cli("import", str(path), "--url", service.url, "--key", api.key, "--mode", "mirror")
        == 2
    )
    err = capsys.readouterr().err
    assert "mode=mirror needs a list_id" in err and "HTTP 422" in err
    assert await cli("jobs", "show", "not-a-job", "--url", service.url, "--key", api.key) == 2
    assert "job not found (HTTP 404, not_found)" in capsys.readouterr().err
    assert (
        await cli("import", str(tmp_path / "missing.csv"), "--url", service.url, "--key", api.key)
        == 2
    )
    assert "No such file" in capsys.readouterr().err
    assert await cli("jobs", "show", "x", "--url", "http://127.0.0.1:9", "--key", api.key) == 2
    assert "cannot reach http://127.0.0.1:9" in capsys.readouterr().err


@web.middleware
async def no_events_endpoint(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A service from before /events existed."""
    if request.path.endswith("/events"):
        raise web.HTTPNotFound()
    return await handler(request)


@pytest.mark.usefixtures("workers")
async def test_polls_when_the_service_has_no_events_endpoint(api: Api, serve: Serve) -> None:
    contacts = [{"email": f"p{i}@example.com"} for i in range(500)]
    _, body = await api.post("/contacts/bulk-upsert", {"contacts": contacts})
    job_id = body["data"]["id"]
    service = await serve(no_events_endpoint)
    seen: list[Job] = []
    async with client.Client(service.url, api.key) as integrator:
        job = await integrator.follow(job_id, seen.append)
    assert job.status is JobStatus.SUCCEEDED and job.counts == {"created": 500}
    assert seen[-1] == job
    assert service.paths(f"/jobs/{job_id}/events") == [None]
    assert len(service.paths(f"/jobs/{job_id}")) == len(seen) >= 1


async def test_a_breaking_stream_is_resumed_by_last_event_id_then_polled(
    api: Api, serve: Serve, monkeypatch: pytest.MonkeyPatch, run_jobs: Callable[[], Awaitable[None]]
) -> None:
    monkeypatch.setattr(client, "RECONNECT_DELAY_SECONDS", 0.01)
    _, body = await api.post("/contacts/bulk-upsert", {"contacts": [{"email": "s@example.com"}]})
    job_id = body["data"]["id"]
    await run_jobs()
    running = {**await wait_for_job(api, job_id), "status": "running"}

    @web.middleware
    async def breaking_stream(request: web.Request, handler: Handler) -> web.StreamResponse:
        """One progress event, then the connection drops (as through a flaky proxy)."""
        if not request.path.endswith("/events"):
            return await handler(request)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if request.headers.get("Last-Event-ID") != "0-running":
            await response.write(
                f"id: 0-running\nevent: progress\ndata: {json.dumps(running)}\n\n".encode()
            )
        await response.write_eof()
        return response

    service = await serve(breaking_stream)
    seen: list[Job] = []
    async with client.Client(service.url, api.key) as integrator:
        job = await integrator.follow(job_id, seen.append)
    assert [j.status for j in seen] == [JobStatus.RUNNING, JobStatus.SUCCEEDED]
    assert job.status is JobStatus.SUCCEEDED
    reconnects = [None] + ["0-running"] * (client.EVENT_RECONNECTS + 1)
    assert service.paths(f"/jobs/{job_id}/events") == reconnects
    assert len(service.paths(f"/jobs/{job_id}")) == 1


async def test_refused_mid_upload_exits_2_with_the_services_message(
    api: Api, serve: Serve, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service = await serve(max_upload_bytes=100_000, upload_chunk_bytes=4096)
    path = tmp_path / "big.csv"
    path.write_bytes(b"email\n" + b"".join(b"user%d@example.com\n" % i for i in range(200_000)))
    for key, message in [
        (api.key, "the file is larger than 100000 bytes (HTTP 413, payload_too_large)"),
        ("sk_wrong", "this API key is not valid or has been revoked (HTTP 401, unauthorized)"),
    ]:
        assert await cli("import", str(path), "--url", service.url, "--key", key) == 2
        assert message in capsys.readouterr().err


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_redrawn_in_place_on_a_terminal_and_throttled_elsewhere() -> None:
    terminal, log = Terminal(), io.StringIO()
    for stream in (terminal, log):
        with client.ProgressLine(stream) as line:
            line.show("rows 1 of 9")
            line.show("rows 2 of 9")  # too soon: skipped
            line.show("end", force=True)
    assert terminal.getvalue() == "\rrows 1 of 9\rend        \n"
    assert log.getvalue() == "rows 1 of 9\nend\n"
