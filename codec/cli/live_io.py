"""What ``codec stream-encode`` and ``codec stream-decode`` share: reading stdin as data
arrives, writing stdout at once, and their common options (the sample formats themselves are
``codec.cli.pcm``; nothing heavy is imported here, so ``codec --help`` stays fast).

Live commands must not wait for more input than is there: stdin is read with ``os.read`` on
its file descriptor, which returns whatever the pipe holds (at most ``READ_SIZE`` bytes)
instead of filling a buffer first, and every output is flushed as soon as it is written.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Iterator

from codec.bitstream.atomic import write_all
from codec.cli.common import CLIError

#: Raw PCM sample formats (little-endian, mono): signed 16-bit and 32-bit float.
PCM_NAMES = ("f32le", "s16le")
#: Largest read: 2 s of s16le at 16 kHz. A live source delivers far less per read; a file piped
#: in is coded in blocks this big (fast), the output still streaming out block by block.
READ_SIZE = 1 << 16


def add_pcm_option(p: argparse.ArgumentParser, what: str) -> None:
    """``--pcm s16le|f32le`` on a stream command; ``what``: which side it describes."""
    p.add_argument("--pcm", choices=PCM_NAMES, default="s16le",
                   help=f"{what}: signed 16-bit (default) or 32-bit float samples, little-endian, mono")


def add_quiet_option(p: argparse.ArgumentParser) -> None:
    """``-q / --quiet``: no notes on stderr (warnings and errors still show)."""
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no 'ready' line at the start and no summary at the end on stderr")


def refuse_terminals(read: bool, write: bool) -> None:
    """CLIError when stdin (``read``) or stdout (``write``) is a terminal: binary data is
    neither typed nor shown (as gzip refuses)."""
    for stream, name, check in ((sys.stdin, "stdin", read), (sys.stdout, "stdout", write)):
        isatty = getattr(stream, "isatty", None)
        if check and isatty is not None and isatty():
            how = "pipe raw audio or a live stream into it" if name == "stdin" else "pipe it into a player or file"
            raise CLIError(f"{name} is a terminal; {how} (see --help)")


def read_chunks(size: int = READ_SIZE) -> Iterator[bytes]:
    """stdin's bytes as they arrive, each chunk 1..size bytes (whatever the pipe holds), until
    end of input. Falls back to ``read1`` where stdin has no file descriptor (tests)."""
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        read = getattr(sys.stdin.buffer, "read1", sys.stdin.buffer.read)
    else:
        def read(n: int) -> bytes:
            return os.read(fd, n)
    while chunk := read(size):
        yield chunk


def write_now(data: bytes) -> None:
    """Write all of ``data`` to stdout and flush it at once (a closed pipe raises BrokenPipeError,
    which the command line turns into a quiet exit 141)."""
    if data:
        out = sys.stdout.buffer
        write_all(out, data)
        out.flush()


def seconds(samples: int, rate: int) -> str:
    """'3.52 s' for a sample count at ``rate``."""
    return f"{samples / rate:.2f} s"
