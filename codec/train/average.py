"""An exponential moving average of a model's weights (the recipe's ``train.weight_average``),
used for validation and for the exported model.

Only the encoder's and the decoder's floating-point parameters are averaged. The quantizer
stack is the live model's, parameters and buffers alike (EMA codebooks, usage windows, restart
counters): a codebook refitted when the warm-up ends or a code restarted must not be blended
with the codewords it replaced, and an average of counters means nothing. ``torch.optim.swa_utils.AveragedModel`` does the averaging
too, but it keeps a deep copy of the whole module and either averages the buffers or leaves
them stale; here the average is a dict of tensors swapped into the live module when needed.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class WeightAverage:
    """avg <- d avg + (1 - d) w after every optimizer step from step ``start`` on, with
    d = min(decay, (1 + n) / (10 + n)) for the n-th averaged step (short runs are not held
    to their first weights); before ``start`` the average is the weights themselves."""

    def __init__(self, module: nn.Module, decay: float, start: int = 0) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"weight average decay must be in (0, 1), got {decay}")
        self.decay, self.start = float(decay), int(start)
        self.shadow = {n: p.detach().float().clone() for n, p in self._params(module)}
        self.updates = 0

    @staticmethod
    def _params(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
        """The averaged parameters: floating point, outside the quantizer stack."""
        return ((n, p) for n, p in module.named_parameters()
                if p.dtype.is_floating_point and not n.startswith("quantizer."))

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        """Fold the weights of ``module`` after optimizer step ``step`` (1-based) into the average."""
        if step <= self.start:
            for n, p in self._params(module):
                self.shadow[n].copy_(p.detach())
            self.updates = 0
            return
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for n, p in self._params(module):
            self.shadow[n].lerp_(p.detach().float(), 1.0 - d)
        self.updates += 1

    @contextlib.contextmanager
    def swapped_in(self, module: nn.Module) -> Iterator[nn.Module]:
        """Within the block ``module`` holds the averaged weights; the live ones come back after
        it (copied in place, so version-keyed caches see the change)."""
        live = {n: p.detach().clone() for n, p in self._params(module)}
        with torch.no_grad():
            for n, p in self._params(module):
                p.copy_(self.shadow[n])
        try:
            yield module
        finally:
            with torch.no_grad():
                for n, p in self._params(module):
                    p.copy_(live[n])

    def state_dict(self) -> dict:
        """What a checkpoint keeps: the averaged tensors and the update count."""
        return {"shadow": self.shadow, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()``'s output (tensors copied onto this average's devices)."""
        for n, t in state["shadow"].items():
            self.shadow[n].copy_(t)
        self.updates = int(state["updates"])
