"""Post-training codebook refit (codec/quant/refit.py, tools/refit_codebooks.py): Lloyd with
splitting fixes outlier codewords, lowers the quantisation error, leaves other stages alone,
refuses codebooks it cannot write, and the tool writes a loadable model or one error line."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import soundfile as sf
import torch
from conftest import REPO, speech, tiny_model
from test_residual import D, make_rvq, warm_up

from codec.quant.refit import lloyd_split, refit_codebooks
from codec.quant.search import nearest

pytestmark = pytest.mark.usefixtures("one_thread")


def mixture(n: int, seed: int) -> torch.Tensor:
    """Rows from 8 well-separated Gaussian blobs in D dimensions."""
    g = torch.Generator().manual_seed(seed)
    centres = 4.0 * torch.randn(8, D, generator=torch.Generator().manual_seed(99))
    return centres[torch.randint(0, 8, (n,), generator=g)] + 0.5 * torch.randn(n, D, generator=g)


def test_lloyd_split_moves_outlier_codes_to_the_data() -> None:
    x = mixture(4000, 0)
    book = mixture(32, 1)
    book[:12] = 50.0 + torch.randn(12, D)  # 12 codewords far from every row: never used
    assert torch.bincount(nearest(x, book), minlength=32)[:12].sum() == 0
    new, counts = lloyd_split(x, book, nearest, iters=30, generator=torch.Generator().manual_seed(0))
    assert int((counts > 0).sum()) == 32
    assert int(counts.sum()) == 4000 and torch.equal(counts, torch.bincount(nearest(x, new), minlength=32))
    # Held-out rows of the same distribution use (nearly) every code, and the error fell.
    held = mixture(4000, 2)
    assert torch.bincount(nearest(held, new), minlength=32).gt(0).float().mean() >= 0.95

    def err(b: torch.Tensor, r: torch.Tensor) -> float:
        return float((r - b[nearest(r, b)]).pow(2).sum(1).mean())

    assert err(new, x) < 0.8 * err(book, x)
    assert err(new, held) < 0.8 * err(book, held)


def test_lloyd_without_splits_is_a_fixed_point_of_plain_lloyd() -> None:
    x = mixture(2000, 3)
    new, _ = lloyd_split(x, mixture(16, 4), nearest, iters=60, min_fraction=0.0)
    again, _ = lloyd_split(x, new, nearest, iters=1, min_fraction=0.0)
    assert torch.allclose(new, again, atol=1e-5)


@pytest.mark.parametrize("codebook_dim", [None, 8])
def test_refit_codebooks_changes_only_the_chosen_stages(codebook_dim: int | None) -> None:
    rq = make_rvq("ema", n_stages=3, codebook_dim=codebook_dim)
    warm_up(rq, steps=2)
    rq.eval()
    z = torch.randn(3000, D)
    before = {k: v.clone() for k, v in rq.state_dict().items()}
    residual_before = z - rq.decode(rq.encode(z.t()[None]))[0].t()
    report = refit_codebooks(rq, z, [2, 3], iters=20)
    assert [s.stage for s in report] == [1, 2, 3]
    state = rq.state_dict()
    assert all(torch.equal(state[k], v) for k, v in before.items() if k.startswith("stages.0."))
    assert not torch.equal(state["stages.1.quantizer.embed"], before["stages.1.quantizer.embed"])
    assert report[0].error_before == report[0].error_after
    for s in report[1:]:
        assert s.error_after <= s.error_before + 1e-6
    # The stack's own encode now uses the new codebooks (caches follow the in-place write) and
    # the final residual is smaller.
    residual_after = z - rq.decode(rq.encode(z.t()[None]))[0].t()
    assert residual_after.pow(2).sum(1).mean() < residual_before.pow(2).sum(1).mean()
    # EMA statistics describe the new clusters, so training can go on from here.
    q = rq.stages[2].quantizer
    assert torch.allclose(q.embed_sum, q.embed * q.cluster_size[:, None])


def test_refit_refuses_computed_codebooks_and_bad_stage_numbers() -> None:
    rq = make_rvq("simvq", n_stages=2)
    with pytest.raises(ValueError, match="stage 2 .*SimVQ"):
        refit_codebooks(rq, torch.randn(100, D), [2])
    with pytest.raises(ValueError, match="out of range"):
        refit_codebooks(make_rvq("ema", n_stages=2), torch.randn(100, D), [3])


def _tool():
    spec = importlib.util.spec_from_file_location("refit_tool", REPO / "tools" / "refit_codebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tool_writes_a_loadable_refitted_model(tmp_path: Path, capsys) -> None:
    from codec import Codec

    model = tiny_model("ema")
    model.train()
    with torch.no_grad():
        model(speech(2.0))
    model.eval().save_pretrained(tmp_path / "m")
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        sf.write(data / f"u{i}.flac", speech(1.5, i)[0, 0].numpy(), 16000)
    tool = _tool()
    assert tool.main([str(tmp_path / "m"), "--data", str(data), "--stages", "2-3", "--iters", "5",
                      "--out", str(tmp_path / "refit")]) == 0
    out = capsys.readouterr().out
    assert "stages refitted: 2,3" in out and "| 4 |" in out
    refit = Codec.from_pretrained(tmp_path / "refit")
    old = Codec.from_pretrained(tmp_path / "m")
    assert torch.equal(refit.quantizer.stages[0].quantizer.embed, old.quantizer.stages[0].quantizer.embed)
    assert not torch.equal(refit.quantizer.stages[1].quantizer.embed, old.quantizer.stages[1].quantizer.embed)
    for part in ("encoder", "decoder"):  # the refit touches codebooks only
        new, kept = getattr(refit, part).state_dict(), getattr(old, part).state_dict()
        assert new.keys() == kept.keys() and all(torch.equal(new[k], v) for k, v in kept.items())


@pytest.mark.parametrize("args, message", [
    (["--stages", "x"], "--stages 'x'"),
    (["--stages", "9"], "stage 9 out of range"),
    (["--stages", "1", "--data", "/nonexistent"], "no such directory"),
])
def test_tool_bad_input_is_one_error_line(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    tiny_model("ema").save_pretrained(tmp_path / "m")
    data = tmp_path / "data"
    data.mkdir()
    sf.write(data / "u.flac", speech(0.5)[0, 0].numpy(), 16000)
    argv = [str(tmp_path / "m"), "--data", str(data), "--out", str(tmp_path / "o"), *args]
    assert _tool().main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("refit_codebooks: error:") and message in err[0], err
    assert not (tmp_path / "o").exists()
