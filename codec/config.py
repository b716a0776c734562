"""Recipes: YAML files (or dicts) turned into typed model configuration.

A recipe may say ``extends: base.yaml`` (a path relative to the recipe); the two are merged
key by key, the recipe winning. The ``model`` section builds a ``Codec``; ``train`` belongs to
the training loop.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A recipe that cannot be read or does not describe a valid model."""


def deep_merge(base: dict, override: dict) -> dict:
    """A new dict: ``base`` with ``override`` merged in recursively (override wins)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_recipe(path: str | Path) -> dict:
    """Read a YAML recipe, resolving ``extends`` chains. Returns a plain dict."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read recipe {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} is not a mapping")
    parent = data.pop("extends", None)
    if parent is not None:
        data = deep_merge(load_recipe(path.parent / parent), data)
    return data


def _from_dict(cls: type, data: dict, where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) in {where}: {', '.join(unknown)} (known: {', '.join(sorted(names))})")
    return cls(**data)


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
            out.append(_from_dict(StageConfig, merged, f"quantizer.stages[{i}]"))
        return out


@dataclass
class ModelConfig:
    """The whole codec: audio format, encoder/decoder shape and the residual quantizer.

    ``architecture`` picks the encoder/decoder family: ``seanet`` (causal strided convs at the
    sample rate; ``channels``, ``dilations``, ``residual_kernel_size``, ``norm``,
    ``activation`` apply) or ``convnext`` (causal STFT, ConvNeXt blocks at the frame rate and
    an inverse-STFT head; ``width``, ``encoder_blocks``, ``decoder_blocks``, ``mlp_ratio``
    apply, ``kernel_size`` is the depthwise kernel). Both take the hop from ``strides``.
    """

    sample_rate: int = 16000
    architecture: str = "seanet"
    width: int = 384
    encoder_blocks: int = 4
    decoder_blocks: int = 8
    mlp_ratio: int = 3
    channels: int = 32
    latent_dim: int = 128
    strides: list = field(default_factory=lambda: [2, 4, 5, 8])
    dilations: list = field(default_factory=lambda: [1, 3, 9])
    kernel_size: int = 7
    residual_kernel_size: int = 3
    norm: str = "weight_norm"
    activation: str = "elu"  # elu (SEANet / EnCodec), leaky_relu (slope 0.1) or silu
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """Build from a recipe dict (with a ``model`` section) or a bare model dict."""
        if "model" in data:
            data = data["model"]
        data = dict(data)
        quant = _from_dict(QuantizerConfig, dict(data.pop("quantizer", {}) or {}), "model.quantizer")
        cfg = _from_dict(cls, data, "model")
        cfg.quantizer = quant
        cfg.validate()
        return cfg

    def to_dict(self) -> dict:
        """A JSON-serialisable dict that ``from_dict`` turns back into an equal config."""
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Raise ConfigError on values no model can be built from."""
        if self.sample_rate <= 0 or self.channels <= 0 or self.latent_dim <= 0:
            raise ConfigError("sample_rate, channels and latent_dim must be positive")
        if not self.strides or any(int(s) < 1 for s in self.strides):
            raise ConfigError("strides must be a non-empty list of positive integers")
        if self.architecture not in ("seanet", "convnext"):
            raise ConfigError(f"architecture must be 'seanet' or 'convnext', not {self.architecture!r}")
        if min(self.width, self.mlp_ratio, self.kernel_size) < 1 or min(self.encoder_blocks, self.decoder_blocks) < 0:
            raise ConfigError("width, mlp_ratio and kernel_size must be positive, block counts non-negative")
        if self.norm not in ("weight_norm", "none"):
            raise ConfigError(f"norm must be 'weight_norm' or 'none', not {self.norm!r}")
        from codec.nn.activations import ACTIVATIONS  # late, like the quantizer kinds below

        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {', '.join(ACTIVATIONS)}, not {self.activation!r}")
        if not 0.0 <= self.quantizer.dropout <= 1.0:
            raise ConfigError("quantizer.dropout must be in [0, 1]")
        stages = self.quantizer.resolved_stages()
        if not stages:
            raise ConfigError("the quantizer needs at least one stage")
        from codec.quant import QUANTIZER_KINDS  # late: codec.quant imports this module's users

        for i, stage in enumerate(stages):
            kind = stage.kind.strip().lower().replace("-", "_")
            if kind not in QUANTIZER_KINDS:
                raise ConfigError(f"quantizer stage {i}: unknown kind {stage.kind!r} "
                                  f"(choose one of {', '.join(QUANTIZER_KINDS)})")
