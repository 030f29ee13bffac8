"""IP anonymisation and signed links."""

from __future__ import annotations

import pytest

from listmill.consent import LinkPurpose, anonymize_ip, make_token, read_token


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("203.0.113.77", "203.0.113.0"),
        (" 198.51.100.1 ", "198.51.100.0"),
        ("2001:db8:abcd:12:1:2:3:4", "2001:db8:abcd::"),
        ("::ffff:192.0.2.128", "192.0.2.0"),
        ("::1", "::"),
    ],
)
def test_anonymize_ip(given: str, stored: str) -> None:
    assert anonymize_ip(given) == stored


@pytest.mark.parametrize("bad", ["", "300.1.1.1", "1.2.3", "not-an-ip", "2001:db8::/48"])
def test_invalid_ip_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        anonymize_ip(bad)


def test_token_round_trip_and_binding() -> None:
    token = make_token("s3cret", LinkPurpose.UNSUBSCRIBE, 7, 42)
    assert read_token("s3cret", LinkPurpose.UNSUBSCRIBE, token) == (7, 42)
    # bound to its purpose, its secret, and every byte of itself
    assert read_token("s3cret", LinkPurpose.CONFIRM, token) is None
    assert read_token("rotated", LinkPurpose.UNSUBSCRIBE, token) is None
    for i in range(len(token)):
        altered = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]
        assert read_token("s3cret", LinkPurpose.UNSUBSCRIBE, altered) is None
    assert read_token("s3cret", LinkPurpose.UNSUBSCRIBE, "!!") is None
    assert make_token("s3cret", LinkPurpose.UNSUBSCRIBE, 7, 43) != token
