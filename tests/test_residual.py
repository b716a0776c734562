"""Stack-level properties of the residual quantizer (docs/quantizers.md sections 7-9: P3 at stack
level, P13-P16, DiVeQ wiring, projected stages, per-stage statistics, the hybrid recipe)."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import REPO, speech, tiny_model, tiny_recipe

from codec.config import ModelConfig
from codec.quant.config import QuantizerConfig
from codec.quant.kinds.ema import EMAQuantizer
from codec.quant.kinds.simvq import SimVQQuantizer
from codec.quant.residual import ResidualQuantizer
from codec.recipe import load_recipe

D, K, N = 16, 64, 4
# The per-kind options of recipes/tiny.yaml (which extends base.yaml), so stacks built here
# use the same settings as the recipes.
TINY_OPTIONS = tiny_recipe("ste")["model"]["quantizer"]["options"]
STE_FAMILY = ["ste", "ema", "simvq"]


pytestmark = pytest.mark.usefixtures("one_thread")


def make_rvq(kind: str = "ste", *, stages: list | None = None, n_stages: int = N, dim: int = D,
             codebook_size: int = K, codebook_dim: int | None = None, dropout: float = 0.0,
             stats_window: int = 20, options: dict | None = None, seed: int = 0) -> ResidualQuantizer:
    torch.manual_seed(seed)
    opts = {k: dict(v) for k, v in TINY_OPTIONS.items()}
    for k, v in (options or {}).items():
        opts.setdefault(k, {}).update(v)
    cfg = QuantizerConfig(n_stages=n_stages, kind=kind, codebook_size=codebook_size,
                          codebook_dim=codebook_dim, dropout=dropout, stats_window=stats_window,
                          options=opts, stages=list(stages or []))
    return ResidualQuantizer(dim, cfg)


def rows(z: torch.Tensor) -> torch.Tensor:
    """[B, D, F] -> [B*F, D], the stack's row order (item-major)."""
    return z.transpose(1, 2).reshape(-1, z.shape[1])


def code_rows(codes: torch.Tensor) -> torch.Tensor:
    """[B, n, F] -> [B*F, n]."""
    return codes.transpose(1, 2).reshape(-1, codes.shape[1])


def record_stage_inputs(rq: ResidualQuantizer) -> tuple[list, list]:
    """Forward pre-hooks on every stage's quantizer; returns (inputs list, hook handles)."""
    seen: list[torch.Tensor] = []
    handles = [s.quantizer.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
               for s in rq.stages]
    return seen, handles


def warm_up(rq: ResidualQuantizer, steps: int = 2, shape=(4, D, 40)) -> None:
    """A few training forwards (k-means init, EMA updates, counters) without optimizer steps."""
    rq.train()
    for _ in range(steps):
        rq(torch.randn(*shape))


# --- P13: stage-i input equals z - sum_{j<i} c_j -------------------------------------------

@pytest.mark.parametrize("kind", ["ste", "ema", "simvq", "diveq", "sf_diveq"])
def test_p13_stage_inputs_are_exact_residuals_eval(kind: str) -> None:
    rq = make_rvq(kind)
    warm_up(rq)
    rq.eval()
    z = torch.randn(3, D, 25)
    codes = rq.encode(z)
    seen, handles = record_stage_inputs(rq)
    out = rq(z)
    for h in handles:
        h.remove()
    assert len(seen) == N
    assert torch.equal(out.codes, codes)
    r = rows(z)
    cr = code_rows(codes)
    for i, stage in enumerate(rq.stages):
        assert torch.equal(seen[i], r), f"stage {i} input is not z - sum_(j<{i}) c_j"
        r = r - stage.decode(cr[:, i])
    # the chain really moves: the last residual is not the input
    assert not torch.equal(seen[-1], seen[0])


@pytest.mark.parametrize("kind", ["ste", "simvq", "diveq"])
def test_p13_stage_inputs_are_exact_residuals_train(kind: str) -> None:
    """Training path (no dropout; kinds whose codebook does not change inside the forward):
    the chain uses exact hard codewords, not STE / DiVeQ outputs."""
    rq = make_rvq(kind)
    rq.train()
    z = torch.randn(3, D, 25, requires_grad=True)
    seen, handles = record_stage_inputs(rq)
    out = rq(z)
    for h in handles:
        h.remove()
    r = rows(z.detach())
    cr = code_rows(out.codes)
    for i, stage in enumerate(rq.stages):
        assert torch.equal(seen[i], r), f"stage {i}"
        r = r - stage.decode(cr[:, i])


def test_p13_exact_precision_runs_the_fp64_chain() -> None:
    """The exact precision's offline encode: encoder and search in float64, each stage searching
    the exact fp64 residual z - sum_{j<i} c_j (codewords cast to fp64), codes = fp64 argmin (up
    to near-ties); decode(encode(x)) is the decoder applied to the fp32 sum of lookups."""
    # every code restarted onto a distinct-ish batch row after the first step (an absolute
    # threshold above any code's size): codebooks of distinct codewords, few near-ties
    model = tiny_model("ema", options={"ema": {"dead_threshold": 2.0, "dead_fraction": 0.0}})
    model.train()
    wav = speech(1.0)
    model(wav)  # k-means init + one EMA step so the codebooks are data-fitted
    model.eval()
    rq = model.quantizer
    codes = model.streamer("exact").encode_offline(wav)
    assert codes.dtype == torch.int64 and codes.shape == (1, model.num_stages, 50)

    with torch.no_grad():
        z64 = model.encoder(wav.double())
    assert z64.dtype == torch.float64
    r = rows(z64)
    cr = code_rows(codes)
    for i, stage in enumerate(rq.stages):
        book = stage.quantizer.codebook().detach().double()
        dist = (r[:, None, :] - book[None]).pow(2).sum(-1)  # brute force [rows, K]
        best = dist.min(dim=1).values
        chosen = dist.gather(1, cr[:, i:i + 1]).squeeze(1)
        # chosen code is the argmin, or within a relative 1e-6 near-tie of it
        assert torch.all(chosen <= best + 1e-6 * (best + r.pow(2).sum(-1))), f"stage {i}"
        assert (cr[:, i] == dist.argmin(dim=1)).float().mean() >= 0.9  # the rest: near-ties (above)
        r = r - stage.decode(cr[:, i], torch.float64)
    # fp64 encode agrees with a direct fp64 quantizer.encode on the encoder output
    assert torch.equal(rq.encode(z64), codes)
    # decode = decoder(sum of fp32 lookups), exactly
    with torch.no_grad():
        expected = model.decoder(rq.decode(codes))
    assert torch.equal(model.decode(codes), expected)


# --- P14: fitted codebooks shrink the mean squared residual --------------------------------

def test_p14_mean_squared_residual_non_increasing_with_fitted_ema() -> None:
    dim = 8
    rq = make_rvq("ema", dim=dim, codebook_size=32, options={"ema": {"decay": 0.9}})
    rq.train()
    for _ in range(25):
        rq(torch.randn(8, dim, 32))
    rq.eval()
    z = torch.randn(16, dim, 64)
    cr = code_rows(rq.encode(z))
    r = rows(z)
    msr = [float(r.pow(2).mean())]
    per_vector_rose = False
    for i, stage in enumerate(rq.stages):
        nxt = r - stage.decode(cr[:, i])
        per_vector_rose |= bool((nxt.pow(2).sum(1) > r.pow(2).sum(1)).any())
        r = nxt
        msr.append(float(r.pow(2).mean()))
    for i in range(N):
        assert msr[i + 1] <= msr[i], f"mean squared residual rose at stage {i}: {msr}"
    # a fitted first stage with 32 codes in 8-D removes a substantial part of the energy
    assert msr[1] < 0.75 * msr[0], msr
    assert msr[-1] < 0.3 * msr[0], msr


# --- P15: all-STE-family stack: identity Jacobian, every commitment reaches z ---------------

STE_STACKS = {
    "ste": None,
    "ema": None,
    "simvq": None,
    "mixed": [{"kind": "simvq"}, {"kind": "ema"}, {"kind": "ste"}, {"kind": "ema"}],
}
COMMIT_SCALE = {  # d loss_i / d r_i = scale * 2 (r_i - c_i) / (rows * D)
    "ste": TINY_OPTIONS["ste"]["beta"],
    "ema": TINY_OPTIONS["ema"]["commitment"],
    "simvq": TINY_OPTIONS["simvq"]["beta"] * TINY_OPTIONS["simvq"]["commit_weight"],
}


@pytest.mark.parametrize("name", list(STE_STACKS))
def test_p15_ste_family_identity_jacobian_and_commitment_gradients(name: str) -> None:
    stages = STE_STACKS[name]
    rq = make_rvq(name if stages is None else "ste", stages=stages)
    warm_up(rq, steps=1)  # k-means init happens here, not on the tested batch
    z = torch.randn(4, D, 30, requires_grad=True)
    g = torch.randn_like(z)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []  # (stage input r_i, codeword c_i)
    handles = [s.quantizer.register_forward_hook(
        lambda m, args, o: seen.append((args[0].detach().clone(), o.codeword.detach().clone())))
        for s in rq.stages]
    out = rq(z, n_q=N)
    for h in handles:
        h.remove()
    assert out.codes.shape[1] == N and len(seen) == N
    (zq_grad,) = torch.autograd.grad((out.quantized * g).sum(), z, retain_graph=True)
    assert torch.equal(zq_grad, g), "d zq / d z is not exactly I"

    kinds = [s.kind for s in rq.stages]
    n_rows = z.shape[0] * z.shape[2]
    for i, (r_i, c_i) in enumerate(seen):
        (gi,) = torch.autograd.grad(out.stage_losses[i], z, retain_graph=True)
        assert float(gi.abs().sum()) > 0, f"stage {i} ({kinds[i]}) commitment does not reach z"
        # analytic value: the commitment of stage i on r_i = z - sum sg(c_j), dr_i/dz = I
        want = COMMIT_SCALE[kinds[i]] * 2.0 * (r_i - c_i) / (n_rows * D)
        torch.testing.assert_close(rows(gi), want, rtol=1e-4, atol=1e-9)


# --- P16: quantizer dropout ----------------------------------------------------------------

def test_p16_dropped_stages_contribute_nothing() -> None:
    # kaiming init: a k-means init on the few rows that reach a deep stage would memorise
    # them, leaving stage k+1 nothing to add, and this test is about the dropout wiring.
    rq = make_rvq("ste", dropout=1.0, options={"ste": {"init": "kaiming"}})
    rq.train()
    z = torch.randn(24, D, 5, requires_grad=True)
    out = rq(z)
    n_q = out.n_q
    assert n_q.dtype == torch.int64 and n_q.shape == (24,)
    assert int(n_q.min()) >= 1 and int(n_q.max()) <= N
    assert out.codes.shape[0] == 24 and out.codes.shape[2] == 5
    assert int(n_q.max()) <= out.codes.shape[1] <= N
    assert bool((n_q < N).any()) and len(set(n_q.tolist())) >= 3
    rq.eval()
    zq = out.quantized.detach()
    for b in range(24):
        k = int(n_q[b])
        first_k = rq.decode(out.codes[b:b + 1, :k])[0]
        torch.testing.assert_close(zq[b], first_k, rtol=1e-6, atol=1e-6)
        if k < out.codes.shape[1]:
            more = rq.decode(out.codes[b:b + 1, :k + 1])[0]
            assert (more - zq[b]).abs().max() > 1e-3, "stage k+1 leaked into a dropped item"
    # gradient: still exactly g for every item, dropped or not
    g = torch.randn_like(z)
    (out.quantized * g).sum().backward()
    assert torch.equal(z.grad, g)


def test_p16_losses_and_counts_only_from_active_items() -> None:
    rq = make_rvq("ste", dropout=1.0)
    rq.train()
    z = torch.randn(16, D, 6)
    out = rq(z)
    beta = TINY_OPTIONS["ste"]["beta"]
    r = rows(z)
    cr = code_rows(out.codes)
    row_nq = out.n_q.repeat_interleave(6)
    for i, stage in enumerate(rq.stages[:out.codes.shape[1]]):
        active = row_nq > i
        c = stage.decode(cr[:, i])
        assert torch.equal(out.counts[i], torch.bincount(cr[active, i], minlength=K).float())
        assert float(out.counts[i].sum()) == float(active.sum())
        want = (1.0 + beta) * (c - r)[active].pow(2).mean()
        torch.testing.assert_close(out.stage_losses[i], want, rtol=1e-5, atol=1e-7)
        r = r - c * active[:, None]


def test_p16_ema_statistics_exclude_dropped_items() -> None:
    """decay 0 and no k-means / restarts: after one step the cluster sizes equal the counts of
    the active rows only."""
    rq = make_rvq("ema", dropout=1.0,
                  options={"ema": {"decay": 0.0, "kmeans_init": False, "dead_threshold": 0.0, "dead_fraction": 0.0}})
    rq.train()
    out = rq(torch.randn(16, D, 6))
    assert bool((out.n_q < N).any())
    row_nq = out.n_q.repeat_interleave(6)
    cr = code_rows(out.codes)
    for i in range(out.codes.shape[1]):
        active = row_nq > i
        counts = torch.bincount(cr[active, i], minlength=K).float()
        assert torch.equal(rq.stages[i].quantizer.cluster_size, counts), f"stage {i}"


@pytest.mark.parametrize("kind", ["ema", "ste"])
def test_p16_stage_dropped_on_first_step_still_gets_kmeans_init(kind: str) -> None:
    rq = make_rvq(kind, options={"ste": {"init": "kmeans"}})
    rq.train()
    before = rq.stages[1].quantizer.codebook().detach().clone()
    rq(torch.randn(8, D, 40), n_q=1)  # stages 2..N masked out for every item
    err: list[float] = []  # per-stage mean ||r_i - c_i||^2 on the next batch
    handles = [s.quantizer.register_forward_hook(
        lambda m, args, o: err.append(float((args[0] - o.codeword).detach().pow(2).sum(1).mean())))
        for s in rq.stages]
    rq(torch.randn(8, D, 40), n_q=N)  # the first step in which stage 2 has rows to fit
    for h in handles:
        h.remove()
    if kind == "ste":
        # no optimizer step: only a k-means init can have changed the STE codebook
        assert not torch.equal(rq.stages[1].quantizer.codebook(), before)
    else:
        # a k-means-fitted stage 2 (64 codes, 320 residual rows) removes ~30% of what it
        # gets; the unfitted random-normal codebook about 5%
        assert err[1] < 0.85 * err[0], err


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_p16_dropout_fraction(p: float) -> None:
    rq = make_rvq("ste", dim=4, codebook_size=8, dropout=p)
    rq.train()
    torch.manual_seed(1)
    counts = torch.zeros(N + 1)
    draws = 0
    for _ in range(4):
        out = rq(torch.randn(2000, 4, 1))
        counts += torch.bincount(out.n_q, minlength=N + 1).float()
        draws += 2000
    assert counts[0] == 0
    frac_short = float(counts[1:N].sum()) / draws
    expected = p * (N - 1) / N
    assert abs(frac_short - expected) < 0.03, (frac_short, expected)
    # among short items every 1..N-1 is equally likely: p/N each
    for k in range(1, N):
        assert abs(float(counts[k]) / draws - p / N) < 0.02


def test_p16_eval_uses_n_q_exactly() -> None:
    rq = make_rvq("ste", dropout=1.0)
    warm_up(rq, steps=1)
    rq.eval()
    z = torch.randn(8, D, 7)
    for _ in range(3):  # no dropout in eval, whatever the configured probability
        out = rq(z)
        assert out.codes.shape == (8, N, 7) and torch.equal(out.n_q, torch.full((8,), N))
    for n in range(1, N + 1):
        out = rq(z, n_q=n)
        assert out.codes.shape == (8, n, 7)
        assert torch.equal(out.n_q, torch.full((8,), n))
        assert torch.equal(out.quantized, rq.decode(rq.encode(z, n)))
    with pytest.raises(ValueError):
        rq(z, n_q=0)
    with pytest.raises(ValueError):
        rq(z, n_q=N + 1)


# --- P3 at stack level ---------------------------------------------------------------------

@pytest.mark.parametrize("kind,codebook_dim", [("ste", None), ("ema", None), ("simvq", None),
                                                ("diveq", None), ("sf_diveq", None), ("ste", 8),
                                                ("ema", 8)])
def test_p3_eval_forward_equals_decode_encode(kind: str, codebook_dim: int | None) -> None:
    rq = make_rvq(kind, codebook_dim=codebook_dim,
                  options={"sf_diveq": {"warmup_steps": 1}, "diveq": {"replace_every": 1}})
    warm_up(rq, steps=3)
    rq.eval()
    z = torch.randn(3, D, 20)
    full = rq.encode(z)
    assert full.shape == (3, N, 20) and full.dtype == torch.int64
    for n in range(1, N + 1):
        out = rq(z, n_q=n)
        enc = rq.encode(z, n)
        assert torch.equal(full[:, :n], enc), f"first {n} stages of encode(z) != encode(z, {n})"
        assert torch.equal(out.codes, enc)
        assert torch.equal(out.quantized, rq.decode(enc)), f"n_q={n}"
        assert float(out.loss) == 0.0
    # eval is pure: a second pass changes nothing
    state = {k: v.clone() for k, v in rq.state_dict().items()}
    again = rq(z)
    assert torch.equal(again.codes, full)
    assert all(torch.equal(v, rq.state_dict()[k]) for k, v in state.items())


@pytest.mark.parametrize("frames", [1, 2, 4])
def test_decode_of_a_streamed_frame_gathers_the_same_sum(frames: int) -> None:
    """Up to 4 rows decode with one gather from stacked tables: the same sum of per-stage
    lookups (stages of different sizes and a projected one included), and a codebook
    change reaches it."""
    stages = [{"kind": "ema", "codebook_size": 16}, {"kind": "ste", "codebook_size": K},
              {"kind": "ste", "codebook_size": 32, "codebook_dim": 8}]
    rq = make_rvq(stages=stages, n_stages=3)
    warm_up(rq, steps=2)
    rq.eval()
    codes = rq.encode(torch.randn(1, D, frames))
    for n in (1, 3):
        expected = sum(rq.stages[i].decode(codes[0, i]) for i in range(n))  # [frames, D]
        got = rq.decode(codes[:, :n])[0].t()
        assert (got - expected).abs().max().item() < 1e-6
    with torch.no_grad():
        rq.stages[1].quantizer.codebook().mul_(3.0)
    expected = sum(rq.stages[i].decode(codes[0, i]) for i in range(3))
    assert (rq.decode(codes)[0].t() - expected).abs().max().item() < 1e-6


# --- DiVeQ stages in the stack --------------------------------------------------------------

DIVEQ_STACKS = {
    "diveq": [{"kind": "diveq", "repeat": N}],
    "ste+diveq": [{"kind": "ste"}, {"kind": "diveq"}],
    "diveq+ema+diveq": [{"kind": "diveq"}, {"kind": "ema"}, {"kind": "diveq"}],
}


@pytest.mark.parametrize("name", list(DIVEQ_STACKS))
def test_diveq_stack_global_step(name: str) -> None:
    rq = make_rvq(stages=DIVEQ_STACKS[name])
    warm_up(rq, steps=1)
    sigma = TINY_OPTIONS["diveq"]["sigma"]
    z = torch.randn(4, D, 30, requires_grad=True)
    out = rq(z)
    n = len(rq.stages)
    assert out.codes.shape[1] == n
    kinds = [s.kind for s in rq.stages]
    # sum of hard codewords (an EMA stage's codebook moves inside the forward: that stack's
    # norm identity is checked in the next test)
    with torch.no_grad():
        rq_eval_sum = torch.zeros_like(rows(z))
        cr = code_rows(out.codes)
        for i, stage in enumerate(rq.stages):
            rq_eval_sum += stage.decode(cr[:, i])
    zq = rows(out.quantized.detach())
    x = rows(z.detach())
    if "ema" not in kinds:
        total = rq_eval_sum
        got = (zq - x).norm(dim=1)
        want = (total - x).norm(dim=1)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        # the value is sum c up to the direction noise (~ sigma sqrt(D))
        assert float((zq - total).norm(dim=1).mean()) < 3 * sigma * math.sqrt(D)
    for i, kind in enumerate(kinds):
        if kind == "diveq":
            assert float(out.stage_losses[i].detach()) == 0.0
        else:
            assert float(out.stage_losses[i].detach()) > 0.0

    g = torch.randn_like(z)
    (out.quantized * g).sum().backward()
    assert torch.isfinite(z.grad).all()
    # DiVeQ: dL/dz = g - u (v.g), not g
    assert not torch.equal(z.grad, g)
    for i, (kind, stage) in enumerate(zip(kinds, rq.stages)):
        q = stage.quantizer
        if kind == "diveq":
            grad = q.embed.grad
            assert grad is not None and torch.isfinite(grad).all()
            assert float(grad.abs().sum()) > 0, f"stage {i}: no gradient to the DiVeQ codebook"
            used = torch.zeros(K, dtype=torch.bool)
            used[cr[:, i]] = True
            assert float(grad[~used].abs().sum()) == 0.0, "unselected DiVeQ codes got gradient"
        elif kind == "ste":
            # reconstruction gradient to an STE codebook is 0 (it trains by its loss only)
            assert q.embed.grad is None or float(q.embed.grad.abs().sum()) == 0.0


def test_diveq_stack_norm_identity_with_ema_stage() -> None:
    """Same norm identity for a stack with an EMA stage (whose codebook moves inside the
    forward), the hard codewords c_i taken from the stages' outputs."""
    rq = make_rvq(stages=DIVEQ_STACKS["diveq+ema+diveq"])
    warm_up(rq, steps=1)
    z = torch.randn(4, D, 30)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    handles = [s.quantizer.register_forward_hook(
        lambda m, args, o: seen.append((args[0].detach().clone(), o.codeword.detach().clone())))
        for s in rq.stages]
    out = rq(z)
    for h in handles:
        h.remove()
    x = rows(z)
    total = torch.zeros_like(x)
    for i, (r_i, c_i) in enumerate(seen):
        assert torch.equal(r_i, x - total) if i < 2 else torch.equal(r_i, (x - seen[0][1]) - seen[1][1])
        total = total + c_i
    got = (rows(out.quantized.detach()) - x).norm(dim=1)
    torch.testing.assert_close(got, (total - x).norm(dim=1), rtol=1e-5, atol=1e-6)


# --- projected stages -----------------------------------------------------------------------

@pytest.mark.parametrize("kind", STE_FAMILY)
def test_projected_stages_identity_gradient_and_projection_training(kind: str) -> None:
    model = tiny_model(kind, codebook_dim=8)
    rq = model.quantizer
    latent = model.cfg.latent_dim
    assert all(s.projected for s in rq.stages)
    assert rq.stages[0].in_proj.weight.shape == (8, latent)
    assert rq.stages[0].out_proj.weight.shape == (latent, 8)
    rq.train()
    rq(torch.randn(4, latent, 40))  # k-means init
    rq.zero_grad()
    z = torch.randn(4, latent, 30, requires_grad=True)
    codewords: list[torch.Tensor] = []  # code-space codewords (EMA moves its book in forward)
    handles = [s.quantizer.register_forward_hook(
        lambda m, args, o: codewords.append(o.codeword.detach().clone())) for s in rq.stages]
    out = rq(z, n_q=rq.num_stages)
    for h in handles:
        h.remove()
    g = torch.randn_like(z)
    (out.quantized * g).sum().backward(retain_graph=True)
    assert torch.equal(z.grad, g), "projections broke the identity encoder gradient"
    # value: the sum of projected codewords (the projection terms are zero in value)
    with torch.no_grad():
        dec = sum(s.out_proj(c) for s, c in zip(rq.stages, codewords))
        dec = dec.reshape(4, 30, latent).transpose(1, 2)
    torch.testing.assert_close(out.quantized.detach(), dec, rtol=1e-5, atol=1e-5)
    for s in rq.parameters():
        s.grad = None
    target = torch.randn_like(z)
    ((out.quantized - target) ** 2).mean().backward()
    for i, stage in enumerate(rq.stages):
        for name, layer in (("in_proj", stage.in_proj), ("out_proj", stage.out_proj)):
            for pname in ("weight", "bias"):
                grad = getattr(layer, pname).grad
                assert grad is not None and torch.isfinite(grad).all(), (i, name, pname)
                assert float(grad.abs().sum()) > 0, f"stage {i} {name}.{pname} got no gradient"


# --- statistics -----------------------------------------------------------------------------

def _perplexity(counts: torch.Tensor) -> float:
    total = float(counts.sum())
    if total == 0:
        return 1.0
    p = counts[counts > 0].double() / total
    return math.exp(float(-(p * p.log()).sum()))


def test_statistics_match_recount_from_codes() -> None:
    rq = make_rvq("ste", dropout=1.0, stats_window=10)
    rq.train()
    torch.manual_seed(3)
    used = [torch.zeros(K, dtype=torch.bool) for _ in range(N)]
    for step in range(3):
        out = rq(torch.randn(6, D, 8) * (1.0 + step))
        stats = rq.statistics()
        assert len(stats) == N
        row_nq = out.n_q.repeat_interleave(8)
        cr = code_rows(out.codes)
        for i in range(N):
            if i < cr.shape[1]:
                active = row_nq > i
                counts = torch.bincount(cr[active, i], minlength=K).float()
            else:
                counts = torch.zeros(K)
            used[i] |= counts > 0
            s = stats[i]
            assert s["perplexity"] == pytest.approx(_perplexity(counts), rel=1e-5), (step, i)
            assert s["utilisation"] == pytest.approx(float((counts > 0).sum()) / K), (step, i)
            assert s["dead_codes"] == K - int(used[i].sum()), (step, i)
            assert 1.0 <= s["perplexity"] <= max(1.0, min(K, float(counts.sum())))
    # dropout really masked something: the last stage saw fewer positions than the first
    assert float(rq.stages[-1].usage.counts().sum()) < float(rq.stages[0].usage.counts().sum())


def test_statistics_ema_dead_codes_key() -> None:
    rq = make_rvq(stages=[{"kind": "ema"}, {"kind": "ste"}])
    warm_up(rq, steps=1)
    stats = rq.statistics()
    ema = rq.stages[0].quantizer
    assert stats[0]["ema_dead_codes"] == float((ema.cluster_size < ema.dead_threshold).sum())
    assert "ema_dead_codes" not in stats[1]


def test_statistics_collapse_measures_are_those_of_each_stages_codebook_and_inputs() -> None:
    """statistics() reports per stage the norm spread of its codebook (in its search space)
    and the effective rank of the rows it received in the last training forward, only those
    dropout left active: equal to codec.quant.stats on the same tensors; NaN rank before any
    training forward. Latents on a 2-dim plane give stage 1 an effective rank of at most 2."""
    import math

    from codec.quant.stats import effective_rank, norm_spread

    rq = make_rvq("ste", n_stages=3, codebook_dim=4, dropout=0.9)
    fresh = rq.statistics()
    assert all(math.isnan(s["effective_rank"]) for s in fresh)
    assert [s["norm_spread"] for s in fresh] == [norm_spread(st.quantizer.codebook()) for st in rq.stages]
    rq.train()
    torch.manual_seed(3)
    b, f = 12, 50
    z = torch.einsum("bkf,kd->bdf", torch.randn(b, 2, f), torch.randn(2, D))
    out = rq(z)
    stats, inputs = rq.statistics(), rq.last_inputs
    assert inputs[0].shape == (b * f, 4)  # every item uses stage 1
    for i in range(3):
        assert inputs[i].shape[0] == int((out.n_q > i).sum()) * f  # the rows dropout kept
        assert stats[i]["effective_rank"] == effective_rank(inputs[i])
        assert stats[i]["norm_spread"] == norm_spread(rq.stages[i].quantizer.codebook()) > 0
    assert int((out.n_q > 2).sum()) < b  # dropout removed some items from stage 3
    assert 1.0 < stats[0]["effective_rank"] <= 2.0 + 1e-5
    assert stats[1]["effective_rank"] > 2.0  # residuals leave the plane once codewords are subtracted


def test_dead_codes_window_counts_steps_where_stage_was_dropped() -> None:
    """A training step in which a stage is dropped for every item is still a step of its
    window: dead_codes = K minus codes used in the last W steps (docs/quantizers.md section 8)."""
    rq = make_rvq("ste", n_stages=3, stats_window=2)
    rq.train()
    rq(torch.randn(4, D, 10), n_q=3)
    assert rq.statistics()[2]["dead_codes"] < K
    for _ in range(3):  # 3 > W training steps in which stages 2 and 3 are dropped everywhere
        rq(torch.randn(4, D, 10), n_q=1)
    stats = rq.statistics()
    assert stats[1]["dead_codes"] == K and stats[2]["dead_codes"] == K
    assert stats[2]["window_utilisation"] == 0.0


# --- the hybrid recipe ----------------------------------------------------------------------

def test_hybrid_recipe_resolves_to_simvq_then_eleven_ema() -> None:
    cfg = ModelConfig.from_dict(load_recipe(REPO / "recipes" / "hybrid.yaml"))
    stages = cfg.quantizer.resolved_stages()
    assert [s.kind for s in stages] == ["simvq"] + ["ema"] * 11
    assert all(s.codebook_size == 1024 and s.codebook_dim is None for s in stages)
    base = load_recipe(REPO / "recipes" / "base.yaml")["model"]["quantizer"]["options"]
    assert stages[0].options == base["simvq"]
    assert all(s.options == base["ema"] for s in stages[1:])
    rq = ResidualQuantizer(cfg.latent_dim, cfg.quantizer)
    assert isinstance(rq.stages[0].quantizer, SimVQQuantizer)
    assert all(isinstance(s.quantizer, EMAQuantizer) for s in rq.stages[1:])
    assert rq.stages[1].quantizer.decay == base["ema"]["decay"]
    assert rq.codebook_sizes == [1024] * 12


# --- SF-DiVeQ warm-up inside a stack ----------------------------------------------------------

def test_sf_diveq_warmup_leaves_later_stages_their_own_remainders() -> None:
    """During warm-up an SF-DiVeQ stage is the identity for the output, but the chain still
    subtracts its symbol: later stages collect real remainders (before, they saw an exactly
    zero residual and initialised every vertex, or an EMA stage its k-means, at zero)."""
    torch.manual_seed(0)
    cfg = QuantizerConfig(n_stages=3, kind="sf_diveq", codebook_size=16, dropout=0.0,
                          options={"sf_diveq": {"warmup_steps": 3, "restart_after": 0}})
    rq = ResidualQuantizer(8, cfg).train()
    z = torch.randn(4, 8, 50)
    for _ in range(3):
        out = rq(z)
        assert torch.equal(out.quantized, z)  # the identity while warming up
    rq(torch.randn(4, 8, 50))  # the step that sets the vertices
    spreads = [float(s.quantizer.vertices.detach().std()) for s in rq.stages]
    assert min(spreads) > 0.3 * spreads[0], spreads  # was [0.17, 0.0, 0.0]
    # an EMA stage after a warming SF-DiVeQ stage initialises its k-means on remainders too
    mixed = QuantizerConfig(stages=[{"kind": "sf_diveq", "options": {"warmup_steps": 3}}, {"kind": "ema"}],
                            codebook_size=16, dropout=0.0)
    rq = ResidualQuantizer(8, mixed).train()
    rq(z)
    book = rq.stages[1].quantizer.codebook()
    assert float(book.std()) > 0.3 * float(z.std()), float(book.std())


def test_sf_diveq_warmup_identity_follows_quantizer_dropout() -> None:
    """Rows whose items drop the warming stage keep the plain sum of their own stages."""
    torch.manual_seed(0)
    cfg = QuantizerConfig(stages=[{"kind": "ema"}, {"kind": "sf_diveq", "options": {"warmup_steps": 5}}],
                          codebook_size=16, dropout=0.0)
    rq = ResidualQuantizer(8, cfg).train()
    z = torch.randn(2, 8, 30, requires_grad=True)
    rq(torch.randn(2, 8, 30))  # the EMA stage's k-means
    out = rq(z, n_q=1)
    assert not torch.equal(out.quantized, z)  # the SF-DiVeQ stage is not used: EMA's output
    out = rq(z)
    assert torch.equal(out.quantized, z)
    out.quantized.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))  # identity gradient to the encoder
