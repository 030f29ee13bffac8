"""lineends: an old Mac file's carriage returns become line feeds, however it is cut."""

from __future__ import annotations

import pytest

from listmill.lineends import LoneReturns

FILES = [
    # (as uploaded, as stored)
    (
        b'email,name\rann@x.io,Ann\rbob@x.io,"two\rlines"\r',
        b'email,name\nann@x.io,Ann\nbob@x.io,"two\nlines"\n',
    ),
    (b"email\rann@x.io\r\nbob@x.io", b"email\nann@x.io\r\nbob@x.io"),  # a CRLF stays
    (b"email\r", b"email\n"),
    (b"email\r\nann@x.io\rbob@x.io\r\n", None),  # CRLF first: unchanged
    (b"email\nann@x.io\rbob@x.io\n", None),
    (b"email", None),
]


def stored(data: bytes, cuts: list[int]) -> bytes:
    lone, out, at = LoneReturns(), [], 0
    for cut in [*cuts, len(data)]:
        out.append(lone.feed(data[at:cut]))
        at = cut
    return b"".join(out) + lone.finish()


@pytest.mark.parametrize(("data", "expected"), FILES)
def test_lone_returns_become_line_feeds_wherever_the_chunks_end(
    data: bytes, expected: bytes | None
) -> None:
    expected = data if expected is None else expected
    assert stored(data, []) == expected
    for cut in range(len(data) + 1):
        assert stored(data, [cut]) == expected, cut
    assert stored(data, list(range(1, len(data)))) == expected  # a byte at a time
