"""The ``.rvq`` container: header, fixed-width or range-coded frames, trailer with CRC32.

See FORMAT.md for the byte layout. Everything that goes wrong while reading a file is a
``BitstreamError``. Live streams (packets for pipes, ``codec stream-encode``) are
``codec.bitstream.live`` (header, packets, writer) and ``codec.bitstream.live_reader``.
"""

from codec.bitstream.container import (
    DEFAULT_BLOCK_FRAMES,
    BitstreamWriter,
    Parsed,
    decode_codes,
    parse,
    read_file,
    write_file,
)
from codec.bitstream.errors import BitstreamError
from codec.bitstream.header import MODE_FIXED, MODE_RANGE, TRAILER_SIZE, Header, Trailer
from codec.bitstream.packing import pack_codes, packed_size, unpack_codes
from codec.bitstream.priors import Priors

__all__ = [
    "DEFAULT_BLOCK_FRAMES",
    "MODE_FIXED",
    "MODE_RANGE",
    "TRAILER_SIZE",
    "BitstreamError",
    "BitstreamWriter",
    "Header",
    "Parsed",
    "Priors",
    "Trailer",
    "decode_codes",
    "pack_codes",
    "packed_size",
    "parse",
    "read_file",
    "unpack_codes",
    "write_file",
]
