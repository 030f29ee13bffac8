"""The OpenAPI document: valid 3.1, covering every route, and true — schemathesis drives a
real `listmill web` process with a real key and data, and no answer may be a 5xx or differ
from the document."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from api.openapi import OPERATIONS, build_document
from listmill.settings import Settings
from tests.conftest import Api, RunJobs

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES_PER_OPERATION = int(os.environ.get("LISTMILL_FUZZ_EXAMPLES", "12"))


def test_document_is_valid_openapi_31() -> None:
    document = build_document()
    validate(document)
    assert document["openapi"] == "3.1.0"


def test_every_route_is_documented(settings: Settings) -> None:
    app = create_app(settings)
    documented = {(op.method.upper(), op.handler) for op in OPERATIONS}
    missing = [
        f"{route.method} {route.resource.canonical if route.resource else '?'}"
        for route in app.router.routes()
        if route.method != "HEAD" and (route.method, route.handler) not in documented
    ]
    assert missing == []


async def test_a_request_line_too_long_is_a_documented_400(api: Api) -> None:
    """aiohttp refuses it before any handler, in plain text: the document says so."""
    response = await api.client.get("/api/v1/jobs?" + "status=queued&" * 1000)
    assert response.status == 400
    assert response.content_type == "text/plain"
    answers = build_document()["paths"]["/api/v1/jobs"]["get"]["responses"]
    assert "text/plain" in answers["400"]["content"]


async def test_document_is_served(api: Api) -> None:
    response = await api.client.get("/api/v1/openapi.json")
    assert response.status == 200
    assert (await response.json())["paths"].keys() == build_document()["paths"].keys()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def live_web(settings: Settings) -> AsyncIterator[str]:
    """A real `listmill web` process on the test's database and Redis key space."""
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "QUEUE_PREFIX": settings.queue_prefix,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "LOG_LEVEL": "WARNING",
        "MEMBERSHIP_RATE_LIMIT": "100000",
    }
    process = subprocess.Popen([sys.executable, "-m", "listmill.cli", "web"], env=env)  # noqa: ASYNC220
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base}/healthz", timeout=1).status_code == 200:  # noqa: ASYNC210
                break
        except requests.ConnectionError:
            time.sleep(0.1)  # noqa: ASYNC251
    yield base
    process.terminate()
    process.wait(timeout=20)


async def _seed(api: Api, run_jobs: RunJobs) -> None:
    """Real data for the generated requests to find: ids 1 exist in every table."""
    _, contact = await api.post("/contacts", {"email": "seed@example.com", "first_name": "S"})
    _, made = await api.post("/lists", {"name": "Seed"})
    trigger = {"type": "list_added", "list_id": made["data"]["id"]}
    await api.post("/sequences", {"name": "Seed", "trigger_config": trigger})
    await api.post(f"/lists/{made['data']['id']}/members", {"contact_ids": [contact["data"]["id"]]})
    await api.post("/contacts/bulk-unsubscribe", {"emails": ["nobody@example.com"]})
    await run_jobs()


def error_envelope(ctx: Any, response: Any, case: Any) -> None:
    """Every JSON error answer is the envelope, whatever the request was."""
    if response.status_code < 400 or "json" not in response.headers.get("Content-Type", [""])[0]:
        return
    error = response.json()["error"]
    assert isinstance(error["code"], str) and isinstance(error["message"], str), error
    assert isinstance(error["details"], list), error


NEGATIVE_CHECKS = [not_a_server_error, status_code_conformance, error_envelope]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
async def test_schemathesis_finds_no_5xx_and_no_departure_from_the_document(
    api: Api, run_jobs: RunJobs, live_web: str, mode: GenerationMode
) -> None:
    """Valid requests must get documented answers; invalid ones (negative mode) a documented
    4xx with the envelope, never a 5xx."""
    await _seed(api, run_jobs)
    schema = schemathesis.openapi.from_dict(build_document())
    headers = {"Authorization": f"Bearer {api.key}"}
    failures: list[str] = []
    calls: dict[str, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/api/v1/jobs/{id}/events":
            continue  # a stream: checked by tests/integration/test_events.py
        name = f"{operation.method.upper()} {operation.path}"
        failures += _exercise(operation, live_web, headers, calls, name, mode)
    assert failures == []
    if mode is GenerationMode.POSITIVE:
        assert len(calls) == len(OPERATIONS) - 1, "every operation but the stream was exercised"
    else:  # operations without parameters or body have no invalid form
        assert len(calls) >= len(OPERATIONS) // 2, calls


def _exercise(
    operation: Any,
    base: str,
    headers: dict[str, str],
    calls: dict[str, int],
    name: str,
    mode: GenerationMode,
) -> list[str]:
    found: list[str] = []
    checks = CHECKS if mode is GenerationMode.POSITIVE else NEGATIVE_CHECKS

    @hypothesis_settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        calls[name] = calls.get(name, 0) + 1
        try:
            case.call_and_validate(base_url=base, headers=headers, checks=checks, timeout=10)
        except Exception as exc:  # collect every failing operation, not just the first
            found.append(f"{name}: {exc}"[:2000])
            raise

    with contextlib.suppress(Exception):
        check()
    return found
