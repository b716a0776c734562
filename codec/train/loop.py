"""The training loop on accelerate: one process (``codec train``) or many (``accelerate launch
-m codec train``), read top to bottom in one sitting.

Determinism: the batch of micro-step k on rank r is a pure function of (seed, k, r)
(data.CropBatches), and the global torch RNG (quantizer dropout, DiVeQ noise) is reseeded
from (seed, k, r) before every micro-step, so a resumed run repeats an uninterrupted one
exactly on CPU. Ranks start from identical weights (same seed) and the quantizers keep their
non-Parameter state identical themselves, so DDP's per-step buffer broadcast is switched off.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator, DistributedDataParallelKwargs
from torch import Tensor, nn
from torch.utils.data import DataLoader

from codec.model import Codec
from codec.quant.distributed import broadcast_from_rank0
from codec.train import checkpoint as ckpt
from codec.train.config import ConfigError, TrainConfig, load_training_recipe
from codec.train.data import CropBatches, DataError, utterances_from, validation_set
from codec.train.logging import LOSS_NAMES, CSVLog, stage_columns
from codec.train.losses import ReconstructionLoss
from codec.train.optim import build_optimizer
from codec.train.validate import validate

#: Test hook: "after_ckpt:STEP" SIGKILLs the process right after the checkpoint of STEP is
#: complete, "during_ckpt:STEP" while it is half-written (before the rename).
CRASH_ENV = "CODEC_TRAIN_CRASH"


class TrainStep(nn.Module):
    """What DDP wraps: the codec's training forward (its quantizer always runs in fp32, see
    Codec.forward). forward: audio float [B, 1, T] -> (reconstruction float [B, 1, T],
    quantizer loss scalar)."""

    def __init__(self, codec: Codec) -> None:
        super().__init__()
        self.codec = codec

    def forward(self, wav: Tensor) -> tuple[Tensor, Tensor]:
        out = self.codec(wav)
        return out.audio.float(), out.quantizer_loss.float()


@dataclass
class RunResult:
    """What ``train`` leaves behind: the output folder, the exported model and the last step."""

    out_dir: Path
    model_dir: Path
    step: int


def _mixed_precision(setting: str) -> str:
    """'auto' -> what `accelerate launch --mixed_precision` chose, else bf16 on a GPU that
    supports it, else fp32 ('no')."""
    if setting != "auto":
        return setting
    if os.environ.get("ACCELERATE_MIXED_PRECISION"):
        return os.environ["ACCELERATE_MIXED_PRECISION"]
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def _step_seed(seed: int, k: int, rank: int) -> int:
    return (seed * 1_000_003 + k) * 4099 + rank


def _crash_hooks() -> tuple[int | None, int | None]:
    spec = os.environ.get(CRASH_ENV, "")
    kind, _, step = spec.partition(":")
    if not step.isdigit():
        return None, None
    return (int(step), None) if kind == "after_ckpt" else (None, int(step)) if kind == "during_ckpt" else (None, None)


def _kill_self(_: object = None) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _make_trackers() -> list[str]:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return []
    return ["tensorboard"]


def train(recipe: str | Path, overrides: list[str] | None = None, out_dir: str | Path | None = None,
          resume: bool = False, dump_state: str | Path | None = None, quiet: bool = False) -> RunResult:
    """Train the recipe's model; returns where the results are.

    Writes under out_dir: recipe.yaml (the merged recipe), log.csv, tensorboard/, checkpoints/
    and, at the end, model/ (``Codec.save_pretrained``). ``resume`` continues from the newest
    complete checkpoint. ``dump_state`` (a test hook) makes every rank write its final
    state_dict (rank<r>.safetensors) and the ids of the utterances it trained on (rank<r>.json).
    Raises ConfigError / DataError on bad input.
    """
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
    device = accelerator.device

    latest = ckpt.latest_checkpoint(out)
    if latest is not None and not resume:
        raise ConfigError(f"{out} already holds checkpoints; pass --resume to continue or choose another --out-dir")

    # ----- data: fail before anything heavy happens -----------------------------------------
    root = cfg.data_root()
    train_utts = utterances_from(cfg.data.train_manifest, root, cfg.data.train_subsets)
    valid_utts = utterances_from(cfg.data.valid_manifest, root, cfg.data.valid_subsets)
    valid = validation_set(valid_utts, {u.speaker for u in train_utts}, cfg.data.valid_utterances,
                           model_cfg.sample_rate, cfg.data.valid_seconds)

    # ----- resume or fresh start ------------------------------------------------------------
    accelerator.wait_for_everyone()  # every rank has looked before the main one cleans up
    if main:
        out.mkdir(parents=True, exist_ok=True)
        ckpt.remove_partial(out)
        (out / "recipe.yaml").write_text(yaml.safe_dump(recipe_dict, sort_keys=False))

    # ----- model, optimizer, schedule -------------------------------------------------------
    torch.manual_seed(cfg.seed)  # identical initial weights and buffers on every rank
    try:
        codec = Codec(model_cfg)
    except (TypeError, ValueError) as exc:  # e.g. an unknown quantizer kind or option in the recipe
        raise ConfigError(f"recipe {recipe}: cannot build the model: {exc}") from None
    module = TrainStep(codec)
    optimizer, scheduler = build_optimizer(module, cfg)
    module, optimizer = accelerator.prepare(module, optimizer)
    # Not prepared: accelerate would step it once per process; our steps are optimizer updates.
    accelerator.register_for_checkpointing(scheduler)
    codec = accelerator.unwrap_model(module).codec
    loss_fn = ReconstructionLoss(codec.sample_rate, stft_weight=cfg.loss.stft, l1_weight=cfg.loss.l1,
                                 mel_weight=cfg.loss.mel, mel_windows=cfg.loss.mel_windows,
                                 n_mels=cfg.loss.n_mels).to(device)

    start = 0
    if resume and latest is not None:
        start = int(ckpt.load_checkpoint(accelerator, latest[1])["step"])
        if main:  # printed even with --quiet: which step a run continues from matters
            print(f"codec: resuming from {latest[1]} (step {start})", file=sys.stderr)
    if main:
        accelerator.init_trackers("tensorboard")
    log = CSVLog(out / "log.csv", codec.num_stages, resume_step=start if resume else None) if main else None

    # ----- the batches this rank will see: micro-steps start*accum .. total*accum - 1 ----------
    accum = cfg.grad_accum
    batches = CropBatches(train_utts, codec.sample_rate, cfg.data.crop_seconds, cfg.batch_size,
                          cfg.seed, rank, world)
    loader = DataLoader(batches, batch_size=None, sampler=range(start * accum, cfg.total_steps * accum),
                        num_workers=cfg.data.num_workers, prefetch_factor=4 if cfg.data.num_workers else None)
    items_seen: list[str] = []
    crash_after, crash_during = _crash_hooks()

    def checkpoint(step: int) -> None:
        hook = _kill_self if crash_during == step else None
        ckpt.save_checkpoint(accelerator, out, step, cfg.keep_last, {"seed": cfg.seed}, crash_hook=hook)
        if crash_after == step:
            _kill_self()

    def run_validation(step: int) -> None:
        res = validate(accelerator, codec, loss_fn, valid, cfg.pesq_utterances)
        if main:
            row = {**res["losses"], "pesq": res["pesq"], **stage_columns(res["stages"])}
            log.write(step, "valid", row)
            accelerator.log({f"valid/{k}": v for k, v in row.items() if not math.isnan(v)}, step=step)

    # ----- the loop -------------------------------------------------------------------------
    module.train()
    sums = torch.zeros(len(LOSS_NAMES), device=device)
    n_sums, grad_norm, t0 = 0, float("nan"), time.perf_counter()
    audio_per_step = cfg.batch_size * accum * world * cfg.data.crop_seconds  # seconds, all ranks
    it = iter(loader)
    from tqdm import tqdm

    bar = tqdm(total=cfg.total_steps, initial=start, desc="train", unit="step", disable=not main or quiet,
               file=sys.stderr, dynamic_ncols=True)
    step = start
    # A wall-clock budget (train.max_minutes) ends the run like the last step would; the
    # decision is rank 0's, shared every step so that all ranks stop together.
    deadline = time.monotonic() + 60.0 * cfg.max_minutes if cfg.max_minutes > 0 else None
    stop = False
    while step < cfg.total_steps and not stop:
        for micro in range(accum):
            k = step * accum + micro
            batch = next(it)
            items_seen += [batches.utterances[int(i)].id for i in batch["index"]]
            wav = batch["audio"].to(device)
            torch.manual_seed(_step_seed(cfg.seed, k, rank))
            sync = micro == accum - 1
            with accelerator.no_sync(module) if not sync else contextlib.nullcontext():
                pred, q_loss = module(wav)
                recon, parts = loss_fn(pred, wav)
                loss = recon + cfg.loss.quantizer * q_loss
                accelerator.backward(loss / accum)
            values = {"loss": loss, "quantizer": q_loss, **parts}
            sums += torch.stack([values[n].detach().float() if n in values else sums.new_zeros(())
                                 for n in LOSS_NAMES])
            n_sums += 1
        grad_norm = float(accelerator.clip_grad_norm_(module.parameters(), cfg.clip_grad_norm or math.inf))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        step += 1
        bar.update(1)
        if deadline is not None:
            late = torch.tensor(float(time.monotonic() > deadline), device=device)
            stop = bool(broadcast_from_rank0(late))
        last = stop or step == cfg.total_steps

        if step % cfg.log_every == 0 or last:
            means = accelerator.reduce(sums / max(1, n_sums), reduction="mean")
            elapsed = time.perf_counter() - t0
            if main:
                stats = [{"perplexity": s["window_perplexity"], "utilisation": s["window_utilisation"],
                          "dead_codes": s["dead_codes"]} for s in codec.quantizer.statistics()]
                row = {**{n: float(v) for n, v in zip(LOSS_NAMES, means) if n in ("loss", "quantizer")
                          or getattr(cfg.loss, n)},
                       "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                       "audio_s_per_s": audio_per_step * n_sums / accum / elapsed, **stage_columns(stats)}
                log.write(step, "train", row)
                accelerator.log({f"train/{k}": v for k, v in row.items() if not math.isnan(v)}, step=step)
                bar.set_postfix(loss=f"{row['loss']:.3f}", audio_s_per_s=f"{row['audio_s_per_s']:.1f}")
            sums.zero_()
            n_sums, t0 = 0, time.perf_counter()
        if step % cfg.val_every == 0 or last:
            run_validation(step)
        if step % cfg.ckpt_every == 0 or last:
            checkpoint(step)
            t0 = time.perf_counter()  # checkpoint time is not training throughput
    bar.close()

    # ----- export ---------------------------------------------------------------------------
    model_dir = out / "model"
    if main:
        tmp = out / ".tmp-model"
        shutil.rmtree(tmp, ignore_errors=True)
        codec.save_pretrained(tmp)
        shutil.rmtree(model_dir, ignore_errors=True)
        tmp.rename(model_dir)
    if dump_state is not None:
        _dump(Path(dump_state), rank, codec, items_seen)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if main and not quiet:
        print(f"codec: trained {step} steps; model in {model_dir}, log in {out / 'log.csv'}", file=sys.stderr)
    return RunResult(out, model_dir, step)


def _dump(directory: Path, rank: int, codec: Codec, items: list[str]) -> None:
    """Test hook: this rank's final state_dict and the utterance ids it trained on."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in codec.state_dict().items()}
    save_file(state, str(directory / f"rank{rank}.safetensors"))
    (directory / f"rank{rank}.json").write_text(json.dumps({"items": items}) + "\n")


__all__ = ["ConfigError", "DataError", "RunResult", "TrainConfig", "TrainStep", "train"]
