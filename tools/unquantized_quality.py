#!/usr/bin/env python3
"""The quality a model's decoder reaches from the encoder's latents with no quantizer at all:
the ceiling that no bitrate or quantizer kind can pass (the synthesis trials' first column).

    python tools/unquantized_quality.py MODEL [MODEL ...] [--data DIR] [--limit N] [--json OUT]

For every audio file under --data (default: test-other of the shared LibriSpeech copy), the
whole utterance goes through encoder -> decoder (float32, offline) and is scored against the
original like ``codec eval`` scores a bitstream: wide-band PESQ (mean with its 95% interval),
STOI, log-mel distance, SI-SDR. Prints one line per model; bad input ends with one
``unquantized_quality: error:`` line and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np

from codec.audio_io import AudioError, read_audio
from codec.cli.common import CLIError, load_model
from codec.eval.faithfulness import Unquantized, decode_through
from codec.eval.metrics import score, to_metric_rate
from codec.files.estimate import audio_files
from codec.model import Codec
from codec.recipe import ConfigError

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "LibriSpeech" / "test-other"


def unquantized_scores(model: Codec, files: list[Path]) -> list[dict[str, float]]:
    """Per file: the metrics of decoder(encoder(x)) against x (both at 16 kHz)."""
    out = []
    for path in files:
        x = read_audio(str(path), model.sample_rate)
        y = decode_through(Unquantized(model), x)
        out.append(score(to_metric_rate(x, model.sample_rate), to_metric_rate(y, model.sample_rate)))
    return out


def summary(rows: list[dict[str, float]]) -> dict[str, float]:
    """Means over files (PESQ also its 95% half-interval, 1.96 sd / sqrt n, NaNs left out)."""
    pesq = np.array([r["pesq"] for r in rows if not math.isnan(r["pesq"])])
    means = {k: float(np.mean([r[k] for r in rows])) for k in ("stoi", "mel_distance", "si_sdr")}
    return {"files": len(rows), "pesq": float(pesq.mean()) if len(pesq) else math.nan,
            "pesq_ci95": float(1.96 * pesq.std(ddof=1) / math.sqrt(len(pesq))) if len(pesq) > 1 else math.nan,
            **means}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="unquantized_quality", description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", metavar="MODEL", help="model directories or shipped model names")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="folder of audio files (searched recursively)")
    p.add_argument("--limit", type=int, help="use the first N files only")
    p.add_argument("--json", metavar="OUT", help="also write the summaries as JSON")
    args = p.parse_args(argv)
    try:
        files = audio_files(args.data)[: args.limit]
        if not files:
            raise ConfigError(f"--data {args.data}: no audio files")
        results = {}
        for name in args.models:
            model, _ = load_model(name)
            s = summary(unquantized_scores(model, files))
            results[name] = s
            print(f"{name}: unquantized PESQ {s['pesq']:.3f} +- {s['pesq_ci95']:.3f}, STOI {s['stoi']:.3f}, "
                  f"mel {s['mel_distance']:.3f}, SI-SDR {s['si_sdr']:.2f} dB ({s['files']} files)")
    except (CLIError, ConfigError, AudioError, OSError) as e:
        print(f"unquantized_quality: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
