"""uploadtext: an old Mac file's carriage returns become line feeds, and Excel's sep= line goes,
however the upload is cut."""

from __future__ import annotations

import pytest

from listmill.uploadtext import UploadText

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
    text, out, at = UploadText(), [], 0
    for cut in [*cuts, len(data)]:
        out.append(text.feed(data[at:cut]))
        at = cut
    return b"".join(out) + text.finish()


SEP_FILES = [
    (b"sep=;\r\nemail;name\r\na@x.io;A\r\n", b"email;name\r\na@x.io;A\r\n"),
    (b"\xef\xbb\xbfSEP=,\nemail,name\n", b"\xef\xbb\xbfemail,name\n"),
    (b"sep=\t\remail\tname\ra@x.io\tA\r", b"email\tname\na@x.io\tA\n"),
    (b"sep=;\r\n", b""),
    (b"email\nsep=;\n", None),  # only before the header
    (b"separate,email\n", None),
]


@pytest.mark.parametrize(("data", "expected"), SEP_FILES)
def test_excels_sep_line_goes_if_the_first_chunk_has_it(
    data: bytes, expected: bytes | None
) -> None:
    expected = data if expected is None else expected
    first_line = data.find(b"\n") + 1 or len(data)
    for cut in range(first_line, len(data) + 1):
        assert stored(data, [cut]) == expected, cut


@pytest.mark.parametrize(("data", "expected"), FILES)
def test_lone_returns_become_line_feeds_wherever_the_chunks_end(
    data: bytes, expected: bytes | None
) -> None:
    expected = data if expected is None else expected
    assert stored(data, []) == expected
    for cut in range(len(data) + 1):
        assert stored(data, [cut]) == expected, cut
    assert stored(data, list(range(1, len(data)))) == expected  # a byte at a time
