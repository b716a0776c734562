"""Audio reading (any soundfile format, any rate, any channel count) and writing.

Reading is block-wise so memory stays bounded on long files: ``AudioReader.blocks`` yields
float32 mono blocks at the requested rate (channels averaged, soxr streaming resampler).
All failures surface as ``AudioError`` with a one-line message.
"""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from codec.bitstream.atomic import atomic_output

BLOCK_SIZE = 1 << 16  # input frames read at a time


class AudioError(ValueError):
    """Input audio is missing, unreadable, empty, or holds non-finite samples."""


def _open_input(path: str) -> tuple[object, str]:
    """'-' -> a seekable binary stdin (buffered in memory when it is a pipe)."""
    if path != "-":
        p = Path(path)
        if not p.exists():
            raise AudioError(f"{path}: no such file")
        if p.is_dir():
            raise AudioError(f"{path}: is a directory, not an audio file")
        return path, path
    stdin = sys.stdin.buffer
    try:
        seekable = stdin.seekable()
    except (OSError, ValueError):
        seekable = False
    if seekable:
        start = stdin.tell()
        empty = stdin.seek(0, io.SEEK_END) == start
        stdin.seek(start)
    else:
        stdin = io.BytesIO(stdin.read())
        empty = not stdin.getbuffer().nbytes
    if empty:
        raise AudioError("<stdin>: no input (0 bytes)")
    return stdin, "<stdin>"


class AudioReader:
    """An open input file. Attributes: sample_rate (Hz), channels, name.

    Use as a context manager; ``blocks(rate)`` yields float32 [L] mono blocks at ``rate``.
    ``duration_s``: the length in seconds where the format states it, else None.
    """

    def __init__(self, path: str) -> None:
        source, self.name = _open_input(path)
        try:
            self._file = sf.SoundFile(source)
        except sf.LibsndfileError as e:
            raise AudioError(f"{self.name}: not a readable audio file ({_reason(e)})") from None
        except OSError as e:
            raise AudioError(f"{self.name}: cannot read ({e.strerror or e})") from None
        self.sample_rate = int(self._file.samplerate)
        self.channels = int(self._file.channels)
        frames = int(self._file.frames)
        self.duration_s = frames / self.sample_rate if 0 < frames < 1 << 62 else None

    def __enter__(self) -> AudioReader:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()

    def blocks(self, rate: int, block_size: int = BLOCK_SIZE) -> Iterator[np.ndarray]:
        """Mono float32 blocks [L] resampled to ``rate`` Hz. Raises AudioError on empty or
        non-finite audio (possibly after some blocks were yielded: callers discard output)."""
        resampler = None if rate == self.sample_rate else soxr.ResampleStream(
            self.sample_rate, rate, 1, dtype="float32", quality="HQ"
        )
        total = 0
        while True:
            try:
                x = self._file.read(block_size, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as e:
                raise AudioError(f"{self.name}: damaged audio file ({_reason(e)})") from None
            last = len(x) < block_size
            if len(x) and not np.isfinite(x).all():
                raise AudioError(f"{self.name}: audio contains NaN or Inf samples")
            total += len(x)
            mono = x.mean(axis=1, dtype=np.float32) if x.shape[1] > 1 else x[:, 0]
            if resampler is not None:
                mono = resampler.resample_chunk(np.ascontiguousarray(mono), last=last)
            if len(mono):
                yield np.ascontiguousarray(mono, dtype=np.float32)
            if last:
                break
        if total == 0:
            raise AudioError(f"{self.name}: empty audio (no samples)")


def read_audio(path: str, rate: int) -> np.ndarray:
    """Whole file as float32 mono [T] at ``rate`` Hz."""
    with AudioReader(path) as reader:
        return np.concatenate(list(reader.blocks(rate)))


def _reason(e: Exception) -> str:
    """libsndfile's reason, without its 'Error opening <object repr>: ' prefix."""
    text = str(e).strip().splitlines()
    if not text:
        return type(e).__name__
    return re.sub(r"^Error opening .*?: ", "", text[-1])


def output_format(path: str) -> str:
    """soundfile format name from the extension: WAV for '-' or a name without one;
    AudioError for an extension soundfile cannot write."""
    ext = Path(path).suffix.lstrip(".").upper() if path != "-" else ""
    if not ext:
        return "WAV"
    if ext not in sf.available_formats():
        known = ", ".join("." + f.lower() for f in ("WAV", "FLAC", "OGG", "AIFF"))
        raise AudioError(f"{path}: unknown audio format .{ext.lower()} (use {known}, ...; - writes WAV to stdout)")
    return ext


def write_audio(path: str, blocks: Iterable[np.ndarray], rate: int, subtype: str | None = None) -> int:
    """Write float mono blocks [L] to ``path`` ('-' = stdout) without partial output on failure.

    Writes a temporary file next to the destination (or in $TMPDIR for stdout) and renames
    it into place (or copies it to stdout) only once complete. ``subtype``: soundfile
    subtype (PCM_16, PCM_24, FLOAT, ...); default PCM_16 where the format allows it.
    Returns the number of samples written.
    """
    fmt = output_format(path)
    if subtype is None:
        subtype = "PCM_16" if sf.check_format(fmt, "PCM_16") else sf.default_subtype(fmt)
    if not sf.check_format(fmt, subtype):
        raise AudioError(f"cannot write {subtype} samples in a {fmt} file")
    n = 0
    with atomic_output(path) as out, sf.SoundFile(
        out, "w", samplerate=rate, channels=1, format=fmt, subtype=subtype
    ) as f:
        for block in blocks:
            f.write(np.asarray(block, dtype=np.float32))
            n += len(block)
    return n
