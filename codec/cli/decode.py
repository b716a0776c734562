"""``codec decode``: .rvq bitstream -> audio."""

from __future__ import annotations

import argparse

from codec.cli.common import (
    Progress,
    add_force,
    check_output,
    load_model,
    load_priors,
    model_help,
    read_input_bytes,
)

DESCRIPTION = """\
Decompress a .rvq file to audio: mono, at the model's sample rate (16 kHz for the default
model), 16-bit PCM unless --subtype says otherwise. The file must have been made by the same
model (its fingerprint is checked) and, if range-coded, with the same priors. The output is
written in full or not at all, and an existing file is replaced only with --force."""

EPILOG = """\
examples:
  codec decode speech.rvq speech.wav
  codec decode speech.rvq speech.flac --subtype PCM_24
  codec decode speech.rvq - | aplay                    # WAV on stdout
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``decode`` on the ``codec`` command line."""
    p = sub.add_parser("decode", help=".rvq bitstream -> audio (mono, the model's rate: 16 kHz by default)",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help=".rvq file or - for stdin")
    p.add_argument("output", help="audio file, its format from the extension (.wav, .flac, .ogg, ...; a name without"
                                  " one is WAV), or - for WAV on stdout")
    p.add_argument("--model", metavar="NAME|DIR", help=model_help() + "; it must be the model that made the file")
    p.add_argument("--subtype", help="sample format: PCM_16 (default), PCM_24, FLOAT (exact model output), ...")
    add_force(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Decode args.input into args.output (see the parser for the options)."""
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
        blocks = bar.counted(decode_blocks(model, parsed, priors), lambda b: len(b) / model.sample_rate)
        write_audio(args.output, blocks, model.sample_rate, args.subtype)
