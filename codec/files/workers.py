"""The work of a multi-file run: a loaded model (eval mode) that does one group of files per
``run(jobs)`` call, in padded batches: ``EncodeWorker`` (audio -> codes, written by the
settings' output: ``codec.files.outputs``) and ``DecodeWorker`` (.rvq -> audio). A file that
fails is one Outcome with its message; the others of its group go on. The model's fingerprint
is computed once per worker.

Short files are read whole and run through the worker's streamer's ``encode_batch`` (codes
equal its offline ``encode_offline``'s; the precision is the settings') or ``Codec.decode_batch``;
a file longer than ``long_seconds`` (or of unknown length) runs alone through the streaming
path that ``codec encode`` / ``decode`` use for one file, so memory stays bounded.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from codec.audio_io import AudioReader, write_audio
from codec.bitstream.atomic import atomic_output
from codec.bitstream.container import decode_codes, parse
from codec.bitstream.errors import BitstreamError
from codec.bitstream.header import MODE_RANGE
from codec.bitstream.priors import Priors
from codec.files.coding import DECODE_BLOCK_FRAMES, Counted, check_model, decode_blocks, stream_codes
from codec.files.estimate import AUDIO_SUFFIXES
from codec.files.jobs import Job, Outcome, failed
from codec.files.manifest import Existing
from codec.files.outputs import CodeSink, NpyOutput, RvqOutput
from codec.files.planning import audio_seconds, long_seconds, rvq_seconds

if TYPE_CHECKING:
    from typing_extensions import Self

    from codec.model import Codec
    from codec.runtime.streamer import Streamer


@dataclass(frozen=True)
class EncodeSettings:
    """What ``codec encode`` does to each file: the model directory, the stages ``n_q``, the
    ``output`` written, and the streamer ``precision`` ("fp32", or "exact": float64)."""

    model_dir: str
    n_q: int
    output: RvqOutput | NpyOutput
    precision: str = "fp32"


@dataclass(frozen=True)
class DecodeSettings:
    """What ``codec decode`` does to each file: the model directory, the audio files' ``suffix``
    (their format, e.g. ".wav") and sample ``subtype`` (None: 16-bit PCM where the format has it)."""

    model_dir: str
    suffix: str = ".wav"
    subtype: str | None = None


class Worker:
    """A model that does groups of jobs (``run``). ``verb``: what it does; ``inputs``: the
    extensions it takes from folders; ``seconds(path)``: an input's length (planning);
    ``suffix`` and ``ledger(folder)``: its outputs' extension and which of them count as done."""

    verb: ClassVar[str]
    inputs: ClassVar[frozenset[str]]

    def __init__(self, settings: EncodeSettings | DecodeSettings, model: Codec,
                 fingerprint: bytes | None = None) -> None:
        self.settings = settings
        self.model: Codec | None = model.eval()
        self._streamer: Streamer | None = None
        self.sample_rate = model.sample_rate
        self.long_seconds = long_seconds(model.frame_rate)
        self._fingerprint = fingerprint

    @classmethod
    def load(cls, settings: EncodeSettings | DecodeSettings) -> Self:
        """A worker with the model loaded from ``settings.model_dir`` (in a worker process)."""
        from codec.model import Codec

        return cls(settings, Codec.from_pretrained(settings.model_dir))

    @property
    def fingerprint(self) -> bytes:
        """The model's fingerprint (computed on first use, once: it hashes every weight)."""
        if self._fingerprint is None:
            self._fingerprint = self._model().fingerprint()
        return self._fingerprint

    def _model(self) -> Codec:
        if self.model is None:
            raise RuntimeError("this worker's model was released")
        return self.model

    def streamer(self) -> Streamer:
        """The model's streamer in the settings' precision (made on first use, once)."""
        if self._streamer is None:
            self._streamer = self._model().streamer(getattr(self.settings, "precision", "fp32"))
        return self._streamer

    def release(self) -> None:
        """Drop the model (its work goes to worker processes); planning still works."""
        self.model = self._streamer = None

    @property
    def suffix(self) -> str:
        """The outputs' extension, e.g. ".rvq"."""
        raise NotImplementedError

    def ledger(self, folder: str) -> Existing:
        """Which outputs in the output folder ``folder`` count as done (a resumed run skips them)."""
        return Existing()

    def seconds(self, path: str) -> float | None:
        """The length of the input ``path`` in seconds from its header, None if unknown."""
        raise NotImplementedError

    def run(self, jobs: list[Job]) -> list[Outcome]:
        """Do one group of jobs (``codec.files.planning.groups``): an Outcome for each, in order."""
        with torch.inference_mode():
            return self._run(jobs)

    def _run(self, jobs: list[Job]) -> list[Outcome]:
        raise NotImplementedError

    def _outcome(self, job: Job, frames: int, stages: int, samples: int, channels: int = 1) -> Outcome:
        return Outcome(job.source, job.output, None, samples / self.sample_rate, frames, stages, samples, channels,
                       self.fingerprint.hex(), self.sample_rate)


class EncodeWorker(Worker):
    """Audio files -> codes, written as ``settings.output`` says."""

    verb = "encode"
    inputs = frozenset(AUDIO_SUFFIXES)
    settings: EncodeSettings

    @property
    def suffix(self) -> str:
        return self.settings.output.suffix

    def ledger(self, folder: str) -> Existing:
        return self.settings.output.ledger(folder)

    def seconds(self, path: str) -> float | None:
        return audio_seconds(path)

    def _run(self, jobs: list[Job]) -> list[Outcome]:
        model = self._model()
        done: dict[int, Outcome] = {}
        batch: list[tuple[int, np.ndarray, int]] = []  # (index, audio [T], channels)
        for i, job in enumerate(jobs):
            try:
                with AudioReader(job.source) as reader:
                    if reader.duration_s is None or reader.duration_s > self.long_seconds:
                        done[i] = self._streamed(job, reader)
                    else:
                        batch.append((i, np.concatenate(list(reader.blocks(model.sample_rate))), reader.channels))
            except Exception as e:  # noqa: BLE001 - one file's failure is its Outcome
                done[i] = failed(job, e)
        if batch:
            try:
                codes = self.streamer().encode_batch([torch.from_numpy(wav) for _, wav, _ in batch], self.settings.n_q)
            except Exception as e:  # noqa: BLE001
                codes = []
                done.update({i: failed(jobs[i], e) for i, _, _ in batch})
            for (i, wav, channels), c in zip(batch, codes):
                try:
                    with self._sink(jobs[i]) as sink:
                        sink.write(c.cpu().numpy())
                        sink.finish(len(wav))
                    done[i] = self._outcome(jobs[i], c.shape[1], self.settings.n_q, len(wav), channels)
                except Exception as e:  # noqa: BLE001
                    done[i] = failed(jobs[i], e)
        return [done[i] for i in range(len(jobs))]

    def _streamed(self, job: Job, reader: AudioReader) -> Outcome:
        """A long file (or of unknown length) through the streaming encoder, block by block."""
        blocks, frames = Counted(reader.blocks(self.sample_rate)), 0
        with self._sink(job) as sink, closing(stream_codes(self.streamer(), blocks, self.settings.n_q)) as chunks:
            for codes in chunks:
                sink.write(codes)
                frames += codes.shape[1]
            sink.finish(blocks.samples)
        return self._outcome(job, frames, self.settings.n_q, blocks.samples, reader.channels)

    @contextmanager
    def _sink(self, job: Job) -> Iterator[CodeSink]:
        """The settings' output for ``job``, written atomically: all of it or nothing."""
        with atomic_output(job.output) as out:
            yield self.settings.output.open(out, self._model(), self.settings.n_q, self.fingerprint)


class DecodeWorker(Worker):
    """.rvq files -> audio files (``settings.suffix``'s format, ``settings.subtype`` samples)."""

    verb = "decode"
    inputs = frozenset({".rvq"})
    settings: DecodeSettings

    def __init__(self, settings: DecodeSettings, model: Codec, fingerprint: bytes | None = None) -> None:
        super().__init__(settings, model, fingerprint)
        self._priors: Priors | None = None

    @property
    def suffix(self) -> str:
        return self.settings.suffix

    def seconds(self, path: str) -> float | None:
        return rvq_seconds(path, self.sample_rate)

    def priors(self) -> Priors:
        """The model's entropy priors (loaded once); BitstreamError if missing or another model's."""
        if self._priors is None:
            priors = Priors.load(self.settings.model_dir)
            if priors.fingerprint != self.fingerprint:
                raise BitstreamError(f"entropy priors in {self.settings.model_dir} were computed for another"
                                     " model; run `codec priors` again")
            self._priors = priors
        return self._priors

    def _run(self, jobs: list[Job]) -> list[Outcome]:
        model, subtype = self._model(), self.settings.subtype
        done: dict[int, Outcome] = {}
        by_stages: dict[int, list[tuple[int, np.ndarray, int]]] = defaultdict(list)  # n -> (index, codes, samples)
        for i, job in enumerate(jobs):
            try:
                parsed = parse(Path(job.source).read_bytes())
                check_model(parsed.header, model, self.fingerprint)
                priors = self.priors() if parsed.header.mode == MODE_RANGE else None
                if parsed.trailer.num_frames > DECODE_BLOCK_FRAMES:
                    blocks = decode_blocks(self.streamer(), parsed, priors, fingerprint=self.fingerprint)
                    write_audio(job.output, blocks, self.sample_rate, subtype)
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
                    write_audio(jobs[i].output, [wav.cpu().numpy()], self.sample_rate, subtype)
                    done[i] = self._outcome(jobs[i], codes.shape[1], n, samples)
                except Exception as e:  # noqa: BLE001
                    done[i] = failed(jobs[i], e)
        return [done[i] for i in range(len(jobs))]
