"""SEANet-style causal encoder and decoder stacks (residual units, strided re-sampling)."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from codec.nn.activations import ACTIVATIONS, make_activation
from codec.nn.conv import CausalConv1d, CausalUpsample


class ResidualUnit(nn.Module):
    """x + conv1x1(act(dilated conv(act(x)))), causal; [B, C, T] -> [B, C, T]."""

    def __init__(self, channels: int, dilation: int, kernel_size: int = 3, norm: str = "weight_norm",
                 activation: str = "elu") -> None:
        super().__init__()
        hidden = max(channels // 2, 1)
        self.block = nn.Sequential(
            make_activation(activation),
            CausalConv1d(channels, hidden, kernel_size, dilation=dilation, norm=norm),
            make_activation(activation, inplace=True),  # its input is a fresh conv output
            CausalConv1d(hidden, channels, 1, norm=norm),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


@dataclass
class SEANetConfig:
    """The SEANet encoder's and decoder's shape (``architecture: seanet``): ``channels`` double
    after each of the ``strides`` (hop = their product), residual units with ``dilations``,
    ``kernel_size`` for the outer convolutions, ``norm`` weight_norm or none, ``activation``
    elu (SEANet / EnCodec), leaky_relu (slope 0.1) or silu."""

    channels: int = 32
    strides: list = field(default_factory=lambda: [2, 4, 5, 8])
    dilations: list = field(default_factory=lambda: [1, 3, 9])
    kernel_size: int = 7
    residual_kernel_size: int = 3
    norm: str = "weight_norm"
    activation: str = "elu"

    def validate(self) -> None:
        """ValueError on a shape no network can be built with."""
        if self.channels <= 0:
            raise ValueError("channels must be positive")
        if self.norm not in ("weight_norm", "none"):
            raise ValueError(f"norm must be 'weight_norm' or 'none', not {self.norm!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, not {self.activation!r}")


class Encoder(nn.Module):
    """Waveform float [B, 1, T] (T a multiple of prod(strides)) -> latents [B, latent_dim, T / hop].

    Channels double after every down-sampling step; strides are applied in the given order.
    """

    def __init__(self, cfg: SEANetConfig, latent_dim: int) -> None:
        super().__init__()
        channels, strides, dilations, norm, activation = cfg.channels, cfg.strides, cfg.dilations, cfg.norm, cfg.activation
        kernel_size, residual_kernel_size = cfg.kernel_size, cfg.residual_kernel_size
        layers: list[nn.Module] = [CausalConv1d(1, channels, kernel_size, norm=norm)]
        ch = channels
        for s in strides:
            layers += [ResidualUnit(ch, d, residual_kernel_size, norm, activation) for d in dilations]
            layers += [make_activation(activation), CausalConv1d(ch, ch * 2, 2 * s, stride=s, norm=norm)]
            ch *= 2
        layers += [make_activation(activation), CausalConv1d(ch, latent_dim, 3, norm=norm)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """Latents float [B, latent_dim, F] -> waveform [B, 1, F * hop]; mirror of the Encoder."""

    def __init__(self, cfg: SEANetConfig, latent_dim: int) -> None:
        super().__init__()
        channels, strides, dilations, norm, activation = cfg.channels, cfg.strides, cfg.dilations, cfg.norm, cfg.activation
        kernel_size, residual_kernel_size = cfg.kernel_size, cfg.residual_kernel_size
        ch = channels * 2 ** len(strides)
        layers: list[nn.Module] = [CausalConv1d(latent_dim, ch, kernel_size, norm=norm)]
        for s in reversed(strides):
            layers += [make_activation(activation), CausalUpsample(ch, ch // 2, s, norm=norm)]
            ch //= 2
            layers += [ResidualUnit(ch, d, residual_kernel_size, norm, activation) for d in dilations]
        layers += [make_activation(activation), CausalConv1d(ch, 1, kernel_size, norm=norm)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)
