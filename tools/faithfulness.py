#!/usr/bin/env python3
"""Waveform faithfulness of a model at its full bitrate: DC offset and level on speech, and the
level at which pure tones come back (codec/eval/faithfulness.py).

    python tools/faithfulness.py MODEL [--data DIR] [--limit N] [--seconds S] [--tones HZ,HZ,...]
                                       [--unquantized] [--json OUT]

For every audio file under --data (default: test-other of the shared LibriSpeech copy) the
file (or its first --seconds) goes through the model's encode and decode (all stages, offline)
and is compared with the input: the largest |DC out - DC in| and the range of the level change
(dB). Then sines (default 100-4000 Hz; --tones names others, e.g. the between-bin 1010,1337,
2025,3033 of tests/test_faithfulness.py) at amplitude 0.3 (1 s each, the first 0.2 s not
measured): output level minus input level in dB. --unquantized measures the autoencoder alone
(encoder -> decoder, the quantizer bypassed). Bad input ends with one ``faithfulness: error:``
line and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np

from codec.audio_io import AudioError, read_audio
from codec.cli.common import CLIError, load_model
from codec.eval.faithfulness import (
    TONE_FREQUENCIES,
    Unquantized,
    decode_through,
    speech_faithfulness,
    tone_gains,
)
from codec.files.estimate import audio_files
from codec.recipe import ConfigError

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "LibriSpeech" / "test-other"


def frequencies(text: str) -> tuple[float, ...]:
    """"1010,1337" -> (1010.0, 1337.0): positive frequencies in Hz (argparse type)."""
    try:
        out = tuple(float(f) for f in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not a comma-separated list of frequencies in Hz") from None
    if not out or not all(0 < f < 1e6 for f in out):
        raise argparse.ArgumentTypeError(f"{text!r}: frequencies must be positive (Hz)")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="faithfulness", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="model directory or shipped model name")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="folder of audio files (searched recursively)")
    p.add_argument("--limit", type=int, help="use the first N files only")
    p.add_argument("--seconds", type=float, help="measure speech on the first S seconds of each file only")
    p.add_argument("--tones", type=frequencies, default=TONE_FREQUENCIES, metavar="HZ,HZ,...",
                   help="the sines' frequencies in Hz (default: %(default)s)")
    p.add_argument("--unquantized", action="store_true",
                   help="measure the autoencoder alone (encoder -> decoder, the quantizer bypassed)")
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.seconds is not None and not args.seconds > 0:
        p.error(f"--seconds must be > 0, got {args.seconds}")
    try:
        files = audio_files(args.data)[: args.limit]
        if not files:
            raise ConfigError(f"--data {args.data}: no audio files")
        model, _ = load_model(args.model)
        through = Unquantized(model) if args.unquantized else model
        rows = []
        for path in files:
            x = read_audio(str(path), model.sample_rate)
            x = x[: int(args.seconds * model.sample_rate)] if args.seconds else x
            rows.append(speech_faithfulness(x, decode_through(through, x)))
        dc = np.array([r["dc_error"] for r in rows])
        level = np.array([r["level_error_db"] for r in rows])
        tones = tone_gains(through, frequencies=args.tones)
    except (CLIError, ConfigError, AudioError, OSError) as e:
        print(f"faithfulness: error: {e}", file=sys.stderr)
        return 2
    path = "unquantized" if args.unquantized else "all stages"
    print(f"{args.model} ({path}): speech ({len(rows)} files): max |DC out - DC in| {np.abs(dc).max():.4f}, "
          f"level change {level.min():+.2f} .. {level.max():+.2f} dB (mean {level.mean():+.2f})")
    print("tones (amplitude 0.3): " + ", ".join(f"{f:g} Hz {g:+.1f} dB" for f, g in tones.items()))
    if args.json:
        out = {"files": len(rows), "max_abs_dc_error": float(np.abs(dc).max()), "level_error_db_min": float(level.min()),
               "level_error_db_max": float(level.max()), "level_error_db_mean": float(level.mean()),
               "tone_gain_db": {f"{f:g}": g for f, g in tones.items()}}
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
