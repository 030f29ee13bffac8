"""Pass one of an import: every data row's email key (csvimport.email_key), hashed.

Most blocks of most files are ASCII lines, one record each, with the header's number of fields,
either none of them quoted or every one (as some exports write every file). In such a block
each key is a slice of the bytes between two known delimiters or quotes, and the keys are cut
out of it (their starts and lengths, with numpy) and hashed where they lie, without a string
per row or an Arrow table (``simple_keys``). Any other block goes through ``CsvReader`` as pass
two reads it; if a quoted field of it goes on past the block, the rest of the file does too
(where a record ends then depends on every quote before it). The keys and so the hashes are
the same either way: tests/unit/test_csvkeys.py compares them."""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from listmill import csvimport
from listmill.csvcolumns import Block, block_email_keys
from listmill.csvimport import CsvReader, Header, ParsedRow, email_key, first_record
from listmill.keyhash import HASHED_BYTES, hashes_at, key_hashes

KeyHashes = Callable[[Any], "np.ndarray[Any, Any]"]  # keyhash.key_hashes or the legacy one
_NEWLINE, _RETURN, _SPACE, _QUOTE = ord("\n"), ord("\r"), ord(" "), ord('"')


@dataclass(frozen=True)
class Slices:
    """Keys that are slices of one buffer: where each begins, and its length in bytes."""

    data: bytes
    starts: np.ndarray[Any, Any]
    lengths: np.ndarray[Any, Any]

    def __len__(self) -> int:
        return len(self.lengths)


Keys = Slices | Sequence[str] | Any  # Slices, strings, or an Arrow string array


def simple_keys(block: bytes, header: Header) -> Slices | None:
    """The lower-cased email keys of a block of whole records (it ends with a line end) that
    is ASCII, has no control character but its line ends (and the tab where it is the
    delimiter), a carriage return only before a line end, the header's number of fields on
    every line, no key that is empty or begins or ends with a space, and either no quote or
    every field of every line quoted with no quote inside (as some exports write every file);
    None for any other block (csv's blank line has an empty key, and str.strip() removes
    nothing else from such a key)."""
    if not block.endswith(b"\n") or not block.isascii():
        return None
    data = np.frombuffer(block, dtype=np.uint8)
    ends = np.flatnonzero(data == _NEWLINE)
    line_starts = np.empty_like(ends)
    line_starts[0], line_starts[1:] = 0, ends[:-1] + 1
    tabs = int(np.count_nonzero(data == ord("\t"))) if header.delimiter == "\t" else 0
    control = int(np.count_nonzero(data < 0x20)) - len(ends) - tabs
    line_stops = ends
    if control:  # a carriage return is allowed before a line end only (csv ends a record there)
        before_end = data[ends - 1] == _RETURN  # (at -1 for an empty first line: a line end)
        returns = int(np.count_nonzero(before_end))
        if returns != control or returns != int(np.count_nonzero(data == _RETURN)):
            return None
        line_stops = ends - before_end
    lines = _Lines(data, line_starts, line_stops, ends)
    bounds = _quoted_bounds(lines, header) if b'"' in block else _bounds(lines, header)
    if bounds is None:
        return None
    starts, stops = bounds
    lengths = stops - starts
    if not lengths.all():
        return None
    if (data[starts] == _SPACE).any() or (data[stops - 1] == _SPACE).any():
        return None
    return Slices(block.lower(), starts, lengths)


Bounds = tuple["np.ndarray[Any, Any]", "np.ndarray[Any, Any]"]


@dataclass(frozen=True)
class _Lines:
    """A block's bytes, and where each of its lines begins, stops (before its \r\n or \n)
    and has its \n."""

    data: np.ndarray[Any, Any]
    starts: np.ndarray[Any, Any]
    stops: np.ndarray[Any, Any]
    ends: np.ndarray[Any, Any]


def _bounds(lines: _Lines, header: Header) -> Bounds | None:
    """Where the email field of each line begins and ends, in lines with no quote (None unless
    every line has the header's number of fields)."""
    data, line_starts, line_stops, ends = lines.data, lines.starts, lines.stops, lines.ends
    delimiter, columns, index = header.delimiter, len(header.columns), header.email_index
    delimiters = np.flatnonzero(data == ord(delimiter))
    if len(delimiters) != len(ends) * (columns - 1):
        return None
    if columns == 1:
        return line_starts, line_stops
    # sorted as they are, each line has its own columns - 1 if these lie within it
    fields = delimiters.reshape(len(ends), columns - 1)
    if (fields[:, 0] < line_starts).any() or (fields[:, -1] > ends).any():
        return None
    starts = line_starts if index == 0 else fields[:, index - 1] + 1
    stops = line_stops if index == columns - 1 else fields[:, index]
    return starts, stops


def _quoted_bounds(lines: _Lines, header: Header) -> Bounds | None:
    """Where the email field of each line begins and ends inside its quotes, in lines whose
    every field is quoted, with no quote inside, and each two fields a delimiter apart (None
    for any other line: csv reads such a line's fields as what lies between their quotes)."""
    data, line_starts, line_stops = lines.data, lines.starts, lines.stops
    delimiter, columns, index = header.delimiter, len(header.columns), header.email_index
    quotes = np.flatnonzero(data == _QUOTE)
    if len(quotes) != len(line_starts) * 2 * columns:
        return None
    if delimiter == "\t" and np.count_nonzero(data == ord("\t")) != len(line_starts) * (
        columns - 1
    ):
        return None  # a tab inside quotes: whitespace, which csv's blank line may be made of
    pairs = quotes.reshape(len(line_starts), 2 * columns)
    opening, closing = pairs[:, 0::2], pairs[:, 1::2]
    if (closing - opening > csvimport.QUOTED_FIELD_LIMIT).any():
        return None  # a quoted field too long to close: csv's reader ends its record early
    # the first quote begins the line and the last one ends it: each line has its own quotes
    if (opening[:, 0] != line_starts).any() or (closing[:, -1] + 1 != line_stops).any():
        return None
    if columns > 1 and (
        (opening[:, 1:] != closing[:, :-1] + 2).any()
        or (data[closing[:, :-1] + 1] != ord(delimiter)).any()
    ):
        return None
    return opening[:, index] + 1, closing[:, index]


def hashed_keys(keys: list[Keys], hashes: KeyHashes) -> np.ndarray[Any, Any]:
    """The hashes of these keys, in order (Slices only with key_hashes, which they match)."""
    parts = [
        hashes_at(k.data, k.starts, k.lengths, HASHED_BYTES) if isinstance(k, Slices) else hashes(k)
        for k in keys
        if len(k)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


@dataclass
class KeyReader:
    """Feed a stored file's chunks, get its data rows' keys (to hash: ``hashed_keys``), in
    file order. Only key_hashes may take Slices: with another hash CsvReader reads the whole
    file (see _after_header)."""

    header: Header
    hashes: KeyHashes = key_hashes
    # a record not ended yet, or the file's start before its header is read
    _rest: bytes = field(default=b"", init=False)
    _data_begun: bool = field(default=False, init=False)  # the header is behind: rest begins one
    _reader: CsvReader | None = field(default=None, init=False)  # the rest is csv's, then

    def feed(self, chunk: bytes) -> list[Keys]:
        if self._reader is not None:
            return self._keys_of(self._reader.feed(chunk))
        data = self._rest + chunk
        if not self._data_begun:
            data = self._after_header(data)
            if self._reader is not None:
                return self._keys_of(self._reader.feed(data))
            if not self._data_begun:
                return []  # no line end yet: the data waits
        cut = data.rfind(b"\n") + 1
        return self._block_keys(data[:cut], data[cut:])

    def finish(self) -> list[Keys]:
        if self._reader is None:
            # the file's start without a line end (no header read yet) or its last record
            # without one: csv's, as it is after the header
            self._reader = self._csv_reader(begun=self._data_begun)
            keys = self._keys_of(self._reader.feed(self._rest))
            self._rest = b""
        else:
            keys = []
        return keys + self._keys_of(self._reader.finish())

    def _after_header(self, data: bytes) -> bytes:
        """The data after the header line, once it has a line end, where csv would end it too
        (then the data has begun); else the reader of the whole file from its start is set and
        it is given the data, or with no line end yet the data waits (as the rest)."""
        text = data
        while text.startswith(codecs.BOM_UTF8):  # CsvReader strips every leading BOM
            text = text[len(codecs.BOM_UTF8) :]
        end = text.find(b"\n") + 1
        if not end:
            self._rest = data
            return b""
        line = text[: end - 1].removesuffix(b"\r")
        if self.hashes is not key_hashes or b"\r" in line or not self._one_record(line):
            self._reader = self._csv_reader(begun=False)
            return data
        self._data_begun = True
        return text[end:]

    def _one_record(self, line: bytes) -> bool:
        """Whether csv reads this line (the header's, say) as one record, ended by its line end."""
        if b'"' not in line:
            return True
        text = line.decode("utf-8", "surrogateescape")
        return first_record(text + "\n", self.header.delimiter) == text

    def _block_keys(self, block: bytes, rest: bytes) -> list[Keys]:
        """The keys of a block that begins a record and ends a line: cut as bytes, or read
        by csv; then, if its last line ended a record, the rest waits for the next chunk as
        the start of the next block, else csv reads the file from here on."""
        if not block:
            self._rest = rest
            return []
        keys = simple_keys(block, self.header)
        if keys is not None:
            self._rest = rest
            return [keys]
        reader = self._csv_reader(begun=True)
        found = self._keys_of(reader.feed(block))
        if reader.between_records:
            self._rest = rest
            return found + self._keys_of(reader.finish())
        self._reader, self._rest = reader, b""  # a quoted field goes on past the block
        return found + self._keys_of(reader.feed(rest))

    def _csv_reader(self, begun: bool) -> CsvReader:
        return (
            CsvReader.resumed(self.header, only_email=True)
            if begun
            else CsvReader(self.header, simple=True, only_email=True)
        )

    def _keys_of(self, rows: Iterator[ParsedRow | Block] | list[ParsedRow | Block]) -> list[Keys]:
        """The rows' email keys (csvimport.email_key), a run of them at a time."""
        keys: list[Keys] = []
        run: list[str] = []
        for row in rows:
            if isinstance(row, ParsedRow):
                run.append(email_key(self.header, row))
                continue
            if run:
                keys.append(run)
                run = []
            keys.append(block_email_keys(row))
        if run:
            keys.append(run)
        return keys
