"""The ``codec eval`` subcommand: argument parsing only; the work is in codec/eval/evaluate.py."""
from __future__ import annotations

import argparse

from codec.cli.common import CLIError, note, warn

DESCRIPTION = """\
Rate-quality evaluation of models and of an Opus baseline on a folder of speech.

For each MODEL (a directory written by Codec.save_pretrained; named by its directory name)
and each number of stages, every utterance is encoded into a real .rvq file, read back and
decoded; the bitrate comes from the file size over the duration (with and without header and
trailer). Scores against the original at 16 kHz: wide-band PESQ, STOI, log-mel L1 distance,
SI-SDR; per-stage perplexity and utilisation over the whole set. Opus runs through opusenc /
opusdec (Debian's opus-tools), its bitrate also from the real file size.

Writes OUT/results.csv (one row per utterance, system, setting), OUT/summary.md,
OUT/rate_quality.png, OUT/codebooks.png and OUT/codebooks.csv. Results are deterministic and do
not depend on --jobs.

OUT/report.html puts it on one page to read and to listen to: both plots, the summary table
with its 95% intervals, and players for a few utterances (--listen, one per speaker): the
original, each model at each stage count and Opus at each bitrate, the first 5 s of exactly
the audio that was scored, as FLAC files in OUT/listen/. The page loads nothing from the
web and links its clips relatively: copy or serve the folder as it is.
"""

EPILOG = """\
examples:
  codec eval exp/ema/model exp/simvq/model --out exp/eval
  codec eval exp/ema/model --data test-clean/ --stages 1,4,12 --opus none --limit 20 --out exp/eval_ema
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``eval`` on the ``codec`` command line."""
    p = sub.add_parser("eval", help="rate-quality evaluation (PESQ, STOI, ... vs real bitrate) with an Opus baseline",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="model directories (config.json + model.safetensors) or shipped model names")
    p.add_argument("--data", metavar="DIR",
                   help="folder of audio files (.wav .flac .ogg, searched recursively; default: "
                        "$CODEC_DATA/LibriSpeech/test-other, else ../shared/data/LibriSpeech/test-other "
                        "beside the repository)")
    p.add_argument("--stages", default="1,2,4,8,12",
                   help="stage counts to evaluate, comma-separated (default 1,2,4,8,12; counts above a model's "
                        "number of stages are skipped for it)")
    p.add_argument("--opus", default="6,8,12,16",
                   help="Opus bitrates in kbit/s, comma-separated, or 'none' (default 6,8,12,16)")
    p.add_argument("--entropy", action="store_true",
                   help="also write range-coded files (needs the model's priors.json, see `codec priors`) "
                        "and report them as system MODEL+entropy")
    p.add_argument("--int8", action="store_true",
                   help="also evaluate each model with int8 weights (the streamer's int8 precision, the fast streaming one) "
                        "as system MODEL+int8")
    p.add_argument("--limit", type=int, metavar="N", help="use only N files, taken in turn from each top-level folder (speaker) so all are covered")
    p.add_argument("--listen", type=int, default=4, metavar="N",
                   help="utterances with players on report.html, one per speaker (default 4; 0: none)")
    p.add_argument("--jobs", type=int, metavar="N", help="worker processes (default: all cores)")
    p.add_argument("--out", metavar="DIR", required=True, help="output folder (created if needed)")
    p.set_defaults(func=run)


def shipped_names_to_dirs(models: list[str]) -> list[str]:
    """Shipped model names among ``models`` become their directories (existing paths stay)."""
    from pathlib import Path

    from codec.pretrained import is_name, list_models, resolve

    shipped = set(list_models())
    return [str(resolve(m)) if is_name(m) and m in shipped and not Path(m).is_dir() else m for m in models]


def run(args: argparse.Namespace) -> None:
    """Evaluate args.models (see the parser)."""
    from codec.eval.evaluate import EvalError, run_evaluation
    from codec.eval.opus import OpusError

    try:
        run_evaluation(args.models, args.out, data=args.data, stages=args.stages, opus=args.opus,
                       entropy=args.entropy, limit=args.limit, jobs=args.jobs, warn=warn, note=note,
                       int8=args.int8, listen=args.listen)
    except (EvalError, OpusError) as e:
        raise CLIError(str(e)) from None
