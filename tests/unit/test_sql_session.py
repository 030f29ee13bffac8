"""Pooled connections are given back without asyncpg's reset query (listmill.db._keep_session),
so no code may leave session state on one: a setting, a LISTEN, an advisory lock, a
temporary table or a cursor that outlives its transaction. Such state is allowed only on the
connections of their own that the files in OWN_CONNECTIONS open."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(p for d in ("api", "listmill", "worker") for p in (ROOT / d).rglob("*.py"))
OWN_CONNECTIONS = {
    "listmill/db.py": "apply_schema's advisory lock, on a connection it closes",
    "api/events.py": "the LISTEN of the web's job events, on a connection of its own",
}
# SQL here is written in capitals; lower-case settings are looked for too (English text in
# docstrings starts "Set …" and "listen …", which these do not match)
SESSION_SETTING = (
    r"[\"';]\s*(SET\s+(?!LOCAL\b|TRANSACTION\b|CONSTRAINTS\b)|set\s+(?!local\b)\w+\s*(=|to\b))"
)
SESSION_STATE = {
    "a session setting (use SET LOCAL)": re.compile(SESSION_SETTING),
    "set_config (session-wide if not local)": re.compile(r"\bset_config\s*\("),
    "LISTEN": re.compile(r"\bLISTEN\s+[\"\w]|add_listener\("),
    "a session advisory lock (use pg_advisory_xact_lock)": re.compile(r"pg_(try_)?advisory_lock"),
    "a cursor WITH HOLD": re.compile(r"\bWITH\s+HOLD\b", re.I),
    "a prepared statement (PREPARE)": re.compile(r"\bPREPARE\s+\w+\s*(\(|AS\b)"),
    "SELECT … INTO a temporary table": re.compile(r"\bINTO\s+(TEMP|TEMPORARY)\b", re.I),
}
TEMPORARY_TABLE = re.compile(
    r"CREATE\s+(LOCAL\s+|GLOBAL\s+)?TEMP(ORARY)?\s+TABLE\b(?P<rest>[^;]*?)(\"\"\"|;)", re.S | re.I
)


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("path", SOURCES, ids=_relative)
def test_no_session_state_on_pooled_connections(path: Path) -> None:
    if _relative(path) in OWN_CONNECTIONS:
        return
    text = path.read_text()
    found = [what for what, pattern in SESSION_STATE.items() if pattern.search(text)]
    assert not found, f"{_relative(path)}: {found}"
    for table in TEMPORARY_TABLE.finditer(text):
        assert "ON COMMIT DROP" in table["rest"], f"{_relative(path)}: {table[0][:80]}"


def test_the_patterns_find_what_they_look_for() -> None:
    """Each pattern catches the statement it is there for, and lets the safe one pass."""
    caught = {
        'conn.execute("SET statement_timeout = 0")': "a session setting (use SET LOCAL)",
        "SELECT set_config('x.y', '1', false)": "set_config (session-wide if not local)",
        "await conn.add_listener(CHANNEL, heard)": "LISTEN",
        "SELECT pg_advisory_lock(1)": "a session advisory lock (use pg_advisory_xact_lock)",
        "DECLARE c CURSOR WITH HOLD FOR SELECT 1": "a cursor WITH HOLD",
        "conn.execute('set statement_timeout = 0')": "a session setting (use SET LOCAL)",
        'LISTEN "jobs"': "LISTEN",
        "PREPARE by_id (bigint) AS SELECT 1": "a prepared statement (PREPARE)",
        "SELECT 1 INTO TEMP t": "SELECT … INTO a temporary table",
    }
    for text, what in caught.items():
        assert SESSION_STATE[what].search(text), text
    safe = [
        'conn.execute("SET LOCAL jit = off")',
        '"""\n    UPDATE jobs SET status = $2 WHERE id = $1"""',
        "SELECT pg_advisory_xact_lock(1)",
        '"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"',
        '"SET CONSTRAINTS ALL DEFERRED"',
        '"""Set one membership unsubscribed."""',
        "They listen on 127.0.0.1",
    ]
    for text in safe:
        assert not any(pattern.search(text) for pattern in SESSION_STATE.values()), text
    kept = TEMPORARY_TABLE.search('"""create local temp table t (a int)"""')
    dropped = TEMPORARY_TABLE.search('"""CREATE TEMP TABLE t (a int) ON COMMIT DROP"""')
    assert kept is not None and "ON COMMIT DROP" not in kept["rest"]
    assert dropped is not None and "ON COMMIT DROP" in dropped["rest"]
