"""The import's key hashes: the same for a key whichever way it comes, in every process."""

from __future__ import annotations

import random
import subprocess
import sys
from hashlib import blake2b

import pyarrow as pa

from listmill.keyhash import HASHED_BYTES, key_hashes, legacy_key_hashes

KEYS = [
    "", "a", "ann@example.com", "ann@example.con", "x" * 7, "x" * 8, "x" * 9, "é@exämple.com",
    "日本@example.jp", "a" * HASHED_BYTES, "a" * (HASHED_BYTES + 1), "🎉@example.com",
]  # fmt: skip


def test_a_key_hashes_the_same_from_a_list_an_arrow_array_or_a_slice() -> None:
    from_list = key_hashes(KEYS).tolist()
    array = pa.array(["pad", *KEYS, "pad"])
    assert key_hashes(pa.array(KEYS)).tolist() == from_list
    assert key_hashes(array.slice(1, len(KEYS))).tolist() == from_list
    assert key_hashes(pa.chunked_array([KEYS[:3], KEYS[3:]])).tolist() == from_list
    assert [key_hashes([k]).tolist()[0] for k in KEYS] == from_list


def test_keys_that_differ_hash_apart() -> None:
    rng = random.Random(5)
    keys = {f"{rng.getrandbits(40):x}.{i}@example.com" for i in range(50_000)}
    keys |= {k.upper() for k in list(keys)[:1000]}
    assert len(set(key_hashes(sorted(keys)).tolist())) == len(keys)
    assert len(set(key_hashes(KEYS).tolist())) == len(KEYS)
    # past HASHED_BYTES only the length counts: such keys are held together, and told apart
    long = "a" * HASHED_BYTES
    assert len(set(key_hashes([long + "b", long + "c", long + "bb"]).tolist())) == 2


def test_undecodable_bytes_are_hashed_as_the_bytes_they_were() -> None:
    undecodable = b"j\xe9@example.com".decode("utf-8", "surrogateescape")
    raw = pa.array([b"j\xe9@example.com"], pa.binary())
    assert key_hashes([undecodable]).tolist() == key_hashes(raw).tolist()
    assert legacy_key_hashes([undecodable]).size == 1


def test_the_hash_is_the_same_in_another_process() -> None:
    code = "from listmill.keyhash import key_hashes; print(key_hashes(['ann@example.com'])[0])"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(other.stdout) == int(key_hashes(["ann@example.com"])[0])


def test_the_legacy_hash_is_the_blake2b_of_the_release_before() -> None:
    digest = blake2b(b"ann@example.com", digest_size=8).digest()
    expected = int.from_bytes(digest, "little", signed=True)
    assert legacy_key_hashes(["ann@example.com"]).tolist() == [expected]
    assert legacy_key_hashes(pa.array(["ann@example.com"])).tolist() == [expected]


def _reference_hashes(keys: list[str]) -> list[int]:
    """The hash as the docstring defines it, one key at a time (the release before computed
    it so, with a byte matrix; staged hashes of a resumed job must still match)."""
    mask = (1 << 64) - 1
    seed, multiplier, final = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
    out = []
    for key in keys:
        raw = key.encode("utf-8", "surrogateescape")
        hashed = (len(raw) * multiplier & mask) ^ seed
        for at in range(0, min(len(raw), HASHED_BYTES), 8):
            word = int.from_bytes(raw[at : at + 8], "little")
            hashed = ((hashed ^ word) * multiplier) & mask
            hashed ^= hashed >> 31
        hashed ^= hashed >> 33
        hashed = hashed * final & mask
        hashed ^= hashed >> 29
        out.append(hashed - (1 << 64) if hashed >= 1 << 63 else hashed)
    return out


def test_the_hash_is_the_defined_one_for_every_length_and_position() -> None:
    rng = random.Random(11)
    alphabet = "abz.@-_0éü日🎉"
    for _ in range(500):
        keys = [
            "".join(rng.choice(alphabet) for _ in range(rng.choice([0, 1, 7, 8, 9, 16, 70])))
            for _ in range(rng.randint(1, 30))
        ]
        array = pa.array(["pad", *keys, "tail" * rng.randint(0, 5)]).slice(1, len(keys))
        assert key_hashes(array).tolist() == _reference_hashes(keys)
        assert key_hashes(keys).tolist() == _reference_hashes(keys)
