"""The recipe's ``train:`` section as typed dataclasses, and ``--set key=value`` overrides.

Every key has a default here, so a recipe only states what it changes; unknown keys are an
error (a typo must not silently train with the default).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from codec.config import ModelConfig
from codec.recipe import ConfigError, build_dataclass, deep_merge, load_recipe
from codec.train.losses import SPECTRA_TERMS, LossConfig
from codec.train.schedule import Schedule, parse_schedules

_OFF = Schedule.constant(0.0)

REPO = Path(__file__).resolve().parents[2]
#: Where the shared LibriSpeech copy lives when neither the recipe nor the environment says.
DEFAULT_LIBRISPEECH = REPO.parent / "shared" / "data" / "LibriSpeech"


@dataclass
class DataConfig:
    """Where the audio comes from and how it is cut."""

    root: str | None = None  # LibriSpeech root; None: $LIBRISPEECH, $CODEC_DATA/LibriSpeech, shared copy
    train_subsets: list = field(default_factory=lambda: ["train-clean-100"])
    valid_subsets: list = field(default_factory=lambda: ["test-other"])
    train_manifest: str | list | None = None  # TSV(s) (path, samples) or audio folder(s); replaces train_subsets
    valid_manifest: str | list | None = None  # likewise for validation
    crop_seconds: float = 1.0  # random training crop length
    valid_seconds: float = 4.0  # each validation utterance is cut to its first valid_seconds
    valid_utterances: int = 20  # validation set size (spread over speakers)
    num_workers: int = 2  # DataLoader worker processes per rank (0: load in the main process)
    gain_db: list = field(default_factory=lambda: [0.0, 0.0])  # random gain per crop, uniform in [lo, hi] dB
    tone_fraction: float = 0.0  # crops that get 1-3 sines added (half of them without the speech)
    tone_grid_hz: float = 0.0  # > 0: half the sines at multiples of it (the STFT bin spacing: still spectra)
    rumble_fraction: float = 0.0  # crops that get sines below 50 Hz and a DC offset added (draw_augmentation)
    on_device: bool = False  # hold the training audio on the run's device and cut crops there (GPU runs)


@dataclass
class TrainConfig:
    """Optimisation, logging and checkpointing. Steps count optimizer updates."""

    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    batch_size: int = 16  # per process and micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 3e-4
    betas: list = field(default_factory=lambda: [0.8, 0.99])
    weight_decay: float = 0.01
    warmup_steps: int = 1000  # linear warm-up from 0
    quantizer_warmup_steps: int = 0  # train this many first steps with the quantizer bypassed (as ESC)
    # > 0 (with a warm-up): when the warm-up ends, k-means of every stored codebook, stage by
    # stage, on the encoder's latents of this many batches, before the first quantized step
    quantizer_fit_batches: int = 0
    schedules: dict = field(default_factory=dict)  # target -> [[step, value], ...] (codec/train/schedule.py)
    weight_average: float = 0.0  # > 0: decay of an EMA of the weights, used to validate and export
    weight_average_start: int = 0  # the average follows the weights exactly up to this step
    total_steps: int = 200_000
    lr_decay_steps: int = 0  # > 0: the cosine reaches its floor here (and stays), else at total_steps
    max_minutes: float = 0.0  # > 0: stop (validate, checkpoint, export) after this much wall time
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio
    clip_grad_norm: float = 1.0  # 0: no clipping (the norm is still logged)
    log_every: int = 50
    val_every: int = 2000
    ckpt_every: int = 2000
    keep_last: int = 3  # complete checkpoints kept
    pesq_utterances: int = 4  # validation utterances scored with PESQ (0: none)
    seed: int = 0
    init_from: str | None = None  # a saved model (directory or shipped name) a fresh run starts from
    init_parts: list = field(default_factory=lambda: ["encoder", "decoder", "quantizer"])  # what init_from copies
    out_dir: str | None = None  # None: exp/<recipe name>
    mixed_precision: str = "auto"  # auto: bf16 on a GPU or an AMX CPU, else fp32; or no / bf16 / fp16

    @property
    def cosine_end(self) -> int:
        """The step at which the lr cosine reaches its floor: lr_decay_steps, else total_steps."""
        return self.lr_decay_steps or self.total_steps

    def validate(self) -> None:
        """Raise ConfigError on values that cannot train."""
        positive = ["batch_size", "grad_accum", "total_steps", "log_every", "val_every", "ckpt_every", "keep_last"]
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        if not self.lr_decay_steps >= 0:
            raise ConfigError(f"train.lr_decay_steps must be >= 0 (0: total_steps), got {self.lr_decay_steps}")
        if not self.max_minutes >= 0:
            raise ConfigError(f"train.max_minutes must be >= 0 (0: no limit), got {self.max_minutes}")
        if len(self.betas) != 2:
            raise ConfigError(f"train.betas must be two numbers, got {self.betas}")
        if self.data.crop_seconds <= 0 or self.data.valid_seconds <= 0:
            raise ConfigError("train.data.crop_seconds and valid_seconds must be > 0")
        if len(self.data.gain_db) != 2 or not float(self.data.gain_db[0]) <= float(self.data.gain_db[1]):
            raise ConfigError(f"train.data.gain_db must be [lo, hi] in dB with lo <= hi, got {self.data.gain_db}")
        if not self.data.tone_grid_hz >= 0:
            raise ConfigError(f"train.data.tone_grid_hz must be >= 0, got {self.data.tone_grid_hz}")
        if not 0.0 <= self.data.tone_fraction <= 1.0:
            raise ConfigError(f"train.data.tone_fraction must be in [0, 1], got {self.data.tone_fraction}")
        if not 0.0 <= self.data.rumble_fraction <= 1.0:
            raise ConfigError(f"train.data.rumble_fraction must be in [0, 1], got {self.data.rumble_fraction}")
        if not self.init_parts or not set(self.init_parts) <= {"encoder", "decoder", "quantizer"}:
            raise ConfigError(f"train.init_parts must list some of encoder, decoder, quantizer, got {self.init_parts}")
        if self.mixed_precision is False:  # YAML reads an unquoted `no` (as --set gives it) as false
            self.mixed_precision = "no"
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ConfigError(f"train.mixed_precision must be auto, no, bf16 or fp16, got {self.mixed_precision!r}")
        if int(self.quantizer_fit_batches) < 0 or int(self.weight_average_start) < 0:
            raise ConfigError("train.quantizer_fit_batches and weight_average_start must be >= 0")
        if not 0.0 <= self.weight_average < 1.0:
            raise ConfigError(f"train.weight_average must be in [0, 1) (0: off), got {self.weight_average}")
        if not isinstance(self.schedules, dict):
            raise ConfigError(f"train.schedules must map targets to [[step, value], ...], got {self.schedules!r}")
        parse_schedules(self.schedules)
        if self.quantizer_fit_batches > 0 and self.quantizer_warmup_steps <= 0:
            raise ConfigError("train.quantizer_fit_batches fits the stack when the quantizer warm-up ends: "
                              "it needs train.quantizer_warmup_steps > 0")
        try:
            self.loss.validate()
        except (TypeError, ValueError) as exc:
            raise ConfigError(str(exc)) from None

    def data_root(self) -> Path:
        """The LibriSpeech root: recipe / --set, else $LIBRISPEECH, else $CODEC_DATA/LibriSpeech,
        else ../shared/data/LibriSpeech beside the repository."""
        if self.data.root:
            return Path(self.data.root)
        if os.environ.get("LIBRISPEECH"):
            return Path(os.environ["LIBRISPEECH"])
        if os.environ.get("CODEC_DATA"):
            return Path(os.environ["CODEC_DATA"]) / "LibriSpeech"
        return DEFAULT_LIBRISPEECH


def parse_overrides(items: list[str]) -> dict:
    """``["lr=1e-3", "model.quantizer.kind=ema"]`` -> a nested dict to merge into the recipe.

    Values are YAML (numbers, lists, null ...). Keys not starting with ``model.`` or
    ``train.`` belong to ``train``.
    """
    out: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"bad --set {item!r}: expected key=value, e.g. --set lr=1e-3")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"bad --set {item!r}: value is not valid YAML") from None
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string; a number was meant
            try:
                value = float(value) if not value.strip().lower() in ("nan", "inf", "-inf") else value
            except ValueError:
                pass
        parts = key.split(".")
        if parts[0] not in ("model", "train"):
            parts = ["train", *parts]
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"bad --set {item!r}: {p} is set twice")
        node[parts[-1]] = value
    return out


def load_training_recipe(path: str | Path, overrides: list[str] | None = None) -> tuple[dict, ModelConfig, TrainConfig]:
    """Read a recipe, apply ``--set`` overrides, validate both sections.

    Returns (the merged recipe dict, its ModelConfig, its TrainConfig).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path}: no such file")
    recipe = deep_merge(load_recipe(path), parse_overrides(overrides or []))
    if "model" not in recipe:
        raise ConfigError(f"recipe {path} has no model section")
    try:
        model_cfg = ModelConfig.from_dict(recipe)
    except (TypeError, ValueError) as exc:  # ModelConfig raises ConfigError; bad types TypeError
        raise ConfigError(f"recipe {path}: {exc}") from None
    train_cfg = build_dataclass(TrainConfig, recipe.get("train") or {}, "train")
    try:
        train_cfg.validate()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"recipe {path}: {exc}") from None
    scheduled = parse_schedules(train_cfg.schedules)
    on = [n for n in SPECTRA_TERMS if getattr(train_cfg.loss, n) or scheduled.get(f"loss.{n}", _OFF).bounds()[1] > 0]
    if on and model_cfg.architecture != "convnext":
        raise ConfigError(f"recipe {path}: train.loss.{on[0]} needs a decoder that synthesises from spectra "
                          f"(architecture convnext), not {model_cfg.architecture}")
    if train_cfg.out_dir is None:
        train_cfg.out_dir = str(Path("exp") / path.stem)
    return recipe, model_cfg, train_cfg
