"""Public pages reached from an email: one-click unsubscribe and double opt-in confirmation.
No key: the signed token is the authority, and a forged or altered one is a 404."""

from __future__ import annotations

import html

from aiohttp import web

from api.context import POOL, SETTINGS
from api.http import public
from listmill.consent import LinkPurpose, read_token
from listmill.errors import NotFound
from listmill.queries import memberships as queries
from listmill.services import memberships as service

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{title}</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}}
button{{font:inherit;padding:.5rem 1rem}}</style></head>
<body><h1>{title}</h1>{body}</body></html>"""
LINK_NOT_FOUND = "this link is not valid"


def _page(title: str, body: str, status: int = 200) -> web.Response:
    text = PAGE.format(title=html.escape(title), body=body)
    return web.Response(text=text, content_type="text/html", status=status)


def _member(request: web.Request, purpose: LinkPurpose) -> tuple[int, int]:
    ids = read_token(request.app[SETTINGS].link_secret, purpose, request.match_info["token"])
    if ids is None:
        raise NotFound(LINK_NOT_FOUND)
    return ids


@public
async def unsubscribe_page(request: web.Request) -> web.Response:
    """GET: a page with one button; nothing changes until it is pressed (link scanners GET)."""
    list_id, contact_id = _member(request, LinkPurpose.UNSUBSCRIBE)
    async with request.app[POOL].acquire() as conn:
        if not await queries.member_exists(conn, list_id, contact_id):
            raise NotFound(LINK_NOT_FOUND)
    form = '<form method="post"><button type="submit">Unsubscribe</button></form>'
    return _page("Unsubscribe", f"<p>Stop receiving emails from this list?</p>{form}")


@public
async def unsubscribe(request: web.Request) -> web.Response:
    """POST: one-click unsubscribe (RFC 8058: ``List-Unsubscribe=One-Click``)."""
    list_id, contact_id = _member(request, LinkPurpose.UNSUBSCRIBE)
    async with request.app[POOL].acquire() as conn:
        result = await queries.unsubscribe_members(conn, list_id, [contact_id])
    if result[contact_id][0] is None:
        raise NotFound(LINK_NOT_FOUND)
    return _page("Unsubscribed", "<p>You will no longer receive emails from this list.</p>")


@public
async def confirm(request: web.Request) -> web.Response:
    """GET /confirm/{token}: a pending member becomes confirmed (and is enrolled)."""
    list_id, contact_id = _member(request, LinkPurpose.CONFIRM)
    async with request.app[POOL].acquire() as conn, conn.transaction():
        status = await service.confirm(conn, list_id, contact_id)
    if status is None:
        raise NotFound(LINK_NOT_FOUND)
    if status == "confirmed":
        return _page("Subscription confirmed", "<p>Thank you: your subscription is confirmed.</p>")
    return _page("Nothing to confirm", f"<p>This subscription is {html.escape(status)}.</p>")
