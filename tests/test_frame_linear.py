"""Frame-rate linear layers: the cached fp32 matrix-vector layout, int8 weight-only inference,
their caches, and the model-level int8 switch (streaming equal to offline, quality kept)."""
from __future__ import annotations

import pytest
import torch
from conftest import speech
from test_convnext import warmed

from codec.nn.frame_linear import linear, quantize_int8, set_int8

pytestmark = pytest.mark.usefixtures("one_thread")


def layer(n_in: int = 384, n_out: int = 768, seed: int = 0) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(n_in, n_out)


@pytest.mark.parametrize("rows", [1, 3, 4])
def test_frame_layout_equals_f_linear_for_few_rows(rows: int) -> None:
    lin = layer()
    x = torch.randn(rows, 1, 384)
    with torch.no_grad():
        y = linear(lin, x)
        ref = torch.nn.functional.linear(x, lin.weight, lin.bias)
    assert y.shape == ref.shape == (rows, 1, 768)
    assert (y - ref).abs().max().item() < 1e-5 * ref.abs().max().item()
    assert "_frame_cache" in lin.__dict__  # the transposed copy was made and kept


def test_many_rows_and_autograd_take_plain_f_linear() -> None:
    lin = layer()
    x = torch.randn(2, 50, 384)
    with torch.no_grad():
        assert torch.equal(linear(lin, x), torch.nn.functional.linear(x, lin.weight, lin.bias))
    assert "_frame_cache" not in lin.__dict__
    one = torch.randn(1, 384, requires_grad=True)
    y = linear(lin, one)
    y.sum().backward()
    assert torch.allclose(one.grad[0], lin.weight.sum(0), atol=1e-5)  # the gradient of the real layer
    assert lin.weight.grad is not None


def test_cache_follows_in_place_weight_changes() -> None:
    lin = layer()
    x = torch.randn(1, 384)
    with torch.no_grad():
        before = linear(lin, x)
        lin.weight.mul_(2.0)  # an optimizer step or load_state_dict writes in place, like this
        lin.bias.zero_()
        after = linear(lin, x)
        ref = torch.nn.functional.linear(x, lin.weight, lin.bias)
    assert (after - ref).abs().max().item() < 1e-5 * ref.abs().max().item()
    assert (after - before).abs().max().item() > 0.1


def test_quantize_int8_error_is_at_most_half_a_step() -> None:
    w = torch.randn(64, 963) * torch.linspace(0.01, 3.0, 64)[:, None]  # very different row scales
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and q.shape == (64, 963)
    err = (q.float() * scale[:, None] - w).abs()
    assert (err <= scale[:, None] / 2 + 1e-7).all()
    assert q.abs().max().item() == 127  # each row's largest entry uses the full range


# 963: the encoder's STFT features; 72, 88, 200: sizes PyTorch's private int8 kernel crashed on
# (more than one row, AVX-512) before this path used public operators only.
@pytest.mark.parametrize("n_in", [72, 88, 200, 384, 963])
@pytest.mark.parametrize("rows", [1, 2, 5, 64])
def test_int8_is_close_to_fp32_for_any_row_count(n_in: int, rows: int) -> None:
    lin = layer(n_in, 384)
    set_int8(lin, True)
    x = torch.randn(rows, n_in)
    with torch.no_grad():
        y = linear(lin, x)
        ref = torch.nn.functional.linear(x, lin.weight, lin.bias)
    rel = ((y - ref).norm() / ref.norm()).item()
    # int8 weights (~0.2% per entry) and bf16 activations and outputs (2^-9): ~0.5% in all.
    assert 1e-4 < rel < 0.015, rel
    # a row's result does not depend on how many rows came with it (within bf16 rounding)
    with torch.no_grad():
        single = linear(lin, x[:1])
    assert (single - y[:1]).abs().max().item() < 1e-2 * ref[:1].abs().max().item()
    set_int8(lin, False)
    with torch.no_grad():
        assert (linear(lin, x) - ref).abs().max().item() < 1e-5 * ref.abs().max().item()


def test_int8_leaves_fp64_and_training_alone() -> None:
    lin = layer(384, 128)
    set_int8(lin, True)
    x = torch.randn(3, 384, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(linear(lin, x), torch.nn.functional.linear(x, lin.weight.double(), lin.bias.double()))
    xg = torch.randn(3, 384, requires_grad=True)
    assert torch.equal(linear(lin, xg), torch.nn.functional.linear(xg, lin.weight, lin.bias))


def test_int8_is_the_stated_formula() -> None:
    """y = bias + bf16(bf16(x) @ q^T * scale) (float32 accumulation), the rounding the native
    engine reproduces; checked against a float64 evaluation of the same formula."""
    lin = layer(963, 96)
    set_int8(lin, True)
    x = torch.randn(7, 963)
    with torch.no_grad():
        y = linear(lin, x)
    q, scale = quantize_int8(lin.weight)
    acc = x.to(torch.bfloat16).double() @ q.double().t() * scale.to(torch.bfloat16).double()
    ref = lin.bias.detach() + acc.float().to(torch.bfloat16)  # float32 + bf16, as the layer adds them
    # equal up to one bf16 step where the float32 sum order moves a value across a rounding edge
    step = acc.float().abs() * 2.0**-8
    assert ((y - ref).abs() <= step + 1e-6).all()
    assert (y == ref).float().mean().item() > 0.9


def test_package_uses_no_private_torch_operator() -> None:
    """Private ``torch._*`` kernels carry unstated preconditions that vary with the CPU (the int8
    one crashed on AVX-512): the package depends on none."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "codec"
    hits = [f"{p.relative_to(root)}:{node.lineno} torch.{node.attr}" for p in sorted(root.rglob("*.py"))
            for node in ast.walk(ast.parse(p.read_text()))
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "torch"
            and node.attr.startswith("_") and node.attr != "_C"]
    assert hits == []


def test_codec_int8_streams_like_its_offline_self_and_keeps_the_quality() -> None:
    model = warmed("ema")
    wav = speech(2.0)
    codes = model.encode(wav)
    audio = model.decode(codes)
    model.int8 = True
    assert model.int8
    codes8 = model.encode(wav)
    audio8 = model.decode(codes8)
    with model.streaming():
        streamed = torch.cat([model.encode(wav[..., i : i + 320]) for i in range(0, wav.shape[-1], 320)]
                             + [model.flush()], dim=-1)
    with model.streaming():
        streamed_audio = torch.cat([model.decode(codes8[..., t : t + 1]) for t in range(codes8.shape[-1])], dim=-1)
    # Streaming in int8 reproduces the int8 offline encode (bf16 rounding can flip a rare near-tie).
    assert (streamed == codes8).float().mean().item() > 0.97
    assert (streamed_audio - audio8).abs().max().item() < 0.05 * audio8.abs().max().item()
    # int8 changes the first stage's codes rarely and the decoded audio little.
    assert (codes8[:, 0] == codes[:, 0]).float().mean().item() > 0.9
    rel = ((audio8 - audio).norm() / audio.norm()).item()
    assert rel < 0.2, rel
    model.int8 = False
    assert torch.equal(model.encode(wav), codes)  # switching back restores the float32 model exactly
