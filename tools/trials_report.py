#!/usr/bin/env python3
"""The learn-faster trials' table (egs/librispeech/trials/run.sh) as Markdown.

    python tools/trials_report.py exp/trials today schedule [--reference today] [--scores DIR] [--out FILE]

Input: SCORES/results.csv (one ``codec eval`` of every trial's model on test-other, systems
named <trial>/model; SCORES is DIR/eval_<trial>_<trial>..., as run.sh names it, or --scores),
SCORES/unquantized.json (tools/unquantized_quality.py), and each DIR/<trial>/log.csv and
recipe.yaml (seconds of audio per step: batch_size x crop_seconds x grad_accum). One row per trial: optimizer steps, mean seconds per step and wall time
of its training (from log.csv's throughput), PESQ of the unquantized decoder and at 3, 6 and
12 stages (1.5, 3 and 6 kbps) with 95% intervals, STOI and SI-SDR at 12 stages; then the PESQ
differences against the reference trial on the same utterances (5,000-sample bootstrap 95%
intervals, ``codec.eval.report.paired_bootstrap``) and the validation PESQ curve of each run.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from codec.eval.report import mean_ci, paired_bootstrap, read_results

STAGES = (3, 6, 12)


def batch_seconds(recipe_yaml: Path) -> float:
    """Seconds of audio per optimizer step in one process: batch_size x crop_seconds x grad_accum
    of a run's merged recipe (its recipe.yaml)."""
    import yaml

    from codec.recipe import build_dataclass
    from codec.train.config import TrainConfig

    cfg = build_dataclass(TrainConfig, yaml.safe_load(recipe_yaml.read_text()).get("train") or {}, "train")
    return cfg.batch_size * cfg.data.crop_seconds * cfg.grad_accum


def training_summary(log_csv: Path, batch_seconds: float) -> dict[str, float]:
    """From a run's log.csv: the last step, the mean seconds per optimizer step over the train
    rows (``batch_seconds`` of audio per step over the logged throughput), the training time
    those imply, and the validation rows' (step, PESQ)."""
    with open(log_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    train = [r for r in rows if r["split"] == "train" and r["audio_s_per_s"]]
    per_step = [batch_seconds / float(r["audio_s_per_s"]) for r in train]
    steps = [int(r["step"]) for r in train]
    spans = [b - a for a, b in zip([0, *steps[:-1]], steps)]
    hours = sum(s * t for s, t in zip(spans, per_step)) / 3600
    curve = [(int(r["step"]), float(r["pesq"])) for r in rows if r["split"] == "valid" and r.get("pesq")]
    return {"steps": steps[-1] if steps else 0, "s_per_step": sum(per_step) / max(1, len(per_step)),
            "hours": hours, "curve": curve}


def markdown(folder: Path, trials: list[str], reference: str, scores: Path) -> str:
    """The table, the paired differences and the validation curves as Markdown."""
    rows = read_results(scores / "results.csv")
    unquantized = json.loads((scores / "unquantized.json").read_text())
    scores: dict[tuple[str, int], dict[str, dict]] = {}
    for r in rows:
        scores.setdefault((r["system"].split("/")[0], r["stages"]), {})[r["utterance"]] = r
    head = [("| trial | steps | s/step | training h | PESQ unquantized | PESQ 1.5 kbps | PESQ 3 kbps | PESQ 6 kbps "
            "| STOI 6 kbps | SI-SDR 6 kbps (dB) |"), "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines = list(head)
    curves = []
    for t in trials:
        tr = training_summary(folder / t / "log.csv", batch_seconds(folder / t / "recipe.yaml"))
        unq = next(v for k, v in unquantized.items() if Path(k).parent.name == t)
        cells = [f"{unq['pesq']:.3f} ± {unq['pesq_ci95']:.3f}"]
        for s in STAGES:
            m, h, _ = mean_ci([r["pesq"] for r in scores[(t, s)].values()])
            cells.append(f"{m:.3f} ± {h:.3f}")
        full = scores[(t, 12)].values()
        stoi, sdr = mean_ci([r["stoi"] for r in full])[0], mean_ci([r["si_sdr"] for r in full])[0]
        lines.append(f"| {t} | {tr['steps']} | {tr['s_per_step']:.3f} | {tr['hours']:.2f} | " + " | ".join(cells)
                     + f" | {stoi:.3f} | {sdr:.2f} |")
        curves.append(f"| {t} | " + ", ".join(f"{s}: {p:.2f}" for s, p in tr["curve"]) + " |")
    lines += ["", f"PESQ paired against {reference} (same {len(scores[(reference, 12)])} utterances):", "",
              "| trial | stages | mean difference | bootstrap 95% interval | utterances better |",
              "| --- | ---: | ---: | --- | ---: |"]
    for t in trials:
        if t == reference:
            continue
        for s in STAGES:
            ours, ref = scores[(t, s)], scores[(reference, s)]
            common = sorted(set(ours) & set(ref))
            diffs = [ours[u]["pesq"] - ref[u]["pesq"] for u in common]
            mean, lo, hi = paired_bootstrap(diffs)
            lines.append(f"| {t} | {s} | {mean:+.3f} | {lo:+.3f} .. {hi:+.3f} | {sum(d > 0 for d in diffs)}/{len(diffs)} |")
    lines += ["", "Validation PESQ during training (the runs' validation set; step: PESQ):", "",
              "| trial | curve |", "| --- | --- |", *curves]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="the trials' output folder (exp/trials)")
    p.add_argument("trials", nargs="+", help="trial names (recipes of egs/librispeech/trials/)")
    p.add_argument("--reference", help="the trial paired differences are taken against (default: the first)")
    p.add_argument("--scores", type=Path, help="the evaluation folder (default: FOLDER/eval_<trials joined by _>)")
    p.add_argument("--out", type=Path, help="write the Markdown here (default: print it)")
    args = p.parse_args(argv)
    try:
        scores = args.scores or args.folder / f"eval_{'_'.join(args.trials)}"
        text = markdown(args.folder, args.trials, args.reference or args.trials[0], scores)
    except (OSError, KeyError, StopIteration, ValueError) as exc:
        print(f"trials_report.py: error: {args.folder}: missing or unreadable results ({exc!r})", file=sys.stderr)
        return 2
    if args.out:
        args.out.write_text(text)
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
