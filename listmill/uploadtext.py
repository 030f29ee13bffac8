"""What an upload's text is stored as, beyond its charset (listmill.charsets): the file
as sent, but for two things spreadsheets write that an import would not read.

- Old Mac line ends: a file whose header row ends with a carriage return alone (Excel's
  "CSV (Macintosh)") is stored with line feeds. An import cuts the stored file into records
  at line feeds (csvimport.RecordSplitter, csvkeys.KeyReader): with carriage returns alone
  the whole file was one record's worth of text, held and then parsed at once (a 20 MB file
  took 275 MB of memory). Lines that end with CRLF are left as they are; a carriage return
  alone within a quoted value of such a file becomes a line feed too (the one line end the
  file has).
- Excel's ``sep=;`` line before the header, which says the delimiter (the header's is
  sniffed anyway): dropped, as Excel does when it opens such a file, so the header is row 1
  there and here."""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field

_LONE_RETURN = re.compile(rb"\r(?!\n)")
_SEP_LINE = re.compile(rb"sep=[^\r\n]?(?:\r\n|\r(?=.)|\n)", re.IGNORECASE | re.DOTALL)


@dataclass
class UploadText:
    """Feed an upload's chunks (UTF-8), get them as they are stored."""

    _lone: bool | None = field(default=None, init=False)  # None until the first line end
    _held: bytes = field(default=b"", init=False)  # a carriage return that ended a chunk
    _started: bool = field(default=False, init=False)  # the file's first bytes went out

    def feed(self, chunk: bytes) -> bytes:
        chunk, self._held = self._held + chunk, b""
        if not self._started and chunk:  # (a sep= line must end in the first chunk)
            chunk, self._started = _without_sep_line(chunk), True
        if chunk.endswith(b"\r") and self._lone is not False:
            chunk, self._held = chunk[:-1], b"\r"  # alone, or half of a CRLF: the next byte tells
        if self._lone is None:
            self._lone = _lone_told(chunk + self._held)
        return _LONE_RETURN.sub(b"\n", chunk) if self._lone else chunk

    def finish(self) -> bytes:
        held, self._held = self._held, b""
        return b"\n" if held and self._lone is not False else held


def _without_sep_line(start: bytes) -> bytes:
    """A file's first bytes without Excel's ``sep=`` line, if they begin with one (after the
    byte order mark, which stays)."""
    bom = codecs.BOM_UTF8 if start.startswith(codecs.BOM_UTF8) else b""
    line = _SEP_LINE.match(start, len(bom))
    return bom + start[line.end() :] if line else start


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
