"""The import's fast path: SPEC §6's rules applied a column at a time, by Arrow.

A block of records with no control character (but its line ends), no whitespace that
``str.strip()`` removes besides the space, no byte that was not UTF-8, no blank line, one record
a line and the header's number of fields on every line is one that Arrow's CSV reader reads as
``csv.reader`` does, quoted fields (doubled quotes, delimiters inside) included: such a block
(``simple_block``) is parsed by Arrow, and its rows are validated column by column; its new
contacts go to ``COPY`` in its text format without a Python object per row. A row whose email
has an unusual shape, or with a value past its limit, is handed back as a ``ParsedRow`` for the
row-by-row rules of ``csvimport``; what comes out is the same, row for row, as if every row had
gone that way (tests/unit/test_csvcolumns.py compares them)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from listmill.keyhash import text_hashes
from listmill.validation import (
    INVISIBLE,
    MAX_EMAIL_LENGTH,
    MAX_FIELD_LENGTH,
    MAX_LOCAL_PART,
    SPECIAL_TLDS,
)

CONTACT_FIELDS = ("first_name", "last_name", "country", "time_zone")

if TYPE_CHECKING:
    from listmill.csvimport import Header

# what str.strip() removes, but the space, the tab and the line ends (the tab is the delimiter
# or refused; line ends end records): checked against str.isspace by the tests
_OTHER_WHITESPACE = (
    "\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
)
# a simple block's only whitespace (a tab only where it is the delimiter, inside quotes)
_WHITESPACE = " \t"
# how Postgres escapes a character in a jsonb's text (others below the space as \u00XX)
_JSONB_ESCAPES = {
    '"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
}  # fmt: skip
# what a simple block's value may hold that JSON text must escape (the other control
# characters are refused), the backslash first
_JSON_ESCAPES = tuple((char, _JSONB_ESCAPES[char]) for char in '\\"\t')
# the common shape of an address, as validation._COMMON (which the tests compare it with)
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
COMMON_EMAIL = (
    rf"^[a-z0-9!#$%&'*+/=?^_`{{|}}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{{|}}~-]+)*"
    rf"@(?:{_LABEL}\.)+[a-z]{{2,63}}$"
)
_SPECIAL_TLD = r"\.(?:" + "|".join(sorted(SPECIAL_TLDS)) + r")$"
# a contact's columns in its line (Contacts.lines, queries.contacts.copy_lines)
LINE_COLUMNS = ("email_normalized", "first_name", "last_name", "country", "time_zone", "data")
LINE_HASH = "line_hash"  # Contacts.hashed's columns: the hash, and the line hashed
LINE = "line"
# the columns of a contact a block's fast rows become (see Contacts)
CONTACT_COLUMNS = (
    "email", "email_normalized", "first_name", "last_name", "country", "time_zone", "data",
)  # fmt: skip


def _give_memory_back() -> None:
    """Arrow's allocator gives freed memory back to the system at once: with its default one
    (mimalloc, which keeps it) a worker's RSS grew by 120-150 MB over a 1,000,000-row import
    whose Arrow data never passed 15 MB at a time; with this, by about 90 MB in all."""
    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
        pa.jemalloc_set_decay_ms(0)
    except NotImplementedError:  # a pyarrow built without jemalloc
        pass


_give_memory_back()


@cache
def _refused(delimiter: str) -> re.Pattern[str]:
    """A character that makes a block go row by row: a control character but the line ends
    (and the tab unless it is the delimiter), other whitespace, a character an email is
    trimmed of besides (validation.INVISIBLE), or a lone surrogate (bytes that were not
    UTF-8)."""
    tab = "" if delimiter == "\t" else "\t"
    return re.compile(f"[\x00-\x08\x0e-\x1f{tab}{_OTHER_WHITESPACE}{INVISIBLE}\ud800-\udfff]")


@cache
def _blank_line(delimiter: str) -> re.Pattern[str]:
    """A line of nothing but spaces, delimiters and quoted spaces or tabs (csv's blank
    line), after the first; a quoted field of doubled quotes may look like one (the block
    then goes row by row, as it may)."""
    return re.compile(rf'\n(?:[ {re.escape(delimiter)}]|"[ \t]*")*\r?\n')


def simple_block(text: str, delimiter: str, columns: int) -> bool:
    """Whether csv would read ``text`` (whole records) as Arrow does: see the module's
    docstring. A block with quotes is told by read_block (a quoted line end, a short line)."""
    if not text.endswith("\n") or text.startswith("\ufeff"):  # Arrow drops a leading BOM
        return False
    if text.isascii():
        return _simple_ascii(np.frombuffer(text.encode(), dtype=np.uint8), delimiter, columns)
    return _simple_text(text, delimiter, columns)


def _simple_text(text: str, delimiter: str, columns: int) -> bool:
    if '"' not in text and text.count(delimiter) != text.count("\n") * (columns - 1):
        return False
    if "\r" in text and text.count("\r") != text.count("\r\n"):
        return False  # a carriage return that does not end a line ends a record for csv
    if _refused(delimiter).search(text):
        return False
    return not _has_blank_line(text, delimiter)


def _simple_ascii(block: np.ndarray[Any, Any], delimiter: str, columns: int) -> bool:
    """simple_block for an ASCII block, from counts of its bytes (in less than half the time)."""

    def count(char: str) -> int:
        return int(np.count_nonzero(block == ord(char)))

    ends = block == ord("\n")
    lines, returns, quoted = int(np.count_nonzero(ends)), count("\r"), count('"') > 0
    if not quoted and count(delimiter) != lines * (columns - 1):
        return False
    if returns and returns != int(np.count_nonzero(block[1:][block[:-1] == ord("\r")] == 10)):
        return False  # a carriage return that does not end a line ends a record for csv
    # the ASCII characters _refused matches are the control ones but these (tests check it)
    allowed = lines + returns + (count("\t") if delimiter == "\t" else 0)
    if int(np.count_nonzero(block < 0x20)) != allowed:
        return False
    # a blank line begins with one of these: else there is none, and no need to look
    starts = block[1:][ends[:-1]]
    begins = np.frombuffer(f' "\r\n{delimiter}'.encode(), dtype=np.uint8)
    if not np.isin(starts, begins).any() and not np.isin(block[:1], begins).any():
        return True
    return not _has_blank_line(block.tobytes().decode("ascii"), delimiter)


def _has_blank_line(text: str, delimiter: str) -> bool:
    blank = _blank_line(delimiter)
    return bool(blank.search(text) or blank.match("\n" + text))


@dataclass(frozen=True)
class Block:
    """A simple block's rows: their values, one string column per header column (``c0``,
    ``c1``, …), untrimmed; the row number of the first (the header is row 1)."""

    first_number: int
    table: pa.Table

    def __len__(self) -> int:
        return int(self.table.num_rows)


def read_block(
    text: str, delimiter: str, columns: int, first_number: int, only: int | None = None
) -> Block | None:
    """A simple block read by Arrow (just column ``only`` if given); None if a line has
    another number of fields than the header, or a quoted value holds a line end (a record
    over several lines, whose value JSON and the row numbers would take otherwise)."""
    names = [f"c{i}" for i in range(columns)]
    quoted = '"' in text
    try:
        table = pacsv.read_csv(
            pa.py_buffer(text.encode()),
            read_options=pacsv.ReadOptions(
                column_names=names, use_threads=False, block_size=1 << 26
            ),
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter,
                quote_char='"' if quoted else False,
                double_quote=True,
                escape_char=False,
                newlines_in_values=quoted,
                ignore_empty_lines=False,
            ),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()),
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
                include_columns=None if only is None else [names[only]],
            ),
        )
    except pa.ArrowInvalid:
        return None
    if quoted and table.num_rows != text.count("\n"):
        return None
    return Block(first_number, table)


def _positions(first: int, count: int) -> pa.Array:
    return pa.array(np.arange(first, first + count, dtype=np.int64))


@dataclass(frozen=True)
class Columns:
    """A simple block's rows, in file order: ``numbers`` (as a spreadsheet shows them),
    ``fast`` (whether the fast checks passed), ``contacts`` (the contact of each row, see
    CONTACT_COLUMNS; meaningless where not fast) and ``raw`` (the values as read)."""

    numbers: pa.Array
    fast: pa.Array
    contacts: pa.Table
    raw: pa.Table

    def __len__(self) -> int:
        return len(self.numbers)

    def slice(self, start: int, stop: int) -> Columns:
        length = stop - start
        return Columns(
            self.numbers.slice(start, length),
            self.fast.slice(start, length),
            self.contacts.slice(start, length),
            self.raw.slice(start, length),
        )

    def fast_contacts(self, first_position: int) -> Contacts:
        """The rows that passed, with their position (``first_position`` is the first row's)."""
        table = self.contacts.append_column("position", _positions(first_position, len(self)))
        table = table.append_column("row_number", self.numbers)
        if not pc.all(self.fast).as_py():  # (in most blocks every row is: no copy then)
            table = table.filter(self.fast)
        return Contacts(table)

    def slow_rows(self) -> Iterator[tuple[int, int, list[str]]]:
        """(index, row number, values) of the rows that go row by row."""
        slow = pc.indices_nonzero(pc.invert(self.fast)).to_pylist()
        if not slow:
            return
        numbers = self.numbers.take(slow).to_pylist()
        values = zip(*(column.to_pylist() for column in self.raw.take(slow).columns), strict=True)
        for index, number, row in zip(slow, numbers, values, strict=True):
            yield index, number, list(row)


def columns_of(header: Header, block: Block) -> Columns:
    """Validate a simple block's rows column by column (SPEC §6, as contact_from_row does:
    values trimmed, email lower-cased for its identity, blank fields left out)."""
    table = block.table
    raw = [table.column(i) for i in range(table.num_columns)]
    values = [pc.utf8_trim(column, _WHITESPACE) for column in raw]
    email = values[header.email_index]
    normalized = pc.ascii_lower(email)  # str.lower() where the shape below holds (ASCII)
    fast = _all(
        [
            pc.match_substring_regex(normalized, COMMON_EMAIL),
            _local_part_within(normalized),
            pc.invert(pc.match_substring_regex(normalized, _SPECIAL_TLD)),
            pc.invert(pc.match_substring(normalized, "--")),  # (for email-validator to judge)
            _within(email, MAX_EMAIL_LENGTH),
            *(_within(column, MAX_FIELD_LENGTH) for column in raw),
        ]
    )
    index_of = {target: index for index, target in header.fields}
    fields = {
        name: _blank_as_null(values[index_of[name]])
        if name in index_of
        else pa.nulls(len(block), pa.string())
        for name in CONTACT_FIELDS
    }
    contacts = pa.table(
        {"email": email, "email_normalized": normalized, **fields, "data": _data(header, values)}
    )
    numbers = _positions(block.first_number, len(block))
    return Columns(numbers, fast, contacts, table)


def block_email_keys(block: Block) -> Any:
    """The email key (csvimport.email_key: trimmed, lower-cased) of each row of a block read
    with its email column only: an Arrow array, or a list where a key is not ASCII (whose
    lower case is Python's own)."""
    keys = pc.utf8_trim(block.table.column(0), _WHITESPACE)
    if pc.all(pc.string_is_ascii(keys)).as_py() is not False:
        return pc.ascii_lower(keys)
    return [key.lower() for key in keys.to_pylist()]


# Arrow scalars of the constants its functions are given: pyarrow makes one of a Python value
# at each call, and looks for dateutil each time (34 µs where it is not installed: a fifth of
# a chunk's validation, with the GIL held)
_TRUE = pa.scalar(True)
_NO_TEXT = pa.scalar(None, pa.string())
_ZERO = pa.scalar(0, pa.int32())


@lru_cache(maxsize=1024)
def _text(value: str) -> pa.Scalar:
    """A constant text as an Arrow scalar, made once (see _TRUE)."""
    return pa.scalar(value, pa.string())


def _within(values: Any, limit: int) -> Any:
    """Whether each value has at most ``limit`` characters: counted only if one has more
    bytes than that (its byte length is known at once, its characters take a pass)."""
    if (pc.max(pc.binary_length(values)).as_py() or 0) <= limit:
        return _TRUE
    return pc.less_equal(pc.utf8_length(values), limit)


def _local_part_within(emails: Any) -> Any:
    """Whether each email's local part (before its @) has at most MAX_LOCAL_PART characters:
    looked for only where an email is long enough to have a longer one (the domain of the
    common shape has four characters at least)."""
    if (pc.max(pc.binary_length(emails)).as_py() or 0) <= MAX_LOCAL_PART + len("@a.bc"):
        return _TRUE
    return pc.less_equal(pc.find_substring(emails, "@"), MAX_LOCAL_PART)


def _all(masks: Any) -> Any:
    result = None
    for mask in masks:
        result = mask if result is None else pc.and_(result, mask)
    return result


def _blank_as_null(values: Any) -> Any:
    return pc.if_else(pc.equal(values, _text("")), _NO_TEXT, values)


def _data(header: Header, values: list[Any]) -> Any:
    """The custom columns' non-blank values as a JSON object, one text per row, written as
    Postgres writes the jsonb of it (keys by length, then bytes; ", " and ": "), so that a
    contact's line (Contacts.lines) is the one Postgres gives for it once stored. One join
    makes it: before each value that is there, its key, after the closing quote of the value
    before if there is one (which of a row's values are blank differs from row to row)."""
    if not header.custom:
        return pa.repeat("{}", len(values[header.email_index]))
    pieces: list[Any] = [_text("{")]
    earlier: Any = False  # whether a row has a value in a column before: a mask, or for all
    for index, column in sorted(header.custom, key=lambda custom: _jsonb_order(custom[1])):
        value = values[index]
        key = f"{jsonb_string(column)}: " + '"'
        present = _all_or_none(pc.greater(pc.binary_length(value), _ZERO))
        pieces.append(_choose(present, _choose(earlier, _text('", ' + key), _text(key)), _text("")))
        pieces.append(_escaped(value, _JSON_ESCAPES))
        earlier = _or(earlier, present)
    pieces.append(_choose(earlier, _text('"}'), _text("}")))
    return pc.binary_join_element_wise(*pieces, _text(""))


def _all_or_none(mask: Any) -> Any:
    """True or False if the mask is that throughout, else the mask."""
    if pc.all(mask).as_py() is not False:
        return True
    return False if not pc.any(mask).as_py() else mask


def _choose(mask: Any, if_true: Any, if_false: Any) -> Any:
    """pc.if_else, where the mask may be one for all rows."""
    if mask is True or mask is False:
        return if_true if mask else if_false
    return pc.if_else(mask, if_true, if_false)


def _or(left: Any, right: Any) -> Any:
    """pc.or_, where either mask may be one for all rows."""
    if left is True or right is True:
        return True
    if left is False or right is False:
        return right if left is False else left
    return pc.or_(left, right)


# what COPY's text format escapes: the backslash, the tab and line ends (which only rows parsed
# one by one may hold: a fast row holds no control character but the tab)
_COPY_ESCAPES = (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r"))


def _escaped(values: Any, escapes: Sequence[tuple[str, str]]) -> Any:
    """The values with these (ASCII) characters escaped; an escape is skipped where no value
    holds the character (most columns hold none: a replace is a pass over every value)."""
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    data = [np.frombuffer(c.buffers()[2], dtype=np.uint8) for c in chunks if c.buffers()[2]]
    for char, escape in escapes:
        if any((bytes_ == ord(char)).any() for bytes_ in data):
            values = pc.replace_substring(values, char, escape)
    return values


def jsonb_text(data: dict[str, str]) -> str:
    """A row's data as Postgres writes the jsonb of it (as _data does, a row at a time)."""
    keys = sorted(data, key=_jsonb_order)
    return "{" + ", ".join(f"{jsonb_string(k)}: {jsonb_string(data[k])}" for k in keys) + "}"


def _jsonb_order(key: str) -> tuple[int, bytes]:
    """Where a jsonb puts a key: by its length in bytes, then its bytes."""
    raw = key.encode()
    return len(raw), raw


def jsonb_string(text: str) -> str:
    """``text`` as a JSON string, escaped as Postgres writes it in a jsonb's text."""
    escaped = (
        _JSONB_ESCAPES.get(char) or (f"\\u{ord(char):04x}" if char < " " else char) for char in text
    )
    return '"' + "".join(escaped) + '"'


@dataclass(frozen=True)
class Contacts:
    """Valid rows of simple blocks, column-wise: CONTACT_COLUMNS, ``position`` and
    ``row_number``; ``data`` is JSON text. ``text``: their copy_text, if made ahead."""

    table: pa.Table
    text: memoryview | None = None

    def __len__(self) -> int:
        return int(self.table.num_rows)

    def column(self, name: str) -> list[Any]:
        return self.table.column(name).to_pylist()  # type: ignore[no-any-return]

    def where(self, mask: Sequence[bool] | np.ndarray[Any, Any]) -> Contacts:
        return Contacts(self.table.filter(pa.array(mask, pa.bool_())))

    def rows(self) -> Iterator[tuple[Any, ...]]:
        """(position, row_number, email, email_normalized, first_name, last_name, country,
        time_zone, data as a dict) of each row."""
        names = ("position", "row_number", *CONTACT_COLUMNS)
        for row in zip(*(self.column(name) for name in names), strict=True):
            yield (*row[:-1], orjson.loads(row[-1]))

    def lines(self) -> pa.Array:
        """Each row as Postgres writes its contact in COPY's text format (LINE_COLUMNS): for
        fast rows, whose values hold no control character COPY would write as an escape but
        the tab, and whose data is written as Postgres writes it (_data)."""
        return self._text_format(LINE_COLUMNS)

    def hashed(self) -> Contacts:
        """These rows with the hash of each one's line (``line_hash``): COPYed in with its
        contact, for a later import to compare its rows with (knowncontacts)."""
        lines = self.lines()
        table = self.table.drop_columns(
            [c for c in (LINE, LINE_HASH) if c in self.table.column_names]
        )
        table = table.append_column(LINE, lines)  # (copy_text's, then)
        return Contacts(table.append_column(LINE_HASH, pa.array(text_hashes(lines), pa.int64())))

    def line_hashes(self) -> np.ndarray[Any, Any]:
        """The rows' line hashes (``hashed``)."""
        return self.table.column(LINE_HASH).to_numpy()  # type: ignore[no-any-return]

    def ahead(self, project_id: int) -> Contacts:
        """These rows with their copy_text made now (by the parsing task, while the batch
        before is written)."""
        return Contacts(self.table, self.copy_text(project_id))

    def copy_text(self, project_id: int) -> memoryview:
        """The rows in COPY's text format (CONTACT_COLUMNS, the line hash if ``hashed``, then
        project_id: queries.contacts.NEW_COLUMNS), sorted by email (an index fills fastest in
        key order)."""
        if self.text is not None:
            return self.text
        if not len(self):
            return memoryview(b"")
        names = self.table.column_names
        if LINE in names and self.table.column(LINE).null_count == 0:  # all of them hashed
            lines = self._hashed_text_format(project_id)
        elif LINE_HASH in names:
            lines = self._text_format((*CONTACT_COLUMNS, LINE_HASH), f"{project_id}\n")
        else:
            lines = self._text_format(CONTACT_COLUMNS, "\\N", f"{project_id}\n")
        lines = lines.take(pc.sort_indices(self.table.column("email_normalized")))
        _, offsets, data = lines.buffers()  # the lines one after another: the text
        at = np.frombuffer(offsets, dtype=np.int32)
        first, last = int(at[lines.offset]), int(at[lines.offset + len(lines)])
        return memoryview(data.slice(first, last - first))  # (no copy)

    def _hashed_text_format(self, project_id: int) -> pa.Array:
        """_text_format of NEW_COLUMNS for hashed rows: the email as given, then the line
        (the other CONTACT_COLUMNS, made for the hash), its hash and the project id."""
        email = _escaped(self.table.column("email"), _COPY_ESCAPES)  # (never null)
        hashes = self.table.column(LINE_HASH).cast(pa.string())
        line = pc.binary_join_element_wise(
            email, self.table.column(LINE), hashes, _text(f"{project_id}\n"), _text("\t")
        )
        return line.combine_chunks() if isinstance(line, pa.ChunkedArray) else line

    def _text_format(self, names: Sequence[str], *last: str) -> pa.Array:
        """A line of COPY's text format a row: these columns escaped, NULL as \\N, tabs
        between, and then ``last`` as one more value (copy_text's project id and line end)."""
        columns = [_as_text(self.table.column(name)) for name in names]
        values = [pc.fill_null(_escaped(column, _COPY_ESCAPES), _text("\\N")) for column in columns]
        line = pc.binary_join_element_wise(*values, *map(_text, last), _text("\t"))
        return line.combine_chunks() if isinstance(line, pa.ChunkedArray) else line


def _as_text(values: Any) -> Any:
    return values if pa.types.is_string(values.type) else values.cast(pa.string())


def contacts_of(rows: Sequence[Sequence[Any]]) -> Contacts:
    """Rows parsed one by one, as Contacts.rows gives them: (position, row_number, email,
    email_normalized, first_name, last_name, country, time_zone, data as a dict)."""
    position, row_number, *values, data = list(zip(*rows, strict=True)) or [()] * 9
    texts = zip(CONTACT_COLUMNS[:-1], values, strict=True)  # all but data
    arrays = {name: pa.array(column, pa.string()) for name, column in texts}
    arrays["data"] = pa.array([jsonb_text(d) for d in data], pa.string())
    arrays["position"] = pa.array(position, pa.int64())
    arrays["row_number"] = pa.array(row_number, pa.int64())
    return Contacts(pa.table(arrays))


def concat(parts: list[Contacts]) -> Contacts:
    if len(parts) == 1:
        return parts[0]  # with its copy_text if made ahead
    if not parts:
        schema = pa.schema(
            [(name, pa.string()) for name in CONTACT_COLUMNS]
            + [("position", pa.int64()), ("row_number", pa.int64())]
        )
        return Contacts(schema.empty_table())
    # (parts not hashed have no line hashes: null)
    return Contacts(pa.concat_tables([part.table for part in parts], promote_options="default"))
