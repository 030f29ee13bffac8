"""Nasty CSV files, imported through the real API and worker, checked row by row against a
model of SPEC §6 and README's import rules written apart from listmill's parser (Python's csv
module and email-validator): what each row should become, a contact with which values or an
error row with which number and code, against the database, the job and its error report."""

from __future__ import annotations

import codecs
import csv
import io
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from email_validator import EmailNotValidError, validate_email

from listmill.settings import Settings
from tests.conftest import Api, RunJobs, wait_for_job
from tests.integration.test_import import mirrored_list, run_import, upload

# --------------------------------------------------------------------------------------------
# the independent model
# --------------------------------------------------------------------------------------------

# README: "header aliases (`Email Address`, `First Name`, `Surname`, …)"; compared after
# lower-casing and dropping spaces (any Unicode space), dashes, underscores and dots
MODEL_ALIASES = {
    "email": "email", "emailaddress": "email", "mail": "email",
    "firstname": "first_name", "first": "first_name", "givenname": "first_name",
    "fname": "first_name",
    "lastname": "last_name", "last": "last_name", "surname": "last_name",
    "familyname": "last_name", "lname": "last_name",
    "country": "country", "countrycode": "country",
    "timezone": "time_zone", "tz": "time_zone",
}  # fmt: skip
FIELDS = ("first_name", "last_name", "country", "time_zone")
FORMULA = ("=", "+", "-", "@", "\t", "\r")


def model_alias(name: str) -> str | None:
    key = "".join(ch for ch in name.strip().lower() if not (ch.isspace() or ch in "-_."))
    return MODEL_ALIASES.get(key)


def has_surrogate(value: str) -> bool:
    return any(0xD800 <= ord(ch) <= 0xDFFF for ch in value)


def model_email(raw: str) -> str | None:
    """The trimmed email if SPEC's rules accept it, else None: trimmed of whitespace and of
    the invisible characters README names (zero-width spaces and joiners, word joiner, BOM)."""
    email = re.sub(
        r"^[\s\u200b\u200c\u200d\u2060\ufeff]+|[\s\u200b\u200c\u200d\u2060\ufeff]+$", "", raw
    )
    if not email or len(email) > 254 or "\x00" in email or has_surrogate(email):
        return None
    try:
        validate_email(email, check_deliverability=False)
    except EmailNotValidError:
        return None
    if len(email.rpartition("@")[0].encode()) > 64:
        return None
    return email


def unclosed_quote(text: str, delimiter: str) -> int | None:
    """Where the quoted field the text ends inside opened, by csv's quoting rules (a quote
    opens a quoted field only at a field's start; inside one a doubled quote is a quote)."""
    state, opened = "start", None
    for i, ch in enumerate(text):
        if state == "quoted":
            if ch == '"':
                state = "quote_in_quoted"
        elif ch == '"' and state == "start":
            state, opened = "quoted", i
        elif ch == '"' and state == "quote_in_quoted":
            state = "quoted"  # a doubled quote
        else:
            state = "start" if ch in (delimiter, "\r", "\n") else "field"
    return opened if state == "quoted" else None


def records_of(text: str, delimiter: str) -> list[tuple[list[str], bool]]:
    """csv's records of the text, each with whether a quote never closed is in it: such a
    record ends with the line its quote opened on, and the next line begins the next one
    (the files here are far below the limit on a quoted field's length)."""
    records: list[tuple[list[str], bool]] = []
    while True:
        opened = unclosed_quote(text, delimiter)
        if opened is None:
            reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
            return records + [(values, False) for values in reader]
        line_end = text.find("\n", opened) + 1 or len(text)
        head, text = text[:line_end].removesuffix("\n").removesuffix("\r"), text[line_end:]
        *ended, last = csv.reader(io.StringIO(head, newline=""), delimiter=delimiter)
        records += [(values, False) for values in ended] + [(last, True)]


@dataclass
class Expected:
    delimiter: str
    columns: list[str]
    contacts: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> contact
    errors: list[tuple[int, str, str | None]] = field(default_factory=list)  # row, code, email
    duplicates: int = 0
    total: int = 0

    @property
    def counts(self) -> dict[str, int]:
        counts = {
            "created": len(self.contacts),
            "invalid": len(self.errors),
            "duplicate": self.duplicates,
        }
        return {k: v for k, v in counts.items() if v}


def model_text(data: bytes) -> str:
    """The text the import reads: BOM, Excel's sep= line and old Mac line ends dealt with."""
    text = data.removeprefix(codecs.BOM_UTF8).decode("utf-8", "surrogateescape")
    sep = re.match(r"(?i)sep=[^\r\n]?(\r\n|\r|\n)", text)
    if sep:
        text = text[sep.end() :]
    first_end = re.search(r"[\r\n]", text)
    if first_end and first_end[0] == "\r" and not text.startswith("\n", first_end.end()):
        text = re.sub(r"\r(?!\n)", "\n", text)  # old Mac: stored with line feeds
    return text


def model_delimiter(text: str) -> str:
    """One under which the header names an email column, the one it has most of outside
    quotes."""

    def header_of(delimiter: str) -> list[str]:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        return [c.strip() for c in next(reader)]

    first_line = re.split(r"\r\n|\n|\r", text, maxsplit=1)[0]
    outside = re.sub(r'"[^"]*"', "", first_line)
    candidates = [d for d in (",", ";", "\t") if "email" in map(model_alias, header_of(d))]
    assert candidates, "the model found no email column"
    return max(candidates, key=outside.count)


Outcome = tuple[str, dict[str, Any]] | tuple[int, str, str | None]  # (key, contact) or error


def row_outcome(number: int, values: list[str], unterminated: bool, columns: list[str]) -> Outcome:
    """A data row's contact (with its key), or its error row."""
    mapping = [model_alias(c) for c in columns]
    raw = next((v for v, m in zip(values, mapping, strict=False) if m == "email"), "")
    # an unnamed column is ignored, and values past the header too
    used = [(v, c, m) for v, c, m in zip(values, columns, mapping, strict=False) if c]
    problem = None
    if any(has_surrogate(v) for v, _, _ in used):
        problem = "invalid_encoding"
    elif unterminated:
        problem = "unterminated_quote"
    email = model_email(raw)
    if email is None:
        shown = raw.strip()[:320] or None
        if shown is not None and (has_surrogate(shown) or "\x00" in shown):
            shown = "?"  # not compared
        return (number, problem or "invalid_email", shown)
    if problem:
        return (number, problem, email)
    contact: dict[str, Any] = {"email": email, "data": {}}
    for raw_value, column, target in used:
        value = raw_value.strip()
        if target == "email" or not value:
            continue
        if len(value) > (255 if target else 1000) or "\x00" in value:
            return (number, "invalid_field", email)
        if target:
            contact[target] = value
        else:
            contact["data"][column] = value
    return (email.lower(), contact)


def model(data: bytes) -> Expected:
    text = model_text(data)
    delimiter = model_delimiter(text)
    (header, _), *rows = records_of(text, delimiter)
    expected = Expected(delimiter, [c.strip() for c in header])
    for number, (values, unterminated) in enumerate(rows, start=2):
        if not unterminated and not "".join(values).strip():
            continue  # a blank line: skipped, but it keeps its row number
        expected.total += 1
        outcome = row_outcome(number, values, unterminated, expected.columns)
        if len(outcome) == 3:
            expected.errors.append(outcome)
            continue
        key, contact = outcome
        if key in expected.contacts:
            expected.duplicates += 1
        expected.contacts[key] = contact  # the last row wins, whole
    return expected


# --------------------------------------------------------------------------------------------
# running one file and comparing
# --------------------------------------------------------------------------------------------


async def stored_contacts(db: asyncpg.Connection) -> dict[str, dict[str, Any]]:
    rows = await db.fetch(
        "SELECT email, email_normalized, first_name, last_name, country, time_zone, data"
        " FROM contacts"
    )
    out = {}
    for r in rows:
        contact: dict[str, Any] = {"email": r["email"], "data": json.loads(r["data"])}
        for name in FIELDS:
            if r[name] is not None:
                contact[name] = r[name]
        assert r["email_normalized"] == r["email"].strip().lower(), dict(r)
        out[r["email_normalized"]] = contact
    return out


async def errors_of(api: Api, job_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"limit": "100", **({"cursor": cursor} if cursor else {})}
        status, body = await api.get(f"/jobs/{job_id}/errors", params=params)
        assert status == 200, body
        found += body["data"]
        if not body["meta"].get("has_more"):
            return found
        cursor = body["meta"]["next_cursor"]


async def error_report_csv(api: Api, job_id: str) -> list[list[str]]:
    response = await api.client.get(
        f"/api/v1/jobs/{job_id}/errors",
        headers={"Authorization": f"Bearer {api.key}", "Accept": "text/csv"},
    )
    assert response.status == 200
    assert response.content_type == "text/csv"
    return list(csv.reader(io.StringIO(await response.text(), newline="")))


async def check_file(
    api: Api,
    run_jobs: RunJobs,
    db: asyncpg.Connection,
    data: bytes,
    *,
    multipart: bool = True,
) -> tuple[dict[str, Any], list[str]]:
    """Import ``data``, compare with the model; returns the job and a list of differences."""
    expected = model(data)
    job = await run_import(api, run_jobs, data, multipart=multipart, timeout=120)
    problems = job_problems(job, expected)
    problems += contact_problems(await stored_contacts(db), expected.contacts)
    errors = await errors_of(api, job["id"])
    problems += error_problems(errors, expected)
    problems += report_problems(await error_report_csv(api, job["id"]), len(errors))
    return job, problems


def job_problems(job: dict[str, Any], expected: Expected) -> list[str]:
    problems = []
    if job["status"] != "succeeded":
        problems.append(f"job {job['status']}: {job.get('error')}")
    if job["counts"] != expected.counts:
        problems.append(f"counts {job['counts']} != expected {expected.counts}")
    progress = job["progress"]
    if not progress["processed"] == progress["total"] == expected.total:
        problems.append(f"progress {progress}, expected a total of {expected.total}")
    return problems


def contact_problems(got: dict[str, Any], want: dict[str, Any]) -> list[str]:
    return [
        f"contact {key!r}: stored {got.get(key)!r} != expected {want.get(key)!r}"
        for key in sorted(set(got) | set(want))
        if got.get(key) != want.get(key)
    ]


def error_problems(errors: list[dict[str, Any]], expected: Expected) -> list[str]:
    problems = []
    got = sorted((e["row_number"], e["code"]) for e in errors)
    want = sorted((n, c) for n, c, _ in expected.errors)
    if got != want:
        problems.append(f"error rows {got} != expected {want}")
    by_row = {e["row_number"]: e["email"] for e in errors}
    for number, _, email in expected.errors:
        if email != "?" and number in by_row and by_row[number] != email:
            problems.append(f"error row {number}: email {by_row[number]!r} != {email!r}")
    return problems


def report_problems(report: list[list[str]], errors: int) -> list[str]:
    problems = []
    if report[0] != ["row_number", "email", "code", "message"]:
        problems.append(f"report header {report[0]}")
    problems += [
        f"report cell not neutralised: {cell!r}"
        for line in report[1:]
        for cell in line
        if cell.startswith(FORMULA)
    ]
    if len(report) - 1 != errors:
        problems.append(f"report has {len(report) - 1} rows, JSON {errors}")
    return problems


def assert_clean(problems: list[str]) -> None:
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------------------------
# the files
# --------------------------------------------------------------------------------------------

FILES: dict[str, bytes] = {
    # quoted emails with spaces / tabs / a line end around them (trimmed)
    "quoted_email_spaces": (
        b'email,first_name\n" ann@example.com ",Ann\n"\tbo@example.com\t",Bo\n'
        b'"cy@example.com\n",Cy\n  di@example.com  ,  Di  \n'
    ),
    # doubled quotes inside quoted names
    "escaped_quotes": (
        b"email,first_name,last_name,Nick\n"
        b'ann@example.com,"Ann ""The Hammer""","O""Neil",""""\n'
        b'bo@example.com,"""Bo""",x,"a""b""c"\n'
    ),
    # a quote in the middle / at the end of unquoted fields
    "mid_field_quotes": (
        b'email,Size,first_name\nann@example.com,5" screen,Ann\nbo@example.com,12",Bo\n'
        b'cy@example.com,a"b"c,Cy"\n'
    ),
    # a quoted field holding only a line end (blank once trimmed)
    "newline_only_field": (
        b'email,Note,first_name\nann@example.com,"\n",Ann\nbo@example.com,"\r\n",Bo\n'
        b'cy@example.com,"\n\n\n",Cy\ndi@example.com,ok,Di\n'
    ),
    # a carriage return alone inside quoted values of an LF and a CRLF file
    "cr_in_quotes_lf": (
        b'email,Note\nann@example.com,"a\rb"\nbo@example.com,"\rx\r"\ncy@example.com,z\n'
    ),
    "cr_in_quotes_crlf": (
        b'email,Note\r\nann@example.com,"a\rb"\r\nbo@example.com,"c\r\rd"\r\ncy@example.com,z\r\n'
    ),
    # mixed CRLF and LF line ends
    "mixed_crlf_lf": (
        b"email,first_name,Plan\r\nann@example.com,Ann,pro\nbo@example.com,Bo,free\r\n"
        b"cy@example.com,Cy,x\n\r\ndi@example.com,Di,y\r\n"
    ),
    # a trailing delimiter on every line (an unnamed last column), and only on the rows
    "trailing_delimiter_everywhere": (
        b"email,first_name,\nann@example.com,Ann,\nbo@example.com,Bo,\n"
    ),
    "trailing_delimiter_rows_only": (
        b"email;first_name\nann@example.com;Ann;\nbo@example.com;Bo;;;\n"
    ),
    # header with empty column names (ignored, with whatever they hold)
    "empty_header_names": (
        b'email,,first_name,"",  \nann@example.com,junk,Ann,"more junk",x\n'
        b"bo@example.com,\xff\xfe,Bo,\x00,y\n"
    ),
    # header aliases in odd case and spacing
    "aliases_odd_case": (
        b" EMAIL ,First  Name,SURNAME,Country_Code,Time-Zone,e.x\n"
        b"ann@example.com,Ann,Lee,DE,Europe/Berlin,1\n"
    ),
    "alias_e_mail": b"E-mail;Given Name;Family Name\nann@example.com;Ann;Lee\n",
    "alias_nbsp": (
        "Email\u00a0Address\tFirst\u00a0Name\tLast_Name\nann@example.com\tAnn\tLee\n"
    ).encode(),
    "alias_quoted": b'" Email ","first name"\nann@example.com,Ann\n',
    # BOM plus sep=; (LF), and sep= for a tab file
    "bom_sep_semicolon_lf": (
        b'\xef\xbb\xbfsep=;\nemail;first_name;Note\nann@example.com;Ann;"a, b"\nbad;X;\n'
    ),
    "sep_tab": b"sep=\t\r\nemail\tfirst_name\r\nann@example.com\tAnn\r\n",
    # a semicolon file whose values contain commas
    "semicolon_values_with_commas": (
        b"email;first_name;Company\nann@example.com;Ann;Acme, Inc\n"
        b'bo@example.com;Bo, Jr;x,y,z\ncy@example.com;"Cy; C";"1,2;3"\n'
    ),
    # a tab file with quoted tabs
    "tab_quoted_tabs": (
        b'email\tfirst_name\tNote\nann@example.com\t"Ann\tMarie"\t"a\tb"\n'
        b'bo@example.com\t"\tBo\t"\t"\t"\n'
    ),
    # rows with more and fewer fields than the header
    "ragged_rows": (
        b"email,first_name,last_name,Plan\nann@example.com,Ann\nbo@example.com\n"
        b"cy@example.com,Cy,Lee,pro,extra,\xff,\x00\nother,di@example.com\n"
    ),
    # the last line lacks a line end
    "no_final_newline": b"email,first_name\nann@example.com,Ann\nbo@example.com,Bo",
    "no_final_newline_quoted": b'email,first_name\nann@example.com,Ann\nbo@example.com,"Bo"',
    # a last line that is only a delimiter
    "last_line_delimiter": b"email,first_name\nann@example.com,Ann\n,\n",
    "last_line_delimiter_no_eol": b"email;first_name;x\nann@example.com;Ann;1\n;;",
    # lines of only spaces, tabs and quoted blanks between rows
    "blank_like_lines": (
        b'email,first_name\n   \nann@example.com,Ann\n \t \n , \n""\n"",""\nbo@example.com,Bo\n\n\n'
    ),
    # Unicode emails: IDN domain, non-ASCII local part, Unicode case
    "unicode_emails": (
        "email,first_name\nann@bücher.de,Ann\njöhn@example.com,John\n"
        "ÄNN@EXAMPLE.COM,Big\nänn@example.com,Small\n用户@例子.广告,Yong\n"
        "zoë@ẞtraße.de,Zoe\n"
    ).encode(),
    # emails with plus tags, uppercase, trailing dots, display names and other shapes
    "email_shapes": (
        b"email,first_name\nAnn+tag@Example.com,A1\nANN+TAG@example.COM,A2\n"
        b"ann@example.com.,Dot\nann.@example.com,Dot2\nAnn <ann@example.com>,Disp\n"
        b"<ann@example.com>,Angle\nmailto:ann@example.com,Mailto\nann@@example.com,Two\n"
        b'ann@localhost,Local\nann@example.test,Test\n"ann@example.com;bo@example.com",List\n'
        b"a..b@example.com,DD\n-dash@example.com,Dash\nx@sub--domain.example.com,DH\n"
        b"ann@example.co.uk,UK\nann@[127.0.0.1],IP\n"
    ),
    # custom values near the 1,000-character limit (and with spaces around)
    "custom_value_limits": (
        b"email,Note\n"
        + b"a999@example.com,"
        + b"n" * 999
        + b"\n"
        + b"a1000@example.com,"
        + b"n" * 1000
        + b"\n"
        + b"a1001@example.com,"
        + b"n" * 1001
        + b"\n"
        + b"b1000@example.com,  "
        + b"n" * 1000
        + b"  \n"
        + b"c1000@example.com,"
        + "é".encode() * 1000
        + b"\n"
        + b"c1001@example.com,"
        + "é".encode() * 1001
        + b"\n"
        + b"d1000@example.com,"
        + "😀".encode() * 1000
        + b"\n"
        + b'e1000@example.com,"'
        + b"n" * 998
        + b'\n"\n'
    ),
    # contact fields at 255/256 characters, multi-byte too
    "contact_field_limits": (
        b"email,first_name,last_name,country\n"
        + b"a255@example.com,"
        + b"f" * 255
        + b",L,DE\n"
        + b"a256@example.com,"
        + b"f" * 256
        + b",L,DE\n"
        + b"b255@example.com,F,"
        + "€".encode() * 255
        + b",DE\n"
        + b"b256@example.com,F,"
        + "€".encode() * 256
        + b",DE\n"
        + b"c255@example.com,F,L,"
        + "😀".encode() * 255
        + b"\n"
        + b"c256@example.com,F,L,"
        + "😀".encode() * 256
        + b"\n"
        + b"d255@example.com, "
        + b"f" * 255
        + b" ,L,DE\n"
    ),
    # email length limits: 64/65 byte local parts (ASCII and two-byte), 254/255 characters
    "email_length_limits": (
        b"email\n"
        + b"l" * 64
        + b"@example.com\n"
        + b"m" * 65
        + b"@example.com\n"
        + "é".encode() * 32
        + b"@example.com\n"
        + "é".encode() * 33
        + b"@example.com\n"
        + b"u@"
        + b".".join([b"d" * 63, b"d" * 63, b"d" * 63, b"d" * 56])
        + b".com\n"
        + b"v@"
        + b".".join([b"d" * 63, b"d" * 63, b"d" * 63, b"d" * 57])
        + b".com\n"
    ),
    # NUL bytes: in a custom value, a contact field, an ignored column, the email
    "nul_bytes": (
        b"email,first_name,Note,\nann@example.com,Ann,a\x00b,\nbo@example.com,B\x00o,ok,\n"
        b"cy@example.com,Cy,ok,\x00\nd\x00i@example.com,Di,ok,\nel@example.com,El,\x00,\n"
    ),
    # invalid UTF-8 in a custom column, in the email, in an ignored column
    "invalid_utf8_places": (
        b"email,first_name,Note,\nann@example.com,Ann,caf\xe9,\nb\xf6@example.com,Bo,ok,\n"
        b"cy@example.com,Cy,ok,\xff\xfe\nd\xc3@example.com,Di,ok,\n"
        b"el@example.com,El,\xc3\x28,\nfi@example.com,Fi,\xe2\x82,\nok@example.com,\xf0\x9f\x98\x80,ok,\n"
    ),
    # Windows-1252 bytes, undeclared: error rows, never mangled text
    "windows_1252_undeclared": (
        b"email,first_name,last_name\nzoe@example.com,Zo\xeb,\x93Q\x94\n"
        b"ok@example.com,Ok,Fine\nren\xe9@example.com,Ren\xe9,\n"
    ),
    # formula-like cells (error rows: the CSV report must neutralise them)
    "formula_cells": (
        b"email,first_name,Note\n=1+1,A,x\n+4912345,B,x\n-2,C,x\n@SUM(A1:A2),D,x\n"
        b'"\t=cmd",E,x\n=HYPERLINK(""http://x""),F,x\n'
        b"=a@example.com,G," + b"n" * 1001 + b"\n"
        b"-b@example.com,H,=2+2\n@c@example.com,I,x\n"
    ),
    # a header in quotes with line ends, mixed with CR-only file
    "old_mac_with_crlf_rows": (
        b'email,first_name\rann@example.com,Ann\r\nbo@example.com,Bo\rcy@example.com,"C\r\ny"\r'
    ),
    # a BOM again before a row (two files concatenated) and zero-width characters
    "second_bom_and_zero_width": (
        "email,first_name\nann@example.com,Ann\n\ufeffemail,first_name\n"
        "\ufeffbo@example.com,Bo\ncy@example.com\u200b,Cy\n\u00a0di@example.com\u00a0,\u00a0Di\u00a0\n"
    ).encode(),
    # duplicates within the file, in odd case, the last winning whole
    "duplicates_last_wins": (
        b"email,first_name,last_name,Plan,Team\nann@example.com,Ann,Lee,pro,red\n"
        b"bo@example.com,Bo,,free,\nANN@EXAMPLE.COM,,,,blue\n Ann@Example.Com ,Annie,,,\n"
        b"bo@example.com,Bo," + b"l" * 300 + b",,\n"
    ),
    # whitespace-only and missing emails with other fields
    "blank_emails": b'email,first_name\n   ,Ann\n,Bo\n"",Cy\n" ",Di\nel@example.com,El\n',
    # a quoted email column name holding a line end in the header, then rows
    "quoted_header_newline": b'"E-\nmail",first_name\nann@example.com,Ann\n',
    # header only (with BOM and CRLF)
    "header_only": b"\xef\xbb\xbfemail,first_name\r\n",
    # whitespace inside the delimiter positions: spaces after commas
    "spaces_after_delimiters": b'email, first_name, "Plan"\nann@example.com, Ann, "pro"\n',
    # a carriage return alone outside quotes in an LF file, Unicode line separators in values
    "bare_cr_outside_quotes": (
        b"email,first_name\nann@example.com,A\rbo@example.com,B\ncy@example.com,C\n"
    ),
    "unicode_line_separators": (
        "email,first_name,Note\nann@example.com,A\u2028B,x\x85y\nbo@example.com,\x0bBo\x0c,\x1c\x1d\x1e\n"
    ).encode(),
    # NFC and NFD forms, punycode and Unicode forms of one domain, dotless/dotted i
    "unicode_forms": (
        "email,first_name\nzo\u00eb@example.com,NFC\nzoe\u0308@example.com,NFD\n"
        "ann@b\u00fccher.de,U\nann@xn--bcher-kva.de,P\n\u0130nfo@example.com,I1\ni\u0307nfo@example.com,I2\n"
    ).encode(),
    # sep= variants
    "sep_upper_no_bom": b"SEP=;\nemail;first_name\nann@example.com;Ann\n",
    "sep_empty": b"sep=\nemail,first_name\nann@example.com,Ann\n",
    # a one-column file whose values hold delimiters and quotes
    "one_column": (
        b'email\n"ann@example.com"\nbo@example.com,Bo\n"cy@example.com;x"\ndi@example.com\tDi\n'
    ),
    # a quoted field that closes and goes on ("a"b) and a quote right after a delimiter
    "quote_then_text": (
        b'email,first_name,Note\nann@example.com,"An"n,"x"y"z"\nbo@example.com,Bo,""\n'
    ),
}


@pytest.mark.parametrize("name", sorted(FILES))
async def test_nasty_file(name: str, api: Api, run_jobs: RunJobs, db: asyncpg.Connection) -> None:
    _, problems = await check_file(api, run_jobs, db, FILES[name])
    assert_clean(problems)


@pytest.mark.parametrize(
    "name", ["mixed_crlf_lf", "tab_quoted_tabs", "unicode_emails", "formula_cells"]
)
async def test_nasty_file_raw_body(
    name: str, api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    _, problems = await check_file(api, run_jobs, db, FILES[name], multipart=False)
    assert_clean(problems)


async def test_formula_cells_are_neutralised_in_the_csv_report(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    job, problems = await check_file(api, run_jobs, db, FILES["formula_cells"])
    assert_clean(problems)
    report = await error_report_csv(api, job["id"])
    emails = [line[1] for line in report[1:]]
    assert "'=1+1" in emails and "'+4912345" in emails and "'-2" in emails
    assert "'@SUM(A1:A2)" in emails and "'=a@example.com" in emails, emails


FAR_ROWS = {
    5: b"far@example.com,First,Row,pro,red",
    2990: b"FAR@Example.COM,Last,,,",
    17: b"mid@example.com,M1,,gold,",
    1517: b"Mid@Example.com,M2,L2,,",
    2999: b"MID@EXAMPLE.COM,M3,,,blue",
    400: "ünï@example.com,U1,,,".encode(),
    2400: "ÜNÏ@EXAMPLE.COM,U2,,,".encode(),
    1000: b"dup-err@example.com,OK,,,",
    2000: b"DUP-ERR@example.com," + b"x" * 256 + b",,,",  # a repeat whose last row is an error
}


def _far_duplicates() -> bytes:
    rows = [b"email,first_name,last_name,Plan,Team"]
    for i in range(3000):
        if i in FAR_ROWS:
            rows.append(FAR_ROWS[i])
        elif i % 250 == 0:
            rows.append(b"bad-%d,X,,," % i)
        else:
            rows.append(b"user%d@example.com,U%d,L%d,free,t%d" % (i, i, i, i % 7))
    return b"\r\n".join(rows) + b"\r\n"


async def test_three_thousand_rows_with_far_apart_duplicates(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    _, problems = await check_file(api, run_jobs, db, _far_duplicates())
    assert_clean(problems)


CHUNKED = (
    "email,first_name,Note\r\n"
    + "".join(
        f'p{i}@example.com,Zoë{i}€,"a😀b\r\nc{i}é"\r\n'
        if i % 3
        else f"P{i}@example.com,ñ{i},😀😀\r\n"
        for i in range(120)
    )
    + "p1@example.com,Again,\r\n"
).encode()


@pytest.mark.parametrize("chunk", [24, 25, 26, 27, 29, 31, 64])
async def test_chunks_that_split_multibyte_characters_and_crlf(
    chunk: int, api: Api, run_jobs: RunJobs, db: asyncpg.Connection, settings: Settings
) -> None:
    settings.upload_chunk_bytes = chunk
    _, problems = await check_file(api, run_jobs, db, CHUNKED, multipart=False)
    assert_clean(problems)
    stored = await db.fetch("SELECT length(data) FROM job_file_chunks")
    assert not stored  # the file is gone once the job ended


@pytest.mark.parametrize("chunk", [24, 33, 64])
async def test_chunks_of_a_multipart_upload_with_odd_files(
    chunk: int, api: Api, run_jobs: RunJobs, db: asyncpg.Connection, settings: Settings
) -> None:
    settings.upload_chunk_bytes = chunk
    data = FILES["invalid_utf8_places"] + "zz@example.com,Zoë,€\n".encode()
    _, problems = await check_file(api, run_jobs, db, data)
    assert_clean(problems)


REFUSED = {
    "duplicate_custom_column": b"email,Plan,Plan\nann@example.com,a,b\n",
    "duplicate_email_alias": b"email,E-mail\nann@example.com,x\n",
    "duplicate_field_alias": b"email,First Name,first_name\nann@example.com,a,b\n",
    "blank_line_before_header": b"\nemail\nann@example.com\n",
    "no_email_column": b"name;phone\nAnn;1\n",
    "utf16_with_bom": "email\nann@example.com\n".encode("utf-16"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
async def test_refused_headers(name: str, api: Api, db: asyncpg.Connection) -> None:
    status, body = await upload(api, REFUSED[name])
    assert status == 422, body
    assert await db.fetchval("SELECT count(*) FROM jobs") == 0
    assert await db.fetchval("SELECT count(*) FROM job_file_chunks") == 0


async def test_case_different_custom_columns_are_two_keys(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    _, problems = await check_file(api, run_jobs, db, b"email,plan,Plan\nann@example.com,a,b\n")
    assert_clean(problems)


async def test_declared_windows_1252(api: Api, run_jobs: RunJobs, db: asyncpg.Connection) -> None:
    text = (
        "email,first_name,last_name\nzoe@example.com,Zoë,\u201cQ\u201d\nrené@example.com,René,€\n"
    )
    data = text.encode("cp1252") + b"bad@example.com,x\x81y,\n"
    expected = model(text.encode() + b"bad@example.com,x\xffy,\n")
    response = await api.client.post(
        "/api/v1/contacts/import",
        data=data,
        headers={
            "Authorization": f"Bearer {api.key}",
            "Content-Type": "text/csv; charset=windows-1252",
        },
    )
    status, body = response.status, await response.json()
    assert status == 202, body
    await run_jobs()
    job = await wait_for_job(api, body["data"]["id"])
    assert job["counts"] == expected.counts, job
    assert await stored_contacts(db) == expected.contacts


# --------------------------------------------------------------------------------------------
# generated files: every nasty shape above, mixed, thousands of rows, several batches, small
# chunks; then the same file again (a nightly re-import) and a changed one
# --------------------------------------------------------------------------------------------


def _quote(value: bytes) -> bytes:
    return b'"' + value.replace(b'"', b'""') + b'"'


def _field(rng: random.Random, delimiter: bytes, i: int, limit: int) -> bytes:
    """A value of a non-email column, raw bytes as a file holds it: each kind has its share."""
    kinds: list[tuple[float, Callable[[], bytes]]] = [
        (0.35, lambda: b"v%d" % rng.randrange(50)),  # repeated words: unchanged on re-import
        (0.10, lambda: b""),
        (0.05, lambda: _quote(b"a" + delimiter + b"b")),
        (0.04, lambda: _quote(rng.choice([b'line one\r\nline "two"', b"x\ny"]))),
        (0.03, lambda: b'5" screen'),
        (0.03, lambda: b"  padded %d  " % i),
        (0.03, lambda: "Zoë€😀".encode()),
        (0.02, lambda: b"n" * (limit + rng.choice([-1, 0, 1]))),
        (0.02, lambda: "é".encode() * (limit + rng.choice([0, 1]))),
        (0.01, lambda: b"a\x00b"),
        (0.01, lambda: b"caf\xe9"),
        (0.03, lambda: rng.choice([b"=1+1", b"+x", b"-y", b"@z"])),
        (0.02, lambda: _quote(b"")),
        (0.02, lambda: _quote(b"tab\there") if delimiter == b"\t" else b"tab\there"),
        (0.02, lambda: b"back\\slash"),
        (0.02, lambda: _quote(b'say ""hi""')),
        (0.02, lambda: "\u00a0nbsp\u00a0".encode()),
    ]
    roll = rng.random()
    for share, make in kinds:
        if roll < share:
            return make()
        roll -= share
    return b"w%d" % i


def _email(rng: random.Random, i: int, seen: list[bytes]) -> bytes:
    kind = rng.random()
    if seen and kind < 0.06:
        again = rng.choice(seen)  # a repeat, in another case, far away maybe
        return rng.choice([again.upper(), again.lower(), b" " + again + b" ", _quote(again)])
    if kind < 0.10:
        return rng.choice([b"bad-%d" % i, b"", b"   ", b"x%d@@example.com" % i, b"=cmd%d" % i])
    email = rng.choice([
        b"u%d@example.com" % i, b"U%d@Example.COM" % i, f"ü{i}@example.com",
        f"u{i}@bücher.de", b"u%d+tag@example.com" % i, b"u%d@sub--x.example.com" % i,
    ])  # fmt: skip
    email = email if isinstance(email, bytes) else email.encode()
    if rng.random() < 0.02:
        email = email.replace(b"@", b"\xe9@")  # not UTF-8
    seen.append(email)
    shaped = rng.random()
    if shaped < 0.1:
        return _quote(email)
    if shaped < 0.15:
        return b"  " + email + b" "
    return email


def generated_file(seed: int, rows: int = 1500) -> bytes:
    rng = random.Random(seed)
    delimiter = rng.choice([b",", b";", b"\t"])
    eol = rng.choice([b"\n", b"\r\n", None])  # None: mixed
    header = [b"Email Address", b"First Name", b"Surname", b"Plan", b"Note"]
    if rng.random() < 0.5:
        header.append(b"")  # an unnamed column
    head = (b"\xef\xbb\xbf" if rng.random() < 0.5 else b"") + delimiter.join(header)
    out = [head]
    seen: list[bytes] = []
    for i in range(rows):
        roll = rng.random()
        if roll < 0.02:
            out.append(rng.choice([b"", b"   ", delimiter * 3]))
            continue
        values = [_email(rng, i, seen)]
        values += [_field(rng, delimiter, i, 255) for _ in range(2)]
        values += [_field(rng, delimiter, i, 1000) for _ in range(2)]
        values += [_field(rng, delimiter, i, 1000)] if len(header) == 6 else []
        if roll < 0.05:
            values = values[: rng.randrange(1, len(values))]  # fewer fields
        elif roll < 0.08:
            values += [b"extra", b"\xff\x00"]  # more
        out.append(delimiter.join(values))
    ends = [eol or rng.choice([b"\n", b"\r\n"]) for _ in out]
    return b"".join(line + end for line, end in zip(out, ends, strict=True))


def merged(before: dict[str, dict[str, Any]], file: Expected) -> dict[str, dict[str, Any]]:
    """Upsert: given non-empty values overwrite, data merges key by key, the email stays."""
    after = {k: {**v, "data": dict(v["data"])} for k, v in before.items()}
    for key, contact in file.contacts.items():
        if key not in after:
            after[key] = contact
            continue
        old = after[key]
        for name in FIELDS:
            if name in contact:
                old[name] = contact[name]
        old["data"].update(contact["data"])
    return after


def changed_counts(before: dict[str, dict[str, Any]], file: Expected) -> dict[str, int]:
    after = merged(before, file)
    counts = {"created": 0, "updated": 0, "unchanged": 0}
    for key in file.contacts:
        if key not in before:
            counts["created"] += 1
        elif after[key] != before[key]:
            counts["updated"] += 1
        else:
            counts["unchanged"] += 1
    counts |= {"invalid": len(file.errors), "duplicate": file.duplicates}
    return {k: v for k, v in counts.items() if v}


def mutate(data: bytes, seed: int) -> bytes:
    """The same file with some values changed, some rows dropped, the rows shuffled a bit."""
    rng = random.Random(seed * 7919)
    lines = data.split(b"\n")
    out = [lines[0]]
    for line in lines[1:]:
        roll = rng.random()
        if roll < 0.05:
            continue
        if roll < 0.15:
            line = line.replace(b"v", b"V", 1)
        elif roll < 0.2:
            line = line.replace(b"w", b"ww", 1)
        out.append(line)
    return b"\n".join(out)


@pytest.mark.parametrize("seed", range(8))
async def test_generated_file_then_reimported_then_changed(
    seed: int, api: Api, run_jobs: RunJobs, db: asyncpg.Connection, settings: Settings
) -> None:
    rng = random.Random(seed)
    settings.upload_chunk_bytes = rng.choice([100, 257, 1000, 4096, 1 << 20])
    data = generated_file(seed)
    first = model(data)
    # a dry run first: the same counts, nothing written
    dry = await run_import(api, run_jobs, data, dry_run=True, timeout=120)
    assert dry["counts"] == first.counts, (dry["counts"], first.counts)
    assert await db.fetchval("SELECT count(*) FROM contacts") == 0
    _, problems = await check_file(api, run_jobs, db, data, multipart=seed % 2 == 0)
    assert_clean(problems)
    before = await stored_contacts(db)
    # the same file again: nothing changes
    job = await run_import(api, run_jobs, data, timeout=120)
    assert job["counts"] == changed_counts(before, first), job["counts"]
    assert await stored_contacts(db) == before
    # a changed file
    changed = mutate(data, seed)
    file = model(changed)
    job = await run_import(api, run_jobs, changed, timeout=120)
    want = merged(before, file)
    got = await stored_contacts(db)
    diffs = [
        f"{k!r}: stored {got.get(k)!r} != expected {want.get(k)!r}"
        for k in sorted(set(got) | set(want))
        if got.get(k) != want.get(k)
    ]
    assert job["counts"] == changed_counts(before, file), (
        job["counts"],
        changed_counts(before, file),
    )
    assert not diffs, "\n".join(diffs[:20])
    errors = await errors_of(api, job["id"])
    assert sorted((e["row_number"], e["code"]) for e in errors) == sorted(
        (n, c) for n, c, _ in file.errors
    )


# --------------------------------------------------------------------------------------------
# every small chunk size, over files whose stored text differs from the bytes sent: old Mac
# line ends, a declared windows-1252 or UTF-16, Excel's sep= line after a BOM
# --------------------------------------------------------------------------------------------

OLD_MAC = (
    b'email,first_name,Note\rann@example.com,Ann,"a\rb"\rbo@example.com,Bo,"c\r\nd"\r'
    b"\rcy@example.com,Cy,x\rnot-an-email,X,\r"
    + "dé@example.com,Dé,€\r".encode()
    + b"ANN@example.com,Annie,last\r"
)
CP1252_TEXT = (
    "email,first_name,last_name\r\nzoe@example.com,Zoë,\u201cQ\u201d\r\n"
    "rené@example.com,René,€uro\r\nbad,x,\r\n\u00e5sa@example.com,Åsa,\u2014\r\n"
    "ZOE@example.com,Zoé,‰\r\n"
)
UTF16_TEXT = (
    'email,first_name,Note\nann@example.com,Ann,😀 grin\nbö@example.com,Bö,"x\ny😀"\n'
    "用户@例子.广告,Yong,中文\nbad,x,y\n"
)
SEP_BOM = (
    b"\xef\xbb\xbfsep=;\r\nEmail Address;First Name\r\nann@example.com;\xc3\x85sa\r\n"
    b"not;X\r\nbo@example.com;B\xc3\xb6\r\n"
)
SWEEP = {
    "old_mac": (OLD_MAC, "text/csv", OLD_MAC),
    "cp1252": (
        CP1252_TEXT.encode("cp1252") + b"x@example.com,a\x81b,\r\n",
        "text/csv; charset=windows-1252",
        CP1252_TEXT.encode() + b"x@example.com,a\x81b,\r\n",
    ),
    "utf16": (UTF16_TEXT.encode("utf-16"), "text/csv; charset=utf-16", UTF16_TEXT.encode()),
    "utf16le": (UTF16_TEXT.encode("utf-16-le"), "text/csv; charset=utf-16-le", UTF16_TEXT.encode()),
    "latin1_label": (
        CP1252_TEXT.encode("cp1252"),
        "text/csv; charset=iso-8859-1",
        CP1252_TEXT.encode(),
    ),
    "sep_bom": (SEP_BOM, "text/csv", SEP_BOM),
}


@pytest.mark.parametrize("name", sorted(SWEEP))
async def test_every_small_chunk_size(
    name: str, api: Api, run_jobs: RunJobs, db: asyncpg.Connection, settings: Settings
) -> None:
    sent, content_type, as_utf8 = SWEEP[name]
    expected = model(as_utf8)
    failures = []
    tried = 0
    for chunk in [*range(20, 90), 4096]:
        settings.upload_chunk_bytes = chunk
        await db.execute("DELETE FROM contacts")
        response = await api.client.post(
            "/api/v1/contacts/import", data=sent,
            headers={"Authorization": f"Bearer {api.key}", "Content-Type": content_type},
        )  # fmt: skip
        body = await response.json()
        if response.status == 422 and "first chunk" in str(body):
            continue  # the header row must end in the first chunk (documented)
        assert response.status == 202, (chunk, body)
        tried += 1
        await run_jobs()
        job = await wait_for_job(api, body["data"]["id"])
        got = await stored_contacts(db)
        errors = sorted((e["row_number"], e["code"]) for e in await errors_of(api, job["id"]))
        want_errors = sorted((n, c) for n, c, _ in expected.errors)
        if job["counts"] != expected.counts or got != expected.contacts or errors != want_errors:
            failures.append((chunk, job["counts"], errors, got))
    assert tried > 10
    assert not failures, (
        f"expected {expected.counts} {expected.contacts} {expected.errors}\n"
        + "\n".join(map(repr, failures[:5]))
    )


# --------------------------------------------------------------------------------------------
# nasty files against existing contacts, lists and mirror
# --------------------------------------------------------------------------------------------


async def test_unclosed_quote_in_the_middle_of_a_batched_file(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection, settings: Settings
) -> None:
    settings.upload_chunk_bytes = 700
    rows = [b"u%d@example.com,U%d,n%d" % (i, i, i) for i in range(300)]
    rows[149] = b'u149@example.com,U149,"never closed'
    data = b"email,first_name,Note\n" + b"\n".join(rows) + b"\n"
    job, problems = await check_file(api, run_jobs, db, data)
    assert_clean(problems)
    assert job["progress"]["processed"] == job["progress"]["total"] == 300


async def test_a_200k_unquoted_value_in_small_chunks(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection, settings: Settings
) -> None:
    settings.upload_chunk_bytes = 1000
    data = (
        b"email,Note\na@example.com,ok\nb@example.com,"
        + b"z" * 200_000
        + b"\nc@example.com,"
        + "é".encode() * 100_000
        + b"\nd@example.com,fine\n"
    )
    _, problems = await check_file(api, run_jobs, db, data)
    assert_clean(problems)


async def test_100_custom_columns_accepted_101_refused(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    names = [f"c{i}" for i in range(100)]
    data = ("email," + ",".join(names) + "\na@example.com," + ",".join(names) + "\n").encode()
    _, problems = await check_file(api, run_jobs, db, data)
    assert_clean(problems)
    status, body = await upload(api, ("email," + ",".join(names) + ",c100\n").encode())
    assert status == 422, body


async def test_nasty_rows_over_existing_contacts(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    for email, first in (
        ("Ann@Example.com", "Ann"),
        ("bo@example.com", "Bo"),
        ("cy@example.com", None),
    ):
        status, _ = await api.post(
            "/contacts", {"email": email, "first_name": first, "data": {"keep": "k", "Plan": "old"}}
        )
        assert status == 201
    before = await stored_contacts(db)
    data = (
        b"email,first_name,Plan\n  ANN@EXAMPLE.COM  ,,new\nbo@example.com,  Bo  ,old\n"
        b'"cy@example.com",Cy,\nann@example.com,Annie,\nbo@example.com,Bo,'
        + b"p" * 1001
        + b"\nnew@example.com,N,x\n"
    )
    file = model(data)
    job = await run_import(api, run_jobs, data)
    assert job["counts"] == changed_counts(before, file), job["counts"]
    assert await stored_contacts(db) == merged(before, file)


async def test_mirror_with_a_nasty_file(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    list_id = await mirrored_list(api, run_jobs, "m", 8)
    data = (
        b"email;first_name;Note\n"
        b'" M0@EXAMPLE.COM ";A;x\n'  # quoted, padded, other case: in the file
        b"m1@example.com;" + b"f" * 256 + b";x\n"  # an error row for its field: still in the file
        b"m2@example.com;Jos\xe9;x\n"  # not UTF-8: still in the file
        b"   \n;;\n"  # blank
        b"m3@example.com;B;a\x00b\n"  # NUL: still in the file
        b"M4@example.com;C;y\nm4@example.com;D;z\n"  # repeated
        b"new@example.com;N;n\n"
    )
    job = await run_import_ok(api, run_jobs, data, list_id=list_id, mode="mirror")
    statuses = dict(await db.fetch(
        "SELECT c.email_normalized, m.status FROM list_memberships m"
        " JOIN contacts c ON c.id = m.contact_id"
    ))  # fmt: skip
    want = {f"m{i}@example.com": "subscribed" for i in range(5)}
    want |= {f"m{i}@example.com": "unsubscribed" for i in range(5, 8)}
    want["new@example.com"] = "subscribed"
    assert statuses == want, (statuses, job["counts"])
    assert job["counts"].get("unsubscribed") == 3, job["counts"]
    assert job["counts"].get("duplicate") == 1 and job["counts"].get("invalid") == 3, job["counts"]


async def run_import_ok(api: Api, run_jobs: RunJobs, data: bytes, **options: Any) -> dict[str, Any]:
    job = await run_import(api, run_jobs, data, **options)
    assert job["status"] == "succeeded", job
    return job


async def test_error_cap_with_nasty_rows(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection, settings: Settings
) -> None:
    settings.job_error_cap = 3
    rows = [
        b"=bad%d,x" % i if i % 7 == 0 else b'ok%d@example.com,"a\nb"' % i for i in range(1, 400)
    ]
    data = b"email,Note\n" + b"\n".join(rows) + b"\n"
    expected = model(data)
    job = await run_import_ok(api, run_jobs, data)
    assert job["counts"] == expected.counts
    assert job["errors_count"] == 3 and job["errors_truncated"] is True, job
    errors = await errors_of(api, job["id"])
    assert [e["row_number"] for e in errors] == [n for n, _, _ in expected.errors[:3]]
    report = await error_report_csv(api, job["id"])
    assert [line[1] for line in report[1:]] == ["'=bad7", "'=bad14", "'=bad21"]


async def test_fill_blanks_with_nasty_rows(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    await api.post(
        "/contacts",
        {"email": "ann@example.com", "first_name": "Ann", "data": {"Plan": "old", "Blank": ""}},
    )
    await api.post("/contacts", {"email": "bo@example.com", "last_name": "  "})
    before = await stored_contacts(db)
    data = (
        b"email\tfirst_name\tlast_name\tPlan\tBlank\tNew\n"
        b'" ANN@example.com "\t"  "\tLee\tnew\t"\tfilled\t"\t"\n"\n'
        b"bo@example.com\tBo\t\xc2\xa0Bee\xc2\xa0\t\t\tn\n"
        b"cy@example.com\tCy\t\t=x\t\t\n"
    )
    file = model(data)
    job = await run_import_ok(api, run_jobs, data, mode="fill_blanks")
    want = {k: {**v, "data": dict(v["data"])} for k, v in before.items()}
    for key, contact in file.contacts.items():
        if key not in want:
            want[key] = contact
            continue
        old = want[key]
        for name in FIELDS:
            if name in contact and not (old.get(name) or "").strip():
                old[name] = contact[name]
        for k, v in contact["data"].items():
            if not str(old["data"].get(k) or "").strip():
                old["data"][k] = v
    assert await stored_contacts(db) == want, job
    assert job["counts"] == {"updated": 2, "created": 1}, job["counts"]
