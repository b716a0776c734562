"""The native frame engine as installed (setup.py): both builds exist, the CPU picks one,
CODEC_NATIVE chooses or switches it off, and a missing, mismatched or stale build is a warning
and the PyTorch path. Not skipped when the engine is missing: then these tests fail, since the
README's install builds it."""
from __future__ import annotations

import pytest

from codec.runtime import native


@pytest.fixture
def fresh(monkeypatch):
    """``native.load()`` decides afresh within the test (its per-process result restored after)."""
    monkeypatch.setattr(native, "_TRIED", False)
    monkeypatch.setattr(native, "_LIB", None)
    return monkeypatch


def test_install_built_the_engine_this_cpu_runs(fresh) -> None:
    assert native.library_path("base") is not None
    if native.cpu_runs_avx2():
        assert native.library_path("avx2") is not None and native.chosen_variant() == "avx2"
    lib = native.load()
    assert lib is not None and lib._name == str(native.library_path(native.chosen_variant()))
    assert lib.codec_source_hash().decode() == native.source_hash()


def test_codec_native_picks_the_plain_build_or_none(fresh) -> None:
    fresh.setenv("CODEC_NATIVE", "base")
    assert native.load()._name == str(native.library_path("base"))
    fresh.setattr(native, "_TRIED", False)
    fresh.setattr(native, "_LIB", None)
    fresh.setenv("CODEC_NATIVE", "0")
    assert native.load() is None


def test_a_missing_build_falls_back_to_the_plain_one_then_to_pytorch(fresh) -> None:
    base = native.library_path("base")
    fresh.setattr(native, "cpu_runs_avx2", lambda: True)
    fresh.setattr(native, "library_path", lambda v: base if v == "base" else None)
    assert native.chosen_variant() == "base" and native.load()._name == str(base)
    fresh.setattr(native, "_TRIED", False)
    fresh.setattr(native, "_LIB", None)
    fresh.setattr(native, "library_path", lambda v: None)
    with pytest.warns(UserWarning, match="not built"):
        assert native.load() is None


def test_a_build_of_another_source_is_not_used(fresh) -> None:
    fresh.setattr(native, "source_hash", lambda: "0" * 64)  # frame_engine.c edited since the install
    with pytest.warns(UserWarning, match="older frame_engine.c"):
        assert native.load() is None
