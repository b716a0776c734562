#!/usr/bin/env python3
"""Copy a trained model into the package as a shipped model, without its training-only state.

    python tools/ship_model.py exp/speech16k/model speech16k [--float16]

writes ``codec/pretrained/<name>/config.json`` and ``model.safetensors`` (EMA statistics,
usage windows and restart counters left out: ``Codec.save_pretrained(training_state=False)``),
keeping any MODEL_CARD.md already there and removing a priors.json that belonged to the
previous weights (make new ones with ``codec priors --model <name> --data DIR --out COPY``,
which writes a copy of the shipped model with its priors, and copy ``COPY/priors.json`` in:
``codec priors`` never writes into a shipped model itself). ``--float16`` stores the weights in
half precision: half the file (and of what each ship adds to the repository's history); the
model loads them into float32, so measure its quality as shipped before committing it.
Bad input ends with one ``ship_model: error:`` line and exit code 2.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from codec import pretrained
from codec.model import Codec
from codec.recipe import ConfigError


def ship(source: Path, name: str, weights_dtype: torch.dtype = torch.float32) -> Path:
    """Write ``source``'s model as the shipped model ``name``, its floating-point tensors stored
    in ``weights_dtype``; returns its directory."""
    if not pretrained.is_name(name):
        raise ConfigError(f"{name!r} is not a valid model name (letters, digits, '.', '_', '-')")
    model = Codec.from_pretrained(source)
    root = Path(pretrained.PRETRAINED_ROOT)  # read at call time (tests point it elsewhere)
    target = root / name
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        model.save_pretrained(tmp, training_state=False, weights_dtype=weights_dtype)
        Codec.from_pretrained(tmp)  # loads back before anything is replaced
        target.mkdir(exist_ok=True)
        for f in Path(tmp).iterdir():
            shutil.move(str(f), target / f.name)
    (target / "priors.json").unlink(missing_ok=True)
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=Path, help="a model directory (Codec.save_pretrained, e.g. exp/NAME/model)")
    p.add_argument("name", help="the shipped model's name: codec/pretrained/NAME")
    p.add_argument("--float16", action="store_true",
                   help="store the weights in half precision (half the size; loaded into float32)")
    args = p.parse_args(argv)
    try:
        target = ship(args.source, args.name, torch.float16 if args.float16 else torch.float32)
    except (ConfigError, OSError) as exc:
        print(f"ship_model: error: {exc}", file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in target.iterdir()) / 2**20
    print(f"ship_model: {target} ({size:.1f} MiB); now run: codec priors --model {args.name} --data DIR "
          f"--out COPY, then copy COPY/priors.json into {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
