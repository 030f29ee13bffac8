"""Value rules shared by the API models and the job runners."""

from __future__ import annotations

import re
from typing import Annotated, Any

from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, Field

MAX_EMAIL_LENGTH = 254
MAX_LOCAL_PART = 64  # bytes before the @ (RFC 5321)
MAX_FIELD_LENGTH = 255
MAX_DATA_KEYS = 100


def _no_nul(value: str) -> str:
    """Postgres text holds neither U+0000 nor lone surrogates (which JSON can smuggle in)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


def _clean_data(value: dict[str, Any]) -> dict[str, Any]:
    if len(value) > MAX_DATA_KEYS:
        raise ValueError(f"at most {MAX_DATA_KEYS} custom fields")
    _reject_nul(value)
    return value


def _reject_nul(value: Any) -> None:
    """Postgres text and jsonb cannot hold U+0000, so no value may carry it."""
    if isinstance(value, str):
        _no_nul(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _no_nul(key)
            _reject_nul(item)
    elif isinstance(value, list):
        for item in value:
            _reject_nul(item)


Text = Annotated[str, AfterValidator(_no_nul)]
ShortText = Annotated[str, Field(max_length=MAX_FIELD_LENGTH), AfterValidator(_no_nul)]
CustomData = Annotated[dict[str, Any], AfterValidator(_clean_data)]


# The common shape of an address, checked in about a microsecond: a dot-atom local part and a
# domain of LDH labels whose top level is alphabetic. Whatever does not match goes to
# email-validator (quoted local parts, internationalised addresses, and every invalid one).
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_COMMON = re.compile(
    rf"[a-z0-9!#$%&'*+/=?^_`{{|}}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{{|}}~-]+)*"
    rf"@(?:{_LABEL}\.)+[a-z]{{2,63}}",
    re.ASCII,
)
# top-level domains email-validator refuses (special-use names, RFC 6761 and others)
SPECIAL_TLDS = frozenset({"arpa", "invalid", "local", "localhost", "onion", "test", "internal"})


def _common_shape(email: str) -> bool:
    """The common shape, but a domain with "--" (IDNA keeps hyphens third and fourth for its
    own labels: email-validator judges those)."""
    if not _COMMON.fullmatch(email):
        return False
    local, _, domain = email.rpartition("@")
    tld = domain.rsplit(".", 1)[-1]
    return len(local) <= MAX_LOCAL_PART and "--" not in domain and tld not in SPECIAL_TLDS


# characters that show nothing, around an email copied from a web page (zero-width spaces
# and joiners, the word joiner) or after two exports were joined (the second one's BOM)
INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff"
_AROUND = re.compile(f"^[\\s{INVISIBLE}]+|[\\s{INVISIBLE}]+$")


def trim_email(raw: str) -> str:
    """The email without the whitespace (as str.strip() has it) and invisible characters
    around it."""
    trimmed = raw.strip()
    if trimmed and (trimmed[0] in INVISIBLE or trimmed[-1] in INVISIBLE):
        return _AROUND.sub("", trimmed)
    return trimmed


def normalize_email(raw: str) -> tuple[str, str]:
    """The email as given (trimmed: trim_email) and its identity (lower-cased); raises
    ValueError."""
    email = trim_email(raw)
    if not email:
        raise ValueError("email is required")
    if len(email) > MAX_EMAIL_LENGTH:
        raise ValueError(f"email is longer than {MAX_EMAIL_LENGTH} characters")
    lowered = email.lower()
    if _common_shape(lowered):
        return email, lowered
    _no_nul(email)
    try:
        validate_email(email, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"invalid email: {exc}") from exc
    if len(email.rpartition("@")[0].encode()) > MAX_LOCAL_PART:  # RFC 5321 (not checked above)
        raise ValueError(f"invalid email: the part before the @ is over {MAX_LOCAL_PART} bytes")
    return email, lowered


def _email(value: str) -> str:
    return normalize_email(value)[0]


Email = Annotated[str, AfterValidator(_email)]
