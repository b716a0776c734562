"""``codec stream-decode``: live stream on stdin -> raw PCM on stdout, packet by packet."""

from __future__ import annotations

import argparse

from codec.cli.common import load_model, model_help, note, plural
from codec.cli.live_io import (
    add_pcm_option,
    add_quiet_option,
    read_chunks,
    refuse_terminals,
    seconds,
    write_now,
)

DESCRIPTION = """\
Decode a live codec stream (from `codec stream-encode`) on stdin to raw PCM on stdout: mono, at
the model's rate (16 kHz for the default model). Each packet is decoded and its samples written,
flushed, as soon as it arrives. The stream must come from the same model (its fingerprint is
checked). Damage (a CRC mismatch), lost packets (a gap in the sequence numbers) and a stream
cut off before its end packet end the run with one error line and exit code 2, after the audio
decoded up to that point has been written."""

EPILOG = """\
examples:
  # a live loop: microphone -> codec -> speakers
  sox -d -t raw -r 16000 -e signed -b 16 -c 1 - | codec stream-encode | codec stream-decode \\
      | play -t raw -r 16000 -e signed -b 16 -c 1 -
  codec stream-decode < speech.live > speech.raw
  codec stream-decode --pcm f32le < speech.live | sox -t raw -r 16000 -e float -b 32 -c 1 - out.wav
  tail -c 5000 speech.live | codec stream-decode --join > end.raw  # start at the next header
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``stream-decode`` on the ``codec`` command line."""
    p = sub.add_parser("stream-decode", help="live codec stream on stdin -> raw PCM on stdout, packet by packet",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", metavar="NAME|DIR", help=model_help() + "; it must be the encoder's model")
    add_pcm_option(p, "output sample format")
    p.add_argument("--join", action="store_true",
                   help="the input may start anywhere in a stream: skip to the next stream header (the encoder"
                        " repeats it every second by default) and decode from there; the first second or so"
                        " after joining is the decoder warming up")
    add_quiet_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Decode stdin's live stream to stdout (see the parser for the options)."""
    import torch

    from codec.cli.pcm import to_pcm
    from codec.files.live import LiveDecoder, warm_up

    refuse_terminals(read=True, write=True)
    model, _ = load_model(args.model)
    torch.set_num_threads(1)  # a frame's work is too small to share among threads (as stream-encode)
    streamer = model.streamer()
    warm_up(streamer, encoder=False)
    with LiveDecoder(streamer, join=args.join) as dec:
        if not args.quiet:
            note(f"stream-decode ready: writing {args.pcm} mono at {model.sample_rate} Hz")
        joined = False
        for data in read_chunks():
            write_now(to_pcm(dec.push(data), args.pcm))
            if args.join and not joined and dec.header is not None:
                joined = True
                if not args.quiet:
                    at = dec.reader.joined_at
                    note(f"joined the stream at frame {at} ({seconds(at * model.hop_length, model.sample_rate)}"
                         " into it)")
        write_now(to_pcm(dec.finish(), args.pcm))  # the look-ahead's samples, also of a cut-off stream
        dec.close()
    if not args.quiet:
        note(f"stream-decode: {plural(dec.samples_out, 'sample')} ({seconds(dec.samples_out, model.sample_rate)})")
