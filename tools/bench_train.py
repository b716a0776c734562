#!/usr/bin/env python
"""Training speed of the codec on the CPU: one optimizer step of a recipe.

    python tools/bench_train.py --recipe recipes/speech16k.yaml   # all threads by default
    python tools/bench_train.py --quick                           # a smoke run
    python tools/bench_train.py --json out.json                   # also write every number as JSON

Measures one step of the training loop's own ``train_step`` and ``CodecLoss`` (forward,
losses, backward, AdamW) on random audio, float32, and the same step under bf16 autocast,
the two kinds alternating so that a drift of the host's speed hits both alike (medians of
``--repeats``); the step's parts (each forward pass, each loss term's forward and backward);
and the FLOP limit: about 3 forward passes per step at the float32 matrix-product peak this
process reaches. Batch and crop from the recipe unless ``--batch`` / ``--crop``. Shared
conventions: ``tools/bench_common.py``.
"""
from __future__ import annotations

import argparse
import os
import statistics

import bench_common as common
import torch

from codec import Codec


def train_step_time(recipe: str, repeats: int, warmup: int, batch: int | None, crop: float | None) -> dict[str, float]:
    """One optimizer step (forward, losses, backward, AdamW) on random audio, fp32 on the CPU:
    the training loop's own ``train_step`` and ``CodecLoss``, one process, one micro-batch; and
    the same step under bf16 autocast (``train.mixed_precision: bf16``: the model's layers in
    bfloat16, the losses and the quantizer in float32), "bf16_step_s" / "bf16_audio_s_per_s";
    the two kinds of step alternate, medians of ``repeats`` each."""
    from codec.train.config import load_training_recipe
    from codec.train.losses import CodecLoss
    from codec.train.optim import build_optimizer
    from codec.train.step import TrainStep, train_step

    _, model_cfg, cfg = load_training_recipe(recipe)
    batch = batch or cfg.batch_size
    crop = crop or cfg.data.crop_seconds
    torch.manual_seed(0)
    codec = Codec(model_cfg).train()
    step = TrainStep(codec)
    opt, sched = build_optimizer(step, cfg)
    loss_fn = CodecLoss(codec.sample_rate, cfg.loss)
    wav = 0.1 * torch.randn(batch, 1, int(crop * codec.sample_rate))

    def one() -> None:
        train_step(step, loss_fn, opt, sched, [wav], cfg.clip_grad_norm)

    def one_bf16() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            one()

    # fp32 and bf16 steps alternate, so that a drift of the host's speed hits both alike
    for _ in range(warmup):
        one()
        one_bf16()
    pairs = [(common.timeit(one, 1, 0), common.timeit(one_bf16, 1, 0)) for _ in range(max(1, repeats))]
    t, t_bf16 = (statistics.median(p[i] for p in pairs) for i in (0, 1))
    parts = train_step_parts(codec, loss_fn, wav, repeats, warmup)
    parts["backward and optimizer (the rest)"] = max(0.0, t - sum(parts.values()))
    # The FLOP limit: a training step costs about 3 forward passes (the backward two), 2 FLOPs
    # per multiply-add, at the float32 matrix-product peak this process reaches.
    macs = sum(common.our_macs(codec.eval()).values())
    codec.train()
    peak = matmul_peak_flops(repeats, warmup)
    limit = peak / (3 * 2 * macs)
    return {"step_s": t, "batch": batch, "crop_s": crop, "audio_s_per_s": batch * crop / t, "parts": parts,
            "bf16_step_s": t_bf16, "bf16_audio_s_per_s": batch * crop / t_bf16,
            "forward_macs_per_audio_s": macs, "peak_gflops": peak / 1e9, "flop_limit_audio_s_per_s": limit}


def matmul_peak_flops(repeats: int, warmup: int, n: int = 1024) -> float:
    """FLOP/s of a float32 n x n matrix product at the current thread count (the machine's
    practical peak for the dense layers)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / common.timeit(lambda: a @ b, max(3, repeats), warmup)


def train_step_parts(codec: Codec, loss_fn, wav: torch.Tensor, repeats: int, warmup: int) -> dict[str, float]:
    """Seconds per training step spent in: the encoder, quantizer and decoder forward passes
    (training mode, without building the autograd graph, whose cost the remainder of the step
    carries; the quantizer's EMA statistics move as in a step) and each loss term's forward and
    backward (on a detached reconstruction, so the model's own backward is not counted twice)."""
    out: dict[str, float] = {}
    with torch.no_grad():
        out["encoder forward"] = common.timeit(lambda: codec.encoder(wav), repeats, warmup)
        z = codec.encoder(wav)
        out["quantizer forward (search, EMA, restarts, statistics)"] = common.timeit(lambda: codec.quantizer(z), repeats, warmup)
        out["decoder forward"] = common.timeit(lambda: codec.decoder(z), repeats, warmup)
        res = codec(wav, spectra=loss_fn.wants_spectra)
    pred = res.audio.detach()
    for name in loss_fn.reported(with_quantizer=False):
        def term(name: str = name) -> None:
            p = pred.clone().requires_grad_(True)
            spectra = None
            if res.spectra is not None:
                spec = res.spectra.predicted.detach().clone().requires_grad_(True)
                spectra = type(res.spectra)(spec, res.spectra.target, p, res.spectra.grid)
            single = {k: (v if k == name else 0.0) for k, v in loss_fn.weights.items()}
            saved, loss_fn.weights = loss_fn.weights, single
            try:
                loss_fn(p, wav, None, spectra)[0].backward()
            finally:
                loss_fn.weights = saved
        out[f"loss {name} (forward + backward)"] = common.timeit(term, repeats, warmup)
    return out


def run(args: argparse.Namespace) -> dict:
    """The step's measurements (module docstring) at each ``--threads`` count's last entry
    (torch's thread count restored after)."""
    threads = torch.get_num_threads()
    res = common.machine(args)
    try:
        res["threads"] = common.set_threads(args.threads.split(",")[-1])
        res["train"] = train_step_time(args.recipe, args.repeats, args.warmup, args.batch, args.crop)
    finally:
        torch.set_num_threads(threads)
    res["load_after"] = os.getloadavg()
    return res


def markdown(res: dict) -> str:
    """The step time, its FLOP limit and bf16 time as a sentence, then a table of its parts."""
    t = res["train"]
    lines = [common.conditions(res), "",
             (f"Training step on the CPU ({res['threads']} threads, batch {t['batch']} x {t['crop_s']:g} s): "
              f"{t['step_s']:.2f} s, {t['audio_s_per_s']:.2f} s of audio per second "
              f"({t['audio_s_per_s'] / t['flop_limit_audio_s_per_s']:.2f} of the FLOP limit, "
              f"{t['flop_limit_audio_s_per_s']:.0f} s/s: 3 x {t['forward_macs_per_audio_s'] / 1e6:.0f} M multiply-adds "
              f"per second of audio at the {t['peak_gflops']:.0f} GFLOP/s of a 1024^2 float32 matmul); "
              f"under bf16 autocast (`train.mixed_precision: bf16`) {t['bf16_step_s']:.2f} s, "
              f"{t['bf16_audio_s_per_s']:.2f} s/s. GPU: not measured."), "",
             "| part of the training step | seconds | share |", "| --- | ---: | ---: |"]
    lines += [f"| {k} | {v:.3f} | {100 * v / t['step_s']:.0f}% |" for k, v in t["parts"].items()]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = common.parser(__doc__.split("\n")[0], threads=common.ALL)
    p.add_argument("--batch", type=int, default=None, help="crops per step (default: the recipe's)")
    p.add_argument("--crop", type=float, default=None, help="crop seconds (default: the recipe's)")
    args = common.quick(p.parse_args(argv))
    if args.quick:
        args.batch, args.crop = 2, 0.2
    return args


def main(argv: list[str] | None = None) -> dict:
    return common.measure(parse_args(argv), run, markdown)


if __name__ == "__main__":
    main()
