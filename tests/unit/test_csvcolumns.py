"""The import's fast path (csvcolumns) against the row-by-row rules (csvimport): the same
rows, numbers, contacts and error rows, for files of many shapes fed in chunks of many sizes."""

from __future__ import annotations

import random
import sys
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from listmill.csvcolumns import (
    COMMON_EMAIL,
    Block,
    _simple_ascii,
    _simple_text,
    columns_of,
    concat,
    contacts_of,
    jsonb_text,
    read_block,
    simple_block,
)
from listmill.csvimport import (
    CsvReader,
    ParsedRow,
    RowError,
    contact_from_row,
    email_key,
    read_header,
)
from listmill.keyhash import text_hashes
from listmill.validation import _COMMON

Outcome = tuple[int, Any]  # (row number, contact columns or (error code, email))
FIELDS = ("first_name", "last_name", "country", "time_zone")


def _contact(contact: dict[str, Any]) -> tuple[Any, ...]:
    fields = tuple(contact.get(f) for f in FIELDS)
    return (contact["email"], contact["email_normalized"], *fields, contact["data"])


def _slow(header: Any, row: ParsedRow) -> Outcome:
    parsed = contact_from_row(header, row)
    if isinstance(parsed, RowError):
        return row.number, (parsed.code, parsed.email, parsed.message)
    return row.number, _contact(parsed)


def outcomes(data: bytes, simple: bool, chunk: int) -> tuple[list[Outcome], int]:
    """Each row's outcome in file order, and how many rows took the fast path."""
    header = read_header(data[: data.index(b"\n") + 1])
    reader = CsvReader(header, simple=simple)
    items: list[ParsedRow | Block] = []
    for start in range(0, len(data), chunk):
        items += reader.feed(data[start : start + chunk])
    items += reader.finish()
    result: list[Outcome] = []
    fast_rows = 0
    for item in items:
        if isinstance(item, ParsedRow):
            result.append(_slow(header, item))
            continue
        columns = columns_of(header, item)
        fast = columns.fast.to_pylist()
        contacts = iter(columns.fast_contacts(1).rows())
        slow = {index: (number, values) for index, number, values in columns.slow_rows()}
        for index, is_fast in enumerate(fast):
            if is_fast:
                _, number, *contact = next(contacts)
                result.append((number, tuple(contact)))
                fast_rows += 1
            else:
                number, values = slow[index]
                result.append(_slow(header, ParsedRow(number, values)))
    return result, fast_rows


EMAILS = [
    "ann@example.com", "Ann.Lee@Example.COM", " bo@mail.example.net ", "c+tag@x.io",
    "d'o@sub.example.org", "UPPER@EXAMPLE.ORG", "no-at-sign", "two@@example.com", "",
    "x@localhost", "y@example.test", "a" * 65 + "@example.com", "a" * 64 + "@example.com",
    "b@" + "c" * 250 + ".com", "üser@example.com", "user@exämple.com", "\u212aelvin@example.com",
    "dot.@example.com", "-dash@example.com", "ok@ex-ample.co", "bad@-example.com",
    "back\\slash@example.com", "e@example.c0m", "f@123.com", "g@example.museum",
]  # fmt: skip
VALUES = [
    "", " ", "Ann", " spaced ", "Zoë", "O'Brien", "back\\slash", "c:\\path\\", "=SUM(A1)",
    "x" * 255, "y" * 256, "z" * 1001, "é" * 200, "é" * 256, "日本", "emoji 🎉", "-5", "{json}",
    "semi;colon",
    "NULL", "NA", "null", "N/A", "nan", "true", "1e5", "\ufeffbom", "del\x7f", "\u2028sep",
]  # fmt: skip


def _quoted(value: str, rng: random.Random, quoting: str) -> str:
    """The field as an export writes it: quoted throughout, quoted now and then, or never."""
    if quoting == "all" or (quoting == "some" and rng.random() < 0.3):
        return '"' + value.replace('"', '""') + '"'
    return value


def make_file(
    rng: random.Random, rows: int, delimiter: str, crlf: bool, nasty: bool, quoting: str = "none"
) -> bytes:
    columns = ["Email Address", "First Name", "Last Name", "Country", "Plan", "Notes", ""]
    rng.shuffle(columns)
    width = len(columns)
    newline = "\r\n" if crlf else "\n"
    lines = [delimiter.join(columns)]
    quoted_values = [f"with{delimiter} delimiter", 'a "quoted" word', '""', " ", 'x"']
    for _ in range(rows):
        values = [rng.choice(VALUES) for _ in range(width)]
        values[columns.index("Email Address")] = rng.choice(EMAILS)
        if quoting == "none":
            values = [v.replace(delimiter, "") for v in values]
        else:  # quoted fields hold delimiters, quotes, line ends now and then
            values = [rng.choice(quoted_values) if rng.random() < 0.1 else v for v in values]
            if rng.random() < 0.01:
                values[-1] = rng.choice(["two\nlines", "cr\r\nlf"])
            values = [_quoted(v, rng, quoting) if '"' not in v or quoting != "none" else v
                      for v in values]  # fmt: skip
        if nasty and rng.random() < 0.05:  # ragged rows, blank lines, quotes, a stray CR, NUL
            values = rng.choice(
                [values[:-2], [*values, "extra"], [""] * width, ['"q, d"', *values[1:]]]
            )
            if rng.random() < 0.2:
                values[-1] += rng.choice(["\r", "\x00", "\x1f", "\xa0", '"', 'b"c'])
        lines.append(delimiter.join(values))
        if nasty and rng.random() < 0.02:
            lines.append(rng.choice(["", '""', delimiter.join(['""'] * width), ' "" ']))
    if nasty and quoting != "none":  # a quote never closed: the rest of the file is in it
        lines.append(delimiter.join(["a@example.com", *[""] * (width - 2), '"never closed']))
    undecodable = b"\xff\xfe" if nasty and quoting == "none" else b""
    return (newline.join(lines) + newline).encode() + undecodable


def seeded_file(seed: int, rows: int) -> bytes:
    """One of 24 files (seed 0-23): each delimiter, line end, quoting, clean or nasty."""
    rng = random.Random(seed)
    delimiter = [",", ";", "\t"][seed % 3]
    quoting = ["none", "all", "some"][seed // 8]
    return make_file(rng, rows, delimiter, crlf=seed % 2 == 1, nasty=seed % 4 >= 2, quoting=quoting)


@pytest.mark.parametrize("seed", range(24))
def test_fast_path_gives_the_rows_row_by_row_gives(seed: int) -> None:
    data = seeded_file(seed, 400)
    expected, none_fast = outcomes(data, simple=False, chunk=len(data))
    assert none_fast == 0
    fast_rows = {}
    for chunk in (97, 1500, len(data)):
        got, fast_rows[chunk] = outcomes(data, simple=True, chunk=chunk)
        assert got == expected
    # small blocks are simple between the rows that are not (a nasty row, a value with
    # whitespace str.strip() would remove)
    assert fast_rows[97] > 0, "no block took the fast path: the test would compare nothing"


@pytest.mark.parametrize(
    "data",
    [
        b"email,first_name\rann@example.com,Ann\nbob@example.com,Bob\nbad,X\n",
        b"email,first_name\rann@example.com,Ann\rbob@example.com,Bob\rbad,X\r\n",
        b"email,first_name\r\r\nann@example.com,Ann\r\r\nbad,X\r\r\n",
        b"email,first_name\r\nann@example.com,Ann\r\nbad,X\r\n",
        b'"email","first name"\nann@example.com,Ann\nbad,X\n',
        b"\xef\xbb\xbfemail;Vorname\nann@example.com;\xc3\x84nn\n\nbad;X\n",
        b'email\tx\nann@example.com\tA\n"\t"\t""\nbob@example.com\tB\n',  # a blank line
        b'email\tx\r\n" \t "\t\r\nann@example.com\tA\r\n',
        (  # what an email is trimmed of besides whitespace
            "email,first_name\nann@example.com,Ann\n\ufeffbo@example.com,B\u200bo\n"
            "cy@example.com\u200b,Cy\n\u200b \u2060dee@example.com\u200d,D\n"
        ).encode(),
    ],
)
def test_odd_headers_and_blank_lines_read_as_csv_reads_them(data: bytes) -> None:
    for chunk in (5, 20, len(data)):
        assert outcomes(data, simple=True, chunk=chunk)[0] == outcomes(data, False, len(data))[0]


def test_pass_one_keys_from_the_email_column_alone_are_the_row_by_row_keys() -> None:
    rng = random.Random(99)
    data = make_file(rng, 500, ",", crlf=False, nasty=True)
    header = read_header(data)

    def keys(simple: bool) -> list[str]:
        reader = CsvReader(header, simple=simple, only_email=simple)
        found: list[str] = []
        for item in [*reader.feed(data[:3000]), *reader.feed(data[3000:]), *reader.finish()]:
            if isinstance(item, Block):
                assert item.table.num_columns == 1
                found += [v.strip().lower() for v in item.table.column(0).to_pylist()]
            else:
                found.append(email_key(header, item))
        return found

    assert keys(simple=True) == keys(simple=False)


def test_the_whitespace_a_simple_block_refuses_is_what_strip_removes() -> None:
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        if char.isspace() and char not in " \n\r":
            # a tab is whitespace only where it is not the delimiter
            assert not simple_block(f"a{char}b,c\n", ",", 2), hex(code)
    assert simple_block("a b,c\r\n", ",", 2)
    assert simple_block("a\tb\n", "\t", 2)


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_an_ascii_block_is_told_from_its_byte_counts_as_from_its_text(delimiter: str) -> None:
    """_simple_ascii (counts of bytes) against _simple_text (the patterns), which also takes
    the blocks that are not ASCII: every ASCII character in a value, then random blocks."""
    for code in range(128):
        for text in (f"a{chr(code)}b{delimiter}c\n", f"{chr(code)}{delimiter}c\r\n"):
            block = np.frombuffer(text.encode(), dtype=np.uint8)
            expected = _simple_text(text, delimiter, 2)
            assert _simple_ascii(block, delimiter, 2) == expected, (hex(code), text)
    rng = random.Random(3)
    alphabet = ["a", "b", " ", "\t", '"', "\r", "\n", "\r\n", "\x00", "\x0b", delimiter * 2]
    alphabet += [delimiter] * 4 + ["\n"] * 3
    for _ in range(20_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14))) + "\n"
        block = np.frombuffer(text.encode(), dtype=np.uint8)
        for columns in (1, 2, 3):
            expected = _simple_text(text, delimiter, columns)
            assert _simple_ascii(block, delimiter, columns) == expected, (text, columns)


NOT_SIMPLE = [
    "a,b\rc,d\n", "a,b\n\nc,d\n", "a,b\n , \n", "a,b,c\n", "a,b", "a\x00,b\n",
    "\ufeffa,b\n",
]  # fmt: skip


@pytest.mark.parametrize("text", NOT_SIMPLE)
def test_blocks_csv_would_read_otherwise_are_not_simple(text: str) -> None:
    assert not simple_block(text, ",", 2)


@pytest.mark.parametrize("text", ['a,"b\nc"\n', '"a","b","c"\n', '"a"\n', 'a,"b"\n"c\n"\n'])
def test_quoted_blocks_arrow_would_read_otherwise_are_refused(text: str) -> None:
    """A record over two lines, or a line of another number of fields."""
    assert read_block(text, ",", 2, 2) is None


def test_a_quoted_block_reads_as_csv_reads_it() -> None:
    block = read_block('"a,b","c ""d"""\n"",x\n', ",", 2, 2)
    assert block is not None and block.table.to_pylist() == [
        {"c0": "a,b", "c1": 'c "d"'}, {"c0": "", "c1": "x"}
    ]  # fmt: skip


def test_common_email_shape_is_the_validation_one() -> None:
    emails = [e.strip().lower() for e in EMAILS] + ["a.b@c.de", "a..b@c.de", "a@b.c", "a@b.cd."]
    matched = pc.match_substring_regex(pa.array(emails), COMMON_EMAIL).to_pylist()
    assert matched == [bool(_COMMON.fullmatch(e)) for e in emails]


def test_copy_text_is_copy_text_format_of_the_contacts_sorted_by_email() -> None:
    data = b"email,first_name,Plan\nB@example.com,Bo,pro\na@example.com,,\n"
    header = read_header(data)
    [block] = CsvReader(header, simple=True).feed(data)
    assert isinstance(block, Block)
    contacts = concat([columns_of(header, block).fast_contacts(1)])
    assert list(contacts.rows()) == [
        (1, 2, "B@example.com", "b@example.com", "Bo", None, None, None, {"Plan": "pro"}),
        (2, 3, "a@example.com", "a@example.com", None, None, None, None, {}),
    ]
    assert bytes(contacts.copy_text(7)).decode().split("\n") == [
        "a@example.com\ta@example.com\t\\N\t\\N\t\\N\t\\N\t{}\t\\N\t7",
        'B@example.com\tb@example.com\tBo\t\\N\t\\N\t\\N\t{"Plan": "pro"}\t\\N\t7',
        "",
    ]
    # rows parsed one by one become the same columns, and COPY text, as these
    again = contacts_of(list(contacts.rows()))
    assert list(again.rows()) == list(contacts.rows())
    assert again.copy_text(7) == contacts.copy_text(7)
    # hashed, each line carries the hash of its line (before the project)
    hashed = contacts.hashed()
    hashes = text_hashes(contacts.lines()).tolist()
    assert hashed.line_hashes().tolist() == hashes
    assert bytes(hashed.copy_text(7)).decode().split("\n") == [
        f"a@example.com\ta@example.com\t\\N\t\\N\t\\N\t\\N\t{{}}\t{hashes[1]}\t7",
        f'B@example.com\tb@example.com\tBo\t\\N\t\\N\t\\N\t{{"Plan": "pro"}}\t{hashes[0]}\t7',
        "",
    ]
    both = concat([hashed, again])  # those not hashed have no hash
    assert len(both) == 4 and both.table.column("line_hash").to_pylist() == [*hashes, None, None]
    texts = [bytes(c.copy_text(7)).splitlines() for c in (both, hashed, again)]
    assert sorted(texts[0]) == sorted(texts[1] + texts[2])
    assert orjson.loads('{"Plan":"pro"}') == {"Plan": "pro"}


@pytest.mark.parametrize("patterns", [range(8), [0], [7], [1, 2], [5, 6, 3]])
def test_a_blocks_data_text_is_jsonb_text_of_each_rows_values_whichever_are_blank(
    patterns: Any,
) -> None:
    """Three custom columns, rows with every combination of them blank (or only some
    combinations in a block: a column blank or given throughout)."""
    header = read_header(b"email,b,Zone,aaa\n")
    rows = [
        [f"r{i}@example.com", *("" if p >> bit & 1 else f'v"{i}\\{bit}' for bit in range(3))]
        for i, p in enumerate(patterns)
    ]
    text = "".join(",".join(f'"{v.replace(chr(34), chr(34) * 2)}"' for v in r) + "\n" for r in rows)
    block = read_block(text, ",", 4, 2)
    assert block is not None
    data = columns_of(header, block).contacts.column("data").to_pylist()
    names = ["b", "Zone", "aaa"]
    assert data == [
        jsonb_text({n: v for n, v in zip(names, r[1:], strict=True) if v}) for r in rows
    ]
