"""The frame-rate ConvNeXt architecture: STFT analysis / synthesis maths, causality,
streaming equal to offline, the fp64 exact path, gradients, and its fast inference paths."""
from __future__ import annotations

import pytest
import torch
from conftest import KINDS, REPO, cycled_slices, speech

from codec import Codec
from codec.nn.conv import CausalConv1d
from codec.nn.stft import CausalISTFT, CausalSTFT
from codec.recipe import ConfigError, deep_merge, load_recipe
from codec.runtime import native

pytestmark = pytest.mark.usefixtures("one_thread")
HOP = 320


def tiny_convnext(kind: str = "ste", seed: int = 0, **model: object) -> Codec:
    torch.manual_seed(seed)
    recipe = deep_merge(load_recipe(REPO / "recipes" / "tiny_convnext.yaml"),
                        {"model": {"quantizer": {"kind": kind}, **model}})
    return Codec.from_config(recipe)


#: The default model's synthesis (egs/librispeech/history/synthesis_atan2.yaml) at test size.
CHOSEN = {"subframes": 4, "stft_window": 320, "head": "logmag_atan2", "synthesis_delay": True}


def warmed(kind: str, **model_cfg: object) -> Codec:
    """A tiny ConvNeXt codec whose codebooks have seen real speech twice (codes spread out)."""
    model = tiny_convnext(kind, **model_cfg)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(speech(2.0))
    return model.eval()


def test_stft_then_istft_is_the_identity_one_hop_late() -> None:
    """Hann windows at 50% overlap sum to one: synthesising the spectra of the plain frames
    gives the input back sample for sample, one hop late (frame t's first half is block t - 1)."""
    x = speech(1.0).double()
    stft = CausalSTFT(HOP)
    frames = torch.nn.functional.pad(x[:, 0], (HOP, 0)).unfold(-1, 2 * HOP, HOP)
    spec = torch.fft.rfft(frames, dim=-1)
    y = CausalISTFT(HOP)(torch.cat([spec.abs().clamp_min(1e-30).log(), spec.angle()], dim=-1))
    assert y.shape == x.shape
    assert y[..., :HOP].abs().max().item() < 1e-12
    assert (y[..., HOP:] - x[..., :-HOP]).abs().max().item() < 1e-12
    feats = stft(x)
    assert feats.shape == (1, x.shape[-1] // HOP, 3 * (HOP + 1))
    # the phase features are unit vectors wherever a bin has energy
    windowed = torch.fft.rfft(frames * torch.hann_window(2 * HOP, dtype=torch.float64), dim=-1)
    assert torch.allclose(feats[..., : HOP + 1], torch.log(windowed.abs() + 1e-5))
    unit = feats[..., HOP + 1 :].reshape(1, -1, 2, HOP + 1).pow(2).sum(2)
    assert torch.allclose(unit[windowed.abs() > 1e-3], torch.ones(()).double(), atol=1e-9)


@pytest.mark.parametrize("grid", [{}, CHOSEN], ids=["one-frame", "chosen"])
@pytest.mark.parametrize("chunk", [1, 7, 320, 1000, 16000])
@pytest.mark.parametrize("kind", KINDS)
def test_streaming_matches_offline(kind: str, chunk: int, grid: dict) -> None:
    """The one-frame grid and the default model's (CHOSEN): exact-mode streamed codes equal
    the offline ones for every quantizer kind and chunk size, and the decode stream (native
    engine, one frame per call, then flush_decoder) gives the offline audio."""
    wav = speech({1: 0.206, 7: 0.5}.get(chunk, 2.0))
    model = warmed(kind, **grid)
    exact = model.streamer("exact")
    codes = exact.encode_offline(wav)
    with exact:
        parts = [exact.encode(wav[..., i : i + chunk]) for i in range(0, wav.shape[-1], chunk)]
        parts.append(exact.flush())
    assert torch.equal(torch.cat(parts, -1), codes)
    assert codes.unique().numel() > 4
    offline = model.decode(codes)
    with exact:
        frames = [exact.decode(codes[..., t : t + 1]) for t in range(codes.shape[-1])]
        native_ran = exact.runner.engine("decoder") is not None
        frames = torch.cat(frames + [exact.flush_decoder()], -1)
    assert native_ran == (native.load() is not None)
    assert frames.shape == offline.shape == (1, 1, codes.shape[-1] * HOP)
    assert (frames - offline).abs().max().item() <= 1e-5


@pytest.mark.parametrize("grid", [{}, CHOSEN], ids=["default", "chosen"])
def test_fast_streaming_agrees_with_offline(grid: dict) -> None:
    """The default fp32 encode, streamed in one-frame chunks: nearly every code equal."""
    wav = speech(4.0)
    model = warmed("ste", **grid)
    codes = model.encode(wav)
    with model.streamer() as streamer:
        streamed = torch.cat([streamer.encode(wav[..., i : i + HOP]) for i in range(0, wav.shape[-1], HOP)]
                             + [streamer.flush()], -1)
    assert (streamed == codes).float().mean().item() >= 0.95


def test_encoder_and_decoder_are_causal() -> None:
    model = warmed("ste")
    wav = speech(1.0)
    t = 20
    changed = wav.clone()
    changed[..., (t + 1) * HOP :] = torch.randn_like(changed[..., (t + 1) * HOP :])
    a, b = model.encode(wav), model.encode(changed)
    assert torch.equal(a[..., : t + 1], b[..., : t + 1]) and not torch.equal(a[..., t + 1 :], b[..., t + 1 :])
    # decoded block t depends on frames <= t only
    other = a.clone()
    other[..., t + 1 :] = (other[..., t + 1 :] + 1) % 64
    ya, yb = model.decode(a), model.decode(other)
    assert torch.equal(ya[..., : (t + 1) * HOP], yb[..., : (t + 1) * HOP])
    assert not torch.equal(ya[..., (t + 1) * HOP :], yb[..., (t + 1) * HOP :])


def test_exact_precision_is_close_to_fast() -> None:
    """The float64 encoder (the exact precision) and the float32 one compute the same latents."""
    model = warmed("ste")
    wav = speech(2.0)
    with torch.no_grad():
        z32 = model.encoder(model._pad(wav))
        z64 = model.encoder(model._pad(wav).double())
    assert z64.dtype == torch.float64
    # fp32 rounding is amplified only where log(|X| + 1e-5) sees near-empty bins
    assert (z64 - z32.double()).abs().max().item() <= 1e-3 * z64.abs().max().item()


def test_training_pass_reaches_every_parameter() -> None:
    model = tiny_convnext("ste")
    model.train()
    wav = speech(0.5)
    out = model(wav)
    assert out.audio.shape == wav.shape
    (out.audio.pow(2).mean() + out.quantizer_loss).backward()
    for name, p in [*model.encoder.named_parameters(), *model.decoder.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_depthwise_inference_path_equals_conv1d() -> None:
    torch.manual_seed(0)
    for dilation in (1, 2):
        conv = CausalConv1d(16, 16, 5, dilation=dilation, groups=16, norm="none").eval()
        x = torch.randn(2, 16, 40)
        with torch.no_grad():
            fast = conv(x)
            padded = torch.nn.functional.pad(x, (conv.context, 0))
            ref = torch.nn.functional.conv1d(padded, conv.conv.weight, conv.conv.bias, dilation=dilation, groups=16)
        assert (fast - ref).abs().max().item() < 1e-5


def test_stage_tables_follow_codebook_changes() -> None:
    """The per-stage inference tables (codebook and its latent-space projection) are rebuilt
    when a parameter changes in place (an optimizer step, load_state_dict)."""
    model = warmed("ste")
    wav = speech(1.0)
    codes = model.encode(wav)
    before = model.decode(codes)
    with torch.no_grad():
        for stage in model.quantizer.stages:
            stage.quantizer.embed.mul_(-1.0)
    assert not torch.equal(model.encode(wav), codes) or not torch.equal(model.decode(codes), before)
    assert (model.decode(codes) - before).abs().max().item() > 0


def test_architecture_is_validated() -> None:
    with pytest.raises(ConfigError, match="architecture"):
        tiny_convnext(architecture="transformer")
    with pytest.raises(ConfigError, match="width"):
        tiny_convnext(width=0)


def test_save_load_round_trip(tmp_path) -> None:
    model = warmed("ste")
    wav = speech(1.0)
    model.save_pretrained(tmp_path / "m")
    again = Codec.from_pretrained(tmp_path / "m")
    assert again.fingerprint() == model.fingerprint()
    assert torch.equal(again.encode(wav), model.encode(wav))
    assert torch.equal(again.decode(model.encode(wav)), model.decode(model.encode(wav)))


# ----- the finer synthesis grid: sub-frames per token, complex head, delayed synthesis ----------
FINE = {"subframes": 4, "stft_window": 320, "head": "complex", "synthesis_delay": True}


def test_fine_grid_analysis_then_synthesis_is_the_identity() -> None:
    """320-sample Hann frames at an 80-sample sub-hop (4 per token): their windows sum to 2,
    so synthesising half the spectra of the plain frames, each where the analysis took it,
    returns the input sample for sample (aligned: the synthesis waits for the frames), up to
    the last window - sub hop samples, which frames after the signal would complete."""
    x = speech(1.0).double()
    stft, istft = CausalSTFT(HOP, 4, 320), CausalISTFT(HOP, 4, 320, "complex", delay=True)
    assert istft.lookahead == 240 and stft.features == 4 * 3 * 161 and istft.outputs == 4 * 2 * 161
    frames = torch.nn.functional.pad(x[:, 0], (240, 0)).unfold(-1, 320, 80)  # [1, T / 80, 320]
    spec = torch.fft.rfft(frames, dim=-1) / 2
    y = istft(torch.cat([spec.real, spec.imag], dim=-1).reshape(1, -1, istft.outputs))
    assert y.shape == x.shape
    assert (y[..., :-240] - x[..., :-240]).abs().max().item() < 1e-12
    feats = stft(x)
    assert feats.shape == (1, x.shape[-1] // HOP, stft.features)
    windowed = torch.fft.rfft(frames * torch.hann_window(320, dtype=torch.float64), dim=-1)
    assert torch.allclose(feats.reshape(1, -1, 3 * 161)[..., :161], torch.log(windowed.abs() + 1e-5))


@pytest.mark.parametrize("subframes, window, delay", [(1, 640, False), (4, 320, True), (4, 320, False), (2, 640, True)])
def test_target_spectra_rebuild_the_signal_on_every_grid(subframes: int, window: int, delay: bool) -> None:
    """What the spectrum loss aims at: synthesising target_spectra(x) returns x, except the
    sub-blocks a frame outside the signal would complete (the last k - 1 with the delay, the
    first k - 1 without it, k = window / sub hop)."""
    x = speech(0.5).double()
    istft = CausalISTFT(HOP, subframes, window, "complex", delay=delay)
    spec = istft.target_spectra(x)
    h = HOP // subframes
    k = window // h
    assert spec.shape == (1, x.shape[-1] // h, window // 2 + 1)
    y = istft(None, spec)
    good = slice(0, x.shape[-1] - (k - 1) * h) if delay else slice((k - 1) * h, None)
    assert (y - x)[..., good].abs().max().item() < 1e-12
    assert (y - x).abs().max().item() > 1e-3  # the edge really is incomplete


def test_atan2_head_takes_the_phase_from_two_parallel_outputs() -> None:
    """logmag_atan2: [log |S| | r | i] -> |S| e^(j atan2(i, r)); (r, i) at any positive scale
    give the same spectrum, and the grid's outputs are 3 values per bin."""
    istft = CausalISTFT(HOP, 4, 320, "logmag_atan2", delay=True)
    assert istft.outputs == 4 * 3 * 161
    torch.manual_seed(0)
    spec = torch.complex(torch.randn(2, 8, 161, dtype=torch.float64), torch.randn(2, 8, 161, dtype=torch.float64))
    for scale in (1.0, 0.1, 30.0):
        head = torch.cat([spec.abs().log(), scale * spec.real, scale * spec.imag], dim=-1).reshape(2, 2, -1)
        assert torch.allclose(istft.spectra(head), spec, rtol=1e-6, atol=1e-6)


# two sub-frames per token with a window of four sub-hops: a token completes fewer sub-frames
# than the synthesis holds back (3), so the stream's start is trimmed over several calls
COARSE_DELAY = {"subframes": 2, "stft_window": 640, "head": "complex", "synthesis_delay": True}


@pytest.mark.parametrize("grid", [FINE, COARSE_DELAY], ids=["4x320", "2x640"])
@pytest.mark.parametrize("groups", [[1], [3], [2, 5, 1]])
def test_fine_grid_streams_like_offline(groups: list[int], grid: dict) -> None:
    """Exact encode streams to the offline codes; a decode stream in any grouping of frames,
    then flush_decoder(), concatenates to the offline decode; a stream goes on afresh after it."""
    model = tiny_convnext("ema", **grid)
    model.train()
    with torch.no_grad():
        model(speech(2.0))
    model.eval()
    exact = model.streamer("exact")
    wav = speech(2.0, index=3)
    codes = exact.encode_offline(wav)
    with exact:
        parts = [exact.encode(wav[..., i : i + 999]) for i in range(0, wav.shape[-1], 999)] + [exact.flush()]
    assert torch.equal(torch.cat(parts, -1), codes)
    offline = model.decode(codes)
    with exact:
        out = [exact.decode(codes[..., s]) for s in cycled_slices(codes.shape[-1], groups)]
        out.append(exact.flush_decoder())
        again = torch.cat([exact.decode(codes[..., t : t + 1]) for t in range(codes.shape[-1])]
                          + [exact.flush_decoder()], -1)
    streamed = torch.cat(out, -1)
    assert streamed.shape == offline.shape == again.shape
    assert (streamed - offline).abs().max().item() <= 1e-5
    assert (again - offline).abs().max().item() <= 1e-5


@pytest.mark.parametrize("tokens", [1, 2])
def test_a_stream_shorter_than_the_delay_flushes_only_its_own_samples(tokens: int) -> None:
    """Two sub-frames per token, three held back: a one- or two-token stream has not yet
    dropped the samples before its start when flush_decoder() comes, so the flush drops them."""
    model = tiny_convnext("ema", **COARSE_DELAY).eval()
    codes = model.encode(speech(1.0))[..., :tokens]
    offline = model.decode(codes)
    for backend in ("torch", "native"):
        with model.streamer(backend=backend) as streamer:
            streamed = torch.cat([streamer.decode(codes), streamer.flush_decoder()], -1)
        assert streamed.shape == offline.shape == (1, 1, tokens * HOP)
        assert (streamed - offline).abs().max().item() <= 1e-5


def test_fine_grid_saves_and_loads(tmp_path) -> None:
    from codec.runtime.native.engine import unsupported

    model = tiny_convnext("ema", **FINE).eval()
    assert {k: model.config[k] for k in FINE} == FINE  # written because they are not the defaults
    model.save_pretrained(tmp_path / "m")
    again = Codec.from_pretrained(tmp_path / "m")
    assert again.fingerprint() == model.fingerprint()
    codes = model.encode(speech(1.0))
    assert torch.equal(again.decode(codes), model.decode(codes))
    # the native engine runs this grid too (tests/test_frame_engine.py compares the two paths)
    assert unsupported(model.encoder, model.quantizer, "encoder") is None
    assert unsupported(model.decoder, model.quantizer, "decoder") is None


@pytest.mark.parametrize("fine", [False, True])
def test_latency_is_exact_and_measured_with_an_impulse(fine: bool) -> None:
    """Stream an impulse through encode and decode in 80-sample chunks, noting after how many
    input samples each decoded sample came out: the worst wait is model.latency - 1 samples
    (one token, plus the synthesis look-ahead: 20 ms and 35 ms here), and no decoded sample
    changes with an input that arrives after it was emitted."""
    model = tiny_convnext("ema", **(FINE if fine else {}))
    model.train()
    with torch.no_grad():
        model(speech(1.0))
    model.eval()
    assert model.latency == (HOP + 240 if fine else HOP) and model.latency <= 640  # <= 40 ms
    n0 = 1000
    base = 0.01 * speech(0.5)
    impulse = base.clone()
    impulse[..., n0] += 0.9

    def stream(wav: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        out, when = [], []
        with model.streamer() as streamer:
            for m in range(80, wav.shape[-1] + 1, 80):
                audio = streamer.decode(streamer.encode(wav[..., m - 80 : m]))
                out.append(audio)
                when += [m] * audio.shape[-1]
            tail = streamer.decode(streamer.flush())
            tail = torch.cat([tail, streamer.flush_decoder()], -1)
            out.append(tail)
            when += [wav.shape[-1] + HOP] * tail.shape[-1]
        return torch.cat(out, -1), when

    y_base, when = stream(base)
    y_imp, _ = stream(impulse)
    waits = [m - 1 - n for n, m in enumerate(when[: base.shape[-1]]) if m <= base.shape[-1]]
    assert max(waits) == model.latency - 1
    changed = (y_imp - y_base).abs()[0, 0] > 1e-7
    idx = changed.nonzero()[:, 0].tolist()
    assert all(when[i] > n0 for i in idx)  # every sample it changes came out after it arrived
    # ... and none before its token (the synthesis window reaches 240 samples back on the fine grid)
    assert min(idx) >= (n0 // HOP) * HOP - (240 if fine else 0)
    assert bool(changed[n0 : n0 + 40].any())  # the impulse comes out where it went in


def test_fine_grid_file_decode_in_blocks_equals_the_whole() -> None:
    """A long file decodes in streamed blocks (decode_blocks): with the synthesis look-ahead
    the held-back samples come out at the end, and the result equals the one-piece decode."""
    import io

    import numpy as np

    from codec.bitstream.container import parse
    from codec.files.coding import decode_audio, decode_blocks, encode_stream, make_header

    model = tiny_convnext("ema", **FINE).eval()
    wav = speech(2.0, index=2)[0, 0].numpy()
    buf = io.BytesIO()
    streamer = model.streamer()
    encode_stream(streamer, [wav[:12345], wav[12345:]], buf, make_header(model, 4))
    parsed = parse(buf.getvalue())
    whole = decode_audio(streamer, parsed)
    blocks = np.concatenate(list(decode_blocks(streamer, parsed, block_frames=7)))
    assert blocks.shape == whole.shape == wav.shape
    assert np.abs(blocks - whole).max() <= 1e-5


def test_a_model_trains_after_an_evaluation_under_inference_mode() -> None:
    """The synthesis window is cached at its first use; made under torch.inference_mode (an
    evaluation first, as tools do) it must still be a tensor autograd can save."""
    from codec.nn import stft

    stft._WINDOWS.clear()
    model = tiny_convnext("ema", **CHOSEN)
    with torch.inference_mode():
        model.decode(model.encode(speech(0.5)))
    model.train()
    out = model(speech(0.5), quantize=False, spectra=True)
    out.audio.square().mean().backward()
    assert model.decoder.head.weight.grad is not None and float(model.decoder.head.weight.grad.abs().sum()) > 0
