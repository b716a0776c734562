"""Fixed-layout header and trailer of the ``.rvq`` container (see FORMAT.md).

Header (44 + 2*N bytes, little-endian)::

    0   4  magic  b"RVQC"
    4   1  version (1)
    5   1  mode: 0 = fixed-width packing, 1 = range coding
    6   1  N, number of stages used (1..255)
    7   1  flags (reserved, 0)
    8   4  sample_rate, Hz (u32)
    12  4  hop_length, samples per frame (u32)
    16  4  block_frames, frames per range-coded record (0 in mode 0)
    20  8  priors_id (8 bytes of sha256 of the priors; zeros in mode 0)
    28  16 model fingerprint
    44  2N codebook size of each stage minus one (u16)

Trailer (16 bytes): num_frames (u32), num_samples (u64), crc32 of all bytes before it (u32).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from codec.bitstream.errors import BitstreamError

MAGIC = b"RVQC"
VERSION = 1
MODE_FIXED = 0
MODE_RANGE = 1
MODE_NAMES = {MODE_FIXED: "fixed-width", MODE_RANGE: "range-coded"}

FIXED_STRUCT = struct.Struct("<4sBBBBIII8s16s")  # 44 bytes: everything before the stage table
FIXED_HEADER_SIZE = FIXED_STRUCT.size
TRAILER_STRUCT = struct.Struct("<IQI")  # num_frames, num_samples, crc32
TRAILER_SIZE = TRAILER_STRUCT.size
FINGERPRINT_SIZE = 16
PRIORS_ID_SIZE = 8

MAX_SAMPLE_RATE = 1_000_000
MAX_HOP_LENGTH = 1 << 20
MAX_BLOCK_FRAMES = 1 << 16
MAX_CODEBOOK_SIZE = 1 << 16


class StageLayout:
    """What a ``.rvq`` header (``Header``) and a live stream's (``live.LiveHeader``) share: the
    model's rate, hop and fingerprint and the codebook sizes K_i of the stages used, what follows
    from them, and their range checks. The base of frozen dataclasses that declare these fields;
    each adds its own fields' checks in ``validate``."""

    sample_rate: int
    hop_length: int
    codebook_sizes: tuple[int, ...]
    fingerprint: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "codebook_sizes", tuple(int(k) for k in self.codebook_sizes))
        self.validate()

    def validate(self) -> None:
        """Raise BitstreamError if any field is out of range."""
        self.validate_layout()

    @property
    def num_stages(self) -> int:
        """N, the number of stages used (the model's first N)."""
        return len(self.codebook_sizes)

    @property
    def bit_widths(self) -> tuple[int, ...]:
        """ceil(log2 K_i) bits per code of each stage (fixed-width packing)."""
        return tuple(max(1, (k - 1).bit_length()) for k in self.codebook_sizes)

    @property
    def frame_rate(self) -> float:
        """Frames per second."""
        return self.sample_rate / self.hop_length

    @property
    def nominal_bitrate(self) -> float:
        """frame_rate * sum_i log2 K_i, bits per second of codes."""
        return self.frame_rate * sum(math.log2(k) for k in self.codebook_sizes)

    def validate_layout(self) -> None:
        """Raise BitstreamError if a shared field is out of range: N 1..255, rate, hop, each K_i
        2..65536, a 16-byte fingerprint."""
        if not 1 <= self.num_stages <= 255:
            raise BitstreamError(f"number of stages {self.num_stages} out of range 1..255")
        if not 1 <= self.sample_rate <= MAX_SAMPLE_RATE:
            raise BitstreamError(f"sample rate {self.sample_rate} out of range")
        if not 1 <= self.hop_length <= MAX_HOP_LENGTH:
            raise BitstreamError(f"hop length {self.hop_length} out of range")
        if any(not 2 <= k <= MAX_CODEBOOK_SIZE for k in self.codebook_sizes):
            raise BitstreamError(f"codebook sizes {list(self.codebook_sizes)} out of range 2..65536")
        if len(self.fingerprint) != FINGERPRINT_SIZE:
            raise BitstreamError("bad fingerprint length")


@dataclass(frozen=True)
class Header(StageLayout):
    """Everything known before the first frame is written.

    codebook_sizes: K_i of each stage used, len N (1..255), each 2..65536.
    """

    mode: int
    sample_rate: int
    hop_length: int
    codebook_sizes: tuple[int, ...]
    fingerprint: bytes
    block_frames: int = 0
    priors_id: bytes = bytes(PRIORS_ID_SIZE)
    version: int = VERSION

    @property
    def size(self) -> int:
        """Header size in bytes: 44 + 2 * N."""
        return FIXED_HEADER_SIZE + 2 * self.num_stages

    def validate(self) -> None:
        """Raise BitstreamError if any field is out of range."""
        if self.version != VERSION:
            raise BitstreamError(f"unsupported bitstream version {self.version} (this build reads {VERSION})")
        if self.mode not in MODE_NAMES:
            raise BitstreamError(f"unknown coding mode {self.mode}")
        self.validate_layout()
        if len(self.priors_id) != PRIORS_ID_SIZE:
            raise BitstreamError("bad priors id length")
        if self.mode == MODE_FIXED and (self.block_frames != 0 or any(self.priors_id)):
            raise BitstreamError("fixed-width file with block size or priors id set")
        if self.mode == MODE_RANGE and not 1 <= self.block_frames <= MAX_BLOCK_FRAMES:
            raise BitstreamError(f"block size {self.block_frames} frames out of range 1..{MAX_BLOCK_FRAMES}")

    def to_bytes(self) -> bytes:
        fixed = FIXED_STRUCT.pack(
            MAGIC, self.version, self.mode, self.num_stages, 0, self.sample_rate,
            self.hop_length, self.block_frames, self.priors_id, self.fingerprint,
        )
        return fixed + struct.pack(f"<{self.num_stages}H", *(k - 1 for k in self.codebook_sizes))

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> Header:
        """Parse the header at the start of ``data`` (which may continue past it)."""
        if len(data) < 4 or bytes(data[:4]) != MAGIC:
            raise BitstreamError("not a codec bitstream (wrong magic)")
        if len(data) < FIXED_HEADER_SIZE:
            raise BitstreamError("file truncated inside the header")
        _, version, mode, n, flags, sr, hop, block, pid, fp = FIXED_STRUCT.unpack_from(data, 0)
        if version != VERSION:
            raise BitstreamError(f"unsupported bitstream version {version} (this build reads {VERSION})")
        if flags != 0:
            raise BitstreamError(f"unknown header flags {flags:#x}")
        if len(data) < FIXED_HEADER_SIZE + 2 * n:
            raise BitstreamError("file truncated inside the header")
        sizes = struct.unpack_from(f"<{n}H", data, FIXED_HEADER_SIZE)
        return cls(mode, sr, hop, tuple(k + 1 for k in sizes), fp, block, pid, version)


@dataclass(frozen=True)
class Trailer:
    """Totals known only at the end of a streamed encode."""

    num_frames: int
    num_samples: int
    crc32: int = 0

    def to_bytes(self) -> bytes:
        return TRAILER_STRUCT.pack(self.num_frames, self.num_samples, self.crc32)

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> Trailer:
        return cls(*TRAILER_STRUCT.unpack(data))

    def check(self, header: Header) -> None:
        """Frame and sample counts must agree: num_frames == ceil(num_samples / hop) >= 1."""
        if self.num_samples < 1:
            raise BitstreamError("file holds no audio (0 samples)")
        expected = -(-self.num_samples // header.hop_length)
        if expected != self.num_frames:
            raise BitstreamError(
                f"frame count {self.num_frames} does not match {self.num_samples} samples"
                f" at hop {header.hop_length}"
            )
