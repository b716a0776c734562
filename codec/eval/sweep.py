"""The rate-quality sweep: every (system, utterance) is one task, run in a process pool.

A codec task encodes the utterance once with all of the model's stages into a real ``.rvq``
file (``encode_stream``), reads the codes back, writes one file per evaluated stage count
(the first n stages' codes: residual stages do not depend on later ones, so these files are
byte-identical to ``codec encode --stages n``), parses and decodes each file and scores the
decoded audio against the original. With ``entropy`` it also writes the range-coded file of
the same codes, checks that it decodes to the same codes and reports its size under the
system name ``NAME+entropy`` (same audio, so same scores). Opus tasks run opusenc/opusdec.
A task of an utterance chosen for the listening page also writes, per setting, the start of
the audio it scored as a clip (``codec.eval.clips``).

Results come back in task order whatever the number of processes, and every worker runs
torch on one thread, so the numbers are identical from run to run and for any --jobs.
Workers fork from a forkserver that imported the heavy libraries once (cheap start-up, no
torch / OpenMP thread state inherited from the parent).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from codec.eval.clips import clip_file, write_clip
from codec.eval.metrics import METRIC_RATE, score, to_metric_rate

COLUMNS = (
    "system", "stages", "utterance", "duration_s", "nominal_kbps", "kbps", "payload_kbps",
    "file_bytes", "payload_bytes", "pesq", "stoi", "mel_distance", "si_sdr",
)
ENTROPY_SUFFIX = "+entropy"
INT8_SUFFIX = "+int8"
WORKER_PRELOAD = ["codec.eval.sweep", "codec.model", "codec.files.coding", "codec.audio_io",
                  "codec.eval.opus", "librosa.filters", "pesq", "pystoi", "soxr"]


@dataclass(frozen=True)
class System:
    """One thing to evaluate. kind "codec": ``settings`` are stage counts of the model in
    ``model_dir``; kind "opus": ``settings`` are opusenc bitrates in kbit/s."""

    name: str
    kind: str
    settings: tuple[float, ...]
    model_dir: str | None = None
    entropy: bool = False
    int8: bool = False  # run the model's streamer in the "int8" precision (int8 weights)


@dataclass(frozen=True)
class Task:
    system: System
    path: str  # audio file
    utterance: str  # its name in the results (path relative to the data folder)
    clips: tuple[str, ...] = ()  # listening clips to write, one per setting of the system; () for none


@dataclass
class TaskResult:
    rows: list[dict] = field(default_factory=list)
    counts: list[np.ndarray] | None = None  # codec tasks: per stage, code counts [K_i]
    frames: int = 0


# ----- inside a worker ------------------------------------------------------------------------
_MODELS: dict[tuple[str, bool], tuple[object, object]] = {}


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _model(model_dir: str, entropy: bool, int8: bool = False):
    """(streamer, priors or None): the model's streamer ("int8" or "fp32" precision), loaded
    once per process and precision."""
    key = (model_dir, int8)
    if key not in _MODELS:
        from codec.bitstream.priors import Priors
        from codec.model import Codec

        model = Codec.from_pretrained(model_dir).eval()
        _MODELS[key] = (model.streamer("int8" if int8 else "fp32"), Priors.load(model_dir) if entropy else None)
    return _MODELS[key]


def _row(system: str, stages: int | str, utterance: str, duration: float, nominal_bps: float,
         file_bytes: int, payload_bytes: int, metrics: dict[str, float]) -> dict:
    return {
        "system": system, "stages": stages, "utterance": utterance, "duration_s": duration,
        "nominal_kbps": nominal_bps / 1000, "kbps": 8 * file_bytes / duration / 1000,
        "payload_kbps": 8 * payload_bytes / duration / 1000, "file_bytes": file_bytes,
        "payload_bytes": payload_bytes, **metrics,
    }


def codec_task(task: Task, workdir: Path) -> TaskResult:
    """Encode, write, read back, decode and score one utterance at every stage count."""
    from codec.audio_io import read_audio
    from codec.bitstream.container import decode_codes, parse, write_file
    from codec.files.coding import decode_audio, encode_stream, make_header

    system = task.system
    streamer, priors = _model(system.model_dir, system.entropy, system.int8)
    model = streamer.model
    audio = read_audio(task.path, model.sample_rate)
    reference = audio if model.sample_rate == METRIC_RATE else read_audio(task.path, METRIC_RATE)
    full = workdir / f"stages_{model.num_stages}.rvq"
    with open(full, "wb") as f:
        encode_stream(streamer, [audio], f, make_header(model, model.num_stages))
    parsed = parse(full.read_bytes())
    codes, num_samples = decode_codes(parsed), parsed.trailer.num_samples
    duration = num_samples / model.sample_rate
    result = TaskResult(counts=[np.bincount(row, minlength=k) for row, k in zip(codes, model.codebook_sizes)],
                        frames=codes.shape[1])
    for n in (int(s) for s in system.settings):
        path = workdir / f"stages_{n}.rvq"
        if n != model.num_stages:
            with open(path, "wb") as f:
                write_file(f, make_header(model, n), codes[:n], num_samples)
        parsed_n = parse(path.read_bytes())
        decoded = decode_audio(streamer, parsed_n)
        metrics = score(reference, to_metric_rate(decoded, model.sample_rate))
        if task.clips:
            write_clip(task.clips[system.settings.index(n)], decoded, model.sample_rate)
        nominal = parsed_n.header.nominal_bitrate
        result.rows.append(_row(system.name, n, task.utterance, duration, nominal,
                                path.stat().st_size, parsed_n.payload_size, metrics))
        if system.entropy:
            coded = workdir / f"stages_{n}_range.rvq"
            with open(coded, "wb") as f:
                write_file(f, make_header(model, n, priors), codes[:n], num_samples, priors)
            parsed_rc = parse(coded.read_bytes())
            if not np.array_equal(decode_codes(parsed_rc, priors), codes[:n]):
                raise RuntimeError(f"range-coded file of {task.utterance} does not decode to its codes")
            result.rows.append(_row(system.name + ENTROPY_SUFFIX, n, task.utterance, duration, nominal,
                                    coded.stat().st_size, parsed_rc.payload_size, metrics))
    return result


def opus_task(task: Task, workdir: Path) -> TaskResult:
    """Opus at every bitrate of the system, scored like the codec."""
    from codec.audio_io import read_audio
    from codec.eval.opus import opus_roundtrip

    reference = read_audio(task.path, METRIC_RATE)
    duration = len(reference) / METRIC_RATE
    result = TaskResult()
    for i, kbps in enumerate(task.system.settings):
        out = opus_roundtrip(reference, METRIC_RATE, kbps, workdir)
        if task.clips:
            write_clip(task.clips[i], out.audio, METRIC_RATE)
        result.rows.append(_row(task.system.name, "", task.utterance, duration, 1000 * kbps,
                                out.file_size, out.payload_size, score(reference, out.audio)))
    return result


def run_task(task: Task) -> TaskResult:
    with tempfile.TemporaryDirectory(prefix="codec-eval-") as tmp:
        return (codec_task if task.system.kind == "codec" else opus_task)(task, Path(tmp))


# ----- the pool -------------------------------------------------------------------------------
@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_tasks(tasks: Sequence[Task], jobs: int, progress: bool | None = None) -> Iterator[TaskResult]:
    """Results of ``tasks`` in order, computed by ``jobs`` processes (in this one if jobs == 1),
    with a tqdm progress bar on stderr (``progress=None``: only on a terminal)."""
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), desc="eval", unit="utt", disable=None if progress is None else not progress,
               file=sys.stderr, leave=False)
    jobs = max(1, min(jobs, len(tasks)))
    with bar:
        if jobs == 1:
            _MODELS.clear()  # a model directory may have been rewritten since an earlier run
            try:
                with _one_thread():
                    for task in tasks:
                        yield run_task(task)
                        bar.update()
            finally:
                _MODELS.clear()
            return
        # forkserver: workers fork from a clean server process that imported the libraries once
        # (no torch / OpenMP thread state inherited from this process, no import per worker)
        if "forkserver" in multiprocessing.get_all_start_methods():
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(WORKER_PRELOAD)
        else:
            ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(jobs, initializer=_init_worker) as pool:
            for result in pool.imap(run_task, tasks, chunksize=1):
                yield result
                bar.update()


def sweep(systems: Sequence[System], files: Sequence[tuple[str, str]], jobs: int,
          progress: bool | None = None, clip_dir: Path | None = None,
          listen: Sequence[str] = ()) -> tuple[list[dict], dict[str, tuple[list[np.ndarray], int]]]:
    """Run every system on every (path, utterance) file; for the utterances named in
    ``listen`` also write their clips into ``clip_dir`` (``clips.clip_file``: the n-th of
    ``listen`` and the n-th system, counted from 1).

    Returns the rows (ordered by system, then setting, then file) and, per codec system, the
    per-stage code counts summed over all files with the number of frames.
    """
    listen_no = {utt: k for k, utt in enumerate(listen, start=1)}

    def clips(j: int, s: System, utt: str) -> tuple[str, ...]:
        if clip_dir is None or utt not in listen_no:
            return ()
        return tuple(str(clip_dir / clip_file(listen_no[utt], j, s.name, s.kind, v)) for v in s.settings)

    tasks = [Task(s, path, utt, clips(j, s, utt)) for j, s in enumerate(systems, start=1) for path, utt in files]
    rows: list[dict] = []
    counts: dict[str, tuple[list[np.ndarray], int]] = {}
    for task, result in zip(tasks, run_tasks(tasks, jobs, progress)):
        rows.extend(result.rows)
        if result.counts is not None:
            prev, frames = counts.get(task.system.name, ([np.zeros_like(c) for c in result.counts], 0))
            counts[task.system.name] = ([a + b for a, b in zip(prev, result.counts)], frames + result.frames)
    order = {s.name: i for i, s in enumerate(systems)}
    order.update({s.name + ENTROPY_SUFFIX: i + 0.5 for i, s in enumerate(systems)})
    file_order = {utt: i for i, (_, utt) in enumerate(files)}
    rows.sort(key=lambda r: (order[r["system"]], r["nominal_kbps"], file_order[r["utterance"]]))
    return rows, counts
