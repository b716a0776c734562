"""Planning a multi-file run: each input's length from its header (``audio_seconds``,
``rvq_seconds``), which files are long (``long_seconds``: they run alone, streamed) and the
groups of short files that share one padded model call (``groups``)."""

from __future__ import annotations

import os

from codec.bitstream.header import TRAILER_SIZE, Trailer
from codec.files.coding import DECODE_BLOCK_FRAMES
from codec.files.jobs import Job

#: A group holds at most this many seconds of (padded) audio.
BATCH_SECONDS = 240.0


def long_seconds(frame_rate: float) -> float:
    """Seconds above which a file runs alone and streamed (memory stays bounded): the length
    of ``DECODE_BLOCK_FRAMES`` frames at ``frame_rate`` (frames/s), the length from which
    decoding streams, so encode and decode split files alike."""
    return DECODE_BLOCK_FRAMES / frame_rate


def groups(jobs: list[Job], batch: int, long: float, batch_seconds: float = BATCH_SECONDS) -> list[list[Job]]:
    """Jobs in groups for one batched call each, the longest first (workers finish together):
    a job of unknown length or longer than ``long`` seconds alone, then the others by length,
    up to ``batch`` neighbours whose padded total stays within ``batch_seconds``. Depends only
    on the jobs, so any number of workers gives the same groups (and the same bytes)."""
    alone = [[j] for j in jobs if j.seconds is None or j.seconds > long]
    short = sorted((j for j in jobs if j.seconds is not None and j.seconds <= long),
                   key=lambda j: (-j.seconds, j.source))
    out: list[list[Job]] = []
    for job in short:
        last = out[-1] if out else None
        if last is not None and len(last) < batch and last[0].seconds * (len(last) + 1) <= batch_seconds:
            last.append(job)
        else:
            out.append([job])
    return alone + out


def audio_seconds(path: str) -> float | None:
    """An audio file's length in seconds from its header (soundfile), None when unknown or
    unreadable (the job itself then reports why)."""
    import soundfile as sf

    try:
        info = sf.info(path)
    except Exception:  # noqa: BLE001 - the job itself reports the reason
        return None
    return info.frames / info.samplerate if 0 < info.frames < 1 << 62 and info.samplerate > 0 else None


def rvq_seconds(path: str, sample_rate: int) -> float | None:
    """A .rvq file's length in seconds from its trailer (not checked; ``sample_rate``: the
    model's, Hz), None when unreadable."""
    try:
        with open(path, "rb") as f:
            f.seek(-TRAILER_SIZE, os.SEEK_END)
            samples = Trailer.from_bytes(f.read(TRAILER_SIZE)).num_samples
    except (OSError, ValueError):
        return None
    return samples / sample_rate
