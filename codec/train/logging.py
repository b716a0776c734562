"""Metric rows to a CSV file (and to accelerate's trackers, e.g. TensorBoard).

One CSV, ``<out_dir>/log.csv``, with a fixed header: ``step``, ``split`` (train / valid), the
losses, lr, grad_norm, audio_s_per_s, pesq, then per stage ``s<i>_perplexity``,
``s<i>_utilisation`` and ``s<i>_dead_codes`` (i from 1). Train rows count codes over the
quantizer's usage window (the last ``stats_window`` steps); valid rows count the codes of the
whole validation set as ``Codec.encode`` produces them. Cells a row does not have are empty.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

from codec.train.losses import TERM_NAMES

#: "loss" is the weighted total; the others are the unweighted terms.
LOSS_NAMES = ["loss", *TERM_NAMES]
STAGE_KEYS = ["perplexity", "utilisation", "dead_codes", "norm_spread", "effective_rank"]


def columns(num_stages: int) -> list[str]:
    """The CSV header for a model with ``num_stages`` stages."""
    stage_cols = [f"s{i + 1}_{k}" for i in range(num_stages) for k in STAGE_KEYS]
    return ["step", "split", *LOSS_NAMES, "lr", "grad_norm", "audio_s_per_s", "pesq", "pesq_unquantized", *stage_cols]


def stage_columns(stats: list[dict[str, float]]) -> dict[str, float]:
    """Per-stage dicts with perplexity / utilisation / dead_codes (and, on train rows, the
    collapse measures norm_spread / effective_rank) -> flat s<i>_* columns (a measure a dict
    lacks is left empty)."""
    return {f"s{i + 1}_{k}": s.get(k, math.nan) for i, s in enumerate(stats) for k in STAGE_KEYS}


class CSVLog:
    """Appends rows to ``path``. On resume (``resume_step`` given), rows after that step, which
    the resumed run will write again, are dropped first so the file stays one history."""

    def __init__(self, path: str | Path, num_stages: int, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.fields = columns(num_stages)
        kept: list[dict] = []
        if resume_step is not None and self.path.is_file():
            with self.path.open(newline="") as f:
                kept = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) <= resume_step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", newline="") as f:
            w = csv.DictWriter(f, self.fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(kept)

    def write(self, step: int, split: str, values: dict[str, float]) -> None:
        row = {"step": step, "split": split}
        for k, v in values.items():
            if k in self.fields:
                row[k] = "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):.6g}"
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, self.fields, extrasaction="ignore").writerow(row)


def read_log(path: str | Path) -> list[dict[str, str]]:
    """The CSV's rows as dicts of strings (for tests and summaries)."""
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))
