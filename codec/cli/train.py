"""The ``codec train`` subcommand: argument parsing only; the work is in codec/train/loop.py."""
from __future__ import annotations

import argparse

from codec.cli.common import CLIError

DESCRIPTION = """\
Train a codec from a recipe (YAML: a model section and a train section).

One process (CPU or one GPU):       codec train recipes/simvq.yaml
Many GPUs or nodes:                 accelerate launch -m codec train recipes/simvq.yaml

Writes OUT_DIR/log.csv (per-stage perplexity / utilisation / dead codes), OUT_DIR/tensorboard,
OUT_DIR/checkpoints/step_* (atomic, the last train.keep_last kept) and, at the end,
OUT_DIR/model (load it with `codec encode --model OUT_DIR/model`).
Data: LibriSpeech at train.data.root, else $LIBRISPEECH, else $CODEC_DATA/LibriSpeech, else
../shared/data/LibriSpeech beside the repository.
"""

EPILOG = """\
examples:
  codec train recipes/tiny.yaml --set total_steps=200 --set model.quantizer.kind=ema
  codec train recipes/ema.yaml --out-dir exp/ema --resume
  codec train recipes/base.yaml --set data.train_manifest=data/train-clean-100.tsv
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``train`` on the ``codec`` command line."""
    p = sub.add_parser("train", help="train a model from a recipe", description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", help="recipe YAML, e.g. recipes/simvq.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value (YAML syntax); keys are dotted paths, train. is implied "
                        "unless the key starts with model. (e.g. --set lr=1e-3 --set model.quantizer.kind=ema)")
    p.add_argument("--out-dir", help="output folder (default: train.out_dir, else exp/<recipe name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest complete checkpoint in the output folder (fresh start if none)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Train from args.recipe (see the parser)."""
    from codec.recipe import ConfigError
    from codec.train.data import DataError
    from codec.train.loop import train

    try:
        train(args.recipe, args.overrides, out_dir=args.out_dir, resume=args.resume, quiet=args.quiet)
    except (ConfigError, DataError) as exc:
        raise CLIError(str(exc).splitlines()[0]) from None
