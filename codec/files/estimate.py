"""Estimate entropy priors: count each stage's codes over a folder of audio."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from codec.audio_io import AudioReader
from codec.bitstream.priors import Priors

if TYPE_CHECKING:
    from codec.runtime.streamer import Streamer

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".aiff", ".aif"}


def audio_files(folder: str | Path) -> list[Path]:
    """Audio files under ``folder`` (recursive, sorted)."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


def count_codes(streamer: Streamer, paths: Iterable[str | Path]) -> tuple[list[np.ndarray], int]:
    """Per stage, int64 counts [K_i] of every code ``streamer`` emits on ``paths`` (a stream
    each); and the frame count."""
    model = streamer.model
    counts = [np.zeros(k, dtype=np.int64) for k in model.codebook_sizes]
    frames = 0
    with torch.inference_mode():
        for path in paths:
            with AudioReader(str(path)) as reader, streamer:
                chunks = [streamer.encode(torch.from_numpy(b)[None, None]) for b in reader.blocks(model.sample_rate)]
                chunks.append(streamer.flush())
            codes = torch.cat(chunks, dim=-1)[0].cpu().numpy()  # [N, F]
            frames += codes.shape[1]
            for i, row in enumerate(codes):
                counts[i] += np.bincount(row, minlength=len(counts[i]))
    return counts, frames


def estimate_priors(model, paths: Iterable[str | Path]) -> Priors:
    """Priors for ``model`` from its codes (float32 streams) on ``paths``."""
    counts, frames = count_codes(model.streamer(), paths)
    return Priors.from_counts(counts, model.fingerprint(), frames)
