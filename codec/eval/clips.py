"""Listening clips for report.html: which utterances, the clip files' names, writing them.

A clip is the first ``CLIP_SECONDS`` of the audio the evaluation scored (the decoded .rvq
file, the opusdec output) or of the original, as 16-bit FLAC in OUT/listen/: small enough to
keep a page of a few dozen players light, lossless so the listener hears the codec and not a
second lossy coder, and played by every current browser. The sweep's workers write them (so
a clip is exactly what was scored, not a second decode), the page links to them by the same
names.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

CLIP_SECONDS = 5.0
LISTEN_DIR = "listen"  # beside report.html; its links are relative, so the folder can be copied
LISTEN_UTTERANCES = 4
CLIP_PATTERN = "u*.flac"  # every clip's name (``clip_file``, ``original_file``)


def speaker(utterance: str) -> str:
    """The top-level folder of an utterance's name (LibriSpeech: the speaker); '' when flat."""
    parts = utterance.split("/")
    return parts[0] if len(parts) > 1 else ""


def choose_utterances(files: Sequence[tuple[str, str]], count: int = LISTEN_UTTERANCES,
                      min_seconds: float = CLIP_SECONDS) -> list[tuple[str, str]]:
    """``count`` of the (path, utterance) ``files`` to listen to, one per speaker where there
    are enough: speakers spread evenly over their sorted list, from each its first utterance
    (sorted) lasting at least ``min_seconds`` (else its longest, so a clip is rarely cut short);
    with fewer speakers than ``count``, further utterances of the same speakers in turn.
    Deterministic: depends only on the names and lengths of ``files``. Returned in input order."""
    if count <= 0 or not files:
        return []
    groups: dict[str, list[tuple[str, str]]] = {}
    for f in sorted(files, key=lambda f: f[1]):
        groups.setdefault(speaker(f[1]), []).append(f)
    speakers = list(groups)
    if len(speakers) > count:  # evenly spaced: 4 of 10 speakers are the 1st, 3rd, 6th and 8th
        speakers = [speakers[i * len(speakers) // count] for i in range(count)]

    def preference(group: list[tuple[str, str]]) -> list[tuple[str, str]]:
        timed = [(f, sf.info(f[0]).duration) for f in group]
        short = sorted((t for t in timed if t[1] < min_seconds), key=lambda t: -t[1])  # longest first, ties in name order
        return [f for f, s in timed if s >= min_seconds] + [f for f, _ in short]

    queues = [preference(groups[s]) for s in speakers]
    picked: list[tuple[str, str]] = []
    while len(picked) < count and any(queues):
        for q in queues:
            if q and len(picked) < count:
                picked.append(q.pop(0))
    order = {f: i for i, f in enumerate(files)}
    return sorted(picked, key=order.__getitem__)


def _slug(text: str) -> str:
    """A file-name-safe form of a system name ('ema/model+int8' -> 'ema_model+int8')."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "system"


def setting_label(kind: str, setting: float) -> str:
    """'4st' (a codec's stage count) or '6kbps' (an Opus bitrate), as used in clip names."""
    return f"{int(setting)}st" if kind == "codec" else f"{setting:g}kbps"


def original_file(utterance_no: int) -> str:
    """Name of the original's clip of the ``utterance_no``-th chosen utterance (from 1)."""
    return f"u{utterance_no}_original.flac"


def clip_file(utterance_no: int, system_no: int, system: str, kind: str, setting: float) -> str:
    """Name of a decoded clip. The system's number keeps two names that slug alike apart."""
    return f"u{utterance_no}_s{system_no}_{_slug(system)}_{setting_label(kind, setting)}.flac"


def write_clip(path: str | Path, audio: np.ndarray, rate: int, seconds: float = CLIP_SECONDS) -> None:
    """The first ``seconds`` of mono float ``audio`` at ``rate`` Hz as 16-bit FLAC, written
    atomically (a page never links to a half-written clip)."""
    from codec.audio_io import write_audio

    write_audio(str(path), [np.asarray(audio[: round(seconds * rate)], dtype=np.float32)], rate, "PCM_16")


def write_original(path: str | Path, source: str, seconds: float = CLIP_SECONDS) -> None:
    """The original's clip at its own sample rate (channels averaged)."""
    from codec.audio_io import read_audio

    rate = sf.info(source).samplerate
    write_clip(path, read_audio(source, rate), rate, seconds)


def remove_stale(clip_dir: Path, keep: Collection[str]) -> None:
    """Delete the clips in ``clip_dir`` not named in ``keep``: those of an earlier run into the
    same folder that chose other utterances or systems, so the folder holds what the page plays."""
    if clip_dir.is_dir():
        for f in clip_dir.glob(CLIP_PATTERN):
            if f.name not in keep:
                f.unlink()
