"""Consent rules: IP anonymisation, membership status transitions, signed links."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import struct
from enum import StrEnum


class MemberStatus(StrEnum):
    PENDING = "pending"
    SUBSCRIBED = "subscribed"
    CONFIRMED = "confirmed"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    CLEANED = "cleaned"


ACTIVE_STATUSES = (MemberStatus.SUBSCRIBED, MemberStatus.CONFIRMED)

# target status -> the statuses a member may be moved from by an API call that asks for it.
# Nobody who complained, bounced or was cleaned is re-subscribed by the API: that takes the
# person's own action (a new confirmation), which the sender reports as a new membership.
ALLOWED_FROM: dict[MemberStatus, frozenset[MemberStatus]] = {
    MemberStatus.PENDING: frozenset({MemberStatus.UNSUBSCRIBED}),
    MemberStatus.SUBSCRIBED: frozenset({MemberStatus.PENDING, MemberStatus.UNSUBSCRIBED}),
    MemberStatus.CONFIRMED: frozenset({MemberStatus.PENDING, MemberStatus.SUBSCRIBED}),
    MemberStatus.UNSUBSCRIBED: frozenset(
        {MemberStatus.PENDING, MemberStatus.SUBSCRIBED, MemberStatus.CONFIRMED}
    ),
    MemberStatus.BOUNCED: frozenset(set(MemberStatus) - {MemberStatus.BOUNCED}),
    MemberStatus.COMPLAINED: frozenset(set(MemberStatus) - {MemberStatus.COMPLAINED}),
    MemberStatus.CLEANED: frozenset(set(MemberStatus) - {MemberStatus.CLEANED}),
}


def allowed_from(target: MemberStatus) -> list[str]:
    return sorted(status.value for status in ALLOWED_FROM[target])


def anonymize_ip(raw: str) -> str:
    """The network an address belongs to: IPv4 to /24, IPv6 to /48 (IPv4-mapped IPv6 counts
    as IPv4). Raises ValueError for anything that is not an IP address."""
    address = ipaddress.ip_address(raw.strip())
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)


class LinkPurpose(StrEnum):
    UNSUBSCRIBE = "u"
    CONFIRM = "c"


_PAYLOAD = struct.Struct(">cQQ")
_MAC_BYTES = 16


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_token(secret: str, purpose: LinkPurpose, list_id: int, contact_id: int) -> str:
    """An unguessable token for one (list, contact) and purpose; verifiable without a lookup
    table, and all revoked at once by rotating ``secret``."""
    payload = _PAYLOAD.pack(purpose.value.encode(), list_id, contact_id)
    mac = hmac.new(secret.encode(), payload, hashlib.sha256).digest()[:_MAC_BYTES]
    return _b64(payload + mac)


def read_token(secret: str, purpose: LinkPurpose, token: str) -> tuple[int, int] | None:
    """(list_id, contact_id) of a genuine token for ``purpose``; None for anything forged."""
    try:
        raw = _unb64(token)
    except ValueError:
        return None
    if len(raw) != _PAYLOAD.size + _MAC_BYTES:
        return None
    payload, mac = raw[: _PAYLOAD.size], raw[_PAYLOAD.size :]
    expected = hmac.new(secret.encode(), payload, hashlib.sha256).digest()[:_MAC_BYTES]
    if not hmac.compare_digest(mac, expected):
        return None
    kind, list_id, contact_id = _PAYLOAD.unpack(payload)
    if kind != purpose.value.encode():
        return None
    return list_id, contact_id
