"""The Codec contract: recipes, shapes, bitrate, persistence, fingerprint, config errors."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import KINDS, REPO, speech, tiny_model, tiny_recipe

from codec import Codec
from codec.model import CONFIG_NAME, WEIGHTS_NAME
from codec.recipe import ConfigError, deep_merge, load_recipe

RECIPES = sorted(p.stem for p in (REPO / "recipes").glob("*.yaml"))
HOP = 320


pytestmark = pytest.mark.usefixtures("one_thread")


def recipe_kinds(name: str) -> list[str]:
    if name == "hybrid":
        return ["simvq"] + ["ema"] * 11
    if name in ("base", "ste"):
        return ["ste"] * 12
    if name.startswith(("speech16k", "synthesis_")):  # the shipped default models' recipes, and variants
        return ["ema"] * 12
    return [name] * 12


# --- building from recipes ------------------------------------------------------------------

def test_every_kind_has_a_recipe() -> None:
    assert set(KINDS) | {"base", "hybrid", "tiny"} <= set(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_builds(name: str) -> None:
    model = Codec.from_config(REPO / "recipes" / f"{name}.yaml")
    assert model.sample_rate == 16000
    assert model.hop_length == HOP
    assert model.frame_rate == 50
    if name.startswith("tiny"):
        assert model.num_stages == 4 and model.codebook_sizes == [64] * 4
        assert model.bitrate() == 50 * 4 * 6 == 1200.0
        return
    assert model.num_stages == 12
    assert model.codebook_sizes == [1024] * 12
    assert model.bitrate() == 6000.0
    assert model.bitrate(12) == 6000.0
    assert model.bitrate(1) == 500.0
    assert [s.kind for s in model.quantizer.stages] == recipe_kinds(name)
    # a path given as str works the same, and the config round-trips through a dict
    again = Codec.from_config(str(REPO / "recipes" / f"{name}.yaml"))
    assert again.config == model.config
    assert Codec.from_config(model.config).config == model.config


def test_the_history_recipes_resolve_to_the_shipped_models_configuration_and_the_default_recipe_keeps_its_design() -> None:
    """egs/librispeech/history/ keeps the shipped model's lineage: its last run's recipe
    (speech16k_v4.yaml, an `extends` chain) resolves to exactly the configuration shipped in
    codec/pretrained/speech16k/config.json, and that model still loads from its files. The flat
    default recipe builds the same architecture and quantizer (the fields a seanet model
    alone reads, and the option sets of other kinds, aside)."""
    import json

    from codec import pretrained

    shipped_dir = pretrained.resolve(None)
    shipped = json.loads((shipped_dir / CONFIG_NAME).read_text())
    history = Codec.from_config(REPO / "egs" / "librispeech" / "history" / "speech16k_v4.yaml")
    assert history.config == shipped
    assert Codec.from_pretrained(shipped_dir).config == shipped
    flat = Codec.from_config(REPO / "recipes" / "speech16k.yaml").config
    seanet_only = {"channels", "dilations", "residual_kernel_size", "norm", "activation"}
    for key in set(shipped) - seanet_only - {"quantizer"}:
        assert flat[key] == shipped[key], key
    for key in ("kind", "n_stages", "codebook_size", "codebook_dim", "stats_window", "stages"):
        assert flat["quantizer"][key] == shipped["quantizer"][key], key
    assert flat["quantizer"]["options"]["ema"] == shipped["quantizer"]["options"]["ema"]


OLD_MODELS = REPO / "tests" / "data" / "models"


@pytest.mark.parametrize("folder", sorted(p.name for p in OLD_MODELS.iterdir()))
def test_a_model_file_shipped_earlier_still_loads(folder: str, tmp_path: Path) -> None:
    """tests/data/models/<shipped model>_<date>/ keeps an earlier shipped model's config.json and
    its weight file's layout (every tensor's name, shape and dtype; the values stay in git
    history). A file of that layout, filled with random values, loads with today's code: the
    same configuration, every tensor kept as written, only training statistics added (zeros),
    and it codes real speech."""
    import json
    import shutil

    from safetensors.torch import save_file

    source = OLD_MODELS / folder
    layout = json.loads((source / "weights.json").read_text())
    gen = torch.Generator().manual_seed(0)
    state = {name: (torch.randn(t["shape"], generator=gen) if t["dtype"] == "F32"
                    else torch.rand(t["shape"], generator=gen) < 0.5)
             for name, t in layout.items()}
    assert {t["dtype"] for t in layout.values()} <= {"F32", "BOOL"}
    shutil.copy(source / CONFIG_NAME, tmp_path / CONFIG_NAME)
    save_file(state, str(tmp_path / WEIGHTS_NAME))
    model = Codec.from_pretrained(tmp_path)
    assert model.config == json.loads((source / CONFIG_NAME).read_text())
    loaded = model.state_dict()
    assert all(torch.equal(loaded[name], value) for name, value in state.items())
    added = set(loaded) - set(state)
    assert added <= set(model.training_state_keys())
    assert all(not loaded[name].any() for name in added)
    wav = speech(1.0)
    codes = model.encode(wav)
    assert codes.shape == (1, model.num_stages, 50)
    assert model.decode(codes).shape[-1] >= wav.shape[-1]


@pytest.mark.parametrize("folder", ["history", "compare", "trials"])
def test_the_recipes_kept_under_egs_build(folder: str) -> None:
    """Trial, comparison and history recipes moved out of recipes/ still resolve and build."""
    paths = sorted((REPO / "egs" / "librispeech" / folder).glob("*.yaml"))
    assert len(paths) >= 6
    for path in paths:
        model = Codec.from_config(path)
        assert model.frame_rate == 50 and model.num_stages == 12, path


# --- shapes ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ste_model() -> Codec:
    return tiny_model("ste").eval()


@pytest.mark.parametrize("length", [1, 319, 320, 321, 1000, 3217])
def test_encode_decode_forward_shapes(ste_model: Codec, length: int) -> None:
    model = ste_model
    torch.manual_seed(length)
    wav = 0.1 * torch.randn(2, 1, length)
    frames = math.ceil(length / HOP)
    codes = model.encode(wav)
    assert codes.shape == (2, model.num_stages, frames) and codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) < 64
    for n in (1, 3):
        part = model.encode(wav, n)
        assert part.shape == (2, n, frames)
        assert torch.equal(part, codes[:, :n])
        assert model.decode(part).shape == (2, 1, frames * HOP)
    audio = model.decode(codes)
    assert audio.shape == (2, 1, frames * HOP) and audio.dtype == torch.float32
    assert torch.isfinite(audio).all()
    out = model(wav)
    assert out.audio.shape == (2, 1, length)
    assert out.codes.shape == (2, model.num_stages, frames)
    out = model(wav, n_q=2)  # eval: exactly n_q stages
    assert out.codes.shape == (2, 2, frames) and torch.equal(out.n_q, torch.full((2,), 2))
    model.train()
    try:
        out = model(wav)
        assert out.audio.shape == (2, 1, length)
        out = model(wav, n_q=2)  # training may run every stage (masked); n_q says which count
        assert out.audio.shape == (2, 1, length)
        assert torch.equal(out.n_q, torch.full((2,), 2))
        assert 2 <= out.codes.shape[1] <= model.num_stages and out.codes.shape[2] == frames
    finally:
        model.eval()


def test_bad_audio_shape_rejected(ste_model: Codec) -> None:
    with pytest.raises(ValueError):
        ste_model.encode(torch.zeros(1, 640))
    with pytest.raises(ValueError):
        ste_model.encode(torch.zeros(1, 2, 640))
    with pytest.raises(ValueError):
        ste_model.decode(torch.zeros(1, 640, dtype=torch.long))


# --- persistence ----------------------------------------------------------------------------

def trained_tiny(kind: str) -> Codec:
    """A tiny model after two training forwards and one optimizer step: k-means inits, EMA
    statistics, usage windows, step counters and weights all differ from a fresh model."""
    model = tiny_model(kind, seed=1, options={"sf_diveq": {"warmup_steps": 1}})
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    wav = speech(0.3, index=1)
    for _ in range(2):
        out = model(wav)
        loss = (out.audio - wav).pow(2).mean() + out.quantizer_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(kind: str, tmp_path: Path) -> None:
    model = trained_tiny(kind)
    fresh = tiny_model(kind, seed=1)
    assert model.fingerprint() != fresh.fingerprint()  # training really changed the state
    saved = model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in saved.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    for p in saved.iterdir():  # no pickle / torch.save zip archive anywhere
        head = p.read_bytes()[:2]
        assert head[:1] != b"\x80" and head != b"PK", p.name
    assert saved.joinpath(WEIGHTS_NAME).read_bytes()[8:9] == b"{"  # safetensors JSON header

    loaded = Codec.from_pretrained(saved)
    assert not loaded.training
    assert loaded.config == model.config
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    assert loaded.fingerprint() == model.fingerprint()

    wav = speech(1.0)
    codes = model.encode(wav)
    assert torch.equal(loaded.encode(wav), codes)
    assert torch.equal(loaded.decode(codes), model.decode(codes))
    assert torch.equal(loaded(wav).audio, model(wav).audio)


@pytest.mark.parametrize("kind", KINDS)
def test_save_without_training_state_codes_the_same(kind: str, tmp_path: Path) -> None:
    """A shipped model leaves out EMA statistics, usage windows and restart counters: the
    file is smaller, every load of it has the same state (zeros there), and encode / decode
    are unchanged."""
    model = trained_tiny(kind)
    skip = set(model.training_state_keys())
    assert {k for k in skip if k.endswith("usage.ring")} and (kind != "ema" or any("embed_sum" in k for k in skip))
    full = model.save_pretrained(tmp_path / "full")
    lean = model.save_pretrained(tmp_path / "lean", training_state=False)
    assert (lean / WEIGHTS_NAME).stat().st_size < (full / WEIGHTS_NAME).stat().st_size
    a, b = Codec.from_pretrained(lean), Codec.from_pretrained(lean)
    assert a.fingerprint() == b.fingerprint()
    assert all(not a.state_dict()[k].any() for k in skip)
    wav = speech(1.0)
    codes = model.encode(wav)
    assert torch.equal(a.encode(wav), codes)
    assert torch.equal(a.decode(codes), model.decode(codes))


def test_from_pretrained_rejects_missing_weights(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    saved = tiny_model("ema").save_pretrained(tmp_path)
    state = load_file(str(saved / WEIGHTS_NAME))
    del state["decoder.net.0.conv.bias"]
    save_file(state, str(saved / WEIGHTS_NAME))
    with pytest.raises(ConfigError, match="lacks 1 weight"):
        Codec.from_pretrained(saved)


def test_from_pretrained_rejects_incomplete_directory(tmp_path: Path) -> None:
    tiny_model("ste").save_pretrained(tmp_path)
    (tmp_path / WEIGHTS_NAME).unlink()
    with pytest.raises(ConfigError):
        Codec.from_pretrained(tmp_path)


# --- fingerprint ----------------------------------------------------------------------------

def test_fingerprint_sensitive_to_every_tiny_change() -> None:
    model = tiny_model("ema")
    fp = model.fingerprint()
    assert isinstance(fp, bytes) and len(fp) == 16
    assert model.fingerprint() == fp
    assert tiny_model("ema").fingerprint() == fp  # same seed, same model

    state = model.state_dict()
    name = next(k for k, v in state.items() if v.is_floating_point() and v.dim() >= 2)
    with torch.no_grad():
        w = state[name]
        old = w.view(-1)[0].clone()
        w.view(-1)[0] = torch.nextafter(old, old + 1)  # one ulp
        assert model.fingerprint() != fp, name
        w.view(-1)[0] = old
    assert model.fingerprint() == fp

    # 0-dim buffers count too (a long step counter, a bool flag)
    stage = model.quantizer.stages[0]
    stage.usage.step += 1
    assert model.fingerprint() != fp
    stage.usage.step -= 1
    assert model.fingerprint() == fp
    flag = stage.quantizer.initialized
    flag.fill_(not bool(flag))
    assert model.fingerprint() != fp
    flag.fill_(not bool(flag))
    assert model.fingerprint() == fp

    # the configuration counts: same weights, different dropout
    other = Codec.from_config(tiny_recipe("ema", dropout=0.25))
    other.load_state_dict(model.state_dict())
    assert other.fingerprint() != fp


# --- configuration errors -------------------------------------------------------------------

def test_unknown_model_key_is_named() -> None:
    bad = deep_merge(tiny_recipe("ste"), {"model": {"chanels": 8}})
    with pytest.raises(ConfigError, match="chanels"):
        Codec.from_config(bad)


def test_unknown_quantizer_key_is_named() -> None:
    with pytest.raises(ConfigError, match="n_stage"):
        Codec.from_config(tiny_recipe("ste", n_stage=3))


def test_unknown_key_in_yaml_recipe_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"extends: {REPO / 'recipes' / 'tiny.yaml'}\nmodel:\n  quantizer:\n    dropuot: 0.1\n")
    with pytest.raises(ConfigError, match="dropuot"):
        Codec.from_config(path)
    assert isinstance(ConfigError("x"), ValueError)


def test_unknown_stage_key_is_named() -> None:
    with pytest.raises(ConfigError, match="codebok_size"):
        Codec.from_config(tiny_recipe("ste", stages=[{"kind": "ste", "codebok_size": 256}]))


def test_unknown_quantizer_kind_and_option() -> None:
    with pytest.raises(ValueError, match="vqgan"):
        Codec.from_config(tiny_recipe("vqgan"))
    with pytest.raises(ValueError, match="vqgan"):
        Codec.from_config(tiny_recipe("ste", stages=[{"kind": "ste"}, {"kind": "vqgan"}]))
    with pytest.raises(ValueError, match="bta"):
        Codec.from_config(tiny_recipe("ste", options={"ste": {"bta": 0.1}}))


def test_invalid_values_rejected() -> None:
    for override in ({"dropout": 1.5}, {"stages": [{"kind": "ste", "repeat": 0}], "n_stages": 0}):
        with pytest.raises(ConfigError):
            Codec.from_config(tiny_recipe("ste", **override))
    with pytest.raises(ConfigError):
        Codec.from_config(deep_merge(tiny_recipe("ste"), {"model": {"norm": "batch"}}))
    with pytest.raises(ConfigError):
        Codec.from_config(REPO / "recipes" / "does_not_exist.yaml")


def test_n_q_out_of_range(ste_model: Codec) -> None:
    wav = speech(0.1)
    n = ste_model.num_stages
    for bad in (0, -1, n + 1):
        with pytest.raises(ValueError):
            ste_model.encode(wav, bad)
        with pytest.raises(ValueError):
            ste_model.bitrate(bad)
    with pytest.raises(ValueError):
        ste_model.decode(torch.zeros(1, n + 1, 3, dtype=torch.long))
    assert ste_model.encode(wav, n).shape[1] == n


# --- bitrate --------------------------------------------------------------------------------

def test_bitrate_mixed_codebook_sizes() -> None:
    model = tiny_model("ste", stages=[{"codebook_size": 256}, {"codebook_size": 1024, "repeat": 2}])
    assert model.num_stages == 3
    assert model.codebook_sizes == [256, 1024, 1024]
    expected = [50 * 8, 50 * (8 + 10), 50 * (8 + 10 + 10)]
    for n, bps in enumerate(expected, start=1):
        assert model.bitrate(n) == pytest.approx(bps, abs=1e-9)
        assert model.bitrate(n) == model.frame_rate * sum(math.log2(k) for k in model.codebook_sizes[:n])
    assert model.bitrate() == model.bitrate(3) == 1400.0
    # the stack really uses those sizes
    codes = model.eval().encode(speech(0.5))
    assert codes.shape == (1, 3, 25)
    assert int(codes[:, 0].max()) < 256


def test_recipe_hybrid_bitrate_matches_kind_recipes() -> None:
    hybrid = load_recipe(REPO / "recipes" / "hybrid.yaml")
    ste = load_recipe(REPO / "recipes" / "ste.yaml")
    # the recipes differ only in the quantizer kinds
    h, s = dict(hybrid["model"]), dict(ste["model"])
    hq, sq = dict(h.pop("quantizer")), dict(s.pop("quantizer"))
    assert h == s
    for key in ("n_stages", "codebook_size", "dropout", "options"):
        assert hq[key] == sq[key]


@pytest.mark.parametrize("activation", ["elu", "leaky_relu", "silu"])
def test_activation_option(activation: str) -> None:
    """Each activation builds, is the one used everywhere, trains (finite gradients reach the
    first conv: the in-place activations keep autograd intact) and round-trips in eval."""
    recipe = tiny_recipe("ste")
    recipe["model"]["activation"] = activation
    torch.manual_seed(0)
    model = Codec.from_config(recipe)
    expected = {"elu": torch.nn.ELU, "leaky_relu": torch.nn.LeakyReLU, "silu": torch.nn.SiLU}[activation]
    acts = [m for m in model.modules() if isinstance(m, (torch.nn.ELU, torch.nn.LeakyReLU, torch.nn.SiLU))]
    assert acts and all(isinstance(m, expected) for m in acts)
    wav = speech(0.5)
    out = model(wav)
    (out.audio - wav).abs().mean().backward()
    grad = model.encoder.net[0].conv.parametrizations.weight.original1.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    model.eval()
    assert model.decode(model.encode(wav)).shape == (1, 1, 8000)


def test_unknown_activation_is_named() -> None:
    recipe = tiny_recipe("ste")
    recipe["model"]["activation"] = "gelu"
    with pytest.raises(ConfigError, match="activation must be one of elu, leaky_relu, silu"):
        Codec.from_config(recipe)


def test_fast_elu_is_elu() -> None:
    """codec's ELU equals torch's within 1e-7 in value; gradients agree within 1e-6 away from
    0 and within |x| <= 1e-3 near it."""
    from codec.nn.activations import ELU

    x = torch.cat([torch.randn(40_000) * 4, torch.linspace(-1e-3, 1e-3, 101)]).requires_grad_(True)
    assert x.numel() >= ELU.SMALL  # the fast formula, not the small-input fallback
    x_ref = x.detach().clone().requires_grad_(True)
    y, y_ref = ELU()(x), torch.nn.functional.elu(x_ref)
    assert (y - y_ref).abs().max().item() <= 1e-7
    y.sum().backward()
    y_ref.sum().backward()
    # Where x^2 / 2 is below fp32 rounding, max() may pick x (slope 1) for e^x (slope 1 - |x|).
    away = x.detach().abs() > 1e-2
    assert (x.grad[away] - x_ref.grad[away]).abs().max().item() <= 1e-6
    assert (x.grad - x_ref.grad).abs().max().item() <= 1e-3


def test_each_architecture_config_builds_its_networks_and_the_saved_format_is_kept() -> None:
    """ModelConfig inherits every architecture's config fields and serialises them flat, with
    exactly the keys config.json files (and so model fingerprints) have always had; each
    architecture's networks are built from its own config alone."""
    from codec.config import ARCHITECTURES, ModelConfig

    assert set(ModelConfig().to_dict()) == {
        "activation", "architecture", "channels", "decoder_blocks", "dilations", "encoder_blocks", "kernel_size",
        "latent_dim", "mlp_ratio", "norm", "quantizer", "residual_kernel_size", "sample_rate", "strides", "width"}
    for name, (cls, encoder, decoder) in ARCHITECTURES.items():
        cfg = ModelConfig.from_dict({"architecture": name, "strides": [4, 4], "width": 8, "channels": 2})
        arch = cfg.architecture_config()
        assert type(arch) is cls and arch.strides == [4, 4]
        z = encoder(arch, 16)(torch.zeros(1, 1, 64))
        assert z.shape == (1, 16, 4) and decoder(arch, 16)(z).shape == (1, 1, 64)
        with pytest.raises(ConfigError):
            ModelConfig.from_dict({"architecture": name, "width": 0, "channels": 0})


def test_a_saved_config_reads_back_exactly() -> None:
    """Numbers stay as written (an int dropout stays an int: the fingerprint hashes the JSON),
    strings from YAML 1.1 ("1e-3") become numbers, integral floats fill int fields."""
    from codec.config import ModelConfig

    cfg = ModelConfig.from_dict({"quantizer": {"dropout": 0, "stats_window": 100.0}, "latent_dim": "64"})
    assert cfg.quantizer.dropout == 0 and type(cfg.quantizer.dropout) is int
    assert type(cfg.quantizer.stats_window) is int and cfg.latent_dim == 64
    assert ModelConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()
    with pytest.raises(ConfigError, match="integer"):
        ModelConfig.from_dict({"latent_dim": 64.5})
