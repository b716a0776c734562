#!/usr/bin/env python3
"""Export one training checkpoint as a model directory (config.json + model.safetensors).

    python tools/export_checkpoint.py exp/speech16k 12000 exp/speech16k_12000

RUN is a `codec train --out-dir` folder (its recipe.yaml and checkpoints/step_<STEP>/);
the model is written with its training state, as `codec train` exports its last step (the
average of the weights where the run keeps one, `train.weight_average`; `--live` writes the
optimizer's own weights instead), so
`codec eval`, `tools/refit_codebooks.py` and `tools/ship_model.py` take it. `--float16` writes
a starting point small enough to commit instead (no training state, weights in half precision,
loaded into float32: the study's neutral start, egs/librispeech/models/study_neutral). Bad input ends
with one ``export_checkpoint: error:`` line and exit code 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch
from safetensors.torch import load_file

from codec.model import Codec
from codec.train.average import WeightAverage
from codec.train.config import ConfigError, load_training_recipe


def saved_average(checkpoint: Path) -> dict | None:
    """The weight average a checkpoint folder holds (``WeightAverage.state_dict()``), or None
    when the run kept none."""
    for path in sorted(checkpoint.glob("custom_checkpoint_*.pkl")):
        state = torch.load(path, map_location="cpu", weights_only=False)  # our own checkpoint files
        if isinstance(state, dict) and "shadow" in state:
            return state
    return None


def export(run: Path, step: int, out: Path, live: bool = False, float16: bool = False) -> Path:
    """Write the model of ``run``'s checkpoint ``step`` to ``out`` (its weight average where
    the run keeps one, unless ``live``; without training state, in half precision, if
    ``float16``); returns ``out``."""
    checkpoint = run / "checkpoints" / f"step_{step:08d}"
    weights = checkpoint / "model.safetensors"
    if not weights.is_file():
        raise ConfigError(f"{weights}: no such checkpoint")
    if out.exists():
        raise ConfigError(f"{out}: exists already; choose a new directory")
    _, model_cfg, _ = load_training_recipe(run / "recipe.yaml")
    codec = Codec(model_cfg)
    # The checkpoint holds the TrainStep wrapper's state: keys start with "codec.".
    state = {k.removeprefix("codec."): v for k, v in load_file(str(weights)).items()}
    codec.load_state_dict(state, strict=True)
    saved = None if live else saved_average(checkpoint)
    save = {"training_state": False, "weights_dtype": torch.float16} if float16 else {}
    if saved is None:
        codec.save_pretrained(out, **save)
        return out
    average = WeightAverage(codec, decay=0.5)  # the decay only matters to updates; none are made here
    try:
        average.load_state_dict(saved)
    except KeyError as exc:
        raise ConfigError(f"{checkpoint}: its weight average names a parameter the model lacks: {exc}") from None
    with average.swapped_in(codec):  # as codec train exports its last step
        codec.save_pretrained(out, **save)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a codec train output folder")
    p.add_argument("step", type=int, help="the checkpoint's step")
    p.add_argument("out", type=Path, help="new model directory")
    p.add_argument("--live", action="store_true",
                   help="the optimizer's own weights, not the run's weight average")
    p.add_argument("--float16", action="store_true",
                   help="no training state, weights in half precision: a starting point to commit")
    args = p.parse_args(argv)
    try:
        export(args.run, args.step, args.out, live=args.live, float16=args.float16)
    except (ConfigError, OSError, RuntimeError) as exc:
        print(f"export_checkpoint: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"export_checkpoint: wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
