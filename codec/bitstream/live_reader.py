"""Reading a live stream (FORMAT.md, "Live streams") as its bytes arrive: ``LiveReader`` turns
any pieces of input into the stream's events, checking every packet (CRC, sequence number,
codes in range) before it is used; ``join`` starts mid-stream at the next repeated header.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

from codec.bitstream.errors import BitstreamError
from codec.bitstream.header import MAGIC as FILE_MAGIC
from codec.bitstream.live import (
    END_PREFIX,
    FRAME_MOD,
    FRAMES_PREFIX,
    HEADER_CRC,
    HEADER_FIXED,
    KIND_END,
    KIND_FRAMES,
    LIVE_MAGIC,
    MAX_JOIN_SCAN,
    PACKET_CRC,
    SEQ_MOD,
    LiveHeader,
    crc16,
    header_size,
    wrong_magic,
)
from codec.bitstream.packing import packed_size, unpack_codes


def _damaged_stage_count(data: bytes | bytearray) -> bool:
    """Whether ``data``, too short for the header packet its stage count N asks for, starts with a
    whole header packet whose CRC32 holds once N is set right: a damaged N made a reader wait for
    a longer header than was sent (the CRC tells this damage from a stream cut off in its header)."""
    if len(data) < HEADER_FIXED.size or bytes(data[:4]) != LIVE_MAGIC:
        return False
    body = bytearray(data[: HEADER_FIXED.size + 2 * 255])
    for n in range(1, 256):
        size = header_size(n)
        if size > len(data):
            break
        body[5] = n
        if zlib.crc32(body[: size - HEADER_CRC.size]) == HEADER_CRC.unpack_from(data, size - HEADER_CRC.size)[0]:
            return True
    return False


@dataclass(frozen=True)
class Frames:
    """A frames packet's content: codes int64 [N, f] of frames ``first .. first + f - 1``."""

    first: int
    codes: np.ndarray


@dataclass(frozen=True)
class End:
    """The end packet: the last codes [N, f] (f may be 0) from frame ``first`` on, and the
    stream's sample count from its frame 0 (decoders trim their output to it)."""

    first: int
    codes: np.ndarray
    num_samples: int


class LiveReader:
    """Incremental parser: ``feed(bytes)`` as data arrives -> the events it completes, in order:
    the stream's ``LiveHeader`` (once), then ``Frames``, then one ``End``; ``close()`` at end of
    input. Everything wrong is a BitstreamError: wrong magic, a CRC mismatch, a gap in the
    sequence numbers, a repeated header that disagrees, data after the end, and (at
    ``close``) a stream cut off before its end packet. Events parsed before an error in the
    same ``feed`` are returned first; the error is raised by the next call.

    join: the input may start anywhere in a stream: bytes are skipped up to the first header
    packet whose CRC holds (a repeated one mid-stream included), and the stream is read from
    there (``joined_at``: the frame it starts with). Without it the input must start with the
    stream's first header.
    """

    def __init__(self, join: bool = False) -> None:
        self.join = join
        self.header: LiveHeader | None = None
        self.joined_at: int | None = None
        self.next_frame = 0  # index of the frame the next packet must start with
        self.ended = False
        self.bytes_read = 0
        self._buf = bytearray()
        self._skipped = 0  # bytes skipped while looking for a header (join)
        self._error: BitstreamError | None = None

    @property
    def pending_bytes(self) -> int:
        """Bytes received but not yet part of a complete packet."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[LiveHeader | Frames | End]:
        """Parse ``data`` (the next bytes of the input, any amount) -> the completed events."""
        self.raise_pending()
        self.bytes_read += len(data)
        self._buf += data
        events: list[LiveHeader | Frames | End] = []
        try:
            while self._buf:
                event, used = self._next()
                if used == 0:
                    break
                del self._buf[:used]
                if event is not None:
                    events.append(event)
        except BitstreamError as e:
            if not events:
                raise
            self._error = e
        return events

    def close(self) -> None:
        """End of input: raise BitstreamError unless the stream ended with its end packet. Bytes
        held that make no whole packet are a stream cut off, unless the CRC shows a whole packet
        (header, frames or end) in them whose length-giving byte was damaged (the stage count,
        the kind, an end packet's frame count): that is reported as damage."""
        self.raise_pending()
        if self.ended:
            return
        if self.header is None:
            if self.join:
                raise BitstreamError(f"no live stream header found in {self.bytes_read} bytes")
            if self.bytes_read == 0:
                raise BitstreamError("empty input: no live stream")
            if _damaged_stage_count(self._buf):
                raise BitstreamError("stream header has a damaged stage count (its CRC holds with it corrected):"
                                     " the stream is damaged")
            raise BitstreamError("stream truncated inside its header")
        if self._buf:
            if self._damaged_kind_or_count():
                raise BitstreamError(f"packet {self._where} has a damaged kind or frame count (its CRC holds with"
                                     " them corrected): the stream is damaged")
            raise BitstreamError(f"stream cut off inside a packet {self._where} (no end packet: the encoder stopped?)")
        raise BitstreamError(f"stream ended without its end packet {self._where} (the encoder stopped?)")

    def _damaged_kind_or_count(self) -> bool:
        """At end of input, with bytes held that make no whole packet: whether they start with a
        whole frames or end packet whose CRC holds once its kind byte (and an end packet's frame
        count) is set right. A damaged kind or count makes the reader wait for a longer packet
        than was sent; the CRC tells this damage from a stream cut off inside a packet."""
        h, buf = self.header, self._buf
        sizes = [(KIND_FRAMES, None, h.frames_packet_size)]
        sizes += [(KIND_END, f, END_PREFIX.size + packed_size(f, h.bit_widths) + PACKET_CRC.size)
                  for f in range(h.packet_frames + 1)]
        for kind, f, size in sizes:
            if size > len(buf):
                continue
            body = bytearray(buf[: size - PACKET_CRC.size])
            body[0] = kind
            if f is not None:
                body[3] = f
            if crc16(body) == PACKET_CRC.unpack_from(buf, size - PACKET_CRC.size)[0]:
                return True
        return False

    @property
    def _where(self) -> str:
        """Where the next packet is, for messages: 'after frame n', or 'before any frame'."""
        if self.header is None or self.next_frame == self.header.frame:
            return "before any frame"
        return f"after frame {self.next_frame - 1}"

    def raise_pending(self) -> None:
        """Raise the error found after the events the last ``feed`` returned, if any."""
        if self._error is not None:
            raise self._error

    def _next(self) -> tuple[LiveHeader | Frames | End | None, int]:
        """(event or None, bytes used) at the start of the buffer; (None, 0): need more bytes."""
        buf = self._buf
        if self.ended:
            raise BitstreamError(f"{len(buf)} bytes of unexpected data after the end of the stream")
        if self.header is None:
            return self._scan() if self.join else self._first_header()
        kind = buf[0]
        if kind == LIVE_MAGIC[0]:
            return self._repeated_header()
        if kind == KIND_FRAMES:
            return self._frames_packet()
        if kind == KIND_END:
            return self._end_packet()
        raise BitstreamError(f"bad packet kind {kind:#04x} {self._where}: the stream is damaged")

    def _first_header(self) -> tuple[LiveHeader | None, int]:
        buf = self._buf
        if not LIVE_MAGIC.startswith(bytes(buf[:4])) and not FILE_MAGIC.startswith(bytes(buf[:4])):
            raise BitstreamError(wrong_magic(bytes(buf[:4])))
        if len(buf) < HEADER_FIXED.size or len(buf) < header_size(buf[5]):
            if len(buf) >= 4 and bytes(buf[:4]) != LIVE_MAGIC:
                raise BitstreamError(wrong_magic(bytes(buf[:4])))
            return None, 0
        return self._accept(LiveHeader.from_bytes(buf))

    def _scan(self) -> tuple[LiveHeader | None, int]:
        """Join: skip to the first header packet that parses and passes its CRC."""
        buf = self._buf
        while True:
            at = buf.find(LIVE_MAGIC)
            if at < 0:
                keep = min(len(buf), len(LIVE_MAGIC) - 1)  # a magic may straddle two reads
                self._skip(len(buf) - keep)
                return None, 0
            self._skip(at)
            if len(buf) < HEADER_FIXED.size or len(buf) < header_size(buf[5]):
                return None, 0
            try:
                return self._accept(LiveHeader.from_bytes(buf))
            except BitstreamError:
                self._skip(1)  # magic bytes inside a packet, or a damaged header: look further

    def _skip(self, n: int) -> None:
        del self._buf[:n]
        self._skipped += n
        if self._skipped > MAX_JOIN_SCAN:
            raise BitstreamError(f"no live stream header found in {self._skipped} bytes")

    def _accept(self, header: LiveHeader) -> tuple[LiveHeader, int]:
        self.header, self.next_frame, self.joined_at = header, header.frame, header.frame
        return header, header.size

    def _repeated_header(self) -> tuple[None, int]:
        h = self.header
        if len(self._buf) < h.size:
            return None, 0
        try:
            again = LiveHeader.from_bytes(self._buf, h.size)
        except BitstreamError as e:
            raise BitstreamError(f"repeated header {self._where}: {e}") from None
        if again.at_frame(h.frame) != h:
            raise BitstreamError(f"the stream's parameters changed at frame {self.next_frame}")
        if again.frame != self.next_frame % FRAME_MOD:
            raise self._gap(again.frame, FRAME_MOD)
        return None, h.size

    def _frames_packet(self) -> tuple[Frames | None, int]:
        h = self.header
        size = h.frames_packet_size
        if len(self._buf) < size:
            return None, 0
        packet = self._checked(size)
        codes = self._codes(packet[FRAMES_PREFIX.size : -PACKET_CRC.size], h.packet_frames)
        first = self.next_frame
        self.next_frame += h.packet_frames
        return Frames(first, codes), size

    def _end_packet(self) -> tuple[End | None, int]:
        h = self.header
        if len(self._buf) < END_PREFIX.size:
            return None, 0
        _, _, f, num_samples = END_PREFIX.unpack_from(self._buf, 0)
        if f > h.packet_frames:
            raise BitstreamError(f"end packet {self._where} claims {f} frames"
                                 f" (at most {h.packet_frames}): the stream is damaged")
        size = END_PREFIX.size + packed_size(f, h.bit_widths) + PACKET_CRC.size
        if len(self._buf) < size:
            return None, 0
        packet = self._checked(size)
        codes = self._codes(packet[END_PREFIX.size : -PACKET_CRC.size], f)
        first = self.next_frame
        if -(-num_samples // h.hop_length) != first + f:
            raise BitstreamError(f"end packet: {num_samples} samples do not make {first + f} frames"
                                 f" at hop {h.hop_length}")
        self.next_frame += f
        self.ended = True
        return End(first, codes, num_samples), size

    def _checked(self, size: int) -> bytes:
        """The packet of ``size`` bytes at the buffer start, its CRC and sequence number checked."""
        packet = bytes(self._buf[:size])
        (crc,) = PACKET_CRC.unpack_from(packet, size - PACKET_CRC.size)
        if crc16(packet[: -PACKET_CRC.size]) != crc:
            raise BitstreamError(f"packet CRC mismatch {self._where}: the stream is damaged")
        (seq,) = struct.unpack_from("<H", packet, 1)
        if seq != self.next_frame % SEQ_MOD:
            raise self._gap(seq, SEQ_MOD)
        return packet

    def _gap(self, got: int, mod: int) -> BitstreamError:
        missing = (got - self.next_frame) % mod  # sequence numbers wrap: the smallest gap that fits
        return BitstreamError(f"gap in the stream: expected frame {self.next_frame}, got frame"
                              f" {self.next_frame + missing}: packets were lost")

    def _codes(self, payload: bytes, frames: int) -> np.ndarray:
        codes = unpack_codes(payload, frames, self.header.bit_widths)
        if frames and (codes >= np.asarray(self.header.codebook_sizes)[:, None]).any():
            raise BitstreamError(f"code out of codebook range in frames {self.next_frame}.."
                                 f"{self.next_frame + frames - 1}: the stream is damaged")
        return codes
