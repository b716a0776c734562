"""ONNX export (codec/runtime/export.py, `codec export`): onnxruntime streaming one frame per
call gives the PyTorch stream's codes and audio, on both synthesis grids and on the shipped
model with test-other speech; bad input is one line."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import speech, tiny_model
from test_convnext import CHOSEN, warmed

from codec import Codec
from codec.cli import main
from codec.runtime.export import MANIFEST_FILE, ExportError, export_onnx

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from codec.runtime.onnx_stream import OnnxStream

pytestmark = pytest.mark.usefixtures("one_thread")


def torch_stream(model: Codec, wav: torch.Tensor, chunk: int = 320) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes [n_q, F], audio [T']) of a PyTorch stream of ``wav`` [1, 1, T] in ``chunk``-sample
    pieces, the decoder fed the codes one frame at a time, both streams flushed."""
    with model.streamer() as streamer:
        codes = torch.cat([streamer.encode(wav[..., i:i + chunk]) for i in range(0, wav.shape[-1], chunk)]
                          + [streamer.flush()], dim=-1)
    with streamer:
        audio = torch.cat([streamer.decode(codes[..., i:i + 1]) for i in range(codes.shape[-1])]
                          + [streamer.flush_decoder()], dim=-1)
    return codes[0], audio[0, 0]


def onnx_stream(stream: OnnxStream, x: np.ndarray, codes: np.ndarray, chunk: int = 320) -> tuple[np.ndarray, np.ndarray]:
    """(codes [n_q, F] of ``x``, audio decoded from the given ``codes``), through onnxruntime."""
    got = np.concatenate([stream.encode(x[i:i + chunk]) for i in range(0, len(x), chunk)] + [stream.flush()], axis=1)
    audio = np.concatenate([stream.decode(codes[:, i:i + 1]) for i in range(codes.shape[1])] + [stream.flush_decoder()])
    return got, audio


GRIDS = {"default": {}, "chosen": CHOSEN, "one frame, delayed": {"synthesis_delay": True},
         "four sub-frames, no delay": {"subframes": 4, "stft_window": 320, "head": "complex"}}


@pytest.mark.parametrize("grid", list(GRIDS))
def test_onnxruntime_streams_the_pytorch_streams_codes_and_audio(grid: str, tmp_path: Path) -> None:
    """Every synthesis grid (one frame per token at 50% overlap, with and without a synthesis
    delay; four sub-frames, with and without), chunks that do not line up with frames, and
    the decoder's flush."""
    model = warmed("ema", **GRIDS[grid])
    manifest = export_onnx(model, tmp_path)
    assert manifest["latency_samples"] == model.latency and manifest["n_q"] == model.num_stages
    wav = speech(1.5, index=1)
    codes, audio = torch_stream(model, wav, chunk=250)
    got, decoded = onnx_stream(OnnxStream(tmp_path), wav[0, 0].numpy(), codes.numpy(), chunk=250)
    assert got.shape == tuple(codes.shape)
    assert (got == codes.numpy()).mean() >= 0.99
    assert decoded.shape == audio.shape and len(decoded) == codes.shape[-1] * model.hop_length
    assert np.abs(decoded - audio.numpy()).max() < 1e-4
    offline = model.decode(codes[None])[0, 0]
    assert np.abs(decoded - offline.numpy()).max() < 1e-4


def test_shipped_model_exports_and_streams_test_other_speech_through_onnxruntime(tmp_path: Path) -> None:
    """The default model through `codec export`: onnxruntime gives >= 99% of the PyTorch
    stream's codes on test-other speech and the same audio from the same codes (within 1e-4;
    codes can differ only where the float32 search meets a near-tie, which the DFT as a
    matrix product, rounding differently from the FFT, can tip)."""
    out = tmp_path / "onnx"
    assert main(["export", "speech16k", str(out)]) == 0
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    model = Codec.from_pretrained("speech16k")
    assert manifest["fingerprint"] == model.fingerprint().hex() and manifest["bitrate"] == model.bitrate()
    stream = OnnxStream(out)
    for index in (0, 7):
        wav = speech(3.0, index=index)
        codes, audio = torch_stream(model, wav)
        got, decoded = onnx_stream(stream, wav[0, 0].numpy(), codes.numpy())
        stream.reset()
        assert (got == codes.numpy()).mean() >= 0.99, index
        assert np.abs(decoded - audio.numpy()).max() < 1e-4, index


def test_fewer_stages_export_codes_a_lower_bitrate(tmp_path: Path) -> None:
    model = warmed("ema", **CHOSEN)
    manifest = export_onnx(model, tmp_path, n_q=2)
    assert manifest["n_q"] == 2 and manifest["codebook_sizes"] == model.codebook_sizes[:2]
    wav = speech(1.0, index=2)
    with torch.no_grad():
        codes = model.encode(wav, 2)
        audio = model.decode(codes)[0, 0].numpy()
    offline = codes[0].numpy()
    got, decoded = onnx_stream(OnnxStream(tmp_path), wav[0, 0].numpy(), offline)
    assert got.shape == offline.shape and (got == offline).mean() >= 0.99
    assert decoded.shape == audio.shape and np.abs(decoded - audio).max() < 1e-4


def test_export_refuses_what_it_cannot_write(tmp_path: Path, capsys) -> None:
    with pytest.raises(ExportError, match="convnext"):
        export_onnx(tiny_model("ema"), tmp_path / "seanet")
    seanet = tmp_path / "seanet-model"
    tiny_model("ema").save_pretrained(seanet)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    for args, words in [([str(seanet), str(tmp_path / "x")], "convnext"),
                        (["speech16k", str(busy)], "not empty"),
                        (["speech16k", str(tmp_path / "y"), "--stages", "13"], "12 stages"),
                        (["nosuch", str(tmp_path / "z")], "no such model")]:
        assert main(["export", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0] and err[0].startswith("codec: error:"), err
    assert (busy / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "x").exists() and not any(p.name.startswith(".codec-export") for p in tmp_path.iterdir())


def test_export_force_replaces_a_folder_whole_and_never_the_current_one(tmp_path: Path, monkeypatch, capsys) -> None:
    model_dir = tmp_path / "model"
    warmed("ema").save_pretrained(model_dir)
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    assert main(["export", str(model_dir), str(out), "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["codec.json", "decoder_step.onnx", "encoder_step.onnx"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".codec-export")]
    capsys.readouterr()
    work = tmp_path / "work"
    work.mkdir()
    (work / "mine.txt").write_text("mine")
    monkeypatch.chdir(work)
    for target in (".", str(tmp_path), str(model_dir)):
        assert main(["export", str(model_dir), target, "--force"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "will not replace" in err[0], err
    assert (work / "mine.txt").read_text() == "mine" and (model_dir / "config.json").is_file()
