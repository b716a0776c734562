"""The ``codec`` command line: encode, decode, info, priors, train, eval, demo.

``--model NAME|DIR`` takes a shipped model's name (a subdirectory of ``codec/pretrained/``)
or a model directory; without it, encode / decode / demo use the shipped default model.

Bad input of any kind ends with one ``codec: error: ...`` line on stderr and exit code 2;
outputs are written to a temporary file and renamed into place only on success.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from codec.model import Codec

EXIT_BAD_INPUT = 2


class CLIError(Exception):
    """A user error with a one-line message."""


def _warn(msg: str) -> None:
    print(f"codec: warning: {msg}", file=sys.stderr)


def _note(msg: str) -> None:
    print(f"codec: {msg}", file=sys.stderr)


def parse_bitrate(text: str) -> float:
    """'6k', '6kbps', '6 kb/s', '1.5k', '6000' -> bits per second."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmM]?)\s*(b|bps|bit/s|b/s)?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"bad bitrate {text!r} (examples: 6k, 1.5kbps, 3000)")
    scale = {"": 1.0, "k": 1e3, "m": 1e6}[m.group(2).lower()]
    return float(m.group(1)) * scale


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


def _shipped_names_to_dirs(models: list[str]) -> list[str]:
    """For ``codec eval``: shipped model names become their directories (existing paths stay)."""
    from codec.pretrained import is_name, list_models, resolve

    shipped = set(list_models())
    return [str(resolve(m)) if is_name(m) and m in shipped and not Path(m).is_dir() else m for m in models]


def _load_priors(model_dir: Path, model):
    from codec.bitstream.priors import Priors

    priors = Priors.load(model_dir)
    if priors.fingerprint != model.fingerprint():
        raise CLIError(f"entropy priors in {model_dir} were computed for another model; run `codec priors` again")
    return priors


def _read_input_bytes(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    p = Path(path)
    if not p.exists():
        raise CLIError(f"{path}: no such file")
    if p.is_dir():
        raise CLIError(f"{path}: is a directory")
    return p.read_bytes()


def _progress(total: float | None, desc: str, unit: str = "s"):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=None, leave=False, file=sys.stderr)


# ----- subcommands ------------------------------------------------------------------------------
def cmd_encode(args: argparse.Namespace) -> None:
    from codec.audio_io import AudioReader
    from codec.bitstream.atomic import atomic_output
    from codec.bitstream.coding import encode_stream, make_header, stages_for_bitrate
    from codec.bitstream.packing import packed_size

    model, model_dir = load_model(args.model)
    model.exact = args.exact
    if args.stages is not None:
        if not 1 <= args.stages <= model.num_stages:
            raise CLIError(f"--stages {args.stages} out of range 1..{model.num_stages}")
        n_q = args.stages
    elif args.bitrate is not None:
        try:
            n_q = stages_for_bitrate(model, args.bitrate)
        except ValueError as e:
            raise CLIError(str(e)) from None
    else:
        n_q = model.num_stages
    priors = _load_priors(model_dir, model) if args.entropy else None
    header = make_header(model, n_q, priors, args.block_frames)
    with AudioReader(args.input) as reader:
        if reader.channels > 1:
            _warn(f"{reader.name} has {reader.channels} channels; downmixed to mono")
        with atomic_output(args.output) as out, _progress(None, "encode") as bar:
            blocks = (bar.update(len(b) / model.sample_rate) or b for b in reader.blocks(model.sample_rate))
            result = encode_stream(model, blocks, out, header, priors)
    seconds = result.num_samples / model.sample_rate
    msg = (f"{result.num_frames} frames x {n_q} stages, {result.file_size} bytes,"
           f" {8 * result.file_size / seconds:.1f} bit/s (nominal {header.nominal_bitrate:.1f})")
    if priors is not None:
        fixed = packed_size(result.num_frames, header.bit_widths)
        payload = result.file_size - header.size - 16
        msg += f"; range coding saved {100 * (1 - payload / fixed):.1f}% of the fixed-width payload"
    if not args.quiet:
        _note(msg)


def cmd_decode(args: argparse.Namespace) -> None:
    from codec.audio_io import write_audio
    from codec.bitstream.coding import decode_blocks
    from codec.bitstream.container import parse
    from codec.bitstream.header import MODE_RANGE

    parsed = parse(_read_input_bytes(args.input))
    model, model_dir = load_model(args.model)
    priors = _load_priors(model_dir, model) if parsed.header.mode == MODE_RANGE else None
    with _progress(parsed.trailer.num_samples / model.sample_rate, "decode") as bar:
        blocks = (bar.update(len(b) / model.sample_rate) or b for b in decode_blocks(model, parsed, priors))
        write_audio(args.output, blocks, model.sample_rate, args.subtype)


def info_fields(parsed) -> dict:
    """Everything ``codec info`` prints, as plain values (bits are exact integers)."""
    h, t = parsed.header, parsed.trailer
    duration = t.num_samples / h.sample_rate
    header_bits, payload_bits, trailer_bits = 8 * h.size, 8 * parsed.payload_size, 8 * 16
    return {
        "version": h.version,
        "mode": {0: "fixed-width", 1: "range-coded"}[h.mode],
        "fingerprint": h.fingerprint.hex(),
        "sample_rate": h.sample_rate,
        "hop_length": h.hop_length,
        "frame_rate": h.frame_rate,
        "stages": h.num_stages,
        "codebook_sizes": list(h.codebook_sizes),
        "block_frames": h.block_frames,
        "priors_id": h.priors_id.hex() if h.mode else None,
        "num_samples": t.num_samples,
        "duration_s": duration,
        "num_frames": t.num_frames,
        "header_bits": header_bits,
        "payload_bits": payload_bits,
        "trailer_bits": trailer_bits,
        "file_bits": 8 * parsed.file_size,
        "nominal_bitrate": h.nominal_bitrate,
        "payload_bitrate": payload_bits / duration,
        "total_bitrate": 8 * parsed.file_size / duration,
        "crc32": f"{t.crc32:08x}",
    }


def cmd_info(args: argparse.Namespace) -> None:
    from codec.bitstream.container import parse

    info = info_fields(parse(_read_input_bytes(args.file)))
    if args.json:
        print(json.dumps(info, indent=2))
        return
    bits_per_frame = sum(math.log2(k) for k in info["codebook_sizes"])
    rows = [
        ("file", args.file),
        ("format", (f"version {info['version']}, {info['mode']}"
                    + (f", {info['block_frames']} frames per record, priors {info['priors_id']}"
                       if info["priors_id"] else ""))),
        ("model", info["fingerprint"]),
        ("sample rate", f"{info['sample_rate']} Hz, hop {info['hop_length']} samples, {info['frame_rate']:g} frames/s"),
        ("stages", f"{info['stages']}, codebook sizes {' '.join(map(str, info['codebook_sizes']))}"),
        ("duration", f"{info['duration_s']:.3f} s ({info['num_samples']} samples)"),
        ("frames", str(info["num_frames"])),
        ("size", (f"{info['file_bits']} bits = header {info['header_bits']} + payload {info['payload_bits']}"
                  f" + trailer {info['trailer_bits']} ({info['file_bits'] // 8} bytes)")),
        ("nominal bitrate", (f"{info['nominal_bitrate']:.2f} bit/s ({info['frame_rate']:g} frames/s x"
                             f" {bits_per_frame:.2f} bits)")),
        ("payload bitrate", f"{info['payload_bitrate']:.2f} bit/s ({info['payload_bits']} bits / duration)"),
        ("total bitrate", f"{info['total_bitrate']:.2f} bit/s ({info['file_bits']} bits / duration)"),
        ("crc32", info["crc32"]),
    ]
    for key, value in rows:
        print(f"{key + ':':<17}{value}")


def cmd_priors(args: argparse.Namespace) -> None:
    from codec.bitstream.estimate import audio_files, count_codes
    from codec.bitstream.priors import Priors

    model, model_dir = load_model(args.model)
    if not Path(args.data).is_dir():
        raise CLIError(f"--data {args.data}: no such directory")
    files = audio_files(args.data)[: args.max_files]
    if not files:
        raise CLIError(f"--data {args.data}: no audio files (.wav .flac .ogg) found")
    from tqdm import tqdm

    counts, frames = count_codes(model, tqdm(files, desc="priors", unit="file", disable=None, file=sys.stderr))
    priors = Priors.from_counts(counts, model.fingerprint(), frames)
    path = priors.save(model_dir)
    fixed = sum(math.ceil(math.log2(k)) for k in model.codebook_sizes)
    _note(f"wrote {path}: {frames} frames from {len(files)} files; prior entropy"
          f" {priors.entropy_bits(model.num_stages):.2f} bits/frame vs {fixed} fixed-width")


# ----- parser -----------------------------------------------------------------------------------
def model_help(default: bool = True) -> str:
    """The help text of a ``--model NAME|DIR`` option."""
    from codec.pretrained import DEFAULT_MODEL

    text = "a shipped model's name (a subdirectory of codec/pretrained/) or a model directory"
    return text + (f" (default: the shipped default model, {DEFAULT_MODEL})" if default else "")


def build_parser() -> argparse.ArgumentParser:
    """The ``codec`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="codec", description="Neural speech codec.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("encode", help="audio -> .rvq bitstream", description="Compress audio into a .rvq file.")
    p.add_argument("input", help="audio file (WAV, FLAC, OGG, ...; any rate, any channels) or - for stdin")
    p.add_argument("output", help=".rvq file or - for stdout")
    p.add_argument("--model", metavar="NAME|DIR", help=model_help())
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--bitrate", type=parse_bitrate, help="target nominal bitrate, e.g. 6k: most stages that fit")
    rate.add_argument("--stages", type=int, help="number of quantizer stages to use")
    p.add_argument("--entropy", action="store_true", help="range-code the codes with the model's priors")
    p.add_argument("--block-frames", type=int, default=256, help="frames per range-coded record (default 256)")
    p.add_argument("--exact", action="store_true",
                   help="encode in float64: the codes equal the model's offline encode bit for bit, whatever "
                        "the read block size (about 1.7x slower; default float32)")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary line")
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help=".rvq bitstream -> audio", description="Decompress a .rvq file to audio.")
    p.add_argument("input", help=".rvq file or - for stdin")
    p.add_argument("output", help="audio file (format from the extension, WAV for -) or - for stdout")
    p.add_argument("--model", metavar="NAME|DIR", help=model_help())
    p.add_argument("--subtype", help="sample format: PCM_16 (default), PCM_24, FLOAT (exact model output), ...")
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("info", help="show a .rvq file's header and exact bitrate")
    p.add_argument("file", help=".rvq file or - for stdin")
    p.add_argument("--json", action="store_true", help="print the fields as JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("priors", help="estimate entropy-coding priors for a model from audio data")
    p.add_argument("--model", metavar="NAME|DIR", required=True,
                   help=model_help(default=False) + "; priors.json is written into its directory")
    p.add_argument("--data", metavar="DIR", required=True, help="folder of audio files (searched recursively)")
    p.add_argument("--max-files", type=int, default=None, help="use at most this many files")
    p.set_defaults(func=cmd_priors)

    from codec.train.command import add_train_parser

    add_train_parser(sub)

    from codec.eval.command import add_eval_parser

    add_eval_parser(sub)

    from codec.demo import add_demo_parser

    add_demo_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``codec`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    from codec.audio_io import AudioError
    from codec.bitstream.errors import BitstreamError

    try:
        if args.command == "eval":
            args.models = _shipped_names_to_dirs(args.models)
        args.func(args)
    except (CLIError, AudioError, BitstreamError) as e:
        print(f"codec: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"codec: error: {where}{e.strerror or e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("codec: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if os.environ.get("CODEC_DEBUG"):
            raise
        print(f"codec: internal error: {type(e).__name__}: {e} (set CODEC_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1
    return 0
