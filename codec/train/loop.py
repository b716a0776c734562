"""The training loop on accelerate: one process (``codec train``) or many (``accelerate launch
-m codec train``). ``train`` reads top to bottom: ``setup`` (recipe, data, model, optimizer,
resume), then per step ``train_step`` (codec/train/step.py), ``log_train``, ``run_validation``
and ``checkpoint``, and at the end ``export``. Test hooks come in as ``Callback`` objects.

Determinism: the batch of micro-step k on rank r is a pure function of (seed, k, r)
(data.CropBatches), and the global torch RNG (quantizer dropout, DiVeQ noise) is reseeded
from (seed, k, r) before every micro-step, so a resumed run repeats an uninterrupted one
exactly on CPU. Ranks start from identical weights (same seed) and the quantizers keep their
non-Parameter state identical themselves, so DDP's per-step buffer broadcast is switched off.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator, DistributedDataParallelKwargs
from torch import Tensor, nn
from torch.utils.data import DataLoader

from codec.config import ModelConfig
from codec.model import Codec
from codec.quant.distributed import broadcast_from_rank0
from codec.quant.refit import fit_codebooks
from codec.train import checkpoint as ckpt
from codec.train.average import WeightAverage
from codec.train.config import ConfigError, TrainConfig, load_training_recipe
from codec.train.data import CropBatches, DataError, DeviceCrops, utterances_from, validation_set
from codec.train.logging import LOSS_NAMES, CSVLog, stage_columns
from codec.train.losses import CodecLoss
from codec.train.optim import build_optimizer
from codec.train.schedule import Schedule, parse_schedules
from codec.train.step import TrainStep, train_step
from codec.train.validate import validate


@dataclass
class RunResult:
    """What ``train`` leaves behind: the output folder, the exported model and the last step."""

    out_dir: Path
    model_dir: Path
    step: int


class Callback:
    """Hooks into a run (tests use them); every method does nothing by default."""

    def during_checkpoint(self, step: int) -> None:
        """The checkpoint of ``step`` is written but not yet renamed into place (main rank)."""

    def after_checkpoint(self, step: int) -> None:
        """The checkpoint of ``step`` is complete."""

    def at_end(self, codec: Codec, rank: int, items: list[str]) -> None:
        """Training ended; ``items``: the ids of the utterances this rank trained on."""


@dataclass
class Run:
    """Everything ``setup`` prepared for the loop."""

    cfg: TrainConfig
    out: Path
    accelerator: Accelerator
    module: nn.Module  # TrainStep, prepared (DDP-wrapped with many processes)
    codec: Codec
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    loss_fn: CodecLoss
    valid: list
    batches: CropBatches
    start: int  # the step the run continues from (0: fresh)
    log: CSVLog | None  # main process only
    schedules: dict[str, Schedule] = field(default_factory=dict)  # train.schedules
    average: WeightAverage | None = None  # train.weight_average
    items_seen: list[str] = field(default_factory=list)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


def cpu_has_amx_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU has AMX bfloat16 tiles (the ``amx_bf16`` flag of Linux's ``cpuinfo``;
    False where the file is missing): there oneDNN runs bfloat16 matrix products on the tiles,
    faster than float32 ones (measured in docs/performance.md)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    return any(line.startswith("flags") and "amx_bf16" in line.split() for line in text.splitlines())


def _mixed_precision(setting: str) -> str:
    """'auto' -> what `accelerate launch --mixed_precision` chose, else bf16 on a GPU that
    supports it, bf16 on a CPU with AMX bfloat16 tiles (a 500-step check matched float32's
    validation loss: docs/performance.md), else fp32 ('no')."""
    if setting != "auto":
        return setting
    if os.environ.get("ACCELERATE_MIXED_PRECISION"):
        return os.environ["ACCELERATE_MIXED_PRECISION"]
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16" if cpu_has_amx_bf16() else "no"


def _step_seed(seed: int, k: int, rank: int) -> int:
    return (seed * 1_000_003 + k) * 4099 + rank


def _make_trackers() -> list[str]:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return []
    return ["tensorboard"]


def network_fields(cfg: ModelConfig) -> dict:
    """The configuration the encoder and decoder are built from: the audio format, the
    architecture, the latent size and that architecture's own fields (a field only the other
    architecture reads, such as SEANet's ``channels`` in a ConvNeXt model, is left out)."""
    return {"sample_rate": cfg.sample_rate, "architecture": cfg.architecture, "latent_dim": cfg.latent_dim,
            **dataclasses.asdict(cfg.architecture_config())}


def initialise_from(codec: Codec, source: str, parts: list[str] | tuple[str, ...] = ("encoder", "decoder", "quantizer")
                    ) -> list[str]:
    """Copy a saved model's weights (``Codec.from_pretrained``: a directory or a shipped name)
    into ``codec``, a fresh run's model: those of ``parts`` (train.init_parts) among the
    encoder, the decoder and the quantizer stack, the stack only when its configuration is the
    same (else it starts fresh, for a run that trains another quantizer on a trained encoder
    and decoder; leaving it out of ``parts`` starts even the same kind afresh). Returns the
    parts copied. ConfigError if the source cannot be loaded or its encoder / decoder
    configuration differs."""
    try:
        src = Codec.from_pretrained(source)
    except Exception as exc:  # noqa: BLE001 - any failure to load (safetensors has its own errors) is one line
        raise ConfigError(f"train.init_from: {exc}") from None
    same_quantizer = codec.config["quantizer"] == src.config["quantizer"]
    ours, theirs = network_fields(codec.cfg), network_fields(src.cfg)
    differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    if differ:
        raise ConfigError(f"train.init_from {source}: its model differs from the recipe's in "
                          + ", ".join(f"{k} ({theirs.get(k)!r} vs {ours.get(k)!r})" for k in differ[:3]))
    copied = [p for p in ("encoder", "decoder", "quantizer") if p in parts and (p != "quantizer" or same_quantizer)]
    for part in copied:
        getattr(codec, part).load_state_dict(getattr(src, part).state_dict())
    return copied


def setup(recipe: str | Path, overrides: list[str] | None, out_dir: str | Path | None, resume: bool) -> Run:
    """Read the recipe, check the data, build the model, optimizer and schedule, and resume
    from the newest complete checkpoint when asked. Raises ConfigError / DataError before
    anything heavy happens."""
    recipe_dict, model_cfg, cfg = load_training_recipe(recipe, overrides)
    # accelerate >= 1.x deprecates broadcast_buffers in favour of forward_sync_buffers, but says
    # itself to keep it when buffers must not be re-broadcast every step, which is our case.
    warnings.filterwarnings("ignore", message=".*broadcast_buffers.*is deprecated", category=FutureWarning)
    out = Path(out_dir or cfg.out_dir)
    cfg.out_dir = str(out)
    accelerator = Accelerator(
        mixed_precision=_mixed_precision(cfg.mixed_precision),
        log_with=_make_trackers() or None,
        project_dir=str(out),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True, broadcast_buffers=False)],
    )
    main, rank, world = accelerator.is_main_process, accelerator.process_index, accelerator.num_processes
    latest = ckpt.latest_checkpoint(out)
    if latest is not None and not resume:
        raise ConfigError(f"{out} already holds checkpoints; pass --resume to continue or choose another --out-dir")

    root = cfg.data_root()
    train_utts = utterances_from(cfg.data.train_manifest, root, cfg.data.train_subsets)
    valid_utts = utterances_from(cfg.data.valid_manifest, root, cfg.data.valid_subsets)
    valid = validation_set(valid_utts, {u.speaker for u in train_utts}, cfg.data.valid_utterances,
                           model_cfg.sample_rate, cfg.data.valid_seconds)

    accelerator.wait_for_everyone()  # every rank has looked before the main one cleans up
    if main:
        out.mkdir(parents=True, exist_ok=True)
        ckpt.remove_partial(out)
        (out / "recipe.yaml").write_text(yaml.safe_dump(recipe_dict, sort_keys=False))

    torch.manual_seed(cfg.seed)  # identical initial weights and buffers on every rank
    try:
        codec = Codec(model_cfg)
    except (TypeError, ValueError) as exc:  # e.g. an unknown quantizer kind or option in the recipe
        raise ConfigError(f"recipe {recipe}: cannot build the model: {exc}") from None
    if cfg.init_from and not (resume and latest is not None):
        parts = initialise_from(codec, cfg.init_from, cfg.init_parts)
        if main:
            print(f"codec: starting from the {' and '.join(parts)} of {cfg.init_from}", file=sys.stderr)
    module = TrainStep(codec)
    optimizer, scheduler = build_optimizer(module, cfg)
    module, optimizer = accelerator.prepare(module, optimizer)
    # Not prepared: accelerate would step it once per process; our steps are optimizer updates.
    accelerator.register_for_checkpointing(scheduler)
    codec = accelerator.unwrap_model(module).codec
    loss_fn = CodecLoss(codec.sample_rate, cfg.loss).to(accelerator.device)
    average = WeightAverage(codec, cfg.weight_average, cfg.weight_average_start) if cfg.weight_average else None
    if average is not None:
        accelerator.register_for_checkpointing(average)

    start = 0
    if resume and latest is not None:
        start = int(ckpt.load_checkpoint(accelerator, latest[1])["step"])
        if main:  # printed even with --quiet: which step a run continues from matters
            print(f"codec: resuming from {latest[1]} (step {start})", file=sys.stderr)
    if main:
        accelerator.init_trackers("tensorboard")
    log = CSVLog(out / "log.csv", codec.num_stages, resume_step=start if resume else None) if main else None
    schedules = parse_schedules(cfg.schedules)
    tones = schedules.get("data.tone_fraction", Schedule.constant(cfg.data.tone_fraction))
    rumble = schedules.get("data.rumble_fraction", Schedule.constant(cfg.data.rumble_fraction))
    crops = (train_utts, codec.sample_rate, cfg.data.crop_seconds, cfg.batch_size, cfg.seed, rank, world,
             cfg.data.gain_db, tones, cfg.data.tone_grid_hz, cfg.grad_accum)
    # on_device: the same crops, cut from the audio held on the device
    batches = (DeviceCrops(*crops, device=accelerator.device, rumble_fraction=rumble) if cfg.data.on_device
               else CropBatches(*crops, rumble_fraction=rumble))
    return Run(cfg, out, accelerator, module, codec, optimizer, scheduler, loss_fn, valid, batches, start, log,
               schedules, average)


def apply_schedules(run: Run, step: int) -> None:
    """Set the loss weights and the quantizer dropout that ``train.schedules`` gives for the
    coming optimizer step (``step`` steps done). The lr multipliers live in the optimizer's
    LambdaLR and the tone and rumble fractions in CropBatches, all keyed on the same count."""
    for name, sched in run.schedules.items():
        kind, _, key = name.partition(".")
        if kind == "loss":
            run.loss_fn.weights[key] = sched(step)
        elif name == "quantizer.dropout":
            run.codec.quantizer.dropout = sched(step)


@torch.no_grad()
def fit_quantizer(run: Run) -> None:
    """The end of the quantizer warm-up (``train.quantizer_fit_batches``): k-means of every
    stored codebook, stage by stage (``fit_codebooks``), on the encoder's latents of the first
    ``quantizer_fit_batches`` micro-batches of rank 0; every rank then takes rank 0's stack.
    A pure function of the weights and the seed, so a resumed run repeats it exactly."""
    codec, device = run.codec, run.accelerator.device
    if run.main:
        was_training = codec.training
        codec.eval()
        rows = []
        for k in range(run.cfg.quantizer_fit_batches):
            z = codec.encoder(codec._pad(run.batches[k]["audio"].to(device))).float()  # [B, D, F]
            rows.append(z.transpose(1, 2).reshape(-1, z.shape[1]))
        codec.train(was_training)
        report = fit_codebooks(codec.quantizer, torch.cat(rows), seed=run.cfg.seed)
        used = ", ".join(str(r.used_after) for r in report)
        print(f"codec: quantizer fitted on {sum(len(r) for r in rows)} latents; codes used per stage: {used}",
              file=sys.stderr)
    with torch.no_grad():  # the tensors themselves, so their version counters move on every rank
        for t in [*codec.quantizer.parameters(), *codec.quantizer.buffers()]:
            broadcast_from_rank0(t)


def log_train(run: Run, step: int, means: Tensor, grad_norm: float, audio_s_per_s: float, bar) -> None:
    """One train row (main process): the mean losses since the last row (the logged terms),
    lr, gradient norm, throughput and each stage's window statistics."""
    stats = [{"perplexity": s["window_perplexity"], "utilisation": s["window_utilisation"],
              "dead_codes": s["dead_codes"], "norm_spread": s["norm_spread"],
              "effective_rank": s["effective_rank"]} for s in run.codec.quantizer.statistics()]
    logged = {"loss", *run.loss_fn.reported(with_quantizer=True)}
    row = {**{n: float(v) for n, v in zip(LOSS_NAMES, means) if n in logged},
           "lr": max(run.scheduler.get_last_lr()), "grad_norm": grad_norm,  # the largest part's
           "audio_s_per_s": audio_s_per_s, **stage_columns(stats)}
    run.log.write(step, "train", row)
    run.accelerator.log({f"train/{k}": v for k, v in row.items() if not math.isnan(v)}, step=step)
    bar.set_postfix(loss=f"{row['loss']:.3f}", audio_s_per_s=f"{row['audio_s_per_s']:.1f}")


def averaged(run: Run) -> contextlib.AbstractContextManager:
    """A context in which ``run.codec`` holds the averaged weights (train.weight_average), or
    its own without an average."""
    return run.average.swapped_in(run.codec) if run.average is not None else contextlib.nullcontext()


def run_validation(run: Run, step: int, quantized: bool = True) -> None:
    """Validate through encode and decode (``quantized`` False, during a quantizer warm-up:
    through the decoder of the unquantized latents) on every rank, with the averaged weights
    where the run keeps an average; the main one writes the valid row. Its ``pesq_unquantized``
    is always the decoder of the unquantized latents (the ceiling the stack is chasing)."""
    with averaged(run):
        res = validate(run.accelerator, run.codec, run.loss_fn, run.valid, run.cfg.pesq_utterances, quantized)
        ceiling = validate(run.accelerator, run.codec, run.loss_fn, run.valid, run.cfg.pesq_utterances,
                           False) if quantized else res
    if run.main:
        row = {**res["losses"], "pesq": res["pesq"], "pesq_unquantized": ceiling["pesq"],
               **stage_columns(res["stages"])}
        run.log.write(step, "valid", row)
        run.accelerator.log({f"valid/{k}": v for k, v in row.items() if not math.isnan(v)}, step=step)


def checkpoint(run: Run, step: int, callbacks: list[Callback]) -> None:
    """Write the checkpoint of ``step`` (atomically, the last ``keep_last`` kept)."""
    def during(_tmp: object) -> None:
        for cb in callbacks:
            cb.during_checkpoint(step)

    ckpt.save_checkpoint(run.accelerator, run.out, step, run.cfg.keep_last, {"seed": run.cfg.seed},
                         crash_hook=during)
    for cb in callbacks:
        cb.after_checkpoint(step)


def export(run: Run) -> Path:
    """The trained model as ``out/model`` (``Codec.save_pretrained``, replaced atomically; the
    averaged weights where the run keeps an average)."""
    model_dir = run.out / "model"
    if run.main:
        tmp = run.out / ".tmp-model"
        shutil.rmtree(tmp, ignore_errors=True)
        with averaged(run):
            run.codec.save_pretrained(tmp)
        shutil.rmtree(model_dir, ignore_errors=True)
        tmp.rename(model_dir)
    return model_dir


def train(recipe: str | Path, overrides: list[str] | None = None, out_dir: str | Path | None = None,
          resume: bool = False, quiet: bool = False, callbacks: list[Callback] | None = None) -> RunResult:
    """Train the recipe's model; returns where the results are.

    Writes under out_dir: recipe.yaml (the merged recipe), log.csv, tensorboard/, checkpoints/
    and, at the end, model/ (``Codec.save_pretrained``). ``resume`` continues from the newest
    complete checkpoint. ``callbacks`` hook into the run (the tests' crash and state-dump
    hooks: tests/train_with_hooks.py). Raises ConfigError / DataError on bad input.
    """
    callbacks = list(callbacks or [])
    run = setup(recipe, overrides, out_dir, resume)
    cfg, accelerator, rank = run.cfg, run.accelerator, run.accelerator.process_index
    accum, world = cfg.grad_accum, accelerator.num_processes
    # The micro-steps this rank will see: start*accum .. total*accum - 1.
    workers = 0 if cfg.data.on_device else cfg.data.num_workers  # device tensors stay in this process
    loader = DataLoader(run.batches, batch_size=None, sampler=range(run.start * accum, cfg.total_steps * accum),
                        num_workers=workers, prefetch_factor=4 if workers else None)
    from tqdm import tqdm

    bar = tqdm(total=cfg.total_steps, initial=run.start, desc="train", unit="step",
               disable=not run.main or quiet, file=sys.stderr, dynamic_ncols=True)
    run.module.train()
    sums = torch.zeros(len(LOSS_NAMES), device=accelerator.device)
    n_sums, t0 = 0, time.perf_counter()
    audio_per_step = cfg.batch_size * accum * world * cfg.data.crop_seconds  # seconds, all ranks
    it = iter(loader)
    step = run.start
    # A wall-clock budget (train.max_minutes) ends the run like the last step would; the
    # decision is rank 0's, shared every step so that all ranks stop together.
    deadline = time.monotonic() + 60.0 * cfg.max_minutes if cfg.max_minutes > 0 else None
    stop = False
    while step < cfg.total_steps and not stop:
        if step == cfg.quantizer_warmup_steps > 0 and cfg.quantizer_fit_batches > 0:
            fit_quantizer(run)
        apply_schedules(run, step)
        batch_list = [next(it) for _ in range(accum)]
        for batch in batch_list:
            run.items_seen += [run.batches.utterances[int(i)].id for i in batch["index"]]
        seeds = [_step_seed(cfg.seed, step * accum + micro, rank) for micro in range(accum)]
        totals, grad_norm = train_step(run.module, run.loss_fn, run.optimizer, run.scheduler,
                                       [b["audio"].to(accelerator.device) for b in batch_list],
                                       cfg.clip_grad_norm, seeds, accelerator,
                                       quantize=step >= cfg.quantizer_warmup_steps)
        sums += torch.stack([totals[n] if n in totals else sums.new_zeros(()) for n in LOSS_NAMES])
        n_sums += accum
        step += 1
        if run.average is not None:
            run.average.update(run.codec, step)
        bar.update(1)
        if deadline is not None:
            late = torch.tensor(float(time.monotonic() > deadline), device=accelerator.device)
            stop = bool(broadcast_from_rank0(late))
        last = stop or step == cfg.total_steps
        if step % cfg.log_every == 0 or last:
            means = accelerator.reduce(sums / max(1, n_sums), reduction="mean")
            if run.main:
                rate = audio_per_step * n_sums / accum / (time.perf_counter() - t0)
                log_train(run, step, means, grad_norm, rate, bar)
            sums.zero_()
            n_sums, t0 = 0, time.perf_counter()
        if step % cfg.val_every == 0 or last:
            run_validation(run, step, quantized=step > cfg.quantizer_warmup_steps)
        if step % cfg.ckpt_every == 0 or last:
            checkpoint(run, step, callbacks)
            t0 = time.perf_counter()  # checkpoint time is not training throughput
    bar.close()

    model_dir = export(run)
    for cb in callbacks:
        cb.at_end(run.codec, rank, run.items_seen)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if run.main and not quiet:
        print(f"codec: trained {step} steps; model in {model_dir}, log in {run.out / 'log.csv'}", file=sys.stderr)
    return RunResult(run.out, model_dir, step)


__all__ = ["Callback", "ConfigError", "DataError", "RunResult", "TrainConfig", "TrainStep", "train"]
