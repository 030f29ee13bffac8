"""Pass one's keys (csvkeys) against the row-by-row ones: the same hash for every data row, in
file order, for files of many shapes fed in chunks of many sizes."""

from __future__ import annotations

import random

import numpy as np
import pytest

from listmill import csvimport
from listmill.csvimport import CsvReader, ParsedRow, email_key, read_header
from listmill.csvkeys import KeyHashes, KeyReader, Keys, Slices, hashed_keys, simple_keys
from listmill.keyhash import key_hashes, legacy_key_hashes

from .test_csvcolumns import seeded_file


def row_by_row(data: bytes) -> np.ndarray:
    """The hash of each data row's email key, every row read by csv."""
    header = read_header(data)
    reader = CsvReader(header)
    rows = [*reader.feed(data), *reader.finish()]
    assert all(isinstance(row, ParsedRow) for row in rows)
    return key_hashes([email_key(header, row) for row in rows if isinstance(row, ParsedRow)])


def pass_one(data: bytes, chunk: int, hashes: KeyHashes = key_hashes) -> tuple[np.ndarray, int]:
    """KeyReader's hashes, fed in chunks of this size, and how many keys were cut as bytes."""
    reader = KeyReader(read_header(data), hashes)
    keys: list[Keys] = []
    for start in range(0, len(data), chunk):
        keys += reader.feed(data[start : start + chunk])
    keys += reader.finish()
    sliced = sum(len(k) for k in keys if isinstance(k, Slices))
    return hashed_keys(keys, hashes), sliced


@pytest.mark.parametrize("seed", range(24))
def test_pass_one_hashes_every_rows_key_as_row_by_row(seed: int) -> None:
    data = seeded_file(seed, 600)
    expected = row_by_row(data)
    for chunk in (7, 300, 4096, len(data)):
        assert pass_one(data, chunk)[0].tolist() == expected.tolist(), chunk


@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
@pytest.mark.parametrize("crlf", [False, True])
def test_an_export_is_cut_as_bytes_but_where_a_block_is_odd(delimiter: str, crlf: bool) -> None:
    rng = random.Random(len(delimiter) + crlf)
    end = "\r\n" if crlf else "\n"
    columns = ["First Name", "Email", "Plan", "Last Name"]
    lines = [delimiter.join(columns)]
    odd = [" spaced@x.io ", "", "Zo\u00eb@x.io", "x@y.z,extra"]
    for i in range(3000):
        email = f"User{i}@Example{i % 7}.com" if rng.random() > 0.002 else rng.choice(odd)
        lines.append(delimiter.join([f"Ann{i}", email, rng.choice(["", "pro"]), "Lee"]))
    data = (end.join(lines) + end).encode()
    expected = row_by_row(data)
    for chunk in (1000, 8192, len(data)):
        got, sliced = pass_one(data, chunk)
        assert got.tolist() == expected.tolist(), chunk
        if chunk < len(data):  # a block with an odd row is csv's: the others are cut
            assert sliced > len(expected) // 3, chunk


CLEAN = [
    b"email\nann@example.com\nBOB@Example.com\n",
    b"name,email\r\nAnn,ann@example.com\r\nBob,BOB@x.io\r\n",
    b"email,name\r\nann@example.com,Ann\r\nbob@x.io,Bob\r\n",
    b"\xef\xbb\xbfemail;name\nann@example.com;Ann\nbob@x.io;Bob\n",
    b"\xef\xbb\xbfemail\tname\nAnn@Example.com\tAnn\n",
    b"email,a,b,c\nX@Y.ZZ,1,2,3\nq@r.st,,,\n",
    b'"Email Address","First Name"\r\n"ann@example.com","Ann"\r\n"BOB@x.io",""\r\n',
    b'"email";"name"\n"a@b.cd";"x;y"\n"E@F.GH";""\n',
    b'email,name\n"a@b.cd","Ann, Lee"\n',  # a header unquoted, the rows quoted
    b'"email"\n"a@b.cd"\n"C@D.EF"\n',
]
ODD = [
    b"email\n",  # a header alone
    b"email",  # no line end at all
    b"email\nann@example.com",  # the last record has no line end
    b"email,name\nann@example.com,Ann\nbob@x.io",
    b'"email","name"\nann@example.com,Ann\n',  # a quoted header: csv's from the start
    b'email,name\nann@example.com,"Ann\nLee"\nBob@x.io,Bob\n',  # a quote: csv's from there
    b"email,name\n ann@example.com ,Ann\nbob@x.io, Bob\n",  # a key csv's strip() trims
    b"email,name\n,Ann\nbob@x.io,Bob\n,\n\n",  # empty keys, blank lines
    b"email,name\nann@example.com,Ann,extra\nbob@x.io\n",  # ragged rows
    b"email,name\nann@example.com,Ann\rbob@x.io,Bob\n",  # a carriage return ending a record
    b"email,name\nann@example.com,A\x00nn\nbob@x.io,B\x1fob\n",  # control characters
    b"email,name\n\xc3\xbcser@EXAMPLE.com,\xc3\x84nn\n\xff@x.io,Bob\nK\xe2\x84\xaa@x.io,K\n",
    b"email\r\nann@example.com\r\n\r\n",
    b"email,name\r\nann@example.com\r,Ann\r\n",  # a carriage return inside a field
    b'"email","name"\n"a@b.cd","A ""nick"" B"\n"c@d.ef","C"\n',  # a quote inside
    b'"email","name"\n"a@b.cd","two\nlines"\n"c@d.ef","C"\n',  # a line end inside
    b'"email","name"\n"a@b.cd","cr\r\nlf"\n"c@d.ef","C"\n',
    b'"email","name"\n"a@b.cd",Ann\n"c@d.ef","C"\n',  # a field not quoted
    b'"email","name"\n"a@b.cd" ,"Ann"\n"c@d.ef","C"\n',  # a space after a quote
    b'"email","name"\n "a@b.cd","Ann"\n',  # before one: the quote is text
    b'"email","name"\n" a@b.cd ","Ann"\n"c@d.ef","C"\n',  # spaces a key is trimmed of
    b'"email","name"\n"a@b.cd"x,"Ann"\n"c@d.ef","C"\n',  # text after a closing quote
    b'"email","name"\n"a@b.cd","Ann"\r"c@d.ef","C"\n',  # a carriage return ending a record
    b'"email","name"\n"a@b.cd","Ann","x"\n"c@d.ef"\n',  # ragged
    b'"email","na\nme"\n"a@b.cd","Ann"\n',  # a header over two lines
    b'"email","name"\n"a@b.cd","never closed\n"c@d.ef","C"\n',
    # found by fuzzing: a one-column file whose rows hold the delimiter (csv splits them)
    b'\xef\xbb\xbfEmail\nk@k.kk,extra"x",extra\na@b.cd\r\nq@r.st,extra,extra\n',
    b"email\nann@example.com,extra\nbob@x.io\n",
    # a quoted tab in a tab-delimited file: csv's blank line (skipped), or a key it trims
    b'mail\t\n"\t"\t""\n',
    b'"mail"\t""\t""\t\n"\t"\t""\t""\t""\n',
    b'email\tname\n"a@b.cd\t"\t"x"\n"c@d.ef"\t"C"\n',
    (  # what an email is trimmed of besides whitespace
        "email,first_name\nann@example.com,Ann\n\ufeffbo@example.com,B\u200bo\n"
        "cy@example.com\u200b,Cy\n\u200b \u2060dee@example.com\u200d,D\n"
    ).encode(),
]


@pytest.mark.parametrize("data", CLEAN + ODD)
def test_odd_and_clean_files_hash_as_row_by_row(data: bytes) -> None:
    expected = row_by_row(data)
    for chunk in (1, 2, 5, 16, len(data) or 1):
        assert pass_one(data, chunk)[0].tolist() == expected.tolist(), chunk


@pytest.mark.parametrize("data", CLEAN)
def test_clean_files_are_cut_as_bytes(data: bytes) -> None:
    assert pass_one(data, len(data))[1] == len(row_by_row(data))


def test_an_export_quoting_every_field_is_cut_as_bytes_but_where_a_block_is_odd() -> None:
    rng = random.Random(5)
    lines = ['"Email Address","First Name","Notes"']
    for i in range(3000):
        email = f"User{i}@Example.com" if rng.random() > 0.002 else " s@x.io "
        notes = rng.choice(["", "a, b", "c;d", 'say ""hi""' if rng.random() < 0.001 else "e"])
        lines.append(f'"{email}","Ann{i}","{notes}"')
    data = ("\r\n".join(lines) + "\r\n").encode()
    expected = row_by_row(data)
    for chunk in (1000, 8192):
        got, sliced = pass_one(data, chunk)
        assert got.tolist() == expected.tolist(), chunk
        assert sliced > len(expected) // 3, chunk


def test_a_block_is_cut_only_if_csv_reads_it_field_by_field() -> None:
    header = read_header(b"email,name,plan\n")
    assert simple_keys(b"a@b.cd,Ann,x\r\nE@F.GH,,\n", header) is not None
    for block in [
        b"a@b.cd,Ann\nE@F.GH,,,\n",  # one line short, one long: the count alone agrees
        b'a@b.cd,"Ann",x\n',
        b"a@b.cd,Ann,x",  # not ended
        b"a@b.cd,Ann,x\r\n\r\n",
        b"a@b.cd,A\tnn,x\n",
        b"a@b.cd ,Ann,x\n",
        b"\xc3\xbc@b.cd,Ann,x\n",
        b'"a@b.cd","Ann"\n',  # quoted: two fields short
        b'"a@b.cd","Ann","x""y"\n',
    ]:
        assert simple_keys(block, header) is None, block


def test_another_hash_reads_every_block_as_csv() -> None:
    data = CLEAN[1] * 1 + b"carl@x.io\r\n"
    header = read_header(data)
    reader = CsvReader(header)
    rows = [*reader.feed(data), *reader.finish()]
    expected = legacy_key_hashes([email_key(header, r) for r in rows if isinstance(r, ParsedRow)])
    got, sliced = pass_one(data, 10, legacy_key_hashes)
    assert sliced == 0
    assert got.tolist() == expected.tolist()


def with_stray_quotes(data: bytes, rng: random.Random, delimiter: bytes) -> bytes:
    """The file with a quote opening a field now and then that nothing closes on purpose."""
    lines = data.split(b"\n")
    for i in rng.sample(range(1, len(lines)), len(lines) // 40):
        cut = lines[i].find(delimiter)
        lines[i] = lines[i][: cut + 1] + b'"' + lines[i][cut + 1 :]
    return b"\n".join(lines)


@pytest.mark.parametrize("seed", range(24))
def test_pass_one_agrees_where_quotes_do_not_close_within_the_limit(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pass two reads the file in the stored chunks, pass one as blocks and the rest: where a
    record a stray quote breaks ends does not depend on that (csvimport.QUOTED_FIELD_LIMIT)."""
    monkeypatch.setattr(csvimport, "QUOTED_FIELD_LIMIT", 300)
    data = with_stray_quotes(
        seeded_file(seed, 600), random.Random(seed), b",;\t"[seed % 3 : seed % 3 + 1]
    )
    rows = [*CsvReader(read_header(data)).feed(data)]
    assert sum(isinstance(r, ParsedRow) and r.unterminated for r in rows) > 3, "none broken"
    expected = row_by_row(data)
    for chunk in (7, 300, 4096, len(data)):
        assert pass_one(data, chunk)[0].tolist() == expected.tolist(), chunk
