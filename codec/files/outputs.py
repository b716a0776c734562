"""What ``codec encode`` with several inputs writes for each file's codes, behind one method:
``open(out, model, n_q, fingerprint)`` gives a ``CodeSink`` that takes the codes chunk by chunk
(``write``) and ends the file (``finish``). ``RvqOutput``: a .rvq bitstream (range-coded with
priors when given); ``NpyOutput``: an int16 [n_q, frames] array, listed in the folder's
manifest (``ledger``). Both are plain settings, sent to worker processes as they are."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO, ClassVar, Protocol

import numpy as np

from codec.bitstream.container import DEFAULT_BLOCK_FRAMES, BitstreamWriter
from codec.bitstream.header import Header
from codec.bitstream.priors import Priors
from codec.files.coding import EncodeResult, fixed_width_if_smaller, make_header
from codec.files.manifest import Existing, Manifest

if TYPE_CHECKING:
    from codec.model import Codec


class CodeSink(Protocol):
    """One output file being written from codes."""

    def write(self, codes: np.ndarray) -> None:
        """Append codes int64 [n_q, f] of the next f frames."""

    def finish(self, samples: int) -> None:
        """End the file of a ``samples``-long signal (at the model's rate)."""


@dataclass(frozen=True)
class RvqOutput:
    """.rvq bitstreams: range-coded with ``priors`` (the model's, already checked) in records of
    ``block_frames`` when given (a file that range coding would make larger is written
    fixed-width), else fixed-width."""

    priors: Priors | None = field(default=None, repr=False)
    block_frames: int = DEFAULT_BLOCK_FRAMES
    suffix: ClassVar[str] = ".rvq"

    def open(self, out: BinaryIO, model: Codec, n_q: int, fingerprint: bytes) -> CodeSink:
        """A sink writing ``model``'s first ``n_q`` stages into ``out`` (readable and seekable);
        ``fingerprint``: the model's."""
        return _RvqSink(out, make_header(model, n_q, self.priors, self.block_frames, fingerprint), self.priors)

    def ledger(self, folder: str) -> Existing:
        """Which outputs in ``folder`` count as done: those that exist."""
        return Existing()


@dataclass(frozen=True)
class NpyOutput:
    """Code arrays: int16 [n_q, frames] .npy files and the folder's manifest.jsonl."""

    suffix: ClassVar[str] = ".npy"

    def open(self, out: BinaryIO, model: Codec, n_q: int, fingerprint: bytes) -> CodeSink:
        """A sink saving the codes as one int16 array into ``out`` (the model is not needed)."""
        return _NpySink(out)

    def ledger(self, folder: str) -> Manifest:
        """Which arrays in ``folder`` count as done: those listed in its manifest (kept by it)."""
        return Manifest(folder)


class _RvqSink:
    def __init__(self, out: BinaryIO, header: Header, priors: Priors | None) -> None:
        self.out, self.priors = out, priors
        self.writer = BitstreamWriter(out, header, priors)

    def write(self, codes: np.ndarray) -> None:
        self.writer.write(codes)

    def finish(self, samples: int) -> None:
        size = self.writer.finish(samples)
        if self.priors is not None:
            fixed_width_if_smaller(self.out, EncodeResult(samples, self.writer.num_frames, size), self.priors)


class _NpySink:
    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.chunks: list[np.ndarray] = []

    def write(self, codes: np.ndarray) -> None:
        self.chunks.append(codes.astype(np.int16))

    def finish(self, samples: int) -> None:
        np.save(self.out, np.concatenate(self.chunks, axis=1))
