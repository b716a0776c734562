"""The ``codec`` command line: encode, decode, stream-encode, stream-decode, info, priors, train,
eval, export, demo.

One module per subcommand (``add_parser`` registers it, ``run`` does it); what they share is
in ``codec.cli.common``. ``--model NAME|DIR`` takes a shipped model's name (a subdirectory of
``codec/pretrained/``) or a model directory; without it, encode / decode / demo use the
shipped default model.

Bad input of any kind ends with one ``codec: error: ...`` line on stderr and exit code 2,
before any output is made where it can be known in advance. Outputs are written to a
temporary file and renamed into place only on success; SIGINT, SIGTERM and SIGHUP remove it
(exit 128 + the signal's number). A reader that closes the pipe (``| head``) ends the run
quietly, as it ends ``cat`` (exit 141).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import warnings
from collections.abc import Iterator

from codec.cli import decode, demo, encode, export, info, priors, stream_decode, stream_encode, train
from codec.cli import eval as evaluate
from codec.cli.common import EXIT_BAD_INPUT, CLIError, warn
from codec.cli.signals import Terminated, signals_unwind

__all__ = ["CLIError", "Terminated", "build_parser", "main"]

SUBCOMMANDS = (encode, decode, stream_encode, stream_decode, info, priors, train, evaluate, export, demo)
EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a process ended by SIGPIPE, as cat


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rvq-codec")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The ``codec`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="codec", description="Neural speech codec: compress speech into .rvq bitstreams and back.",
        epilog="`codec COMMAND --help` explains each command. Quick start: codec demo")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in SUBCOMMANDS:
        command.add_parser(sub)
    return parser


@contextlib.contextmanager
def _warnings_as_notes() -> Iterator[None]:
    """Python warnings print as one ``codec: warning: ...`` line each (no source line)."""
    with warnings.catch_warnings():  # the filters stay as they are: only how a warning is shown changes
        warnings.showwarning = lambda message, *rest, **kw: warn(str(message))
        yield


def _quiet_stdout() -> None:
    """After a broken pipe or a stop: point stdout at /dev/null, so the interpreter's final flush
    of what its buffer still holds neither fails nor blocks on a full pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``codec`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    from codec.audio_io import AudioError
    from codec.bitstream.errors import BitstreamError

    try:
        with signals_unwind(), _warnings_as_notes():
            if args.command == "eval":
                args.models = evaluate.shipped_names_to_dirs(args.models)
            status = args.func(args)  # an int: the exit code of a run that went on past a failure
            sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
    except (CLIError, AudioError, BitstreamError) as e:
        print(f"codec: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except OSError as e:
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"codec: error: {where}{e.strerror or e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        _quiet_stdout()  # output abandoned: the exit's flush must not block on a pipe no one reads
        print("codec: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except Terminated as e:
        _quiet_stdout()
        print(f"codec: stopped by {signal.Signals(e.signum).name}", file=sys.stderr)
        return 128 + e.signum
    except Exception as e:
        if os.environ.get("CODEC_DEBUG"):
            raise
        print(f"codec: internal error: {type(e).__name__}: {e} (set CODEC_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1
    return status if isinstance(status, int) else 0
