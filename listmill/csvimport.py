"""CSV import rules (SPEC §6): decoding, sniffing, header aliases, streamed row parsing and row
validation. Pure logic: fed bytes chunk by chunk, memory stays flat whatever the file size."""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from listmill.validation import MAX_FIELD_LENGTH, normalize_email

DELIMITERS = (",", ";", "\t")
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
MAX_CUSTOM_VALUE = 1000

# lower-cased, with spaces, dashes and underscores removed -> contact field
ALIASES = {
    "email": "email",
    "emailaddress": "email",
    "mail": "email",
    "e-mail": "email",
    "firstname": "first_name",
    "first": "first_name",
    "givenname": "first_name",
    "fname": "first_name",
    "lastname": "last_name",
    "last": "last_name",
    "surname": "last_name",
    "familyname": "last_name",
    "lname": "last_name",
    "country": "country",
    "countrycode": "country",
    "timezone": "time_zone",
    "tz": "time_zone",
}
CONTACT_FIELDS = ("first_name", "last_name", "country", "time_zone")


class HeaderError(ValueError):
    """The file cannot be imported at all: the message says why."""


def _alias(name: str) -> str | None:
    return ALIASES.get(re.sub(r"[\s_\-.]+", "", name.strip().lower()))


@dataclass(frozen=True)
class Header:
    delimiter: str
    columns: list[str]
    mapping: list[str | None]  # per column: a contact field, or None for a custom data key

    @property
    def email_index(self) -> int:
        return self.mapping.index("email")


def read_header(first_bytes: bytes) -> Header:
    """Check the header row before a file is accepted; raises HeaderError saying what is wrong."""
    if not first_bytes.strip():
        raise HeaderError("the file is empty")
    if b"\x00" in first_bytes[:4096]:
        raise HeaderError("the body is not text (it contains NUL bytes)")
    text = first_bytes.decode("utf-8", errors="replace").lstrip("\ufeff")
    line = text.splitlines()[0] if text.splitlines() else ""
    delimiter = max(DELIMITERS, key=line.count)
    columns = next(csv.reader([line], delimiter=delimiter), [])
    mapping = [_alias(column) for column in columns]
    if "email" not in mapping:
        raise HeaderError(
            "no email column in the header row (expected a column named email or Email Address)"
        )
    seen = [m for m in mapping if m]
    if len(seen) != len(set(seen)):
        raise HeaderError("the header row names the same contact field twice")
    return Header(delimiter, [c.strip() for c in columns], mapping)


class RecordSplitter:
    """Cuts decoded text into complete CSV records across chunk boundaries: a newline ends a
    record only outside quotes (escaped quotes come in pairs, so a parity count suffices)."""

    def __init__(self) -> None:
        self._pending: list[str] = []
        self._quotes = 0

    def feed(self, text: str) -> str:
        """The complete records in what has been fed so far, as one block of text."""
        cut = text.rfind("\n")
        if cut >= 0 and (self._quotes + text.count('"', 0, cut)) % 2 == 0:
            # the last newline ends a record: no need to look at the lines before it
            done = "".join(self._pending) + text[: cut + 1]
            rest = text[cut + 1 :]
            self._pending, self._quotes = [rest], rest.count('"')
            return done
        return self._feed_lines(text)

    def _feed_lines(self, text: str) -> str:
        lines = text.split("\n")
        done: list[str] = []
        for index, line in enumerate(lines):
            last = index == len(lines) - 1
            self._pending.append(line if last else line + "\n")
            self._quotes += line.count('"')
            if not last and self._quotes % 2 == 0:
                done.append("".join(self._pending))
                self._pending, self._quotes = [], 0
        return "".join(done)

    def finish(self) -> str:
        rest, self._pending, self._quotes = "".join(self._pending), [], 0
        return rest


@dataclass
class ParsedRow:
    number: int  # the row as a spreadsheet shows it: the header is row 1
    values: list[str]
    undecodable: bool = False


@dataclass
class CsvReader:
    """Feed bytes, get rows: BOM stripped, invalid UTF-8 kept visible (surrogate escapes),
    blank lines skipped, quoted newlines kept inside their field."""

    header: Header
    _decoder: Any = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")("surrogateescape")
    )
    _splitter: RecordSplitter = field(default_factory=RecordSplitter)
    _started: bool = False
    _header_skipped: bool = False
    _number: int = 1

    def feed(self, data: bytes) -> Iterator[ParsedRow]:
        text = self._decoder.decode(data)
        if not self._started and text:
            text, self._started = text.lstrip("\ufeff"), True
        return self._rows(self._splitter.feed(text))

    def finish(self) -> Iterator[ParsedRow]:
        text = self._decoder.decode(b"", final=True)
        return self._rows(self._splitter.feed(text) + self._splitter.finish())

    def _rows(self, block: str) -> Iterator[ParsedRow]:
        if not block:
            return
        suspect = _has_surrogates(block)  # invalid UTF-8 is rare: look at rows only if here
        for values in csv.reader(io.StringIO(block, newline=""), delimiter=self.header.delimiter):
            if not self._header_skipped:
                self._header_skipped = True
                continue
            self._number += 1
            if not "".join(values).strip():  # a blank line
                continue
            undecodable = suspect and any(_has_surrogates(v) for v in values)
            yield ParsedRow(self._number, values, undecodable)


def _has_surrogates(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


@dataclass(frozen=True)
class RowError:
    number: int
    email: str | None
    code: str
    message: str


def contact_from_row(header: Header, row: ParsedRow) -> dict[str, Any] | RowError:
    """A normalised contact, or the reason the row is an error row."""
    raw_email = row.values[header.email_index] if header.email_index < len(row.values) else ""
    shown_email = raw_email.strip()[:320].encode("utf-8", "replace").decode() or None
    if row.undecodable:
        return RowError(row.number, shown_email, "invalid_encoding", "the row is not valid UTF-8")
    try:
        email, normalized = normalize_email(raw_email)
    except ValueError as exc:
        return RowError(row.number, shown_email, "invalid_email", str(exc))
    contact: dict[str, Any] = {"email": email, "email_normalized": normalized}
    data: dict[str, str] = {}
    for column, target, value in zip(header.columns, header.mapping, row.values, strict=False):
        value = value.strip()
        if target == "email" or not value:
            continue
        limit = MAX_FIELD_LENGTH if target else MAX_CUSTOM_VALUE
        if len(value) > limit or "\x00" in value:
            message = f"{column} is longer than {limit} characters or holds a NUL character"
            return RowError(row.number, email, "invalid_field", message)
        if target:
            contact[target] = value
        elif column:
            data[column] = value
    contact["data"] = data
    return contact
