"""Where the groups of a multi-file run are done: in this process (one torch thread, the
already loaded model) or in worker processes (spawned, a fresh interpreter each, the model
loaded once per process). ``run_groups`` picks; ``pooled`` is the process pool.

A worker process that dies (killed, out of memory, crashed) never hangs the run: the files it
held, and those still waiting, come back failed. A stopped run (Ctrl-C, SIGTERM) ends its
workers with SIGTERM, which unwinds a running job (its temporary output is removed) and ends
an idle worker at once.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from codec.files.jobs import Job, Outcome, failed
from codec.files.workers import DecodeSettings, EncodeSettings, Worker

T = TypeVar("T")
R = TypeVar("R")

DIED = "not done: a worker process ended abruptly (killed, out of memory or crashed)"


def run_groups(worker: Worker, groups: list[list[Job]], processes: int) -> Iterator[list[Outcome]]:
    """Each group's Outcomes (in the group's order) as the groups finish: in this process with
    ``worker`` when ``processes`` is 1 or there is one group, else in up to ``processes`` worker
    processes, each loading the worker's model; ``worker`` then drops its model (the parent
    runs no job, so it keeps no copy)."""
    if processes == 1 or len(groups) <= 1:
        yield from in_this_process(worker, groups)
        return
    spec = (type(worker), worker.settings)
    worker.release()
    for group, result in pooled(run_in_process, groups, min(processes, len(groups)), init_process, spec):
        if isinstance(result, BaseException):
            reason = DIED if isinstance(result, BrokenProcessPool) else result
            yield [failed(job, reason) for job in group]
        else:
            yield result


def in_this_process(worker: Worker, groups: Iterable[list[Job]]) -> Iterator[list[Outcome]]:
    """Do the groups here with one torch thread (as a worker process does: the same bytes),
    yielding each group's Outcomes; the thread count is restored after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for jobs in groups:
            yield worker.run(jobs)
    finally:
        torch.set_num_threads(threads)


def pooled(task: Callable[[T], R], items: Sequence[T], processes: int, initializer: Callable[..., object] | None = None,
           initargs: tuple = ()) -> Iterator[tuple[T, R | Exception]]:
    """(item, ``task(item)``) pairs as they finish, from ``processes`` spawned worker processes
    (each set up by ``initializer(*initargs)``). An item whose task raised, or whose worker
    died, comes with the exception instead of a result (a dead worker breaks the pool:
    ``BrokenProcessPool`` for every item not finished). When the consumer stops (an exception,
    a signal, the generator closed) the workers get SIGTERM and are waited for."""
    executor = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=initializer, initargs=initargs)
    try:
        with _sigint_ignored():  # the workers start now and inherit it: Ctrl-C is the parent's to handle
            futures = {executor.submit(task, item): item for item in items}
        for future in as_completed(futures):
            try:
                result: R | Exception = future.result()
            except Exception as e:  # noqa: BLE001 - the item's failure, reported with it
                result = e
            yield futures[future], result
    except BaseException:
        _terminate(executor)
        raise
    executor.shutdown(wait=True)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while inside (in the main thread; elsewhere nothing changes), so that
    processes started meanwhile ignore it from their first instruction."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _terminate(executor: ProcessPoolExecutor) -> None:
    """SIGTERM to every worker process of ``executor``, then wait for them; queued items are
    cancelled."""
    # The executor has no public way to end running workers before Python 3.14.
    for process in list((getattr(executor, "_processes", None) or {}).values()):
        if process.is_alive():
            process.terminate()
    executor.shutdown(wait=True, cancel_futures=True)


# ----- inside a worker process -------------------------------------------------------------
_worker: Worker | None = None
_load_error: str | None = None
_busy = False  # a job is running (its temporary output must be removed if the process is ended)


def init_process(kind: type[Worker], settings: EncodeSettings | DecodeSettings) -> None:
    """A worker process's initializer: one torch thread, ``kind``'s model loaded once (a model
    that fails to load fails each job with the reason). SIGINT and SIGHUP are left to the
    parent, which ends its workers with SIGTERM: that unwinds a running job (its temporary
    output is removed) and ends an idle worker at once."""
    global _worker, _load_error
    import torch

    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _end_on_signal)
    try:
        _worker = kind.load(settings)
    except Exception as e:  # noqa: BLE001 - reported with each job
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        _load_error = f"not done: the worker process cannot load the model from {settings.model_dir} ({first})"


def _end_on_signal(signum: int, frame: object) -> None:
    if _busy:
        raise SystemExit(128 + signum)
    os._exit(128 + signum)


def run_in_process(jobs: list[Job]) -> list[Outcome]:
    """Do one group of jobs in a worker process set up by ``init_process``."""
    global _busy
    if _worker is None:
        return [failed(job, _load_error or "not done: init_process was not run") for job in jobs]
    _busy = True
    try:
        return _worker.run(jobs)
    finally:
        _busy = False
