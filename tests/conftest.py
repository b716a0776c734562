"""Shared fixtures: where the real speech lives, and tiny models of every quantizer kind."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from codec import Codec
from codec.quant import QUANTIZER_KINDS
from codec.recipe import deep_merge, load_recipe

REPO = Path(__file__).resolve().parents[1]
#: Every registered quantizer kind (the registry is the one list of them).
KINDS = list(QUANTIZER_KINDS)


#: The speech the tests read by default: a small LibriSpeech subset that the repository carries
#: (tests/data/README.md). Set here in the environment, so the package's own defaults (the
#: training data root, codec eval's test set) and every subprocess a test starts read it too;
#: CODEC_DATA=/path/containing/LibriSpeech points the tests at another copy.
TEST_DATA = REPO / "tests" / "data"
os.environ.setdefault("CODEC_DATA", str(TEST_DATA))


def data_root() -> Path:
    """The LibriSpeech root the tests read: $CODEC_DATA/LibriSpeech (tests/data/LibriSpeech
    unless set)."""
    return Path(os.environ["CODEC_DATA"]) / "LibriSpeech"


def speech(seconds: float, index: int = 0, subset: str = "test-other") -> torch.Tensor:
    """A real LibriSpeech utterance (the index-th file in sorted order), its first ``seconds``:
    float [1, 1, T] at 16 kHz."""
    files = sorted((data_root() / subset).rglob("*.flac"))
    if not files:
        pytest.fail(f"no LibriSpeech FLAC files under {data_root() / subset}")
    audio, rate = sf.read(files[index], dtype="float32")
    assert rate == 16000
    audio = audio[: int(seconds * rate)]
    return torch.from_numpy(np.ascontiguousarray(audio))[None, None]


def cycled_slices(total: int, sizes: list[int]) -> list[slice]:
    """Consecutive slices covering 0 .. total, of the given sizes taken in turn (the last cut short)."""
    out, start, k = [], 0, 0
    while start < total:
        out.append(slice(start, start + sizes[k % len(sizes)]))
        start, k = start + sizes[k % len(sizes)], k + 1
    return out


def tiny_recipe(kind: str, **quantizer: object) -> dict:
    """recipes/tiny.yaml with every stage of ``kind`` and extra quantizer settings."""
    return deep_merge(load_recipe(REPO / "recipes" / "tiny.yaml"),
                      {"model": {"quantizer": {"kind": kind, **quantizer}}})


def tiny_model(kind: str, seed: int = 0, **quantizer: object) -> Codec:
    """A freshly initialised tiny Codec (seeded) with every stage of ``kind``."""
    torch.manual_seed(seed)
    return Codec.from_config(tiny_recipe(kind, **quantizer))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: intra-op threads only add contention on a shared machine (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def average_gradients(module: torch.nn.Module) -> None:
    """What DDP does for Parameters: all-reduce the gradients and divide by the world size."""
    import torch.distributed as dist

    world = dist.get_world_size()
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world


def save_rank_state(module: torch.nn.Module, directory: str | Path, kind: str, rank: int,
                    **extra: torch.Tensor) -> None:
    """Write ``module``'s state dict (plus ``extra`` tensors) as ``<kind>_rank<rank>.safetensors``,
    the file ``rank_states`` reads back."""
    from safetensors.torch import save_file

    state = {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}
    save_file({**state, **extra}, str(Path(directory) / f"{kind}_rank{rank}.safetensors"))


def rank_states(directory: Path, kind: str, world: int) -> list[dict[str, torch.Tensor]]:
    """The state dicts that each of ``world`` ranks saved as ``<kind>_rank<r>.safetensors``."""
    from safetensors.torch import load_file

    return [load_file(Path(directory) / f"{kind}_rank{r}.safetensors") for r in range(world)]


def rank_differences(states: list[dict[str, torch.Tensor]]) -> list[str]:
    """Keys whose tensors are not bitwise identical on every rank (or missing on one)."""
    keys = set().union(*(s.keys() for s in states))
    return sorted(k for k in keys if any(k not in s for s in states)
                  or not all(torch.equal(states[0][k], s[k]) for s in states[1:]))


def one_error_line(stderr: str | bytes) -> str:
    """The single ``codec: error: ...`` line a failing command printed (asserts there is
    exactly one and no traceback)."""
    text = stderr.decode() if isinstance(stderr, bytes) else stderr
    lines = [ln for ln in text.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("codec: error: "), text
    assert "Traceback" not in text
    return lines[0]
