"""The live stream format: packets a pipe carries as the encoder makes them (FORMAT.md, "Live
streams"): the header, the packet layouts and ``LiveWriter``; ``live_reader`` reads them.
``codec stream-encode`` writes such a stream, ``codec stream-decode`` reads it.

A stream is a header packet, then frames packets of ``packet_frames`` frames each, the header
repeated every ``header_every`` packets, and an end packet with the last frames and the
stream's sample count. Every packet carries a CRC and every frames packet a sequence number,
so damage, a lost packet or a cut-off stream is detected and reported (``BitstreamError``),
never decoded as audio. A reader that joins late skips to the next repeated header, which
carries everything decoding needs; packets are independent of each other (fixed-width codes,
no coder state across packets).

Pure bytes and numpy: no model here (``codec.files.live`` runs the model on these packets).
"""

from __future__ import annotations

import binascii
import dataclasses
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from codec.bitstream.errors import BitstreamError
from codec.bitstream.header import MAGIC as FILE_MAGIC
from codec.bitstream.header import StageLayout
from codec.bitstream.packing import pack_codes, packed_size

LIVE_MAGIC = b"RVQL"
LIVE_VERSION = 1
KIND_FRAMES = 0x46  # b"F"
KIND_END = 0x45  # b"E"
MAX_PACKET_FRAMES = 255
#: magic, version, N, packet_frames, flags, sample_rate, hop, frame, fingerprint: 36 bytes
HEADER_FIXED = struct.Struct("<4sBBBBIII16s")
HEADER_CRC = struct.Struct("<I")  # CRC32 (zlib) of the header bytes before it
FRAMES_PREFIX = struct.Struct("<BH")  # kind, seq (first frame index mod 65536)
END_PREFIX = struct.Struct("<BHBQ")  # kind, seq, f (frames in the packet), num_samples
PACKET_CRC = struct.Struct("<H")  # CRC-16/CCITT-FALSE of the packet bytes before it
SEQ_MOD = 1 << 16
FRAME_MOD = 1 << 32
#: A joining reader (live_reader.py) that finds no valid header within this many bytes gives up
#: (a header comes every ``header_every`` packets: well under this at any sensible setting).
MAX_JOIN_SCAN = 1 << 20


def crc16(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection) of ``data``: detects every
    error burst of up to 16 bits in a packet and all but 2^-16 of the others."""
    return binascii.crc_hqx(data, 0xFFFF)


@dataclass(frozen=True)
class LiveHeader(StageLayout):
    """The stream's parameters (the header packet).

    codebook_sizes: K_i of each stage used, len N (1..255), each 2..65536; packet_frames:
    frames per frames packet (1..255); frame: index of the first frame of the packet after
    this header (0 at the start of the stream; a repeated header says where a joiner is).
    """

    sample_rate: int
    hop_length: int
    codebook_sizes: tuple[int, ...]
    fingerprint: bytes
    packet_frames: int = 1
    frame: int = 0
    version: int = LIVE_VERSION

    @property
    def size(self) -> int:
        """Header packet size in bytes: 40 + 2 * N."""
        return header_size(self.num_stages)

    @property
    def frames_packet_size(self) -> int:
        """Bytes of one frames packet: 3 + ceil(packet_frames * sum(w) / 8) + 2."""
        return FRAMES_PREFIX.size + packed_size(self.packet_frames, self.bit_widths) + PACKET_CRC.size

    def stream_bitrate(self, header_every: int) -> float:
        """Bits per second on the wire: frames packets, plus a header every ``header_every``
        packets (0: the first header only, counted as nothing)."""
        packets_per_s = self.frame_rate / self.packet_frames
        headers = packets_per_s / header_every * self.size if header_every else 0.0
        return 8 * (packets_per_s * self.frames_packet_size + headers)

    def at_frame(self, frame: int) -> LiveHeader:
        """The same header, saying that the next packet starts at ``frame``."""
        return dataclasses.replace(self, frame=frame)

    def validate(self) -> None:
        """Raise BitstreamError if any field is out of range."""
        if self.version != LIVE_VERSION:
            raise BitstreamError(f"unsupported live stream version {self.version} (this build reads {LIVE_VERSION})")
        self.validate_layout()
        if not 1 <= self.packet_frames <= MAX_PACKET_FRAMES:
            raise BitstreamError(f"frames per packet {self.packet_frames} out of range 1..{MAX_PACKET_FRAMES}")
        if not 0 <= self.frame < FRAME_MOD:
            raise BitstreamError(f"frame index {self.frame} out of range")

    def to_bytes(self) -> bytes:
        """The header packet, CRC included."""
        body = HEADER_FIXED.pack(LIVE_MAGIC, self.version, self.num_stages, self.packet_frames, 0,
                                 self.sample_rate, self.hop_length, self.frame, self.fingerprint)
        body += struct.pack(f"<{self.num_stages}H", *(k - 1 for k in self.codebook_sizes))
        return body + HEADER_CRC.pack(zlib.crc32(body))

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview, size: int | None = None) -> LiveHeader:
        """Parse and check the header packet at the start of ``data`` (which may continue past
        it): magic, version, length, CRC, then the fields. Raises BitstreamError.

        size: the packet's size when known (a repeated header's is the first's): the CRC is
        checked there first, so that a damaged stage count is damage, not a header cut short."""
        if len(data) < 4 or bytes(data[:4]) != LIVE_MAGIC:
            raise BitstreamError(wrong_magic(bytes(data[:4])))
        if len(data) < max(HEADER_FIXED.size, size or 0):
            raise BitstreamError("stream truncated inside its header")
        _, version, n, frames, flags, sr, hop, frame, fp = HEADER_FIXED.unpack_from(data, 0)
        if version != LIVE_VERSION and size is None:  # (a repeated header's: after its CRC, as damage)
            raise BitstreamError(f"unsupported live stream version {version} (this build reads {LIVE_VERSION})")
        size = size or header_size(n)
        if len(data) < size:
            raise BitstreamError("stream truncated inside its header")
        (crc,) = HEADER_CRC.unpack_from(data, size - HEADER_CRC.size)
        if zlib.crc32(bytes(data[: size - HEADER_CRC.size])) != crc:
            raise BitstreamError("stream header CRC mismatch: the stream is damaged")
        if header_size(n) != size:
            raise BitstreamError(f"stream header of {n} stages where {size} bytes were expected")
        if flags != 0:
            raise BitstreamError(f"unknown header flags {flags:#x}")
        sizes = struct.unpack_from(f"<{n}H", data, HEADER_FIXED.size)
        return cls(sr, hop, tuple(k + 1 for k in sizes), fp, frames, frame, version)


def header_size(num_stages: int) -> int:
    """Bytes of a header packet with ``num_stages`` stages: 36 + 2N + 4 (CRC32)."""
    return HEADER_FIXED.size + 2 * num_stages + HEADER_CRC.size


def wrong_magic(start: bytes) -> str:
    """The error message for a stream that does not start with the live magic."""
    if start == FILE_MAGIC:
        return "this is a .rvq file, not a live stream: decode it with `codec decode`"
    return "not a codec live stream (wrong magic)"


def _check_codes(codes: np.ndarray, header: LiveHeader) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[0] != header.num_stages:
        raise ValueError(f"expected codes [N={header.num_stages}, f], got {codes.shape}")
    if codes.size and (codes.min() < 0 or (codes >= np.asarray(header.codebook_sizes)[:, None]).any()):
        raise ValueError("code out of codebook range")
    return codes.astype(np.int64)


class LiveWriter:
    """Turns codes into packets. ``start()`` gives the header packet, ``write(codes)`` the frames
    packets its frames complete (``b""`` until a packet is full), ``end(codes, num_samples)``
    the end packet (with the frames still held). Holds at most ``packet_frames - 1`` frames.

    header_every: repeat the header before every header_every-th frames packet (0: never), so
    that a reader can join the stream there.
    """

    def __init__(self, header: LiveHeader, header_every: int = 0) -> None:
        if header_every < 0:
            raise ValueError("header_every must be >= 0")
        self.header = header.at_frame(0)
        self.header_every = header_every
        self.num_frames = 0  # frames put into packets so far
        self.packets = 0  # frames packets written so far
        self.ended = False
        self._pending = np.zeros((header.num_stages, 0), dtype=np.int64)

    def start(self) -> bytes:
        """The header packet that opens the stream."""
        return self.header.to_bytes()

    def write(self, codes: np.ndarray) -> bytes:
        """Codes [N, f] (f >= 0) of the next f frames -> the bytes of every packet they complete."""
        if self.ended:
            raise ValueError("the stream has ended")
        codes = _check_codes(codes, self.header)
        self._pending = np.concatenate([self._pending, codes], axis=1)
        p, out = self.header.packet_frames, []
        while self._pending.shape[1] >= p:
            if self.header_every and self.packets and self.packets % self.header_every == 0:
                out.append(self.header.at_frame(self.num_frames).to_bytes())
            out.append(self._packet(KIND_FRAMES, self._pending[:, :p]))
            self._pending = self._pending[:, p:]
            self.num_frames += p
            self.packets += 1
        return b"".join(out)

    def end(self, codes: np.ndarray, num_samples: int) -> bytes:
        """The last codes [N, f] and the stream's total sample count (``ceil(num_samples / hop)``
        must be the number of frames written) -> the remaining frames packets and the end packet."""
        out = self.write(codes)
        frames = self.num_frames + self._pending.shape[1]
        if num_samples < 0 or -(-num_samples // self.header.hop_length) != frames:
            raise ValueError(f"{num_samples} samples do not make {frames} frames at hop {self.header.hop_length}")
        self.ended = True
        last = self._packet(KIND_END, self._pending, num_samples)
        self.num_frames = frames
        return out + last

    def _packet(self, kind: int, codes: np.ndarray, num_samples: int = 0) -> bytes:
        if self.num_frames + codes.shape[1] >= FRAME_MOD:
            raise ValueError("stream too long (2^32 frames)")
        seq = self.num_frames % SEQ_MOD
        prefix = (FRAMES_PREFIX.pack(kind, seq) if kind == KIND_FRAMES
                  else END_PREFIX.pack(kind, seq, codes.shape[1], num_samples))
        body = prefix + pack_codes(codes, self.header.bit_widths)
        return body + PACKET_CRC.pack(crc16(body))
