"""The integrator's client: upload a CSV import, follow a job to its end, fetch its report."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, TextIO

import aiohttp
from aiohttp import payload
from aiohttp.abc import AbstractStreamWriter
from pydantic import ValidationError

from listmill.records import Job, JobStatus

DEFAULT_URL = "http://localhost:8080"
API = "/api/v1"
IMPORT_MODES = ("upsert", "fill_blanks", "mirror")
EXIT_SUCCEEDED, EXIT_FAILED, EXIT_ERROR = 0, 1, 2
UPLOAD_CHUNK_BYTES = 256 * 1024
DOWNLOAD_CHUNK_BYTES = 64 * 1024
POLL_SECONDS = 0.5
EVENT_RECONNECTS = 3  # breaks in a row, with no event in between, before polling instead
RECONNECT_DELAY_SECONDS = 0.5
MAX_EVENT_LINE_BYTES = 1 << 20
# the server sends a keep-alive comment every 2 s, so a silent stream is a broken one
EVENT_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=30)
# the service answers an upload only once it has stored the whole file
UPLOAD_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10)
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
# a dropped or silent connection, or what a proxy mangled (not UTF-8, a line too long, not a job)
STREAM_BROKEN = (aiohttp.ClientError, TimeoutError, ValueError)

OnJob = Callable[[Job], None]


class ApiError(Exception):
    """The service refused a request (the error envelope's code, message and details)."""

    def __init__(self, status: int, code: str, message: str, details: list[Any]) -> None:
        self.status, self.code, self.message, self.details = status, code, message, details
        super().__init__(message)

    def describe(self) -> str:
        lines = [f"{self.message} (HTTP {self.status}, {self.code})"]
        for detail in self.details:
            if isinstance(detail, dict) and "message" in detail:
                lines.append(f"  {detail.get('field') or '-'}: {detail['message']}")
            else:
                lines.append(f"  {detail}")
        return "\n".join(lines)


class _NoEventsEndpoint(Exception):
    """The service has no events endpoint (404 or 405): poll instead."""


class _StreamBroken(Exception):
    """The event stream ended or failed before its ``end`` event."""


@dataclass(frozen=True)
class ImportRequest:
    """Options of POST /contacts/import; None leaves the service's default."""

    list_id: int | None = None
    mode: str | None = None
    dry_run: bool | None = None
    resubscribe: bool | None = None
    trigger_sequences: bool | None = None
    source: str | None = None
    status: str | None = None
    charset: str | None = None  # the file's, if not UTF-8: declared on its part, not a field

    def form_fields(self) -> list[tuple[str, str]]:
        return [
            (name, str(value).lower() if isinstance(value, bool) else str(value))
            for name, value in asdict(self).items()
            if value is not None and name != "charset"
        ]


@dataclass(frozen=True)
class ServerEvent:
    event: str
    data: str
    id: str | None


@dataclass
class _Resume:
    """Where a reconnection picks the event stream up."""

    last_event_id: str | None = None
    received: bool = False  # an event arrived since the last (re)connection


class FilePayload(payload.Payload):
    """A file streamed from disk in chunks (memory stays flat), reporting the bytes sent."""

    def __init__(
        self,
        file: BinaryIO,
        size: int,
        filename: str,
        on_sent: Callable[[int], None],
        charset: str | None = None,
    ) -> None:
        content_type = f"text/csv; charset={charset}" if charset else "text/csv"
        super().__init__(file, content_type=content_type, filename=filename)
        self._size = size
        self._file, self._on_sent = file, on_sent

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a streamed file is never decoded in memory")

    async def write(self, writer: AbstractStreamWriter) -> None:
        sent, size = 0, self._size or 0
        # never more than the announced size, whatever happens to the file meanwhile
        while sent < size:
            chunk = await asyncio.to_thread(self._file.read, min(UPLOAD_CHUNK_BYTES, size - sent))
            if not chunk:
                raise OSError("the file shrank while it was being uploaded")
            await writer.write(chunk)
            sent += len(chunk)
            self._on_sent(sent)


async def read_events(content: aiohttp.StreamReader) -> AsyncIterator[ServerEvent]:
    """Server-Sent Events of a response body (event, data, id; comments skipped). The id
    carries over to later events, as the Last-Event-ID a reconnection sends."""
    name, event_id = "message", None
    data: list[str] = []
    while raw := await content.readline(max_line_length=MAX_EVENT_LINE_BYTES):
        line = raw.decode().rstrip("\r\n")
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if not line:
            if data:
                yield ServerEvent(name, "\n".join(data), event_id)
            name, data = "message", []
        elif field == "event":
            name = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            event_id = value


async def _raise_for_status(response: aiohttp.ClientResponse) -> None:
    if response.status < 400:
        return
    try:
        body = await response.json(content_type=None)
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        raise ApiError(response.status, "http_error", response.reason or "HTTP error", [])
    details = error.get("details")
    raise ApiError(
        response.status, str(error.get("code")), str(error.get("message")),
        details if isinstance(details, list) else [],
    )  # fmt: skip


class Client:
    """The listmill API as an integrator uses it, over one HTTP session. Every call raises
    ApiError when the service refuses it, aiohttp.ClientError when it cannot be reached."""

    def __init__(self, url: str, key: str) -> None:
        self.base = url.rstrip("/") + API
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {key}", "User-Agent": "listmill-client"},
            timeout=REQUEST_TIMEOUT,
        )

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._session.close()

    async def upload(
        self,
        path: Path,
        request: ImportRequest,
        *,
        idempotency_key: str | None = None,
        on_sent: Callable[[int, int], None] = lambda sent, size: None,
    ) -> Job:
        """POST /contacts/import as multipart/form-data: the options first, then the file,
        streamed. The queued job (or the earlier one, on an idempotent replay)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        with await asyncio.to_thread(path.open, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            form = aiohttp.MultipartWriter("form-data")
            for name, value in request.form_fields():
                form.append(value).set_content_disposition("form-data", name=name)
            streamed = FilePayload(
                file, size, path.name, lambda sent: on_sent(sent, size), request.charset
            )
            form.append_payload(streamed).set_content_disposition(
                "form-data", name="file", filename=path.name
            )
            url = f"{self.base}/contacts/import"
            async with self._session.post(
                url, data=form, headers=headers, timeout=UPLOAD_TIMEOUT
            ) as response:
                await _raise_for_status(response)
                return _job_of(await response.json())

    async def get_job(self, job_id: str) -> Job:
        async with self._session.get(f"{self.base}/jobs/{job_id}") as response:
            await _raise_for_status(response)
            return _job_of(await response.json())

    async def follow(self, job_id: str, on_job: OnJob) -> Job:
        """The job once it has ended, ``on_job`` called with each state seen on the way:
        from its event stream, or by polling when the service has none or it keeps breaking."""
        job = await self.follow_events(job_id, on_job)
        return job if job is not None else await self.poll(job_id, on_job)

    async def follow_events(self, job_id: str, on_job: OnJob) -> Job | None:
        """The final job from the event stream, reconnecting with Last-Event-ID after a
        break; None when there is no events endpoint or the stream broke too often."""
        resume, breaks = _Resume(), 0
        while breaks <= EVENT_RECONNECTS:
            resume.received = False
            try:
                return await self._stream_once(job_id, on_job, resume)
            except _NoEventsEndpoint:
                return None
            except (_StreamBroken, *STREAM_BROKEN):
                breaks = 0 if resume.received else breaks + 1
            await asyncio.sleep(RECONNECT_DELAY_SECONDS)
        return None

    async def _stream_once(self, job_id: str, on_job: OnJob, resume: _Resume) -> Job:
        headers = {"Accept": "text/event-stream"}
        if resume.last_event_id is not None:
            headers["Last-Event-ID"] = resume.last_event_id
        url = f"{self.base}/jobs/{job_id}/events"
        async with self._session.get(url, headers=headers, timeout=EVENT_TIMEOUT) as response:
            if response.status in (404, 405):
                raise _NoEventsEndpoint
            if response.status >= 500:
                raise _StreamBroken(f"HTTP {response.status}")
            await _raise_for_status(response)
            async for event in read_events(response.content):
                if event.event not in ("progress", "end"):
                    continue
                job = Job.model_validate_json(event.data)
                resume.last_event_id, resume.received = event.id, True
                on_job(job)
                if event.event == "end" or job.status.finished:
                    return job
        raise _StreamBroken("the stream closed before its end event")

    async def poll(self, job_id: str, on_job: OnJob, every: float = POLL_SECONDS) -> Job:
        """The job once it has ended, read every ``every`` seconds."""
        while True:
            job = await self.get_job(job_id)
            on_job(job)
            if job.status.finished:
                return job
            await asyncio.sleep(every)

    async def download_errors(self, job_id: str, destination: Path) -> Path:
        """The job's error report, as CSV, written to ``destination`` (overwritten)."""
        url = f"{self.base}/jobs/{job_id}/errors"
        async with self._session.get(url, headers={"Accept": "text/csv"}) as response:
            await _raise_for_status(response)
            with await asyncio.to_thread(destination.open, "wb") as file:
                async for chunk in response.content.iter_chunked(DOWNLOAD_CHUNK_BYTES):
                    await asyncio.to_thread(file.write, chunk)
        return destination


def _job_of(body: Any) -> Job:
    return Job.model_validate(body["data"])


# --- what a person sees -----------------------------------------------------------------


class ProgressLine:
    """One progress line on ``stream``: redrawn in place on a terminal; otherwise printed
    every ``every`` seconds, so the logs of unattended runs stay short."""

    def __init__(self, stream: TextIO, every: float = 3.0) -> None:
        self._stream, self._tty = stream, stream.isatty()
        self._every = 0.1 if self._tty else every
        self._shown_at, self._width = float("-inf"), 0

    def show(self, text: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._shown_at < self._every:
            return
        self._shown_at = now
        if self._tty:
            self._stream.write("\r" + text.ljust(self._width))
            self._width = len(text)
        else:
            self._stream.write(text + "\n")
        self._stream.flush()

    def __enter__(self) -> ProgressLine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """End a line redrawn in place, so what is printed next starts on a line of its own."""
        if self._tty and self._width:
            self._stream.write("\n")
            self._stream.flush()
            self._width = 0


def bar(fraction: float | None, width: int = 24) -> str:
    if fraction is None:
        return "[" + "?" * width + "]"
    filled = round(max(0.0, min(fraction, 1.0)) * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"


def upload_text(sent: int, size: int, elapsed: float) -> str:
    fraction = sent / size if size else 1.0
    rate = sent / elapsed if elapsed > 0 else 0.0
    return (
        f"upload {bar(fraction)} {fraction:6.1%}  {human_bytes(sent)} of {human_bytes(size)}"
        f"  {human_bytes(rate)}/s"
    )


def rows_text(job: Job) -> str:
    """Rows processed of the total, percent, rows/s and ETA, as the service computes them."""
    p = job.progress
    fraction = None if p.percent is None else p.percent / 100
    percent = "    ?%" if p.percent is None else f"{p.percent:5.1f}%"
    total = "?" if p.total is None else f"{p.total:,}"
    rate = "-" if p.rows_per_second is None else f"{p.rows_per_second:,.0f}"
    eta = "-" if p.eta_seconds is None else clock(p.eta_seconds)
    return (
        f"{job.status.value:<9} {bar(fraction)} {percent}  {p.processed:,} of {total} rows"
        f"  {rate} rows/s  ETA {eta}"
    )


def job_table(job: Job, report: Path | None = None) -> str:
    """The job's outcome as a compact two-column table."""
    kind = job.kind.value + (" (dry run)" if job.params.get("dry_run") else "")
    total = "?" if job.progress.total is None else f"{job.progress.total:,}"
    rows = [("job", str(job.id)), ("kind", kind), ("status", job.status.value)]
    rows.append(("rows", f"{job.progress.processed:,} of {total}"))
    rows += [(name, f"{count:,}") for name, count in job.counts.items()]
    if job.errors_count:
        truncated = " (truncated)" if job.errors_truncated else ""
        rows.append(("error rows", f"{job.errors_count:,}{truncated}"))
    if report is not None:
        rows.append(("report", str(report)))
    if job.error:
        rows.append(("error", job.error))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def exit_status(job: Job) -> int:
    """0 unless the job failed or was cancelled (1)."""
    return EXIT_FAILED if job.status in (JobStatus.FAILED, JobStatus.CANCELLED) else EXIT_SUCCEEDED


# --- the commands: each returns the process exit status ---------------------------------


async def _guarded(
    url: str, key: str, err: TextIO, command: Callable[[Client], Awaitable[int]]
) -> int:
    """Run ``command`` with a client; a refusal or an unreachable service is exit status 2."""
    try:
        async with Client(url, key) as client:
            return await command(client)
    except ApiError as exc:
        print(f"listmill: {exc.describe()}", file=err)
    except (aiohttp.ClientError, TimeoutError) as exc:
        print(f"listmill: cannot reach {url}: {exc!r}", file=err)
    except ValidationError as exc:
        print(f"listmill: the service answered with an unexpected job shape: {exc}", file=err)
    except OSError as exc:
        print(f"listmill: {exc}", file=err)
    return EXIT_ERROR


async def finish(
    client: Client, job_id: str, errors_to: Path | None, out: TextIO, err: TextIO
) -> int:
    """Follow the job with a progress line, then print its table and fetch its error report."""
    with ProgressLine(err) as line:
        job = await client.follow(job_id, lambda seen: line.show(rows_text(seen)))
        line.show(rows_text(job), force=True)
    report = None
    if job.errors_count > 0:
        report = await client.download_errors(job_id, errors_to or Path(f"job-{job_id}-errors.csv"))
    print(job_table(job, report), file=out)
    return exit_status(job)


def _upload_meter(line: ProgressLine) -> Callable[[int, int], None]:
    started = time.monotonic()

    def sent(done: int, size: int) -> None:
        line.show(upload_text(done, size, time.monotonic() - started), force=done == size)

    return sent


async def import_command(
    url: str,
    key: str,
    path: Path,
    request: ImportRequest,
    *,
    idempotency_key: str | None = None,
    wait: bool = False,
    errors_to: Path | None = None,
    out: TextIO,
    err: TextIO,
) -> int:
    """`listmill import`: upload, then (with ``wait``) follow the job to its end."""

    async def run(client: Client) -> int:
        with ProgressLine(err) as line:
            meter = _upload_meter(line)
            job = await client.upload(path, request, idempotency_key=idempotency_key, on_sent=meter)
        if not wait:
            print(job.id, file=out)
            follow = f"listmill jobs wait {job.id}"
            print(f"listmill: job {job.status.value}; follow it with: {follow}", file=err)
            return EXIT_SUCCEEDED
        print(f"listmill: job {job.id} {job.status.value}", file=err)
        return await finish(client, str(job.id), errors_to, out, err)

    return await _guarded(url, key, err, run)


async def show_command(url: str, key: str, job_id: str, *, out: TextIO, err: TextIO) -> int:
    """`listmill jobs show`: the job as it is now; exit status 1 if it failed or was cancelled."""

    async def run(client: Client) -> int:
        job = await client.get_job(job_id)
        print(job_table(job), file=out)
        if not job.status.finished:
            print(rows_text(job), file=out)
        return exit_status(job)

    return await _guarded(url, key, err, run)


async def wait_command(
    url: str, key: str, job_id: str, *, errors_to: Path | None = None, out: TextIO, err: TextIO
) -> int:
    """`listmill jobs wait`: follow the job to its end, like `import --wait`."""
    return await _guarded(url, key, err, lambda client: finish(client, job_id, errors_to, out, err))
