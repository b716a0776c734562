"""The model's configuration: a recipe's ``model`` section as a typed dataclass (the ``train``
section belongs to the training loop, ``codec.train.config``)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from codec.nn.activations import ACTIVATIONS
from codec.quant.config import QuantizerConfig
from codec.recipe import ConfigError, build_dataclass


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
        cfg = build_dataclass(cls, {**data, "quantizer": data.get("quantizer") or {}}, "model")
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
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {', '.join(ACTIVATIONS)}, not {self.activation!r}")
        self.quantizer.validate()
