"""``codec export``: a model's streaming encoder and decoder steps as ONNX graphs."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from codec.cli.common import CLIError, int_in, load_model, model_help, note

DESCRIPTION = """\
Export a model's streams for other runtimes: OUT gets encoder_step.onnx (one 20 ms frame of
audio and the encoder's states in, that frame's codes and the next states out),
decoder_step.onnx (codes and states in, 20 ms of audio and the next states out) and
codec.json (the states' shapes, the rates, the stage table, the latency and how to start and
end a decode stream). Every state starts as zeros. onnxruntime runs them from any language;
codec.runtime.onnx_stream.OnnxStream shows how, in Python. OUT must be a new or empty
folder unless --force is given; it is written completely or not at all."""

EPILOG = """\
examples:
  codec export speech16k exp/speech16k-onnx
  codec export exp/ema/model exp/ema-onnx --stages 6      # a 3 kbps stream
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``export`` on the ``codec`` command line."""
    p = sub.add_parser("export", help="export a model's streaming encoder and decoder as ONNX",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help=model_help(default=False))
    p.add_argument("out", metavar="OUT", help="output folder (new or empty, or replaced with --force)")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="graph format (default: onnx)")
    p.add_argument("--stages", type=int_in(1), metavar="N",
                   help="quantizer stages the graphs code with (default: all; fewer = a lower bitrate)")
    p.add_argument("-f", "-y", "--force", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=run)


def _check_out(out: Path, force: bool, model_dir: Path | None = None) -> None:
    """CLIError unless ``out`` may be written: new, or an empty folder, or any folder with
    ``force``, but never the current folder or one above it, nor the model's folder or one
    above it (``model_dir``, once known)."""
    if out.exists() and not out.is_dir():
        raise CLIError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise CLIError(f"{out}: exists and is not empty (pass --force to replace it)")
    target = out.resolve()
    kept = [Path.cwd().resolve()] + ([model_dir.resolve()] if model_dir is not None else [])
    if out.is_dir() and any(target == k or target in k.parents for k in kept):
        raise CLIError(f"{out}: will not replace the current folder, a folder above it or the model's")
    if not target.parent.is_dir():
        raise CLIError(f"{out}: the folder {target.parent} does not exist")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def run(args: argparse.Namespace) -> None:
    """Export ``args.model`` into ``args.out``; CLIError on bad input."""
    out = Path(args.out)
    _check_out(out, args.force)
    try:
        model, model_dir = load_model(args.model)
    except CLIError as e:  # MODEL is positional here, not --model
        raise CLIError(str(e).removeprefix("--model ")) from None
    _check_out(out, args.force, model_dir)
    if args.stages is not None and args.stages > model.num_stages:
        raise CLIError(f"--stages {args.stages}: the model has {model.num_stages} stages")
    try:
        import onnx  # noqa: F401 - torch.onnx needs it to write the graphs
    except ImportError:
        raise CLIError("export needs the onnx package: pip install onnx onnxruntime") from None
    from codec.runtime.export import ExportError, export_onnx

    parent = out.resolve().parent
    tmp = Path(tempfile.mkdtemp(prefix=".codec-export-", dir=parent))
    old = None
    try:
        try:
            manifest = export_onnx(model, tmp, args.stages)
        except ExportError as e:
            raise CLIError(f"{args.model}: {e}") from None
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's folder is private; OUT gets the usual mode
        if out.exists():  # replaced by renames only: OUT is whole at every moment
            old = Path(tempfile.mkdtemp(prefix=".codec-export-old-", dir=parent))
            os.rename(out, old / "out")
        os.rename(tmp, out)
    except BaseException:
        if old is not None and (old / "out").exists() and not out.exists():
            os.rename(old / "out", out)  # put the user's folder back
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    note(f"wrote {out}: {manifest['encoder']['file']}, {manifest['decoder']['file']}, codec.json "
         f"({manifest['n_q']} stages, {manifest['bitrate'] / 1000:g} kbps, latency "
         f"{1000 * manifest['latency_samples'] / manifest['sample_rate']:g} ms)")
