"""One optimizer step of the codec: what the training loop runs and the benchmark times."""
from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from codec.model import Codec
from codec.nn.stft import SynthesisSpectra
from codec.train.losses import CodecLoss


class TrainStep(nn.Module):
    """What DDP wraps: the codec's training forward (its quantizer always runs in fp32, see
    Codec.forward). forward: audio float [B, 1, T] -> (reconstruction float [B, 1, T],
    quantizer loss scalar, CodecOutput.spectra: the synthesis spectra and their targets when
    ``spectra`` and the decoder has them, else None)."""

    def __init__(self, codec: Codec) -> None:
        super().__init__()
        self.codec = codec

    def forward(self, wav: Tensor, quantize: bool = True,
                spectra: bool = False) -> tuple[Tensor, Tensor, SynthesisSpectra | None]:
        out = self.codec(wav, quantize=quantize, spectra=spectra)
        return out.audio.float(), out.quantizer_loss.float(), out.spectra


def train_step(module: nn.Module, loss_fn: CodecLoss, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, micro_batches: Sequence[Tensor],
               clip_grad_norm: float, seeds: Sequence[int] | None = None,
               accelerator=None, quantize: bool = True) -> tuple[dict[str, Tensor], float]:
    """Forward, loss and backward of each micro-batch (audio float [B, 1, T]; gradients
    accumulate, averaged over them; under DDP only the last one synchronises), then gradient
    clipping, the optimizer step and the scheduler step.

    ``seeds[i]`` reseeds torch's global RNG (quantizer dropout, DiVeQ noise) before micro-batch
    i; ``clip_grad_norm`` 0 clips nothing (the norm is still computed); ``accelerator``: the
    run's accelerate.Accelerator (None: one plain process); ``quantize`` False: the quantizer
    is bypassed (``Codec.forward``), as in a quantizer warm-up. Returns ({"loss": the weighted
    total, and each term CodecLoss reports}, every value detached and summed over the
    micro-batches; the gradient norm before clipping).
    """
    accum = len(micro_batches)
    backward = accelerator.backward if accelerator is not None else Tensor.backward
    totals: dict[str, Tensor] = {}
    for i, wav in enumerate(micro_batches):
        if seeds is not None:
            torch.manual_seed(seeds[i])
        last = i == accum - 1
        with accelerator.no_sync(module) if accelerator is not None and not last else contextlib.nullcontext():
            pred, q_loss, spectra = module(wav, quantize, loss_fn.wants_spectra)
            loss, parts = loss_fn(pred, wav, q_loss, spectra)
            backward(loss / accum)
        for name, value in {"loss": loss, **parts}.items():
            totals[name] = totals[name] + value.detach().float() if name in totals else value.detach().float()
    clip = accelerator.clip_grad_norm_ if accelerator is not None else nn.utils.clip_grad_norm_
    grad_norm = float(clip(module.parameters(), clip_grad_norm or math.inf))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return totals, grad_norm
