"""The asyncpg pool and the applying of schema.sql."""

from __future__ import annotations

import hashlib
import json
import re
from importlib import resources
from typing import Any, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from listmill.settings import Settings

Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"
Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"


JSONB_VERSION = b"\x01"
_LONG_NUMBER = re.compile(rb"[0-9]{19}")


def _encode_jsonb(value: Any) -> bytes:
    return JSONB_VERSION + dumps(value)


def dumps(value: Any) -> bytes:
    """JSON text: orjson (five times faster than json, which an import's million custom-data
    values feel), or json where orjson refuses (an integer past 64 bits, say)."""
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(value).encode()


def _decode_jsonb(data: bytes) -> Any:
    return _loads(data[1:])


def _loads(text: bytes) -> Any:
    """A JSON value: orjson, or json where orjson would round (it reads an integer past 64
    bits as a float), which is anywhere 19 digits stand in a row."""
    if _LONG_NUMBER.search(text):
        return json.loads(text)
    return orjson.loads(text)


def _encode_json(value: Any) -> bytes:
    return dumps(value)


async def _init_connection(conn: Connection) -> None:
    """json and jsonb as Python values, in the binary format so COPY can carry them too."""
    await conn.set_type_codec(
        "jsonb", encoder=_encode_jsonb, decoder=_decode_jsonb, schema="pg_catalog", format="binary"
    )
    await conn.set_type_codec(
        "json", encoder=_encode_json, decoder=_loads, schema="pg_catalog", format="binary"
    )


async def fetch_planned(conn: Connection, query: str, *args: Any) -> list[asyncpg.Record]:
    """``conn.fetch``, planned for these values: for the set-based statements that join an
    array of ids or emails with a table that grows. A statement from asyncpg's cache gets a
    generic plan after five runs and keeps it until the next ANALYZE; one made while a project
    held 1,000 contacts ("scan the project, match each row against the ids") ran for a minute
    per 1,000-id batch once the project held two million. A statement prepared for this call
    alone (outside the cache; asyncpg closes it later) is run once, so it gets a custom plan:
    one more round trip and a fraction of a millisecond of planning."""
    statement = await conn.prepare(query)
    return await statement.fetch(*args)


async def execute_planned(conn: Connection, query: str, *args: Any) -> str:
    """``conn.execute`` planned for these values (see fetch_planned); the status line."""
    statement = await conn.prepare(query)
    await statement.fetch(*args)
    status = statement.get_statusmsg()
    if status is None:
        raise RuntimeError(f"no status line after: {query[:80]}")
    return status


async def _keep_session(conn: Connection) -> None:
    """What the pool does to a connection given back, beyond asyncpg's rolling back of a
    transaction left open: nothing. asyncpg's default is a query (advisory unlocks, CLOSE ALL,
    UNLISTEN, RESET ALL): one more round trip for every use of a connection, and a bulk job
    makes three, each waiting for a core while an import keeps both busy. listmill leaves no
    session state on a pooled connection: settings are SET LOCAL, the import's temporary
    table is ON COMMIT DROP, advisory locks are taken on connections of their own (migrate),
    and so is LISTEN (api.events). tests/unit/test_sql_session.py holds the code to that."""


async def create_pool(settings: Settings, *, synchronous_commit: bool = True) -> Pool:
    """A pool whose connections decode json/jsonb to Python values and run every transaction
    READ COMMITTED, whatever the database's ``default_transaction_isolation``: the writers'
    row locks and the triggers that delete a list's, a sequence's or a job's rows (schema.sql,
    delete_children) see the rows committed before each statement, which is what they are
    written for. Under REPEATABLE READ a DELETE of a list that waited for a writer's import
    would miss that writer's memberships and leave them behind. With
    ``synchronous_commit=False`` a commit returns before its WAL is on disk (for the workers:
    see worker.settings.make_context). ``bytea_output`` is hex whatever the database's, as
    the read of the contacts' kept line hashes parses it (queries.contacts.copy_lines). They
    are startup parameters, so they hold for every use of a connection."""
    startup = {"default_transaction_isolation": "read committed", "bytea_output": "hex"}
    if not synchronous_commit:
        startup["synchronous_commit"] = "off"
    pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        statement_cache_size=settings.db_statement_cache_size,
        init=_init_connection,
        reset=_keep_session,
        server_settings=startup,
    )
    assert pool is not None
    return pool


def schema_sql() -> str:
    """The text of schema.sql, shipped inside the package."""
    return resources.files("listmill").joinpath("schema.sql").read_text()


SCHEMA_LOCK = 4242  # the advisory lock two migrates at once take in turn
LAST_APPLIED = "SELECT digest FROM schema_applied ORDER BY applied_at DESC LIMIT 1"
RECORD_APPLIED = """
    INSERT INTO schema_applied (digest) VALUES ($1)
    ON CONFLICT (digest) DO UPDATE SET applied_at = now()
"""


async def apply_schema(database_url: str, *, force: bool = False) -> bool:
    """Apply schema.sql unless this very text was the last applied (or ``force``); whether it
    ran. schema.sql is idempotent, but some of its statements lock a table whatever they find
    (ALTER TABLE, CREATE INDEX IF NOT EXISTS): a deploy's migrate with nothing new would wait
    for the running jobs' writes and hold up every other one meanwhile."""
    text = schema_sql()
    digest = hashlib.sha256(text.encode()).hexdigest()
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", SCHEMA_LOCK)
        if not force and await _last_applied(conn) == digest:
            return False
        async with conn.transaction():
            await conn.execute(text)
            await conn.execute(RECORD_APPLIED, digest)
        return True
    finally:
        await conn.close()


async def _last_applied(conn: Connection) -> str | None:
    """The digest of the schema.sql last applied; None before any (or before the table)."""
    try:
        return await conn.fetchval(LAST_APPLIED)  # type: ignore[no-any-return]
    except asyncpg.UndefinedTableError:
        return None


async def create_database(database_url: str) -> bool:
    """Create the database named in ``database_url`` if it does not exist; True if created."""
    params = urlsplit(database_url)
    name = params.path.lstrip("/") or "postgres"
    maintenance = urlunsplit(params._replace(path="/postgres"))
    conn = await asyncpg.connect(maintenance)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            return False
        quoted = '"' + name.replace('"', '""') + '"'
        try:
            await conn.execute(f"CREATE DATABASE {quoted}")
        except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
            return False  # another process created it at the same moment
        return True
    finally:
        await conn.close()
