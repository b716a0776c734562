"""``codec stream-encode``: raw PCM on stdin -> live stream on stdout, frame by frame."""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING

from codec.cli.common import (
    CLIError,
    choose_stages,
    int_in,
    load_model,
    model_help,
    note,
    parse_bitrate,
    plural,
    precision,
    warn,
)
from codec.cli.live_io import (
    add_pcm_option,
    add_quiet_option,
    read_chunks,
    refuse_terminals,
    seconds,
    write_now,
)

if TYPE_CHECKING:
    from codec.files.live import LiveEncoder

DESCRIPTION = """\
Encode a live audio stream: raw PCM on stdin (mono, at the model's rate: 16 kHz for the default
model), a live codec stream on stdout. Each frame (20 ms with the default model) is coded and
written, flushed, as soon as its samples are in; `codec stream-decode` plays it back with the
model's latency (35 ms for the default model) plus processing. The stream is a header (model
fingerprint, stages), packets of --packet-frames frames (one by default), each with a sequence
number and a CRC, and an end packet; the header is repeated every --header-every seconds so a
decoder can join late (stream-decode --join). Layout: codec/bitstream/FORMAT.md.
End of input ends the stream; so do Ctrl-C, SIGTERM and SIGHUP (the end packet is still sent,
once the block being coded is out; a second signal meanwhile stops at once, without it)."""

EPILOG = """\
examples:
  # a live loop: microphone -> codec -> speakers
  sox -d -t raw -r 16000 -e signed -b 16 -c 1 - | codec stream-encode | codec stream-decode \\
      | play -t raw -r 16000 -e signed -b 16 -c 1 -
  codec stream-encode --bitrate 3k < speech.raw > speech.live     # the most stages within 3 kbit/s
  sox in.wav -t raw -r 16000 -e float -b 32 -c 1 - | codec stream-encode --pcm f32le > out.live
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``stream-encode`` on the ``codec`` command line."""
    p = sub.add_parser("stream-encode", help="raw PCM on stdin -> live codec stream on stdout, frame by frame",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", metavar="NAME|DIR", help=model_help())
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--bitrate", type=parse_bitrate, metavar="RATE",
                      help="target nominal bitrate of the codes, e.g. 3k: the most stages whose bitrate fits"
                           " (packets add a few bytes each, see the 'ready' line); default: all stages")
    rate.add_argument("--stages", type=int_in(1), metavar="N",
                      help="number of quantizer stages to use, 1 to the model's count; default: all")
    add_pcm_option(p, "input sample format")
    p.add_argument("--packet-frames", type=int_in(1, 255), default=1, metavar="N",
                   help="frames per packet, 1..255 (default 1: each frame is sent as soon as it is coded; N"
                        " saves per-packet bytes at N-1 frames of extra latency)")
    p.add_argument("--header-every", type=float, default=1.0, metavar="SECONDS",
                   help="repeat the stream header this often, so a decoder can join late (default 1; 0: only"
                        " at the start)")
    p.add_argument("--exact", action="store_true",
                   help="encode in float64: the codes equal the model's offline encode bit for bit (slower)")
    add_quiet_option(p)
    p.set_defaults(func=run)


def header_interval(seconds_: float, frame_rate: float, packet_frames: int) -> int:
    """``--header-every SECONDS`` -> frames packets between repeated headers (0: never)."""
    if not math.isfinite(seconds_) or seconds_ < 0:
        raise CLIError(f"--header-every {seconds_:g} must be 0 or more seconds")
    if seconds_ == 0:
        return 0
    return max(1, round(seconds_ * frame_rate / packet_frames))


def run(args: argparse.Namespace) -> None:
    """Encode stdin to stdout as a live stream (see the parser for the options)."""
    import torch

    from codec.cli.pcm import PcmReader
    from codec.cli.signals import StopBetweenChunks, Terminated
    from codec.files.live import LiveEncoder, warm_up

    refuse_terminals(read=True, write=True)
    model, _ = load_model(args.model)
    streamer = model.streamer(precision(args))
    n_q = choose_stages(model, args.stages, args.bitrate)
    every = header_interval(args.header_every, model.frame_rate, args.packet_frames)
    # One frame's work is far too small to share among threads; idle pool threads would only
    # compete with the audio tools in the pipeline for the cores.
    torch.set_num_threads(1)
    warm_up(streamer, decoder=False)
    pcm = PcmReader(args.pcm)
    with LiveEncoder(streamer, n_q, args.packet_frames, every) as enc:
        write_now(enc.start())  # the decoder checks the model with it before any audio comes
        if not args.quiet:
            h = enc.header
            note(f"stream-encode ready: {plural(n_q, 'stage')}, {h.nominal_bitrate / 1000:.2f} kbit/s of codes"
                 f" ({h.stream_bitrate(every) / 1000:.2f} kbit/s as packets); reading {args.pcm} mono at"
                 f" {model.sample_rate} Hz; latency {1000 * model.latency / model.sample_rate:g} ms")
        # A signal while the encoder waits for input stops it at once; one while a block is being
        # coded and sent waits until its packets are out (the model's stream cut part-way could
        # not end). Either way the end packet follows, unless a second signal cut a block.
        with StopBetweenChunks() as stop:
            try:
                for data in read_chunks():
                    with stop.chunk():
                        write_now(enc.push(pcm.feed(data)))
                with stop.chunk():
                    if pcm.leftover:
                        warn(f"input ended inside a sample: its {plural(pcm.leftover, 'byte')} dropped")
                    write_now(enc.finish())
            except (KeyboardInterrupt, Terminated):  # Ctrl-C, SIGTERM, SIGHUP; bad input is no signal
                if not stop.cut:
                    _end_quietly(enc)
                raise
    if not args.quiet:
        note(f"stream-encode: {plural(enc.writer.num_frames, 'frame')} ({seconds(enc.num_samples, model.sample_rate)})"
             f" x {plural(n_q, 'stage')}")


def _end_quietly(enc: LiveEncoder) -> None:
    """Stopped by a signal: close the stream with its end packet (unless already sent) so the
    decoder ends cleanly too; nothing more to do if stdout is gone."""
    if enc.writer.ended:
        return
    try:
        write_now(enc.finish())
    except OSError:  # a closed pipe (BrokenPipeError) or a gone stdout: no one to tell
        pass
