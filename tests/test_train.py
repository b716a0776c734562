"""Fast unit tests of the training pieces (issue 4): recipe overrides, data sampling, losses,
schedule, checkpoint bookkeeping, the manifest tool, and the `codec train` error paths."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from conftest import REPO, data_root, speech, tiny_model

from codec import Codec
from codec.cli import main
from codec.nn.stft import SynthesisSpectra
from codec.recipe import ConfigError, deep_merge, load_recipe
from codec.train.checkpoint import STATE_FILE, latest_checkpoint, remove_partial
from codec.train.config import load_training_recipe, parse_overrides
from codec.train.data import (
    CropBatches,
    DataError,
    librispeech_utterances,
    read_manifest,
    utterances_from,
    validation_set,
)
from codec.train.losses import TERM_NAMES, CodecLoss, LossConfig, multi_resolution_stft
from codec.train.optim import build_optimizer, lr_factor

TINY = REPO / "recipes" / "tiny.yaml"


# ----- recipes and --set --------------------------------------------------------------------------
def test_overrides_default_to_train_and_parse_yaml() -> None:
    got = parse_overrides(["lr=1e-3", "data.crop_seconds=0.5", "model.quantizer.kind=ema", "betas=[0.5, 0.9]"])
    assert got == {"train": {"lr": 1e-3, "data": {"crop_seconds": 0.5}, "betas": [0.5, 0.9]},
                   "model": {"quantizer": {"kind": "ema"}}}


@pytest.mark.parametrize("bad", ["lr", "=3", "a..b=1", "lr=[1,"])
def test_bad_override_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError):
        parse_overrides([bad])


def test_every_recipe_has_a_valid_train_section() -> None:
    for path in sorted((REPO / "recipes").glob("*.yaml")):
        recipe, _, cfg = load_training_recipe(path)
        assert "train" in recipe, path
        assert cfg.out_dir == f"exp/{path.stem}"
    _, _, tiny = load_training_recipe(TINY, ["total_steps=7"])
    assert tiny.total_steps == 7 and tiny.data.crop_seconds == 0.5


def test_every_trial_recipe_is_valid_and_its_schedule_lies_within_its_steps() -> None:
    """egs/librispeech/trials/*.yaml and the default recipe: each loads, and every schedule point, warm-up and average
    start falls within its run (a trial whose switch came after its last step would silently
    test nothing)."""
    from codec.train.schedule import parse_schedules

    paths = sorted((REPO / "egs" / "librispeech" / "trials").glob("*.yaml"))
    assert len(paths) >= 6
    paths.append(REPO / "recipes" / "speech16k.yaml")  # the default recipe is such a schedule too
    for path in paths:
        _, _, cfg = load_training_recipe(path)
        steps = [s for sched in parse_schedules(cfg.schedules).values() for s in sched.steps]
        steps += [cfg.quantizer_warmup_steps, cfg.weight_average_start]
        assert all(0 <= s <= cfg.total_steps for s in steps), path


def test_the_default_recipe_trains_as_the_trial_run_its_shipped_weights_come_from() -> None:
    """recipes/speech16k.yaml (flat) continues egs/librispeech/trials/schedule_180.yaml (an
    `extends` chain, the learn-faster trial whose run the default model continued): for every
    step the trial ran, the two give the same lr to every part and the same value to every
    schedule; every other training setting (the output folder and the run's length aside) and
    everything the networks and the stack are built from (fields only another architecture or
    another quantizer kind reads aside) are equal. So the trial's run is the first 16,500 steps
    of the default recipe's."""
    from codec.train.loop import network_fields
    from codec.train.schedule import LR_PARTS, TARGETS, Schedule, parse_schedules

    _, flat_model, flat = load_training_recipe(REPO / "recipes" / "speech16k.yaml")
    _, trial_model, trial = load_training_recipe(REPO / "egs" / "librispeech" / "trials" / "schedule_180.yaml")
    assert flat.total_steps > trial.total_steps
    steps = range(trial.total_steps)
    schedules = [parse_schedules(cfg.schedules) for cfg in (flat, trial)]
    defaults = {"quantizer.dropout": trial_model.quantizer.dropout, "data.tone_fraction": trial.data.tone_fraction,
                "data.rumble_fraction": trial.data.rumble_fraction}
    for target in TARGETS:
        if target.startswith("loss."):
            default = getattr(trial.loss, target[5:])
        else:
            default = defaults.get(target, 1.0)
        values = [[sched.get(target, Schedule.constant(default))(int(k)) for k in steps] for sched in schedules]
        assert values[0] == values[1], target
    for part in LR_PARTS:
        lrs = [[lr_factor(int(k), cfg.warmup_steps, cfg.cosine_end, cfg.min_lr_ratio)
                * sched.get(f"lr.{part}", Schedule.constant(1.0))(int(k)) for k in steps]
               for cfg, sched in zip((flat, trial), schedules)]
        assert lrs[0] == lrs[1], part
    flat_train, trial_train = dataclasses.asdict(flat), dataclasses.asdict(trial)
    for settings in (flat_train, trial_train):
        for key in ("out_dir", "total_steps", "lr_decay_steps", "schedules"):
            settings.pop(key)
        for group in ("data", "loss"):  # constants a schedule overrides are never read
            for key in {**flat.schedules.get(group, {}), **trial.schedules.get(group, {})}:
                settings[group].pop(key, None)
    assert flat_train == trial_train
    assert network_fields(flat_model) == network_fields(trial_model)
    fq, tq = flat_model.quantizer, trial_model.quantizer
    assert fq.kind == tq.kind == "ema"
    for key in ("n_stages", "codebook_size", "codebook_dim", "dropout", "stats_window", "stages"):
        assert getattr(fq, key) == getattr(tq, key), key
    assert fq.options["ema"] == tq.options["ema"]


def test_unknown_train_key_is_rejected() -> None:
    with pytest.raises(ConfigError, match="lrr"):
        load_training_recipe(TINY, ["lrr=1"])


# ----- data ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def train_utts():
    return librispeech_utterances(data_root(), ["train-clean-100"])


def test_batches_are_a_function_of_seed_step_and_rank(train_utts) -> None:
    a = CropBatches(train_utts, 16000, 0.5, 3, seed=1, rank=0, world=2)
    b = CropBatches(train_utts, 16000, 0.5, 3, seed=1, rank=0, world=2)
    other = CropBatches(train_utts, 16000, 0.5, 3, seed=1, rank=1, world=2)
    x = a[5]
    assert x["audio"].shape == (3, 1, 8000) and x["audio"].abs().max() > 0
    assert torch.equal(x["audio"], b[5]["audio"])  # a fresh object (a resumed run) repeats it
    assert not set(x["index"].tolist()) & set(other[5]["index"].tolist())
    # one epoch over both ranks visits every utterance once
    n = len(train_utts)
    seen = [i for k in range(n // 6) for d in (a, other) for i in d.indices(k)]
    assert len(seen) == len(set(seen))


def test_augmentation_adds_tones_and_gains_and_is_off_by_default(train_utts) -> None:
    """Off (the default): the crops of before, bit for bit (augment draws nothing). On: the
    same crops scaled within gain_db, never past 0.99, and with tone_fraction 1 every crop is
    sines alone or sines added to its speech (the difference is a few spectral lines); a fresh
    object repeats it all (resume)."""
    import numpy as np

    from codec.train.data import augment, fit_length, load_audio

    plain = CropBatches(train_utts, 16000, 0.5, 8, seed=3)
    x = plain[2]
    idx = x["index"].tolist()
    for i, j in enumerate(idx):  # the crop offset is still the generator's first draw
        u01 = float(np.random.default_rng([3, 2, 0, i]).random())
        want = fit_length(load_audio(train_utts[j].path, 16000, 0.5, u01), 8000)
        assert np.array_equal(x["audio"][i, 0].numpy(), want)
    loud = CropBatches(train_utts, 16000, 0.5, 8, seed=3, gain_db=(6.0, 12.0))[2]["audio"]
    ratio = (loud.flatten(1).norm(dim=1) / x["audio"].flatten(1).norm(dim=1)).numpy()
    peaks = loud.flatten(1).abs().amax(1).numpy()
    assert all((1.99 <= r <= 3.99) or abs(p - 0.99) < 1e-6 for r, p in zip(ratio, peaks)) and peaks.max() <= 0.99 + 1e-6
    tones = CropBatches(train_utts, 16000, 0.5, 8, seed=3, tone_fraction=1.0)
    t = tones[2]["audio"]
    assert torch.equal(t, CropBatches(train_utts, 16000, 0.5, 8, seed=3, tone_fraction=1.0)[2]["audio"])

    def sines_share(a: torch.Tensor) -> float:
        """The energy share of the 27 largest bins: ~1 for up to three Hann-windowed sines."""
        spec = torch.fft.rfft(a.double() * torch.hann_window(a.shape[-1], dtype=torch.float64)).abs().square()
        return float(spec.topk(27).values.sum() / spec.sum())
    pure = [sines_share(t[i, 0]) > 0.99 for i in range(8)]
    added = [sines_share(t[i, 0] - x["audio"][i, 0]) > 0.99 for i in range(8)]
    assert all(p or a for p, a in zip(pure, added)) and 0 < sum(pure) < 8  # tones alone, or added to the speech
    assert not any(sines_share(x["audio"][i, 0]) > 0.99 for i in range(8))
    loud_tones = CropBatches(train_utts, 16000, 0.5, 8, seed=3, tone_fraction=1.0)[5]["audio"]
    assert float(loud_tones.abs().max()) <= 0.99 + 1e-6  # tones alone never clip either
    rng = np.random.default_rng(0)
    speech_crop = x["audio"][0, 0].numpy()
    assert augment(speech_crop, rng, 16000) is speech_crop and rng.random() == np.random.default_rng(0).random()


def test_device_crops_are_the_crops_of_crop_batches(train_utts) -> None:
    """DeviceCrops (the training audio held in one tensor, crops cut there: the GPU path) draws
    what CropBatches draws: the same crops, tones and gains, for short utterances too (padded
    with zeros); tones up to float rounding of the sines."""
    from codec.train.data import DeviceCrops

    utts = train_utts[:12]
    for kw in ({}, {"gain_db": (-6.0, 6.0), "tone_fraction": 0.5, "tone_grid_hz": 50.0}):
        files = CropBatches(utts, 16000, 3.0, 5, seed=4, **kw)  # 3 s: longer than some utterances
        held = DeviceCrops(utts, 16000, 3.0, 5, seed=4, **kw)
        for k in (0, 3, 7):
            a, b = files[k], held[k]
            assert torch.equal(a["index"], b["index"]) and a["audio"].shape == b["audio"].shape == (5, 1, 48000)
            torch.testing.assert_close(a["audio"], b["audio"], rtol=0, atol=1e-6)
    assert any((files[k]["audio"][:, 0, -100:] == 0).all(dim=1).any() for k in range(8))  # some were padded


def test_augmentation_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="gain_db"):
        load_training_recipe(TINY, ["data.gain_db=[3, -3]"])
    with pytest.raises(ConfigError, match="tone_fraction"):
        load_training_recipe(TINY, ["data.tone_fraction=1.5"])
    with pytest.raises(ConfigError, match="tone_grid_hz"):
        load_training_recipe(TINY, ["data.tone_grid_hz=-50"])
    with pytest.raises(ConfigError, match="rumble_fraction"):
        load_training_recipe(TINY, ["data.rumble_fraction=-0.1"])


def test_mixed_precision_takes_an_unquoted_no_from_the_command_line() -> None:
    """`--set mixed_precision=no` (YAML reads `no` as false) means fp32, not an error; other
    values are still checked."""
    for value, want in (("no", "no"), ("'no'", "no"), ("bf16", "bf16"), ("auto", "auto")):
        assert load_training_recipe(TINY, [f"mixed_precision={value}"])[2].mixed_precision == want
    with pytest.raises(ConfigError, match="mixed_precision"):
        load_training_recipe(TINY, ["mixed_precision=yes"])


def test_tone_grid_puts_half_the_sines_on_multiples_of_it() -> None:
    """tone_grid_hz 50: a crop whose every sine landed on the grid repeats every 320 samples
    (16000 / 50) exactly; expected share of such crops (1 to 3 sines, each snapped with
    probability 1/2) (1/2 + 1/4 + 1/8) / 3 = 0.29. Without the grid no crop repeats, and the
    draws of a crop without tones are unchanged."""
    import numpy as np

    from codec.train.data import augment

    def periodic_share(grid: float) -> float:
        rng = np.random.default_rng(7)
        crops = [augment(np.zeros(16000, np.float32), rng, 16000, tone_fraction=1.0, tone_grid_hz=grid)
                 for _ in range(300)]
        return float(np.mean([np.abs(c[320:] - c[:-320]).max() < 1e-4 * np.abs(c).max() for c in crops]))
    assert 0.2 < periodic_share(50.0) < 0.4
    assert periodic_share(0.0) == 0.0
    rng = np.random.default_rng(0)
    crop = np.ones(100, np.float32)
    assert augment(crop, rng, 16000, tone_grid_hz=50.0) is crop and rng.random() == np.random.default_rng(0).random()


def test_rumble_adds_only_content_below_50_hz_and_a_dc_offset(train_utts) -> None:
    """rumble_fraction 1: every crop is its speech plus a signal whose spectrum lies below the
    analysis's first bin (50 Hz) and whose mean is the drawn offset (|offset| <= 0.01, not all
    zero); the speech draws (crop offsets, tones, gains) are those of a run without it, so a
    rumble entering by schedule changes nothing else; rumble_fraction 0.3 rumbles about 30%."""
    import numpy as np

    from codec.train.data import draw_augmentation

    plain = CropBatches(train_utts, 16000, 1.0, 8, seed=5, tone_fraction=0.5, tone_grid_hz=50.0)
    rumbled = CropBatches(train_utts, 16000, 1.0, 8, seed=5, tone_fraction=0.5, tone_grid_hz=50.0, rumble_fraction=1.0)
    for k in (0, 4):
        a, b = plain[k]["audio"][:, 0].double(), rumbled[k]["audio"][:, 0].double()
        d = (b - a).numpy()
        assert not np.any(np.abs(b.numpy()) > 0.99 + 1e-6)
        scaled = np.abs(b.numpy()).max(axis=1) >= 0.99 - 1e-6  # peak-limited crops are scaled as a whole
        for i in np.flatnonzero(~scaled):
            spec = np.abs(np.fft.rfft(d[i] * np.hanning(16000))) ** 2  # 1 Hz bins over 1 s
            assert spec[60:].sum() < 1e-6 * spec.sum(), i
        assert plain.draws(k)[0] == rumbled.draws(k)[0] and plain.draws(k)[1] == rumbled.draws(k)[1]
    offsets = [a.offset for k in range(20) for a in rumbled.draws(k)[2]]
    assert max(abs(o) for o in offsets) <= 0.01 and np.std(offsets) > 0.003
    rng = np.random.default_rng(1)
    share = np.mean([len(draw_augmentation(rng, 16000, rumble_fraction=0.3).rumble) > 0 for _ in range(1000)])
    assert 0.25 < share < 0.35


def test_validation_speakers_are_not_training_speakers(train_utts) -> None:
    valid_utts = librispeech_utterances(data_root(), ["test-other"])
    speakers = {u.speaker for u in train_utts}
    valid = validation_set(valid_utts, speakers, 4, 16000, 1.0)
    assert len(valid) == 4 and all(wav.shape == (1, 1, 16000) for _, wav in valid)
    assert len({i.split("-")[0] for i, _ in valid}) == 4  # round-robin: four different speakers
    assert not {i.split("-")[0] for i, _ in valid} & speakers
    with pytest.raises(DataError):
        validation_set(valid_utts, {u.speaker for u in valid_utts}, 4, 16000, 1.0)


def test_manifest_tool_round_trip(tmp_path: Path) -> None:
    import tools.prepare_librispeech as prep

    assert prep.main(["--root", str(data_root()), "--subsets", "test-other", "--out", str(tmp_path), "-q"]) == 0
    utts = read_manifest(tmp_path / "test-other.tsv")

    def resolved(items: list) -> list:  # the data folder may be reached through a symlink
        return [dataclasses.replace(u, path=str(Path(u.path).resolve())) for u in items]

    assert resolved(utts) == resolved(librispeech_utterances(data_root(), ["test-other"]))
    assert utterances_from(str(tmp_path / "test-other.tsv"), Path("/nonexistent"), []) == utts
    assert prep.main(["--root", str(tmp_path / "missing"), "-q"]) == 2


# ----- losses and schedule ------------------------------------------------------------------------
def test_loss_is_one_weighted_sum_of_named_terms() -> None:
    x = speech(0.5)
    loss = CodecLoss(16000, LossConfig(stft=1.0, mel=2.0, l1=0.5, quantizer=3.0))
    zero, parts = loss(x, x)
    assert float(zero) == 0 and set(parts) == {"stft", "mel", "l1"}  # no quantizer loss given
    q = torch.tensor(0.25)
    total, parts = loss(0.5 * x, x, q)
    assert list(parts) == ["stft", "mel", "l1", "quantizer"] == loss.reported()
    assert float(total) == pytest.approx(float(parts["stft"] + 2 * parts["mel"] + 0.5 * parts["l1"] + 3 * q),
                                         rel=1e-5)
    assert all(float(v) > 0 for v in parts.values())
    off = CodecLoss(16000, LossConfig(mel=0.0, quantizer=0.0))
    total, parts = off(0.5 * x, x, q)
    assert set(parts) == {"stft", "quantizer"} and float(total) == pytest.approx(float(parts["stft"]))
    # the recipe's train.loss section is the one place that names the terms and their defaults
    assert set(LossConfig().weights()) == set(TERM_NAMES)


def test_compressed_complex_loss_sees_phase_where_magnitudes_do_not() -> None:
    """The compressed complex term is zero only for the same signal; a polarity flip (same
    magnitudes, phase + pi) costs it 4 mean |T_c|^2 and the magnitude terms nothing."""
    from codec.train.losses import CompressedComplexLoss, MultiScaleMelLoss

    x = speech(0.5)
    loss = CompressedComplexLoss([[320, 80], [512, 128]])
    assert float(loss(x, x)) < 1e-12
    flipped = float(loss(-x, x))
    expected = 0.0
    for n, hop in loss.resolutions:
        t = loss.compressed(torch.stft(x[:, 0], n, hop, window=torch.hann_window(n), return_complex=True))
        expected += 4 * float(t.abs().square().mean()) / len(loss.resolutions)
    assert flipped == pytest.approx(expected, rel=1e-4)
    mel = MultiScaleMelLoss(16000, [256, 1024], [40, 80])
    assert float(mel(-x, x)) < 1e-6  # magnitude terms cannot see it
    y = (0.9 * x).requires_grad_(True)
    loss(y, x).backward()
    assert y.grad.isfinite().all() and float(y.grad.abs().sum()) > 0
    silent = torch.zeros(1, 1, 8000, requires_grad=True)  # |S| = 0 everywhere: finite gradient
    loss(silent, x).backward()
    assert silent.grad.isfinite().all()


def test_si_sdr_loss_is_scale_invariant_and_prefers_the_clean_signal() -> None:
    from codec.train.losses import si_sdr_loss

    x = speech(0.5)
    noisy = x + 0.05 * torch.randn_like(x)
    assert float(si_sdr_loss(3.0 * noisy, x)) == pytest.approx(float(si_sdr_loss(noisy, x)), abs=1e-3)
    assert float(si_sdr_loss(x, x)) < -60 < float(si_sdr_loss(noisy, x))
    both = CodecLoss(16000, LossConfig(stft=0.0, mel=0.0, complex=1.0, sisdr=0.5, quantizer=0.0))
    total, parts = both(noisy, x)
    assert set(parts) == {"complex", "sisdr"}
    assert float(total) == pytest.approx(float(parts["complex"] + 0.5 * parts["sisdr"]), rel=1e-5)


def test_dc_and_level_terms_measure_offset_and_level_per_crop() -> None:
    from codec.train.losses import dc_error, level_error

    x = torch.cat([speech(0.5), 0.3 * speech(0.5)])  # two crops of different levels
    assert float(dc_error(x + 0.01, x)) == pytest.approx(0.01, abs=1e-6)
    assert float(dc_error(x, x)) == 0 and float(level_error(x, x)) == 0
    # per crop: half the first one's amplitude and double the second's is ln 2 each way
    scaled = x * torch.tensor([0.5, 2.0])[:, None, None]
    assert float(level_error(scaled, x)) == pytest.approx(math.log(2), rel=1e-3)  # up to the floor
    # a crop decoded as silence costs its level above the -80 dBFS floor, whatever its spectrum
    tone = 0.3 * torch.sin(2 * math.pi * 1000 * torch.arange(8000) / 16000)[None, None]
    assert float(level_error(torch.zeros_like(tone), tone)) == pytest.approx(math.log(0.3 / math.sqrt(2) / 1e-4), rel=1e-4)
    quiet = (1e-6 * tone).requires_grad_()  # -127 dBFS: still pushed up, not floored flat
    level_error(quiet, tone).backward()
    assert float((quiet.grad * tone).sum()) < 0
    parts = CodecLoss(16000, LossConfig(stft=0.0, mel=0.0, dc=10.0, level=1.0, quantizer=0.0))(x + 0.01, x)
    assert set(parts[1]) == {"dc", "level"}
    assert float(parts[0]) == pytest.approx(10 * float(parts[1]["dc"]) + float(parts[1]["level"]), rel=1e-5)


def test_ema_stage_loaded_without_its_statistics_trains_on_without_restarting_its_codebook() -> None:
    """A shipped model leaves the EMA statistics out (they load as zeros); training on from it
    must not take every code for dead: the first step gives each code the mean count."""
    from codec.quant.kinds.ema import EMAQuantizer

    torch.manual_seed(0)
    q = EMAQuantizer(8, 64, dead_threshold=0.1, dead_fraction=0.1).train()
    q(torch.randn(256, 8))  # k-means init
    book = q.embed.clone()
    q.cluster_size.zero_()
    q.embed_sum.zero_()
    q(torch.randn(256, 8))
    assert q.last_restarts == 0
    assert float(q.cluster_size.sum()) == pytest.approx(256.0, rel=1e-4)  # N's total: the rows per step
    assert float((q.embed - book).norm(dim=1).max()) < 0.1 * float(book.norm(dim=1).mean())


def test_init_from_copies_a_saved_model_into_a_fresh_run(tmp_path: Path) -> None:
    from codec.train.loop import initialise_from

    src = tiny_model("ema", seed=1)
    src.save_pretrained(tmp_path / "src", training_state=False)
    same = tiny_model("ema", seed=2)
    assert initialise_from(same, str(tmp_path / "src")) == ["encoder", "decoder", "quantizer"]
    for k, v in src.state_dict().items():
        if k not in src.training_state_keys():
            assert torch.equal(same.state_dict()[k], v), k
    other = tiny_model("simvq", seed=2)  # another quantizer: only the encoder and decoder come over
    fresh = {k: v.clone() for k, v in other.quantizer.state_dict().items()}
    assert initialise_from(other, str(tmp_path / "src")) == ["encoder", "decoder"]
    assert torch.equal(other.encoder.state_dict()[next(iter(src.encoder.state_dict()))],
                       next(iter(src.encoder.state_dict().values())))
    assert all(torch.equal(v, fresh[k]) for k, v in other.quantizer.state_dict().items())
    fresh_ema = tiny_model("ema", seed=3)  # train.init_parts without the quantizer: even the same kind starts afresh
    book = fresh_ema.quantizer.stages[0].quantizer.embed.clone()
    assert initialise_from(fresh_ema, str(tmp_path / "src"), ["encoder", "decoder"]) == ["encoder", "decoder"]
    assert torch.equal(fresh_ema.quantizer.stages[0].quantizer.embed, book)
    with pytest.raises(ConfigError, match="init_parts"):
        load_training_recipe(TINY, ["init_parts=[encoder, codebook]"])
    wider = Codec.from_config(deep_merge(load_recipe(TINY), {"model": {"channels": 16}}))
    with pytest.raises(ConfigError, match="channels"):
        initialise_from(wider, str(tmp_path / "src"))
    with pytest.raises(ConfigError, match="init_from"):
        initialise_from(same, str(tmp_path / "nothing"))
    # a field only the other architecture reads (SEANet's channels in a ConvNeXt model) does
    # not block the copy; one the architecture reads does
    convnext = REPO / "recipes" / "tiny_convnext.yaml"
    Codec.from_config(convnext).save_pretrained(tmp_path / "cnx", training_state=False)
    unread = Codec.from_config(deep_merge(load_recipe(convnext), {"model": {"channels": 7}}))
    assert initialise_from(unread, str(tmp_path / "cnx")) == ["encoder", "decoder", "quantizer"]
    read = Codec.from_config(deep_merge(load_recipe(convnext), {"model": {"mlp_ratio": 3}}))
    with pytest.raises(ConfigError, match="mlp_ratio"):
        initialise_from(read, str(tmp_path / "cnx"))


def test_spectrum_term_compares_the_decoders_own_spectra_with_those_that_rebuild_the_target() -> None:
    """Codec.forward(spectra=True) hands the synthesis spectra and their exact targets to the
    loss: the term is zero when the head outputs the target's spectra, grows with a polarity
    flip (magnitudes equal), reaches the decoder's parameters, and is left out (not reported)
    when no spectra are passed, as in validation through a bitstream."""
    torch.manual_seed(0)
    recipe = deep_merge(load_recipe(REPO / "recipes" / "tiny_convnext.yaml"),
                        {"model": {"subframes": 4, "stft_window": 320, "head": "complex", "synthesis_delay": True}})
    codec = Codec.from_config(recipe).train()
    x = speech(0.5)
    out = codec(x, quantize=False, spectra=True)
    spec, target = out.spectra.predicted, out.spectra.target
    assert spec.shape == target.shape == (1, 4 * x.shape[-1] // 320, 161) and not target.requires_grad
    loss = CodecLoss(16000, LossConfig(stft=0.0, mel=0.0, spectrum=2.0, quantizer=0.0))
    assert loss.wants_spectra and loss.reported(False) == ["spectrum"] and loss.reported(False, False) == []
    grid = codec.decoder.istft
    assert float(loss(x, x, None, SynthesisSpectra(target, target, x, grid))[0]) < 1e-12
    flipped = float(loss(x, x, None, SynthesisSpectra(-target, target, x, grid))[1]["spectrum"])
    assert flipped == pytest.approx(4 * float(loss.complex.compressed(target).abs().square().mean()), rel=1e-4)
    total, parts = loss(out.audio, x, None, out.spectra)
    assert float(total) == pytest.approx(2 * float(parts["spectrum"])) and float(total) > 0
    total.backward()
    assert float(codec.decoder.head.weight.grad.abs().sum()) > 0
    assert float(codec.encoder.inp.weight.grad.abs().sum()) > 0
    assert loss(out.audio, x)[1] == {}  # no spectra: no term
    assert Codec.from_config(recipe)(x, spectra=False).spectra is None


def test_phase_losses_are_anti_wrapped_and_see_only_phase() -> None:
    """Zero for equal phases and for phases a whole turn apart; a constant offset d costs the
    instantaneous phase term |d| and the two difference terms nothing; the magnitudes do not
    matter; gradients reach the predicted spectrum."""
    from codec.train.losses import anti_wrapped, phase_loss

    assert torch.allclose(anti_wrapped(torch.tensor([0.0, 2 * math.pi, -4 * math.pi + 0.5, math.pi - 0.1])),
                          torch.tensor([0.0, 0.0, 0.5, math.pi - 0.1]), atol=1e-6)
    torch.manual_seed(0)
    target = torch.polar(torch.rand(2, 12, 161) + 0.1, (torch.rand(2, 12, 161) - 0.5) * 2 * math.pi)
    assert float(phase_loss(target, target)) < 1e-6
    assert float(phase_loss(target * torch.polar(torch.tensor(1.0), torch.tensor(2 * math.pi)), target)) < 1e-5
    assert float(phase_loss(3.0 * target, target)) < 1e-6  # magnitudes are not its business
    shifted = target * torch.polar(torch.tensor(1.0), torch.tensor(0.7))
    assert float(phase_loss(shifted, target)) == pytest.approx(0.7, abs=1e-4)
    noisy = (target * torch.polar(torch.tensor(1.0), 0.3 * torch.randn(2, 12, 161))).requires_grad_(True)
    value = phase_loss(noisy, target)
    assert float(value) > 0.3
    value.backward()
    assert noisy.grad.isfinite().all() and float(noisy.grad.abs().sum()) > 0


def test_consistency_is_zero_for_spectra_some_waveform_has() -> None:
    """The STFT-consistency term compares the head's spectra with its waveform's re-analysis:
    zero for the spectra of a real signal (target_spectra), positive for spectra no waveform
    has (random phases), and the decoder's gradient flows through both sides."""
    torch.manual_seed(0)
    recipe = deep_merge(load_recipe(REPO / "recipes" / "tiny_convnext.yaml"),
                        {"model": {"subframes": 4, "stft_window": 320, "head": "logmag_atan2", "synthesis_delay": True}})
    codec = Codec.from_config(recipe).train()
    grid = codec.decoder.istft
    x = speech(0.5)
    loss = CodecLoss(16000, LossConfig(stft=0.0, mel=0.0, consistency=1.0, phase=0.5, quantizer=0.0))
    assert loss.reported(False) == ["phase", "consistency"]
    real = grid.target_spectra(x)
    consistent = SynthesisSpectra(real, real, grid(None, real), grid)
    # (not exactly zero: the synthesis's last window - sub hop samples wait for frames after the
    # signal, so the re-analysis of the last frames sees them incomplete)
    assert float(loss(x, x, None, consistent)[1]["consistency"]) < 1e-3 * float(real.abs().square().mean())
    scrambled = real * torch.polar(torch.ones(()), 2 * math.pi * torch.rand(real.shape))
    inconsistent = SynthesisSpectra(scrambled, real, grid(None, scrambled), grid)
    parts = loss(x, x, None, inconsistent)[1]
    assert float(parts["consistency"]) > 0.1 * float(real.abs().square().mean()) and float(parts["phase"]) > 1.0
    out = codec(x, quantize=False, spectra=True)
    total, parts = loss(out.audio, x, None, out.spectra)
    total.backward()
    assert set(parts) == {"phase", "consistency"} and float(codec.decoder.head.weight.grad.abs().sum()) > 0


def test_spectrum_term_needs_a_decoder_with_spectra(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"extends: {REPO / 'recipes' / 'tiny.yaml'}\ntrain: {{loss: {{spectrum: 1.0}}}}\n")
    with pytest.raises(ConfigError, match="spectrum needs a decoder"):
        load_training_recipe(recipe)


def test_stft_term_is_auralosss_multi_resolution_loss_value_and_gradient() -> None:
    """The phase-free resolutions (no torch.angle) give auraloss's own loss and gradient."""
    import auraloss

    torch.manual_seed(0)
    target = 0.1 * torch.randn(2, 1, 8000)
    ours = (0.1 * torch.randn(2, 1, 8000)).requires_grad_(True)
    theirs = ours.detach().clone().requires_grad_(True)
    reference = auraloss.freq.MultiResolutionSTFTLoss(fft_sizes=[512, 1024, 2048], hop_sizes=[80, 160, 320],
                                                      win_lengths=[320, 640, 1280])
    a, b = multi_resolution_stft(16000)(ours, target), reference(theirs, target)
    a.backward()
    b.backward()
    assert float(a) == pytest.approx(float(b), rel=1e-6) and float(a) > 0.5
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-5, atol=1e-9)


def test_optimizer_is_fused_adamw_with_the_per_tensor_loops_update() -> None:
    _, _, cfg = load_training_recipe(TINY)
    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    fused, _ = build_optimizer(torch.nn.ModuleDict({"encoder": nets[0]}), cfg)  # named as a Codec's part
    # the schedule has already scaled the lr to its first step's (the warm-up's start)
    loop = torch.optim.AdamW(nets[1].parameters(), lr=fused.param_groups[0]["lr"], betas=tuple(cfg.betas))
    assert fused.defaults["fused"] is True
    for opt in (fused, loop):
        for g in opt.param_groups:
            g["weight_decay"] = 0.0
    x = torch.randn(32, 8)
    start = nets[0][0].weight.detach().clone()
    for _ in range(5):
        for net, opt in zip(nets, (fused, loop)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    moved = (nets[0][0].weight - nets[1][0].weight).abs().max()
    assert float(moved) < 1e-6
    assert float((nets[0][0].weight - start).abs().max()) > 2 * float(fused.param_groups[0]["lr"])  # Adam: ~lr per step


@pytest.mark.parametrize("kind", ["ema", "ste"])
def test_after_an_optimizer_step_inference_uses_the_new_weights(kind: str) -> None:
    """The fused kernel writes parameters without bumping their version counters, and the
    inference caches (conv taps, codebook norms, projected tables) are keyed on them: a stale
    cache encoded with the weights before the step (log.csv's validation statistics stopped
    matching the exported model's). After a step, the model encodes and decodes like a fresh
    copy loaded with its weights."""
    model = tiny_model(kind, codebook_dim=8)  # projected: out_proj's weights are in the table
    _, _, cfg = load_training_recipe(TINY)
    opt, _ = build_optimizer(model, cfg)
    for g in opt.param_groups:
        g["lr"] = 1e-2
    wav = speech(seconds=0.5)
    model.eval()
    with torch.no_grad():
        before = model.encoder(wav)
    model.encode(wav)  # fills every cache
    model.train()
    opt.zero_grad()
    out = model(wav)
    (out.audio.square().mean() + out.quantizer_loss).backward()
    opt.step()
    model.eval()
    fresh = tiny_model(kind, codebook_dim=8)
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    with torch.no_grad():
        latents, expected = model.encoder(wav), fresh.encoder(wav)
        assert float((latents - expected).abs().max()) == 0.0
        assert float((latents - before).abs().max()) > 1e-4  # the step moved them
        codes = model.encode(wav)
        assert torch.equal(codes, fresh.encode(wav))
        assert torch.equal(model.decode(codes), fresh.decode(codes))


def test_lr_decay_steps_ends_the_cosine_early_and_the_part_multipliers_lift_the_floor() -> None:
    """train.lr_decay_steps: the cosine reaches min_lr_ratio there and stays, whatever the run's
    length; an lr.<part> schedule multiplies that floor (a continued run's second wind)."""
    from codec.train.config import TrainConfig

    model = torch.nn.ModuleDict({"decoder": torch.nn.Linear(4, 4)})
    cfg = TrainConfig(lr=1e-3, warmup_steps=10, total_steps=200, lr_decay_steps=100, min_lr_ratio=0.1,
                      schedules={"lr": {"decoder": [[100, 1.0], [150, 3.0]]}})
    cfg.validate()
    opt, sched = build_optimizer(model, cfg)
    lrs = []
    for _ in range(200):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[100] == pytest.approx(1e-4) and lrs[50] > lrs[99] > 1e-4
    assert lrs[150] == pytest.approx(3e-4) and lrs[199] == pytest.approx(3e-4)
    with pytest.raises(ConfigError, match="lr_decay_steps"):
        TrainConfig(lr_decay_steps=-1).validate()


def test_lr_warmup_then_cosine() -> None:
    assert lr_factor(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(40, 10, 100, 0.1) > lr_factor(60, 10, 100, 0.1)


# ----- checkpoints --------------------------------------------------------------------------------
def test_latest_checkpoint_ignores_partial_writes(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    for name, complete in [("step_00000002", True), ("step_00000004", True), ("step_00000006", False),
                           (".tmp-step_00000008", True)]:
        (root / name).mkdir(parents=True)
        if complete:
            (root / name / STATE_FILE).write_text("{}")
    assert latest_checkpoint(tmp_path)[0] == 4
    assert [p.name for p in remove_partial(tmp_path)] == [".tmp-step_00000008"]
    assert latest_checkpoint(tmp_path / "nothing") is None


# ----- command line -------------------------------------------------------------------------------
def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("codec: error: "), err
    return err[0]


@pytest.mark.parametrize("args, words", [
    (["train", "recipes/nope.yaml"], "no such file"),
    (["train", str(TINY), "--set", "nosuch=1"], "nosuch"),
    (["train", str(TINY), "--set", "lr"], "key=value"),
    (["train", str(TINY), "--set", "data.root=/nonexistent/LibriSpeech"], "/nonexistent"),
    (["train", str(TINY), "--set", "data.train_subsets=[train-other-960]"], "train-other-960"),
    (["train", str(TINY), "--set", "model.quantizer.kind=bogus"], "bogus"),
    (["train", str(TINY), "--set", "batch_size=0"], "batch_size"),
])
def test_bad_input_is_one_line_and_exit_2(args: list[str], words: str, capsys, tmp_path: Path) -> None:
    assert main([*args, "--out-dir", str(tmp_path / "out")]) == 2
    assert words in one_line(capsys)


def test_train_help(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "accelerate launch -m codec train" in out and "--resume" in out and "--set" in out


def test_quantizer_warmup_bypasses_the_stack_then_initialises_on_warmed_latents() -> None:
    """``quantize=False`` (train.quantizer_warmup_steps): the decoder gets the encoder's
    latents, no quantizer state moves; the first quantized step then fits the EMA codebook
    (k-means) on the latents of the warmed encoder."""
    from codec.train.optim import build_optimizer
    from codec.train.step import TrainStep, train_step

    model = tiny_model("ema").train()
    wav = speech(1.0)
    state = {k: v.clone() for k, v in model.quantizer.state_dict().items()}
    out = model(wav, quantize=False)
    with torch.no_grad():
        direct = model.decoder(model.encoder(model._pad(wav)))[..., : wav.shape[-1]]
    # the same decoder of the same latents (no_grad takes other matrix kernels: rounding only)
    assert torch.allclose(out.audio, direct, atol=1e-6) and float(out.quantizer_loss) == 0
    assert out.codes.shape[1] == 0
    step = TrainStep(model)
    cfg = load_training_recipe(TINY)[2]
    opt, sched = build_optimizer(step, cfg)
    loss_fn = CodecLoss(16000, cfg.loss)
    for _ in range(2):
        totals, _ = train_step(step, loss_fn, opt, sched, [wav], 1.0, quantize=False)
        assert float(totals["quantizer"]) == 0
    assert all(torch.equal(v, model.quantizer.state_dict()[k]) for k, v in state.items())
    assert not bool(model.quantizer.stages[0].quantizer.initialized)
    train_step(step, loss_fn, opt, sched, [wav], 1.0, quantize=True)
    first = model.quantizer.stages[0].quantizer
    assert bool(first.initialized) and not torch.equal(first.embed, state["stages.0.quantizer.embed"])


def test_a_run_with_a_quantizer_warmup_validates_unquantized_first(tmp_path: Path) -> None:
    """Validation rows: unquantized during the warm-up (no code statistics; pesq is the
    unquantized one), then through encode and decode, with the unquantized decoder's PESQ
    beside it (pesq_unquantized: the ceiling the stack chases)."""
    from codec.train.logging import read_log

    sets = ["total_steps=4", "quantizer_warmup_steps=2", "batch_size=2", "log_every=1", "val_every=2",
            "ckpt_every=4", "data.valid_utterances=2", "pesq_utterances=2", "data.num_workers=0"]
    assert main(["train", str(TINY), "--out-dir", str(tmp_path / "run"), "-q",
                 *[a for s in sets for a in ("--set", s)]]) == 0
    rows = {(r["split"], int(r["step"])): r for r in read_log(tmp_path / "run" / "log.csv")}
    assert float(rows[("train", 1)]["quantizer"]) == 0 and float(rows[("train", 3)]["quantizer"]) > 0
    assert rows[("valid", 2)]["s1_perplexity"] == ""  # unquantized: no code statistics yet
    assert float(rows[("valid", 4)]["s1_perplexity"]) > 1
    assert rows[("valid", 2)]["pesq"] == rows[("valid", 2)]["pesq_unquantized"] != ""
    assert rows[("valid", 4)]["pesq"] != rows[("valid", 4)]["pesq_unquantized"]
    assert 1.0 <= float(rows[("valid", 4)]["pesq_unquantized"]) <= 4.65


@pytest.mark.parametrize("head", ["logmag_phase", "complex", "logmag_atan2"])
def test_a_training_step_runs_under_bf16_autocast_for_every_head(head: str) -> None:
    """`train.mixed_precision: bf16` (and `auto` on a GPU) runs the model under bf16 autocast:
    every synthesis head builds its spectra in float32 (there is no bf16 complex type; the atan2
    head failed in torch.complex before), the loss and the gradients stay finite, and the loss
    is the fp32 loss within bf16 rounding of the layers."""
    torch.manual_seed(0)
    recipe = deep_merge(load_recipe(REPO / "recipes" / "tiny_convnext.yaml"),
                        {"model": {"subframes": 4, "stft_window": 320, "head": head, "synthesis_delay": True}})
    codec = Codec.from_config(recipe).train()
    loss_fn = CodecLoss(16000, LossConfig(spectrum=1.0, complex=1.0, level=1.0))
    x = speech(0.5)

    def loss_of(bf16: bool) -> torch.Tensor:
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = codec(x, quantize=False, spectra=True)
            return loss_fn(out.audio, x, None, out.spectra)[0]

    ref = float(loss_of(False))
    loss = loss_of(True)
    assert loss.dtype == torch.float32 and math.isfinite(float(loss))
    assert float(loss) == pytest.approx(ref, rel=0.05)
    loss.backward()
    grads = [p.grad for p in codec.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
    assert float(codec.decoder.head.weight.grad.abs().sum()) > 0


def test_auto_precision_is_bf16_on_a_gpu_or_an_amx_cpu(tmp_path: Path, monkeypatch) -> None:
    """`mixed_precision: auto`: accelerate's choice when launched with one, else (no GPU) bf16
    exactly when cpuinfo's flags carry amx_bf16; avx512_bf16 alone is not enough (not
    measured faster); explicit settings are kept; tiny.yaml pins float32 for every CPU."""
    from codec.train import loop

    amx, plain = tmp_path / "amx", tmp_path / "plain"
    amx.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n\n")
    plain.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\n")
    has_amx = loop.cpu_has_amx_bf16
    assert has_amx(str(amx)) and not has_amx(str(plain)) and not has_amx(str(tmp_path / "missing"))
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for info, want in ((amx, "bf16"), (plain, "no")):
        monkeypatch.setattr(loop, "cpu_has_amx_bf16", lambda info=info: has_amx(str(info)))
        assert loop._mixed_precision("auto") == want
        assert loop._mixed_precision("no") == "no" and loop._mixed_precision("fp16") == "fp16"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert loop._mixed_precision("auto") == "no"
    assert load_training_recipe(TINY)[2].mixed_precision == "no"
