"""Frame-rate ConvNeXt encoder and decoder around a causal STFT (Vocos-style synthesis).

Encoder: waveform -> CausalSTFT features (log-magnitude and phase of 2-hop windows) ->
Linear -> causal ConvNeXt blocks -> LayerNorm -> Linear -> latents [B, D, F].
Decoder: latents -> causal conv (kernel 3) -> causal ConvNeXt blocks -> LayerNorm -> Linear
-> log-magnitude and phase per frame -> CausalISTFT -> waveform.

Every layer after the STFT runs at the frame rate (50 Hz), so the work is a few large
matrix products per frame instead of many thin convolutions at 16 kHz; the only layers
that look at other frames are the depthwise causal convolutions, which stream with the
same bounded buffers as every CausalConv1d. Inputs may be float64 (the exact encode path):
parameters are cast to the input's dtype on the fly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from codec.nn.conv import CausalConv1d
from codec.nn.frame_linear import linear
from codec.nn.stft import HEADS, CausalISTFT, CausalSTFT

#: Initial value of every block's per-channel residual scale: blocks start close to identity.
LAYER_SCALE_INIT = 0.1


def layer_norm(layer: nn.LayerNorm, x: Tensor) -> Tensor:
    """``layer`` (over the last dimension) applied to x in x's dtype."""
    return F.layer_norm(x, layer.normalized_shape, layer.weight.to(x.dtype), layer.bias.to(x.dtype), layer.eps)


class ConvNeXtBlock(nn.Module):
    """x + gamma * W2 gelu(W1 LayerNorm(causal depthwise conv(x))), float [B, C, F] -> [B, C, F]."""

    def __init__(self, channels: int, kernel_size: int = 7, mlp_ratio: int = 3) -> None:
        super().__init__()
        self.dwconv = CausalConv1d(channels, channels, kernel_size, groups=channels, norm="none")
        self.norm = nn.LayerNorm(channels)
        self.fc1 = nn.Linear(channels, mlp_ratio * channels)
        self.fc2 = nn.Linear(mlp_ratio * channels, channels)
        self.gamma = nn.Parameter(torch.full((channels,), LAYER_SCALE_INIT))

    def forward(self, x: Tensor) -> Tensor:
        h = self.dwconv(x).transpose(1, 2)  # [B, F, C]
        h = linear(self.fc2, F.gelu(linear(self.fc1, layer_norm(self.norm, h))))
        return x + (h * self.gamma.to(h.dtype)).transpose(1, 2)


@dataclass
class ConvNeXtConfig:
    """The frame-rate ConvNeXt codec's shape (``architecture: convnext``): ``width`` channels,
    ``encoder_blocks`` and ``decoder_blocks`` ConvNeXt blocks with depthwise kernels of
    ``kernel_size`` frames and MLPs of ``mlp_ratio`` x width; the hop is the product of
    ``strides`` (one STFT hop per frame)."""

    width: int = 384
    encoder_blocks: int = 4
    decoder_blocks: int = 8
    mlp_ratio: int = 3
    kernel_size: int = 7
    strides: list = field(default_factory=lambda: [2, 4, 5, 8])
    subframes: int = 1  # STFT frames per token (analysis and synthesis), at a sub-hop of hop / subframes
    stft_window: int = 0  # STFT window in samples; 0: two sub-hops (50% overlap)
    head: str = "logmag_phase"  # synthesis head (codec.nn.stft.HEADS): logmag_phase, complex or logmag_atan2
    synthesis_delay: bool = False  # sub-frames end at their sub-block (+ window - sub hop latency)

    #: Fields added after config.json files existed: written only when not at their defaults,
    #: so the files (and the fingerprints of the models they describe) stay as they were.
    LATER_FIELDS = ("subframes", "stft_window", "head", "synthesis_delay")

    @property
    def hop(self) -> int:
        return int(math.prod(self.strides))

    @property
    def window(self) -> int:
        """The STFT window in samples."""
        return self.stft_window or 2 * (self.hop // max(1, self.subframes))

    def validate(self) -> None:
        """ValueError on a shape no network can be built with."""
        if min(self.width, self.mlp_ratio, self.kernel_size) < 1 or min(self.encoder_blocks, self.decoder_blocks) < 0:
            raise ValueError("width, mlp_ratio and kernel_size must be positive, block counts non-negative")
        if self.subframes < 1 or self.hop % self.subframes:
            raise ValueError(f"subframes must divide the hop {self.hop}, got {self.subframes}")
        sub_hop = self.hop // self.subframes
        if self.window % sub_hop or self.window < 2 * sub_hop:
            raise ValueError(f"stft_window must be a multiple of the sub-hop {sub_hop} and at least two of them")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, not {self.head!r}")


class ConvNeXtEncoder(nn.Module):
    """Waveform float [B, 1, T] (T a multiple of hop) -> latents [B, latent_dim, T / hop]."""

    def __init__(self, cfg: ConvNeXtConfig, latent_dim: int) -> None:
        super().__init__()
        width, mlp_ratio, kernel_size = cfg.width, cfg.mlp_ratio, cfg.kernel_size
        self.stft = CausalSTFT(cfg.hop, cfg.subframes, cfg.window)
        self.inp = nn.Linear(self.stft.features, width)
        self.blocks = nn.Sequential(*[ConvNeXtBlock(width, kernel_size, mlp_ratio) for _ in range(cfg.encoder_blocks)])
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, latent_dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.blocks(linear(self.inp, self.stft(x)).transpose(1, 2)).transpose(1, 2)
        return linear(self.out, layer_norm(self.norm, h)).transpose(1, 2)


class ConvNeXtDecoder(nn.Module):
    """Latents float [B, latent_dim, F] -> waveform [B, 1, F * hop]."""

    def __init__(self, cfg: ConvNeXtConfig, latent_dim: int) -> None:
        super().__init__()
        width, mlp_ratio, kernel_size = cfg.width, cfg.mlp_ratio, cfg.kernel_size
        self.inp = CausalConv1d(latent_dim, width, 3, norm="none")
        self.blocks = nn.Sequential(*[ConvNeXtBlock(width, kernel_size, mlp_ratio) for _ in range(cfg.decoder_blocks)])
        self.norm = nn.LayerNorm(width)
        self.istft = CausalISTFT(cfg.hop, cfg.subframes, cfg.window, cfg.head, cfg.synthesis_delay)
        self.head = nn.Linear(width, self.istft.outputs)

    def forward(self, z: Tensor) -> Tensor:
        return self.istft(self.head_outputs(z))

    def head_outputs(self, z: Tensor) -> Tensor:
        """Latents [B, latent_dim, F] -> the head's outputs [B, F, istft.outputs]."""
        h = self.blocks(self.inp(z)).transpose(1, 2)
        return linear(self.head, layer_norm(self.norm, h))

    def forward_with_spectra(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Latents [B, latent_dim, F] -> (waveform [B, 1, F hop], the synthesised sub-frames'
        spectra complex [B, F subframes, bins]), for losses on the spectra themselves."""
        spec = self.istft.spectra(self.head_outputs(z))
        return self.istft(None, spec), spec
