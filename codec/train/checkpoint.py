"""Atomic, rotating checkpoints on top of ``accelerator.save_state``.

Layout under ``<out_dir>/checkpoints``: complete checkpoints are ``step_00001000/`` (model
weights as safetensors, optimizer, scheduler, every rank's RNG states, trainer_state.json).
A checkpoint is first written to ``.tmp-step_00001000/`` and renamed when every rank has
finished, so a kill at any moment leaves either the old set of complete checkpoints or the
new one; a half-written ``.tmp-*`` folder is ignored and removed by the next run.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from accelerate import Accelerator

from codec.recipe import ConfigError

_COMPLETE = re.compile(r"^step_(\d{8})$")
STATE_FILE = "trainer_state.json"


def checkpoint_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def complete_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first. Complete means: final name
    (renamed after writing) and a trainer_state.json inside."""
    root = checkpoint_dir(out_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _COMPLETE.match(p.name)
        if m and p.is_dir() and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(out_dir: str | Path) -> tuple[int, Path] | None:
    """The newest complete checkpoint, or None."""
    found = complete_checkpoints(out_dir)
    return found[-1] if found else None


def remove_partial(out_dir: str | Path) -> list[Path]:
    """Delete leftovers of interrupted writes (``.tmp-*``); returns what was removed."""
    root = checkpoint_dir(out_dir)
    gone = [p for p in root.glob(".tmp-*")] if root.is_dir() else []
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone


def save_checkpoint(accelerator: Accelerator, out_dir: str | Path, step: int, keep_last: int,
                    extra: dict | None = None, crash_hook=None) -> Path:
    """Write the checkpoint of ``step`` atomically and prune to the newest ``keep_last``.

    Must be called on every rank (save_state writes each rank's RNG state). ``extra`` is
    stored in trainer_state.json. ``crash_hook(tmp_dir)``, a test hook, runs on the main
    process after the state is written and before the rename.
    """
    root = checkpoint_dir(out_dir)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-{final.name}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps({"step": step, **(extra or {})}, indent=2) + "\n")
        if crash_hook is not None:
            crash_hook(tmp)
        if final.exists():  # re-saving a step (e.g. the final save of a resumed run)
            shutil.rmtree(final)
        tmp.rename(final)  # the commit point: atomic on one filesystem
        for _, old in complete_checkpoints(out_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, path: Path) -> dict:
    """Restore model, optimizer, registered objects and RNG; returns trainer_state.json.
    ConfigError when the checkpoint's optimizer or registered objects do not match this run's
    (a checkpoint from before the per-part lr groups, or a run with a weight average where the
    checkpoint has none): such a run continues from its weights with ``train.init_from``."""
    try:
        accelerator.load_state(str(path))
    except (RuntimeError, ValueError, KeyError, IndexError, FileNotFoundError) as exc:
        reason = str(exc).splitlines()[0].rstrip(":")
        raise ConfigError(f"{path} does not fit this run's optimizer or training state ({reason}); start a new "
                          f"run from its weights with --set init_from=<its exported model>") from None
    return json.loads((path / STATE_FILE).read_text())
