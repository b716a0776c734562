"""Fuzz the reader: 10,000+ mutations of valid files either decode or raise BitstreamError.

Mutations: truncation, extension, bit flips, byte overwrites, random header/trailer
fields (with the CRC recomputed so the checks behind it are reached), record length
fields, random garbage. Memory is watched with tracemalloc: no case may allocate more
than a few MB (the files are ~100 bytes).
"""

from __future__ import annotations

import io
import struct
import time
import tracemalloc
import zlib

import numpy as np
import pytest

from codec.bitstream import MODE_FIXED, MODE_RANGE, BitstreamError, Header, Priors, read_file, write_file
from codec.bitstream.header import FIXED_HEADER_SIZE, TRAILER_SIZE

FP = bytes(range(16))
SIZES = (1024, 64, 1000, 2)
N_CASES = 10_000
MAX_ALLOC = 4 << 20


def make_priors() -> Priors:
    rng = np.random.default_rng(0)
    return Priors.from_counts([np.bincount(rng.zipf(1.4, 5000) % k, minlength=k) for k in SIZES], FP)


def make_files(priors: Priors) -> list[bytes]:
    rng = np.random.default_rng(1)
    files = []
    for frames in (1, 9, 40):
        codes = np.stack([rng.choice(k, frames, p=f / f.sum()) for k, f in zip(SIZES, priors.freqs)])
        for header in (Header(MODE_FIXED, 16000, 320, SIZES, FP),
                       Header(MODE_RANGE, 16000, 320, SIZES, FP, 8, priors.id)):
            buf = io.BytesIO()
            write_file(buf, header, codes, frames * 320 - 5, priors)
            files.append(buf.getvalue())
    return files


def fix_crc(data: bytes) -> bytes:
    return data[:-4] + struct.pack("<I", zlib.crc32(data[:-4])) if len(data) >= 4 else data


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    kind = rng.integers(8)
    b = bytearray(data)
    if kind == 0:  # truncate
        return bytes(b[: rng.integers(len(b))])
    if kind == 1:  # flip 1..4 bits, CRC left as is
        for _ in range(rng.integers(1, 5)):
            b[rng.integers(len(b))] ^= 1 << rng.integers(8)
        return bytes(b)
    if kind == 2:  # random header byte(s), CRC fixed
        for _ in range(rng.integers(1, 4)):
            b[rng.integers(FIXED_HEADER_SIZE + 2 * len(SIZES))] = rng.integers(256)
        return fix_crc(bytes(b))
    if kind == 3:  # random 32-bit header field, often an extreme value, CRC fixed
        off = int(rng.choice([8, 12, 16, 44, 46, 48, 50]))
        val = int(rng.choice([0, 1, 2, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, rng.integers(1 << 32)]))
        b[off : off + 4] = struct.pack("<I", val)
        return fix_crc(bytes(b))
    if kind == 4:  # random trailer counts, CRC fixed
        frames = int(rng.choice([0, 1, 2, 41, 1 << 20, 0xFFFFFFFF, rng.integers(1 << 32)]))
        samples = int(rng.choice([0, frames * 320, frames * 320 - 1, 1 << 63, rng.integers(1 << 63)]))
        struct.pack_into("<IQ", b, len(b) - TRAILER_SIZE, frames, samples % (1 << 64))
        return fix_crc(bytes(b))
    if kind == 5:  # payload bytes (incl. record lengths) overwritten, CRC fixed
        start, end = FIXED_HEADER_SIZE + 2 * len(SIZES), len(b) - TRAILER_SIZE
        if end > start:
            for _ in range(rng.integers(1, 4)):
                b[rng.integers(start, end)] = rng.integers(256)
        return fix_crc(bytes(b))
    if kind == 6:  # insert or delete bytes in the middle, CRC fixed
        pos = rng.integers(len(b))
        if rng.random() < 0.5:
            b[pos:pos] = rng.bytes(rng.integers(1, 9))
        else:
            del b[pos : pos + rng.integers(1, 9)]
        return fix_crc(bytes(b))
    return fix_crc(bytes(b[:FIXED_HEADER_SIZE]) + rng.bytes(rng.integers(0, 64)))  # garbage after header


def test_fuzz_reader():
    priors = make_priors()
    files = make_files(priors)
    for f in files:  # sanity: the originals decode
        read_file(f, priors)
    rng = np.random.default_rng(1234)
    outcomes = {"decoded": 0, "rejected": 0}
    tracemalloc.start()
    start = time.perf_counter()
    try:
        for i in range(N_CASES):
            data = mutate(files[i % len(files)], rng)
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            try:
                _, trailer, codes = read_file(data, priors)
                assert codes.shape[1] == trailer.num_frames
                outcomes["decoded"] += 1
            except BitstreamError:
                outcomes["rejected"] += 1
            peak = tracemalloc.get_traced_memory()[1] - base
            assert peak < MAX_ALLOC, f"case {i} allocated {peak} bytes"
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - start
    assert sum(outcomes.values()) == N_CASES
    assert outcomes["rejected"] > N_CASES // 2
    assert elapsed < 60, f"fuzzing took {elapsed:.1f} s"
    print(f"fuzz: {outcomes} in {elapsed:.1f} s")


@pytest.mark.parametrize("seed", range(3))
def test_random_bytes_rejected(seed):
    rng, priors = np.random.default_rng(seed), make_priors()
    for _ in range(200):
        data = b"RVQC\x01" + rng.bytes(rng.integers(0, 200))
        with pytest.raises(BitstreamError):
            read_file(fix_crc(data) if rng.random() < 0.5 else data, priors)
