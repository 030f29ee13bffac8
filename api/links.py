"""Links the service hands out: signed, and built on PUBLIC_BASE_URL."""

from __future__ import annotations

from listmill.consent import LinkPurpose, make_token
from listmill.records import Membership
from listmill.settings import Settings

PATHS = {LinkPurpose.UNSUBSCRIBE: "unsubscribe", LinkPurpose.CONFIRM: "confirm"}


def link(settings: Settings, purpose: LinkPurpose, list_id: int, contact_id: int) -> str:
    token = make_token(settings.link_secret, purpose, list_id, contact_id)
    return f"{settings.public_base_url.rstrip('/')}/{PATHS[purpose]}/{token}"


def with_links(settings: Settings, member: Membership) -> Membership:
    url = link(settings, LinkPurpose.UNSUBSCRIBE, member.list_id, member.contact_id)
    return member.model_copy(update={"unsubscribe_url": url})
