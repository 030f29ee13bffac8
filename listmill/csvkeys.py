"""Pass one of an import: every data row's email key (csvimport.email_key), hashed.

Most blocks of most files are ASCII with no quote, one record a line and the header's number of
fields on every line. In such a block each key is a slice of the bytes between two known
delimiters, and the keys are cut out of it (their starts and lengths, with numpy) and hashed
where they lie, without a string per row or an Arrow table (``simple_keys``). Any other block
goes through ``CsvReader`` as pass two reads it; and from the first block with a quote on, the
rest of the file does (where a record ends then depends on every quote before it). The keys
and so the hashes are the same either way: tests/unit/test_csvkeys.py compares them."""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from listmill.csvcolumns import Block, block_email_keys
from listmill.csvimport import CsvReader, Header, ParsedRow, email_key
from listmill.keyhash import HASHED_BYTES, hashes_at, key_hashes

KeyHashes = Callable[[Any], "np.ndarray[Any, Any]"]  # keyhash.key_hashes or the legacy one
_NEWLINE, _RETURN, _SPACE = ord("\n"), ord("\r"), ord(" ")


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
    is ASCII, has no quote, no control character but its line ends (and the tab where it is
    the delimiter), a carriage return only before a line end, the header's number of fields
    on every line, and no key that is empty or begins or ends with a space; None for any
    other block (csv's blank line has an empty key, and str.strip() removes nothing else from
    such a key)."""
    delimiter, columns, index = header.delimiter, len(header.columns), header.email_index
    if not block.endswith(b"\n") or not block.isascii() or b'"' in block:
        return None
    data = np.frombuffer(block, dtype=np.uint8)
    ends = np.flatnonzero(data == _NEWLINE)
    delimiters = np.flatnonzero(data == ord(delimiter)) if columns > 1 else ends[:0]
    if len(delimiters) != len(ends) * (columns - 1):
        return None
    control = int(np.count_nonzero(data < 0x20)) - len(ends)
    control -= len(delimiters) if delimiter == "\t" else 0
    returns = 0
    if control:  # a carriage return is allowed before a line end only (csv ends a record there)
        returns = int(np.count_nonzero(data[ends[ends > 0] - 1] == _RETURN))
        if returns != control or returns != int(np.count_nonzero(data == _RETURN)):
            return None
    line_starts = np.empty_like(ends)
    line_starts[0], line_starts[1:] = 0, ends[:-1] + 1
    if columns > 1:
        # sorted as they are, each line has its own columns - 1 if these lie within it
        fields = delimiters.reshape(len(ends), columns - 1)
        if (fields[:, 0] < line_starts).any() or (fields[:, -1] > ends).any():
            return None
        starts = line_starts if index == 0 else fields[:, index - 1] + 1
        stops = ends if index == columns - 1 else fields[:, index]
    else:
        starts, stops = line_starts, ends
    if index == columns - 1 and returns:
        stops = stops - (data[stops - 1] == _RETURN)  # the line's end is \r\n
    lengths = stops - starts
    if not lengths.all():
        return None
    if (data[starts] == _SPACE).any() or (data[stops - 1] == _SPACE).any():
        return None
    return Slices(block.lower(), starts, lengths)


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
    """Feed a stored file's chunks, get its data rows' keys (to hash: ``hashed``), in file
    order. Only key_hashes may take Slices: with another hash every block is read by CsvReader."""

    header: Header
    hashes: KeyHashes = key_hashes
    _rest: bytes = b""  # a record not ended yet, or the file's start before its header is read
    _data_begun: bool = False  # the header is behind: the rest begins a record
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
        if b'"' in data or self.hashes is not key_hashes:  # csv's from here on
            self._reader, self._rest = self._csv_reader(begun=True), b""
            return self._keys_of(self._reader.feed(data))
        cut = data.rfind(b"\n") + 1
        self._rest = data[cut:]
        return self._block_keys(data[:cut])

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
        if self.hashes is not key_hashes or b'"' in line or b"\r" in line:
            self._reader = self._csv_reader(begun=False)
            return data
        self._data_begun = True
        return text[end:]

    def _block_keys(self, block: bytes) -> list[Keys]:
        if not block:
            return []
        keys = simple_keys(block, self.header)
        if keys is not None:
            return [keys]
        reader = self._csv_reader(begun=True)  # no quote: the block is whole records alone
        return self._keys_of([*reader.feed(block), *reader.finish()])

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
