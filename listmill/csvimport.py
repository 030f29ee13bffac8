"""CSV import rules (SPEC §6): decoding, sniffing, header aliases, streamed row parsing and row
validation. Pure logic: fed bytes chunk by chunk, memory stays flat whatever the file size."""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

from listmill.validation import MAX_DATA_KEYS, MAX_FIELD_LENGTH, normalize_email, trim_email

if TYPE_CHECKING:
    from listmill.csvcolumns import Block

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

# csv refuses a field over 128 KiB by raising, which would fail the whole job: the limit goes
# up (process-wide, as csv keeps it) so that such a field is an error row like any over-long one
csv.field_size_limit(2**31 - 1)


class HeaderError(ValueError):
    """The file cannot be imported at all: the message says why."""


# the web reads the header row from the file's first chunk (UPLOAD_CHUNK_BYTES), and the job too
PAST_FIRST_CHUNK = "the header row does not end in the file's first chunk (1 MiB by default)"


def _alias(name: str) -> str | None:
    return ALIASES.get(re.sub(r"[\s_\-.]+", "", name.strip().lower()))


@dataclass(frozen=True)
class Header:
    delimiter: str
    columns: list[str]
    mapping: list[str | None]  # per column: a contact field, or None for a custom data key

    email_index: int = field(init=False)
    # (index, contact field) and (index, custom column name) of the columns a row may fill
    fields: tuple[tuple[int, str], ...] = field(init=False)
    custom: tuple[tuple[int, str], ...] = field(init=False)
    # the columns whose values are read: those of an unnamed column, or past the header, are not
    used: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        columns = list(enumerate(zip(self.columns, self.mapping, strict=True)))
        fields = tuple((i, m) for i, (_, m) in columns if m and m != "email")
        custom = tuple((i, c) for i, (c, m) in columns if c and not m)
        object.__setattr__(self, "email_index", self.mapping.index("email"))
        object.__setattr__(self, "fields", fields)
        object.__setattr__(self, "custom", custom)
        used = sorted({self.email_index, *(i for i, _ in fields), *(i for i, _ in custom)})
        object.__setattr__(self, "used", tuple(used))


def read_header(first_bytes: bytes, *, more: bool = False) -> Header:
    """Check the header row before a file is accepted; raises HeaderError saying what is wrong.
    The header row is the file's first record as csv reads it: a quoted column name may hold a
    line end (a cell of Excel's with Alt+Enter), and then the record goes on past it. With
    ``more`` (the file goes on after these bytes) the header row must end within them."""
    if not first_bytes.removeprefix(codecs.BOM_UTF8).strip():
        raise HeaderError("the file is empty")
    if first_bytes.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise HeaderError("the file is UTF-16: save it as CSV UTF-8 and upload it again")
    text = first_bytes.removeprefix(codecs.BOM_UTF8).decode("utf-8", "surrogateescape")
    delimiter, record = _header_record(text, more)
    if more and len(record) == len(text):  # no line end after it: it may go on
        raise HeaderError(PAST_FIRST_CHUNK)
    if "\x00" in record or _binary(first_bytes[:4096]):
        raise HeaderError("the body is not text (it contains NUL bytes)")
    if _has_surrogates(record):
        raise HeaderError("the header row is not UTF-8: save the file as CSV UTF-8")
    columns = _columns(record, delimiter)
    mapping = [_alias(column) for column in columns]
    _check_columns(columns, mapping)
    return Header(delimiter, columns, mapping)


# control characters text never holds (not the tab, the line ends, VT, FF or ESC)
_BINARY_CONTROLS = bytes([*range(1, 9), *range(14, 27), *range(28, 32)])
_FEW = 40  # of them in 4 KB: 1 %


def _binary(head: bytes) -> bool:
    """Whether a file's first 4 KB are binary: NULs all over them (1 %) beside other control
    characters, or on their own in a quarter of them. Binary (or UTF-16 without its mark) has
    NULs in its first line, mostly; a NUL in a row's value is that row's problem (an error
    row), not the file's, and so are NULs padding the fields of a legacy export."""
    nuls = head.count(b"\x00")
    controls = len(head) - len(head.translate(None, _BINARY_CONTROLS))
    return nuls > max(_FEW, len(head) // 4) or (nuls > _FEW and controls > _FEW)


def _check_columns(columns: list[str], mapping: list[str | None]) -> None:
    """Raise HeaderError if the header row's columns cannot be imported."""
    if "email" not in mapping:
        raise HeaderError(
            "no email column in the header row (expected a column named email or Email Address)"
        )
    seen = [m for m in mapping if m]
    if len(seen) != len(set(seen)):
        raise HeaderError("the header row names the same contact field twice")
    custom = [c for c, m in zip(columns, mapping, strict=True) if c and not m]
    for name in custom:
        if custom.count(name) > 1:
            raise HeaderError(f"the header row names the column {name} twice")
    if len(custom) > MAX_DATA_KEYS:  # as many as a contact's data may have through the API
        raise HeaderError(f"the header row has more than {MAX_DATA_KEYS} custom columns")


def _columns(record: str, delimiter: str) -> list[str]:
    return [c.strip() for c in next(csv.reader([record], delimiter=delimiter), [])]


def _header_record(text: str, more: bool) -> tuple[str, str]:
    """The delimiter (sniffed) and the header record under it: of the delimiters under which
    the header's quotes close and it names an email column, the one it has most of outside
    quotes ("Name, full";email): a tab-delimited header whose column names hold commas names
    no email column if split on them. With ``more``, a quote the text never closes may close
    past it."""
    records = {d: first_record(text, d) for d in DELIMITERS}

    def score(delimiter: str) -> tuple[bool, bool, int]:
        record = records[delimiter]
        if record is None:
            return False, False, 0
        named = any(_alias(column) == "email" for column in _columns(record, delimiter))
        return True, named, re.sub(r'"[^"]*"', "", record).count(delimiter)

    delimiter = max(DELIMITERS, key=score)
    record = records[delimiter]
    if record is None or (None in records.values() and not score(delimiter)[1]):
        if more:
            raise HeaderError(f"{PAST_FIRST_CHUNK}: a quoted name in it is not closed within it")
        raise HeaderError("a quoted name in the header row is never closed")
    return delimiter, record


# a quoted field must close within this many characters of its opening quote: one that does not
# (a stray quote, most likely) would otherwise hold the rest of the file in one row, in memory
QUOTED_FIELD_LIMIT = 1 << 20


# from inside a quoted field: up to its closing quote (one not doubled)
_CLOSING = re.compile(r'(?:[^"]++|"")*+"(?!")')


def first_record(text: str, delimiter: str) -> str | None:
    """The text's first record as csv reads it, without its line end; None if a quote opened
    in it is never closed in the text (or not within QUOTED_FIELD_LIMIT, as the reader has it)."""
    unquoted = _unquoted_part(delimiter)
    pos, end = 0, len(text)
    while True:  # at the start of a field
        if text.startswith('"', pos):
            closing = _CLOSING.match(text, pos + 1)
            if closing is None or closing.end() - 1 - pos > QUOTED_FIELD_LIMIT:
                return None
            pos = closing.end()
        pos = unquoted.match(text, pos).end()  # type: ignore[union-attr]  # (csv's, after a quote too)
        if pos < end and text[pos] == delimiter:
            pos += 1
            continue
        return text[:pos]


@cache
def _unquoted_part(delimiter: str) -> re.Pattern[str]:
    return re.compile(f"[^{re.escape(delimiter)}\r\n]*")


@dataclass(frozen=True, slots=True)
class Unterminated:
    """A record with a quoted field that does not close within QUOTED_FIELD_LIMIT characters
    or before the file ends: its text up to the line end after that field's opening quote
    (within the limit; the rest of a longer line is dropped). The next record begins there."""

    text: str


Piece = str | Unterminated  # whole records, or one that a quote never closed


class RecordSplitter:
    """Cuts decoded text into complete CSV records across chunk boundaries: a newline ends a
    record only outside quotes. As csv reads them, a quote opens a quoted field only at the
    start of a field (``5" screen`` is text), and inside one a doubled quote is a quote. Where a
    record ends depends only on the text from its start, however the text is cut into pieces:
    pass one and pass two of an import, fed differently, find the same records."""

    def __init__(self, delimiter: str) -> None:
        self._field_starts = (delimiter, "\n", "\r")
        # from the start of a record: the whole records that follow, while every quote in them
        # is where csv reads one (most files); the other quotes are followed one by one
        quoted = rf'(?:(?<=[{re.escape(delimiter)}\r\n])|\A)"(?:[^"]++|"")*+"(?!")'
        self._records = re.compile(rf'(?:(?:[^"\n]++|{quoted})*+\n)*')
        self._pending: list[str] = []  # the start of a record not ended yet
        self._fed = 0  # characters fed before the text being scanned
        self._in_quotes = False
        self._opened = 0  # where the quoted field the text is in opened (counted as _fed is)
        # inside quotes the text ended on a quote: a closing one, or half of a doubled one?
        self._quote_at_end = False  # the next character tells
        self._broken = False  # the quoted field does not close within the limit
        self._skipping = False  # the rest of a broken record's line is dropped
        self._last = "\n"
        # a quoted field did not close (within the limit, or before the file ended): every
        # row is read still, but which rows the file was meant to hold is not known
        self.quote_never_closed = False

    @property
    def between_records(self) -> bool:
        """Whether the text fed so far ends a record (nothing of the next one is waiting)."""
        return not (self._skipping or any(self._pending))

    def feed(self, text: str) -> list[Piece]:
        """The complete records in what has been fed so far."""
        pieces: list[Piece] = []
        while text:
            if self._skipping:
                text = self._skip(text)
                continue
            cut = self._scan(text)
            self._last, self._fed = text[-1], self._fed + len(text)
            if self._broken:
                text = self._break(text, cut, pieces)
                continue
            if cut >= 0:
                done = "".join(self._pending) + text[:cut]
                self._pending = []
                pieces.append(done)
                text = text[cut:]
            self._pending.append(text)
            break
        return pieces

    def finish(self) -> list[Piece]:
        """The rest: a last record without a line end, or records a quote never closed."""
        pieces: list[Piece] = []
        while self._in_quotes and not self._quote_at_end:
            pieces += self.feed(self._break("", -1, pieces))
        rest, self._pending = "".join(self._pending), []
        if rest and not self._skipping:
            pieces.append(rest)
        return pieces

    def _scan(self, text: str) -> int:
        """Follow the quoting through ``text``; the end of its last record outside quotes, or -1
        (up to a quoted field that does not close within the limit, if one opens in it)."""
        if not (self._in_quotes or self._quote_at_end or '"' in text):
            return text.rfind("\n") + 1 or -1  # no quote: each newline ends a record
        pos, cut, end = self._resume(text), -1, len(text)
        while pos < end and not self._broken:
            if self._in_quotes:
                pos = self._past_closing(text, pos)
                continue
            if (text[pos - 1] if pos else self._last) == "\n":
                # (its quoted fields close within the limit, as they lie within it)
                records = self._records.match(text, pos, pos + QUOTED_FIELD_LIMIT)
                if records and records.end() > pos:  # (it matches the empty string at least)
                    cut = pos = records.end()
                    continue
            newline = text.find("\n", pos)
            opening = self._next_opening(text, pos, end if newline < 0 else newline)
            if opening >= 0:
                self._in_quotes, self._opened, pos = True, self._fed + opening, opening + 1
            elif newline >= 0:
                cut = pos = newline + 1
            else:
                break
        return cut

    def _resume(self, text: str) -> int:
        """Where to go on in ``text`` after a quote that ended the text before inside quotes."""
        if not self._quote_at_end:
            return 0
        self._quote_at_end = False
        if text[0] == '"':  # a doubled quote: still inside, and past the limit, maybe
            self._broken = self._fed > self._opened + QUOTED_FIELD_LIMIT
            return 1
        self._in_quotes = False
        return 0

    def _past_closing(self, text: str, pos: int) -> int:
        """From inside a quoted field: past its closing quote, or the end of the text; or, if
        the field does not close within the limit, the end of the text, the field broken."""
        closing, end = _CLOSING.match(text, pos), len(text)
        # the last character that may close it: the closing quote, or the last one in the text
        last = self._fed + (closing.end() if closing else end) - 1
        if last > self._opened + QUOTED_FIELD_LIMIT:
            self._broken = True
            return end
        if closing is None:
            return end
        if closing.end() == end:
            self._quote_at_end = True
            return end
        self._in_quotes = False
        return closing.end()

    def _break(self, text: str, cut: int, pieces: list[Piece]) -> str:
        """A quoted field opened in the record that ``text`` ends in (at ``cut``, or before
        ``text``) does not close within the limit: the records before it and it, Unterminated,
        go to ``pieces``; the text after it is returned, to be read as records anew."""
        self.quote_never_closed = True
        if cut >= 0:
            pieces.append("".join(self._pending) + text[:cut])
            record = text[cut:]
        else:
            record = "".join(self._pending) + text
        opening = self._opened - (self._fed - len(record))
        line_end = record.find("\n", opening, opening + QUOTED_FIELD_LIMIT) + 1
        stop = line_end or opening + QUOTED_FIELD_LIMIT
        pieces.append(Unterminated(record[:stop]))
        self._pending, self._in_quotes, self._quote_at_end = [], False, False
        self._broken, self._skipping, self._last = False, not line_end, "\n"
        rest = record[stop:]
        self._fed -= len(rest)
        return rest

    def _skip(self, text: str) -> str:
        """Drop the text up to the next line end (a broken record's); the text after it."""
        line_end = text.find("\n") + 1
        if not line_end:
            self._fed += len(text)
            return ""
        self._fed += line_end
        self._skipping, self._last = False, "\n"
        return text[line_end:]

    def _next_opening(self, text: str, pos: int, end: int) -> int:
        """The first quote at the start of a field between two positions, or -1."""
        quote = text.find('"', pos, end)
        while quote >= 0:
            before = text[quote - 1] if quote else self._last
            if before in self._field_starts:
                return quote
            quote = text.find('"', quote + 1, end)
        return -1


@dataclass(slots=True)
class ParsedRow:
    number: int  # the row as a spreadsheet shows it: the header is row 1
    values: list[str]
    undecodable: bool = False
    unterminated: bool = False  # a quoted field opened in it does not close (Unterminated)
    nul: bool = False  # a value holds U+0000


@dataclass
class CsvReader:
    """Feed bytes, get rows: BOM stripped, invalid UTF-8 kept visible (surrogate escapes),
    blank lines skipped, quoted newlines kept inside their field. With ``simple``, a block of
    records that csv would split on the delimiter alone comes as one ``Block`` read by Arrow
    (csvcolumns; just the email column with ``only_email``) instead of ParsedRows."""

    header: Header
    simple: bool = False
    only_email: bool = False
    _decoder: Any = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")("surrogateescape")
    )
    _splitter: RecordSplitter = field(init=False)
    _started: bool = False
    _header_skipped: bool = False
    _number: int = 1

    def __post_init__(self) -> None:
        self._splitter = RecordSplitter(self.header.delimiter)

    @classmethod
    def resumed(cls, header: Header, only_email: bool = False) -> CsvReader:
        """A simple reader of a file from a record's start past the header (its row numbers
        count from there)."""
        reader = cls(header, simple=True, only_email=only_email)
        reader._started = reader._header_skipped = True
        return reader

    def feed(self, data: bytes) -> Iterator[ParsedRow | Block]:
        text = self._decoder.decode(data)
        if not self._started and text:
            text, self._started = text.lstrip("\ufeff"), True
        return self._rows(self._splitter.feed(text))

    @property
    def between_records(self) -> bool:
        """Whether the bytes fed so far end a record (a line end outside quotes)."""
        return self._splitter.between_records

    @property
    def quote_never_closed(self) -> bool:
        """Whether a quoted field of the file did not close within the limit or before the
        file ended (a stray quote, or a file cut short inside a quoted field): its rows were
        read as the rule says, but which rows the file was meant to hold is not known."""
        return self._splitter.quote_never_closed

    def finish(self) -> Iterator[ParsedRow | Block]:
        text = self._decoder.decode(b"", final=True)
        return self._rows(self._splitter.feed(text) + self._splitter.finish())

    def _rows(self, pieces: list[Piece]) -> Iterator[ParsedRow | Block]:
        for piece in pieces:
            if isinstance(piece, Unterminated):
                # csv reads it as one record: the quoted field runs to its end
                line = piece.text.removesuffix("\n").removesuffix("\r")
                yield from self._parsed_rows(line, unterminated=True)
            elif piece:
                yield from self._block_rows(piece)

    def _block_rows(self, block: str) -> Iterator[ParsedRow | Block]:
        if not self._header_skipped and self.simple:
            header_end = block.find("\n") + 1
            line = block[:header_end].removesuffix("\n").removesuffix("\r")
            if header_end and '"' not in line and "\r" not in line:  # where csv ends it too
                block, self._header_skipped = block[header_end:], True
        if self._header_skipped and self.simple:
            read = self._block(block)
            if read is not None:
                yield read
                return
        yield from self._parsed_rows(block)

    def _block(self, block: str) -> Block | None:
        # imported here: the web checks headers, and Arrow would cost it 50 MB it never uses
        from listmill.csvcolumns import read_block, simple_block

        delimiter, columns = self.header.delimiter, len(self.header.columns)
        if not simple_block(block, delimiter, columns):
            return None
        only = self.header.email_index if self.only_email else None
        simple = read_block(block, delimiter, columns, self._number + 1, only)
        if simple is not None:
            self._number += len(simple)
        return simple

    def _parsed_rows(self, block: str, unterminated: bool = False) -> Iterator[ParsedRow]:
        """csv's rows of the block; with ``unterminated``, its last one is (csv ends it at the
        block's end; a carriage return alone before the quote ends a record too)."""
        # invalid UTF-8 and NUL characters are rare: rows are looked at only if the block has any
        suspect, nul = _has_surrogates(block), "\x00" in block
        reader = csv.reader(io.StringIO(block, newline=""), delimiter=self.header.delimiter)
        records: Iterable[list[str]] = reader
        last = -1  # the index of the record a quote never closed in
        if unterminated:  # (the piece is at most a quoted field's limit long)
            records = listed = list(reader)
            last = len(listed) - 1
        for index, values in enumerate(records):
            if not self._header_skipped:
                self._header_skipped = True
                continue
            self._number += 1
            broken = index == last
            if not broken and not "".join(values).strip():  # a blank line
                continue
            row = ParsedRow(self._number, values, unterminated=broken)
            if suspect or nul:  # in the values read (others are ignored)
                read = [values[i] for i in self.header.used if i < len(values)]
                row.undecodable = suspect and any(_has_surrogates(v) for v in read)
                row.nul = nul and any("\x00" in v for v in read)
            yield row


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
    email_normalized: str | None = None  # when the email itself is valid: the row's person


def _row_problem(row: ParsedRow) -> tuple[str, str] | None:
    if row.undecodable:
        return (
            "invalid_encoding",
            "the row has bytes that are no text in the file's charset"
            " (UTF-8, unless its upload declared another)",
        )
    if row.unterminated:
        return (
            "unterminated_quote",
            f"a quoted field in this row is not closed within {QUOTED_FIELD_LIMIT:,} characters"
            " or before the file ends: the row ends with the line that quote opened on, and the"
            " next line is the next row",
        )
    return None


def email_key(header: Header, row: ParsedRow) -> str:
    """What the row's email becomes once normalised, if it is valid (see normalize_email):
    two rows of one person have the same key, whatever else is wrong with either."""
    index = header.email_index
    return trim_email(row.values[index]).lower() if index < len(row.values) else ""


def contact_from_row(header: Header, row: ParsedRow) -> dict[str, Any] | RowError:
    """A normalised contact, or the reason the row is an error row."""
    raw_email = row.values[header.email_index] if header.email_index < len(row.values) else ""
    problem = _row_problem(row)
    try:
        email, normalized = normalize_email(raw_email)
    except ValueError as exc:
        shown = raw_email.strip()[:320].replace("\x00", "\ufffd")  # text Postgres can hold
        shown_email = shown.encode("utf-8", "replace").decode() or None
        code, message = problem or ("invalid_email", str(exc))
        return RowError(row.number, shown_email, code, message)
    if problem:
        return RowError(row.number, email, *problem, normalized)
    contact: dict[str, Any] = {"email": email, "email_normalized": normalized}
    values = row.values
    if row.nul or max(map(len, values)) > MAX_FIELD_LENGTH:
        return _checked_contact(header, row, contact)
    # the common row, whose every value is within every limit: only its columns are looked at
    count = len(values)
    for index, target in header.fields:
        if index < count and (value := values[index].strip()):
            contact[target] = value
    contact["data"] = {
        column: value
        for index, column in header.custom
        if index < count and (value := values[index].strip())
    }
    return contact


def _checked_contact(
    header: Header, row: ParsedRow, contact: dict[str, Any]
) -> dict[str, Any] | RowError:
    """contact_from_row for a row with a long value or a NUL: each value is checked, in
    column order, and the first one past its limit makes the row an error row."""
    email, normalized = contact["email"], contact["email_normalized"]
    data: dict[str, str] = {}
    for column, target, value in zip(header.columns, header.mapping, row.values, strict=False):
        value = value.strip()
        if target == "email" or not value or not (target or column):  # (unnamed: ignored)
            continue
        limit = MAX_FIELD_LENGTH if target else MAX_CUSTOM_VALUE
        if len(value) > limit or "\x00" in value:
            message = f"{column} is longer than {limit} characters or holds a NUL character"
            return RowError(row.number, email, "invalid_field", message, normalized)
        if target:
            contact[target] = value
        elif column:
            data[column] = value
    contact["data"] = data
    return contact
