"""Training and validation audio: LibriSpeech in its own layout, folders, TSV manifests.

Training batches are a pure function of (seed, micro-step, rank): item choice and crop
offsets come from counters, not from a stateful iterator, so a run resumed at step s sees
exactly the batches an uninterrupted run would, and ranks never share an item within an epoch.

A manifest is a TSV file, one utterance a line: ``path<TAB>num_samples`` (samples at the
file's own rate; relative paths are relative to the manifest). Lines starting with ``#``
are comments.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
from torch import Tensor
from torch.utils.data import Dataset

from codec.train.schedule import Schedule

AUDIO_EXTENSIONS = (".flac", ".wav", ".ogg", ".mp3", ".opus")
_LIBRISPEECH_ID = re.compile(r"^(\d+)-(\d+)-(\d+)$")


class DataError(ValueError):
    """Missing or unusable data, with a one-line message."""


@dataclass(frozen=True)
class Utterance:
    """One audio file: its id (file stem), path, length in samples at its own rate, speaker."""

    id: str
    path: str
    num_samples: int
    speaker: str


def speaker_of(path: Path) -> str:
    """LibriSpeech ``spk-chapter-utt`` -> ``spk``; otherwise the parent folder's name."""
    m = _LIBRISPEECH_ID.match(path.stem)
    return m.group(1) if m else path.parent.name


def utterance_info(path: Path, num_samples: int | None = None) -> Utterance:
    if num_samples is None:
        try:
            num_samples = sf.info(str(path)).frames
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            raise DataError(f"{path}: not a readable audio file ({exc})") from None
    return Utterance(path.stem, str(path), int(num_samples), speaker_of(path))


def folder_utterances(folder: str | Path) -> list[Utterance]:
    """Every audio file under ``folder`` (recursive), sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such directory")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
    if not files:
        raise DataError(f"{folder}: no audio files ({' '.join(AUDIO_EXTENSIONS)})")
    return [utterance_info(p) for p in files]


def librispeech_utterances(root: str | Path, subsets: list[str]) -> list[Utterance]:
    """LibriSpeech in the corpus's layout, ``<root>/<subset>/<speaker>/<chapter>/*.flac``,
    several subsets at once. Each file's header is read for its length; for big corpora write
    manifests once with tools/prepare_librispeech.py and train from those instead."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"LibriSpeech root {root}: no such directory (set $LIBRISPEECH or train.data.root)")
    out: list[Utterance] = []
    for subset in subsets:
        if not (root / subset).is_dir():
            raise DataError(f"LibriSpeech subset {root / subset}: no such directory")
        files = sorted((root / subset).glob("*/*/*.flac"))
        if not files:
            raise DataError(f"{root / subset}: no FLAC files in <speaker>/<chapter>/ folders")
        out += [utterance_info(p) for p in files]
    return out


def read_manifest(path: str | Path) -> list[Utterance]:
    """A TSV manifest (see the module docstring) -> utterances, in file order."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise DataError(f"manifest {path}: {exc.strerror or exc}") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        cols = line.split("\t")
        try:
            audio, samples = Path(cols[0]), int(cols[1])
        except (IndexError, ValueError):
            raise DataError(f"manifest {path}:{n}: expected 'path<TAB>num_samples'") from None
        out.append(utterance_info(audio if audio.is_absolute() else path.parent / audio, samples))
    if not out:
        raise DataError(f"manifest {path}: no utterances")
    return out


def write_manifest(path: str | Path, utterances: list[Utterance]) -> None:
    """Write ``path<TAB>num_samples`` lines (absolute paths) atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    rows = ["# path\tnum_samples"] + [f"{Path(u.path).resolve()}\t{u.num_samples}" for u in utterances]
    tmp.write_text("\n".join(rows) + "\n")
    tmp.replace(path)


def utterances_from(source: str | list | None, root: Path, subsets: list[str]) -> list[Utterance]:
    """Manifest files or audio folders if ``source`` is given (one or a list), else the
    LibriSpeech ``subsets`` under ``root``."""
    if source:
        out: list[Utterance] = []
        for s in [source] if isinstance(source, str) else list(source):
            out += folder_utterances(s) if Path(s).is_dir() else read_manifest(s)
        return out
    return librispeech_utterances(root, subsets)


def load_audio(path: str, rate: int, seconds: float | None = None, start_fraction: float = 0.0) -> np.ndarray:
    """Read ``seconds`` (all if None) of a file as float32 mono [L] at ``rate`` Hz: channels
    averaged, resampled with soxr. The read starts at ``start_fraction`` (in [0, 1)) of the
    span left free by the excerpt, so 0 is the beginning. Only the needed part is decoded."""
    try:
        with sf.SoundFile(path) as f:
            sr = f.samplerate
            frames = f.frames if seconds is None else math.ceil(seconds * sr)
            f.seek(int(start_fraction * max(0, f.frames - frames)))
            x = f.read(frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    x = x.mean(axis=1)
    if sr != rate:
        x = soxr.resample(x, sr, rate).astype(np.float32)
    return x


def fit_length(x: np.ndarray, length: int) -> np.ndarray:
    """Trim or zero-pad [L] to ``length`` samples."""
    return x[:length] if len(x) >= length else np.pad(x, (0, length - len(x)))


@dataclass(frozen=True)
class Augmentation:
    """What ``draw_augmentation`` chose for one crop: sines as rows (frequency Hz, amplitude,
    phase rad), whether they replace the speech (``pure``), a linear gain, and a rumble: sines
below 50 Hz (rows as ``sines``) and a DC offset, always added to what the crop holds."""

    sines: np.ndarray  # float64 [n, 3], n = 0 for none
    pure: bool
    gain: float
    rumble: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # sines below the first bin, as ``sines``
    offset: float = 0.0  # a DC offset added with the rumble


def draw_augmentation(rng: np.random.Generator, rate: int, gain_db: tuple[float, float] = (0.0, 0.0),
                      tone_fraction: float = 0.0, tone_grid_hz: float = 0.0,
                      rumble_fraction: float = 0.0) -> Augmentation | None:
    """The random choices for one training crop, from ``rng``; None (and nothing drawn) when
    every augmentation is off.

    With probability ``tone_fraction``, 1-3 sines (frequencies log-uniform over 50 Hz .. 0.45
    ``rate``, amplitudes log-uniform 0.02 .. 0.4 shared between them, random phases) are added,
    and half of those crops drop the speech (pure tones), so a codec trained on speech alone
    still passes tones. With ``tone_grid_hz`` > 0, each sine's frequency is rounded to a
    multiple of it with probability 1/2: with the analysis bin spacing (sample rate / STFT
    window) such a sine's spectrum stands still from frame to frame, which random frequencies
    almost never give (a model trained without them decoded 1 kHz as near-silence while
    passing 1010 Hz: the default model's card). Then a gain uniform in ``gain_db`` (dB).

    Last, with probability ``rumble_fraction``, a rumble: 1-3 sines of 1-45 Hz (log-uniform,
    amplitudes log-uniform 0.003 .. 0.1 shared between them, random phases) and a DC offset
    uniform in +-0.01, added to the crop before the gain. Some recordings carry as much energy
    below 20 Hz as in their speech (LibriSpeech test-other speaker 1688) and train-clean-100
    hardly any: a codec that never heard such a rumble turned it into a DC offset of its own.
    The draws of the augmentations before it do not depend on it."""
    lo, hi = gain_db
    if not (tone_fraction > 0 or hi > lo or lo != 0 or rumble_fraction > 0):
        return None
    sines, pure = np.zeros((0, 3)), False
    if tone_fraction > 0 and rng.random() < tone_fraction:
        n = int(rng.integers(1, 4))
        freqs = np.exp(rng.uniform(np.log(50.0), np.log(0.45 * rate), n))
        if tone_grid_hz > 0:
            snap = rng.random(n) < 0.5
            freqs[snap] = np.maximum(1, np.round(freqs[snap] / tone_grid_hz)) * tone_grid_hz
        amps = np.exp(rng.uniform(np.log(0.02), np.log(0.4), n)) / n
        phases = rng.uniform(0, 2 * np.pi, n)
        sines, pure = np.stack([freqs, amps, phases], axis=1), bool(rng.random() < 0.5)
    gain = float(10.0 ** (rng.uniform(lo, hi) / 20.0)) if (hi > lo or lo != 0) else 1.0
    if rumble_fraction > 0 and rng.random() < rumble_fraction:
        n = int(rng.integers(1, 4))
        freqs = np.exp(rng.uniform(np.log(1.0), np.log(45.0), n))
        amps = np.exp(rng.uniform(np.log(0.003), np.log(0.1), n)) / n
        rumble = np.stack([freqs, amps, rng.uniform(0, 2 * np.pi, n)], axis=1)
        return Augmentation(sines, pure, gain, rumble, float(rng.uniform(-0.01, 0.01)))
    return Augmentation(sines, pure, gain)


def apply_augmentation(x: Tensor, augs: list[Augmentation | None], rate: int) -> Tensor:
    """Crops float32 [B, T] (any device) and one ``draw_augmentation`` result per crop -> the
    crops the codec learns from: sines added (or alone), the rumble added, the gain applied, and a crop so
    changed whose peak passes 0.99 scaled down to it instead of clipping. The sines are
    computed in float64 on the crops' device (so on a GPU the audio never leaves it)."""
    if all(a is None for a in augs):
        return x
    out = x.clone()
    t = torch.arange(x.shape[-1], device=x.device, dtype=torch.float64) / rate

    def sum_of(sines: np.ndarray) -> Tensor:
        f, amp, ph = (torch.as_tensor(sines[:, j], device=x.device)[:, None] for j in range(3))
        return (amp * torch.sin(2 * math.pi * f * t + ph)).sum(0).to(x.dtype)

    for i, a in enumerate(augs):
        if a is None:
            continue
        y = out[i]
        if len(a.sines):
            y = sum_of(a.sines) if a.pure else y + sum_of(a.sines)
        if len(a.rumble):
            y = y + sum_of(a.rumble) + a.offset
        y = y * a.gain if a.gain != 1.0 else y
        peak = y.abs().max() if y.numel() else y.new_zeros(())
        out[i] = torch.where(peak > 0.99, y * (0.99 / peak.clamp_min(1e-12)), y)
    return out


def augment(x: np.ndarray, rng: np.random.Generator, rate: int, gain_db: tuple[float, float] = (0.0, 0.0),
            tone_fraction: float = 0.0, tone_grid_hz: float = 0.0, rumble_fraction: float = 0.0) -> np.ndarray:
    """One training crop float32 [T] -> the crop the codec learns from, drawn from ``rng``
    (``draw_augmentation``, then ``apply_augmentation``). With the defaults it returns ``x``
    itself and draws nothing."""
    aug = draw_augmentation(rng, rate, gain_db, tone_fraction, tone_grid_hz, rumble_fraction)
    if aug is None:
        return x
    return apply_augmentation(torch.from_numpy(np.ascontiguousarray(x))[None], [aug], rate)[0].numpy()


class CropBatches(Dataset):
    """Index k (a global micro-step: step * grad_accum + micro) -> this rank's batch.

    Position g = (k * world + rank) * batch + i walks through one seeded permutation of the
    utterances per epoch, so within an epoch no utterance is seen twice, on any rank; the crop
    offset of item i is drawn from a generator seeded with (seed, k, rank, i), and then
    ``augment``'s choices (``gain_db``, ``tone_fraction``, ``tone_grid_hz``, ``rumble_fraction``) from
    the same generator. ``tone_fraction`` and ``rumble_fraction`` may be ``Schedule``s of the optimizer
    step (micro-step k // ``grad_accum``), so sine crops can enter late and the batch stays a pure function of k.
    Returns {"audio": float [B, 1, T] at ``rate``, "index": int64 [B] utterance indices}.
    """

    def __init__(self, utterances: list[Utterance], rate: int, crop_seconds: float, batch_size: int,
                 seed: int, rank: int = 0, world: int = 1, gain_db: tuple[float, float] = (0.0, 0.0),
                 tone_fraction: float | Schedule = 0.0, tone_grid_hz: float = 0.0, grad_accum: int = 1,
                 rumble_fraction: float | Schedule = 0.0) -> None:
        self.gain_db = (float(gain_db[0]), float(gain_db[1]))
        self.tone_fraction, self.rumble_fraction = Schedule.of(tone_fraction), Schedule.of(rumble_fraction)
        self.grad_accum = int(grad_accum)
        self.tone_grid_hz = float(tone_grid_hz)
        self.utterances = utterances
        self.rate = rate
        self.crop_seconds = crop_seconds
        self.length = round(crop_seconds * rate)
        self.batch_size = batch_size
        self.seed, self.rank, self.world = seed, rank, world
        self._perm: tuple[int, Tensor] | None = None

    def __len__(self) -> int:
        return 2**62  # unbounded: the sampler decides which micro-steps are drawn

    def _permutation(self, epoch: int) -> Tensor:
        if self._perm is None or self._perm[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(len(self.utterances), generator=gen))
        return self._perm[1]

    def indices(self, k: int) -> list[int]:
        """The utterance indices of micro-step k on this rank."""
        n = len(self.utterances)
        out = []
        for i in range(self.batch_size):
            g = (k * self.world + self.rank) * self.batch_size + i
            out.append(int(self._permutation(g // n)[g % n]))
        return out

    def draws(self, k: int) -> tuple[list[int], list[float], list[Augmentation | None]]:
        """Micro-step k's choices: utterance indices, crop start fractions (of the span a crop
        leaves free in its utterance) and augmentations, one each per item."""
        idx = self.indices(k)
        tones, rumble = self.tone_fraction(k // self.grad_accum), self.rumble_fraction(k // self.grad_accum)
        starts, augs = [], []
        for i in range(len(idx)):
            rng = np.random.default_rng([self.seed, k, self.rank, i])
            starts.append(float(rng.random()))
            augs.append(draw_augmentation(rng, self.rate, self.gain_db, tones, self.tone_grid_hz, rumble))
        return idx, starts, augs

    def __getitem__(self, k: int) -> dict[str, Tensor]:
        idx, starts, augs = self.draws(k)
        audio = np.zeros((len(idx), self.length), dtype=np.float32)
        for i, (j, start) in enumerate(zip(idx, starts)):
            audio[i] = fit_length(load_audio(self.utterances[j].path, self.rate, self.crop_seconds, start), self.length)
        audio = apply_augmentation(torch.from_numpy(audio), augs, self.rate)
        return {"audio": audio[:, None], "index": torch.tensor(idx, dtype=torch.long)}


class DeviceCrops(CropBatches):
    """CropBatches with every training utterance held in one tensor on ``device`` (a GPU), the
    crops cut and augmented there: the same draws as CropBatches (so the same crops for 16 kHz
    files, up to float rounding of the sines), no file reads, and only the batch's indices and
    start fractions copied to the device per step. Holds the whole training set in memory (train-clean-100's 100 hours: 23 GB)."""

    def __init__(self, *args: object, device: str | torch.device = "cpu", **kwargs: object) -> None:
        """CropBatches' arguments, and the ``device`` that holds the audio."""
        super().__init__(*args, **kwargs)
        waves = [torch.from_numpy(load_audio(u.path, self.rate)) for u in self.utterances]
        # one zero sample at the end: short utterances are padded by indexing it
        self.audio = torch.cat([*waves, torch.zeros(1)]).to(device)
        self.device = self.audio.device
        self.lengths = torch.tensor([len(w) for w in waves], dtype=torch.long, device=self.device)
        self.offsets = torch.cumsum(self.lengths, 0) - self.lengths
        self.span = torch.arange(self.length, device=self.device)

    def __getitem__(self, k: int) -> dict[str, Tensor]:
        idx, starts, augs = self.draws(k)
        items = torch.tensor(idx, dtype=torch.long)
        on = items.to(self.device)  # B indices and B start fractions cross to the device, no audio
        lengths = self.lengths[on]
        first = (torch.tensor(starts, dtype=torch.float64, device=self.device)
                 * (lengths - self.length).clamp_min(0)).long()
        pos = first[:, None] + self.span  # [B, T] within each utterance
        flat = torch.where(pos < lengths[:, None], self.offsets[on][:, None] + pos, self.audio.numel() - 1)
        audio = apply_augmentation(self.audio[flat], augs, self.rate)
        return {"audio": audio[:, None], "index": items}


def validation_set(utterances: list[Utterance], train_speakers: set[str], count: int, rate: int,
                   seconds: float) -> list[tuple[str, Tensor]]:
    """``count`` utterances from speakers not in ``train_speakers`` (round-robin over speakers,
    in sorted order, so the set is fixed), each its first ``seconds``: [(id, float [1, 1, L])]."""
    pool = [u for u in utterances if u.speaker not in train_speakers]
    if not pool:
        raise DataError("every validation speaker also occurs in the training data; "
                        "choose validation data from other speakers")
    by_speaker: dict[str, list[Utterance]] = {}
    for u in sorted(pool, key=lambda u: u.id):
        by_speaker.setdefault(u.speaker, []).append(u)
    chosen: list[Utterance] = []
    queues = [by_speaker[s] for s in sorted(by_speaker)]
    while len(chosen) < count and any(queues):
        for q in queues:
            if q and len(chosen) < count:
                chosen.append(q.pop(0))
    return [(u.id, torch.from_numpy(load_audio(u.path, rate, seconds))[None, None]) for u in chosen]
