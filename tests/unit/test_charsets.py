"""An upload in a declared charset, stored as UTF-8 (listmill.charsets)."""

from __future__ import annotations

import codecs

import pytest

from listmill.charsets import NotInCharset, Transcoder, UnknownCharset


def transcoded(charset: str | None, data: bytes, chunk: int = 3) -> bytes:
    transcoder = Transcoder(charset)
    out = b"".join(transcoder.feed(data[i : i + chunk]) for i in range(0, len(data), chunk))
    return out + transcoder.finish()


@pytest.mark.parametrize("charset", ["windows-1252", "cp1252", "latin-1", "iso-8859-15"])
def test_a_one_byte_charset_is_stored_as_utf8(charset: str) -> None:
    text = "email,name\na@b.co,Zoë Ærø\n"
    assert transcoded(charset, text.encode(charset)) == text.encode()


@pytest.mark.parametrize("charset", ["utf-16", "utf-16-le", "utf-32"])
def test_a_wide_charset_is_stored_as_utf8(charset: str) -> None:
    text = "email,name\na@b.co,Zoë\n"
    assert transcoded(charset, text.encode(charset)).removeprefix(codecs.BOM_UTF8) == text.encode()


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_what_the_bytes_say_wins_over_a_one_byte_label(chunk: int) -> None:
    utf8 = "name,email\nZoe,a@b.co\nZoë,c@d.ef\n".encode()
    assert transcoded("windows-1252", codecs.BOM_UTF8 + utf8, chunk) == codecs.BOM_UTF8 + utf8
    assert transcoded("iso-8859-1", utf8, chunk) == utf8  # a client labelling every text
    latin = "name,email\nZoe,a@b.co\nZoë,c@d.ef\n".encode("latin-1")
    assert transcoded("iso-8859-1", latin, chunk) == utf8  # the label, where the bytes are not


@pytest.mark.parametrize("label", ["iso-8859-1", "ISO_8859-1", "latin1", "l1"])
def test_an_iso_8859_1_label_reads_as_windows_1252_as_browsers_do(label: str) -> None:
    # curly quotes, the euro sign, a dash: bytes 0x80-0x9F in windows-1252
    text = "email,name,note\na@b.co,Zoë,\u201c5 \u20ac\u201d \u2013 it\u2019s\n"
    assert transcoded(label, text.encode("cp1252")).decode() == text
    # the five bytes windows-1252 lacks read as in ISO-8859-1 (control characters)
    assert transcoded(label, b"email\nZo\xeb \x81\x8d\x8f\x90\x9d\n").decode() == (
        "email\nZoë \x81\x8d\x8f\x90\x9d\n"
    )


def test_a_byte_without_a_character_stays_as_it_was() -> None:
    assert transcoded("windows-1252", b"email\nx\x81@b.co\n") == b"email\nx\x81@b.co\n"
    assert transcoded(None, b"\xff\xfe") == b"\xff\xfe"  # undeclared: taken as it is


@pytest.mark.parametrize(
    "charset", ["nope", "hex", "base64", "zlib", "rot13", "idna", "unicode_escape"]
)
def test_a_charset_that_is_not_one_of_text_is_refused(charset: str) -> None:
    with pytest.raises(UnknownCharset):
        Transcoder(charset)


@pytest.mark.parametrize(
    ("charset", "data"), [("utf-16-le", b"e\x00m\x00A"), ("utf-16", b"\xff\xfe\x00\xd8a\x00")]
)
def test_bytes_that_cannot_be_read_in_the_charset_are_refused(charset: str, data: bytes) -> None:
    with pytest.raises(NotInCharset):
        transcoded(charset, data)
