"""The CSV rules on real-world shapes, fed in chunks of every size."""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from listmill import csvimport
from listmill.csvcolumns import Block
from listmill.csvimport import (
    PAST_FIRST_CHUNK,
    QUOTED_FIELD_LIMIT,
    CsvReader,
    HeaderError,
    ParsedRow,
    Piece,
    RowError,
    Unterminated,
    contact_from_row,
    read_header,
)


def parse(data: bytes, chunk: int = 7) -> list[ParsedRow]:
    reader = CsvReader(read_header(data[:4096]))
    rows: list[ParsedRow] = []
    for start in range(0, len(data), chunk):
        rows += reader.feed(data[start : start + chunk])
    return rows + list(reader.finish())


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 10_000])
def test_quoted_newlines_quotes_crlf_and_bom_across_chunks(chunk: int) -> None:
    data = (
        b"\xef\xbb\xbfemail,first_name,notes\r\n"
        b'a@example.com,Ann,"line one\r\nline ""two"""\r\n'
        b"\r\n"
        b'b@example.com,"Bo, Jr",plain\r\n'
    )
    rows = parse(data, chunk)
    assert [r.values for r in rows] == [
        ["a@example.com", "Ann", 'line one\r\nline "two"'],
        ["b@example.com", "Bo, Jr", "plain"],
    ]
    assert [r.number for r in rows] == [2, 4]  # as a spreadsheet numbers them


@given(
    body=st.text(alphabet='a,"\n\r', max_size=200),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8),
    limit=st.sampled_from([3, 10, QUOTED_FIELD_LIMIT]),
)
def test_any_chunking_gives_the_rows_of_the_whole_text(
    body: str, cuts: list[int], limit: int
) -> None:
    """csv's rows of the text's records (csvimport.RecordSplitter); a record whose quote does
    not close is one row, however the text reads after it."""
    data = ("email\n" + body).encode()
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(csvimport, "QUOTED_FIELD_LIMIT", limit)
        reader = CsvReader(read_header(data))
        rows: list[ParsedRow] = []
        bounds = [0, *sorted(cuts), len(data)]
        for start, end in itertools.pairwise(bounds):
            rows += reader.feed(data[start:end])
        rows += reader.finish()
    expected = []
    for text, broken in _joined(reference_pieces(body, ",", limit)):
        line = text.removesuffix("\n").removesuffix("\r") if broken else text
        records = list(csv.reader(io.StringIO(line, newline="")))
        *ended, last = records if broken else [*records, None]
        expected += [(v, False) for v in ended if "".join(v).strip()]
        expected += [(last, True)] if last is not None else []
    assert [(r.values, r.unterminated) for r in rows] == expected


@pytest.mark.parametrize(
    ("delimiter", "header"), [(";", b"Email Address;Vorname"), ("\t", b"E-Mail\tfirst")]
)
def test_delimiter_is_sniffed_and_aliases_map(delimiter: str, header: bytes) -> None:
    parsed = read_header(header + b"\n")
    assert parsed.delimiter == delimiter
    assert parsed.mapping[0] == "email"


def test_header_errors() -> None:
    for data, message in (
        (b"", "empty"),
        (b"   \n", "empty"),
        (b"name,phone\nx,1\n", "no email column"),
        (b"email,\x00\x01\x02", "not text"),
        (b"email,e-mail\n", "same contact field twice"),
        (b"\xef\xbb\xbf", "empty"),
        (b"\xef\xbb\xbf \r\n", "empty"),
        (("email," + ",".join(f"c{i}" for i in range(101)) + "\n").encode(), "than 100 custom"),
    ):
        with pytest.raises(HeaderError, match=message):
            read_header(data)
    hundred = read_header(("email," + ",".join(f"c{i}" for i in range(100)) + "\n").encode())
    assert len(hundred.custom) == 100


def test_rows_become_contacts_or_error_rows() -> None:
    header = read_header(b"Email,First Name,Country,Plan,Seats\n")
    ok = contact_from_row(header, ParsedRow(2, [" Ann@Example.COM ", "Ann", "GB", "pro", ""]))
    assert ok == {
        "email": "Ann@Example.COM", "email_normalized": "ann@example.com",
        "first_name": "Ann", "country": "GB", "data": {"Plan": "pro"},
    }  # fmt: skip
    ragged = contact_from_row(header, ParsedRow(3, ["b@example.com"]))
    assert isinstance(ragged, dict) and ragged["data"] == {}
    for values, code in (
        (["not-an-email"], "invalid_email"),
        ([""], "invalid_email"),
        (["x" * 250 + "@example.com"], "invalid_email"),
        (["c@example.com", "y" * 300], "invalid_field"),
    ):
        error = contact_from_row(header, ParsedRow(4, values))
        assert isinstance(error, RowError) and error.code == code and error.number == 4


def test_invalid_utf8_is_an_error_row_not_a_crash() -> None:
    rows = parse(b"email,name\nd@example.com,Jos\xe9\ne@example.com,ok\n")
    header = read_header(b"email,name\n")
    first = contact_from_row(header, rows[0])
    assert isinstance(first, RowError) and first.code == "invalid_encoding"
    assert isinstance(contact_from_row(header, rows[1]), dict)


@pytest.mark.parametrize("chunk", [1, 5, 64, 10_000])
def test_a_quote_inside_an_unquoted_field_is_text_not_the_start_of_a_quoted_field(
    chunk: int,
) -> None:
    data = b'email,size,notes\na@example.com,5" screen,"one\ntwo"\nb@example.com,x,y\nbad,z,w\n'
    rows = parse(data, chunk)
    assert [(r.number, r.values) for r in rows] == [
        (2, ["a@example.com", '5" screen', "one\ntwo"]),
        (3, ["b@example.com", "x", "y"]),
        (4, ["bad", "z", "w"]),
    ]


@pytest.mark.parametrize("chunk", [1, 4, 10_000])
def test_a_quote_never_closed_is_an_error_row_and_the_next_line_the_next_row(chunk: int) -> None:
    header = read_header(b"email,first_name\n")
    data = b'email,first_name\na@example.com,A\nb@example.com,"B\r\nc@example.com,C\n'
    rows = parse(data, chunk)
    assert [(r.number, r.values, r.unterminated) for r in rows] == [
        (2, ["a@example.com", "A"], False),
        (3, ["b@example.com", "B"], True),  # up to its line end, without it
        (4, ["c@example.com", "C"], False),
    ]
    lone = parse(b'email,first_name\n"\n', chunk)  # a lone quote is no blank line
    assert [(r.number, r.values, r.unterminated) for r in lone] == [(2, [""], True)]
    error = contact_from_row(header, rows[1])
    assert isinstance(error, RowError) and error.code == "unterminated_quote"
    assert error.number == 3 and error.email == "b@example.com"
    assert isinstance(contact_from_row(header, rows[2]), dict)


def test_a_stray_quote_in_a_large_file_holds_at_most_the_limit() -> None:
    """The quote in row 2 would close in the last row: every row between is a row of its own,
    and the reader never holds more than the limit and a chunk of text."""
    rows = b"".join(b"u%d@example.com,First %d\n" % (i, i) for i in range(200_000))
    data = b'email,first_name\na@example.com,"Ann\n' + rows + b'z@example.com,Zed"\n'
    reader, chunk, held, numbers = CsvReader(read_header(data[:4096]), simple=True), 65536, 0, []
    for start in range(0, len(data), chunk):
        numbers += _numbers(reader.feed(data[start : start + chunk]))
        held = max(held, len("".join(reader._splitter._pending)))
    numbers += _numbers(reader.finish())
    assert len(data) > 5 * QUOTED_FIELD_LIMIT and held <= QUOTED_FIELD_LIMIT + chunk
    assert numbers == [2, *range(3, 200_003), 200_003]


def _numbers(rows: Iterator[ParsedRow | Block]) -> list[int]:
    numbers: list[int] = []
    for row in rows:
        first = row.first_number if isinstance(row, Block) else row.number
        numbers += range(first, first + (len(row) if isinstance(row, Block) else 1))
    return numbers


def reference_pieces(text: str, delimiter: str, limit: int) -> list[tuple[str, bool]]:
    """The records of a text read character by character, as the rule says: a quote at the
    start of a field opens a quoted field, which the next quote that is not doubled closes if
    that quote lies at most ``limit`` characters past the opening one. If none does, the
    record is broken: it ends at the first line end within the limit past the opening quote,
    or at the limit, and then the rest of that line is dropped. Each piece is (text, broken)."""
    pieces: list[tuple[str, bool]] = []
    start = i = 0
    opened: int | None = None
    while True:
        if opened is not None and (i >= len(text) or i > opened + limit):
            line_end = text.find("\n", opened, opened + limit)
            stop = line_end + 1 if line_end >= 0 else opened + limit
            pieces.append((text[start:stop], True))
            i = stop if line_end >= 0 else text.find("\n", stop) + 1 or len(text)
            start, opened = i, None
            continue
        if i >= len(text):
            break
        c = text[i]
        if opened is not None:
            if c == '"' and text[i + 1 : i + 2] == '"':
                i += 1  # a doubled quote
            elif c == '"':
                opened = None
        elif c == '"' and (i == start or text[i - 1] in (delimiter, "\n", "\r")):
            opened = i
        elif c == "\n":
            pieces.append((text[start : i + 1], False))
            start = i + 1
        i += 1
    if start < len(text):
        pieces.append((text[start:], False))
    return pieces


def _joined(pieces: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    """Records next to each other joined, unless broken; no empty piece."""
    joined: list[tuple[str, bool]] = []
    for text, broken in pieces:
        if joined and not broken and not joined[-1][1]:
            joined[-1] = (joined[-1][0] + text, False)
        elif text or broken:
            joined.append((text, broken))
    return joined


@given(
    body=st.text(alphabet='a;"\n\r', max_size=120),
    cuts=st.lists(st.integers(min_value=0, max_value=120), max_size=8),
    limit=st.integers(min_value=1, max_value=12),
)
def test_records_are_the_rules_whatever_the_chunking(
    body: str, cuts: list[int], limit: int
) -> None:
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(csvimport, "QUOTED_FIELD_LIMIT", limit)
        splitter = csvimport.RecordSplitter(";")
        pieces: list[Piece] = []
        for start, end in itertools.pairwise([0, *sorted(cuts), len(body)]):
            pieces += splitter.feed(body[start:end])
        pieces += splitter.finish()
    found = [(p.text, True) if isinstance(p, Unterminated) else (p, False) for p in pieces]
    expected = _joined(reference_pieces(body, ";", limit))
    assert _joined(found) == expected
    assert splitter.quote_never_closed == any(broken for _, broken in expected)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 10_000])
def test_whether_a_quote_never_closed_is_told_whatever_the_chunking(chunk: int) -> None:
    """A mirror import unsubscribes nobody if a quote of the file never closed: it must be
    told so for a file cut short inside a quoted field past the limit, one whose broken line
    runs to the file's end (line ends the reader does not cut at: carriage returns alone),
    and one whose doubled quote past the limit is split from its first half."""
    files = [
        b'email,n\na@x.io,"line one\nline two\nb@x.io,line three',
        b'email,n\na@x.io,"1\rb@x.io,2\rc@x.io,3\rd@x.io,4\re@x.io,5\r',
        b'email,n\na@x.io,"xy""',
    ]
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(csvimport, "QUOTED_FIELD_LIMIT", 5)
        for data in files:
            reader = CsvReader(read_header(data), simple=True)
            rows: list[ParsedRow | Block] = []
            for start in range(0, len(data), chunk):
                rows += reader.feed(data[start : start + chunk])
            rows += reader.finish()
            assert reader.quote_never_closed, data
            assert any(isinstance(r, ParsedRow) and r.unterminated for r in rows), data
        clean = b'email,n\na@x.io,"1\n2"\nb@x.io,"x""y"\n'
        reader = CsvReader(read_header(clean), simple=True)
        list(reader.feed(clean))
        list(reader.finish())
        assert not reader.quote_never_closed


def test_a_header_whose_quoted_name_is_past_the_limit_is_refused() -> None:
    """The reader would break the name's field; the header check refuses it first (it can
    end within the first chunk only where the chunk is set larger than the limit)."""
    data = b'email,"no\ntes"\na@x.io,1\n'
    assert read_header(data).columns == ["email", "no\ntes"]
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(csvimport, "QUOTED_FIELD_LIMIT", 5)
        with pytest.raises(HeaderError, match="never closed"):
            read_header(data)


def test_a_field_over_csv_s_own_limit_is_an_error_row_not_a_crash() -> None:
    header = read_header(b"email,notes\n")
    data = b'email,notes\na@example.com,"' + b"z" * 200_000 + b'"\nb@example.com,ok\n'
    rows = parse(data, 64 * 1024)
    assert [r.number for r in rows] == [2, 3]
    error = contact_from_row(header, rows[0])
    assert isinstance(error, RowError) and error.code == "invalid_field"


def test_the_delimiter_is_sniffed_outside_quoted_header_cells() -> None:
    parsed = read_header(b'"Name, Full";email;"Tags, more"\n"Lee, Ann";a@example.com;x\n')
    assert parsed.delimiter == ";"
    assert parsed.columns == ["Name, Full", "email", "Tags, more"]


@pytest.mark.parametrize("end", ["\n", "\r\n", "\r"])
def test_a_header_cell_with_a_line_end_is_one_column_and_the_rows_follow_it(end: str) -> None:
    data = f'Email,"Phone{end}(mobile)",First Name{end}a@example.com,555,Ann{end}'.encode()
    header = read_header(data)
    assert header.columns == ["Email", f"Phone{end}(mobile)", "First Name"]
    assert header.mapping == ["email", None, "first_name"]
    rows = parse(data) if end != "\r" else parse(data + b"\n")
    assert [(r.number, r.values) for r in rows] == [(2, ["a@example.com", "555", "Ann"])]
    assert read_header(b'"E-mail\naddress",Name\na@example.com,Ann\n').mapping[0] == "email"


def test_a_header_whose_quote_never_closes_is_refused() -> None:
    for data in (
        b'Email,"First Name,Last Name\na@example.com,Ann,Lee\nb@example.com,Bo,Ng\n',
        b'"Email,First Name\na@example.com,Ann\n',
        b'email;"x\na@example.com;1\n',
    ):
        with pytest.raises(HeaderError, match="never closed"):
            read_header(data)
    # a quote inside a name (not at its start) is text, as csv reads it
    assert read_header(b'email,5" screen\na@example.com,x\n').columns == ["email", '5" screen']


def test_a_first_chunk_that_ends_inside_a_quoted_header_name_says_so() -> None:
    """Cut by the chunk inside a quoted name, the header may close past it: not "never
    closed", but too long for the first chunk (the web's 422)."""
    data = b'\xef\xbb\xbf"email","n","t"\r\n"a@example.com","A","B"\r\n'
    for cut in (5, 13, 16, 17):  # in "email", in "n", right after t's opening quote, in "t"
        with pytest.raises(HeaderError, match="not closed within it") as raised:
            read_header(data[:cut], more=True)
        assert str(raised.value).startswith(PAST_FIRST_CHUNK)
        with pytest.raises(HeaderError, match="never closed"):  # the whole file: it is not
            read_header(data[:cut])
    with pytest.raises(HeaderError) as raised:  # between two names
        read_header(data[:15], more=True)
    assert str(raised.value) == PAST_FIRST_CHUNK
    assert read_header(data[:19], more=True).columns == ["email", "n", "t"]


def test_header_refusals_that_say_what_to_do() -> None:
    for data, message in (
        ("email,name\r\n".encode("utf-16"), "UTF-16"),
        (b"email,Stra\xdfe\na@example.com,x\n", "not UTF-8"),
        (b"email,plan,Plan,plan\n", "names the column plan twice"),
    ):
        with pytest.raises(HeaderError, match=message):
            read_header(data)
    assert read_header(b"email,,,\n").columns == ["email", "", "", ""]  # unnamed: ignored


@pytest.mark.parametrize(
    ("data", "delimiter", "columns"),
    [
        (b"email\tName, full\na@x.com\tAda\n", "\t", ["email", "Name, full"]),
        (b"email;Name, full\na@x.com;A\n", ";", ["email", "Name, full"]),
        (
            b"email\tCity, State, Zip\tn\nx@y.com\tP, Q, R\t1\n",
            "\t",
            ["email", "City, State, Zip", "n"],
        ),
        (b"email;a,b;c,d\nx@y.com;1;2\n", ";", ["email", "a,b", "c,d"]),
        (b"email,a;b\nx@y.com,1\n", ",", ["email", "a;b"]),
        (b"email\nx@y;z.com\n", ",", ["email"]),
    ],
)
def test_the_delimiter_is_one_that_names_an_email_column(
    data: bytes, delimiter: str, columns: list[str]
) -> None:
    """A header whose column names hold another of the delimiters, as often as the one that
    separates them, or more often."""
    header = read_header(data)
    assert (header.delimiter, header.columns) == (delimiter, columns)


def test_a_nul_in_a_row_is_that_rows_problem_and_binary_is_not_text() -> None:
    header = read_header(b"email,first_name\nnul@x.com,a\x00b\nok@x.com,ok\n")
    assert header.columns == ["email", "first_name"]
    rows = list(CsvReader(header).feed(b"email,first_name\nnul@x.com,a\x00b\nok@x.com,ok\n"))
    assert [type(contact_from_row(header, row)).__name__ for row in rows] == ["RowError", "dict"]
    for binary in (
        "email,name\nann@x.com,Ann\n".encode("utf-16-le"),  # no byte order mark
        b"email\n" + bytes(range(64)) * 64,
        b"\x1f\x8b\x08\x00\x00\x00\x00\x00email\n",
        b"email\n" + b"\x00" * 2000,
    ):
        with pytest.raises(HeaderError, match="not text"):
            read_header(binary)
    # a legacy export's fields padded with NULs: text, each such row an error row
    padded = b"email,notes\n" + b"".join(b"a%d@x.com,pad\x00\x00\n" % i for i in range(100))
    header = read_header(padded)
    rows = [contact_from_row(header, row) for row in CsvReader(header).feed(padded)]
    assert len(rows) == 100 and all(isinstance(row, RowError) for row in rows)


def test_values_past_the_header_are_ignored_whatever_they_hold() -> None:
    data = b"email,first_name\na@x.com,A,\xff\x00\nb@x.com,B," + b"z" * 5000 + b"\n"
    header = read_header(data)
    rows = list(CsvReader(header).feed(data))
    contacts = [contact_from_row(header, row) for row in rows]
    assert [(c["email"], c["first_name"]) for c in contacts if isinstance(c, dict)] == [
        ("a@x.com", "A"), ("b@x.com", "B")
    ]  # fmt: skip


def test_values_of_an_unnamed_column_are_ignored_whatever_they_hold() -> None:
    data = b"email,,first_name\na@x.com,\xff\x00,A\nb@x.com," + b"z" * 5000 + b",B\n"
    header = read_header(data)
    contacts = [contact_from_row(header, row) for row in CsvReader(header).feed(data)]
    assert [(c["email"], c["first_name"], c["data"]) for c in contacts if isinstance(c, dict)] == [
        ("a@x.com", "A", {}), ("b@x.com", "B", {})
    ]  # fmt: skip
