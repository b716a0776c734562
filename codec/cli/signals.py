"""How the command line stops on a signal: SIGTERM and SIGHUP unwind the run like Ctrl-C
(``Terminated``, a BaseException, as KeyboardInterrupt is), so outputs are cleaned up; and
``StopBetweenChunks`` holds a signal back while work that must not be cut part-way is done.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

#: What ``signal.signal`` takes and returns: a function, SIG_DFL, SIG_IGN (or None: not set from Python).
Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: unwinds like KeyboardInterrupt, so outputs are cleaned up."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def handling(signums: tuple[int, ...], handler: Handler) -> Iterator[dict[int, Handler]]:
    """While inside: ``handler`` for each signal of ``signums`` that is not ignored (one that is,
    SIG_IGN, as under ``nohup``, stays ignored); the previous handlers are restored after. Yields
    them (signal -> previous handler). Outside the main thread nothing changes (Python sets
    handlers there only) and the dict is empty."""
    previous: dict[int, Handler] = {}
    try:
        for sig in signums:
            if signal.getsignal(sig) != signal.SIG_IGN:
                previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: leave the handlers alone
        pass
    try:
        yield previous
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def signals_unwind() -> Iterator[None]:
    """While inside: SIGTERM and SIGHUP raise Terminated in the main thread (restored after).
    A forked child (a data-loading worker) that inherits the handler dies of the signal as
    before instead."""
    owner = os.getpid()

    def handler(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Terminated(signum)

    with handling((signal.SIGTERM, signal.SIGHUP), handler):
        yield


class StopBetweenChunks:
    """SIGINT, SIGTERM and SIGHUP held back while a chunk of work is under way (``with
    stop.chunk():``) and acted on as soon as it is done, by the handler they had before (the
    command line's: KeyboardInterrupt, ``Terminated``). For work that a signal must not cut
    part-way: ``codec stream-encode`` codes a block and writes its packets in a chunk, so a
    stopped encoder can still end its stream with a well-formed end packet. Outside a chunk
    (waiting for input) a signal acts at once. A second signal during one chunk acts at once
    too (a reader that stopped reading must not keep the process from stopping): ``cut`` then
    says a chunk was left part-way.

    Use as a context manager around the work (it installs its handler; in the main thread only).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.cut = False
        self._busy = False
        self._pending: int | None = None  # a signal that came during the chunk under way
        self._previous: dict[int, Handler] = {}
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> StopBetweenChunks:  # noqa: PYI034
        self._previous = self._stack.enter_context(handling(self.SIGNALS, self._handle))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    @contextlib.contextmanager
    def chunk(self) -> Iterator[None]:
        """A piece of work a first signal does not cut: a signal that comes meanwhile acts when it
        has ended (not when it raised: its exception goes on)."""
        self._busy = True
        try:
            yield
        finally:
            self._busy = False
        if self._pending is not None:
            signum, self._pending = self._pending, None
            self._act(signum, None)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._busy and self._pending is None:
            self._pending = signum  # an interrupted system call resumes (PEP 475): the chunk goes on
            return
        if self._busy:
            self.cut = True
        self._act(signum, frame)

    def _act(self, signum: int, frame: FrameType | None) -> None:
        """Do what the signal's previous handler does."""
        previous = self._previous.get(signum, signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:  # the default action (to end the process, for these)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
