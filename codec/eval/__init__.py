"""Rate-quality evaluation: real bitstreams scored with PESQ, STOI, mel distance and SI-SDR,
per-stage codebook usage, and an Opus baseline (``codec eval``).

metrics.py   the four quality metrics          opus.py      opusenc / opusdec round trip
sweep.py     tasks in a process pool           report.py    results.csv, codebooks.csv, summary.md
plots.py     rate_quality.png, codebooks.png   evaluate.py  input checks and the whole run
clips.py     listening clips (which, names)    page.py      report.html (plots, table, players)
command.py   the ``codec eval`` subcommand
"""
from __future__ import annotations

from typing import Any

__all__ = ["EvalError", "run_evaluation"]


def __getattr__(name: str) -> Any:
    # Lazy, like ``codec``: building the command-line parser must not import torch.
    if name in __all__:
        from codec.eval import evaluate

        return getattr(evaluate, name)
    raise AttributeError(f"module 'codec.eval' has no attribute {name!r}")
