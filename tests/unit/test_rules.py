"""Pure rules: cursors, email normalisation, CSV neutralising, the error envelope."""

from __future__ import annotations

import pytest

from api.handlers.jobs import neutralise
from listmill.errors import Conflict, NotFound, ValidationFailed
from listmill.pagination import decode_cursor, decode_id_cursor, encode_cursor
from listmill.validation import normalize_email


def test_cursor_round_trip() -> None:
    assert decode_cursor(encode_cursor([42, "x"])) == [42, "x"]
    assert decode_id_cursor(encode_cursor([42])) == 42


@pytest.mark.parametrize("forged", ["!!!", "bm90IGpzb24", encode_cursor(["a"]), encode_cursor([0])])
def test_forged_cursor_is_a_validation_error(forged: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        decode_id_cursor(forged)
    assert caught.value.details[0]["field"] == "cursor"


def test_email_is_trimmed_and_its_identity_lower_cased() -> None:
    assert normalize_email("  Ann.Lee@Example.COM ") == (
        "Ann.Lee@Example.COM",
        "ann.lee@example.com",
    )


def test_email_is_trimmed_of_invisible_characters_around_it() -> None:
    """A zero-width space copied with it, or the BOM of a second export joined to a first."""
    assert normalize_email("\ufeffBo@example.com") == ("Bo@example.com", "bo@example.com")
    assert normalize_email(" \u200b\u00a0ann@example.com\u2060 \u200d")[0] == "ann@example.com"
    with pytest.raises(ValueError):
        normalize_email("ann\u200b@example.com")  # inside it, it is part of it
    with pytest.raises(ValueError):
        normalize_email("\u200b\ufeff")


@pytest.mark.parametrize(
    "bad",
    ["", "   ", "no-at-sign", "a@", "@b.com", "a b@c.com", "x@" + "a" * 250 + ".com", "a\x00@b.co"],
)
def test_invalid_emails_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        normalize_email(bad)


@pytest.mark.parametrize(
    ("cell", "shown"),
    [
        ("=SUM(A1)", "'=SUM(A1)"),
        ("+1", "'+1"),
        ("-2", "'-2"),
        ("@x", "'@x"),
        ("plain", "plain"),
        (None, ""),
    ],
)
def test_formula_like_cells_are_neutralised(cell: str | None, shown: str) -> None:
    assert neutralise(cell) == shown


def test_error_envelope_carries_code_message_details() -> None:
    assert NotFound("list not found").body() == {
        "error": {"code": "not_found", "message": "list not found", "details": []}
    }
    assert Conflict().status == 409
    failure = ValidationFailed.on("email", "invalid")
    assert failure.status == 422
    assert failure.body()["error"]["details"] == [
        {"field": "email", "message": "invalid", "type": "invalid"}
    ]


AGREEMENT_CORPUS = [
    "a@b.co", "john.smith@example.com", "x@localhost", "a..b@c.com", ".a@b.com", "a.@b.com",
    "a@-b.com", "a@b-.com", "a@b.c", "a@b.123", "a@sub.example.test", "a@example.local",
    "a@[1.2.3.4]", '"q"@x.com', "ü@x.com", "a@xn--bcher-kva.com", "a_b-c+d@x-y.z9.com",
    "a@b..com", "a@b.com.", "a" * 65 + "@x.com", "a@" + "b" * 64 + ".com", "A@B.COM",
    "a@b.onion", "a@b.arpa", "user@mail.example.co.uk", "a#b@x.io", "a@x.io-", "a@1.2.3.com",
    "a" * 64 + "@x.com", "a@ab--cd.com", "a@xn--zz.com", "first--last@x.com", "a@x--y.com",
]  # fmt: skip


@pytest.mark.parametrize("email", AGREEMENT_CORPUS)
def test_fast_path_never_accepts_what_email_validator_refuses(email: str) -> None:
    """Nor a local part over 64 bytes, which email-validator (but in strict mode) takes."""
    from email_validator import EmailNotValidError, validate_email

    from listmill.validation import _common_shape

    try:
        validate_email(email, check_deliverability=False)
        valid = len(email.rpartition("@")[0].encode()) <= 64  # RFC 5321, which it leaves out
    except EmailNotValidError:
        valid = False
    if _common_shape(email.lower()):
        assert valid
    # and the public function agrees with email-validator either way
    if valid:
        assert normalize_email(email)[1] == email.lower()
    else:
        with pytest.raises(ValueError):
            normalize_email(email)


def test_queues_watch_refuses_an_interval_that_would_spin() -> None:
    from listmill.cli import _parser

    assert _parser().parse_args(["queues", "--watch", "2"]).watch == 2.0
    for bad in ("0", "-1", "nan", "soon"):
        with pytest.raises(SystemExit):
            _parser().parse_args(["queues", "--watch", bad])
