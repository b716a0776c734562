"""Codec = causal Encoder + ResidualQuantizer + causal Decoder, with the user-facing contract:
offline float32 encode / decode, bitrate accounting, safetensors persistence and the training
forward. Streaming, and the int8 and exact precisions, run on a ``streamer()``
(``codec.runtime.streamer``): a snapshot of the weights prepared once."""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.nn.utils import parametrize

from codec.config import ARCHITECTURES, ModelConfig
from codec.nn.stft import SynthesisSpectra
from codec.quant.residual import ResidualQuantizer
from codec.recipe import ConfigError, load_recipe
from codec.runtime import batch
from codec.runtime.streamer import Streamer

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class CodecOutput:
    """What the training forward returns.

    audio: float [B, 1, T] reconstruction, same length as the input; codes: int64 [B, n, F]
    (n = all stages in training, the requested n_q in eval);
    quantizer_loss: scalar, the sum of the stages' auxiliary losses; stage_losses: [n];
    counts: per stage [K_i] code counts over active positions; n_q: [B] stages per item;
    spectra: when asked for and the decoder synthesises from spectra, a
    ``codec.nn.stft.SynthesisSpectra`` (its sub-frames' spectra, the spectra that would
    rebuild the input exactly, the synthesised audio before trimming).
    """

    audio: Tensor
    codes: Tensor
    quantizer_loss: Tensor
    stage_losses: Tensor
    counts: list[Tensor]
    n_q: Tensor
    spectra: SynthesisSpectra | None = None


def build_encoder_decoder(cfg: ModelConfig) -> tuple[nn.Module, nn.Module]:
    """The encoder (audio [B, 1, T] -> latents [B, D, T / hop]) and the decoder (latents ->
    audio [B, 1, F * hop]) of ``cfg.architecture`` (``codec.config.ARCHITECTURES``)."""
    _, encoder, decoder = ARCHITECTURES[cfg.architecture]
    arch = cfg.architecture_config()
    return encoder(arch, cfg.latent_dim), decoder(arch, cfg.latent_dim)


class Codec(nn.Module):
    """The neural speech codec. Build it with ``Codec.from_config(recipe)`` or load it with
    ``Codec.from_pretrained(dir)``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = build_encoder_decoder(cfg)
        self.quantizer = ResidualQuantizer(cfg.latent_dim, cfg.quantizer)

    # ----- construction and persistence -------------------------------------------------
    @classmethod
    def from_config(cls, recipe: str | Path | dict) -> Codec:
        """A freshly initialised model from a recipe path (YAML) or a recipe / model dict."""
        data = recipe if isinstance(recipe, dict) else load_recipe(recipe)
        return cls(ModelConfig.from_dict(data))

    @property
    def config(self) -> dict:
        """The model configuration as a JSON-serialisable dict."""
        return self.cfg.to_dict()

    def training_state_keys(self) -> list[str]:
        """State-dict keys of buffers that only training reads (EMA statistics, usage windows,
        restart counters: each module's ``TRAINING_STATE``); encode and decode never do."""
        return [f"quantizer.{key}" for key in self.quantizer.training_state_keys()]

    def save_pretrained(self, directory: str | Path, training_state: bool = True,
                        weights_dtype: torch.dtype = torch.float32) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (no pickle) into ``directory``.

        ``training_state=False`` leaves out ``training_state_keys()`` (for a shipped model: a
        third smaller with EMA stages; ``from_pretrained`` zeroes them, so training from such a
        file starts those statistics afresh). ``weights_dtype`` is the dtype floating-point
        tensors are stored in: ``torch.float16`` halves the file (``from_pretrained`` reads
        them back into the model's float32, rounded as stored)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        skip = set() if training_state else set(self.training_state_keys())
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items() if k not in skip}
        state = {k: v.to(weights_dtype) if v.is_floating_point() else v for k, v in state.items()}
        tmp = directory / (WEIGHTS_NAME + ".tmp")
        save_file(state, str(tmp))
        tmp.replace(directory / WEIGHTS_NAME)
        (directory / CONFIG_NAME).write_text(json.dumps(self.config, indent=2, sort_keys=True) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> Codec:
        """Load a model saved by ``save_pretrained``, or a shipped model by name (see
        ``codec.pretrained``; an existing directory wins over a name); returned in eval mode."""
        from codec.pretrained import resolve  # a shipped model's name -> its directory

        directory = resolve(directory)
        cfg_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        if not cfg_path.is_file() or not weights_path.is_file():
            raise ConfigError(f"{directory} is not a saved model (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
        try:
            cfg = json.loads(cfg_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read {cfg_path}: {exc}") from None
        model = cls(ModelConfig.from_dict(cfg))
        state = load_file(str(weights_path), device=str(device))
        optional = set(model.training_state_keys())
        missing = set(model.state_dict()) - set(state)
        if missing - optional:
            raise ConfigError(f"{weights_path} lacks {len(missing - optional)} weight(s), e.g. "
                              f"{min(missing - optional)}")
        # Left-out training statistics load as zeros: the same state (and fingerprint) everywhere.
        full = model.state_dict()
        state.update({k: torch.zeros_like(full[k]) for k in missing})
        model.load_state_dict(state)
        return model.to(device).eval()

    @classmethod
    def default(cls, device: str | torch.device = "cpu") -> Codec:
        """The shipped default model (``codec.pretrained.DEFAULT_MODEL``), in eval mode.

        Raises ``codec.pretrained.ModelNotFoundError`` (a ConfigError) while it is not shipped.
        """
        from codec import pretrained

        return cls.from_pretrained(pretrained.resolve(None), device=device)

    def fingerprint(self) -> bytes:
        """16-byte hash of the configuration and every weight and buffer, in key order."""
        h = hashlib.sha256(json.dumps(self.config, sort_keys=True).encode())
        for key, value in sorted(self.state_dict().items()):
            t = value.detach().cpu().contiguous().reshape(-1)  # 0-dim tensors cannot be byte-viewed
            h.update(f"{key}:{t.dtype}:{tuple(value.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.digest()[:16]

    # ----- rates ------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return int(self.cfg.sample_rate)

    @property
    def hop_length(self) -> int:
        """Samples per frame (product of the strides)."""
        return int(math.prod(self.cfg.strides))

    @property
    def frame_rate(self) -> float:
        """Frames per second."""
        return self.sample_rate / self.hop_length

    @property
    def num_stages(self) -> int:
        return self.quantizer.num_stages

    @property
    def codebook_sizes(self) -> list[int]:
        return self.quantizer.codebook_sizes

    def bitrate(self, n_q: int | None = None) -> float:
        """Nominal bits per second with the first n_q stages: frame_rate * sum log2 K_i."""
        n = self.quantizer.check_n_q(n_q)
        return self.frame_rate * sum(math.log2(k) for k in self.codebook_sizes[:n])

    # ----- inference --------------------------------------------------------------------
    def _pad(self, wav: Tensor) -> Tensor:
        """Audio float [B, 1, T] zero-padded at the end to whole frames, [B, 1, ceil(T / hop) hop]."""
        return batch.pad_to_hop(wav, self.hop_length)

    @torch.no_grad()
    def encode(self, wav: Tensor, n_q: int | None = None) -> Tensor:
        """Audio float [B, 1, T] at ``sample_rate`` -> codes int64 [B, n_q, ceil(T / hop)],
        offline in float32 with the current weights.

        Other precisions (int8 weights; "exact": float64, so that streamed codes equal offline
        codes bit for bit) and streams run on ``streamer(precision)``: its ``encode_offline``
        and ``encode``. Matrix products round differently for different input lengths, so in
        float32 a streamed frame's latent can differ from the offline one by ~1e-7 and a near-tie
        in the code search can flip (the search ties candidates within 2^-21 of the best to the
        lowest index, so this is rare in a trained model; on a barely trained one full of
        near-duplicate codewords 1-2% of codes differ, decoding within 1% of the latent scale).
        """
        batch.check_tensor(wav, "wav", "float audio [B, 1, T]")
        with parametrize.cached():
            z = self.encoder(self._pad(wav).to(torch.float32))
            return self.quantizer.encode(z, n_q)

    @property
    def latency(self) -> int:
        """Algorithmic latency in samples: how long after an input sample arrives its decoded
        sample is final in a stream (the token hop, plus the synthesis look-ahead if any)."""
        istft = getattr(self.decoder, "istft", None)
        return self.hop_length + (istft.lookahead if istft is not None else 0)

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes int64 [B, n, F] (n <= num_stages) -> audio float [B, 1, F * hop], offline with
        the current weights (streams: ``streamer()``)."""
        batch.check_tensor(codes, "codes", "int64 codes [B, n, F]")
        if codes.dim() != 3:
            raise ValueError(f"expected codes of shape [B, n, F], got {tuple(codes.shape)}")
        if codes.shape[-1] == 0:
            return torch.zeros(codes.shape[0], 1, 0, device=codes.device)
        with parametrize.cached():
            return self.decoder(self.quantizer.decode(codes))

    def streamer(self, precision: str = "fp32", backend: str = "native") -> Streamer:
        """A ``codec.runtime.streamer.Streamer``: the current weights copied and prepared once
        in ``precision`` ("fp32", "int8" or "exact"), one encode and one decode stream of them
        on ``backend`` ("native": the C frame engine where it applies; "torch"), and the
        offline path in that precision. A snapshot: make a new one after changing weights."""
        return Streamer(self, precision, backend)

    # ----- several signals at once ------------------------------------------------------
    @torch.no_grad()
    def encode_batch(self, wavs: Sequence[Tensor], n_q: int | None = None) -> list[Tensor]:
        """Several signals in one padded batch: float audio tensors [T_i] at ``sample_rate`` ->
        codes int64 [n_q, ceil(T_i / hop)] each, in the order given.

        The signals are zero-padded at the end to the longest and encoded together; the
        encoder is causal, so each item's frames depend only on its own samples (its last
        partial frame zero-padded, as ``encode`` pads it) and the padded frames are cut off.
        The codes equal ``encode(wav[None, None])[0]`` item by item, except that in float32 a
        matrix product can round differently at another batch size or length, so a near-tie in
        the code search may rarely flip (bit for bit in the "exact" precision:
        ``streamer("exact").encode_batch``). One batch: memory grows with the number of items
        times the longest, so group items of similar length and split long lists (``codec
        encode`` with several inputs does).
        """
        return batch.encode_batch(self.encode, self.hop_length, wavs, n_q)

    @torch.no_grad()
    def decode_batch(self, codes: Sequence[Tensor], lengths: Sequence[int] | None = None) -> list[Tensor]:
        """Several code sequences in one padded batch: int64 [n, F_i] each (one n for all, n <=
        num_stages) -> audio float [F_i * hop] each, or [lengths[i]] (<= F_i * hop: the encoded
        signal's sample count, e.g. a .rvq file's) when ``lengths`` is given.

        The codes are padded at the end to the longest and decoded together; the decoder is
        causal, and when its synthesis looks ahead (``latency`` > ``hop_length``) the padded
        frames' spectra are zeroed, so each item equals ``decode(codes[None])[0, 0]`` up to the
        rounding of matrix products at another batch size (about 1e-7 apart, or equal).
        """
        batch.check_items(codes, "each item of codes", "int64 codes [n, F]", 2)
        if not codes:
            return []
        if len({c.shape[0] for c in codes}) > 1:
            raise ValueError(f"decode_batch needs one stage count for all items, got {sorted({c.shape[0] for c in codes})}")
        frames = [c.shape[1] for c in codes]
        if lengths is not None and (len(lengths) != len(codes) or
                                    any(not 0 < n <= f * self.hop_length for n, f in zip(lengths, frames))):
            raise ValueError("lengths must give each item's sample count, 1 .. its frames x hop_length")
        with parametrize.cached():
            audio = self._decode_padded(self.quantizer.decode(batch.pad_end(codes)), frames)  # [B, 1, max F hop]
        ends = lengths if lengths is not None else [f * self.hop_length for f in frames]
        return [audio[i, 0, :end] for i, end in enumerate(ends)]

    def _decode_padded(self, latents: Tensor, frames: list[int]) -> Tensor:
        """The decoder on latents [B, D, F] whose item i holds ``frames[i]`` real frames: audio
        [B, 1, F hop]; a look-ahead synthesis gets no sound from the padded frames."""
        istft = getattr(self.decoder, "istft", None)
        if istft is None or istft.lookahead == 0 or min(frames) == latents.shape[-1]:
            return self.decoder(latents)
        spectra = istft.spectra(self.decoder.head_outputs(latents))  # [B, F subframes, bins]
        per_frame = spectra.shape[1] // latents.shape[-1]
        for i, f in enumerate(frames):
            spectra[i, f * per_frame :] = 0
        return istft(None, spectra)

    # ----- training ---------------------------------------------------------------------
    def _synthesise(self, latents: Tensor, padded: Tensor, spectra: bool) -> tuple[Tensor, SynthesisSpectra | None]:
        """Decoder pass for ``forward``: (audio [B, 1, F hop], CodecOutput.spectra or None)."""
        if not spectra or not hasattr(self.decoder, "forward_with_spectra"):
            return self.decoder(latents), None
        audio, spec = self.decoder.forward_with_spectra(latents)
        with torch.no_grad():
            target = self.decoder.istft.target_spectra(padded.float())
        return audio, SynthesisSpectra(spec, target, audio, self.decoder.istft)

    def forward(self, wav: Tensor, n_q: int | None = None, quantize: bool = True,
                spectra: bool = False) -> CodecOutput:
        """Training / validation pass: audio float [B, 1, T] -> CodecOutput with the
        reconstruction trimmed to T samples. In training mode quantizer dropout applies
        unless ``n_q`` is given. ``quantize=False`` bypasses the quantizer (the decoder gets the
        encoder's latents; no codebook or statistics change, quantizer loss 0, codes [B, 0, F]):
        the warm-up without quantization some recipes train with first. ``spectra``: also
        return the decoder's synthesis spectra and their targets (STFT-head decoders only)."""
        length = wav.shape[-1]
        padded = self._pad(wav)
        z = self.encoder(padded)
        if not quantize:
            b, f = z.shape[0], z.shape[-1]
            audio, spec = self._synthesise(z, padded, spectra)
            return CodecOutput(
                audio=audio[..., :length],
                codes=torch.zeros(b, 0, f, dtype=torch.long, device=z.device),
                quantizer_loss=z.new_zeros(()),
                stage_losses=z.new_zeros(self.num_stages),
                counts=[torch.zeros(k, device=z.device) for k in self.codebook_sizes],
                n_q=torch.zeros(b, dtype=torch.long, device=z.device),
                spectra=spec,
            )
        # Under bf16 autocast the code search would pick wrong neighbours and corrupt EMA
        # statistics: the quantizer always runs in fp32, the convolutions in autocast's dtype.
        with torch.autocast(device_type=z.device.type, enabled=False):
            q = self.quantizer(z.float(), n_q=n_q)
        audio, spec = self._synthesise(q.quantized, padded, spectra)
        return CodecOutput(
            audio=audio[..., :length],
            codes=q.codes,
            quantizer_loss=q.loss,
            stage_losses=q.stage_losses,
            counts=q.counts,
            n_q=q.n_q,
            spectra=spec,
        )
