"""Merge the quantizer study's runs (egs/librispeech/study.sh) into one results.csv, summary.md
and figures of codebook health during training.

    python tools/study_report.py egs/librispeech/results/study [--reference a_ema_on]
        [--replicate egs/librispeech/results/study_first_neutral]

Input: FOLDER/<run>/results.csv for every evaluated run (``codec eval`` on test-other, system
"<run>" for fixed-width files, "<run>+entropy" range-coded; 3/6/12 stages in regime a, 2/4/8
in regime b: 1.5, 3 and 6 kbps nominal in both), and where present FOLDER/<run>/codebooks.csv
(code use per stage over the set, at the full stage count) and FOLDER/<run>/train_log.csv
(the ``codec train`` log) and FOLDER/<run>/stages.csv (the run at every stage count on a
subset of the utterances: egs/librispeech/study.sh's rate-quality curve). A run is named
REGIME_KIND_REMEDIES (a_ste_off .. b_cosine_on, 28 in all); other folders are passed over.

Output, in FOLDER:
  results.csv           every run's rows
  summary.md            per regime a row per run: PESQ (95% interval) at 1.5, 3, 6 kbps
                        fixed-width, PESQ and real kbps range-coded at 6 kbps, STOI and SI-SDR at
                        6 kbps, utilisation over test-other (min and mean over stages), and from
                        the training log: steps, mean training speed (s of audio per s; the log
                        holds no wall time), dead codes summed over stages and the lowest stage
                        utilisation, both at the last train row, the effective rank of the
                        encoder's output (stage 1's input) at the first and last train rows,
                        and the last validation row's PESQ, quantized / unquantized. Then each
                        run's PESQ paired per utterance against the reference run at equal nominal kbps (regime b's
                        runs too): the mean difference, its 5,000-sample bootstrap 95% interval,
                        utterances better / compared. With --replicate, each run both
                        folders hold paired the same way against its other start. Then the
                        runs not evaluated yet, and
                        ``codec eval``'s table of every point.
                        Where runs have FOLDER/<run>/stages.csv (``codec eval`` at every stage
                        count on a subset of test-other), a table per regime of mean PESQ at
                        each stage count.
  rate_quality.png      PESQ against real kbps per run, fixed-width files
  stage_curves_<r>.png  per run of regime r with a stages.csv, mean PESQ against the nominal
                        kbps of 1 to all stages (remedies off dashed, a colour per kind)
  utilisation_<r>.png   per run of regime r, the mean over stages of the train rows' utilisation
                        (s<i>_window_utilisation where logged, else s<i>_utilisation) against
                        the step; remedies off dashed, on solid, a colour per kind
  dead_codes_<r>.png    the same for dead codes, summed over stages
  effective_rank_<r>.png, norm_spread_<r>.png
                        the mean over stages, where the logs have those columns
Exit status 2 with one line ``study_report.py: error: ...`` on bad input.
"""
from __future__ import annotations

import argparse
import csv
import math
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from codec.eval import plots
from codec.eval.report import (
    Point,
    aggregate,
    fmt,
    fmt_ci,
    paired_bootstrap,
    read_results,
    summary_markdown,
    write_results,
)
from codec.eval.sweep import ENTROPY_SUFFIX
from codec.train.logging import read_log

PROG = "study_report.py"
REGIMES = {"a": "12 stages x 1,024 codes", "b": "8 stages x 32,768 codes"}
KINDS = ("ste", "ema", "simvq", "diveq", "sf_diveq", "rotation", "cosine")
REMEDIES = ("off", "on")
STUDY = [f"{r}_{k}_{m}" for r in REGIMES for k in KINDS for m in REMEDIES]  # the 28 runs
NOMINAL_KBPS = (1.5, 3.0, 6.0)
RUN_NAME = re.compile(r"^(a|b)_(\w+)_(on|off)$")
STAGE_COLUMN = re.compile(r"^s(\d+)_(\w+)$")


class StudyError(Exception):
    """Bad input: reported as one error line, exit status 2."""


def parse_run(name: str) -> tuple[str, str, str] | None:
    """'a_sf_diveq_off' -> ('a', 'sf_diveq', 'off'): regime, kind, remedies; None for a name
    that is not REGIME_KIND_REMEDIES."""
    m = RUN_NAME.match(name)
    return (m.group(1), m.group(2), m.group(3)) if m else None


def find_runs(folder: Path) -> list[str]:
    """The runs under ``folder`` that have a results.csv: the study's 28 in their order (regime,
    kind, remedies off then on), then any other REGIME_KIND_REMEDIES folder, sorted."""
    found = {d.name for d in folder.iterdir() if (d / "results.csv").is_file() and parse_run(d.name)}
    return [r for r in STUDY if r in found] + sorted(found - set(STUDY))


def read_codebooks(path: Path) -> list[dict]:
    """codebooks.csv (``codec eval``) -> rows with stage, codebook_size, frames and used_codes
    as ints, utilisation and perplexity as floats; [] when the file is absent."""
    if not path.is_file():
        return []
    ints, floats = ("stage", "codebook_size", "frames", "used_codes"), ("utilisation", "perplexity")
    with open(path, newline="") as f:
        return [{**r, **{k: int(r[k]) for k in ints}, **{k: float(r[k]) for k in floats}} for r in csv.DictReader(f)]


def stage_values(row: dict[str, str], quantity: str) -> list[float]:
    """The non-empty ``s<i>_<quantity>`` cells of one training-log row, in stage order."""
    cells = []
    for key, value in row.items():
        m = STAGE_COLUMN.match(key or "")
        if m and m.group(2) == quantity and value not in ("", None):
            cells.append((int(m.group(1)), float(value)))
    return [v for _, v in sorted(cells)]


def stage_curve(log: Sequence[dict[str, str]], quantity: str,
                reduce: Callable[[list[float]], float]) -> tuple[list[float], list[float]]:
    """(steps, values) over the log's train rows: ``reduce`` (e.g. a mean, sum or min) of the
    row's stage values of ``quantity``; rows without any are left out."""
    steps, values = [], []
    for r in log:
        if r.get("split") == "train" and (v := stage_values(r, quantity)):
            steps.append(float(r["step"]))
            values.append(reduce(v))
    return steps, values


def mean(values: Sequence[float]) -> float:
    """The arithmetic mean; NaN for none."""
    return sum(values) / len(values) if values else math.nan


def utilisation_quantity(log: Sequence[dict[str, str]]) -> str:
    """'window_utilisation' where the log's train rows have it, else 'utilisation'."""
    return "window_utilisation" if stage_curve(log, "window_utilisation", mean)[0] else "utilisation"


def training_summary(log: Sequence[dict[str, str]]) -> dict:
    """From one training log: ``steps`` (the last step logged), ``speed`` (mean s of audio per
    s over the train rows), ``dead`` (dead codes summed over stages) and ``min_util`` (the
    lowest stage's utilisation, ``utilisation_quantity``) at the last train row that has them;
    ``rank`` (first, last): the effective rank of stage 1's input (the encoder's output) at the
    first and last train rows that have it; ``valid`` (PESQ, PESQ unquantized) at the last
    validation row. NaN where the log has none."""
    speeds = [float(r["audio_s_per_s"]) for r in log if r.get("split") == "train" and r.get("audio_s_per_s")]
    dead = stage_curve(log, "dead_codes", sum)[1]
    util = stage_curve(log, utilisation_quantity(log), min)[1]
    rank = stage_curve(log, "effective_rank", lambda v: v[0])[1]
    valid = [r for r in log if r.get("split") == "valid"]
    number = (lambda row, key: float(row[key]) if row.get(key) not in ("", None) else math.nan)
    return {"steps": max((int(r["step"]) for r in log), default=0), "speed": mean(speeds),
            "dead": dead[-1] if dead else math.nan, "min_util": util[-1] if util else math.nan,
            "rank": (rank[0], rank[-1]) if rank else (math.nan, math.nan),
            "valid": (number(valid[-1], "pesq"), number(valid[-1], "pesq_unquantized")) if valid
            else (math.nan, math.nan)}


def pesq_by_utterance(rows: Sequence[dict]) -> dict[tuple[str, float], dict[str, float]]:
    """(run, nominal kbps) -> utterance -> PESQ, fixed-width rows only."""
    out: dict[tuple[str, float], dict[str, float]] = {}
    for r in rows:
        if not r["system"].endswith(ENTROPY_SUFFIX):
            out.setdefault((r["system"], round(r["nominal_kbps"], 3)), {})[r["utterance"]] = r["pesq"]
    return out


def paired_difference(run: dict[str, float], reference: dict[str, float]) -> dict:
    """One run's PESQ per utterance against another's on the utterances both scored: ``mean``
    difference, bootstrap interval ``lo``..``hi``, ``better`` (utterances where the run scores
    higher) and ``n`` (utterances compared)."""
    diffs = [run[u] - reference[u] for u in sorted(set(run) & set(reference))]
    m, lo, hi = paired_bootstrap(diffs)
    return {"mean": m, "lo": lo, "hi": hi, "better": sum(d > 0 for d in diffs), "n": len(diffs)}


def paired_rows(rows: Sequence[dict], runs: Sequence[str], reference: str) -> list[dict]:
    """Per run (not the reference) and nominal kbps, in ``runs`` order: ``paired_difference`` of
    the run's PESQ against the reference run's at the same nominal kbps (fixed-width files), with
    ``run`` and ``kbps``. Nothing where the reference has no rows."""
    pesq = pesq_by_utterance(rows)
    out = []
    for run in runs:
        for kbps in sorted(k for r, k in pesq if r == run):
            ref = pesq.get((reference, kbps))
            if run != reference and ref is not None:
                out.append({"run": run, "kbps": kbps, **paired_difference(pesq[(run, kbps)], ref)})
    return out


def replicate_rows(rows: Sequence[dict], other: Sequence[dict], runs: Sequence[str]) -> list[dict]:
    """Per run of ``runs`` that ``other`` (another study folder's rows: the same runs from
    another start) holds too, and nominal kbps: ``paired_difference`` of this folder's PESQ against the
    other's, with ``run`` and ``kbps`` (fixed-width files)."""
    here, there = pesq_by_utterance(rows), pesq_by_utterance(other)
    return [{"run": run, "kbps": kbps, **paired_difference(here[(run, kbps)], there[(run, kbps)])}
            for run in runs for kbps in sorted(k for r, k in here if r == run) if (run, kbps) in there]


def stage_points(stage_rows: Sequence[dict]) -> dict[str, list[tuple[int, float, float, int]]]:
    """stages.csv rows (fixed-width, one run each) -> run -> (stages, nominal kbps, mean PESQ,
    utterances) per stage count, in stage order (``aggregate``'s points)."""
    out: dict[str, list[tuple[int, float, float, int]]] = {}
    fixed = aggregate([r for r in stage_rows if not r["system"].endswith(ENTROPY_SUFFIX)])
    for p in sorted(fixed, key=lambda p: (p.system, p.stages)):
        out.setdefault(p.system, []).append((p.stages, p.nominal_kbps, p.means["pesq"][0], p.utterances))
    return out


def stage_table(regime: str, runs: Sequence[str], curves: dict[str, list[tuple[int, float, float, int]]]) -> list[str]:
    """The markdown lines of one regime's PESQ-at-every-stage-count table, a row per run of
    ``runs`` that has a curve; [] when none has."""
    mine = [r for r in runs if r in curves]
    if not mine:
        return []
    counts = sorted({p[0] for r in mine for p in curves[r]})
    kbps = {p[0]: p[1] for r in mine for p in curves[r]}
    n = sorted({p[3] for r in mine for p in curves[r]})
    lines = [f"## Regime {regime}: mean PESQ at every stage count ({'/'.join(map(str, n))} utterances, stages.csv)",
             "", "| run | " + " | ".join(f"{c} ({kbps[c]:g} kbps)" for c in counts) + " |",
             "| --- |" + " ---: |" * len(counts)]
    for run in mine:
        at = {p[0]: p[2] for p in curves[run]}
        lines.append(f"| {run} | " + " | ".join(fmt(at[c], 3) if c in at else "-" for c in counts) + " |")
    return lines


def signed(x: float) -> str:
    """``x`` with a sign and 3 decimals; 'n/a' for NaN."""
    return f"{x:+.3f}" if math.isfinite(x) else "n/a"


def regime_table(regime: str, runs: Sequence[str], points: Sequence[Point], codebooks: Sequence[dict],
                 training: dict[str, dict]) -> list[str]:
    """The markdown lines of one regime's table, a row per run of ``runs`` in that regime;
    '-' where a run lacks the point, codebooks.csv or training log."""
    at = {(p.system, round(p.nominal_kbps, 3)): p for p in points}
    lines = [f"## Regime {regime}: {REGIMES[regime]}", "",
             ("| kind | remedies | PESQ 1.5 kbps | PESQ 3 kbps | PESQ 6 kbps | PESQ 6 kbps range-coded "
              "| range-coded kbps | STOI 6 kbps | SI-SDR 6 kbps dB | utilisation min | utilisation mean "
              "| steps | s of audio per s | dead codes at end | min utilisation at end "
              "| encoder output rank first -> last | validation PESQ / unquantized |"),
             "| --- | --- |" + " ---: |" * 15]
    for run in runs:
        _, kind, remedies = parse_run(run)
        fixed = [at.get((run, k)) for k in NOMINAL_KBPS]
        top, coded = fixed[-1], at.get((run + ENTROPY_SUFFIX, NOMINAL_KBPS[-1]))
        util = [c["utilisation"] for c in codebooks if c["system"] == run]
        t = training.get(run)
        cells = [kind, remedies, *(fmt_ci(p.means["pesq"], 3) if p else "-" for p in fixed),
                 fmt_ci(coded.means["pesq"], 3) if coded else "-", fmt(coded.kbps, 2) if coded else "-",
                 fmt(top.means["stoi"][0], 3) if top else "-", fmt(top.means["si_sdr"][0], 2) if top else "-",
                 fmt(min(util), 3) if util else "-", fmt(mean(util), 3) if util else "-",
                 str(t["steps"]) if t else "-", fmt(t["speed"], 1) if t else "-",
                 fmt(t["dead"], 0) if t else "-", fmt(t["min_util"], 3) if t else "-",
                 " -> ".join(fmt(v, 1) for v in t["rank"]) if t else "-",
                 " / ".join(fmt(v, 2) for v in t["valid"]) if t else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def pair_table(rows: Sequence[dict]) -> list[str]:
    """The markdown lines of a table of ``paired_rows`` / ``replicate_rows``."""
    return ["| run | nominal kbps | mean PESQ difference | bootstrap 95% interval | utterances better |",
            "| --- | ---: | ---: | --- | ---: |",
            *(f"| {r['run']} | {r['kbps']:g} | {signed(r['mean'])} | {signed(r['lo'])} .. {signed(r['hi'])} "
              f"| {r['better']}/{r['n']} |" for r in rows)]


def markdown(runs: Sequence[str], points: Sequence[Point], codebooks: Sequence[dict], training: dict[str, dict],
             paired: Sequence[dict], reference: str, everything: str,
             replicated: tuple[str, Sequence[dict]] | None = None,
             curves: dict[str, list[tuple[int, float, float, int]]] | None = None) -> str:
    """summary.md: the regime tables, where ``curves`` (``stage_points``) has runs their
    PESQ at every stage count, the paired differences, where ``replicated`` (a folder's
    name and its ``replicate_rows``) is given the same runs against another start's, the
    missing runs, then ``everything`` (``codec eval``'s summary of all points, its headings one
    level down)."""
    lines = ["# Quantizer study", "",
             "PESQ: wide-band mean over test-other with its 95% interval (mean ± 1.96·sd/√n), "
             "fixed-width files unless range-coded. Utilisation min / mean: over the stages, codes "
             "used on test-other at the full stage count (codebooks.csv). From the training log: steps, "
             "mean training speed (the log holds no wall time), and at its last train row dead codes "
             "summed over stages and the lowest stage's utilisation (over the usage window).", ""]
    for regime in REGIMES:
        mine = [r for r in runs if parse_run(r)[0] == regime]
        if mine:
            lines += regime_table(regime, mine, points, codebooks, training) + [""]
    for regime in REGIMES:
        table = stage_table(regime, [r for r in runs if parse_run(r)[0] == regime], curves or {})
        lines += table + ([""] if table else [])
    lines += [f"## PESQ paired against {reference} (same utterances, equal nominal kbps, fixed-width files)", ""]
    lines += pair_table(paired) if paired else [f"No pairs: {reference} has not been evaluated."]
    if replicated is not None:
        name, rows = replicated
        lines += ["", f"## The same runs from another start ({name}): PESQ here minus there", ""]
        lines += pair_table(rows) if rows else [f"No run is in both this folder and {name}."]
    missing = [r for r in STUDY if r not in runs]
    lines += ["", "## Runs not evaluated yet", "",
              f"{len(missing)} of {len(STUDY)}: {', '.join(missing)}." if missing else f"None: all {len(STUDY)} runs."]
    lines += ["", *("#" + line if line.startswith("#") else line for line in everything.rstrip().split("\n"))]
    return "\n".join(lines) + "\n"


def write_plots(folder: Path, runs: Sequence[str], logs: dict[str, list[dict]], points: Sequence[Point],
                curves: dict[str, list[tuple[int, float, float, int]]] | None = None) -> list[str]:
    """Writes rate_quality.png and, per regime with training logs, utilisation_<r>.png,
    dead_codes_<r>.png and (where logged) effective_rank_<r>.png and norm_spread_<r>.png into
    ``folder``, and per regime with ``curves`` (``stage_points``) stage_curves_<r>.png; returns
    the names written."""
    written = ["rate_quality.png"]
    plots.rate_quality(folder / "rate_quality.png", [p for p in points if not p.system.endswith(ENTROPY_SUFFIX)])
    for regime in REGIMES:
        mine = [r for r in runs if parse_run(r)[0] == regime and r in (curves or {})]
        if mine:
            lines = [plots.Curve(r, [p[1] for p in curves[r]], [p[2] for p in curves[r]],
                                 dashed=parse_run(r)[2] == "off", group=parse_run(r)[1]) for r in mine]
            path = folder / f"stage_curves_{regime}.png"
            plots.training_curves(path, lines, "PESQ wide-band (mean)",
                                  f"Regime {regime} ({REGIMES[regime]}): 1 to all stages", xlabel="nominal kbit/s")
            written.append(path.name)
    figures = (("utilisation", "utilisation (mean over stages)", mean, (0.0, 1.05)),
               ("dead_codes", "dead codes (sum over stages)", sum, None),
               ("effective_rank", "effective rank of the stage input (mean over stages)", mean, None),
               ("norm_spread", "codeword norm spread (mean over stages)", mean, None))
    for regime in REGIMES:
        mine = [r for r in runs if parse_run(r)[0] == regime and r in logs]
        for name, label, reduce, ylim in figures:
            curves = []
            for run in mine:
                quantity = utilisation_quantity(logs[run]) if name == "utilisation" else name
                steps, values = stage_curve(logs[run], quantity, reduce)
                _, kind, remedies = parse_run(run)
                if steps:
                    curves.append(plots.Curve(run, steps, values, dashed=remedies == "off", group=kind))
            if curves:
                path = folder / f"{name}_{regime}.png"
                plots.training_curves(path, curves, label, f"Regime {regime} ({REGIMES[regime]}): {label}", ylim)
                written.append(path.name)
    return written


def read_runs(folder: Path) -> tuple[list[str], list[dict]]:
    """The runs under ``folder`` (``find_runs``) and all their results.csv rows. Raises
    StudyError when ``folder`` is not a folder or holds no run."""
    if not folder.is_dir():
        raise StudyError(f"{folder} is not a folder")
    runs = find_runs(folder)
    if not runs:
        raise StudyError(f"no <run>/results.csv under {folder} (runs are named REGIME_KIND_REMEDIES, e.g. a_ema_on)")
    return runs, [r for run in runs for r in read_results(folder / run / "results.csv")]


def report(folder: Path, reference: str, replicate: Path | None = None) -> list[str]:
    """Reads the runs under ``folder`` and writes results.csv, summary.md and the figures into
    it; ``replicate``: another study folder (the same runs from another start) that summary.md
    pairs each common run against. Returns the names of the runs reported. Raises StudyError
    when either folder has no run."""
    runs, rows = read_runs(folder)
    replicated = None
    if replicate is not None:
        replicated = (replicate.name, replicate_rows(rows, read_runs(replicate)[1], runs))
    codebooks = [c for run in runs for c in read_codebooks(folder / run / "codebooks.csv")]
    logs = {run: read_log(folder / run / "train_log.csv") for run in runs if (folder / run / "train_log.csv").is_file()}
    training = {run: training_summary(log) for run, log in logs.items()}
    curves = stage_points([r for run in runs if (folder / run / "stages.csv").is_file()
                           for r in read_results(folder / run / "stages.csv")])
    points = aggregate(rows)
    first = rows[0]
    seconds = sum(r["duration_s"] for r in rows if (r["system"], r["stages"]) == (first["system"], first["stages"]))
    everything = summary_markdown(points, codebooks, "test-other", len({r["utterance"] for r in rows}), seconds)
    write_results(folder / "results.csv", rows)
    (folder / "summary.md").write_text(
        markdown(runs, points, codebooks, training, paired_rows(rows, runs, reference), reference, everything,
                 replicated, curves))
    figures = write_plots(folder, runs, logs, points, curves)
    print(f"wrote {folder}/results.csv, summary.md, {', '.join(figures)} ({len(runs)} runs)")
    return runs


def main(argv: list[str] | None = None) -> int:
    """The command line: ``argv`` (sys.argv[1:] when None) -> exit status (0, or 2 on bad input)."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="the study's results, e.g. egs/librispeech/results/study")
    p.add_argument("--reference", default="a_ema_on",
                   help="the run paired differences are taken against (default a_ema_on)")
    p.add_argument("--replicate", type=Path, metavar="FOLDER",
                   help="another study folder, the same runs from another neutral start: summary.md pairs each"
                        " run both hold (e.g. egs/librispeech/results/study_first_neutral)")
    args = p.parse_args(argv)
    try:
        report(args.folder, args.reference, args.replicate)
    except StudyError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyError as e:
        print(f"{PROG}: error: a CSV under {args.folder} lacks the column {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError, csv.Error) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
