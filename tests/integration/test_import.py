"""CSV import end to end: upload shapes, modes and options, errors, dry run, idempotency."""

from __future__ import annotations

import asyncio
import io
import json
import random
from types import SimpleNamespace
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from aiohttp import FormData

from listmill import csvimport
from listmill.csvimport import CsvReader, read_header
from listmill.keyhash import key_hashes, legacy_key_hashes
from listmill.settings import Settings
from tests.conftest import Api, RunJobs, analyze_count, form_post, wait_for_job
from worker.jobs import csv_import


async def upload(
    api: Api,
    data: bytes,
    *,
    multipart: bool = True,
    headers: dict[str, str] | None = None,
    **options: Any,
) -> tuple[int, Any]:
    params = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in options.items()}
    if multipart:
        return await form_post(api, [*params.items(), ("file", data)], headers)
    sent = {"Authorization": f"Bearer {api.key}", **(headers or {})}
    response = await api.client.post(
        "/api/v1/contacts/import", data=data, params=params,
        headers={**sent, "Content-Type": "text/csv"},
    )  # fmt: skip
    return response.status, await response.json()


async def run_import(
    api: Api, run_jobs: RunJobs, data: bytes, *, timeout: float = 30, **options: Any
) -> dict[str, Any]:
    status, body = await upload(api, data, **options)
    assert status == 202, body
    assert body["data"]["lane"] == "large" and body["data"]["kind"] == "import"
    await run_jobs()
    return await wait_for_job(api, body["data"]["id"], timeout)


async def mirrored_list(api: Api, run_jobs: RunJobs, prefix: str, count: int) -> int:
    """A list whose members are {prefix}0@example.com, … (imported): a mirror test's list."""
    _, made = await api.post("/lists", {"name": "Mirror"})
    members = "email\n" + "".join(f"{prefix}{i}@example.com\n" for i in range(count))
    await run_import(api, run_jobs, members.encode(), list_id=made["data"]["id"])
    return int(made["data"]["id"])


CORPUS = (
    b"\xef\xbb\xbfEmail Address;First Name;Last Name;Plan;Company\r\n"
    b'ann@example.com;Ann;Lee;pro;"Acme; Inc"\r\n'
    b'BOB@example.com;Bob;;free;"Multi\r\nline"\r\n'
    b"\r\n"
    b"not-an-email;X;;;\r\n"
    b"=cmd|' /C calc'!A0;Evil;;;\r\n"
    b"carl@example.com;Carl\r\n"
    b"Ann@Example.com;Annie;;;\r\n"
    b"d@example.com;Jos\xe9;;;\r\n"
)


async def test_real_world_file_gives_exact_counts_and_errors(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    job = await run_import(api, run_jobs, CORPUS)
    assert job["status"] == "succeeded", job
    assert job["counts"] == {"created": 3, "invalid": 3, "duplicate": 1}
    assert job["progress"]["total"] == job["progress"]["processed"] == 7
    rows = await db.fetch(
        "SELECT email, first_name, last_name, data::text AS d FROM contacts"
        " ORDER BY email_normalized"
    )
    assert [(r["email"], r["first_name"]) for r in rows] == [
        ("Ann@Example.com", "Annie"), ("BOB@example.com", "Bob"), ("carl@example.com", "Carl")
    ]  # fmt: skip
    assert rows[1]["d"] == '{"Plan": "free", "Company": "Multi\\r\\nline"}'
    _, errors = await api.get(f"/jobs/{job['id']}/errors")
    assert [(e["row_number"], e["code"]) for e in errors["data"]] == [
        (5, "invalid_email"), (6, "invalid_email"), (9, "invalid_encoding")
    ]  # fmt: skip
    response = await api.client.get(
        f"/api/v1/jobs/{job['id']}/errors",
        headers={"Authorization": f"Bearer {api.key}", "Accept": "text/csv"},
    )
    assert "'=cmd|' /C calc'!A0" in await response.text()
    # nothing of the upload is left behind
    assert await db.fetchval("SELECT count(*) FROM job_file_chunks") == 0
    assert await db.fetchval("SELECT count(*) FROM import_rows") == 0


# values that COPY's text format must escape: a line end (CRLF, LF, CR), a tab, backslashes,
# and what reads as NULL or as the end of the data where it is not escaped
ESCAPED = ("Multi\r\nline", "two\nlines", "cr\ronly", "tab\there", "c:\\dir\\", "\\N", "\\.")


async def test_values_copy_escapes_are_stored_as_given_new_or_merged(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    """New contacts go in by COPY and existing ones through a merge from a COPYed batch: in
    both, each value is stored as the file gives it (and a blank is no value)."""

    def csv_of(names: list[str]) -> bytes:
        lines = ["email,first_name,last_name,Note"]
        for i, name in enumerate(names):
            quoted = '"' + name.replace('"', '""') + '"'
            lines.append(f"p{i}@example.com,{quoted},{quoted},{quoted}")
        return ("\r\n".join(lines) + "\r\n").encode()

    async def stored() -> list[tuple[Any, ...]]:
        rows = await db.fetch(
            "SELECT first_name, last_name, data->>'Note' FROM contacts ORDER BY id"
        )
        return [tuple(r) for r in rows]

    names = list(ESCAPED)
    job = await run_import(api, run_jobs, csv_of(names))
    assert job["counts"] == {"created": len(names)}, job
    assert await stored() == [(n, n, n) for n in names]
    changed = [f"{n} again" for n in reversed(names)]
    job = await run_import(api, run_jobs, csv_of(changed))
    assert job["counts"] == {"updated": len(names)}, job
    assert await stored() == [(n, n, n) for n in changed]


async def test_raw_text_csv_body_with_tabs(api: Api, run_jobs: RunJobs) -> None:
    status, body = await upload(api, b"email\tcountry\nt@example.com\tDE\n", multipart=False)
    assert status == 202
    await run_jobs()
    job = await wait_for_job(api, body["data"]["id"])
    assert job["counts"] == {"created": 1}


async def test_a_header_cell_with_a_line_end_keeps_the_columns_after_it(
    api: Api, db: asyncpg.Connection, run_jobs: RunJobs
) -> None:
    rows = "".join(f"p{i}@example.com,{i},P{i}\r\n" for i in range(300))
    data = f'Email,"Phone\n(mobile)",First Name\r\n{rows}'.encode()
    job = await run_import(api, run_jobs, data)
    assert job["counts"] == {"created": 300}, job
    stored = await db.fetch("SELECT email, first_name, data FROM contacts")
    assert sorted((r["email"], r["first_name"], json.loads(r["data"])) for r in stored) == sorted(
        (f"p{i}@example.com", f"P{i}", {"Phone\n(mobile)": str(i)}) for i in range(300)
    )


async def test_a_file_in_a_declared_charset_is_read_as_that_charset(
    api: Api, db: asyncpg.Connection, run_jobs: RunJobs
) -> None:
    # Excel on Windows saves "CSV" in windows-1252; a byte it has no character for (0x81)
    # stays what it was: an error row, as any byte that is not UTF-8
    rows = "email,first_name\nzoe@example.com,Zoë\nrene@example.com,René \u2018R\u2019\n"
    data = rows.encode("cp1252") + b"bad@example.com,x\x81y\n"
    ids = []
    for multipart in (False, True):
        type_ = "text/csv; charset=windows-1252"
        if multipart:
            form = FormData()
            form.add_field("file", io.BytesIO(data), filename="c.csv", content_type=type_)
            response = await api.client.post(
                "/api/v1/contacts/import", data=form, headers={"Authorization": f"Bearer {api.key}"}
            )
        else:
            response = await api.client.post(
                "/api/v1/contacts/import", data=data,
                headers={"Authorization": f"Bearer {api.key}", "Content-Type": type_},
            )  # fmt: skip
        assert response.status == 202, await response.text()
        ids.append((await response.json())["data"]["id"])
        await run_jobs()  # one after the other: run together, either may create the contacts
    first, second = [await wait_for_job(api, job_id) for job_id in ids]
    assert first["counts"] == {"created": 2, "invalid": 1}, first
    assert second["counts"] == {"unchanged": 2, "invalid": 1}, second
    names = dict(await db.fetch("SELECT email, first_name FROM contacts"))
    assert names == {"zoe@example.com": "Zoë", "rene@example.com": "René \u2018R\u2019"}
    _, errors = await api.get(f"/jobs/{ids[0]}/errors")
    assert [(e["row_number"], e["code"]) for e in errors["data"]] == [(4, "invalid_encoding")]
    assert "no text in the file's charset" in errors["data"][0]["message"]
    response = await api.client.post(
        "/api/v1/contacts/import", data=b"email\na@b.co\n",
        headers={"Authorization": f"Bearer {api.key}", "Content-Type": "text/csv; charset=nope"},
    )  # fmt: skip
    status, body = response.status, await response.json()
    assert status == 415 and "charset" in body["error"]["message"], body


async def test_only_a_file_parts_own_charset_is_its_charset(
    api: Api, db: asyncpg.Connection, run_jobs: RunJobs
) -> None:
    async def post(data: bytes, part_type: str) -> Any:
        form = FormData()
        form.add_field("file", io.BytesIO(data), filename="c.csv", content_type=part_type)
        headers = {"Authorization": f"Bearer {api.key}"}
        response = await api.client.post("/api/v1/contacts/import", data=form, headers=headers)
        return response.status, await response.json()

    # the charset of the form's own Content-Type has no say over the file part's bytes
    part = b'Content-Disposition: form-data; name="file"; filename="c.csv"\r\n'
    response = await api.client.post(
        "/api/v1/contacts/import",
        data=b"--b\r\n" + part + b"Content-Type: text/csv\r\n\r\n"
        + "email,first_name\nzoe@example.com,Zoë\n".encode() + b"\r\n--b--\r\n",
        headers={"Authorization": f"Bearer {api.key}",
                 "Content-Type": "multipart/form-data; boundary=b; charset=latin-1"},
    )  # fmt: skip
    status, body = response.status, await response.json()
    assert status == 202, body
    text = "email,first_name\nada@example.com,Adà\n"
    status, wide = await post(text.encode("utf-16"), "text/csv; charset=utf-16")
    assert status == 202, wide
    await run_jobs()
    for job in (body, wide):
        assert (await wait_for_job(api, job["data"]["id"]))["counts"] == {"created": 1}
    names = dict(await db.fetch("SELECT email, first_name FROM contacts"))
    assert names == {"zoe@example.com": "Zoë", "ada@example.com": "Adà"}
    assert (await post(b"email\n", "text/csv; charset=hex"))[0] == 415
    status, body = await post(
        "email\n".encode("utf-16-le") + b"\x00\xd8a\x00", "text/csv; charset=utf-16-le"
    )  # a lone surrogate
    assert status == 422 and "utf-16-le" in body["error"]["message"], body
    assert await db.fetchval("SELECT count(*) FROM jobs") == 2


async def test_upload_refusals(api: Api, db: asyncpg.Connection) -> None:
    cases = [
        (b"", {}, 422, "empty"),
        (b"name,phone\nx,1\n", {}, 422, "no email column"),
        (b"\x00\x01\x02\x03", {}, 422, "not text"),
        (b'Email,"First Name,Last Name\na@example.com,Ann,Lee\n', {}, 422, "never closed"),
        (b"email\na@b.co\n", {"mode": "mirror"}, 422, "list_id"),
        (b"email\na@b.co\n", {"mode": "bogus"}, 422, "mode"),
        (b"email\na@b.co\n", {"list_id": 9999}, 404, "list not found"),
        (b"email\na@b.co\n", {"consent_ip": "nope"}, 422, "IPv4"),
    ]
    for data, options, status, text in cases:
        got, body = await upload(api, data, **options)
        assert got == status, (options, body)
        assert text in str(body["error"]), body
    response = await api.client.post(
        "/api/v1/contacts/import", data=b"{}",
        headers={"Authorization": f"Bearer {api.key}", "Content-Type": "application/json"},
    )  # fmt: skip
    assert response.status == 415
    assert await db.fetchval("SELECT count(*) FROM jobs") == 0
    assert await db.fetchval("SELECT count(*) FROM job_file_chunks") == 0


async def test_form_fields_after_the_file_count_too(
    api: Api, db: asyncpg.Connection, run_jobs: RunJobs
) -> None:
    csv = b"email\ndry@example.com\n"
    status, body = await form_post(api, [("file", csv), ("dry_run", "true"), ("mode", "upsert")])
    assert status == 202, body
    assert body["data"]["params"]["dry_run"] is True
    await run_jobs()
    assert (await wait_for_job(api, body["data"]["id"]))["counts"]["created"] == 1
    assert await db.fetchval("SELECT count(*) FROM contacts") == 0
    refusals = [
        ([("file", csv), ("mode", "bogus")], "mode"),
        ([("file", csv), ("file", csv)], "one file"),
        ([("mode", "upsert"), ("file", csv), ("mode", "fill_blanks")], "given twice"),
    ]
    for fields, says in refusals:
        status, body = await form_post(api, fields)
        assert status == 422 and says in str(body["error"]), body
    status, body = await form_post(api, [("source", "x" * 5000), ("file", csv)])
    assert status == 413 and "source" in body["error"]["message"], body
    for query in ("dry_run=false&dry_run=true", "mode=upsert&mode=mirror"):  # in the query too
        response = await api.client.post(
            f"/api/v1/contacts/import?{query}", data=csv,
            headers={"Authorization": f"Bearer {api.key}", "Content-Type": "text/csv"},
        )  # fmt: skip
        body = await response.json()
        assert response.status == 422 and "given twice" in str(body["error"]), body
    assert await db.fetchval("SELECT count(*) FROM jobs") == 1
    boundary = "b0undary"
    raw = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="mode"\r\n'
        "Content-Type: text/plain; charset=nope\r\n\r\n\xff\xfe\r\n"
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="c.csv"\r\n'
        f"Content-Type: text/csv\r\n\r\nemail\r\na@b.co\r\n--{boundary}--\r\n"
    ).encode("latin-1")
    response = await api.client.post(
        "/api/v1/contacts/import", data=raw,
        headers={"Authorization": f"Bearer {api.key}",
                 "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )  # fmt: skip
    assert response.status == 400, await response.text()
    assert (await response.json())["error"]["code"] == "bad_request"
    assert await db.fetchval("SELECT count(*) FROM jobs") == 1
    assert await db.fetchval("SELECT count(*) FROM job_file_chunks") == 0


async def test_too_large_is_413_and_nothing_stays(
    api: Api,
    db: asyncpg.Connection,
    settings: Any,
    aiohttp_client: Any,
    database_url: str,
    redis_url: str,
) -> None:
    from api.app import create_app
    from tests.conftest import Api as Client
    from tests.conftest import make_settings

    small = make_settings(database_url, redis_url, max_upload_bytes=1000, upload_chunk_bytes=256)
    limited = Client(await aiohttp_client(create_app(small)), api.key, api.project_id)
    data = b"email\n" + b"".join(b"user%d@example.com\n" % i for i in range(200))
    status, body = await upload(limited, data)
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    assert await db.fetchval("SELECT count(*) FROM job_file_chunks") == 0
    assert await db.fetchval("SELECT count(*) FROM jobs") == 0


async def test_a_form_upload_in_chunks_shorter_than_its_boundary(
    api: Api,
    db: asyncpg.Connection,
    settings: Any,
    run_jobs: RunJobs,
    aiohttp_client: Any,
    database_url: str,
    redis_url: str,
) -> None:
    """A form's part refuses a read shorter than its boundary (aiohttp's is 32 characters,
    RFC 2046 allows 70): a small UPLOAD_CHUNK_BYTES still reads the file whole, and stores
    it in chunks of that size."""
    from api.app import create_app
    from tests.conftest import Api as Client
    from tests.conftest import make_settings

    small = make_settings(
        database_url, redis_url, upload_chunk_bytes=13, queue_prefix=settings.queue_prefix
    )
    client = Client(await aiohttp_client(create_app(small)), api.key, api.project_id)
    data = b"email,name\nann@example.com,Ann\nbo@example.com,Bo\n"  # its header in a chunk
    status, body = await upload(client, data)
    assert status == 202, body
    sizes = await db.fetch("SELECT length(data) FROM job_file_chunks ORDER BY seq")
    assert [size for (size,) in sizes] == [13, 13, 13, len(data) - 39]
    await run_jobs()
    job = await wait_for_job(api, body["data"]["id"])
    assert job["counts"] == {"created": 2}
    names = await db.fetch("SELECT email, data->>'name' FROM contacts ORDER BY email")
    assert [tuple(r) for r in names] == [("ann@example.com", "Ann"), ("bo@example.com", "Bo")]


async def test_an_old_mac_file_is_stored_with_line_feeds_and_read_a_chunk_at_a_time(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection, settings: Settings
) -> None:
    """Lines that end with a carriage return alone (Excel's "CSV (Macintosh)") were, to the
    import, one record's worth of text: held whole, then parsed at once (a 20 MB file took
    275 MB). They are stored with line feeds (listmill.lineends)."""
    settings.upload_chunk_bytes = 1000
    rows = [b"email,first_name,notes"] + [b"u%d@example.com,U%d,n" % (i, i) for i in range(300)]
    rows[100] = b"not-an-email,X,"  # row 101, the header being row 1
    rows[200] = b'q@example.com,Q,"two\rlines"'
    status, body = await upload(api, b"\r".join(rows) + b"\r")
    assert status == 202, body
    chunks = [bytes(r[0]) for r in await db.fetch("SELECT data FROM job_file_chunks ORDER BY seq")]
    assert len(chunks) > 5 and b"\r" not in b"".join(chunks)
    reader = CsvReader(read_header(chunks[0]))
    # rows from every chunk (the file's last line end, held until its end, is one of its own)
    assert chunks[-1] == b"\n" and all(list(reader.feed(chunk)) for chunk in chunks[:-2])
    await run_jobs()
    job = await wait_for_job(api, body["data"]["id"])
    assert job["counts"] == {"created": 299, "invalid": 1}, job
    _, errors = await api.get(f"/jobs/{job['id']}/errors")
    assert [e["row_number"] for e in errors["data"]] == [101]
    notes = await db.fetchval("SELECT data->>'notes' FROM contacts WHERE email = 'q@example.com'")
    assert notes == "two\nlines"


async def test_excels_sep_line_is_not_the_header(api: Api, run_jobs: RunJobs) -> None:
    """A file Excel is told the delimiter of (its first line ``sep=;``, which Excel hides):
    the header is the line after it, row 1, as Excel shows it."""
    data = b"\xef\xbb\xbfsep=;\r\nEmail Address;First Name\r\nann@x.io;Ann\r\nnot-an-email;X\r\n"
    job = await run_import(api, run_jobs, data)
    assert job["counts"] == {"created": 1, "invalid": 1}, job
    _, errors = await api.get(f"/jobs/{job['id']}/errors")
    assert [e["row_number"] for e in errors["data"]] == [3]
    _, contacts = await api.get("/contacts")
    assert [(c["email"], c["first_name"]) for c in contacts["data"]] == [("ann@x.io", "Ann")]


async def test_a_header_row_longer_than_the_first_chunk_is_refused(
    api: Api,
    db: asyncpg.Connection,
    run_jobs: RunJobs,
    aiohttp_client: Any,
    database_url: str,
    redis_url: str,
) -> None:
    """Only the first chunk's header row is read (by the web and the job): one that goes on
    past it would lose its last columns, so it is a 422. A file of a chunk or less may end in
    its header row."""
    from api.app import create_app
    from tests.conftest import Api as Client
    from tests.conftest import make_settings

    small = make_settings(database_url, redis_url, upload_chunk_bytes=256)
    client = Client(await aiohttp_client(create_app(small)), api.key, api.project_id)
    columns = [f"column_{i:03d}" for i in range(30)]  # 329 bytes with the email's
    long_header = ",".join(["email", *columns]).encode()
    status, body = await upload(client, long_header + b"\na@example.com" + b",x" * 30 + b"\n")
    assert status == 422, body
    assert body["error"]["details"][0]["message"] == (
        "the header row does not end in the file's first chunk (1 MiB by default)"
    )
    assert await db.fetchval("SELECT count(*) FROM jobs") == 0
    # as long a header in a chunk of the default size, and one that is a whole short file
    job = await run_import(api, run_jobs, long_header + b"\na@example.com" + b",x" * 30 + b"\n")
    assert job["counts"] == {"created": 1}
    assert (
        await db.fetchval("SELECT count(*) FROM jsonb_object_keys((SELECT data FROM contacts))")
        == 30
    )
    # no line end: shorter than a chunk, and a whole chunk (nothing follows it)
    for whole in (b"email,first_name", b"email," + b"x" * 240, b"email," + b"x" * 250):
        status, body = await upload(client, whole)
        assert status == 202, body
    status, body = await upload(client, b"email," + b"x" * 250 + b"y")  # a byte more follows
    assert status == 422, body
    assert body["error"]["details"][0]["message"] == (
        "the header row does not end in the file's first chunk (1 MiB by default)"
    )


async def test_modes_upsert_fill_blanks_and_unchanged(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    await api.post(
        "/contacts",
        {"email": "a@example.com", "first_name": "Old", "data": {"k": "1", "keep": "y"}},
    )
    before = await db.fetchval("SELECT updated_at FROM contacts")
    job = await run_import(api, run_jobs, b"email,first_name,k\na@example.com,,1\n")
    assert job["counts"] == {"unchanged": 1}
    assert await db.fetchval("SELECT updated_at FROM contacts") == before
    job = await run_import(
        api,
        run_jobs,
        b"email,first_name,last_name,k\na@example.com,New,Lee,2\n",
        mode="fill_blanks",
    )
    assert job["counts"] == {"updated": 1}
    row = await db.fetchrow("SELECT first_name, last_name, data::text AS d FROM contacts")
    assert row is not None and (row["first_name"], row["last_name"]) == ("Old", "Lee")
    assert row["d"] == '{"k": "1", "keep": "y"}'
    job = await run_import(
        api, run_jobs, b"email,first_name,k\na@example.com,New,2\n", mode="upsert"
    )
    row = await db.fetchrow("SELECT first_name, data::text AS d FROM contacts")
    assert row is not None and row["first_name"] == "New" and row["d"] == '{"k": "2", "keep": "y"}'


async def test_fill_blanks_fills_fields_and_data_keys_left_blank_by_the_api(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    """The API stores "" as given: for fill_blanks that field is empty, as are a data key
    whose value is null or blank text; values there are kept, and filling with nothing
    changes nothing."""
    given = {"first_name": "", "last_name": "  ", "country": "FR"}
    data = {"plan": "", "seats": None, "kept": "k", "count": 0}
    status, _ = await api.post("/contacts", {"email": "e@x.com", **given, "data": data})
    assert status == 201
    blanks = b"email,first_name,last_name,country,plan,seats,kept,count\ne@x.com,,,,,,,\n"
    job = await run_import(api, run_jobs, blanks, mode="fill_blanks")
    assert job["counts"] == {"unchanged": 1}, job
    full = b"email,first_name,last_name,country,plan,seats,kept,count,new\n"
    full += b"e@x.com,Eve,Lee,DE,pro,3,other,7,n\n"
    for counts in ({"updated": 1}, {"unchanged": 1}):  # and the same file again
        job = await run_import(api, run_jobs, full, mode="fill_blanks")
        assert job["counts"] == counts, job
    row = await db.fetchrow("SELECT first_name, last_name, country, data FROM contacts")
    assert (row["first_name"], row["last_name"], row["country"]) == ("Eve", "Lee", "FR")
    assert json.loads(row["data"]) == {
        "plan": "pro", "seats": "3", "kept": "k", "count": 0, "new": "n"
    }  # fmt: skip
    # members added to a list fill blanks the same way
    status, body = await api.post("/lists", {"name": "L"})
    assert status == 201
    list_id = body["data"]["id"]
    status, _ = await api.post("/contacts", {"email": "f@x.com", "first_name": " "})
    assert status == 201
    added = {"contacts": [{"email": "f@x.com", "first_name": "Fay"}]}
    status, body = await api.post(f"/lists/{list_id}/members", added)
    assert status == 202, body
    await run_jobs()
    assert (await wait_for_job(api, body["data"]["id"]))["status"] == "succeeded"
    names = "SELECT first_name FROM contacts WHERE email = 'f@x.com'"
    assert await db.fetchval(names) == "Fay"


async def test_list_import_resubscribe_mirror_and_enrollment(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    _, made = await api.post("/lists", {"name": "Sync"})
    list_id = made["data"]["id"]
    await api.post(
        "/sequences", {"name": "W", "trigger_config": {"type": "list_added", "list_id": list_id}}
    )
    first = b"email\nkeep@example.com\nleave@example.com\nquit@example.com\n"
    job = await run_import(api, run_jobs, first, list_id=list_id)
    assert job["counts"] == {"created": 3, "added": 3, "enrolled": 3}
    await db.execute("UPDATE contacts SET status = 'unsubscribed' WHERE email = 'quit@example.com'")
    second = b"email\nkeep@example.com\nquit@example.com\nnew@example.com\n"
    job = await run_import(api, run_jobs, second, list_id=list_id, mode="mirror")
    assert job["counts"] == {
        "created": 1, "unchanged": 2, "skipped": 1, "suppressed": 1, "added": 1, "enrolled": 1,
        "unsubscribed": 1,
    }  # fmt: skip
    statuses = dict(await db.fetch(
        "SELECT c.email, m.status FROM list_memberships m JOIN contacts c ON c.id = m.contact_id"
    ))  # fmt: skip
    assert statuses == {
        "keep@example.com": "subscribed", "leave@example.com": "unsubscribed",
        "quit@example.com": "subscribed", "new@example.com": "subscribed",
    }  # fmt: skip
    job = await run_import(
        api, run_jobs, b"email\nquit@example.com\n", list_id=list_id, resubscribe=True
    )
    assert job["counts"] == {"updated": 1, "resubscribed": 1, "skipped": 1}
    _, body = await api.get(f"/lists/{list_id}")
    assert body["data"]["member_count"] == 3
    assert await db.fetchval("SELECT count(*) FROM sequence_enrollments") == 4


@pytest.mark.parametrize("opt_in", ["single", "double"])
async def test_resubscribe_moves_who_unsubscribed_only_and_counts_contacts_apart_from_members(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection, opt_in: str
) -> None:
    _, made = await api.post("/lists", {"name": "Re", "opt_in_process": opt_in})
    list_id = made["data"]["id"]
    await api.post(
        "/sequences", {"name": "W", "trigger_config": {"type": "list_added", "list_id": list_id}}
    )
    joined = "subscribed" if opt_in == "single" else "pending"
    await run_import(api, run_jobs, b"email\nstay@example.com\nleft@example.com\n", list_id=list_id)
    await api.post("/contacts", {"email": "quit@example.com"})
    await db.execute(
        "UPDATE list_memberships SET status = 'unsubscribed' WHERE contact_id ="
        " (SELECT id FROM contacts WHERE email = 'left@example.com')"
    )
    await db.execute("UPDATE contacts SET status = 'unsubscribed' WHERE email = 'quit@example.com'")
    before = dict(await db.fetch("SELECT email, updated_at FROM contacts"))
    enrolled = await db.fetchval("SELECT count(*) FROM sequence_enrollments")
    data = b"email\nstay@example.com\nleft@example.com\nquit@example.com\n"
    job = await run_import(api, run_jobs, data, list_id=list_id, resubscribe=True)
    assert job["counts"] == {
        "unchanged": 2, "updated": 1, "resubscribed": 1,  # the contacts: quit's status moved
        "skipped": 1, "members_resubscribed": 1, "added": 1,  # the members: left's moved
        **({"enrolled": 1} if opt_in == "single" else {}),  # quit's: left's was made before
    }  # fmt: skip
    statuses = dict(await db.fetch(
        "SELECT c.email, m.status FROM list_memberships m JOIN contacts c ON c.id = m.contact_id"
    ))  # fmt: skip
    # a pending member stays pending: only a confirmation makes one confirmed
    emails = ["stay@example.com", "left@example.com", "quit@example.com"]
    assert statuses == dict.fromkeys(emails, joined)
    rows = await db.fetch("SELECT email, status, updated_at FROM contacts")
    assert {r["email"]: r["status"] for r in rows} == dict.fromkeys(emails, "subscribed")
    assert {r["email"] for r in rows if r["updated_at"] != before[r["email"]]} == {emails[2]}
    assert await db.fetchval("SELECT count(*) FROM sequence_enrollments") == enrolled + (
        opt_in == "single"
    )


async def test_resubscribe_with_a_status_gives_that_status_to_who_unsubscribed(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    _, made = await api.post("/lists", {"name": "Mig", "opt_in_process": "double"})
    list_id = made["data"]["id"]
    await run_import(api, run_jobs, b"email\nleft@example.com\n", list_id=list_id)
    await db.execute("UPDATE list_memberships SET status = 'unsubscribed'")
    data = b"email\nleft@example.com\nnew@example.com\n"
    job = await run_import(
        api, run_jobs, data, list_id=list_id, resubscribe=True, status="confirmed"
    )
    assert job["counts"] == {"unchanged": 1, "created": 1, "members_resubscribed": 1, "added": 1}
    assert set(await db.fetch("SELECT status FROM list_memberships")) == {("confirmed",)}
    # a status that is no subscription moves nobody back
    await db.execute("UPDATE list_memberships SET status = 'unsubscribed'")
    job = await run_import(api, run_jobs, data, list_id=list_id, resubscribe=True, status="cleaned")
    assert job["counts"] == {"unchanged": 2, "skipped": 2}, job


async def test_dry_run_counts_equal_the_real_run_and_write_nothing(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    _, made = await api.post("/lists", {"name": "Dry"})
    list_id = made["data"]["id"]
    await api.post("/contacts", {"email": "ann@example.com", "first_name": "A"})
    dry = await run_import(api, run_jobs, CORPUS, list_id=list_id, dry_run=True)
    assert await db.fetchval("SELECT count(*) FROM contacts") == 1
    assert await db.fetchval("SELECT count(*) FROM list_memberships") == 0
    real = await run_import(api, run_jobs, CORPUS, list_id=list_id)
    assert dry["counts"] == real["counts"] and dry["errors_count"] == real["errors_count"]
    assert await db.fetchval("SELECT count(*) FROM contacts") == 3


async def test_trigger_sequences_false_writes_memberships_without_enrollment(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    _, made = await api.post("/lists", {"name": "Migration"})
    list_id = made["data"]["id"]
    await api.post(
        "/sequences", {"name": "W", "trigger_config": {"type": "list_added", "list_id": list_id}}
    )
    job = await run_import(
        api, run_jobs, b"email\nm@example.com\n", list_id=list_id, trigger_sequences=False,
        source="migration", consent_ip="203.0.113.9", consent_source="old-crm",
    )  # fmt: skip
    assert job["counts"] == {"created": 1, "added": 1}
    row = await db.fetchrow(
        "SELECT source, host(consent_ip) AS ip, consent_source FROM list_memberships"
    )
    assert row is not None and tuple(row) == ("migration", "203.0.113.0", "old-crm")
    assert await db.fetchval("SELECT count(*) FROM sequence_enrollments") == 0


async def test_import_idempotency(api: Api) -> None:
    headers = {"Idempotency-Key": "nightly"}
    status, first = await upload(api, b"email\na@example.com\n", headers=headers)
    assert status == 202
    status, again = await upload(api, b"email\na@example.com\n", headers=headers)
    assert status == 200 and again["data"]["id"] == first["data"]["id"]
    status, _ = await upload(api, b"email\nb@example.com\n", headers=headers)
    assert status == 409


async def test_many_batches_and_cancel(api: Api, run_jobs: RunJobs, db: asyncpg.Connection) -> None:
    data = b"email,first_name\n" + b"".join(b"u%d@example.com,U%d\n" % (i, i) for i in range(1050))
    job = await run_import(api, run_jobs, data)
    assert job["counts"] == {"created": 1050}
    assert job["progress"]["percent"] == 100.0
    job = await run_import(api, run_jobs, data)
    assert job["counts"] == {"unchanged": 1050}


async def test_file_kept_for_its_retention_then_purged_by_retention(
    api: Api, settings: Settings, redis_url: str, db: asyncpg.Connection
) -> None:
    import asyncio

    from arq.connections import ArqRedis

    from worker.context import WorkerContext
    from worker.retention import apply_retention
    from worker.settings import in_process_workers, make_context

    settings = settings.model_copy(update={"import_file_retention_seconds": 1})
    context = await make_context(settings)
    redis: ArqRedis = ArqRedis.from_url(redis_url)
    try:
        _, body = await upload(api, b"email\nkept@example.com\n")
        for worker in in_process_workers(settings, context, burst=True):
            await worker.async_run()
            await worker.close()
        job = await wait_for_job(api, body["data"]["id"])
        assert job["status"] == "succeeded"
        assert await db.fetchval("SELECT count(*) FROM job_file_chunks") == 1
        assert await db.fetchval("SELECT count(*) FROM import_rows") == 0
        await asyncio.sleep(1.1)
        summary = await apply_retention(WorkerContext(**context, redis=redis))
        assert summary["file_chunks"] == 1
        assert await db.fetchval("SELECT count(*) FROM job_file_chunks") == 0
    finally:
        await redis.aclose()
        await context["pool"].close()


NASTY = (
    b'"Name, Full";email;"Size, inches";notes\n'
    b'"Lee, Ann";ann@example.com;5" screen;"one\ntwo"\n'
    b'Bo;bo@example.com;x;"' + b"z" * 200_000 + b'"\n'
    b"Cy;cy@example.com;7;ok\n"
    b'Di;di@example.com;8;"never closed\n'
    b"Ed;ed@example.com;9;next row\n"
)


async def test_nasty_file_every_row_accounted_for_with_its_spreadsheet_row_number(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    job = await run_import(api, run_jobs, NASTY)
    assert job["status"] == "succeeded", job
    assert job["counts"] == {"created": 3, "invalid": 2}
    rows = await db.fetch("SELECT email, data FROM contacts ORDER BY id")
    ann = {"Name, Full": "Lee, Ann", "Size, inches": '5" screen', "notes": "one\ntwo"}
    cy = {"Name, Full": "Cy", "Size, inches": "7", "notes": "ok"}
    ed = {"Name, Full": "Ed", "Size, inches": "9", "notes": "next row"}  # not in Di's notes
    assert [(r["email"], json.loads(r["data"])) for r in rows] == [
        ("ann@example.com", ann), ("cy@example.com", cy), ("ed@example.com", ed)
    ]  # fmt: skip
    _, errors = await api.get(f"/jobs/{job['id']}/errors")
    assert [(e["row_number"], e["email"], e["code"]) for e in errors["data"]] == [
        (3, "bo@example.com", "invalid_field"), (5, "di@example.com", "unterminated_quote"),
    ]  # fmt: skip


async def test_an_email_is_imported_without_the_invisible_characters_around_it(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    """Two exports joined into one (the second's BOM before its first row), zero-width
    spaces and joiners copied from a web page: as the API has it (validation.trim_email)."""
    data = (
        "email,first_name\nann@example.com,Ann\n\ufeffbo@example.com,Bo\n"
        "cy@example.com\u200b,Cy\n\u200b \u2060Dee@example.com\u200d,Dee\nANN@example.com\u200b,A\n"
    ).encode()
    job = await run_import(api, run_jobs, data)
    assert job["counts"] == {"created": 4, "duplicate": 1}, job
    emails = [r[0] for r in await db.fetch("SELECT email FROM contacts ORDER BY email_normalized")]
    assert emails == ["ANN@example.com", "bo@example.com", "cy@example.com", "Dee@example.com"]
    status, made = await api.post("/contacts", {"email": "\u200beve@example.com\ufeff"})
    assert status == 201 and made["data"]["email"] == "eve@example.com", made


async def test_a_stray_quote_is_one_error_row_in_a_file_past_the_quoted_field_limit(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    """The quote opened in row 3 would close in the file's last row, 1.5 MB on: past the
    limit, so row 3 ends with its line and every row after it is a contact (pass one, which
    cuts keys out of the bytes, counts the rows pass two reads)."""
    rows = b"".join(b"u%05d@example.com,First %d\n" % (i, i) for i in range(60_000))
    data = b'email,first_name\na@example.com,A\nb@example.com,"B\n' + rows + b'z@example.com,Z"\n'
    job = await run_import(api, run_jobs, data)
    assert job["status"] == "succeeded", job
    assert job["counts"] == {"created": 60_002, "invalid": 1}
    assert job["progress"]["total"] == 60_003
    _, errors = await api.get(f"/jobs/{job['id']}/errors")
    assert [(e["row_number"], e["email"], e["code"]) for e in errors["data"]] == [
        (3, "b@example.com", "unterminated_quote")
    ]
    last = await db.fetchrow("SELECT first_name FROM contacts WHERE email = 'z@example.com'")
    assert last["first_name"] == 'Z"'  # a quote inside an unquoted field is text
    assert await db.fetchval("SELECT count(*) FROM contacts WHERE email LIKE 'u%'") == 60_000


async def test_mirror_keeps_members_whose_row_is_invalid_for_another_reason_than_the_email(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    list_id = await mirrored_list(api, run_jobs, "m", 5)
    # an Excel export in Latin-1, an over-long field, a NUL byte: the row is an error row,
    # but its person is in the file and stays a member (a quote never closed: see below)
    second = (
        b"email,first_name\nm0@example.com,Jos\xe9\nm1@example.com," + b"x" * 300 + b"\n"
        b"m2@example.com,Ann\nM2@example.com,Jos\xe9\nnot-an-email,X\nm4@example.com,D\x00i\n"
    )
    for dry_run in (True, False):
        job = await run_import(
            api, run_jobs, second, list_id=list_id, mode="mirror", dry_run=dry_run
        )
        assert job["counts"] == {"invalid": 5, "updated": 1, "skipped": 1, "unsubscribed": 1}
    statuses = dict(await db.fetch(
        "SELECT c.email, m.status FROM list_memberships m JOIN contacts c ON c.id = m.contact_id"
    ))  # fmt: skip
    assert statuses == {
        "m0@example.com": "subscribed", "m1@example.com": "subscribed",
        "m2@example.com": "subscribed", "m3@example.com": "unsubscribed",
        "m4@example.com": "subscribed",
    }  # fmt: skip


async def test_a_mirror_import_of_a_broken_file_unsubscribes_nobody(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    """A file that ends inside a quoted field (cut short inside it, maybe, or a quote never
    closed: the lines after it are read as rows, but who else was in the file is not known),
    or a file in which no row names a valid email: no member is unsubscribed."""
    list_id = await mirrored_list(api, run_jobs, "u", 10)
    swallowed = b'email,first_name\nu0@example.com,A\nu2@example.com,"U2\nu3@example.com,B\n'
    latin1 = swallowed.replace(b"B\n", b"Jos\xe9\nu4@example.com,B\n")  # not UTF-8 in it too
    no_email = b"email,first_name\nnot-an-email,A\n,B\n"
    # cut short inside the last row's quoted field, with its line end or not, or inside the
    # email's own quotes
    cut = [b'email,first_name\nu0@example.com,"A', b'email,first_name\nu0@example.com,"A\n']
    cut.append(b'email\nu0@example.com\n"u1@example.com')
    cut += [b'email\nu0@example.com\n"', b'email,n\nu0@example.com,A\n,"']  # right after it
    for broken in (swallowed, latin1, no_email, *cut):
        for dry_run in (True, False):
            job = await run_import(
                api, run_jobs, broken, list_id=list_id, mode="mirror", dry_run=dry_run
            )
            assert job["status"] == "succeeded" and "unsubscribed" not in job["counts"], job
    subscribed = "SELECT count(*) FROM list_memberships WHERE status = 'subscribed'"
    assert await db.fetchval(subscribed) == 10
    # the same file whole: the others go
    whole = b'email,first_name\nu0@example.com,A\nu1@example.com,"B"\n'
    job = await run_import(api, run_jobs, whole, list_id=list_id, mode="mirror")
    assert job["counts"]["unsubscribed"] == 8, job
    assert await db.fetchval(subscribed) == 2


async def test_a_mirror_import_whose_quote_breaks_mid_file_unsubscribes_nobody(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stray quote that does not close within the limit, mid-file, in a file that ends as
    any other: the rows after it are read, but a line of the quote's row may have been
    another row's, and who else is in the file is not known."""
    list_id = await mirrored_list(api, run_jobs, "u", 10)
    monkeypatch.setattr(csvimport, "QUOTED_FIELD_LIMIT", 30)
    broken = b'email,first_name\nu0@example.com,"A\nu1@example.com,B\n' + b"x,y\n" * 20
    job = await run_import(api, run_jobs, broken, list_id=list_id, mode="mirror")
    assert job["status"] == "succeeded" and "unsubscribed" not in job["counts"], job
    _, errors = await api.get(f"/jobs/{job['id']}/errors")
    assert errors["data"][0]["code"] == "unterminated_quote"
    subscribed = "SELECT count(*) FROM list_memberships WHERE status = 'subscribed'"
    assert await db.fetchval(subscribed) == 10


def _repeats_file() -> bytes:
    """350 rows, in batches of 100: two emails repeat in another batch, one in its own."""
    special = {
        5: b"pre@example.com,,X5,team",
        10: b"early@example.com,Early,Gone,pro",
        20: b"same@example.com,A,B,",
        30: b"same@example.com,C,,",
        250: b"EARLY@example.com,Late,,",
        305: b"Pre@Example.com,Final,,",
    }
    rows = [special.get(i, b"u%d@example.com,U%d,,free" % (i, i)) for i in range(1, 351)]
    return b"email,first_name,last_name,plan\n" + b"\n".join(rows) + b"\n"


async def test_an_email_repeated_in_later_batches_takes_its_last_row_whole(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    """Last row wins: the earlier rows of an email leave nothing behind, whichever batch they
    were in, for a new contact and for one that existed; a dry run counts the same."""
    await api.post("/contacts", {"email": "pre@example.com", "first_name": "Pre"})
    expected = {"created": 346, "updated": 1, "duplicate": 3}
    dry = await run_import(api, run_jobs, _repeats_file(), dry_run=True)
    assert dry["counts"] == expected
    assert await db.fetchval("SELECT count(*) FROM contacts") == 1
    job = await run_import(api, run_jobs, _repeats_file())
    assert job["counts"] == expected
    rows = await db.fetch(
        "SELECT email, first_name, last_name, data FROM contacts"
        " WHERE email_normalized IN ('pre@example.com', 'early@example.com', 'same@example.com')"
        " ORDER BY email_normalized"
    )
    assert [(r["email"], r["first_name"], r["last_name"], r["data"]) for r in rows] == [
        ("EARLY@example.com", "Late", None, "{}"),
        ("pre@example.com", "Final", None, "{}"),
        ("same@example.com", "C", None, "{}"),
    ]
    assert await db.fetchval("SELECT count(*) FROM contacts") == 347


async def test_error_rows_past_the_cap_are_counted_across_batches(
    api: Api, run_jobs: RunJobs, settings: Settings
) -> None:
    settings.job_error_cap = 5
    rows = [b"bad-%d" % i if i % 10 == 0 else b"ok%d@example.com" % i for i in range(1, 351)]
    job = await run_import(api, run_jobs, b"email\n" + b"\n".join(rows) + b"\n")
    assert job["counts"] == {"created": 315, "invalid": 35}
    assert job["errors_count"] == 5 and job["errors_truncated"] is True
    _, errors = await api.get(f"/jobs/{job['id']}/errors")
    assert [e["row_number"] for e in errors["data"]] == [11, 21, 31, 41, 51]


async def test_a_new_email_inserted_by_someone_else_meanwhile_is_merged_not_lost(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection, settings: Settings
) -> None:
    """A batch COPYs the emails it did not find; when another transaction inserts one of
    them first, the COPY fails and the whole batch is merged with ON CONFLICT instead."""
    data = b"email,first_name\n" + b"".join(b"r%d@example.com,R%d\n" % (i, i) for i in range(50))
    racing = await asyncpg.connect(settings.database_url)
    try:
        writer = racing.transaction()
        await writer.start()
        await racing.execute(
            "INSERT INTO contacts (project_id, email, email_normalized)"
            " VALUES ($1, 'r7@example.com', 'r7@example.com')",
            api.project_id,
        )
        status, body = await upload(api, data)
        assert status == 202
        running = asyncio.create_task(run_jobs())
        for _ in range(200):  # until the batch's COPY waits for the uncommitted r7
            waiting = await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND query LIKE 'COPY%contacts%'"
            )
            if waiting:
                break
            await asyncio.sleep(0.02)
        assert waiting, "the import's COPY never waited for the racing insert"
        await writer.commit()
        await running
    finally:
        await racing.close()
    job = await wait_for_job(api, body["data"]["id"])
    assert job["counts"] == {"created": 49, "updated": 1}
    assert await db.fetchval(
        "SELECT first_name FROM contacts WHERE email = 'r7@example.com'"
    ) == "R7"  # fmt: skip
    assert await db.fetchval("SELECT count(*) FROM contacts") == 50


async def _changed_by(conn: Any, project_id: int, merge: str, mode: str, given: Any) -> int:
    """How many contacts one merge of c@x.io with (first_name, data) ``given`` changed: the
    import's (merge_text, from COPY text) or the API's (merge_contacts)."""
    from listmill.csvcolumns import contacts_of
    from listmill.queries import contacts

    first_name, data = given
    if merge == "import":
        row = (1, 2, "c@x.io", "c@x.io", first_name, None, None, None, data)
        text = contacts_of([row]).copy_text(project_id)
        return (await contacts.merge_text(conn, project_id, text, mode))[1]
    given_row = {"email": "c@x.io", "email_normalized": "c@x.io", "first_name": first_name}
    return len(await contacts.merge_contacts(conn, project_id, [{**given_row, "data": data}], mode))


async def test_the_import_skips_exactly_the_rows_the_merge_would_not_change(
    api: Api, settings: Settings
) -> None:
    """An import's batch merges only the rows that Postgres finds new or changed before the
    merge (merge_text); over every combination of kept and given values, that judgement is
    the merge's own (the API's merge, merge_contacts)."""
    from listmill.db import create_pool

    currents = [(f, d) for f in (None, "a") for d in ({}, {"k": "a"}, {"k": 5})]
    givens = [(f, d) for f in (None, "a", "b") for d in ({}, {"k": "a"}, {"k": "b"}, {"j": "a"})]
    seen = set()
    pool = await create_pool(settings)
    try:
        async with pool.acquire() as conn:
            for mode in ("upsert", "fill_blanks"):
                for first_name, data in currents:
                    for given in givens:
                        changed = []
                        for merge in ("import", "api"):
                            async with conn.transaction():
                                await conn.execute(
                                    "INSERT INTO contacts (project_id, email, email_normalized,"
                                    " first_name, data) VALUES ($1, 'c@x.io', 'c@x.io', $2, $3)",
                                    api.project_id, first_name, data,
                                )  # fmt: skip
                                changed.append(
                                    await _changed_by(conn, api.project_id, merge, mode, given)
                                )
                                await conn.execute("DELETE FROM contacts")
                        assert changed[0] == changed[1], (mode, first_name, data, given)
                        seen.add(changed[1])
    finally:
        await pool.close()
    assert seen == {0, 1}  # both kinds of case were met


async def test_a_cancelled_import_keeps_each_repeated_email_whose_rows_it_finished(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    """Cancelled after its first batch (rows 2-101), an import has applied the last row of
    each email whose rows all lie there, and nothing of an email repeated further on."""
    special = {3: b"dup@example.com,First", 7: b"DUP@example.com,Last", 5: b"far@example.com,A"}
    special[150] = b"far@example.com,B"
    rows = [special.get(i, b"c%d@example.com,C" % i) for i in range(1, 251)]
    # the client's cancel arrives while the first batch commits (a trigger plays the client)
    await db.execute(
        """
        CREATE FUNCTION cancel_at_first_batch() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN NEW.cancel_requested := NEW.checkpoint > 0; RETURN NEW; END $$;
        CREATE TRIGGER cancel_at_first_batch BEFORE UPDATE ON jobs
            FOR EACH ROW EXECUTE FUNCTION cancel_at_first_batch();
        """
    )
    status, body = await upload(api, b"email,first_name\n" + b"\n".join(rows) + b"\n")
    assert status == 202
    await run_jobs()
    job = await wait_for_job(api, body["data"]["id"])
    assert job["status"] == "cancelled" and job["progress"]["processed"] == 100
    assert job["counts"] == {"created": 98, "duplicate": 1}
    kept = await db.fetch("SELECT email, first_name FROM contacts WHERE email ILIKE '%dup%'")
    assert [(r["email"], r["first_name"]) for r in kept] == [("DUP@example.com", "Last")]
    assert await db.fetchval("SELECT count(*) FROM contacts WHERE email LIKE 'far%'") == 0
    assert await db.fetchval("SELECT count(*) FROM import_rows") == 0


async def test_an_import_keeps_the_statistics_of_a_project_they_do_not_know(
    api: Api, settings: Settings, db: asyncpg.Connection
) -> None:
    """The import's lookups are planned well only if the statistics know its project; one
    that grew unseen (here 5,000 contacts after an ANALYZE) gets them refreshed, once."""
    from listmill.db import create_pool
    from listmill.queries import contacts

    await db.execute("ANALYZE contacts")
    await db.execute(
        "INSERT INTO contacts (project_id, email, email_normalized)"
        " SELECT $1, 'k' || g || '@x.io', 'k' || g || '@x.io' FROM generate_series(1, 5000) g",
        api.project_id,
    )
    pool = await create_pool(settings)
    try:
        async with pool.acquire() as conn:
            known = await contacts.count_project(conn, api.project_id)
            assert known == 5000
            assert await contacts.keep_statistics(conn, api.project_id, known) is True
            assert await contacts.believed_count(conn, api.project_id) == known
            # the columns the lookups are planned with (the others: refresh_statistics)
            analyzed = "SELECT attname FROM pg_stats WHERE tablename = 'contacts'"
            assert {r[0] for r in await conn.fetch(analyzed)} == {"project_id", "email_normalized"}
            assert await contacts.keep_statistics(conn, api.project_id, known) is False
            assert await contacts.keep_statistics(conn, api.project_id, 3 * known) is True
    finally:
        await pool.close()


async def test_an_import_keeps_the_statistics_for_others_and_before_its_own_lookups(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection, settings: Settings
) -> None:
    """A new project's import, all COPYed (30 batches, 3,000 contacts: too few pages for the
    clean-up's refresh), keeps the statistics up beside its batches for other lookups of the
    project; a file whose rows merge into contacts the statistics do not know (5,000 more,
    made behind their back) takes an ANALYZE before its lookups, and finds every one."""
    from listmill.db import create_pool
    from listmill.queries import contacts

    async def believed() -> int:
        pool = await create_pool(settings)  # (its connections decode EXPLAIN's json)
        try:
            async with pool.acquire() as conn:
                return await contacts.believed_count(conn, api.project_id)
        finally:
            await pool.close()

    async def imported(first_name: bytes, count: int) -> dict[str, int]:
        rows = b"\n".join(b"n%d@example.com,%s" % (i, first_name) for i in range(count))
        status, body = await upload(api, b"email,first_name\n" + rows + b"\n")
        assert status == 202
        await run_jobs()
        job = await wait_for_job(api, body["data"]["id"])
        assert job["status"] == "succeeded"
        return dict(job["counts"])

    await db.execute("ANALYZE contacts")
    assert await believed() <= 1
    assert await imported(b"New", 3000) == {"created": 3000}
    assert await believed() >= 1000
    await db.execute(
        "INSERT INTO contacts (project_id, email, email_normalized)"
        " SELECT $1, 'n' || g || '@example.com', 'n' || g || '@example.com'"
        " FROM generate_series(3000, 7999) g",
        api.project_id,
    )
    before = await analyze_count(db)
    assert await imported(b"Changed", 8000) == {"updated": 8000}
    assert await analyze_count(db) == before + 1
    changed = "SELECT count(*) FROM contacts WHERE project_id = $1 AND first_name = 'Changed'"
    assert await db.fetchval(changed, api.project_id) == 8000


async def test_a_job_staged_by_the_release_before_is_finished_without_counting_twice(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    """The release before this one staged the whole file up front (rows past the checkpoint
    are the sign) and counted its invalid and duplicate rows then; the job, resumed here,
    finishes with those counts as they were."""
    rows = [b"bad-%d" % i if i % 50 == 0 else b"u%d@example.com" % (i % 200) for i in range(250)]
    status, body = await upload(api, b"email\n" + b"\n".join(rows) + b"\n")
    assert status == 202
    job_id = body["data"]["id"]
    # what the earlier release's preparation left: the total, the counts, a staged file
    await db.execute(
        """UPDATE jobs SET total = 250, counts = '{"invalid": 5, "duplicate": 45}' WHERE id = $1""",
        job_id,
    )
    await db.execute(
        "INSERT INTO import_rows (job_id, position, row_number, email, email_normalized, data)"
        " SELECT $1, g, g + 1, 'x' || g || '@old.io', 'x' || g || '@old.io', '{}'"
        " FROM generate_series(1, 250) g",
        job_id,
    )
    await run_jobs()
    job = await wait_for_job(api, job_id)
    assert job["counts"] == {"created": 196, "invalid": 5, "duplicate": 45}  # as it had them
    assert await db.fetchval("SELECT count(*) FROM contacts WHERE email LIKE '%@old.io'") == 0


def _mixed_file(seed: int, rows: int) -> bytes:
    """Mostly simple lines (the fast path), with now and then a line only csv reads right (a
    quoted value, a blank line, a lone CR) and rows that fail the fast checks (an unusual
    email, a long value); custom values with backslashes and non-ASCII text; emails repeated
    across batches; a header line that csv ends at a CR."""
    rng = random.Random(seed)
    lines = [b"email,first_name,last_name,Plan,Note\r"]
    for i in range(rows):
        email = rng.choice(
            [b"p%d@example.com" % i, b"P%d@Example.COM" % i, b" p%d@example.com " % (i % 40)]
        )
        if rng.random() < 0.03:
            email = rng.choice([b"bad-%d" % i, b"\xc3\xbc%d@example.com" % i, b"x@y.test"])
        first = rng.choice([b"", b"Ann", b"Zo\xc3\xab", b"x" * 300])
        note = rng.choice([b"", b"c:\\dir\\", b"50% off", b"\xe6\x97\xa5\xe6\x9c\xac"])
        lines.append(b",".join([email, first, rng.choice([b"", b"Lee"]), b"pro", note]))
        if rng.random() < 0.01:
            lines.append(rng.choice([b"", b'q%d@example.com,"Quoted, Name",,,' % i, b"r@x.io\r"]))
    return b"\n".join(lines) + b"\n"


async def test_the_fast_path_writes_what_the_row_by_row_path_writes(
    api: Api,
    other_api: Api,
    run_jobs: RunJobs,
    db: asyncpg.Connection,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two projects import the same files, one with the fast path (csvcolumns) and one with
    every row parsed one by one: the same counts, error rows and contacts, for new contacts
    (COPYed in COPY's text format) and for existing ones (compared and merged)."""
    settings.upload_chunk_bytes = 3000  # many blocks: most of them simple, some not
    first, second = _mixed_file(1, 600), _mixed_file(2, 600)

    async def imports(tenant: Api) -> list[Any]:
        jobs = [await run_import(tenant, run_jobs, data) for data in (first, second)]
        errors = [(await tenant.get(f"/jobs/{job['id']}/errors"))[1]["data"] for job in jobs]
        return [[job["counts"] for job in jobs], errors]

    fast_rows: list[int] = []
    columns_of = csv_import.columns_of

    def counted(*args: Any) -> Any:
        columns = columns_of(*args)
        fast_rows.append(sum(columns.fast.to_pylist()))
        return columns

    with monkeypatch.context() as patched:
        patched.setattr(csv_import, "columns_of", counted)
        fast = await imports(api)
    assert sum(fast_rows) > 500, "the fast path was hardly taken: the test compares little"
    with monkeypatch.context() as patched:  # every row by csv, the header included
        patched.setattr(csv_import, "CsvReader", lambda header, **_: CsvReader(header))
        slow = await imports(other_api)
    assert fast == slow
    assert fast[0][0]["created"] > 250 and fast[0][1]["updated"] > 0

    async def contacts(tenant: Api) -> list[tuple[Any, ...]]:
        rows = await db.fetch(
            "SELECT email, email_normalized, first_name, last_name, country, time_zone,"
            " data::text, status FROM contacts WHERE project_id = $1 ORDER BY email_normalized",
            tenant.project_id,
        )
        return [tuple(row) for row in rows]

    assert await contacts(api) == await contacts(other_api)


async def test_an_email_of_bytes_that_are_not_utf8_is_an_error_row_not_a_failed_job(
    api: Api, run_jobs: RunJobs
) -> None:
    """The first pass hashes every row's email key, undecodable bytes included."""
    data = b"email,first_name\nj\xe9@example.com,Jo\nok@example.com,Ok\nj\xe9@example.com,Jo2\n"
    job = await run_import(api, run_jobs, data)
    assert job["status"] == "succeeded", job
    assert job["counts"] == {"created": 1, "invalid": 2}
    _, errors = await api.get(f"/jobs/{job['id']}/errors")
    assert [(e["row_number"], e["code"]) for e in errors["data"]] == [
        (2, "invalid_encoding"), (4, "invalid_encoding")
    ]  # fmt: skip


async def test_a_job_resumed_from_the_release_before_goes_on_with_its_key_hash(
    api: Api, db: asyncpg.Connection
) -> None:
    """Held rows staged with the blake2b hash of the release before: the resumed job hashes
    with it, to hold and group its rows as its first run did; otherwise the new hash."""
    status, body = await upload(api, b"email\na@example.com\n")
    assert status == 202
    job = SimpleNamespace(id=UUID(body["data"]["id"]))
    assert await csv_import._hashes_of(db, job) is key_hashes  # nothing staged yet

    async def stage(hashed: int) -> None:
        await db.execute("DELETE FROM import_rows WHERE job_id = $1", job.id)
        await db.execute(
            "INSERT INTO import_rows (job_id, position, row_number, email, email_normalized,"
            " data, key_hash) VALUES ($1, 1, 2, 'a@example.com', 'a@example.com', '{}', $2)",
            job.id,
            hashed,
        )

    await stage(int(legacy_key_hashes(["a@example.com"])[0]))
    assert await csv_import._hashes_of(db, job) is legacy_key_hashes
    await stage(int(key_hashes(["a@example.com"])[0]))
    assert await csv_import._hashes_of(db, job) is key_hashes


async def test_the_error_rows_of_a_batch_come_in_file_order_whichever_way_its_rows_went(
    api: Api, run_jobs: RunJobs, db: asyncpg.Connection, settings: Settings
) -> None:
    """Row 2 goes the fast way, row 3 (a long custom value) row by row: their `suppressed`
    error rows are reported, and kept under the cap, in file order."""
    _, made = await api.post("/lists", {"name": "Order"})
    for email in ("a@example.com", "b@example.com"):
        await api.post("/contacts", {"email": email})
    await db.execute("UPDATE contacts SET status = 'unsubscribed'")
    data = b"email,Note\na@example.com,x\nb@example.com," + b"n" * 300 + b"\n"
    job = await run_import(api, run_jobs, data, list_id=made["data"]["id"])
    _, errors = await api.get(f"/jobs/{job['id']}/errors")
    assert [(e["row_number"], e["code"]) for e in errors["data"]] == [
        (2, "suppressed"), (3, "suppressed")
    ]  # fmt: skip
    settings.job_error_cap = 1
    job = await run_import(api, run_jobs, data, list_id=made["data"]["id"])
    _, errors = await api.get(f"/jobs/{job['id']}/errors")
    assert [e["row_number"] for e in errors["data"]] == [2]
    # an invalid row after a suppressed member: found first, reported after it
    settings.job_error_cap = 10
    data = b"email,Note\na@example.com,x\nnot-an-email,y\n"
    job = await run_import(api, run_jobs, data, list_id=made["data"]["id"])
    _, errors = await api.get(f"/jobs/{job['id']}/errors")
    assert [(e["row_number"], e["code"]) for e in errors["data"]] == [
        (2, "suppressed"), (3, "invalid_email")
    ]  # fmt: skip


async def test_a_nul_in_an_email_makes_an_error_row_not_a_failed_job(
    api: Api, run_jobs: RunJobs
) -> None:
    data = b"email,first_name\na\x00b@example.com,A\nok@example.com,B\n"
    job = await run_import(api, run_jobs, data)
    assert job["status"] == "succeeded" and job["counts"] == {"created": 1, "invalid": 1}, job
    _, errors = await api.get(f"/jobs/{job['id']}/errors")
    [error] = errors["data"]
    assert (error["row_number"], error["code"], error["email"]) == (
        2,
        "invalid_email",
        "a\ufffdb@example.com",
    )
