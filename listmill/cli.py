"""The `listmill` command: the composition root that wires settings to the web and worker."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import structlog

from listmill import client
from listmill.db import Connection, apply_schema, create_database
from listmill.logs import configure_logging
from listmill.settings import Settings

log = structlog.get_logger(__name__)
DEMO_PROJECT = "demo"


def _refresh_seconds(text: str) -> float:
    """--watch: a refresh interval of at least half a second (0 would spin a core)."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not seconds >= 0.5:
        raise argparse.ArgumentTypeError("refresh at most twice a second (--watch 0.5 or more)")
    return seconds


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="listmill", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    migrate = sub.add_parser("migrate", help="create the database if missing and apply schema.sql")
    migrate.add_argument(
        "--force",
        action="store_true",
        help="apply schema.sql even if that text was the last applied (to repair a hand edit)",
    )
    sub.add_parser("web", help="run the HTTP API")
    sub.add_parser("worker", help="run a job worker (all lanes unless WORKER_LANES is set)")
    sub.add_parser("run", help="find or start Postgres and Redis, then run web + a worker per lane")
    queues = sub.add_parser("queues", help="the queue report as a table (from Postgres and Redis)")
    queues.add_argument(
        "--watch", type=_refresh_seconds, metavar="SECONDS", help="refresh until Ctrl-C"
    )
    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="keys", required=True)
    create = keys.add_parser("create", help="create a key and print it (only the key)")
    create.add_argument("--project", required=True, help="project name (created if missing)")
    create.add_argument("--scopes", help="comma-separated scopes: makes a restricted rk_ key")
    revoke = keys.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key", help="the key, or its visible prefix (first 11 characters)")
    _add_client_commands(sub)
    return parser


def _add_client_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`import`, `jobs show`, `jobs wait`: the integrator's client of a running service."""
    service = argparse.ArgumentParser(add_help=False)
    service.add_argument("--url", help=f"the service (default: LISTMILL_URL, {client.DEFAULT_URL})")
    service.add_argument("--key", help="API key (default: LISTMILL_KEY)")
    report = argparse.ArgumentParser(add_help=False)
    report.add_argument(
        "--errors-to", type=Path, metavar="PATH", help="where the error report goes"
    )
    upload = sub.add_parser(
        "import", parents=[service, report], help="upload a CSV of contacts as an import job"
    )
    upload.add_argument("file", type=Path, help="the CSV file")
    upload.add_argument("--list", dest="list_id", type=int, metavar="ID", help="target list")
    upload.add_argument("--mode", choices=client.IMPORT_MODES)
    upload.add_argument("--status", help="status of new list members (pending, subscribed, ...)")
    upload.add_argument("--source", help="source recorded on new list members")
    upload.add_argument(
        "--charset", help="the file's charset if it is not UTF-8 (Excel on Windows: windows-1252)"
    )
    upload.add_argument("--dry-run", action="store_true", default=None)
    upload.add_argument("--resubscribe", action="store_true", default=None)
    upload.add_argument("--trigger-sequences", action=argparse.BooleanOptionalAction)
    upload.add_argument("--idempotency-key", metavar="KEY")
    upload.add_argument("--wait", action="store_true", help="follow the job to its end")
    jobs = sub.add_parser("jobs", help="show or follow a job").add_subparsers(
        dest="jobs", required=True
    )
    show = jobs.add_parser("show", parents=[service], help="the job now (exit 1: failed)")
    show.add_argument("job_id", metavar="ID")
    wait = jobs.add_parser("wait", parents=[service, report], help="follow the job to its end")
    wait.add_argument("job_id", metavar="ID")


async def _with_connection(settings: Settings) -> Connection:
    import asyncpg

    return await asyncpg.connect(settings.database_url)


async def _create_key(settings: Settings, project: str, scopes: list[str] | None) -> str:
    from listmill.queries.keys import ensure_project
    from listmill.services.keys import create_key

    conn = await _with_connection(settings)
    try:
        async with conn.transaction():
            project_id, _ = await ensure_project(conn, project)
            return await create_key(conn, project_id, scopes)
    finally:
        await conn.close()


async def _revoke_key(settings: Settings, key: str) -> bool:
    from listmill.queries.keys import revoke_key

    conn = await _with_connection(settings)
    try:
        return await revoke_key(conn, key[:11])
    finally:
        await conn.close()


async def _demo_key(settings: Settings) -> str | None:
    """A secret key for the demo project, made only when the project is new."""
    from listmill.queries.keys import ensure_project
    from listmill.services.keys import create_key

    conn = await _with_connection(settings)
    try:
        async with conn.transaction():
            project_id, created = await ensure_project(conn, DEMO_PROJECT)
            return await create_key(conn, project_id, None) if created else None
    finally:
        await conn.close()


@contextmanager
def _found_services(settings: Settings, *, need_redis: bool = True) -> Iterator[Settings]:
    """``settings`` pointed at the Postgres (and Redis, if needed) that `make run` uses: the
    explicit URLs, else the standard local ports, else the embedded servers under .listmill/
    (reused when running, else started and, on leaving, stopped). Raises ServiceUnavailable."""
    from listmill.devservices import ensure_services

    explicit = settings.model_fields_set
    services = ensure_services(
        settings.database_url if "database_url" in explicit else None,
        settings.redis_url if "redis_url" in explicit else None,
        embedded=settings.listmill_embedded,
        data_dir=settings.listmill_data_dir.resolve(),
        need_redis=need_redis,
    )
    found = {"database_url": services.database_url}
    if need_redis:
        found["redis_url"] = services.redis_url
    try:
        yield settings.model_copy(update=found)
    finally:
        services.stop()


def _run_all(settings: Settings) -> int:
    """Find or start Postgres and Redis, migrate, then run web + a worker per lane until Ctrl-C."""
    with _found_services(settings) as found:
        asyncio.run(create_database(found.database_url))
        asyncio.run(apply_schema(found.database_url))
        key = asyncio.run(_demo_key(found))
        _announce(found, key)
        return _supervise(found)


def _announce(settings: Settings, key: str | None) -> None:
    print(f"listmill: Postgres {settings.database_url}", file=sys.stderr)
    print(f"listmill: Redis    {settings.redis_url}", file=sys.stderr)
    if key:
        print(f"listmill: demo project created; its secret API key (shown once):\n\n  {key}\n")
    print(
        f"listmill: API on http://localhost:{settings.port}/api/v1 (Ctrl-C stops)", file=sys.stderr
    )
    sys.stdout.flush()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run_processes(settings: Settings) -> list[tuple[str, dict[str, str]]]:
    """What `listmill run` starts: the web, and one worker per lane (an import then never
    holds up a small job's event loop); the large lane's worker serves its metrics on the
    port after WORKER_METRICS_PORT."""
    metrics = settings.worker_metrics_port
    return [
        ("web", {}),
        ("worker", {"WORKER_LANES": "small"}),
        ("worker", {"WORKER_LANES": "large", "WORKER_METRICS_PORT": str(metrics and metrics + 1)}),
    ]


def _supervise(settings: Settings) -> int:
    """Run the processes of `listmill run` as children; stop them all on Ctrl-C or when one
    exits."""
    env = {**os.environ, "DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url}
    children = [
        subprocess.Popen([sys.executable, "-m", "listmill.cli", role], env={**env, **extra})
        for role, extra in _run_processes(settings)
    ]
    # Both set explicitly: a shell that starts `make run &` hands SIGINT over as ignored.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    status = 0
    try:
        while all(child.poll() is None for child in children):
            try:
                children[0].wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                continue
        status = 1
    except KeyboardInterrupt:
        pass
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
        for child in children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
    return status


def _run_web(settings: Settings) -> int:
    from aiohttp import web

    from api.app import create_app

    web.run_app(create_app(settings), host=settings.host, port=settings.port, access_log=None)
    return 0


def _run_worker(settings: Settings) -> int:
    from worker.settings import run_worker

    run_worker(settings)
    return 0


def _run_client(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """The integrator's commands: exit 0 succeeded, 1 failed or cancelled, 2 refused."""
    url = args.url or environ.get("LISTMILL_URL") or client.DEFAULT_URL
    key = args.key or environ.get("LISTMILL_KEY")
    if not key:
        print("listmill: no API key: set LISTMILL_KEY or pass --key", file=sys.stderr)
        return client.EXIT_ERROR
    out, err = sys.stdout, sys.stderr
    if args.command == "import":
        request = client.ImportRequest(
            list_id=args.list_id, mode=args.mode, dry_run=args.dry_run,
            resubscribe=args.resubscribe, trigger_sequences=args.trigger_sequences,
            source=args.source, status=args.status, charset=args.charset,
        )  # fmt: skip
        command = client.import_command(
            url, key, args.file, request, idempotency_key=args.idempotency_key,
            wait=args.wait, errors_to=args.errors_to, out=out, err=err,
        )  # fmt: skip
    elif args.jobs == "show":
        command = client.show_command(url, key, args.job_id, out=out, err=err)
    else:
        errors_to = args.errors_to
        command = client.wait_command(url, key, args.job_id, errors_to=errors_to, out=out, err=err)
    try:
        return asyncio.run(command)
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("import", "jobs"):
        return _run_client(args, os.environ)
    settings = Settings()
    configure_logging(settings)
    if args.command in ("migrate", "keys", "queues", "run"):
        from asyncpg import UndefinedTableError

        from listmill.devservices import ServiceUnavailable

        try:
            return _admin(args, settings)
        except ServiceUnavailable as exc:
            print(f"listmill: {exc}", file=sys.stderr)
            return 2
        except UndefinedTableError:
            print(
                "listmill: the database has no listmill tables: run `listmill migrate`",
                file=sys.stderr,
            )
            return 2
    runners = {"web": _run_web, "worker": _run_worker}
    return runners[args.command](settings)


def _admin(args: argparse.Namespace, settings: Settings) -> int:
    """The commands an operator runs against the service's Postgres (and Redis): the URLs as
    configured. Only with LISTMILL_EMBEDDED=1 do they use the embedded servers under
    .listmill/ that `make run` started (reused, or started for the command and stopped)."""
    if args.command == "run":
        return _run_all(settings)
    if not settings.listmill_embedded:
        return _admin_on(args, settings)
    with _found_services(settings, need_redis=args.command == "queues") as found:
        return _admin_on(args, found)


def _admin_on(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "migrate":
        asyncio.run(create_database(settings.database_url))
        applied = asyncio.run(apply_schema(settings.database_url, force=args.force))
        log.info("schema_applied" if applied else "schema_current")
        return 0
    if args.command == "queues":
        from listmill.queues_table import show_queues

        try:
            return asyncio.run(show_queues(settings, args.watch))
        except KeyboardInterrupt:
            return 0
    return _keys(args, settings)


def _keys(args: argparse.Namespace, settings: Settings) -> int:
    if args.keys == "revoke":
        revoked = asyncio.run(_revoke_key(settings, args.key))
        print("revoked" if revoked else "no active key with that prefix", file=sys.stderr)
        return 0 if revoked else 1
    scopes = None
    if args.scopes is not None:
        scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
        if not scopes:
            print("listmill: --scopes names no scope; omit it for a secret key", file=sys.stderr)
            return 2
    try:
        print(asyncio.run(_create_key(settings, args.project, scopes)))
    except ValueError as exc:
        print(f"listmill: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
