"""An upload sent in a declared charset (``text/csv; charset=windows-1252``), stored as UTF-8.

Excel on Windows saves "CSV" in windows-1252, and a client that says so gets its accented rows
read as it meant them. What the bytes say wins over the label where they say it clearly: a
file that begins with UTF-8's byte order mark is UTF-8, and so is one labelled with a one-byte
charset (some clients label every text ISO-8859-1) whose first chunk with a byte beyond ASCII
is valid UTF-8 (ASCII reads the same in all of them). A byte the charset has no character for
is kept as it was (the import's error row says so).

A label of ISO-8859-1 is read as windows-1252, as browsers do (the WHATWG Encoding Standard):
clients that label every text ISO-8859-1 send Excel's windows-1252 under it, and the bytes
where the two differ (0x80-0x9F: the euro sign, curly quotes and dashes in windows-1252) are
control characters in ISO-8859-1, which no file of text has. The five bytes windows-1252 has
no character for read as ISO-8859-1 reads them."""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from typing import Any


class UnknownCharset(ValueError):
    """The declared charset is not one of text (the upload is refused: 415)."""


class NotInCharset(ValueError):
    """The bytes cannot be read in the declared charset at all (the upload is refused: 422)."""


# codecs Python knows that are not a charset a file of text is written in
_NOT_FILE_CHARSETS = {"idna", "punycode", "unicode-escape", "raw-unicode-escape", "undefined"}
_LATIN_1_AS = "cp1252"
_LATIN_1_ERRORS = "listmill-latin-1"  # a byte windows-1252 lacks: the ISO-8859-1 character


def _as_latin_1(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    return exc.object[exc.start : exc.end].decode("latin-1"), exc.end


codecs.register_error(_LATIN_1_ERRORS, _as_latin_1)


@dataclass
class Transcoder:
    """Feed an upload's chunks, get them as UTF-8 (unchanged if no other charset applies)."""

    charset: str | None
    _codec: codecs.CodecInfo | None = field(default=None, init=False)
    _errors: str = field(default="surrogateescape", init=False)  # for a byte it lacks
    _decoder: Any = field(default=None, init=False)  # codecs.IncrementalDecoder, once chosen
    _started: bool = field(default=False, init=False)
    _is_utf8: bool = field(default=False, init=False)  # the bytes said so
    _held: bytes = field(default=b"", init=False)  # what may begin a UTF-8 character

    def __post_init__(self) -> None:
        if self.charset is None:
            return
        try:
            codec = codecs.lookup(self.charset)
        except LookupError:
            raise UnknownCharset(f"unknown charset {self.charset}") from None
        if not getattr(codec, "_is_text_encoding", True) or codec.name in _NOT_FILE_CHARSETS:
            raise UnknownCharset(f"{self.charset} is not a charset of text")
        if codec.name == "iso8859-1":
            codec, self._errors = codecs.lookup(_LATIN_1_AS), _LATIN_1_ERRORS
        if codec.name not in ("utf-8", "ascii"):
            self._codec = codec

    def feed(self, chunk: bytes) -> bytes:
        codec, started, self._started = self._codec, self._started, True
        if codec is None or self._decoder is not None or self._is_utf8:
            return self._utf8(chunk, final=False)
        chunk, self._held = self._held + chunk, b""
        if not started and chunk.startswith(codecs.BOM_UTF8):
            self._is_utf8 = True
        elif codec.name.startswith(("utf-16", "utf-32")):
            self._decoder = self._label_decoder()
        elif not chunk.isascii():  # the first bytes that tell: UTF-8, or the label's
            told = _utf8_told(chunk)
            if told is None:  # ASCII, then what may begin a character: wait for the rest
                return self._hold(chunk)
            self._is_utf8 = told
            if not told:
                self._decoder = self._label_decoder()
        return self._utf8(chunk, final=False)

    def finish(self) -> bytes:
        if self._held:  # never completed as UTF-8: the label's
            self._decoder = self._label_decoder()
            held, self._held = self._held, b""
            return self._utf8(held, final=True)
        return self._utf8(b"", final=True)

    def _label_decoder(self) -> Any:
        assert self._codec is not None
        return self._codec.incrementaldecoder(self._errors)

    def _hold(self, chunk: bytes) -> bytes:
        cut = len(chunk.rstrip(bytes(range(0x80, 0x100))))
        self._held = chunk[cut:]
        return chunk[:cut]

    def _utf8(self, chunk: bytes, final: bool) -> bytes:
        if self._decoder is None:
            return chunk
        try:
            return self._decoder.decode(chunk, final).encode("utf-8", "surrogateescape")  # type: ignore[no-any-return]
        except UnicodeError as exc:  # bytes that no character of it is made of (UTF-16 cut short)
            raise NotInCharset(f"the file is not {self.charset}: {exc}") from None


def _utf8_told(chunk: bytes) -> bool | None:
    """Whether a chunk with a byte beyond ASCII is UTF-8: True if it is valid (but for a
    character its end cuts, after another one), False if not, None if all it has beyond ASCII
    is the start of a character at its end."""
    try:
        chunk.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.reason != "unexpected end of data":
            return False
        return None if chunk[: exc.start].isascii() else True
    return True
