"""One file's work in a multi-file run and what became of it: ``Job`` (source -> output),
``Outcome`` (done, with its sizes, or failed, with a one-line reason) and ``failed`` (an
exception as that reason)."""

from __future__ import annotations

from dataclasses import dataclass

from codec.audio_io import AudioError
from codec.bitstream.errors import BitstreamError

#: A file's failure that is its own (bad input, a file system error): its message alone; any
#: other exception is reported as an internal error.
EXPECTED_ERRORS = (AudioError, BitstreamError, OSError)


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


def failed(job: Job, error: BaseException | str) -> Outcome:
    """The Outcome of a job that raised ``error`` (or did not run, ``error`` saying why): the
    reason in one line, starting with the source path."""
    if isinstance(error, str):
        reason = error
    elif isinstance(error, OSError) and error.strerror:
        reason = error.strerror + (f" ({error.filename})" if error.filename and error.filename != job.source else "")
    else:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, BaseException) and not isinstance(error, EXPECTED_ERRORS):
        reason = f"internal error: {type(error).__name__}: {reason}"
    if not reason.startswith(job.source + ":"):
        reason = f"{job.source}: {reason}"
    return Outcome(job.source, job.output, reason)
