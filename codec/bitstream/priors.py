"""Per-stage code priors for range coding: integer frequency tables stored with the model.

Each stage i has a table of K_i positive integers summing to 2**precision (every symbol
has a nonzero probability). Tables are computed once from code counts with integer
arithmetic only and stored as integers (``priors.json`` in the model dir), so encoder and
decoder use bit-identical models on every platform.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from codec.bitstream.errors import BitstreamError

PRIORS_FILE = "priors.json"
DEFAULT_PRECISION = 16
MAX_PRECISION = 24  # constriction's default range coder supports models up to 24 bits


def quantize_counts(counts: np.ndarray, precision: int) -> np.ndarray:
    """Counts [K] (>= 0) -> int64 frequencies [K], each >= 1, summing to 2**precision.

    Add-one smoothing, proportional share of the remaining mass (floor), leftover units to
    the largest counts (stable, ties by index). Integer arithmetic only.
    """
    counts = np.asarray(counts, dtype=np.int64) + 1
    k, total = len(counts), 1 << precision
    if k > total // 2:
        raise ValueError(f"precision {precision} too small for {k} symbols")
    free = total - k
    freq = 1 + (counts * free) // counts.sum()
    leftover = total - int(freq.sum())
    order = np.argsort(-counts, kind="stable")
    freq[order[:leftover]] += 1
    return freq


def precision_for(codebook_sizes: list[int] | tuple[int, ...]) -> int:
    """At least 16 bits, and 4 bits more than the largest log2 K (so rare codes stay cheap)."""
    need = max(math.ceil(math.log2(k)) for k in codebook_sizes) + 4
    return min(MAX_PRECISION, max(DEFAULT_PRECISION, need))


@dataclass(frozen=True)
class Priors:
    """Frequency tables for the stages of one model (identified by its fingerprint).

    freqs: one int64 array [K_i] per stage, each summing to 2**precision.
    """

    fingerprint: bytes
    precision: int
    freqs: tuple[np.ndarray, ...]
    num_frames: int = 0  # how many frames the counts came from (informational)

    def __post_init__(self) -> None:
        if not 1 <= self.precision <= MAX_PRECISION:
            raise BitstreamError(f"priors precision {self.precision} out of range")
        for f in self.freqs:
            if f.ndim != 1 or len(f) < 2 or f.min() < 1 or int(f.sum()) != 1 << self.precision:
                raise BitstreamError("priors table is not a valid quantized distribution")

    @classmethod
    def from_counts(cls, counts: list[np.ndarray], fingerprint: bytes, num_frames: int = 0) -> Priors:
        """counts: per stage, occurrences of each code [K_i]."""
        precision = precision_for([len(c) for c in counts])
        return cls(fingerprint, precision, tuple(quantize_counts(c, precision) for c in counts), num_frames)

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        return tuple(len(f) for f in self.freqs)

    @property
    def id(self) -> bytes:
        """8-byte identity of the tables (written in the file header)."""
        h = hashlib.sha256(self.precision.to_bytes(1, "little"))
        for f in self.freqs:
            h.update(len(f).to_bytes(4, "little"))
            h.update(f.astype("<u4").tobytes())
        return h.digest()[:8]

    def min_bits_per_frame(self, num_stages: int) -> float:
        """Least information a frame of the first ``num_stages`` stages can carry, in bits."""
        return sum(self.precision - math.log2(int(f.max())) for f in self.freqs[:num_stages])

    def entropy_bits(self, num_stages: int) -> float:
        """Expected bits per frame under the priors themselves (cross-entropy of the tables)."""
        total = 0.0
        for f in self.freqs[:num_stages]:
            p = f / f.sum()
            total -= float((p * np.log2(p)).sum())
        return total

    def save(self, model_dir: str | Path) -> Path:
        """Write ``model_dir/priors.json`` (all or nothing; an existing one is replaced); returns its path."""
        from codec.bitstream.atomic import atomic_output

        path = Path(model_dir) / PRIORS_FILE
        doc = {
            "fingerprint": self.fingerprint.hex(),
            "precision": self.precision,
            "num_frames": self.num_frames,
            "freqs": [f.tolist() for f in self.freqs],
        }
        with atomic_output(str(path)) as f:
            f.write((json.dumps(doc, separators=(",", ":")) + "\n").encode())
        return path

    @classmethod
    def load(cls, model_dir: str | Path) -> Priors:
        path = Path(model_dir) / PRIORS_FILE
        try:
            doc = json.loads(path.read_text())
            return cls(
                bytes.fromhex(doc["fingerprint"]),
                int(doc["precision"]),
                tuple(np.asarray(f, dtype=np.int64) for f in doc["freqs"]),
                int(doc.get("num_frames", 0)),
            )
        except FileNotFoundError:
            raise BitstreamError(f"no entropy priors in {model_dir}; run `codec priors` first") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise BitstreamError(f"bad priors file {path}: {e}") from None
