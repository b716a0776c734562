"""Container format, bit packing, CRC and range coding on synthetic codes (no model needed)."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest

from codec.bitstream import (
    MODE_FIXED,
    MODE_RANGE,
    BitstreamError,
    BitstreamWriter,
    Header,
    Priors,
    pack_codes,
    packed_size,
    parse,
    read_file,
    unpack_codes,
    write_file,
)
from codec.bitstream.entropy import decode_record, encode_record
from codec.bitstream.header import FIXED_HEADER_SIZE, TRAILER_SIZE
from codec.bitstream.priors import quantize_counts

FP = bytes(range(16))
HOP = 320


def fixed_header(sizes=(1024,) * 12) -> Header:
    return Header(MODE_FIXED, 16000, HOP, sizes, FP)


def skewed_priors(sizes, seed=0) -> Priors:
    rng = np.random.default_rng(seed)
    counts = [np.bincount(rng.zipf(1.3, 20000) % k, minlength=k) for k in sizes]
    return Priors.from_counts(counts, FP, 20000)


def random_codes(sizes, frames, seed=0, priors: Priors | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if priors is None:
        return np.stack([rng.integers(0, k, frames) for k in sizes])
    return np.stack([rng.choice(len(f), frames, p=f / f.sum()) for f in priors.freqs[: len(sizes)]])


def to_bytes(header, codes, num_samples, priors=None) -> bytes:
    buf = io.BytesIO()
    write_file(buf, header, codes, num_samples, priors)
    return buf.getvalue()


def fix_crc(data: bytes) -> bytes:
    return data[:-4] + struct.pack("<I", zlib.crc32(data[:-4]))


# ----- header ---------------------------------------------------------------------------------
def test_header_size_and_roundtrip():
    h = Header(MODE_RANGE, 24000, 240, (1024, 512, 3), FP, 100, b"12345678")
    raw = h.to_bytes()
    assert FIXED_HEADER_SIZE == 44 and len(raw) == h.size == 44 + 2 * 3
    assert Header.from_bytes(raw) == h
    assert h.bit_widths == (10, 9, 2)


def test_header_rejects_out_of_range_fields():
    with pytest.raises(BitstreamError):
        Header(MODE_FIXED, 0, HOP, (1024,), FP)
    with pytest.raises(BitstreamError):
        Header(MODE_FIXED, 16000, HOP, (1,), FP)
    with pytest.raises(BitstreamError):
        Header(7, 16000, HOP, (16,), FP)
    with pytest.raises(BitstreamError):
        Header(MODE_RANGE, 16000, HOP, (16,), FP, block_frames=0)


# ----- packing --------------------------------------------------------------------------------
@pytest.mark.parametrize("widths", [(10,) * 12, (3, 7, 1, 16, 10), (1,), (16, 16)])
def test_pack_roundtrip(widths):
    codes = random_codes([1 << w for w in widths], 37, seed=len(widths))
    data = pack_codes(codes, widths)
    assert len(data) == packed_size(37, widths)
    np.testing.assert_array_equal(unpack_codes(data, 37, widths), codes)


def test_pack_msb_first_layout():
    # stage widths 3 and 5: frame (5, 17) -> 101 10001 -> 0xB1
    assert pack_codes(np.array([[5], [17]]), (3, 5)) == b"\xb1"


def test_pack_in_chunks_of_8_frames_equals_whole():
    widths = (10, 9, 3)
    codes = random_codes([1 << w for w in widths], 50)
    parts = b"".join(pack_codes(codes[:, i : i + 8], widths) for i in range(0, 50, 8))
    assert parts == pack_codes(codes, widths)


def test_packing_speed_10s_at_6kbps():
    """500 frames x 12 stages x 10 bits: pack + unpack well under 10 ms."""
    widths = (10,) * 12
    codes = random_codes([1024] * 12, 500)
    pack_codes(codes, widths)  # warm the layout cache
    best = float("inf")
    for _ in range(20):
        t = time.perf_counter()
        out = unpack_codes(pack_codes(codes, widths), 500, widths)
        best = min(best, time.perf_counter() - t)
    np.testing.assert_array_equal(out, codes)
    assert best < 0.010, f"pack+unpack took {best * 1e3:.2f} ms"


# ----- container, fixed-width ------------------------------------------------------------------
def test_fixed_file_roundtrip_and_size():
    h = fixed_header()
    codes = random_codes(h.codebook_sizes, 500)
    data = to_bytes(h, codes, 500 * HOP - 7)
    assert len(data) == h.size + 7500 + TRAILER_SIZE == 68 + 7500 + 16
    header, trailer, decoded = read_file(data)
    assert header == h and trailer.num_frames == 500 and trailer.num_samples == 500 * HOP - 7
    np.testing.assert_array_equal(decoded, codes)


@pytest.mark.parametrize("chunks", [[1] * 21, [3, 0, 7, 11], [21]])
def test_streaming_writer_equals_whole(chunks):
    h = fixed_header((64, 1000, 2))
    codes = random_codes(h.codebook_sizes, sum(chunks))
    buf = io.BytesIO()
    writer = BitstreamWriter(buf, h)
    pos = 0
    for n in chunks:
        writer.write(codes[:, pos : pos + n])
        pos += n
    size = writer.finish(pos * HOP)
    assert buf.getvalue() == to_bytes(h, codes, pos * HOP) and size == len(buf.getvalue())


def test_writer_rejects_inconsistent_sample_count():
    h = fixed_header((64,))
    with pytest.raises(BitstreamError):
        to_bytes(h, random_codes((64,), 10), 10 * HOP + 1)


def test_code_out_of_range_rejected():
    h = fixed_header((1000,))
    data = bytearray(to_bytes(h, np.zeros((1, 8), dtype=np.int64), 8 * HOP))
    data[h.size] = 0xFF  # first code becomes >= 1020
    data[h.size + 1] |= 0xC0
    with pytest.raises(BitstreamError, match="codebook range"):
        read_file(fix_crc(bytes(data)))


# ----- damaged files --------------------------------------------------------------------------
@pytest.fixture()
def good() -> bytes:
    h = fixed_header((256, 256, 256))
    return to_bytes(h, random_codes(h.codebook_sizes, 30), 30 * HOP)


def test_wrong_magic(good):
    with pytest.raises(BitstreamError, match="magic"):
        parse(b"RIFF" + good[4:])


def test_unknown_version(good):
    with pytest.raises(BitstreamError, match="version"):
        parse(good[:4] + b"\x02" + good[5:])


def test_flipped_bit_fails_crc(good):
    for pos in (10, len(good) // 2, len(good) - 5):
        bad = bytearray(good)
        bad[pos] ^= 0x10
        with pytest.raises(BitstreamError, match="CRC"):
            parse(bytes(bad))


def test_truncated(good):
    for n in (0, 3, 20, 50, len(good) - 1):
        with pytest.raises(BitstreamError):
            parse(good[:n])


def test_frame_count_the_payload_cannot_hold(good):
    bad = bytearray(good)
    struct.pack_into("<IQ", bad, len(bad) - TRAILER_SIZE, 0xFFFFFFFF, 0xFFFFFFFF * HOP)
    with pytest.raises(BitstreamError, match="payload"):
        parse(fix_crc(bytes(bad)))


def test_zero_samples(good):
    bad = bytearray(good)
    struct.pack_into("<IQ", bad, len(bad) - TRAILER_SIZE, 0, 0)
    with pytest.raises(BitstreamError, match="no audio"):
        parse(fix_crc(bytes(bad)))


# ----- priors and range coding ----------------------------------------------------------------
def test_quantized_priors_are_valid_and_deterministic():
    counts = np.array([0, 0, 5, 1_000_000, 3] + [0] * 59)
    f = quantize_counts(counts, 16)
    assert f.sum() == 1 << 16 and f.min() >= 1 and f.argmax() == 3
    np.testing.assert_array_equal(f, quantize_counts(counts, 16))


def test_priors_save_load(tmp_path):
    p = skewed_priors((64, 1024))
    p.save(tmp_path)
    q = Priors.load(tmp_path)
    assert q.id == p.id and q.precision == p.precision
    for a, b in zip(p.freqs, q.freqs):
        np.testing.assert_array_equal(a, b)


def test_missing_priors_is_bitstream_error(tmp_path):
    with pytest.raises(BitstreamError, match="codec priors"):
        Priors.load(tmp_path)


def test_entropy_record_roundtrip_bit_exact():
    sizes = (1024,) * 12
    p = skewed_priors(sizes)
    codes = random_codes(sizes, 300, priors=p)
    data = encode_record(codes, p)
    assert data == encode_record(codes, p)
    np.testing.assert_array_equal(decode_record(data, 300, 12, p), codes)


def test_range_coded_file_roundtrip_and_saving():
    sizes = (1024,) * 12
    p = skewed_priors(sizes)
    h = Header(MODE_RANGE, 16000, HOP, sizes, FP, 64, p.id)
    codes = random_codes(sizes, 500, seed=3, priors=p)
    data = to_bytes(h, codes, 500 * HOP, p)
    _, _, decoded = read_file(data, p)
    np.testing.assert_array_equal(decoded, codes)
    parsed = parse(data)
    assert len(parsed.records) == 8
    # codes drawn from the priors cost about their entropy (plus ~8 bytes per record)
    assert 8 * parsed.payload_size <= 1.03 * 500 * p.entropy_bits(12) + 64 * len(parsed.records)
    assert parsed.payload_size < 0.7 * packed_size(500, h.bit_widths)


def test_range_coded_needs_matching_priors():
    sizes = (64, 64)
    p, other = skewed_priors(sizes), skewed_priors(sizes, seed=1)
    h = Header(MODE_RANGE, 16000, HOP, sizes, FP, 16, p.id)
    data = to_bytes(h, random_codes(sizes, 40, priors=p), 40 * HOP, p)
    with pytest.raises(BitstreamError, match="priors"):
        read_file(data)
    with pytest.raises(BitstreamError, match="different entropy priors"):
        read_file(data, other)


def test_range_coded_frame_count_bounded_by_size():
    sizes = (1024,) * 4
    p = skewed_priors(sizes)
    h = Header(MODE_RANGE, 16000, HOP, sizes, FP, 65536, p.id)
    data = bytearray(to_bytes(h, random_codes(sizes, 10, priors=p), 10 * HOP, p))
    struct.pack_into("<IQ", data, len(data) - TRAILER_SIZE, 60000, 60000 * HOP)
    with pytest.raises(BitstreamError, match="more than the payload"):
        read_file(fix_crc(bytes(data)), p)
