"""Fixed-width bit packing of codes, vectorised with numpy.

Layout: frames in time order; inside a frame, stage 1..N; each code of stage i in
``w_i = ceil(log2 K_i)`` bits, most significant bit first; the bit string is cut into bytes
MSB-first (``np.packbits`` order) and the last byte is zero-padded.
Any 8 consecutive frames fill a whole number of bytes, so packing a stream in chunks of
8 frames gives the same bytes as packing it all at once.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from codec.bitstream.errors import BitstreamError


@lru_cache(maxsize=64)
def _bit_layout(widths: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For the sum(w) bits of a frame: the stage of each bit, its shift, and stage starts."""
    w = np.asarray(widths, dtype=np.int64)
    stage = np.repeat(np.arange(len(w)), w)
    starts = np.concatenate([[0], np.cumsum(w)[:-1]])
    shift = (w[stage] - 1 - (np.arange(len(stage)) - starts[stage])).astype(np.uint32)
    return stage, shift, starts


def packed_size(num_frames: int, widths: tuple[int, ...]) -> int:
    """Bytes needed for ``num_frames`` frames: ceil(num_frames * sum(w) / 8)."""
    return -(-num_frames * sum(widths) // 8)


def pack_codes(codes: np.ndarray, widths: tuple[int, ...]) -> bytes:
    """Pack codes [N, F] (ints, 0 <= code < 2**w_i) into ceil(F*sum(w)/8) bytes."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[0] != len(widths):
        raise ValueError(f"codes must be [N={len(widths)}, F], got {codes.shape}")
    stage, shift, _ = _bit_layout(tuple(widths))
    frames = codes.T.astype(np.uint32, copy=False)  # [F, N]
    bits = (frames[:, stage] >> shift) & 1  # [F, sum(w)]
    return np.packbits(bits.astype(np.uint8).ravel()).tobytes()


def unpack_codes(data: bytes | memoryview, num_frames: int, widths: tuple[int, ...]) -> np.ndarray:
    """Inverse of pack_codes: bytes -> codes [N, F] int64. ``data`` must be exactly the right size."""
    if len(data) != packed_size(num_frames, widths):
        raise BitstreamError(
            f"payload is {len(data)} bytes but {num_frames} frames need {packed_size(num_frames, widths)}"
        )
    stage, shift, starts = _bit_layout(tuple(widths))
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=num_frames * len(stage))
    weighted = bits.reshape(num_frames, len(stage)).astype(np.int64) << shift.astype(np.int64)
    if num_frames == 0:
        return np.zeros((len(widths), 0), dtype=np.int64)
    return np.add.reduceat(weighted, starts, axis=1).T.copy()
