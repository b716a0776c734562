"""``codec decode``: .rvq bitstream -> audio."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from codec.cli import batch
from codec.cli.common import (
    CLIError,
    Progress,
    add_force,
    check_output,
    load_model,
    load_priors,
    model_help,
    read_input_bytes,
)

if TYPE_CHECKING:
    from codec.files.workers import DecodeWorker

DESCRIPTION = """\
Decompress a .rvq file to audio: mono, at the model's sample rate (16 kHz for the default
model), 16-bit PCM unless --subtype says otherwise. The file must have been made by the same
model (its fingerprint is checked) and, if range-coded, with the same priors. The output is
written in full or not at all, and an existing file is replaced only with --force.

Several inputs, a folder (every .rvq file under it) or a @LIST (a file naming one path a
line; an input starting with @ is always a list, so write ./@name.rvq for a file whose name
starts with @) make OUTPUT a folder that mirrors the inputs' tree, one audio file (--ext,
WAV by default) per .rvq file: with --batch 1 (the default) the audio equals the one-file
form's byte for byte; a larger batch may round a float differently and so move a 16-bit
sample by one step. A file that fails is one error line and the others go on (exit code 2
at the end). An output that exists is
never replaced there, not even with --force (which applies to one file only): it may be
the very audio the codes were made from (after `codec encode corpus/ corpus/`, corpus/x.wav
is x.rvq's output name). It is skipped, so a stopped run goes on where it stopped; to decode
again, delete the old outputs or decode into a new folder. Whether --batch or --jobs pays
on a machine: see docs/usage.md."""

BATCH = 1  # files per model call in the multi-file form (measured speeds: docs/usage.md, section 1)

EPILOG = """\
examples:
  codec decode speech.rvq speech.wav
  codec decode speech.rvq speech.flac --subtype PCM_24
  codec decode speech.rvq - | aplay                    # WAV on stdout
  codec decode codes/ decoded/ --jobs 4 --ext flac     # every .rvq under codes/ -> decoded/**/*.flac
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``decode`` on the ``codec`` command line."""
    p = sub.add_parser("decode", help=".rvq bitstream -> audio (mono, the model's rate: 16 kHz by default)",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", nargs="+", help=".rvq file or - for stdin; or several files, folders and @LISTs")
    p.add_argument("output", help="audio file, its format from the extension (.wav, .flac, .ogg, ...; a name without"
                                  " one is WAV), or - for WAV on stdout; with several inputs a folder (made if"
                                  " missing)")
    p.add_argument("--model", metavar="NAME|DIR", help=model_help() + "; it must be the model that made the file")
    p.add_argument("--subtype", help="sample format: PCM_16 (default), PCM_24, FLOAT (exact model output), ...")
    add_force(p, "; one file only: decoding several never replaces a file")
    many = batch.add_options(p, BATCH)
    many.add_argument("--ext", metavar="EXT", help="the audio files' extension, their format: wav (default), flac, ...")
    p.set_defaults(func=run)


def _run_many(args: argparse.Namespace) -> int:
    """The multi-file form (codec.cli.batch): check the options and the model, then run."""
    import soundfile as sf

    from codec.audio_io import AudioError, output_format
    from codec.files.estimate import AUDIO_SUFFIXES

    if args.force:
        raise CLIError("--force applies to one file only: decoding several never replaces an existing file (it"
                       " may be the audio the codes were made from); delete the old outputs or give a new folder")
    ext = "." + (args.ext or "wav").lstrip(".").lower()
    try:
        fmt = output_format("x" + ext)  # an unknown extension or sample format is an error before any work
    except AudioError as e:
        raise CLIError(f"--ext {args.ext}: {str(e).split(': ', 1)[1]}") from None
    if args.subtype is not None and not sf.check_format(fmt, args.subtype):
        raise CLIError(f"cannot write {args.subtype} samples in a {fmt} file")
    batch.check_output_folder(args, AUDIO_SUFFIXES, "decode")
    return batch.run_many(args, _worker(args, ext), "the output exists and is never replaced here: delete it to"
                                                   " decode it again")


def _worker(args: argparse.Namespace, ext: str) -> DecodeWorker:
    """The multi-file form's worker: the model loaded (once)."""
    from codec.files.workers import DecodeSettings, DecodeWorker

    model, model_dir = load_model(args.model)
    return DecodeWorker(DecodeSettings(str(model_dir), ext, args.subtype), model)


def run(args: argparse.Namespace) -> int | None:
    """Decode args.input into args.output (see the parser for the options); the exit code of
    the multi-file form."""
    if batch.is_many(args.input):
        return _run_many(args)
    args.input = batch.single_input(args)
    from codec.audio_io import output_format, write_audio
    from codec.bitstream.container import parse
    from codec.bitstream.header import MODE_RANGE
    from codec.files.coding import decode_blocks

    check_output(args.output, [args.input], args.force)
    output_format(args.output)  # an unknown extension is an error before any work
    parsed = parse(read_input_bytes(args.input))
    model, model_dir = load_model(args.model)
    priors = load_priors(model_dir, model) if parsed.header.mode == MODE_RANGE else None
    with Progress(parsed.trailer.num_samples / model.sample_rate, "decode") as bar:
        blocks = bar.counted(decode_blocks(model.streamer(), parsed, priors), lambda b: len(b) / model.sample_rate)
        write_audio(args.output, blocks, model.sample_rate, args.subtype)
