#!/usr/bin/env python3
"""Train a recipe on one GPU for a given number of minutes and bring the run back in pieces.

    python tools/train_gpu.py train RECIPE --minutes 10 [--batch-size 64] [--out-dir DIR]
                                    [--pieces DIR] [--resume] [--set KEY=VALUE ...] [--dry-run]
    python tools/train_gpu.py unpack PIECES_DIR OUT_DIR

``train`` runs ``codec train`` with the training audio held on the GPU and crops cut there
(``train.data.on_device``: no data-loading processes, no file reads per step), bf16 autocast
(``mixed_precision: auto`` picks it on a GPU that has it), the given batch size and a wall-clock
cap (``train.max_minutes``; the recipe's ``total_steps`` still sets the lr schedule, so set it
to what the minutes buy). At the end the run folder (the newest complete checkpoint: weights,
optimizer, schedule, RNG, weight average; the exported model; log.csv; recipe.yaml) is packed
into one tar split into pieces under 16 MiB with a manifest of SHA-256 sums, so it fits the
per-file limit of a lent GPU machine's output folder. ``unpack`` checks the sums and rebuilds
the folder, which ``codec train RECIPE --out-dir OUT_DIR --resume`` continues on any machine.

``--dry-run`` does the same on the CPU (a CI test runs it on the tiny recipe and resumes the
unpacked run). Exit code 2 with one ``train_gpu: error:`` line on bad input.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

PIECE_BYTES = 15 * 2**20  # under the 16 MiB a lent machine returns per file
MANIFEST = "MANIFEST.json"


class PackError(Exception):
    """Pieces that are missing, damaged or not a packed run."""


def pack(run_dir: Path, pieces_dir: Path, piece_bytes: int = PIECE_BYTES) -> list[Path]:
    """The run folder's newest complete checkpoint, model/, log.csv and recipe.yaml -> one tar
    split into files of at most ``piece_bytes`` in ``pieces_dir`` (run.tar.000, ...) and
    MANIFEST.json (each piece's size and SHA-256, the whole tar's SHA-256). Returns the pieces."""
    from codec.train.checkpoint import checkpoint_dir, latest_checkpoint

    latest = latest_checkpoint(run_dir)
    if latest is None:
        raise PackError(f"{run_dir}: no complete checkpoint to pack")
    members = [latest[1], run_dir / "model", run_dir / "log.csv", run_dir / "recipe.yaml"]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in members:
            if path.exists():
                tar.add(path, arcname=str(path.relative_to(run_dir)))
    data = buffer.getvalue()
    pieces_dir.mkdir(parents=True, exist_ok=True)
    pieces, entries = [], []
    for i, start in enumerate(range(0, len(data), piece_bytes)):
        chunk = data[start: start + piece_bytes]
        path = pieces_dir / f"run.tar.{i:03d}"
        path.write_bytes(chunk)
        pieces.append(path)
        entries.append({"name": path.name, "bytes": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()})
    manifest = {"pieces": entries, "sha256": hashlib.sha256(data).hexdigest(),
                "checkpoint": str(latest[1].relative_to(run_dir)), "step": latest[0],
                "checkpoints": str(checkpoint_dir(run_dir).relative_to(run_dir))}
    (pieces_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return pieces


def unpack(pieces_dir: Path, out_dir: Path) -> int:
    """Check the pieces against MANIFEST.json and extract the run into ``out_dir`` (which must
    not hold checkpoints already). Returns the checkpoint's step. PackError when a piece is
    missing or damaged."""
    manifest_path = pieces_dir / MANIFEST
    if not manifest_path.is_file():
        raise PackError(f"{pieces_dir}: no {MANIFEST}")
    manifest = json.loads(manifest_path.read_text())
    data = bytearray()
    for entry in manifest["pieces"]:
        path = pieces_dir / entry["name"]
        if not path.is_file():
            raise PackError(f"{path}: missing")
        chunk = path.read_bytes()
        if len(chunk) != entry["bytes"] or hashlib.sha256(chunk).hexdigest() != entry["sha256"]:
            raise PackError(f"{path}: damaged (size or SHA-256 differs from {MANIFEST})")
        data += chunk
    if hashlib.sha256(data).hexdigest() != manifest["sha256"]:
        raise PackError(f"{pieces_dir}: the pieces do not make the packed run")
    if (out_dir / manifest["checkpoints"]).exists():
        raise PackError(f"{out_dir} already holds checkpoints; unpack into a new folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(bytes(data)), mode="r") as tar:
        tar.extractall(out_dir, filter="data")
    return int(manifest["step"])


def train_overrides(minutes: float, batch_size: int, extra: list[str]) -> list[str]:
    """The ``--set`` list of a GPU run: audio on the device, in-process data, the batch and the
    wall-clock cap, then the caller's own (which win)."""
    return ["data.on_device=true", "data.num_workers=0", f"batch_size={batch_size}", f"max_minutes={minutes}",
            *extra]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="train_gpu", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train on the GPU and pack the run into pieces")
    t.add_argument("recipe")
    t.add_argument("--minutes", type=float, required=True, help="wall-clock training budget")
    t.add_argument("--batch-size", type=int, default=64, help="crops per step (default 64)")
    t.add_argument("--out-dir", help="run folder (default: the recipe's train.out_dir)")
    t.add_argument("--pieces", help="where the pieces go (default: OUT_DIR/pieces; on a lent machine: $OUT)")
    t.add_argument("--piece-mib", type=float, default=PIECE_BYTES / 2**20, help="largest piece, MiB (default 15)")
    t.add_argument("--resume", action="store_true", help="continue the run folder's newest checkpoint")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    t.add_argument("--dry-run", action="store_true", help="run on the CPU (a check of the script)")
    u = sub.add_parser("unpack", help="rebuild a packed run folder from its pieces")
    u.add_argument("pieces")
    u.add_argument("out_dir")
    args = p.parse_args(argv)
    from codec.recipe import ConfigError
    from codec.train.data import DataError

    try:
        if args.command == "unpack":
            step = unpack(Path(args.pieces), Path(args.out_dir))
            print(f"train_gpu: unpacked the run at step {step} into {args.out_dir}; continue it with "
                  f"codec train RECIPE --out-dir {args.out_dir} --resume", file=sys.stderr)
            return 0
        if args.minutes <= 0 or args.batch_size < 1 or args.piece_mib <= 0:
            raise ConfigError("--minutes, --batch-size and --piece-mib must be positive")
        import torch

        if args.dry_run:
            os.environ["ACCELERATE_USE_CPU"] = "1"
        elif not torch.cuda.is_available():
            raise ConfigError("no GPU here (torch.cuda.is_available() is False); --dry-run runs on the CPU")
        from codec.train.loop import train

        res = train(args.recipe, train_overrides(args.minutes, args.batch_size, args.overrides),
                    out_dir=args.out_dir, resume=args.resume, quiet=True)
        pieces = pack(res.out_dir, Path(args.pieces) if args.pieces else res.out_dir / "pieces",
                      int(args.piece_mib * 2**20))
        print(f"train_gpu: {res.step} steps; {len(pieces)} pieces in {pieces[0].parent}", file=sys.stderr)
    except (ConfigError, DataError, PackError, OSError) as exc:
        print(f"train_gpu: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
