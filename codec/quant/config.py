"""The residual quantizer's configuration: the stack and each stage (a kind, its size, options)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import codec.quant.kinds  # noqa: F401 - registers every kind
from codec.quant.base import QUANTIZER_KINDS
from codec.recipe import ConfigError, build_dataclass, deep_merge


@dataclass
class StageConfig:
    """One residual stage: its quantizer kind, number of symbols, code-space size, options."""

    kind: str = "ste"
    codebook_size: int = 1024
    codebook_dim: int | None = None  # None: quantize in the latent space, no projection
    options: dict = field(default_factory=dict)


@dataclass
class QuantizerConfig:
    """The residual stack. Every stage takes ``kind``/``codebook_size``/``codebook_dim`` and
    ``options[kind]`` unless ``stages`` overrides it: a list of per-stage dicts, each may carry
    ``repeat: n`` to stand for n identical stages (then the list fixes the number of stages).
    """

    n_stages: int = 12
    kind: str = "ste"
    codebook_size: int = 1024
    codebook_dim: int | None = None
    dropout: float = 0.5  # probability that an item trains with a random number of stages
    stats_window: int = 100  # training steps over which utilisation / dead codes are counted
    options: dict = field(default_factory=dict)  # per kind: {"ema": {"decay": 0.99}, ...}
    stages: list = field(default_factory=list)

    def resolved_stages(self) -> list[StageConfig]:
        """The per-stage configurations, defaults filled in."""
        specs: list[dict] = []
        for item in self.stages:
            item = dict(item)
            repeat = int(item.pop("repeat", 1))
            specs += [item] * repeat
        if not specs:
            specs = [{}] * self.n_stages
        out = []
        known = {f.name for f in dataclasses.fields(StageConfig)}
        for i, spec in enumerate(specs):
            unknown = sorted(set(spec) - known)
            if unknown:
                raise ConfigError(f"unknown key(s) in quantizer.stages[{i}]: {', '.join(unknown)} "
                                  f"(known: {', '.join(sorted(known | {'repeat'}))})")
            kind = spec.get("kind", self.kind)
            options = deep_merge(self.options.get(kind, {}) or {}, spec.get("options", {}) or {})
            merged = {
                "kind": kind,
                "codebook_size": spec.get("codebook_size", self.codebook_size),
                "codebook_dim": spec.get("codebook_dim", self.codebook_dim),
                "options": options,
            }
            out.append(build_dataclass(StageConfig, merged, f"quantizer.stages[{i}]"))
        return out

    def validate(self) -> None:
        """Raise ConfigError unless every stage names a registered kind and dropout is a probability."""
        if not 0.0 <= self.dropout <= 1.0:
            raise ConfigError("quantizer.dropout must be in [0, 1]")
        stages = self.resolved_stages()
        if not stages:
            raise ConfigError("the quantizer needs at least one stage")
        for i, stage in enumerate(stages):
            kind = stage.kind.strip().lower().replace("-", "_")
            if kind not in QUANTIZER_KINDS:
                raise ConfigError(f"quantizer stage {i}: unknown kind {stage.kind!r} "
                                  f"(choose one of {', '.join(QUANTIZER_KINDS)})")
