"""The model's configuration: a recipe's ``model`` section as a typed dataclass (the ``train``
section belongs to the training loop, ``codec.train.config``)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from codec.nn.convnext import ConvNeXtConfig, ConvNeXtDecoder, ConvNeXtEncoder
from codec.nn.seanet import Decoder, Encoder, SEANetConfig
from codec.quant.config import QuantizerConfig
from codec.recipe import ConfigError, build_dataclass

#: architecture -> (its config class, encoder class, decoder class). Each network is built as
#: ``cls(config, latent_dim)``; the config's fields (the constructors' schema) are read from
#: the ModelConfig fields of the same names.
ARCHITECTURES: dict[str, tuple[type, type, type]] = {
    "seanet": (SEANetConfig, Encoder, Decoder),
    "convnext": (ConvNeXtConfig, ConvNeXtEncoder, ConvNeXtDecoder),
}


@dataclass
class ModelConfig(SEANetConfig, ConvNeXtConfig):
    """The whole codec: audio format, encoder/decoder shape and the residual quantizer.

    ``architecture`` picks the encoder/decoder family from ARCHITECTURES: ``seanet`` (causal
    strided convs at the sample rate, ``SEANetConfig``) or ``convnext`` (causal STFT, ConvNeXt
    blocks at the frame rate and an inverse-STFT head, ``ConvNeXtConfig``); both take the hop
    from ``strides``. The architectures' fields are inherited from their config classes (the
    one place that defines them and their defaults) and kept flat beside these, so that
    recipes, config.json files and model fingerprints stay as they were;
    ``architecture_config()`` gives the chosen architecture's own config.
    """

    sample_rate: int = 16000
    architecture: str = "seanet"
    latent_dim: int = 128
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
        """A JSON-serialisable dict that ``from_dict`` turns back into an equal config (fields
        added to a format later, ``LATER_FIELDS``, only when they are not at their defaults)."""
        out = dataclasses.asdict(self)
        defaults = type(self)()
        for cls in type(self).__mro__:
            for name in getattr(cls, "LATER_FIELDS", ()):
                if out.get(name) == getattr(defaults, name):
                    out.pop(name, None)
        return out

    def architecture_config(self):
        """The chosen architecture's config (``SEANetConfig`` or ``ConvNeXtConfig``)."""
        cls = ARCHITECTURES[self.architecture][0]
        return cls(**{f.name: getattr(self, f.name) for f in dataclasses.fields(cls)})

    def validate(self) -> None:
        """Raise ConfigError on values no model can be built from."""
        if self.sample_rate <= 0 or self.latent_dim <= 0:
            raise ConfigError("sample_rate and latent_dim must be positive")
        if not self.strides or any(int(s) < 1 for s in self.strides):
            raise ConfigError("strides must be a non-empty list of positive integers")
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"architecture must be one of {', '.join(ARCHITECTURES)}, not {self.architecture!r}")
        try:
            self.architecture_config().validate()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.quantizer.validate()
