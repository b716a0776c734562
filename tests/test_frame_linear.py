"""Frame-rate linear layers: the prepared fp32 matrix-vector layout, int8 weight-only inference,
their preparation (a snapshot of the weights), and the streamer's int8 precision (streaming
equal to offline, quality kept)."""
from __future__ import annotations

import pytest
import torch
from conftest import speech
from test_convnext import warmed

from codec.nn.frame_linear import FrameLinear, Int8Linear, linear, prepare_linears, quantize_int8

pytestmark = pytest.mark.usefixtures("one_thread")


def layer(n_in: int = 384, n_out: int = 768, seed: int = 0) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(n_in, n_out)


@pytest.mark.parametrize("rows", [1, 3, 4])
def test_frame_layout_equals_f_linear_for_few_rows(rows: int) -> None:
    lin = layer()
    prepared = FrameLinear(lin)
    x = torch.randn(rows, 1, 384)
    with torch.no_grad():
        y = linear(prepared, x)
        ref = torch.nn.functional.linear(x, lin.weight, lin.bias)
    assert y.shape == ref.shape == (rows, 1, 768)
    assert (y - ref).abs().max().item() < 1e-5 * ref.abs().max().item()
    assert prepared.wt.shape == (384, 768) and prepared.wt.is_contiguous()  # the transposed copy
    assert prepared.weight is lin.weight  # shared, not copied


def test_many_rows_and_plain_layers_take_plain_f_linear() -> None:
    lin = layer()
    x = torch.randn(2, 50, 384)
    with torch.no_grad():
        assert torch.equal(linear(FrameLinear(lin), x), torch.nn.functional.linear(x, lin.weight, lin.bias))
    one = torch.randn(1, 384, requires_grad=True)
    y = linear(lin, one)  # the live model's layers: F.linear, with autograd
    y.sum().backward()
    assert torch.allclose(one.grad[0], lin.weight.sum(0), atol=1e-5)  # the gradient of the real layer
    assert lin.weight.grad is not None


def test_prepared_weights_are_a_snapshot() -> None:
    """A prepared layer keeps the weights it was made from (a streamer rebuilds them); the plain
    layer follows in-place changes at once."""
    lin = layer()
    prepared = FrameLinear(lin)
    x = torch.randn(1, 384)
    with torch.no_grad():
        before = linear(prepared, x)
        lin.weight.mul_(2.0)  # an optimizer step or load_state_dict writes in place, like this
        lin.bias.zero_()
        assert torch.equal(linear(prepared, x), before)
        after = linear(FrameLinear(lin), x)
        ref = torch.nn.functional.linear(x, lin.weight, lin.bias)
        assert torch.equal(linear(lin, x), ref)
    assert (after - ref).abs().max().item() < 1e-5 * ref.abs().max().item()
    assert (after - before).abs().max().item() > 0.1


def test_prepare_linears_swaps_every_plain_linear() -> None:
    net = torch.nn.Sequential(layer(8, 16), torch.nn.ReLU(), torch.nn.Sequential(layer(16, 4)))
    weights = [m.weight for m in net.modules() if isinstance(m, torch.nn.Linear)]
    prepare_linears(net, int8=True)
    assert [type(m) for m in net.modules() if isinstance(m, torch.nn.Linear)] == [Int8Linear, Int8Linear]
    assert [m.weight for m in net.modules() if isinstance(m, torch.nn.Linear)] == weights


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
    q8 = Int8Linear(lin)
    x = torch.randn(rows, n_in)
    with torch.no_grad():
        y = linear(q8, x)
        ref = torch.nn.functional.linear(x, lin.weight, lin.bias)
    rel = ((y - ref).norm() / ref.norm()).item()
    # int8 weights (~0.2% per entry) and bf16 activations and outputs (2^-9): ~0.5% in all.
    assert 1e-4 < rel < 0.015, rel
    # a row's result does not depend on how many rows came with it (within bf16 rounding)
    with torch.no_grad():
        single = linear(q8, x[:1])
    assert (single - y[:1]).abs().max().item() < 1e-2 * ref[:1].abs().max().item()
    with torch.no_grad():
        assert (linear(lin, x) - ref).abs().max().item() < 1e-5 * ref.abs().max().item()


def test_int8_leaves_fp64_alone() -> None:
    lin = layer(384, 128)
    x = torch.randn(3, 384, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(linear(Int8Linear(lin), x), torch.nn.functional.linear(x, lin.weight.double(), lin.bias.double()))


def test_int8_is_the_stated_formula() -> None:
    """y = bias + bf16(bf16(x) @ q^T * scale) (float32 accumulation), the rounding the native
    engine reproduces; checked against a float64 evaluation of the same formula."""
    lin = layer(963, 96)
    x = torch.randn(7, 963)
    with torch.no_grad():
        y = linear(Int8Linear(lin), x)
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


@pytest.mark.parametrize("backend", ["native", "torch"])
def test_int8_precision_streams_like_its_offline_self_and_keeps_the_quality(backend: str) -> None:
    model = warmed("ema")
    wav = speech(2.0)
    codes = model.encode(wav)
    audio = model.decode(codes)
    int8 = model.streamer("int8", backend)
    codes8 = int8.encode_offline(wav)
    audio8 = int8.decode_offline(codes8)
    with int8:
        streamed = torch.cat([int8.encode(wav[..., i : i + 320]) for i in range(0, wav.shape[-1], 320)]
                             + [int8.flush()], dim=-1)
    with int8:
        streamed_audio = torch.cat([int8.decode(codes8[..., t : t + 1]) for t in range(codes8.shape[-1])], dim=-1)
    # Streaming in int8 reproduces the int8 offline encode (bf16 rounding can flip a rare near-tie).
    assert (streamed == codes8).float().mean().item() > 0.97
    assert (streamed_audio - audio8).abs().max().item() < 0.05 * audio8.abs().max().item()
    # int8 changes the first stage's codes rarely and the decoded audio little.
    assert (codes8[:, 0] == codes[:, 0]).float().mean().item() > 0.9
    rel = ((audio8 - audio).norm() / audio.norm()).item()
    assert rel < 0.2, rel
    assert torch.equal(model.encode(wav), codes)  # the model itself stays float32, untouched
    assert torch.equal(model.streamer().encode_offline(wav), codes)
