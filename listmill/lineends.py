"""Old Mac line ends: an upload whose header row ends with a carriage return alone (Excel's
"CSV (Macintosh)") is stored with line feeds. An import cuts the stored file into records at
line feeds (csvimport.RecordSplitter, csvkeys.KeyReader): with carriage returns alone the
whole file was one record's worth of text, held and then parsed at once (a 20 MB file took
275 MB of memory). Lines that end with CRLF are left as they are; a carriage return alone
within a quoted value of such a file becomes a line feed too (one line end a file has)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_LONE_RETURN = re.compile(rb"\r(?!\n)")


@dataclass
class LoneReturns:
    """Feed an upload's chunks (UTF-8), get them with lone carriage returns made line feeds if
    the file's first line ends with one; unchanged otherwise."""

    _lone: bool | None = field(default=None, init=False)  # None until the first line end
    _held: bytes = field(default=b"", init=False)  # a carriage return that ended a chunk

    def feed(self, chunk: bytes) -> bytes:
        chunk, self._held = self._held + chunk, b""
        if chunk.endswith(b"\r") and self._lone is not False:
            chunk, self._held = chunk[:-1], b"\r"  # alone, or half of a CRLF: the next byte tells
        if self._lone is None:
            self._lone = _lone_told(chunk + self._held)
        return _LONE_RETURN.sub(b"\n", chunk) if self._lone else chunk

    def finish(self) -> bytes:
        held, self._held = self._held, b""
        return b"\n" if held and self._lone is not False else held


def _lone_told(text: bytes) -> bool | None:
    """Whether the first line end of a file's start is a carriage return alone; None if it has
    none yet (or the carriage return is its last byte: the next one tells)."""
    at = re.search(rb"[\r\n]", text)
    if at is None:
        return None
    if text[at.start()] == ord("\n"):
        return False
    if at.end() == len(text):
        return None
    return text[at.end()] != ord("\n")
