"""Figures (PNG, matplotlib's Agg backend): rate_quality.png and codebooks.png; training
curves (a logged quantity against the step, one line per run) for the quantizer study."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from codec.eval.report import Point


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def rate_quality(path: Path, points: Sequence[Point], opus_name: str = "opus") -> None:
    """Mean wide-band PESQ (with its 95% interval) against the real bitrate: one curve per
    model (range-coded variants dashed), Opus as black squares."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    systems = list(dict.fromkeys(p.system for p in points))
    for system in systems:
        pts = sorted((p for p in points if p.system == system), key=lambda p: p.kbps)
        x = [p.kbps for p in pts]
        y = [p.means["pesq"][0] for p in pts]
        err = [p.means["pesq"][1] if p.means["pesq"][1] == p.means["pesq"][1] else 0.0 for p in pts]
        if system == opus_name:
            style = {"color": "black", "marker": "s", "linestyle": ":", "label": "Opus"}
        else:
            style = {"marker": "o", "linestyle": "--" if system.endswith("+entropy") else "-", "label": system}
        ax.errorbar(x, y, yerr=err, capsize=3, **style)
        if system != opus_name:
            for p in pts:
                ax.annotate(str(p.stages), (p.kbps, p.means["pesq"][0]), textcoords="offset points",
                            xytext=(4, -10), fontsize=7)
    ax.set_xlabel("real bitrate (kbit/s, from file size)")
    ax.set_ylabel("PESQ wide-band (mean, 95% CI)")
    ax.set_title("Rate-quality (numbers: stages)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def codebooks(path: Path, table: Sequence[dict]) -> None:
    """Per-stage utilisation and perplexity over the whole set, one line per model."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator, NullFormatter, ScalarFormatter

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for system in dict.fromkeys(c["system"] for c in table):
        rows = [c for c in table if c["system"] == system]
        stages = [c["stage"] for c in rows]
        left.plot(stages, [c["utilisation"] for c in rows], marker="o", label=system)
        right.plot(stages, [c["perplexity"] for c in rows], marker="o", label=system)
    left.set_ylim(0, 1.05)
    left.set_ylabel("utilisation (fraction of codes used)")
    right.set_ylabel("perplexity (exp entropy of code use)")
    right.set_yscale("log", base=2)
    right.set_ylim(0.9, 1.3 * max((c["codebook_size"] for c in table), default=2))
    right.yaxis.set_major_formatter(ScalarFormatter())
    right.yaxis.set_minor_formatter(NullFormatter())
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("stage")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Codebook usage per stage over the evaluation set")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@dataclass(frozen=True)
class Curve:
    """One run's logged quantity against the training step: ``label`` names it in the legend,
    lines of one ``group`` share a colour, ``dashed`` draws it dashed (solid otherwise)."""

    label: str
    steps: Sequence[float]
    values: Sequence[float]
    dashed: bool = False
    group: str = ""


def training_curves(path: Path, curves: Sequence[Curve], ylabel: str, title: str,
                    ylim: tuple[float, float] | None = None, xlabel: str = "training step") -> None:
    """Writes a PNG to ``path``: each curve's values against the training step (or whatever
    ``xlabel`` names), one line a curve, a colour a group (in first-seen order), dashed where
    the curve asks; ``ylim`` fixes the vertical range (matplotlib's own otherwise)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    groups = list(dict.fromkeys(c.group for c in curves))
    for c in curves:
        ax.plot(list(c.steps), list(c.values), linestyle="--" if c.dashed else "-", label=c.label,
                color=colours[groups.index(c.group) % len(colours)])
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
