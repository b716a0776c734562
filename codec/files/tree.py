"""Many files at once: the inputs that folders and list files name, and the output tree that
mirrors them (``codec encode`` / ``codec decode`` with several inputs)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

LIST_PREFIX = "@"  # an input "@list.txt" names a list file: one path per line


class InputError(ValueError):
    """An input that names nothing usable (a missing list file or folder), with a one-line message."""


@dataclass(frozen=True)
class Planned:
    """One input file and where its output goes. ``source``: the path as found (a folder's
    file joined to the folder as given); ``output``: the mirrored path in the output folder;
    ``relative``: ``output`` relative to the output folder (POSIX form, for a manifest)."""

    source: str
    output: str
    relative: str


def is_list(arg: str) -> bool:
    """Whether a command-line input names a list file (``@FILE``)."""
    return arg.startswith(LIST_PREFIX) and len(arg) > len(LIST_PREFIX)


def read_list(path: str) -> list[str]:
    """The paths in a list file, one a line; blank lines and lines starting with # are skipped,
    and each line is stripped of surrounding white space. Relative paths stay relative to the
    current directory (as ``find ... > list.txt`` writes them). InputError if unreadable."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such list file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a list file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the list ({getattr(e, 'strerror', None) or e})") from None
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def expand(args: Iterable[str], suffixes: set[str], exclude: str | None = None) -> list[tuple[str, str]]:
    """Every input file the command line names: (file, its root) pairs, duplicates dropped.

    ``args``: files, folders and ``@LIST`` files (whose lines may name files and folders). A
    file (on the command line or in a list) is taken whatever its extension; a folder gives the
    files under it, recursively and sorted, whose extension (lower-cased) is in ``suffixes``,
    except those under ``exclude`` (the output folder) when it lies inside that folder (an
    output folder that is the input folder excludes nothing). A file's root is its own folder, a
    folder's files' root is that folder: the output tree mirrors the paths below the roots'
    common folder (``mirror``). A missing path is kept as a file (its job then fails with one
    line); InputError for a list file that cannot be read.
    """
    skip = os.path.abspath(exclude) if exclude is not None else None
    found: list[tuple[str, str]] = []
    seen: set[str] = set()

    def add(path: str, root: str) -> None:
        key = os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            found.append((path, root))

    for arg in args:
        for path in read_list(arg[len(LIST_PREFIX):]) if is_list(arg) else [arg]:
            if not os.path.isdir(path):
                add(path, os.path.dirname(path) or ".")
                continue
            below = skip if skip is not None and skip.startswith(os.path.abspath(path) + os.sep) else None
            for p in sorted(Path(path).rglob("*")):
                inside = below is not None and os.path.abspath(p).startswith(below + os.sep)
                if p.suffix.lower() in suffixes and p.is_file() and not inside:
                    add(str(p), path)
    return found


def mirror(files: list[tuple[str, str]], out_dir: str, suffix: str) -> list[Planned]:
    """Output paths for (file, root) pairs from ``expand``: each file's path below the roots'
    common folder, under ``out_dir``, its extension replaced by ``suffix`` (e.g. ``.rvq``)."""
    if not files:
        return []
    roots = [os.path.abspath(root) for _, root in files]
    common = os.path.commonpath(roots)
    planned = []
    for source, _ in files:
        rel = Path(os.path.relpath(os.path.abspath(source), common)).with_suffix(suffix)
        planned.append(Planned(source, str(Path(out_dir) / rel), rel.as_posix()))
    return planned
