"""The import's first pass: which key hashes repeat, and where each one's last row is."""

from __future__ import annotations

import numpy as np

from worker.jobs.csv_import import repeats_of


def test_repeats_name_each_repeated_hash_with_its_last_row() -> None:
    keys = np.random.default_rng(7).integers(0, 60, 500)
    repeats = repeats_of(keys)
    expected = {
        int(h): max(i for i, k in enumerate(keys.tolist(), 1) if k == h)
        for h in set(keys.tolist())
        if keys.tolist().count(h) > 1
    }
    assert dict(zip(repeats.hashes.tolist(), repeats.last.tolist(), strict=True)) == expected
    assert repeats.total == 500
    # the groups completed by a batch are those whose last row falls in it
    assert sorted(repeats.completed(100, 200)) == sorted(
        h for h, last in expected.items() if 100 < last <= 200
    )


def test_a_file_without_repeats_and_an_empty_one() -> None:
    assert repeats_of(np.arange(10, dtype=np.int64)).hashes.size == 0
    assert repeats_of(np.zeros(0, dtype=np.int64)).total == 0
