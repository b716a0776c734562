"""The streamer (codec/runtime/streamer.py): one object per precision and backend, a snapshot of
the weights made once. Its precisions keep the bounds the old mode flags had (the files that
test each in depth: test_streaming.py (exact), test_frame_linear.py (int8),
test_frame_engine.py (native)); here: what it is made of, the snapshot, the backends against
each other, and the model left alone."""
from __future__ import annotations

import pytest
import torch
from conftest import speech, tiny_model
from test_convnext import warmed

from codec.nn.frame_linear import FrameLinear, Int8Linear
from codec.runtime import native
from codec.runtime.native.engine import FrameEngine
from codec.runtime.streamer import Streamer
from codec.train.config import TrainConfig
from codec.train.optim import build_optimizer

pytestmark = pytest.mark.usefixtures("one_thread")
HOP = 320
needs_engine = pytest.mark.skipif(native.load() is None, reason="the engine was not built (no C compiler)")


def streamed(streamer: Streamer, wav: torch.Tensor, chunk: int = HOP) -> torch.Tensor:
    """Codes int64 [1, n, F] of ``wav`` [1, 1, T] streamed in ``chunk``-sample pieces and flushed."""
    with streamer:
        parts = [streamer.encode(wav[..., i : i + chunk]) for i in range(0, wav.shape[-1], chunk)]
        return torch.cat(parts + [streamer.flush()], -1)


def test_precisions_prepare_their_weights_once_and_leave_the_model_alone() -> None:
    model = warmed("ema")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fp32, int8, exact = (model.streamer(p) for p in ("fp32", "int8", "exact"))
    assert isinstance(fp32.snapshot.encoder.inp, FrameLinear) and not isinstance(fp32.snapshot.encoder.inp, Int8Linear)
    assert isinstance(int8.snapshot.decoder.head, Int8Linear)
    assert exact.snapshot.encoder.inp.weight.dtype == torch.float64  # the whole encoder in float64
    assert type(exact.snapshot.decoder.head) is FrameLinear  # the decoder as fp32
    assert type(model.encoder.inp) is torch.nn.Linear  # the model's own layers untouched
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not any(hasattr(model, flag) for flag in ("exact", "int8", "native", "streaming"))
    with pytest.raises(ValueError, match="precision must be one of fp32, int8, exact"):
        model.streamer("fp16")
    with pytest.raises(ValueError, match="backend must be one of native, torch"):
        model.streamer(backend="onnx")


def test_a_streamer_is_a_snapshot_of_the_weights() -> None:
    """A streamer made before a weight change keeps encoding and decoding with the old weights;
    one made after sees the new ones (offline and streamed alike)."""
    model = tiny_model("ste").eval()
    wav = speech(1.0)
    before = model.streamer()
    codes = before.encode_offline(wav)
    audio = before.decode_offline(codes)
    with torch.no_grad():
        model.decoder.net[-1].conv.bias.add_(0.25)  # the last conv: every sample moves
        for stage in model.quantizer.stages:
            stage.quantizer.codebook().mul_(-1.0)  # every codeword: the search changes
    assert torch.equal(before.encode_offline(wav), codes)
    assert torch.equal(before.decode_offline(codes), audio)
    assert torch.equal(streamed(before, wav), codes)
    after = model.streamer()
    assert torch.equal(after.encode_offline(wav), model.encode(wav))
    assert not torch.equal(after.encode_offline(wav), codes)
    assert torch.equal(after.decode_offline(codes), model.decode(codes))
    assert (after.decode_offline(codes) - audio).abs().min().item() > 0.1


def test_a_streamer_made_after_fused_adamw_steps_sees_them() -> None:
    """No version counters: the fused optimizer writes the weights in place without bumping
    them, and a streamer made after its steps still runs the new weights (the model's own
    float32 encode is the reference, bit for bit)."""
    model = tiny_model("ste")
    opt, _ = build_optimizer(model, TrainConfig(lr=1e-2, warmup_steps=1, total_steps=10))
    wav = speech(0.5)
    start = model.eval().streamer().encode_offline(wav)
    model.train()
    for _ in range(3):
        opt.zero_grad()
        out = model(wav)
        ((out.audio - wav).pow(2).mean() + out.quantizer_loss).backward()
        opt.step()
    model.eval()
    again = model.streamer()
    assert torch.equal(again.encode_offline(wav), model.encode(wav))
    codes = model.encode(wav)
    assert torch.equal(again.decode_offline(codes), model.decode(codes))
    assert not torch.equal(again.encode_offline(wav), start)


@needs_engine
def test_backends_agree() -> None:
    """Exact: the encoder runs in PyTorch on both backends, codes equal bit for bit and equal
    the offline ones; fp32: the C engine's sums in another order flip near-ties only (>= 99%
    equal, the first stage exactly); decoded audio within float rounding."""
    model = warmed("ema")
    wav = speech(2.0, index=2)
    a, b = model.streamer("exact", "native"), model.streamer("exact", "torch")
    assert a.engine("encoder") is None and isinstance(a.engine("decoder"), FrameEngine)
    assert b.engine("encoder") is None and b.engine("decoder") is None
    codes = streamed(a, wav)
    assert torch.equal(codes, streamed(b, wav)) and torch.equal(codes, a.encode_offline(wav))
    fast_native, fast_torch = streamed(model.streamer(), wav), streamed(model.streamer(backend="torch"), wav)
    assert (fast_native == fast_torch).float().mean().item() >= 0.99
    assert torch.equal(fast_native[:, 0], fast_torch[:, 0])
    audio = []
    for streamer in (a, b):
        with streamer:
            audio.append(torch.cat([streamer.decode(codes[..., t : t + 1]) for t in range(codes.shape[-1])]
                                   + [streamer.flush_decoder()], -1))
    assert audio[0].shape == audio[1].shape == (1, 1, codes.shape[-1] * HOP)
    assert (audio[0] - audio[1]).abs().max().item() <= 1e-5 * max(1.0, audio[1].abs().max().item())


def test_streams_restart_and_offline_calls_leave_a_stream_alone() -> None:
    """``reset()`` and a ``with`` block start fresh streams; an offline call in the middle of a
    stream does not disturb it."""
    streamer = tiny_model("ema").eval().streamer("exact")
    wav = speech(1.0)
    whole = streamer.encode_offline(wav)
    streamer.encode(wav[..., :1000])
    streamer.reset()
    first = streamer.encode(wav[..., :8000])
    assert torch.equal(streamer.encode_offline(wav), whole)  # offline, mid-stream
    rest = torch.cat([streamer.encode(wav[..., 8000:]), streamer.flush()], -1)
    assert torch.equal(torch.cat([first, rest], -1), whole)
    assert streamer.flush().shape == (1, streamer.model.num_stages, 0)  # nothing pending


def test_encode_batch_is_the_offline_encode_item_by_item() -> None:
    streamer = tiny_model("ema").eval().streamer("exact")
    wavs = [speech(0.4 + 0.3 * i, index=i)[0, 0] for i in range(3)]
    for wav, codes in zip(wavs, streamer.encode_batch(wavs, n_q=2), strict=True):
        assert torch.equal(codes, streamer.encode_offline(wav[None, None], n_q=2)[0])
