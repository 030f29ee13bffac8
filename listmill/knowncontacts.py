"""The contacts a project had as an import began: for each, the hash of its email key and
of its line (csvcolumns.Contacts.lines: its email and the fields an import sets, as
Postgres writes them), the one kept by the import that made it, or else one made from
the line read. A fast row whose line hashes alike is one the import would not change, and is
counted unchanged with no write; a row whose email key no contact has is new, and is COPYed
in. Only the other rows are compared in Postgres.

Read once, with one COPY (queries.contacts.copy_lines), where a file is large next to its
project (see worth_reading): about 16 bytes a contact, and only those whose email key the
file has are kept. A change someone else makes to one of these contacts during the import
(an edit, a deletion) is kept as if it came after the import's row of it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np

from listmill.db import Connection
from listmill.keyhash import HASHED_BYTES, hashes_at
from listmill.queries import contacts as contact_queries

PIECE_BYTES = 1 << 20  # lines hashed at a time
# read the contacts when the file has at least a quarter as many rows as the project has
FILE_ROWS_PER_CONTACT = 0.25


def worth_reading(contacts: int, file_rows: int) -> bool:
    """Whether to read a project of ``contacts`` for a file of ``file_rows``: reading a
    contact costs about what comparing a row costs."""
    return 0 < contacts <= file_rows / FILE_ROWS_PER_CONTACT


@dataclass(frozen=True)
class KnownContacts:
    """Sorted email-key hashes of one contact each, with the hash of each one's line; and
    the key hashes that more than one contact has (their rows are compared in Postgres)."""

    keys: np.ndarray[Any, Any]
    lines: np.ndarray[Any, Any]
    shared: np.ndarray[Any, Any]

    def __len__(self) -> int:
        return len(self.keys)

    def only(self, keys: np.ndarray[Any, Any]) -> KnownContacts:
        """Those whose key is one of these (the file's)."""
        kept = _among(self.keys, np.sort(keys))
        return KnownContacts(self.keys[kept], self.lines[kept], self.shared)

    def compare(
        self, keys: np.ndarray[Any, Any], lines: np.ndarray[Any, Any]
    ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """For rows of these key and line hashes: which are unchanged (a contact has the
        key, and its line hashes alike), and which are new (no contact has the key)."""
        if not len(self.keys):
            return np.zeros(len(keys), dtype=bool), ~np.isin(keys, self.shared)
        # looked up in key order: the contacts are then read in their order (4x faster)
        order = np.argsort(keys)
        at = np.empty(len(keys), dtype=np.intp)
        at[order] = np.minimum(np.searchsorted(self.keys, keys[order]), len(self.keys) - 1)
        found = self.keys[at] == keys
        return found & (self.lines[at] == lines), ~found & ~np.isin(keys, self.shared)


def _among(values: np.ndarray[Any, Any], sorted_keys: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """For each of these sorted values, whether the sorted keys have it (np.isin, in a fifth
    of its time)."""
    if not len(sorted_keys):
        return np.zeros(len(values), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_keys, values), len(sorted_keys) - 1)
    return sorted_keys[at] == values  # type: ignore[no-any-return]


async def read_known(conn: Connection, project_id: int, expected: int = 0) -> KnownContacts:
    """The project's contacts as they are now (one COPY of their lines); ``expected``, about
    how many there are, sizes the arrays (they grow if there are more)."""
    hashed = np.empty((2, max(expected, 1024)), dtype=np.int64)  # keys, lines
    count = 0
    pending = bytearray()

    async def hash_lines(text: bytes) -> None:
        nonlocal hashed, count
        keys, lines = await asyncio.to_thread(_hashes, text)  # the COPY goes on meanwhile
        if count + len(keys) > hashed.shape[1]:
            grown = np.empty((2, max(2 * hashed.shape[1], count + len(keys))), dtype=np.int64)
            grown[:, :count] = hashed[:, :count]
            hashed = grown
        hashed[0, count : count + len(keys)] = keys
        hashed[1, count : count + len(keys)] = lines
        count += len(keys)

    async def take(piece: bytes) -> None:
        pending.extend(piece)
        if len(pending) >= PIECE_BYTES:
            cut = pending.rfind(b"\n") + 1
            await hash_lines(bytes(pending[:cut]))
            del pending[:cut]

    await contact_queries.copy_lines(conn, project_id, take)
    if pending:
        await hash_lines(bytes(pending))
    # sorted in a thread (numpy lets go of the GIL to sort): the caller's loop goes on
    return await asyncio.to_thread(known_of, hashed[0, :count], hashed[1, :count])


_NONE = np.zeros(0, dtype=np.int64)


_NIBBLES = np.zeros(256, dtype=np.uint8)  # a hexadecimal digit's value, by its byte
_NIBBLES[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = np.arange(16, dtype=np.uint8)
_GIVEN = len("\\\\x")  # a line hash's 16 digits start after these bytes...
_GIVEN_EMAIL = _GIVEN + 17  # ...and its email after them and a tab
_NOT_GIVEN_EMAIL = len("\\N\t")


def _hashes(text: bytes) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """The key hash (of the email) and the line hash of each whole line of copy_lines: the
    line hash given (its first field), or, where that is \\N, the hash of the rest."""
    data = np.frombuffer(text, dtype=np.uint8)
    ends = np.flatnonzero(data == ord("\n"))
    starts = np.concatenate(([0], ends[:-1] + 1))
    given = data[starts + 1] != ord("N")
    emails = starts + np.where(given, _GIVEN_EMAIL, _NOT_GIVEN_EMAIL)
    tabs = np.flatnonzero(data == ord("\t"))
    email_ends = tabs[np.searchsorted(tabs, emails)]  # each line has its fields' tabs
    lines = np.empty(len(starts), dtype=np.int64)
    if given.any():
        digits = _NIBBLES[data[starts[given, None] + _GIVEN + np.arange(16)]]
        octets = (digits[:, 0::2] << 4) | digits[:, 1::2]
        lines[given] = np.ascontiguousarray(octets).view(">i8").ravel()
    if not given.all():
        rest = emails[~given]
        lines[~given] = hashes_at(text, rest, ends[~given] - rest, None)
    return hashes_at(text, emails, email_ends - emails, HASHED_BYTES), lines


def known_of(keys: np.ndarray[Any, Any], lines: np.ndarray[Any, Any]) -> KnownContacts:
    """Sorted by key, those of a key that more than one has set apart (16 bytes a contact,
    and about as much again while sorting)."""
    order = np.argsort(keys)
    keys = keys[order]  # (the caller's arrays may go meanwhile)
    lines = lines[order]
    del order
    twice = keys[1:] == keys[:-1]
    if not twice.any():
        return KnownContacts(keys, lines, _NONE)
    repeated = np.zeros(len(keys), dtype=bool)
    repeated[1:] |= twice
    repeated[:-1] |= twice
    return KnownContacts(keys[~repeated], lines[~repeated], np.unique(keys[repeated]))
