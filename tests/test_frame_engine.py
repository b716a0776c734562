"""The native frame engine (codec/runtime/native): batch-1 ConvNeXt streams in one C call per chunk.

It must give the PyTorch layers' results (codes equal, audio to float rounding) on real speech
with the shipped weights, be bit-identical whatever the chunking, run int8 like the PyTorch
int8 path, refuse bad codes without corrupting its state, and step aside (PyTorch path) for
what it does not cover."""
from __future__ import annotations

import pytest
import torch
from conftest import REPO, cycled_slices, speech

from codec import Codec
from codec.recipe import deep_merge, load_recipe
from codec.runtime import native
from codec.runtime.native.engine import TILE, FrameEngine, pack_tiles, unsupported
from codec.runtime.stream import ENGINE, ENGINE_MAX_FRAMES, LAYERS
from codec.runtime.streamer import Streamer

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(native.load() is None, reason="the engine was not built at install time (no C compiler)")]
HOP = 320


def tiny(kind: str = "ema", seed: int = 0, warm: bool = True, quantizer: dict | None = None,
         **model: object) -> Codec:
    """The tiny ConvNeXt codec; ``warm``: codebooks that have seen real speech (codes spread)."""
    torch.manual_seed(seed)
    recipe = deep_merge(load_recipe(REPO / "recipes" / "tiny_convnext.yaml"),
                        {"model": {"quantizer": {"kind": kind, **(quantizer or {})}, **model}})
    m = Codec.from_config(recipe)
    if warm:
        m.train()
        with torch.no_grad():
            for _ in range(2):
                m(speech(2.0))
    return m.eval()


def streamer_of(model: Codec | Streamer, native_on: bool = True, precision: str = "fp32") -> Streamer:
    """``model`` itself when it is a streamer, else its streamer on the native or torch backend."""
    if isinstance(model, Streamer):
        return model
    return model.streamer(precision, "native" if native_on else "torch")


def stream_codes(model: Codec | Streamer, wav: torch.Tensor, chunks: list[int] | int,
                 native_on: bool = True) -> torch.Tensor:
    """Codes of ``wav`` streamed in chunks of the given sizes (cycled) and flushed."""
    streamer = streamer_of(model, native_on)
    sizes = [chunks] if isinstance(chunks, int) else chunks
    with streamer:
        parts = [streamer.encode(wav[..., s]) for s in cycled_slices(wav.shape[-1], sizes)]
        parts.append(streamer.flush())
        used = type(streamer.runner.engine("encoder"))
    assert (used is FrameEngine) == (streamer.backend == "native" and streamer.precision != "exact")
    return torch.cat(parts, -1)


def stream_audio(model: Codec | Streamer, codes: torch.Tensor, frames: int = 1, native_on: bool = True) -> torch.Tensor:
    """Codes decoded as a stream, ``frames`` at a time, with the samples a synthesis delay holds
    back (``flush_decoder``) at the end: the offline decode's length."""
    streamer = streamer_of(model, native_on)
    with streamer:
        parts = [streamer.decode(codes[..., t : t + frames]) for t in range(0, codes.shape[-1], frames)]
        return torch.cat(parts + [streamer.flush_decoder()], -1)


@pytest.fixture(scope="module")
def shipped() -> Codec:
    return Codec.default()


def test_pack_tiles_layout() -> None:
    w = torch.randn(16 * TILE + 2, 7)
    p = pack_tiles(w)
    assert p.shape == (17, 7, TILE)
    t, i, j = 16, 5, 1
    assert p[t, i, j] == w[t * TILE + j, i]
    assert p[t, i, 2:].abs().sum() == 0
    assert torch.equal(p.transpose(1, 2).reshape(-1, 7)[: w.shape[0]], w)


def test_shipped_model_streams_like_pytorch_on_speech(shipped: Codec) -> None:
    """Real speech, trained weights, 20 ms chunks: the engine's codes are the PyTorch stream's
    codes, and its audio from the same codes differs by float rounding only."""
    wav = speech(3.0, index=1)
    ours = stream_codes(shipped, wav, HOP)
    ref = stream_codes(shipped, wav, HOP, native_on=False)
    assert ours.shape == ref.shape == (1, 12, 150)
    assert (ours == ref).float().mean().item() >= 0.99
    assert torch.equal(ours[:, :4], ref[:, :4])
    offline = shipped.decode(ref)
    a = stream_audio(shipped, ref)
    b = stream_audio(shipped, ref, native_on=False)
    assert a.shape == b.shape == offline.shape
    scale = offline.abs().max().item()
    assert scale > 0.05
    assert (a - b).abs().max().item() <= 1e-5 * max(1.0, scale) * 10
    assert (a - offline).abs().max().item() <= 1e-4


def test_prefiltered_search_is_the_exhaustive_search(shipped: Codec) -> None:
    """The int8 prefilter only skips codewords that provably cannot win: on real latents
    (and on latents far off the data) its codes equal an exact score of every codeword bit
    for bit, and both equal PyTorch's fp32 search up to near-ties."""
    engine = FrameEngine(native.load(), shipped.encoder, shipped.quantizer, "encoder")
    with torch.no_grad():
        z = shipped.encoder(speech(4.0, index=7))[0].t()  # [F, D]
    z = torch.cat([z, 3.0 * torch.randn(50, z.shape[1]) * z.std(), torch.zeros(1, z.shape[1])])
    fast, full = engine.search(z, 12), engine.search(z, 12, exhaustive=True)
    assert torch.equal(fast, full)
    ref = shipped.quantizer.encode(z.t()[None])[0]
    assert (fast == ref).float().mean().item() >= 0.995
    assert torch.equal(fast[0], ref[0])


def test_results_do_not_depend_on_chunking() -> None:
    """The engine does the same float operations per frame however the samples arrive: codes
    and audio are bit-identical between 20 ms chunks, ragged chunks and whole frames groups."""
    model = tiny()
    wav = speech(2.0, index=2)
    a = stream_codes(model, wav, HOP)
    b = stream_codes(model, wav, [1, 333, 7, 960, 2000, 50])
    assert torch.equal(a, b)
    assert a.unique().numel() > 8
    ya = stream_audio(model, a, 1)
    yb = stream_audio(model, a, 7)
    assert torch.equal(ya, yb)
    # and the codes are the offline ones up to near-ties (fp32, as the PyTorch stream)
    assert (a == model.encode(wav)).float().mean().item() >= 0.97


def test_long_chunks_hand_the_stream_to_pytorch_and_back(shipped: Codec, monkeypatch) -> None:
    """Chunks of more than ENGINE_MAX_FRAMES frames run in the PyTorch layers: the stream's
    state moves between the engine and them at every switch, so a stream mixing both equals
    an all-PyTorch stream (codes up to near-ties, audio to float rounding)."""
    handovers = {"load_state": 0, "store_state": 0}

    def counting(name: str):
        original = getattr(FrameEngine, name)

        def counted(self: FrameEngine, net: torch.nn.Module) -> None:
            handovers[name] += 1
            original(self, net)
        return counted

    for name in handovers:
        monkeypatch.setattr(FrameEngine, name, counting(name))
    wav = speech(6.0, index=6)
    big = (ENGINE_MAX_FRAMES + 8) * HOP + 123
    sizes = [HOP, big, 7, 3 * HOP, big, 100, HOP, 2 * big]
    mixed, ref = stream_codes(shipped, wav, sizes), stream_codes(shipped, wav, HOP, native_on=False)
    assert mixed.shape == ref.shape
    assert (mixed == ref).float().mean().item() >= 0.99
    assert torch.equal(mixed[:, :4], ref[:, :4])
    groups = [1, ENGINE_MAX_FRAMES + 1, 2, 1, 3 * ENGINE_MAX_FRAMES, 5]
    parts, t, k = [], 0, 0
    with shipped.streamer() as streamer:
        while t < ref.shape[-1]:
            parts.append(streamer.decode(ref[..., t : t + groups[k % len(groups)]]))
            t, k = t + groups[k % len(groups)], k + 1
        owners = {streamer.runner.path("decoder")}
        parts.append(streamer.flush_decoder())
    audio = torch.cat(parts, -1)
    assert owners <= {ENGINE, LAYERS}
    assert handovers["load_state"] >= 4 and handovers["store_state"] >= 4  # both ways, both parts
    assert (audio - stream_audio(shipped, ref, native_on=False)).abs().max().item() <= 1e-4


def test_int8_stream_stays_close_to_offline_int8(shipped: Codec) -> None:
    """int8 weights: activations and outputs rounded to bfloat16 as torch._weight_int8pack_mm
    rounds them. A bf16 rounding step turns the engine's ~1e-7 differences from PyTorch (sum
    order, GELU, LayerNorm) into occasional 2^-9 steps, so some late-stage codes differ (about
    5% here, 0.1% for the PyTorch stream); the audio stays as close to the offline int8 decode
    as the PyTorch stream's own (~1e-4 of the energy: 40 dB)."""
    wav = speech(2.0, index=3)
    native_int8, torch_int8 = shipped.streamer("int8"), shipped.streamer("int8", "torch")
    offline_codes = native_int8.encode_offline(wav)
    ours = stream_codes(native_int8, wav, HOP)
    assert (ours == offline_codes).float().mean().item() >= 0.9
    assert (ours[:, 0] == offline_codes[:, 0]).float().mean().item() >= 0.98
    offline = native_int8.decode_offline(offline_codes)
    a = stream_audio(native_int8, offline_codes)
    b = stream_audio(torch_int8, offline_codes)

    def err(x: torch.Tensor) -> float:
        return ((x - offline).pow(2).mean() / offline.pow(2).mean()).item()

    assert err(a) <= 4 * err(b) + 1e-5
    assert err(a) < 1e-3


def test_other_fft_sizes() -> None:
    """A 240-sample hop (FFT of 480 = 2^5 3 5 points) streams like the PyTorch layers."""
    model = tiny(warm=False, strides=[240])
    wav = speech(1.0)
    ours, ref = stream_codes(model, wav, 240), stream_codes(model, wav, 240, native_on=False)
    assert (ours == ref).float().mean().item() >= 0.97
    a, b = stream_audio(model, ref), stream_audio(model, ref, native_on=False)
    assert (a - b).abs().max().item() <= 1e-5 * max(1.0, b.abs().max().item())


GRIDS = {  # finer synthesis grids (ConvNeXtConfig), each with a head of its own
    "fine_atan2": {"subframes": 4, "stft_window": 320, "head": "logmag_atan2", "synthesis_delay": True},
    "fine_complex": {"subframes": 4, "stft_window": 320, "head": "complex", "synthesis_delay": False},
    "coarse_delay": {"subframes": 2, "stft_window": 640, "head": "logmag_phase", "synthesis_delay": True},
}


@pytest.mark.parametrize("grid", list(GRIDS))
def test_finer_grids_and_heads_stream_like_pytorch(grid: str, monkeypatch) -> None:
    """Sub-frames per token, longer windows, the three heads and a synthesis delay: the engine
    gives the PyTorch stream's codes and audio (the held-back tail at flush_decoder included),
    whatever the chunking, handing the stream to the layers and back for long chunks."""
    model = tiny(**GRIDS[grid])
    assert unsupported(model.encoder, model.quantizer, "encoder") is None
    wav = speech(2.0, index=3)
    ref = stream_codes(model, wav, HOP, native_on=False)
    ours = stream_codes(model, wav, [HOP, 7, 333, (ENGINE_MAX_FRAMES + 2) * HOP, 960])
    assert ours.shape == ref.shape and (ours == ref).float().mean().item() >= 0.97
    assert ours.unique().numel() > 8

    def decoded(native_on: bool, groups: list[int]) -> torch.Tensor:
        parts, t, k = [], 0, 0
        with streamer_of(model, native_on) as streamer:
            while t < ref.shape[-1]:
                n = groups[k % len(groups)]
                parts.append(streamer.decode(ref[..., t : t + n]))
                t, k = t + n, k + 1
            engine = streamer.runner.engine("decoder")
            parts.append(streamer.flush_decoder())
        assert (engine is not None) == native_on
        return torch.cat(parts, -1)

    want = decoded(False, [1])
    assert want.shape[-1] == ref.shape[-1] * HOP
    for groups in ([1], [3, 1, ENGINE_MAX_FRAMES + 1, 2]):
        got = decoded(True, groups)
        assert got.shape == want.shape
        assert (got - want).abs().max().item() <= 1e-5 * max(1.0, want.abs().max().item())
    offline = model.decode(ref)
    assert (want - offline).abs().max().item() <= 1e-5 * max(1.0, offline.abs().max().item())


def test_each_stream_starts_fresh_and_weight_changes_need_a_new_streamer() -> None:
    """A streamer's packed weights serve all its streams; the history never carries over. A
    weight edit (an optimizer step, load_state_dict) is not seen by the streamer made before
    it (a snapshot), and is by a new one."""
    model = tiny()
    streamer = model.streamer()
    a, b = speech(1.0, index=4), speech(1.0, index=5)
    first = stream_codes(streamer, a, HOP)
    engine = streamer.engine("encoder")
    stream_codes(streamer, b, HOP)
    assert streamer.engine("encoder") is engine  # reused
    assert torch.equal(stream_codes(streamer, a, HOP), first)  # history reset: same as the first time
    audio = stream_audio(streamer, first)
    stream_audio(streamer, stream_codes(streamer, b, HOP))
    assert torch.equal(stream_audio(streamer, first), audio)
    with torch.no_grad():
        model.decoder.head.bias += 0.5
    assert torch.equal(stream_audio(streamer, first), audio)  # the snapshot
    assert not torch.equal(stream_audio(model, first), audio)  # a new streamer sees the edit
    assert torch.allclose(stream_audio(model, first), stream_audio(model, first, native_on=False), atol=1e-4)


def test_bad_codes_raise_and_leave_the_stream_intact() -> None:
    model = tiny()
    codes = model.encode(speech(0.5))
    with model.streamer() as streamer:
        first = streamer.decode(codes[..., :3])
        bad = codes[..., 3:4].clone()
        bad[0, 2, 0] = model.codebook_sizes[2]
        with pytest.raises(IndexError):
            streamer.decode(bad)
        bad[0, 2, 0] = -1
        with pytest.raises(IndexError):
            streamer.decode(bad)
        rest = streamer.decode(codes[..., 3:])
    assert torch.equal(torch.cat([first, rest], -1), stream_audio(model, codes))


def test_fewer_stages_and_flush() -> None:
    model = tiny()
    wav = speech(1.0)[..., :16000 - 100]  # the last frame is partial: flush pads it
    n_q = 2
    with model.streamer() as streamer:
        parts = [streamer.encode(wav[..., i : i + 500], n_q=n_q) for i in range(0, wav.shape[-1], 500)]
        parts.append(streamer.flush(n_q=n_q))
    codes = torch.cat(parts, -1)
    ref = model.encode(wav, n_q=n_q)
    assert codes.shape == ref.shape == (1, n_q, 50)
    assert (codes == ref).float().mean().item() >= 0.97
    assert (stream_audio(model, ref) - model.decode(ref)).abs().max().item() <= 1e-5


def test_batches_and_unsupported_models_take_the_pytorch_path() -> None:
    model = tiny()
    wav = speech(1.0)
    two = torch.cat([wav, speech(1.0, index=1)])
    streamer = model.streamer()
    with streamer:
        streamer.encode(two[..., :HOP])
        assert streamer.runner.engine("encoder") is None
    with streamer:
        streamer.encode(wav[..., :HOP])
        with pytest.raises(ValueError, match="batch size"):
            streamer.encode(two[..., HOP : 2 * HOP])
    exact = model.streamer("exact")  # the fp64 encode stays in PyTorch (bit-exact streaming)
    assert exact.engine("encoder") is None and isinstance(exact.engine("decoder"), FrameEngine)
    codes = stream_codes(exact, wav, HOP)
    assert torch.equal(codes, exact.encode_offline(wav))
    projected = tiny(warm=False, quantizer={"codebook_dim": 4})
    assert unsupported(projected.encoder, projected.quantizer, "encoder") == "a projected or cosine-searched quantizer stage"
    assert unsupported(projected.decoder, projected.quantizer, "decoder") is None
    with projected.streamer() as streamer:  # the decoder in C, the encoder in PyTorch
        codes = streamer.encode(wav[..., :HOP])
        streamer.decode(codes)
        runner = streamer.runner
        assert runner.engine("encoder") is None and isinstance(runner.engine("decoder"), FrameEngine)
    torch.manual_seed(0)
    seanet = Codec.from_config(REPO / "recipes" / "tiny.yaml")
    assert unsupported(seanet.encoder, seanet.quantizer, "encoder") == "not the ConvNeXt architecture"
    with seanet.streamer() as streamer:
        streamer.encode(wav[..., :HOP])
        assert streamer.engine("encoder") is None and streamer.runner.engine("encoder") is None


@pytest.mark.skipif(native.chosen_variant() != "avx2", reason="this CPU runs the plain-C build only")
def test_portable_build_matches_the_native_one(shipped: Codec) -> None:
    """The plain-C loops (the `base` build, without AVX2) compute the same thing as the vector
    ones: codes equal up to near-ties, audio to float rounding (they differ in FMA
    contraction and the GELU's erf)."""
    portable = native.open_library(native.library_path("base"))
    wav = speech(2.0, index=8)
    enc_v, enc_p = (FrameEngine(lib, shipped.encoder, shipped.quantizer, "encoder") for lib in (native.load(), portable))
    dec_v, dec_p = (FrameEngine(lib, shipped.decoder, shipped.quantizer, "decoder") for lib in (native.load(), portable))
    codes = torch.cat([enc_v.encode(wav[..., i : i + HOP], 12) for i in range(0, wav.shape[-1], HOP)], -1)
    other = torch.cat([enc_p.encode(wav[..., i : i + HOP], 12) for i in range(0, wav.shape[-1], HOP)], -1)
    assert (codes == other).float().mean().item() >= 0.99
    a = torch.cat([dec_v.decode(codes[..., t : t + 1]) for t in range(codes.shape[-1])], -1)
    b = torch.cat([dec_p.decode(codes[..., t : t + 3]) for t in range(0, codes.shape[-1], 3)], -1)
    assert a.abs().max().item() > 0.05
    assert (a - b).abs().max().item() <= 1e-4


@pytest.mark.parametrize("int8", [False, True], ids=["float32", "int8"])
def test_weight_bytes_count_what_every_frame_reads(shipped: Codec, int8: bool) -> None:
    """FrameEngine.weight_bytes (the bench's memory floor) = the layer arithmetic: each linear
    layer's tile-padded weights (4 bytes, or 1 with int8 plus a float32 scale per output) and
    float32 bias, the blocks' depthwise taps, biases, LayerNorms and layer scales, the final
    LayerNorm and the window; the encoder's int8 search prefilter (a scale and a squared norm
    per codeword) for every stage; the decoder's input conv stays float32 (as in PyTorch)."""
    def linear(out: int, n_in: int, q: bool) -> int:
        return -(-out // TILE) * TILE * n_in * (1 if q else 4) + 4 * out + (4 * out if q else 0)

    lib = native.load()
    for part in ("encoder", "decoder"):
        net = getattr(shipped, part)
        c, n = net.norm.normalized_shape[0], (net.stft if part == "encoder" else net.istft).window
        want = 8 * c + 4 * n
        for b in net.blocks:
            want += linear(b.fc1.out_features, c, int8) + linear(c, b.fc1.out_features, int8)
            want += 4 * c * b.dwconv.kernel_span + 4 * c + 8 * c + 4 * c
        if part == "encoder":
            want += linear(c, net.inp.in_features, int8) + linear(net.out.out_features, c, int8)
            for stage in shipped.quantizer.stages:
                k, d = stage.tables()[0].shape
                want += -(-k // TILE) * TILE * d + 4 * k + 4 * k  # int8 codewords, a scale and a norm each
        else:
            conv = net.inp.conv
            want += linear(conv.out_channels, conv.in_channels * 3, False)
            want += linear(net.head.out_features, c, int8)
        assert FrameEngine(lib, net, shipped.quantizer, part, int8).weight_bytes == want
