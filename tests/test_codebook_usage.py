"""Codebook-usage mechanisms: cosine (L2-normalised) search with raw-codeword output, as DAC,
and dead-code restarts from batch rows for the gradient-trained kinds (restart.py).

Both are options (off by default, so docs/quantizers.md's maths is unchanged unless a recipe turns
them on); these tests check what each option promises with real numbers.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import REPO, average_gradients, rank_differences, rank_states, save_rank_state, tiny_recipe

from codec import Codec
from codec.config import ModelConfig
from codec.quant import build_quantizer
from codec.quant.base import l2_normalize
from codec.quant.restart import CodeRestart
from codec.recipe import load_recipe

DIM, K = 8, 32
COSINE_KINDS = ["ste", "ema", "simvq", "diveq"]
RESTART_KINDS = ["ste", "simvq", "diveq", "sf_diveq"]


def brute_cosine(x: torch.Tensor, book: torch.Tensor) -> torch.Tensor:
    """argmax_k cos(x, e_k) in float64."""
    xs, es = x.double(), book.double()
    cos = (xs @ es.T) / (xs.norm(dim=1, keepdim=True) * es.norm(dim=1)[None, :])
    return cos.argmax(dim=1)


def spread_codebook(q: torch.nn.Module) -> None:
    """Give the codewords very different norms, so L2 and cosine search disagree often."""
    g = torch.Generator().manual_seed(5)
    book = torch.randn(K, DIM, generator=g) * torch.logspace(-1, 1, K)[:, None]
    with torch.no_grad():
        if hasattr(q, "embed"):
            q.embed.copy_(book)
            if hasattr(q, "embed_sum"):
                q.embed_sum.copy_(book * q.cluster_size[:, None])
        else:  # SimVQ: E = C W^T + b with W = I, b = 0
            q.frozen_codebook.copy_(book)
            q.proj.weight.copy_(torch.eye(DIM))
            q.proj.bias.zero_()


def make(kind: str, **options: object) -> torch.nn.Module:
    defaults = {"ste": {"init": "kaiming"}, "ema": {"kmeans_init": False}, "simvq": {},
                "diveq": {"replace_every": 0, "sigma": 0.0}, "sf_diveq": {"warmup_steps": 0}}
    torch.manual_seed(0)
    return build_quantizer(kind, DIM, K, **{**defaults[kind], **options})


# --- cosine search --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", COSINE_KINDS)
def test_cosine_search_picks_max_cosine_and_outputs_raw_codeword(kind: str) -> None:
    q = make(kind, cosine_search=True)
    spread_codebook(q)
    x = torch.randn(512, DIM, generator=torch.Generator().manual_seed(1))
    book = q.codebook().detach().clone()
    expected = brute_cosine(x, book)
    l2 = ((x[:, None, :] - book[None]) ** 2).sum(-1).argmin(dim=1)
    assert (expected != l2).float().mean() > 0.3  # the two searches really differ here
    q.eval()
    out = q(x)
    assert torch.equal(out.codes, expected)
    assert torch.equal(out.quantized, book[expected])  # the raw codeword, not its direction
    assert torch.equal(q.encode(x.double()), expected)  # the exact fp64 encode path agrees
    assert torch.equal(q.decode(expected), book[expected])
    q.train()
    out = q(x.clone().requires_grad_(True))
    assert torch.equal(out.codes, expected)
    assert torch.allclose(out.quantized, book[expected], atol=1e-5, rtol=1e-5)


def test_cosine_search_is_off_by_default_and_is_plain_l2_then() -> None:
    q = make("ste")
    spread_codebook(q)
    x = torch.randn(256, DIM, generator=torch.Generator().manual_seed(2))
    book = q.codebook().detach()
    l2 = ((x.double()[:, None, :] - book.double()[None]) ** 2).sum(-1).argmin(dim=1)
    assert not q.cosine_search
    assert torch.equal(q.eval().encode(x.double()), l2)  # the exact path: plain L2 argmin


def test_cosine_ste_gradients_use_the_raw_codeword() -> None:
    """STE with cosine search: dL/dz = g exactly; the loss is the VQ-VAE loss on the raw
    codeword c (codebook term 2 (c - z) / (N d) per assigned row, commitment beta times)."""
    q = make("ste", cosine_search=True, beta=0.25).train()
    spread_codebook(q)
    x = torch.randn(64, DIM, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
    out = q(x)
    g = torch.randn_like(out.quantized)
    (out.quantized * g).sum().backward()
    assert torch.equal(x.grad, g)
    assert q.embed.grad is None or not q.embed.grad.any()  # reconstruction gives the book nothing
    x.grad = None
    q.zero_grad()
    out = q(x)
    out.loss.backward()
    c = q.embed.detach()[out.codes]
    n = x.numel()
    expect_x = 0.25 * 2 * (x.detach() - c) / n
    expect_e = torch.zeros_like(q.embed).index_add_(0, out.codes, 2 * (c - x.detach()) / n)
    assert torch.allclose(x.grad, expect_x, atol=1e-7)
    assert torch.allclose(q.embed.grad, expect_e, atol=1e-7)


def test_l2_normalize_keeps_zero_rows_finite() -> None:
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    assert torch.equal(l2_normalize(x), torch.tensor([[0.6, 0.8], [0.0, 0.0]]))


# --- dead-code restarts ---------------------------------------------------------------------

def test_code_restart_counts_idle_steps_and_ignores_masked_rows() -> None:
    r = CodeRestart(4, after=2)
    codes = torch.tensor([0, 1, 1, 3])
    r.record(codes, torch.tensor([True, True, True, False]))  # code 3 only in a masked row
    assert r.idle.tolist() == [0, 0, 1, 1]
    r.record(torch.tensor([0]), None)
    assert r.idle.tolist() == [0, 1, 2, 2]
    assert r.dead().tolist() == [False, False, True, True]
    x = torch.arange(12.0).reshape(4, 3)
    dead, rows = r.propose(x, torch.tensor([False, True, False, True]))
    assert dead.tolist() == [False, False, True, True]
    assert all(any(torch.equal(row, x[i]) for i in (1, 3)) for row in rows)  # active rows only
    assert r.idle.tolist() == [0, 1, 0, 0]
    with pytest.raises(ValueError):
        CodeRestart(4, after=0)


def collapsed(kind: str, after: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """A quantizer whose codes 1.. sit far from the data, so only code 0 is ever chosen."""
    q = make(kind, restart_after=after).train()
    x = torch.randn(256, DIM, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        if kind == "simvq":
            q.frozen_codebook[1:] += 100.0
            q.frozen_codebook[0] = 0.0
        elif kind == "sf_diveq":
            q.vertices[2:] += 100.0
            q.vertices[:2] = 0.0
        else:
            q.embed[1:] += 100.0
            q.embed[0] = 0.0
    return q, x


@pytest.mark.parametrize("kind", RESTART_KINDS)
def test_restart_revives_dead_codes_from_batch_rows(kind: str) -> None:
    q, x = collapsed(kind, after=3)
    for _ in range(3):
        assert q(x).codes.unique().tolist() == [0]  # collapsed, nothing restarted yet
    before = q.codebook().detach().clone()
    out = q(x)  # idle for 3 steps: restarted at the start of this step
    book = q.codebook().detach()
    moved = (book != before).any(dim=1)
    if kind == "sf_diveq":
        # symbols 0 and 1 share vertex 1 with the used symbol 0: symbol 0 stays put
        assert not moved[0] and moved[2:].all()
        verts = q.vertices.detach()
        assert all((verts[k] - x).abs().max(dim=1).values.min() == 0 for k in range(2, K + 1))
    else:
        assert not moved[0] and moved[1:].all()  # the used code is untouched
        gap = (book[1:, None, :].double() - x[None].double()).norm(dim=-1).min(dim=1).values
        assert gap.max() < 1e-4  # every restarted code sits on a batch row
    used = out.codes.unique().numel()
    assert used >= K // 2, used  # restarted codes win their rows at once
    assert out.loss.isfinite()


def test_simvq_restart_rewrites_c_only() -> None:
    q, x = collapsed("simvq", after=1)
    q(x)
    w, b = q.proj.weight.detach().clone(), q.proj.bias.detach().clone()
    c0 = q.frozen_codebook[0].clone()
    q(x)
    assert torch.equal(q.proj.weight, w) and torch.equal(q.proj.bias, b)
    assert torch.equal(q.frozen_codebook[0], c0)
    book = q.codebook().detach()
    gap = (book[1:, None, :].double() - x[None].double()).norm(dim=-1).min(dim=1).values
    assert gap.max() < 1e-4  # C_k W^T + b lands on a batch row


def test_restarted_parameter_trains_normally_afterwards() -> None:
    q, x = collapsed("ste", after=1)
    opt = torch.optim.Adam(q.parameters(), lr=1e-2)
    for _ in range(5):
        xi = x.clone().requires_grad_(True)
        out = q(xi)
        (out.quantized.square().mean() + out.loss).backward()
        assert xi.grad.isfinite().all() and q.embed.grad.isfinite().all()
        opt.step()
        opt.zero_grad()
    assert q(x).codes.unique().numel() >= K // 2


@pytest.mark.parametrize("kind", RESTART_KINDS)
def test_restart_off_keeps_state_keys_and_behaviour(kind: str) -> None:
    q = make(kind)
    assert q.restart is None
    assert not any("idle" in key for key in q.state_dict())
    assert "idle" in " ".join(make(kind, restart_after=5).state_dict())


def test_restart_is_ignored_in_eval() -> None:
    q, x = collapsed("ste", after=1)
    q(x)
    q.eval()
    before = q.embed.detach().clone()
    idle = q.restart.idle.clone()
    for _ in range(3):
        q(x)
    assert torch.equal(q.embed, before) and torch.equal(q.restart.idle, idle)


# --- distributed: restarts choose the same rows on every rank --------------------------------

WORLD = 2


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        for kind in RESTART_KINDS:
            q, _ = collapsed(kind, after=2)  # identical construction on every rank
            opt = torch.optim.Adam(q.parameters(), lr=1e-2)
            data = torch.Generator().manual_seed(1000 + rank)  # different data per rank
            torch.manual_seed(100 + rank)  # and different local randomness
            restarted = 0
            for _ in range(6):
                x = (torch.randn(64, DIM, generator=data) * (1 + rank)).requires_grad_(True)
                mask = torch.rand(64, generator=data) < 0.8
                before = q.codebook().detach().clone()
                out = q(x, mask)
                restarted += int((q.codebook().detach() != before).any(dim=1).sum())
                (out.quantized.square().mean() + out.loss).backward()
                average_gradients(q)
                opt.step()
                opt.zero_grad()
            save_rank_state(q, out_dir, kind, rank, restarted=torch.tensor(restarted))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_restarts_keep_ranks_bitwise_identical(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    for kind in RESTART_KINDS:
        states = rank_states(tmp_path, kind, WORLD)
        assert int(states[0]["restarted"]) > 0, kind  # restarts really happened
        assert rank_differences(states) == [], kind


# --- recipes --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["ste", "ema", "simvq", "diveq", "sf_diveq"])
def test_recipes_build_with_the_usage_options(kind: str) -> None:
    model = Codec.from_config(tiny_recipe(kind))
    assert model.num_stages == 4
    assert (REPO / "recipes" / f"{kind}.yaml").exists()


# --- EMA dead-code threshold follows the batch --------------------------------------------------
EMA_RECIPES = sorted(p.name for p in (REPO / "recipes").glob("*.yaml")
                     if any(s.kind == "ema" for s in ModelConfig.from_dict(load_recipe(p)).quantizer.resolved_stages()))


@pytest.mark.parametrize("recipe", EMA_RECIPES)
def test_no_recipe_restarts_most_of_an_ema_codebook_every_step(recipe: str) -> None:
    """With each recipe's EMA options, codebook size and rows per step (batch x crop x frame
    rate), stationary latents settle to a few restarts per step: an absolute threshold of 2
    (base.yaml before) restarted about 80% of 1024 codes every step at 800 rows."""
    from codec.train.config import load_training_recipe

    _, model_cfg, cfg = load_training_recipe(REPO / "recipes" / recipe)
    stage = next(s for s in model_cfg.quantizer.resolved_stages() if s.kind == "ema")
    rows = int(cfg.batch_size * cfg.data.crop_seconds * model_cfg.sample_rate / math.prod(model_cfg.strides))
    torch.manual_seed(0)
    q = build_quantizer("ema", 16, stage.codebook_size, **stage.options).train()
    restarts = []
    for _ in range(300):
        q(torch.randn(rows, 16))
        restarts.append(q.last_restarts)
    late = sum(restarts[-100:]) / 100
    assert late < 0.02 * stage.codebook_size, (recipe, rows, late, q.threshold())


def test_simvq_restart_keeps_rows_of_c_at_their_scale() -> None:
    """With an ill-conditioned W (singular values 1 .. 1e-3 at d = 128), the exact solve
    C_k = (x - b) pinv(W)^T gives rows tens to hundreds of times the others' norm, and one
    AdamW step then moves those codewords as much farther. The restart bounds the row (ridge
    through W's SVD): restarted codewords land near the data and step like the others."""
    torch.manual_seed(0)
    d, k = 128, 256
    q = build_quantizer("simvq", d, k, restart_after=1).train()
    u, _ = torch.linalg.qr(torch.randn(d, d))
    v, _ = torch.linalg.qr(torch.randn(d, d))
    w = u @ torch.diag(torch.logspace(0, -3, d)) @ v.T
    with torch.no_grad():
        q.proj.weight.copy_(w)
        q.proj.bias.zero_()
    # latents W reaches with rows of 1.5x the usual size, plus a little noise along every
    # direction (which the exact solve divides by singular values down to 1e-3)
    noise = 0.01
    x = (1.5 * d ** -0.5 * torch.randn(64, d)) @ w.T + noise * torch.randn(64, d)
    q(x)  # most codes unused: restarted at the start of the next step
    before_c, before_e = q.frozen_codebook.clone(), q.codebook().detach().clone()
    opt = torch.optim.AdamW(q.parameters(), lr=1e-3)
    out = q(x)
    restarted = (q.frozen_codebook != before_c).any(dim=1)
    assert int(restarted.sum()) > k // 2
    typical = float(before_c.norm(dim=1).median())
    exact = (x @ torch.linalg.pinv(w).T).norm(dim=1)  # what the exact solve would write
    assert float(exact.median()) > 20 * typical
    norms = q.frozen_codebook.norm(dim=1)[restarted]
    assert float(norms.max()) <= max(2 * typical, float(x.norm(dim=1).max())) * 1.001
    # the restarted codewords landed on the data up to the part W cannot reach (the noise)
    e = q.codebook().detach()
    near = torch.cdist(e[restarted], x).min(dim=1).values
    assert float(near.max()) < 1.5 * noise * d ** 0.5
    assert bool((near < 0.5 * torch.cdist(before_e[restarted], x).min(dim=1).values).all())
    out.loss.backward()
    opt.step()
    moved = (q.codebook().detach() - e).norm(dim=1)
    assert float(moved[restarted].median()) < 5 * float(moved[~restarted].median())


def test_simvq_restart_is_exact_where_w_reaches_the_row() -> None:
    """A well-conditioned W reaches any row with a row of C of the usual size: exact hit."""
    from codec.quant.kinds.simvq import restart_rows

    torch.manual_seed(0)
    w, b = torch.eye(16) * 2.0, torch.randn(16)
    x = torch.randn(5, 16)
    c = restart_rows(w, b, x, scale=1.0)
    assert torch.allclose(c @ w.T + b, x, atol=1e-5)
