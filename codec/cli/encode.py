"""``codec encode``: audio -> .rvq bitstream."""

from __future__ import annotations

import argparse
import itertools
from typing import TYPE_CHECKING

from codec.cli import batch
from codec.cli.common import (
    CLIError,
    Progress,
    add_force,
    check_output,
    choose_stages,
    default_model_rates,
    int_in,
    load_model,
    load_priors,
    model_help,
    note,
    parse_bitrate,
    plural,
    precision,
    warn,
)
from codec.pretrained import DEFAULT_MODEL

if TYPE_CHECKING:
    from codec.files.workers import EncodeWorker

FORMATS = ("rvq", "npy")
BATCH = 1  # files per model call in the multi-file form (measured speeds: docs/usage.md, section 1)

DESCRIPTION = """\
Compress audio into a .rvq file: any soundfile format, rate and channel count in (downmixed to
mono, resampled to the model's rate). The output is written in full or not at all, and an
existing file is replaced only with --force.

Several inputs, a folder (every audio file under it) or a @LIST (a file naming one path a
line; relative paths from the current folder; an input starting with @ is always a list, so
write ./@name.wav for a file whose name starts with @) make OUTPUT a folder that mirrors the
inputs' tree: one .rvq (or, with --format npy, one .npy of codes int16 [stages, frames] plus
manifest.jsonl: path, source, frames, stages, samples, sample_rate, model fingerprint) per
file. Outputs that exist are skipped unless --force, so a stopped run goes on where it
stopped; a file that fails is one error line and the others go on (exit code 2 at the end).
Each file is encoded whole there (Codec.encode; a file over 3000 frames, a minute with the
default model, streams as one file does): with --exact its .rvq equals the one-file form's
byte for byte; in float32 a code at a near-tie may rarely differ. Whether --batch or --jobs
pays on a machine: see docs/usage.md."""

EPILOG = """\
examples:
  codec encode speech.flac speech.rvq                  # all stages of the default model
  codec encode speech.wav speech.rvq --bitrate 3k      # the most stages within 3 kbit/s
  codec encode speech.wav speech.rvq --entropy         # range coding with the model's priors
  sox in.mp3 -t wav - | codec encode - - > out.rvq     # stdin to stdout
  codec encode corpus/ codes/ --jobs 4                  # every audio file under corpus/ -> codes/**/*.rvq
  codec encode @train.txt codes/ --format npy           # code arrays + codes/manifest.jsonl
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``encode`` on the ``codec`` command line."""
    rates = [r / 1000 for r in default_model_rates()]
    steps = {round(b - a, 6) for a, b in itertools.pairwise(rates)}
    step = f" in steps of {steps.pop():g}k" if len(steps) == 1 else ""
    default = (f" ({rates[0]:g}k to {rates[-1]:g}k{step} with the default model, {DEFAULT_MODEL})" if rates else "")
    stages = f" ({len(rates)} for the default model)" if rates else ""
    p = sub.add_parser("encode", help="audio -> .rvq bitstream", description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", nargs="+", help="audio file (WAV, FLAC, OGG, ...; any rate, any channels) or - for stdin;"
                                            " or several files, folders and @LISTs")
    p.add_argument("output", help=".rvq file or - for stdout; with several inputs a folder (made if missing)")
    p.add_argument("--model", metavar="NAME|DIR", help=model_help())
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--bitrate", type=parse_bitrate, metavar="RATE",
                      help="target nominal bitrate, e.g. 3k or 1500: the most stages whose bitrate fits"
                           + default + "; above the model's highest, all stages"
                           " (with a note); default: all stages")
    rate.add_argument("--stages", type=int_in(1), metavar="N",
                      help=f"number of quantizer stages to use, 1 to the model's count{stages}; default: all")
    p.add_argument("--entropy", action="store_true",
                   help="range-code the codes with the model's priors; a file that range coding would make"
                        " larger is written fixed-width instead (with a note)")
    p.add_argument("--block-frames", type=int_in(1, 65536), metavar="N",
                   help="with --entropy: frames per range-coded record, 1..65536 (default 256)")
    p.add_argument("--exact", action="store_true",
                   help="encode in float64: the codes equal the model's offline encode bit for bit, whatever "
                        "the read block size (about 1.7x slower; default float32)")
    add_force(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no summary line")
    many = batch.add_options(p, BATCH)
    many.add_argument("--format", choices=FORMATS,
                      help="rvq: bitstreams (default); npy: the codes as int16 [stages, frames] arrays, for"
                           " training other models, with manifest.jsonl in OUTPUT")
    p.set_defaults(func=run)


def _run_many(args: argparse.Namespace) -> int:
    """The multi-file form (codec.cli.batch): check the options and the model, then run."""
    if args.block_frames is not None and not args.entropy:
        raise CLIError("--block-frames applies only with --entropy")
    if args.entropy and args.format == "npy":
        raise CLIError("--entropy applies only to --format rvq")
    batch.check_output_folder(args, {".rvq", ".npy"}, "encode")
    return batch.run_many(args, _worker(args), "the output exists; --force redoes it")


def _worker(args: argparse.Namespace) -> EncodeWorker:
    """The multi-file form's worker: the model loaded (once), the stages chosen, the priors and
    the int16 range checked; the model's fingerprint computed once and handed on."""
    from codec.bitstream.container import DEFAULT_BLOCK_FRAMES
    from codec.files.outputs import NpyOutput, RvqOutput
    from codec.files.workers import EncodeSettings, EncodeWorker

    model, model_dir = load_model(args.model)
    n_q = choose_stages(model, args.stages, args.bitrate)
    fingerprint = model.fingerprint()
    if args.format == "npy":
        if max(model.codebook_sizes[:n_q]) > 1 << 15:
            raise CLIError("this model's codes do not fit int16 arrays (a codebook over 32768 entries); use --format rvq")
        output = NpyOutput()
    else:
        priors = load_priors(model_dir, model, fingerprint) if args.entropy else None
        output = RvqOutput(priors, args.block_frames or DEFAULT_BLOCK_FRAMES)
    return EncodeWorker(EncodeSettings(str(model_dir), n_q, output, precision(args)), model, fingerprint)


def run(args: argparse.Namespace) -> int | None:
    """Encode args.input into args.output (see the parser for the options); the exit code of
    the multi-file form."""
    if batch.is_many(args.input):
        return _run_many(args)
    args.input = batch.single_input(args)
    from codec.audio_io import AudioReader
    from codec.bitstream.atomic import atomic_output
    from codec.bitstream.container import DEFAULT_BLOCK_FRAMES
    from codec.bitstream.header import TRAILER_SIZE
    from codec.bitstream.packing import packed_size
    from codec.files.coding import encode_stream, fixed_width_if_smaller, make_header

    if args.block_frames is not None and not args.entropy:
        raise CLIError("--block-frames applies only with --entropy")
    check_output(args.output, [args.input], args.force)
    model, model_dir = load_model(args.model)
    n_q = choose_stages(model, args.stages, args.bitrate)
    priors = load_priors(model_dir, model) if args.entropy else None
    header = make_header(model, n_q, priors, args.block_frames or DEFAULT_BLOCK_FRAMES)
    with AudioReader(args.input) as reader:
        if reader.channels > 1:
            warn(f"{reader.name} has {reader.channels} channels; downmixed to mono")
        total = reader.duration_s
        with atomic_output(args.output) as out, Progress(total, "encode") as bar:
            blocks = bar.counted(reader.blocks(model.sample_rate), lambda b: len(b) / model.sample_rate)
            result = encode_stream(model.streamer(precision(args)), blocks, out, header, priors)
            fallback = fixed_width_if_smaller(out, result, priors) if priors is not None else None
    final = fallback or result
    seconds = final.num_samples / model.sample_rate
    msg = (f"{plural(final.num_frames, 'frame')} x {plural(n_q, 'stage')}, {final.file_size} bytes,"
           f" {8 * final.file_size / seconds:.1f} bit/s (nominal {header.nominal_bitrate:.1f})")
    if fallback is not None:
        msg += (f"; range coding would have made it larger ({result.file_size} bytes), so it is written"
                " fixed-width")
    elif priors is not None:
        fixed = packed_size(result.num_frames, header.bit_widths)
        payload = result.file_size - header.size - TRAILER_SIZE
        msg += f"; range coding saved {100 * (1 - payload / fixed):.1f}% of the fixed-width payload"
    if not args.quiet:
        note(msg)
