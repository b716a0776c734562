"""Tables from the sweep: results.csv (one row per utterance, system, setting), codebooks.csv
(per model and stage), summary.md (means with 95% intervals, codebook usage).

Aggregates: real kbps = 8 * sum(file bytes) / sum(durations) (so long utterances weigh by
their length, as in a real stream); metrics are means over utterances, with the 95% interval
mean +- 1.96 * sd / sqrt(n) (sample sd); a NaN (PESQ found no speech) is left out of its mean.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from codec.eval.metrics import METRICS
from codec.eval.sweep import COLUMNS


def mean_ci(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, half-width of the 95% interval, n) over the finite values; NaNs when none."""
    x = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if len(x) == 0:
        return math.nan, math.nan, 0
    half = 1.96 * float(x.std(ddof=1)) / math.sqrt(len(x)) if len(x) > 1 else math.nan
    return float(x.mean()), half, len(x)


def paired_bootstrap(diffs: Sequence[float], resamples: int = 5000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, 2.5th and 97.5th percentile of the mean over ``resamples`` bootstrap resamples)
    of per-utterance paired differences (system A minus system B on the same utterances);
    NaNs are left out, all NaN gives NaNs. The resampling is seeded, so tables reproduce."""
    x = np.asarray([d for d in diffs if math.isfinite(d)], dtype=np.float64)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(x.mean()), float(lo), float(hi)


def read_results(path: Path) -> list[dict]:
    """results.csv (``write_results``) -> rows with numbers as floats (stages as int, '' kept
    for Opus), the inverse of ``write_results`` up to float formatting."""
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            row: dict = {}
            for k, v in r.items():
                if k in ("system", "utterance") or v == "":
                    row[k] = v
                elif k == "stages":
                    row[k] = int(v)
                else:
                    row[k] = float(v)
            rows.append(row)
    return rows


@dataclass(frozen=True)
class Point:
    """One system at one setting, over all utterances."""

    system: str
    stages: int | str
    nominal_kbps: float
    kbps: float
    payload_kbps: float
    utterances: int
    means: dict[str, tuple[float, float, int]]  # metric -> mean_ci


def aggregate(rows: Sequence[dict]) -> list[Point]:
    """Rows grouped by (system, stages, nominal kbps), in first-seen order."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["system"], r["stages"], r["nominal_kbps"]), []).append(r)
    points = []
    for (system, stages, nominal), rs in groups.items():
        seconds = sum(r["duration_s"] for r in rs)
        points.append(Point(
            system, stages, nominal,
            kbps=8 * sum(r["file_bytes"] for r in rs) / seconds / 1000,
            payload_kbps=8 * sum(r["payload_bytes"] for r in rs) / seconds / 1000,
            utterances=len(rs),
            means={m: mean_ci([r[m] for r in rs]) for m in METRICS},
        ))
    return points


def codebook_table(counts: dict[str, tuple[list[np.ndarray], int]]) -> list[dict]:
    """Per model and stage: codebook size, codes used, utilisation, perplexity over the set."""
    import torch

    from codec.quant.stats import perplexity, utilisation

    table = []
    for system, (per_stage, frames) in counts.items():
        for i, c in enumerate(per_stage, start=1):
            t = torch.from_numpy(np.asarray(c, dtype=np.float64))
            table.append({
                "system": system, "stage": i, "codebook_size": len(c), "frames": frames,
                "used_codes": int((t > 0).sum()), "utilisation": float(utilisation(t)),
                "perplexity": float(perplexity(t)),
            })
    return table


def write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def write_results(path: Path, rows: Sequence[dict]) -> None:
    write_csv(path, rows, COLUMNS)


def fmt(x: float, digits: int) -> str:
    """``x`` with ``digits`` decimals; 'n/a' for NaN or infinity."""
    return "n/a" if not math.isfinite(x) else f"{x:.{digits}f}"


def fmt_ci(stat: tuple[float, float, int], digits: int) -> str:
    """A ``mean_ci`` as 'mean ± half-width' (the mean alone where there is no interval)."""
    mean, half, _ = stat
    return fmt(mean, digits) if not math.isfinite(half) else f"{fmt(mean, digits)} ± {fmt(half, digits)}"


def stage_usage(point: Point, codebooks: Sequence[dict]) -> str:
    """Utilisation of each stage the point uses ('0.91 0.88 ...'; '' for Opus), from the
    ``codebook_table`` rows of its model (a +entropy system: those of the model it codes)."""
    util = {(c["system"], c["stage"]): c["utilisation"] for c in codebooks}
    stages = int(point.stages) if point.stages != "" else 0
    base = point.system.removesuffix("+entropy")
    return " ".join(fmt(util[(base, i)], 2) for i in range(1, stages + 1) if (base, i) in util)


def summary_markdown(points: Sequence[Point], codebooks: Sequence[dict], data: str, num_files: int,
                     seconds: float, notes: Sequence[str] = ()) -> str:
    lines = [
        "# Rate-quality evaluation",
        "",
        f"{num_files} utterances ({seconds / 60:.1f} min) from `{data}`.",
        ("Real kbps = 8 · file bytes / duration over the whole set (header and trailer included; "
         "payload kbps leaves them out; for Opus, the Ogg container vs the Opus packets alone). "
         "Scores are means over utterances, PESQ wide-band with its 95% interval "
         "(mean ± 1.96·sd/√n); STOI in [0, 1]; mel distance: L1 of log-mel spectrograms (lower is better)."),
        "",
        ("| system | stages | nominal kbps | real kbps | payload kbps | PESQ (95% CI) | STOI | mel dist. "
         "| SI-SDR dB | utilisation per stage |"),
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |",
    ]
    for p in points:
        usage = stage_usage(p, codebooks)
        lines.append(
            f"| {p.system} | {p.stages if p.stages != '' else '-'} | {p.nominal_kbps:.2f} | {p.kbps:.2f} "
            f"| {p.payload_kbps:.2f} | {fmt_ci(p.means['pesq'], 3)} | {fmt(p.means['stoi'][0], 3)} "
            f"| {fmt(p.means['mel_distance'][0], 3)} | {fmt(p.means['si_sdr'][0], 2)} | {usage or '-'} |"
        )
    if codebooks:
        lines += [
            "",
            "## Codebook usage over the whole set",
            "",
            "| system | stage | K | codes used | utilisation | perplexity |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for c in codebooks:
            lines.append(f"| {c['system']} | {c['stage']} | {c['codebook_size']} | {c['used_codes']} "
                         f"| {c['utilisation']:.3f} | {c['perplexity']:.1f} |")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"
