"""Merge the quantizer comparison's per-kind evaluations (egs/librispeech/compare.sh) into one
results.csv, summary.md (the rate-quality table, codebook usage, paired differences against
EMA, the training runs), rate_quality.png and codebooks.png.

    python tools/compare_report.py egs/librispeech/results/compare [--reference ema]

Input: DIR/<kind>/results.csv and codebooks.csv (``codec eval`` of one kind's model, system
"<kind>/model" and "<kind>/model+entropy"), DIR/<kind>/train_log.csv (its ``codec train``
log) and DIR/opus/results.csv. Paired differences: per utterance, a kind's PESQ minus the
reference kind's at the same stage count (fixed-width files), the mean with a 5,000-sample
bootstrap 95% interval (``codec.eval.report.paired_bootstrap``) and how many utterances
improve. Kinds evaluated so far are reported; the others are listed as missing.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from codec.eval import plots
from codec.eval.report import aggregate, paired_bootstrap, read_results, summary_markdown, write_results

KINDS = ("ema", "ste", "simvq", "diveq", "sf_diveq", "hybrid")
CLOSING_ROWS = 10  # train rows averaged for a run's closing loss terms


def paired_rows(rows: list[dict], reference: str) -> list[dict]:
    """Per kind (not the reference) and stage count: mean PESQ difference to the reference on
    the same utterances, its bootstrap interval, utterances better / compared."""
    pesq: dict[tuple[str, int], dict[str, float]] = {}
    for r in rows:
        if r["system"].endswith("/model"):
            pesq.setdefault((r["system"].split("/")[0], r["stages"]), {})[r["utterance"]] = r["pesq"]
    out = []
    for (kind, stages), scores in pesq.items():
        ref = pesq.get((reference, stages))
        if kind == reference or ref is None:
            continue
        common = sorted(set(scores) & set(ref))
        diffs = [scores[u] - ref[u] for u in common]
        mean, lo, hi = paired_bootstrap(diffs)
        out.append({"kind": kind, "stages": stages, "mean": mean, "lo": lo, "hi": hi,
                    "better": sum(d > 0 for d in diffs), "n": len(diffs)})
    return sorted(out, key=lambda r: (KINDS.index(r["kind"]) if r["kind"] in KINDS else 99, r["stages"]))


def training_rows(folder: Path, kinds: list[str]) -> list[dict]:
    """Per kind, from its train_log.csv: optimizer steps reached, mean training speed (s of
    audio per s) and the MR-STFT and mel terms averaged over the last ``CLOSING_ROWS`` train rows (the end
    of the run; reconstruction terms every kind shares, unlike its quantizer loss).

    Not the validation rows: a run trained before the fused-AdamW version fix (the EMA run)
    validated through inference caches that kept the first validation's weights."""
    out = []
    for kind in kinds:
        path = folder / kind / "train_log.csv"
        if not path.is_file():
            continue
        with open(path, newline="") as f:
            log = list(csv.DictReader(f))
        train = [r for r in log if r["split"] == "train" and r["audio_s_per_s"]]
        speed = sum(float(r["audio_s_per_s"]) for r in train) / max(1, len(train))
        tail = train[-CLOSING_ROWS:]
        mean = {t: sum(float(r[t]) for r in tail) / max(1, len(tail)) for t in ("stft", "mel")}
        out.append({"kind": kind, "steps": int(log[-1]["step"]) if log else 0, "speed": speed, **mean})
    return out


def markdown(summary: str, paired: list[dict], training: list[dict], reference: str, missing: list[str]) -> str:
    """summary.md: codec eval's table and codebook usage, then the paired differences and runs."""
    lines = [summary.rstrip(), "", f"## PESQ paired against {reference} (same utterances, fixed-width files)", "",
             "| kind | stages | mean PESQ difference | bootstrap 95% interval | utterances better |",
             "| --- | ---: | ---: | --- | ---: |"]
    for r in paired:
        lines.append(f"| {r['kind']} | {r['stages']} | {r['mean']:+.3f} | {r['lo']:+.3f} .. {r['hi']:+.3f} "
                     f"| {r['better']}/{r['n']} |")
    closing = f"(last {CLOSING_ROWS} rows)"
    header = f"| kind | steps | s of audio per s | MR-STFT term {closing} | mel term {closing} |"
    lines += ["", "## Training runs", "", header, "| --- | ---: | ---: | ---: | ---: |"]
    for r in training:
        lines.append(f"| {r['kind']} | {r['steps']} | {r['speed']:.1f} | {r['stft']:.4f} | {r['mel']:.4f} |")
    if missing:
        lines += ["", f"Not evaluated yet: {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="egs/librispeech/results/compare")
    p.add_argument("--reference", default="ema", help="the kind paired differences are taken against (default ema)")
    args = p.parse_args(argv)
    kinds = [k for k in KINDS if (args.folder / k / "results.csv").is_file()]
    if not kinds:
        print(f"compare_report.py: error: no <kind>/results.csv under {args.folder}", file=sys.stderr)
        return 2
    rows = [r for k in kinds for r in read_results(args.folder / k / "results.csv")]
    if (args.folder / "opus" / "results.csv").is_file():
        rows += read_results(args.folder / "opus" / "results.csv")
    codebooks = []
    for k in kinds:
        with open(args.folder / k / "codebooks.csv", newline="") as f:
            codebooks += [{**r, "stage": int(r["stage"]), "codebook_size": int(r["codebook_size"]),
                           "utilisation": float(r["utilisation"]), "perplexity": float(r["perplexity"])}
                          for r in csv.DictReader(f)]
    points = aggregate(rows)
    utterances = sorted({r["utterance"] for r in rows})
    seconds = sum(r["duration_s"] for r in rows if r["system"] == rows[0]["system"] and r["stages"] == rows[0]["stages"])
    summary = summary_markdown(points, codebooks, "test-other", len(utterances), seconds)
    write_results(args.folder / "results.csv", rows)
    missing = [k for k in KINDS if k not in kinds]
    (args.folder / "summary.md").write_text(
        markdown(summary, paired_rows(rows, args.reference), training_rows(args.folder, kinds), args.reference, missing))
    plots.rate_quality(args.folder / "rate_quality.png", [p for p in points if not p.system.endswith("+entropy")])
    plots.codebooks(args.folder / "codebooks.png", codebooks)
    print(f"wrote {args.folder}/results.csv, summary.md, rate_quality.png, codebooks.png ({', '.join(kinds)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
