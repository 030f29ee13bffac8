"""listmill.devservices with real processes: embedded servers, and URLs that do not answer."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
import redis

from listmill.devservices import Services, ServiceUnavailable, ensure_services


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def answers(url: str) -> bool:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=1):
            return True
    except OSError:
        return False


async def select_one(url: str) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval("SELECT 1")
    finally:
        await conn.close()


def start(data_dir: Path) -> tuple[Services, float]:
    began = time.monotonic()
    services = ensure_services(None, None, embedded=True, data_dir=data_dir)
    return services, time.monotonic() - began


def test_embedded_servers_start_answer_stop_and_keep_their_data(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    services, _ = start(data_dir)
    try:
        assert services.started == ["postgres", "redis"]
        assert services.database_url.startswith("postgresql://postgres@127.0.0.1:")
        assert services.database_url.endswith("/listmill")
        assert services.redis_url.startswith("redis://127.0.0.1:")
        assert asyncio.run(select_one(services.database_url)) == 1
        with redis.Redis.from_url(services.redis_url) as client:
            assert client.ping() is True
            client.set("devservices-test", "kept")
    finally:
        services.stop()
    assert not answers(services.database_url)
    assert not answers(services.redis_url)
    services.stop()  # idempotent
    assert (data_dir / "postgres" / "PG_VERSION").exists()
    initialized = (data_dir / "postgres" / "PG_VERSION").stat().st_mtime_ns

    again, seconds = start(data_dir)
    try:
        assert again.started == ["postgres", "redis"]
        assert seconds < 10
        assert (data_dir / "postgres" / "PG_VERSION").stat().st_mtime_ns == initialized
        assert asyncio.run(select_one(again.database_url)) == 1
        with redis.Redis.from_url(again.redis_url) as client:
            assert client.get("devservices-test") == b"kept"
    finally:
        again.stop()
    assert not answers(again.database_url)


def test_a_running_embedded_server_is_reused_and_left_to_its_owner(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    owner, _ = start(data_dir)
    try:
        guest, _ = start(data_dir)
        assert guest.started == []
        assert (guest.database_url, guest.redis_url) == (owner.database_url, owner.redis_url)
        guest.stop()
        assert answers(owner.database_url)
        assert answers(owner.redis_url)
    finally:
        owner.stop()


def test_a_database_url_that_does_not_answer_is_an_error(tmp_path: Path) -> None:
    url = f"postgresql://listmill:secret@127.0.0.1:{closed_port()}/listmill"
    with pytest.raises(ServiceUnavailable) as caught:
        ensure_services(url, None, embedded=True, data_dir=tmp_path / "unused")
    message = str(caught.value)
    assert message.startswith("DATABASE_URL postgresql://listmill:***@127.0.0.1:")
    assert "does not answer" in message
    assert "unset it" in message
    assert "secret" not in message
    assert not (tmp_path / "unused").exists()  # nothing was started in its place


def test_a_redis_url_that_does_not_answer_is_an_error(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0"
    with pytest.raises(ServiceUnavailable) as caught:
        ensure_services(None, url, embedded=True, data_dir=tmp_path / "unused")
    message = str(caught.value)
    assert message.startswith(f"REDIS_URL {url} does not answer")
    assert "unset it" in message
    assert not (tmp_path / "unused").exists()


def test_postgres_alone_is_found_without_looking_for_redis(
    services: Services, tmp_path: Path
) -> None:
    """`listmill migrate` and `keys` need no Redis: a REDIS_URL that does not answer is left be."""
    database_url = services.database_url
    redis_url = f"redis://127.0.0.1:{closed_port()}/0"
    found = ensure_services(
        database_url, redis_url, embedded=False, data_dir=tmp_path / "unused", need_redis=False
    )
    assert found.database_url == database_url and found.started == []
    found.stop()
