"""``codec demo``: a quick start that round-trips the shipped speech sample through a model.

The sample (``codec/samples/``, a LibriSpeech utterance) is encoded into a real ``.rvq``
file exactly as ``codec encode`` does, decoded as ``codec decode`` does, and the result is
reported: the real bitrate from the file size, the nominal bitrate, and the wide-band PESQ
of the decoded audio against the original.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from codec.cli.common import CLIError, int_in, load_model, load_priors, model_help

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "samples"
SAMPLE_ID = "3080-5032-0003"
SAMPLE = SAMPLE_DIR / f"{SAMPLE_ID}.flac"
SAMPLE_CREDIT = "LibriSpeech test-other, (c) 2014 Vassil Panayotov et al., CC BY 4.0"

DESCRIPTION = """\
Quick start: encode the shipped speech sample with a model into a real .rvq bitstream, decode
it, and report the bitrate and the quality.

The sample is LibriSpeech utterance {sample_id} (about 4 s, 16 kHz mono;
{credit}).

Printed: the model, the sample and its duration, the real bitrate (8 x file size / duration,
header and trailer included) and the nominal one (frame rate x bits per frame), the wide-band
PESQ (ITU-T P.862.2, about 1 to 4.64, higher is better) of the decoded audio against the
original, and the files written: {sample_id}.rvq and {sample_id}.wav (16-bit WAV) in --out.

Without --model the shipped default model is used; --model takes another shipped model's name
or a model directory (from `codec train` or Codec.save_pretrained).
"""

EPILOG = """\
examples:
  codec demo                                  # the default model, all stages, a fresh temporary folder
  codec demo --stages 4 --out codec-demo      # first 4 stages only; files in ./codec-demo
  codec demo --model exp/simvq/model          # a model you trained
"""


@dataclass(frozen=True)
class DemoResult:
    """What ``run_demo`` measured and wrote."""

    model: str  # the shipped name, or the directory as given
    model_dir: Path
    sample: Path
    duration_s: float
    num_stages: int
    total_stages: int
    file_size: int  # bytes of the .rvq file
    bitrate: float  # real: 8 * file_size / duration_s, bit/s
    nominal_bitrate: float  # bit/s
    pesq: float  # wide-band PESQ of the decoded audio vs the original (NaN if PESQ finds no speech)
    bitstream: Path
    decoded: Path
    entropy: bool  # the file is range-coded (asked for, and smaller than fixed-width)


def _outputs(out: Path) -> tuple[Path, Path]:
    return out / f"{SAMPLE_ID}.rvq", out / f"{SAMPLE_ID}.wav"


def _prepare_out(out: str | None, force: bool) -> tuple[Path, bool]:
    """The output folder and whether it was created here; refuses to replace demo files unless ``force``."""
    if out is None:
        return Path(tempfile.mkdtemp(prefix="codec-demo-")), True
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise CLIError(f"--out {out}: exists and is not a directory")
    existing = [p for p in _outputs(path) if p.exists()]
    if existing and not force:
        raise CLIError(f"--out {out}: {existing[0].name} exists already; pass --force to replace it, or another --out")
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    return path, created


def run_demo(model: str | None = None, stages: int | None = None, out: str | None = None,
             entropy: bool = False, force: bool = False) -> DemoResult:
    """Encode the shipped sample with ``model`` (a shipped name or a directory; None: the
    default model) using its first ``stages`` stages (None: all) into ``out`` (None: a fresh
    temporary folder), decode it, and measure. Raises ``CLIError`` on bad input;
    both output files are written atomically, so nothing half-written is left behind."""
    from codec.audio_io import AudioReader, read_audio, write_audio
    from codec.bitstream.atomic import atomic_output
    from codec.bitstream.container import parse
    from codec.eval.metrics import METRIC_RATE, pesq_wb
    from codec.files.coding import decode_blocks, encode_stream, fixed_width_if_smaller, make_header
    from codec.pretrained import shipped_name

    if not SAMPLE.is_file():
        raise CLIError(f"the demo sample {SAMPLE} is missing; reinstall the package")
    loaded, model_dir = load_model(model)
    if stages is not None and not 1 <= stages <= loaded.num_stages:
        raise CLIError(f"--stages {stages} out of range 1..{loaded.num_stages}")
    n_q = loaded.num_stages if stages is None else stages
    priors = load_priors(model_dir, loaded) if entropy else None
    header = make_header(loaded, n_q, priors)

    folder, created = _prepare_out(out, force)
    bitstream, decoded = _outputs(folder)
    streamer = loaded.streamer()
    try:
        with AudioReader(str(SAMPLE)) as reader, atomic_output(str(bitstream)) as f:
            result = encode_stream(streamer, reader.blocks(loaded.sample_rate), f, header, priors)
            if priors is not None:  # as `codec encode --entropy`: fixed-width where range coding loses
                result = fixed_width_if_smaller(f, result, priors) or result
        parsed = parse(bitstream.read_bytes())
        write_audio(str(decoded), decode_blocks(streamer, parsed, priors), loaded.sample_rate)
    except BaseException:
        if created and not any(folder.iterdir()):
            folder.rmdir()
        raise

    duration = result.num_samples / loaded.sample_rate
    reference = read_audio(str(SAMPLE), METRIC_RATE)
    quality = pesq_wb(reference, read_audio(str(decoded), METRIC_RATE), METRIC_RATE)
    name = shipped_name(model_dir) or (str(model) if model is not None else str(model_dir))
    return DemoResult(
        model=name, model_dir=model_dir, sample=SAMPLE, duration_s=duration, num_stages=n_q,
        total_stages=loaded.num_stages, file_size=result.file_size, bitrate=8 * result.file_size / duration,
        nominal_bitrate=header.nominal_bitrate, pesq=quality, bitstream=bitstream, decoded=decoded,
        entropy=parsed.header.mode != 0,
    )


def report(r: DemoResult) -> str:
    """The lines ``codec demo`` prints."""
    where = f" ({r.model_dir})" if r.model != str(r.model_dir) else ""
    coding = "range-coded" if r.entropy else "fixed-width"
    pesq = "n/a (PESQ found no speech)" if math.isnan(r.pesq) else f"{r.pesq:.2f}"
    rows = [
        ("model", f"{r.model}{where}"),
        ("sample", f"{r.sample.name} ({SAMPLE_CREDIT})"),
        ("duration", f"{r.duration_s:.3f} s"),
        ("stages", f"{r.num_stages} of {r.total_stages}, {coding}"),
        ("bitrate", (f"{r.bitrate / 1000:.3f} kbit/s real (8 x {r.file_size} bytes / {r.duration_s:.3f} s),"
                     f" {r.nominal_bitrate / 1000:.3f} kbit/s nominal")),
        ("PESQ (wide-band)", f"{pesq} (decoded vs original)"),
        ("bitstream", str(r.bitstream)),
        ("decoded", str(r.decoded)),
    ]
    return "\n".join(f"{key + ':':<18}{value}" for key, value in rows)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``demo`` on the ``codec`` command line."""
    p = sub.add_parser("demo", help="quick start: round-trip the shipped speech sample, print bitrate and PESQ",
                       description=DESCRIPTION.format(sample_id=SAMPLE_ID, credit=SAMPLE_CREDIT), epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", metavar="NAME|DIR", help=model_help())
    p.add_argument("--stages", type=int_in(1), metavar="N", help="use the first N quantizer stages (default: all)")
    p.add_argument("--entropy", action="store_true",
                   help="range-code the codes with the model's priors.json (see `codec priors`)")
    p.add_argument("--out", metavar="DIR",
                   help="folder for the .rvq and .wav files (created if needed; default: a fresh temporary folder)")
    p.add_argument("-f", "-y", "--force", action="store_true", help="replace the demo's files if --out already holds them")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Run the demo and print its report on stdout."""
    result = run_demo(args.model, args.stages, args.out, args.entropy, args.force)
    print(report(result), flush=True)
