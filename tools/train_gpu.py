#!/usr/bin/env python3
"""Train a recipe on one GPU for a given number of minutes and bring the run back in pieces.

    python tools/train_gpu.py train RECIPE --minutes 10 [--batch-size 64] [--out-dir DIR]
                                    [--pieces DIR] [--resume] [--set KEY=VALUE ...] [--dry-run]
    python tools/train_gpu.py unpack PIECES_DIR OUT_DIR

``train`` runs ``codec train`` with the training audio held on the GPU and crops cut there
(``train.data.on_device``: no data-loading processes, no file reads per step), the given batch
size and a wall-clock cap (``train.max_minutes``; the recipe's ``total_steps`` still sets the
lr schedule, so set it to what the minutes buy); ``mixed_precision: auto`` picks bf16 on a GPU
that has it, unless the recipe pins it. Then it packs the run into one tar split into pieces
under 16 MiB with a manifest of SHA-256 sums (``--pack``):

- ``model`` (default): the exported model (with the weight average, where the run keeps one),
  log.csv and recipe.yaml. A later run continues from it with ``train.init_from`` (fresh
  optimizer moments). A lent machine returns at most 8 files of 16 MiB, 64 MiB in all: the
  shipped architecture's model with its training state is about 50 MB.
- ``checkpoint``: also the newest complete checkpoint (optimizer, schedule, RNG, average), so
  ``--resume`` continues exactly; three times the size, more than a lent machine returns for
  the shipped architecture (``pack`` refuses pieces past ``--max-pieces``).

``unpack`` checks the sums, rebuilds the folder and prints the command that continues it with
the settings the run trained with (the manifest keeps them).

What travels to a lent machine is limited too (64 MiB with the repository and its shipped
model): the training audio must be a subset that fits beside them (``train.data.train_manifest``
naming files carried with the run).

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
MAX_PIECES = 7  # a lent machine returns 8 files: the pieces and the manifest
MANIFEST = "MANIFEST.json"
PACKS = ("model", "checkpoint")


class PackError(Exception):
    """Pieces that are missing, damaged or not a packed run."""


def pack(run_dir: Path, pieces_dir: Path, what: str = "model", settings: list[str] | None = None,
         piece_bytes: int = PIECE_BYTES, max_pieces: int = MAX_PIECES) -> list[Path]:
    """The run folder's model/, log.csv and recipe.yaml (``what`` "checkpoint": also its newest
    complete checkpoint) -> one tar split into files of at most ``piece_bytes`` in
    ``pieces_dir`` (run.tar.000, ...; older pieces there are removed) and MANIFEST.json (each
    piece's size and SHA-256, the whole tar's, the checkpoint's step, the ``--set`` settings the
    run trained with). Returns the pieces. PackError when there is nothing to pack or it needs
    more than ``max_pieces`` pieces."""
    from codec.train.checkpoint import latest_checkpoint

    if what not in PACKS:
        raise PackError(f"--pack must be one of {', '.join(PACKS)}, got {what!r}")
    latest = latest_checkpoint(run_dir)
    if latest is None or not (run_dir / "model").is_dir():
        raise PackError(f"{run_dir}: no exported model and complete checkpoint to pack")
    members = [run_dir / "model", run_dir / "log.csv", run_dir / "recipe.yaml"]
    members += [latest[1]] if what == "checkpoint" else []
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in members:
            if path.exists():
                tar.add(path, arcname=str(path.relative_to(run_dir)))
    data = buffer.getbuffer()
    count = -(-len(data) // piece_bytes)
    if count > max_pieces:
        raise PackError(f"the {what} pack is {len(data) / 2**20:.1f} MiB: {count} pieces of "
                        f"{piece_bytes / 2**20:.1f} MiB, more than {max_pieces}; pack the model alone")
    pieces_dir.mkdir(parents=True, exist_ok=True)
    for old in pieces_dir.glob("run.tar.*"):
        old.unlink()
    pieces, entries = [], []
    for i in range(count):
        chunk = data[i * piece_bytes: (i + 1) * piece_bytes]
        path = pieces_dir / f"run.tar.{i:03d}"
        path.write_bytes(chunk)
        pieces.append(path)
        entries.append({"name": path.name, "bytes": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()})
    manifest = {"pieces": entries, "sha256": hashlib.sha256(data).hexdigest(), "what": what,
                "step": latest[0], "settings": list(settings or [])}
    (pieces_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return pieces


def unpack(pieces_dir: Path, out_dir: Path) -> dict:
    """Check the pieces against MANIFEST.json and extract the run into ``out_dir`` (which must
    not hold checkpoints or a model already). Returns the manifest. PackError when it or a
    piece is missing, malformed or damaged."""
    from codec.train.checkpoint import checkpoint_dir

    try:
        manifest = json.loads((pieces_dir / MANIFEST).read_text())
        entries = [(str(e["name"]), int(e["bytes"]), str(e["sha256"])) for e in manifest["pieces"]]
        whole, step = str(manifest["sha256"]), int(manifest["step"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PackError(f"{pieces_dir / MANIFEST}: missing or malformed ({exc})") from None
    data = bytearray()
    for name, size, digest in entries:
        if Path(name).name != name or not name.startswith("run.tar."):
            raise PackError(f"{MANIFEST} names a piece outside {pieces_dir}: {name!r}")
        path = pieces_dir / name
        if not path.is_file():
            raise PackError(f"{path}: missing")
        chunk = path.read_bytes()
        if len(chunk) != size or hashlib.sha256(chunk).hexdigest() != digest:
            raise PackError(f"{path}: damaged (size or SHA-256 differs from {MANIFEST})")
        data += chunk
    if hashlib.sha256(data).hexdigest() != whole:
        raise PackError(f"{pieces_dir}: the pieces do not make the packed run")
    if checkpoint_dir(out_dir).exists() or (out_dir / "model").exists():
        raise PackError(f"{out_dir} already holds a run; unpack into a new folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(bytes(data)), mode="r") as tar:
        tar.extractall(out_dir, filter="data")  # no absolute paths, links or ..: Python 3.10.12+ / 3.11.4+
    manifest["step"] = step
    return manifest


def continue_command(manifest: dict, out_dir: Path) -> str:
    """The command that continues an unpacked run with the settings it trained with: --resume
    for a checkpoint pack, init_from for a model pack (drop the wall-clock cap or set a new one)."""
    sets = [s for s in manifest.get("settings", []) if not s.startswith("max_minutes=")]
    if manifest.get("what") == "checkpoint":
        head = f"codec train RECIPE --out-dir {out_dir} --resume"
    else:
        head = f"codec train RECIPE --out-dir NEW_DIR --set init_from={out_dir / 'model'}"
    return " ".join([head, *(f"--set {s}" for s in sets)])


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
    t.add_argument("--max-pieces", type=int, default=MAX_PIECES, help=f"most pieces (default {MAX_PIECES})")
    t.add_argument("--pack", choices=PACKS, default="model",
                   help="model (default: the model, to continue with init_from) or checkpoint (exact --resume)")
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
            manifest = unpack(Path(args.pieces), Path(args.out_dir))
            print(f"train_gpu: unpacked the run at step {manifest['step']} into {args.out_dir}; continue it with\n"
                  f"  {continue_command(manifest, Path(args.out_dir))}", file=sys.stderr)
            return 0
        if args.minutes <= 0 or args.batch_size < 1 or args.piece_mib <= 0:
            raise ConfigError("--minutes, --batch-size and --piece-mib must be positive")
        import torch

        if args.dry_run:
            os.environ["ACCELERATE_USE_CPU"] = "1"
        elif not torch.cuda.is_available():
            raise ConfigError("no GPU here (torch.cuda.is_available() is False); --dry-run runs on the CPU")
        from codec.train.loop import train

        settings = train_overrides(args.minutes, args.batch_size, args.overrides)
        res = train(args.recipe, settings, out_dir=args.out_dir, resume=args.resume, quiet=True)
        pieces = pack(res.out_dir, Path(args.pieces) if args.pieces else res.out_dir / "pieces", args.pack,
                      settings, int(args.piece_mib * 2**20), args.max_pieces)
        print(f"train_gpu: {res.step} steps; {len(pieces)} pieces in {pieces[0].parent}", file=sys.stderr)
    except (ConfigError, DataError, PackError, OSError) as exc:
        print(f"train_gpu: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
