"""Range coding of code blocks with the ``constriction`` package and per-stage priors.

A record holds f frames of N stages, coded stage by stage (stage 1's f codes, then stage 2's,
...), each stage with its own categorical model built from the integer tables of
``Priors``. The integer tables are passed to constriction as exact float64 values with
``perfect=False``, whose quantization is deterministic IEEE arithmetic, so both ends build
bit-identical models.
"""

from __future__ import annotations

import math

import constriction
import numpy as np

from codec.bitstream.errors import BitstreamError
from codec.bitstream.priors import Priors

_SLACK = 1.01  # tolerance for constriction re-quantizing our tables to its 24-bit precision
_MODELS: dict[tuple[bytes, int], object] = {}


def _model(priors: Priors, stage: int):
    key = (priors.id, stage)
    if key not in _MODELS:
        probs = priors.freqs[stage].astype(np.float64)
        _MODELS[key] = constriction.stream.model.Categorical(probs, perfect=False)
    return _MODELS[key]


def encode_record(codes: np.ndarray, priors: Priors) -> bytes:
    """codes [N, f] (0 <= code < K_i) -> range-coded bytes (a multiple of 4, little-endian words)."""
    encoder = constriction.stream.queue.RangeEncoder()
    for i, row in enumerate(np.asarray(codes)):
        encoder.encode(np.ascontiguousarray(row, dtype=np.int32), _model(priors, i))
    return encoder.get_compressed().astype("<u4").tobytes()


def information_bits(codes: np.ndarray, priors: Priors) -> float:
    """Sum over codes [N, f] of -log2 p(code) under the priors, in bits."""
    bits = 0.0
    for i, row in enumerate(np.asarray(codes)):
        f = priors.freqs[i]
        bits += float(np.sum(priors.precision - np.log2(f[row].astype(np.float64))))
    return bits


def decode_record(data: bytes | memoryview, num_frames: int, num_stages: int, priors: Priors) -> np.ndarray:
    """Inverse of encode_record -> codes [N, f] int64.

    Raises BitstreamError if the record cannot hold that many codes: a real range coder
    output carries at least the codes' information content minus two words.
    """
    if len(data) % 4:
        raise BitstreamError("range-coded record length is not a multiple of 4 bytes")
    words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
    out = np.empty((num_stages, num_frames), dtype=np.int64)
    try:
        decoder = constriction.stream.queue.RangeDecoder(words)
        for i in range(num_stages):
            out[i] = decoder.decode(_model(priors, i), num_frames)
    except Exception as e:  # noqa: BLE001 - constriction reports corrupt data with assorted exception types
        raise BitstreamError(f"corrupt range-coded record: {e}") from None
    if information_bits(out, priors) > _SLACK * 32 * (len(words) + 2):
        raise BitstreamError("range-coded record is too short for its frame count")
    return out


def max_frames(payload_bytes: int, num_records: int, num_stages: int, priors: Priors) -> int:
    """Upper bound on the frames ``num_records`` records in ``payload_bytes`` can hold."""
    bits = _SLACK * (8 * payload_bytes + 64 * num_records)
    per_frame = priors.min_bits_per_frame(num_stages)
    return math.floor(bits / per_frame) if per_frame > 0 else 2**62
