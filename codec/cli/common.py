"""What every ``codec`` subcommand shares: the one-line error, notes and warnings, model and
priors loading, input reading, output checks, progress bars and bitrate parsing.

No module below the command line imports from here (the command line is the top layer).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from codec.bitstream.priors import Priors
    from codec.model import Codec

EXIT_BAD_INPUT = 2
FORCE_HELP = "replace OUTPUT if it exists (without it, an existing file is never replaced)"


class CLIError(Exception):
    """A user error with a one-line message."""


def warn(msg: str) -> None:
    """Print ``codec: warning: msg`` on stderr."""
    print(f"codec: warning: {msg}", file=sys.stderr)


def note(msg: str) -> None:
    """Print ``codec: msg`` on stderr."""
    print(f"codec: {msg}", file=sys.stderr)


def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 frame', '2 frames' (``many``: the plural when it is not word + 's')."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def parse_bitrate(text: str) -> float:
    """'6k', '6kbps', '6 kb/s', '1.5k', '6000' -> bits per second (positive)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmM]?)\s*(b|bps|bit/s|b/s)?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"bad bitrate {text!r} (examples: 6k, 1.5kbps, 3000)")
    scale = {"": 1.0, "k": 1e3, "m": 1e6}[m.group(2).lower()]
    value = float(m.group(1)) * scale
    if value <= 0:
        raise argparse.ArgumentTypeError(f"bad bitrate {text!r}: must be above 0")
    return value


def int_in(lo: int, hi: int | None = None):
    """An argparse type: an integer in lo..hi (hi None: no upper bound)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{value} out of range {lo}..{hi if hi is not None else ''}".rstrip("."))
        return value

    return parse


def resolve_model(model: str | None) -> Path:
    """The directory of ``--model NAME|DIR`` (None: the shipped default model); CLIError if none."""
    from codec.pretrained import ModelNotFoundError, resolve

    try:
        return resolve(model)
    except ModelNotFoundError as e:
        raise CLIError(str(e) if model is None else f"--model {e}") from None


def load_model(model: str | None) -> tuple[Codec, Path]:
    """(model in eval mode, its directory) for ``--model NAME|DIR`` (None: the shipped default)."""
    path = resolve_model(model)
    from codec.model import Codec

    try:
        loaded = Codec.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - any failure to load is one line for the user
        raise CLIError(f"cannot load model from {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    return loaded.eval(), path


def load_priors(model_dir: Path, model: Codec, fingerprint: bytes | None = None) -> Priors:
    """The entropy priors stored with the model in ``model_dir``; CLIError if they belong to another
    model. ``fingerprint``: the model's, when already computed (it hashes every weight)."""
    from codec.bitstream.priors import Priors

    priors = Priors.load(model_dir)
    if priors.fingerprint != (fingerprint if fingerprint is not None else model.fingerprint()):
        raise CLIError(f"entropy priors in {model_dir} were computed for another model; run `codec priors` again")
    return priors


def choose_stages(model: Codec, stages: int | None, bitrate: float | None) -> int:
    """The stages to code with, from ``--stages`` or ``--bitrate`` (bit/s: the most stages whose
    nominal bitrate fits, with a note above the model's highest); all when neither is given.
    CLIError when out of the model's range."""
    from codec.files.coding import stages_for_bitrate

    if stages is not None:
        if stages > model.num_stages:
            raise CLIError(f"--stages {stages} out of range 1..{model.num_stages}")
        return stages
    if bitrate is None:
        return model.num_stages
    try:
        n_q = stages_for_bitrate(model, bitrate)
    except ValueError as e:
        raise CLIError(str(e)) from None
    top = model.bitrate(model.num_stages)
    if bitrate > top * (1 + 1e-9):
        note(f"--bitrate {bitrate / 1000:g}k is above this model's highest ({top / 1000:g} kbit/s);"
             f" using all {model.num_stages} stages")
    return n_q


def precision(args: argparse.Namespace) -> str:
    """The streamer precision (``Codec.streamer``) a command's ``--exact`` flag asks for:
    "exact" (float64 encode: streamed codes equal offline codes bit for bit), else "fp32"."""
    return "exact" if args.exact else "fp32"


def model_help(default: bool = True) -> str:
    """The help text of a ``--model NAME|DIR`` option."""
    from codec.pretrained import DEFAULT_MODEL

    text = "a shipped model's name (a subdirectory of codec/pretrained/) or a model directory"
    return text + (f" (default: the shipped default model, {DEFAULT_MODEL})" if default else "")


def default_model_rates() -> list[float]:
    """Nominal bitrates (bit/s) of the shipped default model with 1, 2, ... N stages, read from its
    config.json alone (help texts: no torch import); [] when it is not shipped or not readable."""
    import json
    import math

    from codec.pretrained import resolve

    try:
        config = json.loads((resolve(None) / "config.json").read_text())
        q = config["quantizer"]
        frame_rate = config["sample_rate"] / math.prod(config["strides"])
        stages = [s for s in q.get("stages") or [] for _ in range(int(s.get("repeat", 1)))]
        # a stages list fixes the number of stages (QuantizerConfig.resolved_stages)
        sizes = [s.get("codebook_size", q["codebook_size"]) for s in stages] or [q["codebook_size"]] * q["n_stages"]
    except Exception:  # noqa: BLE001 - help text only
        return []
    return [frame_rate * sum(math.log2(k) for k in sizes[:n]) for n in range(1, len(sizes) + 1)]


def read_input_bytes(path: str) -> bytes:
    """The whole of ``path`` ('-': stdin) as bytes; CLIError if missing or a directory."""
    if path == "-":
        return sys.stdin.buffer.read()
    p = Path(path)
    if not p.exists():
        raise CLIError(f"{path}: no such file")
    if p.is_dir():
        raise CLIError(f"{path}: is a directory")
    return p.read_bytes()


def check_output(path: str, inputs: list[str], force: bool) -> None:
    """Refuse, before any work, an output that cannot or must not be written.

    ``path`` '-' (stdout) and an existing device or FIFO (``/dev/null``: written into, never
    replaced) always pass. Otherwise CLIError when: it is one of ``inputs`` (the same file,
    also through a link; even with ``force``), a directory, in a folder that does not exist or
    that this user cannot write, or an existing file while ``force`` is False. (A read-only
    file system, which root's permissions do not show, fails when the output's temporary file
    is made, ``atomic_output``, and that error names ``path`` too.)
    """
    from codec.bitstream.atomic import is_special

    if path == "-" or is_special(path):
        return
    p = Path(path)
    for source in inputs:
        if source != "-" and p.exists() and Path(source).exists() and os.path.samefile(p, source):
            raise CLIError(f"{path}: the output is the input file; give another output name")
    if p.is_dir():
        raise CLIError(f"{path}: is a directory (give a file name)")
    folder = p.resolve().parent
    if not folder.is_dir():
        raise CLIError(f"{path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CLIError(f"{path}: cannot write in the folder {folder} (permission denied)")
    if p.exists() and not force:
        raise CLIError(f"{path} exists; pass --force (or -y) to replace it")


def add_force(p: argparse.ArgumentParser, more: str = "") -> None:
    """``-f`` / ``-y`` / ``--force`` on a subcommand that writes a file (``more``: appended to
    its help)."""
    p.add_argument("-f", "-y", "--force", action="store_true", help=FORCE_HELP + more)


class Progress:
    """A progress bar on stderr when it is a terminal (tqdm), nothing otherwise.

    ``counted(items, amount)`` yields ``items`` unchanged and advances the bar by
    ``amount(item)`` for each.
    """

    def __init__(self, total: float | None, desc: str, unit: str = "s") -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, unit=unit, disable=None, leave=False, file=sys.stderr,
                        bar_format=None if total else "{desc}: {n:.1f}{unit} [{elapsed}, {rate_fmt}]")

    def __enter__(self) -> Progress:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()

    def counted(self, items, amount):
        """``items`` unchanged, one bar update of ``amount(item)`` after each."""
        for item in items:
            yield item
            self.bar.update(amount(item))
