"""All-or-nothing binary output: a temporary file renamed into place only on success."""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from typing import BinaryIO


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[BinaryIO]:
    """Yield a binary file (readable and seekable too); on normal exit it becomes ``path``
    ('-' = copied to stdout).

    The temporary file lives in the destination folder (same filesystem, so the final
    ``os.replace`` is atomic), or in $TMPDIR for stdout and for an existing output that is not
    a regular file (``/dev/null``, a FIFO: copied into it at the end, never replaced), and is
    made on entry, so a folder that cannot be written fails before any work. On any exception
    (a signal the caller turns into one included) it is deleted and nothing reaches the
    destination. OSErrors about the temporary file name ``path`` instead, the file the user
    asked for.
    """
    stream = path == "-" or is_special(path)
    folder = None if stream else os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".codec-", suffix=".tmp", dir=folder)
    except OSError as e:
        raise OSError(e.errno, e.strerror, path) from None
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "w+b") as f:
            yield f
        if path == "-":
            with open(tmp, "rb") as src:
                copy_all(src, sys.stdout.buffer)
            sys.stdout.buffer.flush()
        elif stream:
            with open(tmp, "rb") as src, open(path, "wb") as dst:
                copy_all(src, dst)
        else:
            try:
                os.replace(tmp, path)
            except OSError as e:
                raise OSError(e.errno, e.strerror, path) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_all(out: BinaryIO, data: bytes | memoryview) -> None:
    """Write every byte of ``data`` to ``out`` or raise.

    A buffered writer may return a short count instead: CPython's does when a pipe's reader goes
    away part-way through a large write (the kernel reports the bytes that fitted, not EPIPE),
    and ``shutil.copyfileobj`` ignores the count, so a closed pipe could pass for a complete
    output. Writing the rest again raises BrokenPipeError then (or goes on, after a signal)."""
    view = memoryview(data).cast("B")
    while view:
        written = out.write(view)
        view = view[len(view) if written is None else written:]  # None: a writer that writes all


def copy_all(src: BinaryIO, dst: BinaryIO, chunk: int = 1 << 16) -> None:
    """Copy ``src`` from its position to its end into ``dst`` with ``write_all``."""
    while block := src.read(chunk):
        write_all(dst, block)


def is_special(path: str) -> bool:
    """Whether ``path`` exists and is neither a regular file nor a directory (a device, a FIFO)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
