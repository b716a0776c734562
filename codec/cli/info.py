"""``codec info``: a .rvq file's header, sizes and exact bitrates."""

from __future__ import annotations

import argparse
import json
import math

from codec.cli.common import read_input_bytes

DESCRIPTION = """\
Show what a .rvq file holds: format and coding mode, the model fingerprint it needs, rate,
stages and codebook sizes, duration, and its exact size in bits (header + payload + trailer)
with the nominal, payload and total bitrates. A range-coded file also shows what the same
codes would take fixed-width. The CRC and structure are checked first (a damaged file is an
error); no model is loaded."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``info`` on the ``codec`` command line."""
    p = sub.add_parser("info", help="show a .rvq file's header and exact bitrate", description=DESCRIPTION)
    p.add_argument("file", help=".rvq file or - for stdin")
    p.add_argument("--json", action="store_true", help="print the fields as JSON")
    p.set_defaults(func=run)


def info_fields(parsed) -> dict:
    """Everything ``codec info`` prints for a ``codec.bitstream.container.Parsed`` file, as plain
    values (bits are exact integers; ``fixed_width_payload_bits``: the payload the same codes
    take packed fixed-width, which is the payload itself in a fixed-width file)."""
    from codec.bitstream.header import TRAILER_SIZE
    from codec.bitstream.packing import packed_size

    h, t = parsed.header, parsed.trailer
    duration = t.num_samples / h.sample_rate
    header_bits, payload_bits, trailer_bits = 8 * h.size, 8 * parsed.payload_size, 8 * TRAILER_SIZE
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
        "fixed_width_payload_bits": 8 * packed_size(t.num_frames, h.bit_widths),
        "file_bits": 8 * parsed.file_size,
        "nominal_bitrate": h.nominal_bitrate,
        "payload_bitrate": payload_bits / duration,
        "total_bitrate": 8 * parsed.file_size / duration,
        "crc32": f"{t.crc32:08x}",
    }


def run(args: argparse.Namespace) -> None:
    """Print the header fields and exact sizes of args.file (JSON with --json)."""
    from codec.bitstream.container import parse

    info = info_fields(parse(read_input_bytes(args.file)))
    if args.json:
        print(json.dumps(info, indent=2))
        return
    saving = 100 * (info["payload_bits"] / info["fixed_width_payload_bits"] - 1)
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
        *([("range coding", (f"payload {info['payload_bits']} bits vs {info['fixed_width_payload_bits']} packed"
                              f" fixed-width ({saving:+.1f}%)"))] if info["priors_id"] else []),
        ("crc32", info["crc32"]),
    ]
    for key, value in rows:
        print(f"{key + ':':<17}{value}")
