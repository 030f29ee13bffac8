"""64-bit hashes of an import's email keys, a column at a time.

The import's first pass hashes every row's email key to find the emails that more than one
row has, and its batches hash their rows again to hold those rows back (worker/jobs/
csv_import.py). A hash must be the same in every process (a resumed job holds and groups the
rows its first run did), so Python's salted hash() will not do. ``key_hashes`` mixes each
key's first ``HASHED_BYTES`` bytes, eight at a time, and its length, with numpy over all the
keys of a block at once, eight bytes of every key per step: about 0.08 µs a key, where
blake2b took 0.4. Two keys that share a hash are both held and still told apart by their
email, so a collision (two long keys with the same first bytes and length, say) costs time,
never a row.

Jobs whose held rows were staged by a release that hashed with blake2b go on with it
(``legacy_key_hashes``); see csv_import._ImportRun."""

from __future__ import annotations

from collections.abc import Sequence
from hashlib import blake2b
from typing import Any

import numpy as np
import pyarrow as pa

HASHED_BYTES = 64
LONG_TEXT = 256  # text_hashes: a text longer than this is hashed by itself
_SEED = np.uint64(0x9E3779B97F4A7C15)
_MULTIPLIER = np.uint64(0xBF58476D1CE4E5B9)
_FINAL = np.uint64(0x94D049BB133111EB)


def key_hashes(keys: pa.Array | Sequence[str]) -> np.ndarray[Any, Any]:
    """The int64 hash of each key: an Arrow string array, or strings (which may hold
    undecodable bytes as surrogate escapes: they are hashed as those bytes)."""
    return _array_hashes(keys, HASHED_BYTES)


def text_hashes(texts: pa.Array) -> np.ndarray[Any, Any]:
    """The int64 hash of each whole text (an Arrow string array), however long."""
    return _array_hashes(texts, None)


def _array_hashes(keys: pa.Array | Sequence[str], limit: int | None) -> np.ndarray[Any, Any]:
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    if not isinstance(keys, pa.Array):
        keys = pa.array([k.encode("utf-8", "surrogateescape") for k in keys], pa.binary())
    count = len(keys)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    _, offsets_buffer, data_buffer = keys.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int32)[keys.offset : keys.offset + count + 1]
    first, last = int(offsets[0]), int(offsets[-1])
    data = np.frombuffer(data_buffer, dtype=np.uint8)[first:last] if data_buffer else b""
    return hashes_at(data, offsets[:-1] - first, np.diff(offsets), limit)


def hashes_at(
    data: Any, starts: np.ndarray[Any, Any], lengths: np.ndarray[Any, Any], limit: int | None
) -> np.ndarray[Any, Any]:
    """The hash of each piece of ``data`` (bytes) at these starts with these lengths: of its
    first ``limit`` bytes (all if None) and its length."""
    if limit is None and len(lengths) and int(lengths.max()) > LONG_TEXT:
        return _long_and_short(data, starts, lengths)
    size = len(data)
    padded = np.zeros(size + 8, dtype=np.uint8)  # an 8-byte read from any start
    padded[:size] = np.frombuffer(data, dtype=np.uint8) if size else []
    # the 8 bytes from every position, little-endian (unaligned reads of one buffer)
    words = np.ndarray((size + 1,), dtype="<u8", buffer=padded, strides=(1,))
    starts = starts.astype(np.intp)
    hashed = lengths.astype(np.uint64) * _MULTIPLIER ^ _SEED
    longest = int(lengths.max()) if len(lengths) else 0
    shortest = int(lengths.min()) if len(lengths) else 0
    for at in range(0, longest if limit is None else min(longest, limit), 8):
        if at + 8 <= shortest:  # a whole word of every key: nothing to cut, nobody to skip
            hashed = (hashed ^ words[starts + at]) * _MULTIPLIER
            hashed ^= hashed >> np.uint64(31)
            continue
        left = lengths - at  # the key's bytes from this word on
        word = words[np.minimum(starts + at, size)]
        cut = (np.clip(8 - left, 0, 7) * 8).astype(np.uint64)
        word = (word << cut) >> cut  # the bytes past the key's end are zeros
        mixed = (hashed ^ word) * _MULTIPLIER
        mixed ^= mixed >> np.uint64(31)
        hashed = np.where(left > 0, mixed, hashed)  # a key's hash is its own words alone
    hashed ^= hashed >> np.uint64(33)
    hashed *= _FINAL
    hashed ^= hashed >> np.uint64(29)
    return hashed.view(np.int64)


def _long_and_short(
    data: Any, starts: np.ndarray[Any, Any], lengths: np.ndarray[Any, Any]
) -> np.ndarray[Any, Any]:
    """hashes_at of whole pieces some of which are long: those are hashed one by one (with
    blake2b), so that one long piece does not make a step over every other one per 8 bytes."""
    long = lengths > LONG_TEXT
    hashed = np.empty(len(lengths), dtype=np.int64)
    hashed[~long] = hashes_at(data, starts[~long], lengths[~long], LONG_TEXT)
    raw = memoryview(data if isinstance(data, bytes) else np.ascontiguousarray(data).tobytes())
    pieces = zip(starts[long].tolist(), lengths[long].tolist(), strict=True)
    digests = b"".join(blake2b(raw[at : at + n], digest_size=8).digest() for at, n in pieces)
    hashed[long] = np.frombuffer(digests, dtype="<i8")
    return hashed


def legacy_key_hashes(keys: pa.Array | Sequence[str]) -> np.ndarray[Any, Any]:
    """The hashes of the release before: blake2b of each key (8 bytes, little-endian)."""
    if isinstance(keys, pa.Array | pa.ChunkedArray):
        keys = keys.to_pylist()
    digests = b"".join(
        [blake2b(k.encode("utf-8", "surrogateescape"), digest_size=8).digest() for k in keys]
    )
    return np.frombuffer(digests, dtype="<i8")
