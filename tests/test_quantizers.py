"""Property tests for the quantizer kinds (docs/quantizers.md section 9, properties 1-12 and 17)."""
from __future__ import annotations

import math

import pytest
import torch

from codec.quant import QUANTIZER_KINDS, build_quantizer
from codec.quant.kinds.diveq import DiVeQQuantizer
from codec.quant.kinds.ema import EMAQuantizer
from codec.quant.kinds.sf_diveq import SFDiVeQQuantizer, chunk_means
from codec.quant.kinds.simvq import SimVQQuantizer
from codec.quant.kinds.ste import STEQuantizer
from codec.quant.stats import code_counts, perplexity, utilisation

DIM, K = 8, 32
# Small settings so every kind reaches its steady training path within a few steps.
FAST_OPTIONS = {
    "ste": {"init": "kmeans"},
    "ema": {"kmeans_iters": 5},
    "simvq": {},
    "diveq": {"replace_every": 2},
    "sf_diveq": {"warmup_steps": 2, "warmup_max_vectors": 256},
    "rotation": {"init": "kmeans"},
}


def make_trained(kind: str, steps: int = 4, seed: int = 0) -> torch.nn.Module:
    """A quantizer of ``kind`` after a few training steps (with optimizer updates)."""
    torch.manual_seed(seed)
    q = build_quantizer(kind, DIM, K, **FAST_OPTIONS[kind])
    opt = torch.optim.Adam(q.parameters(), lr=1e-2) if list(q.parameters()) else None
    for _ in range(steps):
        x = torch.randn(128, DIM, requires_grad=True)
        out = q(x)
        (out.quantized.square().mean() + out.loss).backward()
        if opt is not None:
            opt.step()
            opt.zero_grad()
    return q


def state_copy(q: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in q.state_dict().items()}


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


# --- registry ---------------------------------------------------------------------------------

def test_registry_builds_every_kind_and_rejects_bad_input() -> None:
    assert set(QUANTIZER_KINDS) == {"ste", "ema", "simvq", "diveq", "sf_diveq", "rotation"}
    assert isinstance(build_quantizer("sf-diveq", DIM, K), SFDiVeQQuantizer)
    assert build_quantizer("ema", DIM, K, decay=0.5).decay == 0.5
    with pytest.raises(ValueError, match="unknown quantizer kind"):
        build_quantizer("fsq", DIM, K)
    with pytest.raises(ValueError, match="decay"):
        build_quantizer("ste", DIM, K, decay=0.5)


# --- properties 1-3: the inference contract (every kind) -------------------------------------

@pytest.mark.parametrize("kind", list(QUANTIZER_KINDS))
def test_eval_is_pure(kind: str) -> None:
    """1. Two eval passes give identical indices and outputs; no state or RNG changes."""
    q = make_trained(kind).eval()
    x = torch.randn(256, DIM)
    before, rng = state_copy(q), torch.get_rng_state()
    a, b = q(x), q(x)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.quantized, b.quantized)
    assert float(a.loss) == 0.0
    assert_same_state(before, state_copy(q))
    assert torch.equal(rng, torch.get_rng_state())  # no noise was drawn


@pytest.mark.parametrize("kind", list(QUANTIZER_KINDS))
def test_eval_output_is_exact_lookup_of_true_argmin(kind: str) -> None:
    """2. Eval output == lookup(idx) bitwise; idx == float64 brute-force argmin up to near-ties."""
    q = make_trained(kind).eval()
    x = torch.randn(512, DIM)
    out = q(x)
    assert torch.equal(out.quantized, q.lookup(out.codes).detach())
    assert torch.equal(out.codeword, out.quantized)
    book = q.codebook().detach().double()
    dist = torch.cdist(x.double(), book).square()
    best = dist.argmin(dim=1)
    picked = dist.gather(1, out.codes[:, None]).squeeze(1)
    optimum = dist.gather(1, best[:, None]).squeeze(1)
    differs = out.codes != best
    assert torch.all((picked[differs] - optimum[differs]) <= 1e-6 * optimum[differs])
    assert differs.float().mean() < 0.01


@pytest.mark.parametrize("kind", list(QUANTIZER_KINDS))
def test_decode_encode_equals_eval_forward(kind: str) -> None:
    """3. decode(encode(z)) equals the eval forward exactly."""
    q = make_trained(kind).eval()
    x = torch.randn(256, DIM)
    codes = q.encode(x)
    assert codes.dtype == torch.int64 and codes.min() >= 0 and codes.max() < K
    assert torch.equal(codes, q(x).codes)
    assert torch.equal(q.decode(codes), q(x).quantized)


# --- properties 4-5: STE ---------------------------------------------------------------------

def test_ste_forward_value_is_codeword() -> None:
    """4. ||y - c|| <= 1e-6 (||z|| + ||c||) per row in fp32."""
    torch.manual_seed(0)
    q = STEQuantizer(DIM, K).train()
    x = 10 * torch.randn(512, DIM)
    out = q(x)
    c = q.codebook()[out.codes]
    err = (out.quantized - c).norm(dim=1)
    assert torch.all(err <= 1e-6 * (x.norm(dim=1) + c.norm(dim=1)))


def test_ste_gradients() -> None:
    """5. dL/dz == g; the reconstruction gives E nothing; unassigned codes get 0 from the loss."""
    torch.manual_seed(0)
    q = STEQuantizer(DIM, 64).train()
    x = torch.randn(16, DIM, requires_grad=True)  # 16 rows cannot use all 64 codes
    out = q(x)
    g = torch.randn_like(x)
    (out.quantized * g).sum().backward()
    assert torch.equal(x.grad, g)
    assert q.embed.grad is None or torch.count_nonzero(q.embed.grad) == 0
    q.embed.grad = None
    q(x).loss.backward()
    used = torch.zeros(64, dtype=torch.bool)
    used[out.codes] = True
    assert (~used).any()
    assert torch.count_nonzero(q.embed.grad[~used]) == 0
    assert torch.all(q.embed.grad[used].norm(dim=1) > 0)


def test_ste_loss_weights_and_mask() -> None:
    """beta sits on the commitment term; masked rows add nothing to the loss."""
    torch.manual_seed(0)
    q = STEQuantizer(DIM, K, beta=0.25).train()
    x = torch.randn(64, DIM, requires_grad=True)
    mask = torch.arange(64) < 40
    out = q(x, mask)
    c = q.embed[out.codes].detach()
    mse = ((x - c) ** 2).mean(dim=1)
    assert torch.allclose(out.loss, 1.25 * mse[mask].mean())
    out.loss.backward()
    assert torch.count_nonzero(x.grad[~mask]) == 0
    # Commitment gradient only: d/dz of 0.25 * mean||z - c||^2.
    expected = 0.25 * 2 * (x - c)[mask] / (DIM * 40)
    assert torch.allclose(x.grad[mask], expected, atol=1e-7)


# --- properties 6-8: EMA ---------------------------------------------------------------------

def test_ema_codebook_is_not_a_parameter() -> None:
    """6. The EMA codebook is a buffer, not in parameters(), and carries no gradient."""
    q = EMAQuantizer(DIM, K).train()
    assert list(q.parameters()) == []
    x = torch.randn(128, DIM, requires_grad=True)
    out = q(x)
    assert not q.embed.requires_grad and not out.codeword.requires_grad
    out.loss.backward()
    assert q.embed.grad is None
    assert {"embed", "embed_sum", "cluster_size", "initialized"} <= set(q.state_dict())


def test_ema_decay0_is_lloyd_step() -> None:
    """7a. decay 0, eps 0: one update sets each assigned code to its assigned mean."""
    torch.manual_seed(0)
    q = EMAQuantizer(DIM, K, decay=0.0, eps=0.0, dead_threshold=0.0, kmeans_init=False).train()
    x = torch.randn(256, DIM)
    mask = torch.rand(256) < 0.7
    old = q.embed.clone()
    codes = ((x[:, None] - old[None]) ** 2).sum(-1).argmin(1)
    q(x, mask)
    for k in range(K):  # a reference, loop only in the test
        rows = x[mask & (codes == k)]
        expected = rows.mean(0) if len(rows) else old[k]
        assert torch.allclose(q.embed[k], expected, atol=1e-5), k


def test_ema_assigned_code_approaches_mean() -> None:
    """7b. decay < 1: every assigned code gets strictly closer to its assigned mean."""
    torch.manual_seed(1)
    q = EMAQuantizer(DIM, K, decay=0.9, dead_threshold=0.0, kmeans_init=False).train()
    x = torch.randn(256, DIM)
    old = q.embed.clone()
    codes = q(x).codes
    for k in codes.unique().tolist():
        target = x[codes == k].mean(0)
        assert (q.embed[k] - target).norm() < (old[k] - target).norm(), k


def test_ema_kmeans_init_sets_sum_to_embed_times_size() -> None:
    """k-means init: m = e * N (with m = e, codes would shrink on the first update)."""
    torch.manual_seed(0)
    q = EMAQuantizer(DIM, K, decay=0.99, kmeans_iters=10, dead_threshold=0.0).train()
    x = torch.randn(512, DIM) + 5.0
    q._kmeans_init(x, None)
    assert bool(q.initialized)
    assert torch.allclose(q.embed_sum, q.embed * q.cluster_size[:, None])
    assert q.cluster_size.sum() == 512
    before = q.embed.clone()
    q(x)  # the same batch: the centroids barely move
    assert (q.embed - before).norm(dim=1).max() < 0.5


def test_ema_restart_persists() -> None:
    """8. A restarted code equals a batch vector, and an update without assignments keeps it."""
    torch.manual_seed(0)
    q = EMAQuantizer(DIM, K, kmeans_init=False, dead_threshold=2.0).train()
    q.cluster_size.fill_(100.0)
    q.embed_sum.copy_(q.embed * 100.0)
    q.cluster_size[3] = 0.5  # code 3 is dead
    q.embed_sum[3] = q.embed[3] * 0.5
    x = torch.randn(64, DIM) + 50.0  # far from every code: all rows go to one code
    q(x)
    took = q.embed[3].clone()
    assert torch.any(torch.all(x == took, dim=1)), "restart lost (EnCodec statement order)"
    assert q.cluster_size[3] == 2.0 and torch.allclose(q.embed_sum[3], took * 2.0)
    q(torch.randn(64, DIM), torch.zeros(64, dtype=torch.bool))  # an update with no assignments
    assert (q.embed[3] - took).norm() <= 0.01 * took.norm()
    assert q.dead_count() >= 1  # N_3 decayed below tau and would be restarted by a real batch


def test_ema_keeps_codes_alive() -> None:
    """The toy run of docs/quantizers.md s.2: with restarts after the update, all codes stay used."""
    torch.manual_seed(0)
    q = EMAQuantizer(2, 16, kmeans_init=False).train()
    q.embed.copy_(torch.randn(16, 2) + 20.0)  # a bad init far from the data
    q.embed_sum.copy_(q.embed)
    counts = torch.zeros(16)
    for step in range(200):
        codes = q(torch.randn(256, 2)).codes
        if step >= 150:
            counts += code_counts(codes, 16)
    assert utilisation(counts) == 1.0
    assert q.dead_count() <= 2


def test_ema_mask_excludes_rows_from_update() -> None:
    torch.manual_seed(0)
    q = EMAQuantizer(DIM, K, kmeans_init=False, dead_threshold=0.0).train()
    ref = EMAQuantizer(DIM, K, kmeans_init=False, dead_threshold=0.0).train()
    ref.load_state_dict(q.state_dict())
    x = torch.randn(64, DIM)
    mask = torch.arange(64) < 20
    q(x, mask)
    ref(x[:20])
    assert torch.allclose(q.embed, ref.embed) and torch.allclose(q.cluster_size, ref.cluster_size)


# --- property 9: SimVQ -----------------------------------------------------------------------

def test_simvq_frozen_basis_and_projection_gradients() -> None:
    """9. C frozen and bitwise unchanged; W, b get gradient from the codebook term only;
    an unselected code's effective codeword moves after a step; decode uses the projection."""
    torch.manual_seed(0)
    q = SimVQQuantizer(DIM, 64).train()
    assert "frozen_codebook" not in dict(q.named_parameters())
    assert abs(float(q.frozen_codebook.std()) - DIM ** -0.5) < 0.05
    c_before = q.frozen_codebook.clone()
    e_before = q.codebook().detach().clone()
    x = torch.randn(16, DIM, requires_grad=True)
    out = q(x)
    (out.quantized * torch.randn_like(x)).sum().backward(retain_graph=True)
    assert q.proj.weight.grad is None or torch.count_nonzero(q.proj.weight.grad) == 0
    out.loss.backward()
    assert q.proj.weight.grad.norm() > 0 and q.proj.bias.grad.norm() > 0
    opt = torch.optim.Adam(q.parameters(), lr=1e-3, betas=(0.5, 0.9))
    opt.step()
    assert torch.equal(q.frozen_codebook, c_before)
    unused = torch.ones(64, dtype=torch.bool)
    unused[out.codes] = False
    assert unused.any()
    moved = (q.codebook().detach() - e_before).norm(dim=1)
    assert torch.all(moved[unused] > 0)
    q.eval()
    codes = q.encode(x)
    expected = q.frozen_codebook[codes] @ q.proj.weight.t() + q.proj.bias
    assert torch.allclose(q.decode(codes), expected)
    assert not torch.allclose(q.decode(codes), q.frozen_codebook[codes])


def test_simvq_loss_formula() -> None:
    torch.manual_seed(0)
    q = SimVQQuantizer(DIM, K, beta=0.25, commit_weight=10.0).train()
    x = torch.randn(32, DIM)
    out = q(x)
    mse = ((out.codeword.detach() - x) ** 2).mean()
    assert torch.allclose(out.loss, 10.0 * 1.25 * mse)


# --- properties 10-11: DiVeQ -----------------------------------------------------------------

def distinct_code_batch(q: DiVeQQuantizer, n: int, spread: float) -> torch.Tensor:
    """n rows whose nearest codes are n different codes (rows close to distinct codewords)."""
    book = q.codebook().detach()
    return book[torch.randperm(q.codebook_size)[:n]] + spread * torch.randn(n, q.dim)


def test_diveq_sigma0_value_and_jacobian() -> None:
    """10. sigma = 0: y = c; dy/dz = I - u u^T (not I); dL/dz + dL/dc = g; selected rows only."""
    torch.manual_seed(0)
    q = DiVeQQuantizer(DIM, K, sigma=0.0, replace_every=0).train()
    q.embed.data = torch.randn(K, DIM)
    x = distinct_code_batch(q, 8, 0.05).requires_grad_(True)
    out = q(x)
    assert torch.allclose(out.quantized, out.codeword, atol=1e-6)
    assert torch.equal(out.codeword, q.embed[out.codes])
    assert out.codes.unique().numel() == 8
    g = torch.randn_like(x)
    (out.quantized * g).sum().backward()
    assert torch.allclose(x.grad + q.embed.grad[out.codes], g, atol=1e-6)
    unselected = torch.ones(K, dtype=torch.bool)
    unselected[out.codes] = False
    assert torch.count_nonzero(q.embed.grad[unselected]) == 0
    # Jacobian of one row's output w.r.t. its input.
    z0 = x[0].detach()
    c0 = q.embed[out.codes[0]].detach()
    jac = torch.autograd.functional.jacobian(lambda z: q(z[None]).quantized[0], z0)
    u = (c0 - z0) / (c0 - z0).norm()
    assert torch.allclose(jac, torch.eye(DIM) - torch.outer(u, u), atol=1e-5)
    assert not torch.allclose(jac, torch.eye(DIM), atol=1e-2)


def test_diveq_noise_statistics_and_eval() -> None:
    """11. sigma > 0: ||y - z|| = ||c - z||; mean ||y - c|| ~ sigma sqrt(d - 1); eval y = c."""
    torch.manual_seed(0)
    d, sigma = 16, 1e-3
    q = DiVeQQuantizer(d, K, sigma=sigma, replace_every=0).train()
    x = torch.randn(4000, d)  # ||c - z|| ~ 4 >> sigma
    out = q(x)
    c = out.codeword.detach()
    assert torch.allclose((out.quantized - x).norm(dim=1), (c - x).norm(dim=1), rtol=1e-5)
    mean_gap = (out.quantized.detach() - c).norm(dim=1).mean()
    assert abs(float(mean_gap) / (sigma * math.sqrt(d - 1)) - 1.0) < 0.2
    assert float(out.loss) == 0.0 and not out.loss.requires_grad
    q.eval()
    ev = q(x)
    assert torch.equal(ev.quantized, q.codebook().detach()[ev.codes])


@pytest.mark.parametrize("detach_variant", [False, True])
def test_diveq_zero_error_gives_finite_gradients(detach_variant: bool) -> None:
    """11. A latent exactly on its codeword: output c and finite gradients."""
    q = DiVeQQuantizer(DIM, K, detach_variant=detach_variant, replace_every=0).train()
    x = q.embed.detach()[:5].clone().requires_grad_(True)
    out = q(x)
    assert torch.equal(out.quantized, x)
    out.quantized.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(q.embed.grad).all()


def test_diveq_replaces_unused_codes_in_training_only() -> None:
    torch.manual_seed(0)
    q = DiVeQQuantizer(DIM, K, replace_every=3, replace_min_usage=0.5).train()
    q.embed.data = torch.randn(K, DIM)
    used = q.embed.detach()[:4].clone()
    x = used.repeat(16, 1) + 1e-3 * torch.randn(64, DIM)  # only codes 0..3 are used
    q.eval()
    before = q.embed.detach().clone()
    for _ in range(5):
        q(x)
    assert torch.equal(q.embed, before) and int(q.step) == 0
    q.train()
    for _ in range(4):  # the 4th step starts with the replacement
        q(x)
    assert torch.equal(q.embed[:4], before[:4])
    moved = q.embed.detach()[4:]
    gap = torch.cdist(moved, used).min(dim=1).values
    assert torch.all(gap > 0), "replacements must differ from their source"
    assert torch.all(gap < 0.01 * used.norm(dim=1).max())
    assert int(q.step) == 4 and q.used_steps.max() == 1  # counters reset, then one step


# --- property 12: SF-DiVeQ -------------------------------------------------------------------

def test_sf_diveq_warmup_is_identity_then_chunk_means() -> None:
    """12. Warm-up returns y = z and writes nothing; then vertex j = mean of chunk j."""
    torch.manual_seed(0)
    q = SFDiVeQQuantizer(DIM, 4, warmup_steps=3, warmup_max_vectors=1000).train()
    before = q.vertices.detach().clone()
    seen = []
    for _ in range(3):
        x = torch.randn(20, DIM, requires_grad=True)
        mask = torch.rand(20) < 0.8
        out = q(x, mask)
        assert torch.equal(out.quantized, x) and out.passthrough
        assert torch.equal(out.codeword, q.codebook().detach()[out.codes])  # what a stack subtracts
        assert torch.equal(out.codes, q.encode(x))
        out.quantized.sum().backward()
        assert q.vertices.grad is None
        assert torch.equal(q.vertices, before)
        seen.append(x.detach()[mask])
    q(torch.randn(20, DIM))
    assert torch.allclose(q.vertices, chunk_means(torch.cat(seen), 5), atol=1e-6)
    assert q.reservoir.numel() == 0
    assert "reservoir" not in q.state_dict() and "step" in q.state_dict()


def test_sf_diveq_sigma0_is_dithered_point() -> None:
    """12. sigma = 0: y = (1 - l) e_j + l e_{j+1} at the nearest dithered point j."""
    torch.manual_seed(0)
    q = SFDiVeQQuantizer(DIM, K, sigma=0.0, warmup_steps=0).train()
    q.vertices.data = torch.randn(K + 1, DIM)
    x = torch.randn(256, DIM, requires_grad=True)
    torch.manual_seed(123)
    out = q(x)
    torch.manual_seed(123)
    lam = torch.rand(K, 1)  # the same draw the forward made
    v = q.vertices.detach()
    dithered = (1 - lam) * v[:-1] + lam * v[1:]
    assert torch.equal(out.codes, torch.cdist(x.detach(), dithered).argmin(dim=1))
    j = out.codes
    expected = (1 - lam[j]) * v[j] + lam[j] * v[j + 1]
    assert torch.allclose(out.quantized, expected, atol=1e-5)
    assert torch.allclose(out.codeword, expected, atol=1e-6)
    g = torch.randn_like(x)
    (out.quantized * g).sum().backward()
    assert q.vertices.grad.norm() > 0 and torch.isfinite(x.grad).all()
    assert torch.allclose(x.grad.sum(0) + q.vertices.grad.sum(0), g.sum(0), atol=1e-4)


def test_sf_diveq_symbols_are_midpoints() -> None:
    q = SFDiVeQQuantizer(DIM, K, warmup_steps=0).eval()
    v = q.vertices.detach()
    assert q.codebook().shape == (K, DIM)
    assert torch.allclose(q.decode(torch.arange(K)), (v[:-1] + v[1:]) / 2)


# --- property 17: metrics --------------------------------------------------------------------

def test_metrics_uniform_and_constant() -> None:
    """17. Uniform assignment gives perplexity K; constant gives 1."""
    uniform = code_counts(torch.arange(K).repeat(5), K)
    assert math.isclose(float(perplexity(uniform)), K, rel_tol=1e-5)
    assert float(utilisation(uniform)) == 1.0
    constant = code_counts(torch.full((100,), 7), K)
    assert float(perplexity(constant)) == 1.0
    assert float(utilisation(constant)) == 1.0 / K
    masked = code_counts(torch.arange(K), K, mask=torch.arange(K) < K // 2)
    assert math.isclose(float(perplexity(masked)), K // 2, rel_tol=1e-5)


def test_training_steps_survive_checkpoint() -> None:
    """Step counters are buffers: a resumed module continues its replacement/warm-up schedule."""
    q = make_trained("diveq", steps=3)
    fresh = DiVeQQuantizer(DIM, K, **FAST_OPTIONS["diveq"])
    fresh.load_state_dict(q.state_dict())
    assert int(fresh.step) == 3
    sf = make_trained("sf_diveq", steps=3)
    assert int(sf.step) == 3


# --- the rotation trick (docs/quantizers.md section 12) ---------------------------------------

def test_rotation_value_is_the_codeword_and_its_jacobian_is_the_scaled_rotation() -> None:
    """y = sg(lambda R) e: the value is the codeword (within float rounding), the Jacobian in e
    is lambda R with lambda = ||q|| / ||e||, R orthogonal with det +1 and R e/||e|| = q/||q||;
    the codebook gets nothing from the reconstruction, as with STE."""
    from codec.quant.kinds.rotation import RotationQuantizer

    torch.manual_seed(0)
    q = RotationQuantizer(DIM, K).train()
    x = 3 * torch.randn(64, DIM)
    out = q(x)
    c = q.codebook()[out.codes].detach()
    assert torch.allclose(out.quantized, c, atol=1e-5 * float(c.abs().max()))
    for i in (0, 7, 31):
        e = x[i].clone().requires_grad_(True)
        jac = torch.autograd.functional.jacobian(lambda v: q(v[None]).quantized[0], e)
        lam = c[i].norm() / x[i].norm()
        rot = jac / lam
        torch.testing.assert_close(rot @ rot.T, torch.eye(DIM), atol=1e-5, rtol=0)
        assert abs(float(torch.linalg.det(rot)) - 1.0) < 1e-4
        torch.testing.assert_close(rot @ (x[i] / x[i].norm()), c[i] / c[i].norm(), atol=1e-5, rtol=0)
    y = q(x.requires_grad_(True)).quantized
    (y * torch.randn_like(y)).sum().backward()
    assert q.embed.grad is None or torch.count_nonzero(q.embed.grad) == 0


def test_rotation_gradient_keeps_its_angle_to_the_codeword_and_differs_within_a_cell() -> None:
    """The encoder's gradient (lambda R)^T g makes with e the angle g makes with q, and its
    norm is lambda ||g||: two inputs in one Voronoi cell get different gradients, where STE
    gives both g."""
    from codec.quant.directional import rotate_onto

    torch.manual_seed(1)
    q = torch.randn(1, DIM).expand(2, DIM)
    e = (q + 0.3 * torch.randn(2, DIM)).requires_grad_(True)  # two inputs quantized to q
    g = torch.randn(1, DIM).expand(2, DIM)
    (rotate_onto(e, q) * g).sum().backward()
    grad = e.grad
    lam = q.norm(dim=1) / e.detach().norm(dim=1)
    torch.testing.assert_close(grad.norm(dim=1), lam * g.norm(dim=1), rtol=1e-5, atol=0)
    cos_grad = torch.nn.functional.cosine_similarity(grad, e.detach(), dim=1)
    cos_g = torch.nn.functional.cosine_similarity(g, q, dim=1)
    torch.testing.assert_close(cos_grad, cos_g, rtol=0, atol=1e-5)
    assert (grad[0] - grad[1]).norm() > 1e-3 * grad.norm()


def test_rotation_in_a_residual_stack_rotates_z_onto_the_total() -> None:
    """A stack with rotation stages outputs the sum of its codewords, and its Jacobian in z is
    the scaled rotation carrying z onto that total (the stack applies the trick once, to the
    total, as it applies DiVeQ's step)."""
    from codec.quant.config import QuantizerConfig
    from codec.quant.residual import ResidualQuantizer

    torch.manual_seed(2)
    stack = ResidualQuantizer(DIM, QuantizerConfig(n_stages=3, codebook_size=K, dropout=0.0, kind="rotation",
                                                    options={"rotation": {"init": "kmeans"}})).train()
    z = torch.randn(1, DIM, 20)
    stack(z)  # k-means initialisation on the first batch
    out = stack(z)
    total = sum(stage.decode(out.codes[0, i]) for i, stage in enumerate(stack.stages))  # [F, D]
    torch.testing.assert_close(out.quantized[0].T, total, atol=1e-5, rtol=0)
    zf = z[0, :, 0].clone().requires_grad_(True)
    jac = torch.autograd.functional.jacobian(lambda v: stack(v[None, :, None]).quantized[0, :, 0], zf)
    t = total[0]
    rot = jac / (t.norm() / zf.detach().norm())
    torch.testing.assert_close(rot @ rot.T, torch.eye(DIM), atol=1e-4, rtol=0)
    torch.testing.assert_close(rot @ (zf.detach() / zf.detach().norm()), t / t.norm(), atol=1e-4, rtol=0)

