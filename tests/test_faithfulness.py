"""The faithfulness measurements (codec/eval/faithfulness.py: DC offset, level, tone gains) on
stand-in codecs whose answer is known, and on the shipped default model."""
from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, data_root, speech, tiny_model

from codec import Codec
from codec.eval.faithfulness import (
    TONE_AMPLITUDE,
    Unquantized,
    decode_through,
    level_db,
    speech_faithfulness,
    tone,
    tone_gains,
)


class _Gain:
    """A stand-in codec: decode(encode(x)) = gain x + offset, one frame of 320 samples padded on."""

    sample_rate = 16000

    def __init__(self, gain: float, offset: float = 0.0) -> None:
        self.gain, self.offset = gain, offset

    def encode(self, wav: torch.Tensor, n_q=None) -> torch.Tensor:
        return torch.nn.functional.pad(wav, (0, 320))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.gain * codes + self.offset


def test_tone_and_level_are_what_they_say() -> None:
    x = tone(1000, 16000, 1.0)
    assert x.dtype == np.float32 and len(x) == 16000
    assert level_db(x) == pytest.approx(20 * math.log10(TONE_AMPLITUDE / math.sqrt(2)), abs=1e-3)
    assert level_db(np.zeros(10)) == -math.inf


def test_tone_gains_and_speech_measures_of_known_codecs() -> None:
    gains = tone_gains(_Gain(0.5), frequencies=(100, 1000, 4000))
    assert list(gains) == [100, 1000, 4000]
    assert all(g == pytest.approx(20 * math.log10(0.5), abs=1e-4) for g in gains.values())
    assert all(abs(g) < 1e-4 for g in tone_gains(_Gain(1.0), frequencies=(300,)).values())
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal(8000)).astype(np.float32)
    r = speech_faithfulness(x, 2.0 * x + 0.01)
    assert r["dc_error"] == pytest.approx(r["dc_out"] - r["dc_in"]) and r["dc_out"] - 2 * r["dc_in"] == pytest.approx(0.01)
    assert r["level_error_db"] == pytest.approx(20 * math.log10(2.0), abs=0.05)


def test_the_shipped_model_passes_tones_off_the_bin_grid_and_keeps_the_dc_offset() -> None:
    """The default model (its card's faithfulness section, measured on it when shipped): sines
    between the analysis bins (50 Hz apart) come back within 3 dB at 1-3 kHz; sines on the grid,
    whose spectra stand still from frame to frame, within 7 dB up to 500 Hz (-1.6 to -6.4 dB
    when shipped; above that they still come back 22 to 75 dB down: the card's limits); on
    test-other speech the DC offset moves by at most 0.002 and the level by at most 1.5 dB."""
    model = Codec.default()
    off_grid = tone_gains(model, frequencies=(1010, 1337, 2025, 3033))
    assert all(abs(g) <= 3.0 for g in off_grid.values()), off_grid
    on_grid = tone_gains(model, frequencies=(100, 200, 300, 500))
    assert all(abs(g) <= 7.0 for g in on_grid.values()), on_grid
    for index in range(4):
        x = speech(3.0, index=index)[0, 0].numpy()
        r = speech_faithfulness(x, decode_through(model, x))
        assert abs(r["dc_error"]) <= 0.002 and abs(r["level_error_db"]) <= 1.5, (index, r)


def test_the_unquantized_view_is_the_autoencoder_alone() -> None:
    """Unquantized(model) round-trips through encoder -> decoder with no stage: the same samples
    as Codec.forward(quantize=False), not those of the 4-stage codes, and the model's mode
    (training here) is left as it was."""
    torch.manual_seed(0)
    model = tiny_model("ste").train()
    x = speech(1.0)[0, 0].numpy()
    y = decode_through(Unquantized(model), x)
    assert model.training
    with torch.inference_mode():
        model.eval()
        direct = model(torch.from_numpy(x)[None, None], quantize=False).audio[0, 0].numpy()
        quantized = decode_through(model, x)
    assert y.shape == x.shape and np.array_equal(y, direct)
    assert np.abs(y - quantized).max() > 1e-3 * np.abs(quantized).max()


def test_the_faithfulness_tool_measures_chosen_tones_on_crops_and_refuses_bad_lists(tmp_path, capsys) -> None:
    """tools/faithfulness.py: --tones, --seconds and --unquantized reach the JSON (one gain per
    named frequency, dB, as tone_gains gives for the autoencoder alone; speech measured on 1 s
    crops); a bad frequency list is one error line and exit code 2."""
    sys.path.insert(0, str(REPO / "tools"))
    import faithfulness as tool

    model = tiny_model("ste").eval()
    model.save_pretrained(tmp_path / "m")
    out = tmp_path / "f.json"
    data = data_root() / "test-other"
    assert tool.main([str(tmp_path / "m"), "--data", str(data), "--limit", "2", "--seconds", "1",
                      "--tones", "1010,3033", "--unquantized", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    want = tone_gains(Unquantized(model), frequencies=(1010, 3033))
    assert got["files"] == 2 and list(got["tone_gain_db"]) == ["1010", "3033"]
    assert got["tone_gain_db"]["3033"] == pytest.approx(want[3033], abs=1e-6)
    x = speech(1.0, index=0)[0, 0].numpy()
    first = speech_faithfulness(x, decode_through(Unquantized(model), x))
    assert abs(got["max_abs_dc_error"]) >= abs(first["dc_error"]) - 1e-9
    assert "(unquantized)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as bad:
        tool.main([str(tmp_path / "m"), "--tones", "1k,2k"])
    assert bad.value.code == 2 and "not a comma-separated list" in capsys.readouterr().err
