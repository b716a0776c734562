"""AdamW with a linear warm-up and a cosine decay."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from codec.train.config import TrainConfig
from codec.train.schedule import LR_PARTS, Schedule, parse_schedules


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak lr after ``step`` optimizer updates: linear 0 -> 1 over
    ``warmup`` steps, then cosine 1 -> ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _adamw(groups: list[dict], lr: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW over ``groups``: its fused kernel where this torch and these parameters take it
    (one pass over all parameters: about 3x faster than the per-tensor loop on a 2-core CPU,
    same update up to float rounding), else the per-tensor loop. Nothing reads the parameters'
    version counters (which the fused kernel leaves alone): inference snapshots them instead
    (``Codec.streamer``)."""
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
    except (RuntimeError, TypeError, ValueError):  # older torch, or parameters it cannot fuse
        return torch.optim.AdamW(groups, lr=lr, betas=betas)


def part_of(name: str) -> str:
    """The model part (``LR_PARTS``) a parameter name of TrainStep or Codec belongs to."""
    for part in LR_PARTS:
        if name.startswith((f"{part}.", f"codec.{part}.")):
            return part
    raise ValueError(f"parameter {name!r} belongs to no part of {LR_PARTS}")


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over ``model``'s parameters (TrainStep or Codec) and its LambdaLR schedule: the
    warm-up and cosine of ``lr_factor`` (to its floor at ``train.lr_decay_steps``, else at
    ``total_steps``) times, per part, the ``lr.<part>`` schedule of ``train.schedules`` (1
    without one).

    Weight decay applies to conv / linear weights only: decaying biases, weight-norm gains or
    codebooks (which the quantizers keep at the scale of the latents) only hurts. Parameter
    groups: one per part and decay setting that has parameters, each with a "part" key.
    """
    buckets: dict[tuple[str, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # quantizer.stages.<i>.quantizer.* is a stage's codebook (not its projections)
        is_codebook = "quantizer.stages." in name and ".quantizer." in name.split("stages.", 1)[1]
        decays = not (p.dim() < 2 or is_codebook)
        buckets.setdefault((part_of(name), decays), []).append(p)
    groups = [{"params": params, "weight_decay": cfg.weight_decay if decays else 0.0, "part": part}
              for (part, decays), params in buckets.items()]
    opt = _adamw(groups, cfg.lr, tuple(cfg.betas))
    warmup, total, floor = cfg.warmup_steps, cfg.cosine_end, cfg.min_lr_ratio
    schedules = parse_schedules(cfg.schedules)
    one = Schedule.constant(1.0)

    def factor(part: str) -> Callable[[int], float]:
        scale = schedules.get(f"lr.{part}", one)
        return lambda s: lr_factor(s, warmup, total, floor) * scale(s)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, [factor(g["part"]) for g in opt.param_groups])
    return opt, sched
