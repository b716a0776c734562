"""Write and read whole ``.rvq`` files: header, payload (packed bits or range-coded records), trailer.

The writer never seeks: it emits the header first, then frames as they arrive, then the
trailer with the totals and a CRC32 over every preceding byte, so it can write to a pipe.
The reader takes the whole file as bytes, checks structure and CRC before decoding, and
never allocates more codes than the file size can hold.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from codec.bitstream import entropy
from codec.bitstream.errors import BitstreamError
from codec.bitstream.header import (
    FIXED_HEADER_SIZE,
    MAGIC,
    MODE_FIXED,
    MODE_RANGE,
    TRAILER_SIZE,
    VERSION,
    Header,
    Trailer,
)
from codec.bitstream.packing import pack_codes, packed_size, unpack_codes
from codec.bitstream.priors import Priors

RECORD_LEN = struct.Struct("<I")  # byte length of one range-coded record (a multiple of 4)
DEFAULT_BLOCK_FRAMES = 256


class BitstreamWriter:
    """Streaming writer. ``write`` codes [N, f] chunks as they come, then ``finish(num_samples)``.

    Holds at most 7 frames (fixed-width) or ``block_frames - 1`` frames (range-coded) in memory.
    """

    def __init__(self, out: BinaryIO, header: Header, priors: Priors | None = None) -> None:
        if header.mode == MODE_RANGE:
            if priors is None or priors.id != header.priors_id:
                raise ValueError("range-coded writing needs the priors named in the header")
            if priors.codebook_sizes[: header.num_stages] != header.codebook_sizes:
                raise ValueError("priors do not match the header's codebook sizes")
        self.out, self.header, self.priors = out, header, priors
        self.crc = 0
        self.bytes_written = 0
        self.num_frames = 0
        self._pending: list[np.ndarray] = []
        self._pending_frames = 0
        self._emit(header.to_bytes())

    def _emit(self, data: bytes) -> None:
        self.out.write(data)
        self.crc = zlib.crc32(data, self.crc)
        self.bytes_written += len(data)

    def write(self, codes: np.ndarray) -> None:
        """Append codes [N, f] (f >= 0) of the next f frames."""
        codes = np.asarray(codes)
        n = self.header.num_stages
        if codes.ndim != 2 or codes.shape[0] != n:
            raise ValueError(f"expected codes [N={n}, f], got {codes.shape}")
        if codes.shape[1] == 0:
            return
        k = np.asarray(self.header.codebook_sizes)[:, None]
        if codes.min() < 0 or (codes >= k).any():
            raise ValueError("code out of codebook range")
        self._pending.append(codes.astype(np.int64))
        self._pending_frames += codes.shape[1]
        self.num_frames += codes.shape[1]
        self._drain(final=False)

    def _drain(self, final: bool) -> None:
        unit = 8 if self.header.mode == MODE_FIXED else self.header.block_frames
        ready = self._pending_frames if final else self._pending_frames // unit * unit
        if ready == 0:
            return
        codes = np.concatenate(self._pending, axis=1)
        now, rest = codes[:, :ready], codes[:, ready:]
        self._pending, self._pending_frames = [rest], rest.shape[1]
        if self.header.mode == MODE_FIXED:
            self._emit(pack_codes(now, self.header.bit_widths))
            return
        for start in range(0, ready, unit):
            record = entropy.encode_record(now[:, start : start + unit], self.priors)
            self._emit(RECORD_LEN.pack(len(record)) + record)

    def finish(self, num_samples: int) -> int:
        """Flush, write the trailer; returns the file size in bytes."""
        self._drain(final=True)
        trailer = Trailer(self.num_frames, num_samples)
        trailer.check(self.header)  # raises if num_samples and frames disagree
        body = trailer.to_bytes()[:-4]
        self._emit(body)
        crc = self.crc
        self.out.write(struct.pack("<I", crc))
        self.bytes_written += 4
        return self.bytes_written


@dataclass(frozen=True)
class Parsed:
    """A structurally valid, CRC-checked file whose codes are not decoded yet.

    records: (offset, length) of each range-coded record inside ``data`` (empty in mode 0).
    """

    header: Header
    trailer: Trailer
    data: bytes
    records: tuple[tuple[int, int], ...]

    @property
    def file_size(self) -> int:
        return len(self.data)

    @property
    def payload_size(self) -> int:
        """Bytes between header and trailer (record length fields included)."""
        return len(self.data) - self.header.size - TRAILER_SIZE


def parse(data: bytes) -> Parsed:
    """Check magic, version, CRC, fields and payload structure. Raises BitstreamError."""
    data = bytes(data)
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise BitstreamError("not a codec bitstream (wrong magic)")
    if len(data) < FIXED_HEADER_SIZE:
        raise BitstreamError("file truncated inside the header")
    version, n = data[4], data[6]
    if version != VERSION:
        raise BitstreamError(f"unsupported bitstream version {version} (this build reads {VERSION})")
    if len(data) < FIXED_HEADER_SIZE + 2 * n + TRAILER_SIZE:
        raise BitstreamError("file truncated (shorter than header and trailer)")
    (crc,) = struct.unpack_from("<I", data, len(data) - 4)
    if zlib.crc32(memoryview(data)[:-4]) != crc:
        raise BitstreamError("CRC mismatch: file is damaged or truncated")
    header = Header.from_bytes(data)
    trailer = Trailer.from_bytes(data[-TRAILER_SIZE:])
    trailer.check(header)
    start, end = header.size, len(data) - TRAILER_SIZE
    if header.mode == MODE_FIXED:
        need = packed_size(trailer.num_frames, header.bit_widths)
        if need != end - start:
            raise BitstreamError(f"payload is {end - start} bytes but {trailer.num_frames} frames need {need}")
        return Parsed(header, trailer, data, ())
    records = []
    pos = start
    while pos < end:
        if pos + RECORD_LEN.size > end:
            raise BitstreamError("truncated record length")
        (length,) = RECORD_LEN.unpack_from(data, pos)
        if length % 4 or pos + RECORD_LEN.size + length > end:
            raise BitstreamError(f"bad record length {length}")
        records.append((pos + RECORD_LEN.size, length))
        pos += RECORD_LEN.size + length
    expected = -(-trailer.num_frames // header.block_frames)
    if len(records) != expected:
        raise BitstreamError(f"{len(records)} records for {trailer.num_frames} frames (expected {expected})")
    return Parsed(header, trailer, data, tuple(records))


def decode_codes(parsed: Parsed, priors: Priors | None = None) -> np.ndarray:
    """Codes [N, F] int64 of a parsed file. Range-coded files need the model's priors."""
    h, num_frames = parsed.header, parsed.trailer.num_frames
    if h.mode == MODE_FIXED:
        codes = unpack_codes(memoryview(parsed.data)[h.size : h.size + parsed.payload_size], num_frames, h.bit_widths)
        if (codes >= np.asarray(h.codebook_sizes)[:, None]).any():
            raise BitstreamError("code out of codebook range")
        return codes
    if priors is None:
        raise BitstreamError("range-coded file: the model's entropy priors are needed to decode it")
    if priors.id != h.priors_id or priors.codebook_sizes[: h.num_stages] != h.codebook_sizes:
        raise BitstreamError("range-coded file was made with different entropy priors")
    if num_frames > entropy.max_frames(parsed.payload_size, len(parsed.records), h.num_stages, priors):
        raise BitstreamError(f"frame count {num_frames} is more than the payload can hold")
    out = np.empty((h.num_stages, num_frames), dtype=np.int64)
    for r, (offset, length) in enumerate(parsed.records):
        lo = r * h.block_frames
        hi = min(lo + h.block_frames, num_frames)
        out[:, lo:hi] = entropy.decode_record(parsed.data[offset : offset + length], hi - lo, h.num_stages, priors)
    return out


def read_file(data: bytes, priors: Priors | None = None) -> tuple[Header, Trailer, np.ndarray]:
    """Parse and decode a whole file -> (header, trailer, codes [N, F] int64)."""
    parsed = parse(data)
    return parsed.header, parsed.trailer, decode_codes(parsed, priors)


def write_file(out: BinaryIO, header: Header, codes: np.ndarray, num_samples: int, priors: Priors | None = None) -> int:
    """Write a whole file at once; returns its size in bytes."""
    writer = BitstreamWriter(out, header, priors)
    writer.write(codes)
    return writer.finish(num_samples)
