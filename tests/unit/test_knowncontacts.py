"""knowncontacts: the hashes of a project's contact lines, and how rows compare with them."""

from __future__ import annotations

import numpy as np

from listmill.keyhash import key_hashes, text_hashes
from listmill.knowncontacts import _hashes, known_of

LINES = [
    "a@x.io\tAnn\t\\N\t\\N\t\\N\t{}",
    'b@x.io\tB\\\\b\tLee\tGB\t\\N\t{"k": "v"}',
    "c@x.io\t\\N\t\\N\t\\N\t\\N\t{}",
]


def test_a_lines_hashes_are_those_of_its_email_and_of_itself() -> None:
    """copy_lines gives \\N and the line of a contact with no hash kept, else the kept hash
    (its 8 bytes, big-endian, as COPY writes a bytea) and the email."""
    import pyarrow as pa

    kept = [-1, 10, 0, -(1 << 63), (1 << 63) - 1, 1234567890123456789, -98765]
    given = [
        f"\\\\x{h & (1 << 64) - 1:016x}\tk{i}@x.io\t\\N\t\\N\t\\N\t\\N\t\\N"
        for i, h in enumerate(kept)
    ]
    lines = ["\\N\t" + line for line in LINES]
    keys, hashes = _hashes("".join(line + "\n" for line in [*lines[:2], *given, lines[2]]).encode())
    emails = [line.split("\t")[0] for line in LINES]
    made = text_hashes(pa.array(LINES)).tolist()
    assert (
        keys.tolist()
        == key_hashes([*emails[:2], *(f"k{i}@x.io" for i in range(len(kept))), emails[2]]).tolist()
    )
    assert hashes.tolist() == [*made[:2], *kept, made[2]]


def test_rows_are_unchanged_new_or_to_be_merged() -> None:
    keys = np.array([5, 1, 9, 9, 3], dtype=np.int64)  # 9: two contacts' key
    lines = np.array([50, 10, 90, 91, 30], dtype=np.int64)
    known = known_of(keys, lines)
    assert known.keys.tolist() == [1, 3, 5] and known.shared.tolist() == [9]
    rows = np.array([1, 3, 9, 7, 5], dtype=np.int64)
    same, new = known.compare(rows, np.array([10, 31, 90, 70, 50], dtype=np.int64))
    assert same.tolist() == [True, False, False, False, True]
    assert new.tolist() == [False, False, False, True, False]
    assert known.only(np.array([3, 4], dtype=np.int64)).keys.tolist() == [3]


def test_no_contacts_make_every_row_new() -> None:
    known = known_of(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    same, new = known.compare(np.array([1, 2], dtype=np.int64), np.array([1, 2], dtype=np.int64))
    assert same.tolist() == [False, False] and new.tolist() == [True, True]
