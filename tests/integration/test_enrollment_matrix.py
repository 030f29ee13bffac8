"""The enrollment rule over every combination: list opt-in, sequence state, contact status and
the way the contact joins the list. Each combination is checked in the database against what
SPEC §4 says: enrolled once in each active sequence of that list, only when the membership
became subscribed or confirmed and the contact's own status is `subscribed`."""

from __future__ import annotations

from urllib.parse import urlsplit

import asyncpg
import pytest

from api.links import link
from listmill.consent import LinkPurpose
from listmill.settings import Settings
from tests.conftest import Api, RunJobs, form_post, wait_for_job

STATUSES = ("subscribed", "unsubscribed", "bounced", "complained")
PATHS = ("add_members", "import", "put_membership", "bulk_subscribe")


async def _arrange(api: Api, opt_in: str) -> tuple[int, dict[str, int], dict[str, int]]:
    """A list with an active and a paused sequence, an active sequence of another list, and
    one contact per marketing status."""
    _, made = await api.post("/lists", {"name": "Target", "opt_in_process": opt_in})
    _, other = await api.post("/lists", {"name": "Other"})
    list_id, other_id = made["data"]["id"], other["data"]["id"]
    sequences = {}
    for name, target, status in (
        ("active", list_id, "active"), ("paused", list_id, "paused"), ("other", other_id, "active")
    ):  # fmt: skip
        trigger = {"type": "list_added", "list_id": target}
        _, body = await api.post(
            "/sequences", {"name": name, "trigger_config": trigger, "status": status}
        )
        sequences[name] = body["data"]["id"]
    contacts = {}
    for status in STATUSES:
        _, body = await api.post("/contacts", {"email": f"{status}@example.com"})
        contacts[status] = body["data"]["id"]
        if status != "subscribed":
            answer, _ = await api.patch(f"/contacts/{body['data']['id']}", {"status": status})
            assert answer == 200
    return list_id, sequences, contacts


async def _join(api: Api, run_jobs: RunJobs, path: str, list_id: int) -> None:
    """Every contact joins the list by ``path``."""
    emails = [f"{status}@example.com" for status in STATUSES]
    if path == "put_membership":
        for email in emails:
            status, body = await api.put(
                "/memberships", {"list_id": list_id, "contact": {"email": email}}
            )
            if email.startswith("subscribed@"):
                assert status in (200, 201), body
            else:
                assert status == 409 and "does not join lists" in body["error"]["message"]
        return
    if path == "import":
        csv = ("email\n" + "\n".join(emails) + "\n").encode()
        status, body = await form_post(api, [("list_id", str(list_id)), ("file", csv)])
    elif path == "add_members":
        status, body = await api.post(
            f"/lists/{list_id}/members", {"contacts": [{"email": e} for e in emails]}
        )
    else:
        status, body = await api.post(
            "/contacts/bulk-subscribe", {"emails": emails, "list_id": list_id}
        )
    assert status == 202, body
    await run_jobs()
    assert (await wait_for_job(api, body["data"]["id"]))["status"] == "succeeded"


async def _enrolled(db: asyncpg.Connection) -> set[tuple[int, int]]:
    rows = await db.fetch("SELECT sequence_id, contact_id FROM sequence_enrollments")
    return {(r["sequence_id"], r["contact_id"]) for r in rows}


async def _confirm_pending(
    api: Api, settings: Settings, db: asyncpg.Connection, list_id: int
) -> None:
    pending = await db.fetch(
        "SELECT contact_id FROM list_memberships WHERE list_id = $1 AND status = 'pending'",
        list_id,
    )
    for row in pending:
        url = link(settings, LinkPurpose.CONFIRM, list_id, row["contact_id"])
        assert (await api.client.get(urlsplit(url).path)).status == 200


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("opt_in", ["single", "double"])
async def test_enrollment_follows_the_rule_in_every_combination(
    api: Api,
    run_jobs: RunJobs,
    db: asyncpg.Connection,
    settings: Settings,
    path: str,
    opt_in: str,
) -> None:
    list_id, sequences, contacts = await _arrange(api, opt_in)
    await _join(api, run_jobs, path, list_id)
    expected = {(sequences["active"], contacts["subscribed"])}
    # bulk-subscribe asks for a subscription outright; every other path honours double opt-in
    before_confirmation = expected if opt_in == "single" or path == "bulk_subscribe" else set()
    assert await _enrolled(db) == before_confirmation

    await _confirm_pending(api, settings, db, list_id)
    assert await _enrolled(db) == expected

    await _join(api, run_jobs, path, list_id)  # joining again enrolls nobody twice
    await _confirm_pending(api, settings, db, list_id)
    assert await _enrolled(db) == expected
    suppressed = await db.fetchval(
        """
        SELECT count(*) FROM list_memberships m JOIN contacts c ON c.id = m.contact_id
        WHERE m.list_id = $1 AND c.status <> 'subscribed'
          AND m.status IN ('pending', 'subscribed', 'confirmed')
        """,
        list_id,
    )
    assert suppressed == 0, "no suppressed contact became an active member"
