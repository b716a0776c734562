"""The work on many files: encode audio files (to .rvq or to code arrays) and decode .rvq files,
several at a time in padded batches, one group of files per call, in this process or in a
worker process (``init_process`` + ``run_in_process``). A file that fails is one Outcome
with its message; the others of its group go on.

Short files are read whole and run through ``Codec.encode_batch`` / ``decode_batch`` (codes
equal the offline ``Codec.encode``'s); a file longer than ``LONG_SECONDS`` (or of unknown
length) runs alone through the streaming path that ``codec encode`` / ``decode`` use for one
file, so memory stays bounded.
"""

from __future__ import annotations

import os
import signal
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from codec.audio_io import AudioError, AudioReader, write_audio
from codec.bitstream.atomic import atomic_output
from codec.bitstream.container import DEFAULT_BLOCK_FRAMES, decode_codes, parse, write_file
from codec.bitstream.errors import BitstreamError
from codec.bitstream.header import MODE_RANGE, TRAILER_SIZE, Trailer
from codec.bitstream.priors import Priors
from codec.files.coding import (
    DECODE_BLOCK_FRAMES,
    EncodeResult,
    check_model,
    decode_blocks,
    encode_stream,
    fixed_width_if_smaller,
    make_header,
)

#: Files longer than this (seconds) are encoded alone, streamed block by block.
LONG_SECONDS = 60.0
#: A batch holds at most this many seconds of (padded) audio.
BATCH_SECONDS = 240.0
#: A file's failure that is its own (bad input, a file system error): its message alone; any
#: other exception is reported as an internal error.
EXPECTED_ERRORS = (AudioError, BitstreamError, OSError)


@dataclass(frozen=True)
class EncodeSettings:
    """What ``codec encode`` does to each file: the model directory, the stages ``n_q``,
    ``fmt`` "rvq" (a bitstream, range-coded with the model's priors when ``entropy``, in
    records of ``block_frames``) or "npy" (codes int16 [n_q, frames]), and ``exact`` (float64)."""

    model_dir: str
    n_q: int
    fmt: str = "rvq"
    entropy: bool = False
    block_frames: int = DEFAULT_BLOCK_FRAMES
    exact: bool = False


@dataclass(frozen=True)
class DecodeSettings:
    """What ``codec decode`` does to each file: the model directory and the sample ``subtype``
    (None: 16-bit PCM where the format has it)."""

    model_dir: str
    subtype: str | None = None


@dataclass(frozen=True)
class Job:
    """One file to do: ``source`` -> ``output``; ``seconds``: its length if known (batching)."""

    source: str
    output: str
    seconds: float | None = None


@dataclass(frozen=True)
class Outcome:
    """What became of one Job. ``error``: None when done, else the one-line reason (starting
    with the source path). ``seconds``: audio seconds done; ``frames`` x ``stages``: the codes;
    ``samples``: the signal's length at ``sample_rate`` (the model's, Hz); ``channels``: the
    input's (encode); ``fingerprint``: the model's, hex."""

    source: str
    output: str
    error: str | None = None
    seconds: float = 0.0
    frames: int = 0
    stages: int = 0
    samples: int = 0
    channels: int = 1
    fingerprint: str = ""
    sample_rate: int = 0


def groups(jobs: list[Job], batch: int, long_seconds: float = LONG_SECONDS,
           batch_seconds: float = BATCH_SECONDS) -> list[list[Job]]:
    """Jobs in groups for one batched call each, the longest first (workers finish together):
    a job of unknown length or longer than ``long_seconds`` alone, then the others by length,
    up to ``batch`` neighbours whose padded total stays within ``batch_seconds``. Depends only
    on the jobs, so any number of workers gives the same groups (and the same bytes)."""
    alone = [[j] for j in jobs if j.seconds is None or j.seconds > long_seconds]
    short = sorted((j for j in jobs if j.seconds is not None and j.seconds <= long_seconds),
                   key=lambda j: (-j.seconds, j.source))
    out: list[list[Job]] = []
    for job in short:
        last = out[-1] if out else None
        if last is not None and len(last) < batch and last[0].seconds * (len(last) + 1) <= batch_seconds:
            last.append(job)
        else:
            out.append([job])
    return alone + out


def audio_seconds(path: str) -> float | None:
    """A file's length in seconds from its header (soundfile), None when unknown or unreadable."""
    import soundfile as sf

    try:
        info = sf.info(path)
    except Exception:  # noqa: BLE001 - the job itself reports the reason
        return None
    return info.frames / info.samplerate if 0 < info.frames < 1 << 62 and info.samplerate > 0 else None


def rvq_seconds(path: str, sample_rate: int) -> float | None:
    """A .rvq file's length in seconds from its trailer (not checked), None when unreadable."""
    try:
        with open(path, "rb") as f:
            f.seek(-TRAILER_SIZE, os.SEEK_END)
            samples = Trailer.from_bytes(f.read(TRAILER_SIZE)).num_samples
    except (OSError, ValueError):
        return None
    return samples / sample_rate


class Worker:
    """A loaded model (eval mode, one thread) that does groups of jobs with ``run``."""

    def __init__(self, settings: EncodeSettings | DecodeSettings) -> None:
        from codec.model import Codec

        self.settings = settings
        self.model = Codec.from_pretrained(settings.model_dir).eval()
        self.fingerprint = self.model.fingerprint().hex()
        self._priors: Priors | None = None
        if isinstance(settings, EncodeSettings):
            self.model.exact = settings.exact

    def priors(self) -> Priors:
        """The model's entropy priors (loaded once); BitstreamError if missing or another model's."""
        if self._priors is None:
            priors = Priors.load(self.settings.model_dir)
            if priors.fingerprint.hex() != self.fingerprint:
                raise BitstreamError(f"entropy priors in {self.settings.model_dir} were computed for another"
                                     " model; run `codec priors` again")
            self._priors = priors
        return self._priors

    def run(self, jobs: list[Job]) -> list[Outcome]:
        """Do one group of jobs (see ``groups``): an Outcome for each, in order."""
        with torch.inference_mode():
            if isinstance(self.settings, EncodeSettings):
                return self._encode(jobs, self.settings)
            return self._decode(jobs, self.settings)

    # ----- encode -------------------------------------------------------------------------
    def _encode(self, jobs: list[Job], s: EncodeSettings) -> list[Outcome]:
        model, rate = self.model, self.model.sample_rate
        done: dict[int, Outcome] = {}
        batch: list[tuple[int, np.ndarray, int]] = []  # (index, audio [T], channels)
        for i, job in enumerate(jobs):
            try:
                with AudioReader(job.source) as reader:
                    if reader.duration_s is None or reader.duration_s > LONG_SECONDS:
                        done[i] = self._encode_streamed(job, reader, s)
                    else:
                        batch.append((i, np.concatenate(list(reader.blocks(rate))), reader.channels))
            except Exception as e:  # noqa: BLE001 - one file's failure is its Outcome
                done[i] = failed(job, e)
        if batch:
            try:
                codes = model.encode_batch([torch.from_numpy(wav) for _, wav, _ in batch], s.n_q)
            except Exception as e:  # noqa: BLE001
                codes = None
                done.update({i: failed(jobs[i], e) for i, _, _ in batch})
            for (i, wav, channels), c in zip(batch, codes or []):
                try:
                    done[i] = self._write_codes(jobs[i], c.cpu().numpy(), len(wav), channels, s)
                except Exception as e:  # noqa: BLE001
                    done[i] = failed(jobs[i], e)
        return [done[i] for i in range(len(jobs))]

    def _encode_streamed(self, job: Job, reader: AudioReader, s: EncodeSettings) -> Outcome:
        model = self.model
        blocks = reader.blocks(model.sample_rate)
        if s.fmt == "npy":
            samples, chunks = 0, []
            with model.streaming():
                for block in blocks:
                    samples += len(block)
                    chunks.append(model.encode(torch.from_numpy(block)[None, None], s.n_q)[0])
                chunks.append(model.flush(s.n_q)[0])
            return self._write_codes(job, torch.cat(chunks, -1).cpu().numpy(), samples, reader.channels, s)
        priors = self.priors() if s.entropy else None
        header = make_header(model, s.n_q, priors, s.block_frames)
        with atomic_output(job.output) as out:
            result = encode_stream(model, blocks, out, header, priors)
            if priors is not None:
                fixed_width_if_smaller(out, result, priors)
        return self._outcome(job, result.num_frames, s.n_q, result.num_samples, reader.channels)

    def _write_codes(self, job: Job, codes: np.ndarray, samples: int, channels: int, s: EncodeSettings) -> Outcome:
        """Write codes [n_q, F] of a ``samples``-long signal as ``s.fmt``, atomically."""
        with atomic_output(job.output) as out:
            if s.fmt == "npy":
                np.save(out, codes.astype(np.int16))
            else:
                priors = self.priors() if s.entropy else None
                header = make_header(self.model, s.n_q, priors, s.block_frames)
                size = write_file(out, header, codes, samples, priors)
                if priors is not None:
                    fixed_width_if_smaller(out, EncodeResult(samples, codes.shape[1], size), priors)
        return self._outcome(job, codes.shape[1], s.n_q, samples, channels)

    def _outcome(self, job: Job, frames: int, stages: int, samples: int, channels: int = 1) -> Outcome:
        rate = self.model.sample_rate
        return Outcome(job.source, job.output, None, samples / rate, frames, stages, samples, channels,
                       self.fingerprint, rate)

    # ----- decode -------------------------------------------------------------------------
    def _decode(self, jobs: list[Job], s: DecodeSettings) -> list[Outcome]:
        model = self.model
        done: dict[int, Outcome] = {}
        by_stages: dict[int, list[tuple[int, np.ndarray, int]]] = defaultdict(list)  # n -> (index, codes, samples)
        for i, job in enumerate(jobs):
            try:
                parsed = parse(Path(job.source).read_bytes())
                check_model(parsed.header, model)
                priors = self.priors() if parsed.header.mode == MODE_RANGE else None
                if parsed.trailer.num_frames > DECODE_BLOCK_FRAMES:
                    write_audio(job.output, decode_blocks(model, parsed, priors), model.sample_rate, s.subtype)
                    done[i] = self._outcome(job, parsed.trailer.num_frames, parsed.header.num_stages,
                                            parsed.trailer.num_samples)
                    continue
                codes = decode_codes(parsed, priors)
                by_stages[parsed.header.num_stages].append((i, codes, parsed.trailer.num_samples))
            except Exception as e:  # noqa: BLE001 - one file's failure is its Outcome
                done[i] = failed(job, e)
        for n, items in by_stages.items():
            try:
                wavs = model.decode_batch([torch.from_numpy(c) for _, c, _ in items], [t for _, _, t in items])
            except Exception as e:  # noqa: BLE001
                done.update({i: failed(jobs[i], e) for i, _, _ in items})
                continue
            for (i, codes, samples), wav in zip(items, wavs):
                try:
                    write_audio(jobs[i].output, [wav.cpu().numpy()], model.sample_rate, s.subtype)
                    done[i] = self._outcome(jobs[i], codes.shape[1], n, samples)
                except Exception as e:  # noqa: BLE001
                    done[i] = failed(jobs[i], e)
        return [done[i] for i in range(len(jobs))]


def failed(job: Job, error: BaseException) -> Outcome:
    """The Outcome of a job that raised ``error``: its message in one line, naming the source."""
    if isinstance(error, OSError) and error.strerror:
        reason = error.strerror + (f" ({error.filename})" if error.filename and error.filename != job.source else "")
    else:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if not isinstance(error, EXPECTED_ERRORS):
        reason = f"internal error: {type(error).__name__}: {reason}"
    if not reason.startswith(job.source + ":"):
        reason = f"{job.source}: {reason}"
    return Outcome(job.source, job.output, reason)


# ----- worker processes -----------------------------------------------------------------------
_worker: Worker | None = None
_busy = False  # a job is running (its temporary output must be removed if the process is ended)


def init_process(settings: EncodeSettings | DecodeSettings) -> None:
    """A worker process's initializer: one torch thread, the model loaded once. SIGINT and
    SIGHUP are left to the parent, which ends its workers with SIGTERM: that unwinds a running
    job (its temporary output is removed) and ends an idle worker at once."""
    global _worker
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _end_on_signal)
    _worker = Worker(settings)


def _end_on_signal(signum: int, frame: object) -> None:
    if _busy:
        raise SystemExit(128 + signum)
    os._exit(128 + signum)


def run_in_process(jobs: list[Job]) -> list[Outcome]:
    """Do one group of jobs in a worker process set up by ``init_process``."""
    global _busy
    assert _worker is not None, "init_process was not run"
    _busy = True
    try:
        return _worker.run(jobs)
    finally:
        _busy = False


def run_here(settings: EncodeSettings | DecodeSettings, batches: Iterable[list[Job]]) -> Iterable[list[Outcome]]:
    """Do the groups in this process with one torch thread (as a worker does: the same bytes),
    yielding each group's Outcomes; the thread count is restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        worker = Worker(settings)
        for jobs in batches:
            yield worker.run(jobs)
    finally:
        torch.set_num_threads(threads)
