#!/usr/bin/env python3
"""``codec train`` with test hooks installed as callbacks (codec.train.loop.Callback), for the
tests that need a real process: SIGKILL during or after a checkpoint (crash safety) and every
rank's final state (distributed runs under ``accelerate launch``). The package itself carries
no test hooks.

    python tests/train_with_hooks.py RECIPE [--set K=V ...] [--out-dir DIR] [--resume] [-q]
        [--crash during_ckpt:STEP | after_ckpt:STEP] [--dump-state DIR]
    accelerate launch ... tests/train_with_hooks.py RECIPE --dump-state DIR ...
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from codec.model import Codec
from codec.recipe import ConfigError
from codec.train.data import DataError
from codec.train.loop import Callback, train


class CrashAt(Callback):
    """SIGKILL the process while the checkpoint of one step is half-written ("during_ckpt:STEP":
    written, not yet renamed into place) or right after it is complete ("after_ckpt:STEP")."""

    def __init__(self, spec: str) -> None:
        kind, _, step = spec.partition(":")
        if kind not in ("during_ckpt", "after_ckpt") or not step.isdigit():
            raise SystemExit(f"bad --crash {spec!r}: during_ckpt:STEP or after_ckpt:STEP")
        self.kind, self.step = kind, int(step)

    def during_checkpoint(self, step: int) -> None:
        if self.kind == "during_ckpt" and step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)

    def after_checkpoint(self, step: int) -> None:
        if self.kind == "after_ckpt" and step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class DumpState(Callback):
    """Every rank writes its final state_dict (rank<r>.safetensors) and the ids of the
    utterances it trained on (rank<r>.json) into ``directory``."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def at_end(self, codec: Codec, rank: int, items: list[str]) -> None:
        from safetensors.torch import save_file

        self.directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous().clone() for k, v in codec.state_dict().items()}
        save_file(state, str(self.directory / f"rank{rank}.safetensors"))
        (self.directory / f"rank{rank}.json").write_text(json.dumps({"items": items}) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recipe")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--out-dir")
    p.add_argument("--resume", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--crash", help="during_ckpt:STEP or after_ckpt:STEP")
    p.add_argument("--dump-state", metavar="DIR")
    args = p.parse_args(argv)
    callbacks: list[Callback] = []
    if args.crash:
        callbacks.append(CrashAt(args.crash))
    if args.dump_state:
        callbacks.append(DumpState(args.dump_state))
    try:
        train(args.recipe, args.overrides, out_dir=args.out_dir, resume=args.resume, quiet=args.quiet,
              callbacks=callbacks)
    except (ConfigError, DataError) as exc:
        print(f"codec: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
