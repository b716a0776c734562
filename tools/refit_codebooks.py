#!/usr/bin/env python3
"""Refit chosen codebooks of a trained model on the residuals of real speech (encoder and
decoder unchanged): Lloyd iterations with cluster splitting, ``codec/quant/refit.py``.

    python tools/refit_codebooks.py speech16k --data ../shared/data/LibriSpeech/train-clean-100 \\
        --stages 9,10,11,12 --out exp/refit/speech16k

MODEL is a shipped name or a model directory; the refitted model is written to --out (which
must not exist yet) with the same training state as the input, so `codec train --resume`-style
fine-tuning, `codec eval` and `tools/ship_model.py` take it as they take any model. A table of
per-stage codes used and squared error, before and after, on the fitting data is printed.
Fit on training data, never on the data you evaluate on. Bad input ends with one
``refit_codebooks: error:`` line and exit code 2.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch
from tqdm import tqdm

from codec.audio_io import read_audio
from codec.files.estimate import audio_files
from codec.model import Codec
from codec.quant.refit import refit_codebooks


class RefitError(Exception):
    """Bad input: reported as one line."""


def parse_stages(text: str) -> list[int]:
    """'9,10,12' or '9-12' -> sorted 1-based stage numbers."""
    out: set[int] = set()
    try:
        for part in text.split(","):
            if "-" in part:
                a, b = part.split("-")
                out.update(range(int(a), int(b) + 1))
            elif part.strip():
                out.add(int(part))
    except ValueError:
        raise RefitError(f"--stages {text!r}: expected numbers like 9,10,11 or 9-12") from None
    if not out:
        raise RefitError("--stages: give at least one stage")
    return sorted(out)


def load(model: str) -> tuple[Codec, Path]:
    from codec.cli.common import CLIError, resolve_model

    try:
        path = resolve_model(model)
    except CLIError as e:
        raise RefitError(str(e)) from None
    try:
        return Codec.from_pretrained(path).eval(), path
    except Exception as e:  # noqa: BLE001 - any failure to load is one line for the user
        raise RefitError(f"cannot load model from {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def encoder_latents(model: Codec, files: list[Path]) -> torch.Tensor:
    """Encoder outputs of every file as rows: float32 [total frames, latent_dim]."""
    rows = []
    with torch.no_grad():
        for path in tqdm(files, desc="encoding", unit="file", disable=None, leave=False, file=sys.stderr):
            try:
                audio = read_audio(str(path), model.sample_rate)
            except Exception as e:  # noqa: BLE001 - unreadable audio is the user's input
                raise RefitError(f"{path}: cannot read audio ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
            wav = model._pad(torch.from_numpy(audio)[None, None])
            rows.append(model.quantizer._rows(model.encoder(wav)))
    return torch.cat(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a shipped model name or a model directory")
    p.add_argument("--data", required=True, help="folder of training audio (.wav .flac .ogg, recursive)")
    p.add_argument("--stages", required=True, help="1-based stages to refit, e.g. 9,10,11,12 or 9-12")
    p.add_argument("--out", required=True, type=Path, help="new model directory (must not exist)")
    p.add_argument("--iters", type=int, default=40, help="Lloyd iterations per stage (default 40)")
    p.add_argument("--min-fraction", type=float, default=0.1,
                   help="a code holding less than this fraction of the mean cluster size is split "
                        "off a large cluster (default 0.1)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        if args.out.exists():
            raise RefitError(f"--out {args.out}: exists already; choose a new directory")
        if args.iters < 1 or not 0 <= args.min_fraction < 1:
            raise RefitError("--iters must be >= 1 and --min-fraction in [0, 1)")
        stages = parse_stages(args.stages)
        model, path = load(args.model)
        if not Path(args.data).is_dir():
            raise RefitError(f"--data {args.data}: no such directory")
        files = audio_files(args.data)
        if not files:
            raise RefitError(f"--data {args.data}: no audio files (.wav .flac .ogg) found")
        latents = encoder_latents(model, files)
        try:
            report = refit_codebooks(model.quantizer, latents, stages, args.iters, args.min_fraction, args.seed)
        except ValueError as e:
            raise RefitError(str(e)) from None
        args.out.parent.mkdir(parents=True, exist_ok=True)
        # Written beside the target and renamed, so a failure never leaves half a model there.
        tmp = Path(tempfile.mkdtemp(dir=args.out.parent, prefix=f".{args.out.name}-"))
        try:
            model.save_pretrained(tmp, training_state=_has_training_state(model, path))
            Codec.from_pretrained(tmp)
            tmp.rename(args.out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    except RefitError as e:
        print(f"refit_codebooks: error: {e}", file=sys.stderr)
        return 2
    print(f"{len(files)} files, {latents.shape[0]} frames; stages refitted: {','.join(map(str, stages))}")
    print("| stage | codes used before | after | squared error before | after |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for s in report:
        print(f"| {s.stage} | {s.used_before} | {s.used_after} | {s.error_before:.5f} | {s.error_after:.5f} |")
    print(f"wrote {args.out}")
    return 0


def _has_training_state(model: Codec, model_dir: Path) -> bool:
    """Whether the input's weights file holds the training-only buffers (a lean shipped model
    does not), so the output keeps what the input had."""
    from safetensors import safe_open

    from codec.model import WEIGHTS_NAME

    with safe_open(str(Path(model_dir) / WEIGHTS_NAME), "pt") as f:
        keys = set(f.keys())
    return any(k in keys for k in model.training_state_keys())


if __name__ == "__main__":
    sys.exit(main())
