"""``codec priors``: estimate a model's entropy-coding priors from audio."""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
from pathlib import Path

from codec.cli.common import CLIError, Progress, int_in, load_model, model_help, note, plural, resolve_model

DESCRIPTION = """\
Estimate the entropy-coding priors of a model (how often each stage uses each code) from a
folder of audio, for `codec encode --entropy`. The priors are stored as priors.json in a model
directory. Files range-coded with one priors.json decode only with that one, so an existing
priors.json is replaced only with --force, and a shipped model (codec/pretrained/) is never
changed: --out DIR writes a copy of the model with the new priors instead."""

EPILOG = """\
examples:
  codec priors --model exp/ema/model --data ../shared/data/LibriSpeech/train-clean-100
  codec priors --model speech16k --data my-speech/ --out exp/speech16k-mine   # a copy, new priors
  codec encode in.wav out.rvq --model exp/speech16k-mine --entropy
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``priors`` on the ``codec`` command line."""
    p = sub.add_parser("priors", help="estimate entropy-coding priors for a model from audio data",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", metavar="NAME|DIR", required=True, help=model_help(default=False))
    p.add_argument("--data", metavar="DIR", required=True, help="folder of audio files (searched recursively)")
    p.add_argument("--out", metavar="DIR",
                   help="write a copy of the model with the new priors into DIR (a new or empty folder);"
                        " default: priors.json in the model's own directory (never for a shipped model)")
    p.add_argument("--max-files", type=int_in(1), metavar="N", help="use at most N files (default: all)")
    p.add_argument("-f", "-y", "--force", action="store_true",
                   help="replace an existing priors.json (files range-coded with it will no longer decode)")
    p.set_defaults(func=run)


def _destination(args: argparse.Namespace, model_dir: Path) -> Path | None:
    """The new model folder to create (None: write into ``model_dir``); CLIError when refused."""
    from codec.bitstream.priors import PRIORS_FILE
    from codec.pretrained import PRETRAINED_ROOT

    if args.out is not None:
        out = Path(args.out)
        if out.exists() and out.resolve() == model_dir.resolve():
            out = None
        elif out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise CLIError(f"--out {args.out}: exists and is not an empty folder")
        elif not out.resolve().parent.is_dir():
            raise CLIError(f"--out {args.out}: the folder {out.resolve().parent} does not exist")
        else:
            return out
    if model_dir.resolve().is_relative_to(Path(PRETRAINED_ROOT).resolve()):
        raise CLIError(f"--model {args.model} is a shipped model and is never changed; pass --out DIR to write a copy"
                       " of it with the new priors")
    if (model_dir / PRIORS_FILE).exists() and not args.force:
        raise CLIError(f"{model_dir / PRIORS_FILE} exists and files range-coded with it decode only with it; pass"
                       " --force to replace it, or --out DIR for a copy of the model")
    return None


def _write_copy(model_dir: Path, out: Path, priors) -> Path:
    """Copy the model (without its priors) and the new priors into ``out``, all or nothing."""
    from codec.bitstream.priors import PRIORS_FILE

    tmp = Path(tempfile.mkdtemp(prefix=".codec-", dir=out.resolve().parent))
    try:
        shutil.copytree(model_dir, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(PRIORS_FILE))
        priors.save(tmp)
        if out.exists():
            out.rmdir()  # checked empty above
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / PRIORS_FILE


def run(args: argparse.Namespace) -> None:
    """Count the model's codes over args.data and store the priors (see the parser)."""
    from codec.bitstream.priors import Priors
    from codec.files.estimate import audio_files, count_codes

    model_dir = resolve_model(args.model)
    out = _destination(args, model_dir)
    if not Path(args.data).is_dir():
        raise CLIError(f"--data {args.data}: no such directory")
    files = audio_files(args.data)[: args.max_files]
    if not files:
        raise CLIError(f"--data {args.data}: no audio files (.wav .flac .ogg) found")
    model, model_dir = load_model(args.model)
    with Progress(len(files), "priors", unit="file") as bar:
        counts, frames = count_codes(model.streamer(), bar.counted(files, lambda _: 1))
    priors = Priors.from_counts(counts, model.fingerprint(), frames)
    path = _write_copy(model_dir, out, priors) if out is not None else priors.save(model_dir)
    fixed = sum(math.ceil(math.log2(k)) for k in model.codebook_sizes)
    note(f"wrote {path}: {plural(frames, 'frame')} from {plural(len(files), 'file')}; prior entropy"
         f" {priors.entropy_bits(model.num_stages):.2f} bits/frame vs {fixed} fixed-width")
