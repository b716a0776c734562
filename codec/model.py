"""Codec = causal Encoder + ResidualQuantizer + causal Decoder, with the user-facing contract:
encode / decode (offline or streaming), bitrate accounting, and safetensors persistence."""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.nn.utils import parametrize

from codec.config import ARCHITECTURES, ModelConfig
from codec.nn.frame_linear import set_int8
from codec.nn.stft import SynthesisSpectra
from codec.nn.streaming import set_streaming
from codec.quant.residual import ResidualQuantizer
from codec.recipe import ConfigError, load_recipe
from codec.runtime.stream import StreamRunner

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
        self._stream_samples: int | None = None
        self._stream_batch = 1
        #: False (default): encode in float32, the fast path. True: encode in float64, so that
        #: streamed codes equal offline codes bit for bit whatever the chunking (slower).
        self.exact = False
        self._int8 = False
        #: True (default): a stream of batch 1 runs each chunk through the native frame engine
        #: (``codec.runtime.native``: one C call per chunk instead of hundreds of PyTorch
        #: operators, same results up to float summation order) when the architecture allows it
        #: and a C compiler built it; False: always the PyTorch layers. Read when a stream starts.
        self.native = True
        #: Routes each streamed chunk to the native engine or the PyTorch layers (codec.runtime).
        self.stream_runner = StreamRunner(self)

    @property
    def int8(self) -> bool:
        """False (default): float32 weights. True: the ConvNeXt encoder's and decoder's linear
        layers run with int8 weights (one scale per output channel) and bfloat16 activations
        (``codec.nn.frame_linear``), offline and streaming alike (the native frame engine
        rounds as that path does): a streamed frame reads 4x fewer weight bytes. Codes then
        differ from the float32 encode's in some late-stage frames, and a native stream's from
        the offline int8 encode's in ~5% of codes (bf16 rounding amplifies summation-order
        differences; same PESQ); the exact (float64) encode path ignores it. Setting it
        rebuilds the cached weights; set it before a stream starts."""
        return self._int8

    @int8.setter
    def int8(self, on: bool) -> None:
        set_int8(self.encoder, on)
        set_int8(self.decoder, on)
        self._int8 = bool(on)

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

    def save_pretrained(self, directory: str | Path, training_state: bool = True) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (no pickle) into ``directory``.

        ``training_state=False`` leaves out ``training_state_keys()`` (for a shipped model: a
        third smaller with EMA stages; ``from_pretrained`` zeroes them, so training from such a
        file starts those statistics afresh)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        skip = set() if training_state else set(self.training_state_keys())
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items() if k not in skip}
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
        if wav.dim() != 3 or wav.shape[1] != 1:
            raise ValueError(f"expected audio of shape [B, 1, T], got {tuple(wav.shape)}")
        extra = (-wav.shape[-1]) % self.hop_length
        return nn.functional.pad(wav, (0, extra)) if extra else wav

    @property
    def encode_dtype(self) -> torch.dtype:
        """The encoder's and the code search's precision: float64 when ``exact``, else float32."""
        return torch.float64 if self.exact else torch.float32

    @torch.no_grad()
    def encode(self, wav: Tensor, n_q: int | None = None) -> Tensor:
        """Audio float [B, 1, T] at ``sample_rate`` -> codes int64 [B, n_q, ceil(T / hop)].

        Inside ``streaming()``, ``wav`` is the next chunk (any length) and the result holds the
        frames it completed ([B, n_q, 0] if none); ``flush()`` returns the last partial frame.

        Precision: float32 by default. Matrix products round differently for different
        input lengths, so a streamed frame's latent can differ from the offline one by ~1e-7
        and a near-tie in the code search can flip (the search ties candidates within 2^-21
        of the best to the lowest index, so this is rare in a trained model; on a barely
        trained one full of near-duplicate codewords 1-2% of codes differ, decoding within
        1% of the latent scale). With ``model.exact = True`` the encoder and the search run in float64 with
        ties snapped (``codec.quant.search.nearest``): streamed codes then equal offline codes
        bit for bit, at about 1.7x the encode time.
        """
        _check_tensor(wav, "wav", "float audio [B, 1, T]")
        dtype = self.encode_dtype
        if self._stream_samples is None:
            with parametrize.cached():
                return self.quantizer.encode(self.encoder(self._pad(wav).to(dtype)), n_q)
        if wav.dim() != 3 or wav.shape[1] != 1:
            raise ValueError(f"expected audio of shape [B, 1, L], got {tuple(wav.shape)}")
        self._stream_samples += wav.shape[-1]
        self._stream_batch = wav.shape[0]
        hop = self.hop_length
        frames = self._stream_samples // hop - (self._stream_samples - wav.shape[-1]) // hop
        engine = self._stream_engine("encoder", wav.shape[0], frames)
        if engine is not None:
            return engine.encode(wav, self.quantizer.check_n_q(n_q))
        z = self.encoder(wav.to(dtype))
        if z.shape[-1] == 0:
            return self._no_frames(wav.shape[0], n_q, wav.device)
        return self.quantizer.encode(z, n_q)

    def _no_frames(self, batch: int, n_q: int | None, device: torch.device) -> Tensor:
        """Empty codes int64 [batch, n_q, 0]: a chunk that completed no frame."""
        return torch.zeros(batch, self.quantizer.check_n_q(n_q), 0, dtype=torch.long, device=device)

    @torch.no_grad()
    def flush(self, n_q: int | None = None) -> Tensor:
        """In streaming mode: zero-pad the pending samples to a whole frame and return its
        codes, int64 [B, n_q, 1], or [B, n_q, 0] when nothing is pending."""
        if self._stream_samples is None:
            raise RuntimeError("flush() is only meaningful inside model.streaming()")
        pending = (-self._stream_samples) % self.hop_length
        device = next(self.parameters()).device
        if pending == 0:
            return self._no_frames(self._stream_batch, n_q, device)
        return self.encode(torch.zeros(self._stream_batch, 1, pending, device=device), n_q)

    @torch.no_grad()
    def flush_decoder(self) -> Tensor:
        """In streaming mode: end the decode stream. Returns the decoded samples still held back
        when the synthesis has a look-ahead (``latency``), float [B, 1, lookahead] ([B, 1, 0]
        without one): concatenated after the stream's audio, it equals the offline decode. A
        ``decode`` after it starts a new decode stream (every decoder layer afresh)."""
        if self._stream_samples is None:
            raise RuntimeError("flush_decoder() is only meaningful inside model.streaming()")
        istft = getattr(self.decoder, "istft", None)
        self.stream_runner.to_layers("decoder")  # the held-back partial sums may sit in the engine
        tail = istft.flush() if istft is not None else None
        if tail is None:
            tail = torch.zeros(self._stream_batch, 1, 0, device=next(self.parameters()).device)
        set_streaming(self.decoder, True)
        self.stream_runner.restart("decoder")
        return tail

    @property
    def latency(self) -> int:
        """Algorithmic latency in samples: how long after an input sample arrives its decoded
        sample is final in a stream (the token hop, plus the synthesis look-ahead if any)."""
        istft = getattr(self.decoder, "istft", None)
        return self.hop_length + (istft.lookahead if istft is not None else 0)

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes int64 [B, n, F] (n <= num_stages) -> audio float [B, 1, F * hop].

        Inside ``streaming()`` frames may come in any grouping, one at a time included; a
        synthesis with a look-ahead returns only the samples that are final (``latency``), the
        rest at ``flush_decoder()``.
        """
        _check_tensor(codes, "codes", "int64 codes [B, n, F]")
        if codes.dim() != 3:
            raise ValueError(f"expected codes of shape [B, n, F], got {tuple(codes.shape)}")
        if codes.shape[-1] == 0:
            return torch.zeros(codes.shape[0], 1, 0, device=codes.device)
        if self._stream_samples is not None:
            self._stream_batch = codes.shape[0]
            engine = self._stream_engine("decoder", codes.shape[0], codes.shape[-1])
            if engine is not None:
                self.quantizer.check_n_q(codes.shape[1])
                return engine.decode(codes)
        with parametrize.cached():
            return self.decoder(self.quantizer.decode(codes))

    # ----- several signals at once ------------------------------------------------------
    @torch.no_grad()
    def encode_batch(self, wavs: Sequence[Tensor], n_q: int | None = None) -> list[Tensor]:
        """Several signals in one padded batch: float audio tensors [T_i] at ``sample_rate`` ->
        codes int64 [n_q, ceil(T_i / hop)] each, in the order given.

        The signals are zero-padded at the end to the longest and encoded together; the
        encoder is causal, so each item's frames depend only on its own samples (its last
        partial frame zero-padded, as ``encode`` pads it) and the padded frames are cut off.
        The codes equal ``encode(wav[None, None])[0]`` item by item: bit for bit with
        ``exact`` (float64); in float32 a matrix product can round differently at another batch
        size or length, so a near-tie in the code search may rarely flip. One batch: memory
        grows with the number of items times the longest, so group items of similar length
        and split long lists (``codec encode`` with several inputs does).
        """
        self._check_items(wavs, "each wav", "float audio [T]", 1)
        if not wavs:
            return []
        codes = self.encode(self._pad_end(wavs)[:, None], n_q)  # audio [B, 1, max T] in
        return [codes[i, :, : -(-wav.shape[0] // self.hop_length)] for i, wav in enumerate(wavs)]

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
        self._check_items(codes, "each item of codes", "int64 codes [n, F]", 2)
        if not codes:
            return []
        if len({c.shape[0] for c in codes}) > 1:
            raise ValueError(f"decode_batch needs one stage count for all items, got {sorted({c.shape[0] for c in codes})}")
        frames = [c.shape[1] for c in codes]
        if lengths is not None and (len(lengths) != len(codes) or
                                    any(not 0 < n <= f * self.hop_length for n, f in zip(lengths, frames))):
            raise ValueError("lengths must give each item's sample count, 1 .. its frames x hop_length")
        with parametrize.cached():
            audio = self._decode_padded(self.quantizer.decode(self._pad_end(codes)), frames)  # [B, 1, max F hop]
        ends = lengths if lengths is not None else [f * self.hop_length for f in frames]
        return [audio[i, 0, :end] for i, end in enumerate(ends)]

    def _check_items(self, items: Sequence[Tensor], name: str, what: str, dim: int) -> None:
        """Refuse the items of a batch call: inside ``streaming()`` (RuntimeError: the batch
        calls run offline), not a Tensor (TypeError), not of ``dim`` dimensions with the last
        at least 1 (ValueError). ``name`` and ``what`` (e.g. "float audio [T]") name the items
        in the messages."""
        if self._stream_samples is not None:
            raise RuntimeError("encode_batch() / decode_batch() run offline; they cannot be used inside"
                               " model.streaming()")
        for x in items:
            _check_tensor(x, name, what)
            if x.dim() != dim or x.shape[-1] == 0:
                raise ValueError(f"expected {name} to be {what}, its last dimension at least 1; got shape"
                                 f" {tuple(x.shape)}")

    @staticmethod
    def _pad_end(items: Sequence[Tensor]) -> Tensor:
        """Tensors [..., L_i] (one shape but the last dimension) zero-padded at the end into one
        [B, ..., max L_i]."""
        padded = nn.utils.rnn.pad_sequence([x.movedim(-1, 0) for x in items], batch_first=True)  # [B, L, ...]
        return padded.movedim(1, -1).contiguous()

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

    def _stream_engine(self, part: str, batch: int, frames: int):
        """The native engine for this chunk of the stream's ``part``, or None for the PyTorch
        layers (``StreamRunner.route``)."""
        return self.stream_runner.route(part, batch, frames, native_on=self.native, exact=self.exact,
                                        int8=self.int8)

    @contextlib.contextmanager
    def streaming(self) -> Iterator[Codec]:
        """Within the block, encode / decode take consecutive chunks of one stream; the
        result concatenated equals the offline result (codes exactly, audio within float
        rounding). Each layer keeps only the left context it needs."""
        set_streaming(self.encoder, True)
        set_streaming(self.decoder, True)
        self._stream_samples = 0
        self._stream_batch = 1
        self.stream_runner.start()
        try:
            # Weight-norm weights are computed once for the whole stream, not once per chunk.
            with parametrize.cached():
                yield self
        finally:
            set_streaming(self.encoder, False)
            set_streaming(self.decoder, False)
            self._stream_samples = None
            self.stream_runner.stop()

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


def _check_tensor(x: object, name: str, what: str) -> None:
    """TypeError naming the expected input unless ``x`` is a torch.Tensor (a NumPy array
    included: convert it with torch.from_numpy)."""
    if not isinstance(x, Tensor):
        hint = "; convert it with torch.from_numpy(...)" if type(x).__module__.startswith("numpy") else ""
        raise TypeError(f"{name} must be a torch.Tensor of {what}, got {type(x).__name__}{hint}")

