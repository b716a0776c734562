"""The frame engine: a batch-1 stream of the ConvNeXt codec, a chunk's frames in one native call.

``FrameEngine(lib, net, quantizer, part, int8)`` copies the weights of ``net`` (a ConvNeXt
encoder or decoder) and of the quantizer stack's stages into the layout ``frame_engine.c``
reads (fp32, or int8 + scale), once: a streamer prepares its engines when it is made and
``reset()``s them between streams. It holds the stream state (STFT samples, each
block's depthwise history, the decoder's latent history and overlap tail, starting at zero
like the PyTorch layers' buffers) and takes chunks of any length, one C call per chunk.
``load_state`` / ``store_state`` move the state from / to the PyTorch layers (their
``stream_state`` / ``load_stream_state``), so a stream can switch paths between chunks (the
runner sends long chunks to PyTorch). The results equal the PyTorch streaming path's up to float summation
order: codes agree except where two codewords are within rounding of each other, audio to
~1e-6 (int8: see ``codec.runtime.snapshot``).
"""
from __future__ import annotations

import ctypes
import math
from ctypes import POINTER, c_float, c_int32, c_void_p

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from codec.nn.convnext import ConvNeXtDecoder, ConvNeXtEncoder
from codec.nn.frame_linear import quantize_int8
from codec.quant.residual import ResidualQuantizer
from codec.quant.search import codebook_norms

#: Output columns per packed weight tile (``TILE`` in frame_engine.c).
TILE = 8


class _Linear(ctypes.Structure):
    _fields_ = [("n_in", c_int32), ("n_out", c_int32), ("int8", c_int32), ("pad_", c_int32),
                ("w", c_void_p), ("q", c_void_p), ("scale", c_void_p), ("bias", c_void_p)]


class _Block(ctypes.Structure):
    _fields_ = [("dw_w", c_void_p), ("dw_b", c_void_p), ("ln_w", c_void_p), ("ln_b", c_void_p),
                ("fc1", _Linear), ("fc2", _Linear), ("gamma", c_void_p), ("hist", c_void_p),
                ("pos", c_int32), ("pad_", c_int32)]


class _Net(ctypes.Structure):
    _fields_ = [("hop", c_int32), ("width", c_int32), ("latent", c_int32), ("n_blocks", c_int32),
                ("kernel", c_int32), ("n_stages", c_int32), ("sub_hop", c_int32), ("n_fft", c_int32),
                ("head", c_int32), ("pad3_", c_int32),
                ("ln_eps", c_float), ("pad2_", c_float),
                ("inp", _Linear), ("blocks", POINTER(_Block)), ("ln_w", c_void_p), ("ln_b", c_void_p),
                ("out", _Linear), ("window", c_void_p), ("twiddle", c_void_p), ("samples", c_void_p),
                ("lat_hist", c_void_p), ("sizes", c_void_p), ("prefilter", POINTER(_Linear)),
                ("e2", POINTER(c_void_p)), ("tables", POINTER(c_void_p)), ("scratch", c_void_p)]


def pack_tiles(w: Tensor) -> Tensor:
    """Weight [out, in] -> [ceil(out / TILE), in, TILE] with packed[t, i, j] = w[t TILE + j, i]
    (zero past ``out``): the layout in which a matrix-vector product reads each tile's weights
    as one contiguous block."""
    out, n_in = w.shape
    w = F.pad(w, (0, 0, 0, (-out) % TILE))
    return w.reshape(-1, TILE, n_in).transpose(1, 2).contiguous()


def unsupported(net: nn.Module, quantizer: ResidualQuantizer, part: str) -> str | None:
    """Why the engine cannot run ``net``, the ``part`` ("encoder" or "decoder") of a codec
    with this quantizer stack, or None when it can: the ConvNeXt architecture with plain
    depthwise kernels, LayerNorms with one eps, and (encoder) quantizer stages searched in
    Euclidean distance without projections."""
    if not isinstance(net, (ConvNeXtEncoder, ConvNeXtDecoder)):
        return "not the ConvNeXt architecture"
    io = net.stft if part == "encoder" else net.istft
    if part == "decoder" and io.head not in HEAD_CODES:
        return f"the synthesis head {io.head!r}"
    if io.window % 2 or io.window < 2 * io.sub_hop:
        return f"an odd window or one shorter than two sub-hops ({io.window} samples)"
    if max(_prime_factors(io.window)) > 31:
        return f"the FFT of {io.window} points has a prime factor above 31"
    norms = [b.norm for b in net.blocks] + [net.norm]
    if len({n.eps for n in norms}) != 1 or any(n.weight is None for n in norms):
        return "LayerNorms with different eps or without affine weights"
    for b in net.blocks:
        conv = b.dwconv.conv
        if conv.dilation[0] != 1 or conv.stride[0] != 1 or b.fc1.out_features % b.fc1.in_features:
            return "a dilated or strided depthwise conv, or an MLP width not a multiple of the width"
    if part == "decoder":
        conv = net.inp.conv
        if conv.kernel_size[0] != 3 or conv.dilation[0] != 1 or conv.stride[0] != 1 or conv.groups != 1:
            return "a decoder input conv other than kernel 3, stride 1"
        return None
    for stage in quantizer.stages:
        if stage.projected or stage.quantizer.cosine_search:
            return "a projected or cosine-searched quantizer stage"
    return None


#: Synthesis heads (codec.nn.stft.HEADS) -> the ``head`` code frame_engine.c reads.
HEAD_CODES = {"logmag_phase": 0, "complex": 1, "logmag_atan2": 2}


def _prime_factors(n: int) -> list[int]:
    out, p = [1], 2
    while n > 1:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out


class FrameEngine:
    """A stream of ``net`` (the ``part``, "encoder" or "decoder", of a codec whose
    ``unsupported`` is None) with the stages of ``quantizer``, through the native library
    ``lib``; ``int8``: int8 weights with bfloat16 rounding (the "int8" precision)."""

    def __init__(self, lib: ctypes.CDLL, net: nn.Module, quantizer: ResidualQuantizer, part: str,
                 int8: bool = False) -> None:
        self._lib = lib
        self._keep: list = []  # every tensor and ctypes array the C side points into
        self._int8 = bool(int8)
        self.part = part
        self._io = net.stft if part == "encoder" else net.istft
        self.hop = self._io.hop
        self._state: list[Tensor] = []  # every history buffer below, zeroed by reset()
        self._hist: list[Tensor] = []  # per block: the last kernel - 1 inputs [kernel - 1, width], a ring
        #: encoder: the last window - sub hop samples; decoder: the partial sums of the
        #: window - sub hop samples later sub-frames still add to
        self._samples = self._zeros(self._io.window - self._io.sub_hop)
        self._lat = self._zeros(2, quantizer.latent_dim)  # decoder: the previous two latents
        #: bytes of the weights a streamed frame reads in full (every linear layer's packed
        #: weights, scales and biases, the depthwise taps, the norms; the encoder's int8 search
        #: prefilter of every stage): what bounds a batch-1 stream by memory bandwidth, since
        #: a frame uses each of them once
        self.weight_bytes = 0
        self._net = self._build(net, quantizer)
        self._pending = torch.zeros(0)
        #: decoder: output samples still to drop at the stream's start (a synthesis delay's
        #: sub-blocks before sample 0), as CausalISTFT's skip counter
        self._skip = self._start_skip()

    def _start_skip(self) -> int:
        return self._io.frame_delay * self._io.sub_hop if self.part == "decoder" else 0

    def reset(self) -> None:
        """Start a new stream: every history buffer back to zero, no pending samples (the
        prepared weights stay: a model streams many files without re-packing them)."""
        for t in self._state:
            t.zero_()
        for i in range(self._net.n_blocks):
            self._net.blocks[i].pos = 0
        self._pending = torch.zeros(0)
        self._skip = self._start_skip()

    # ----- handing the stream over to / from the PyTorch layers --------------------------------
    def _layers(self, net: nn.Module) -> tuple[list, object, object]:
        """(the blocks' depthwise convs, the sample-side layer, the decoder's input conv or None)."""
        convs = [b.dwconv for b in net.blocks]
        if self.part == "encoder":
            return convs, net.stft, None
        return convs, net.istft, net.inp

    def load_state(self, net: nn.Module) -> None:
        """Continue the stream the PyTorch layers of ``net`` have been running: copy their
        stream states (None = a fresh stream, zeros) into the engine's state."""
        convs, io, inp = self._layers(net)
        self.reset()
        for hist, conv in zip(self._hist, convs):
            buf = conv.stream_state()
            if buf is not None:
                hist.copy_(buf[0].t())
        buf = io.stream_state()
        if buf is not None:
            flat = buf.reshape(-1).float()
            n = self._samples.numel()
            self._samples.copy_(flat[:n])
            self._pending = flat[n:].clone()  # encoder: the samples of the next frame so far
        if inp is not None:
            if inp.stream_state() is not None:
                self._lat.copy_(inp.stream_state()[0].t())
            skip = io.skip
            self._skip = self._start_skip() if skip is None else skip * io.sub_hop

    def store_state(self, net: nn.Module) -> None:
        """Hand the stream to the PyTorch layers of ``net``: load the engine's state into
        them in their layouts (oldest frame first)."""
        convs, io, inp = self._layers(net)
        for i, (hist, conv) in enumerate(zip(self._hist, convs)):
            conv.load_stream_state(torch.roll(hist, -self._net.blocks[i].pos, dims=0).t()[None].contiguous())
        if self.part == "encoder":
            io.load_stream_state(torch.cat([self._samples, self._pending])[None])
        else:
            io.load_stream_state(self._samples.clone().view(1, -1, io.sub_hop))
            io.skip = self._skip // io.sub_hop
            inp.load_stream_state(self._lat.t()[None].contiguous())

    # ----- weights ------------------------------------------------------------------------
    def _ptr(self, t: Tensor, streamed: bool = False) -> int:
        """Keep ``t`` alive for the C side and return its address; ``streamed``: a weight every
        frame reads in full (counted in ``weight_bytes``)."""
        t = t.detach().contiguous()
        self._keep.append(t)
        if streamed:
            self.weight_bytes += t.numel() * t.element_size()
        return t.data_ptr()

    def _zeros(self, *shape: int) -> Tensor:
        """A stream state buffer (float32 zeros, cleared again by ``reset``)."""
        t = torch.zeros(*shape)
        self._state.append(t)
        self._keep.append(t)
        return t

    def _f32(self, t: Tensor, streamed: bool = True) -> int:
        return self._ptr(t.detach().to(torch.float32), streamed)

    def _linear(self, weight: Tensor, bias: Tensor | None, int8: bool) -> _Linear:
        out, n_in = weight.shape
        lin = _Linear(n_in=n_in, n_out=out, int8=int(int8))
        if int8:
            q, scale = quantize_int8(weight)  # the same values as frame_linear's int8 path
            lin.q = self._ptr(pack_tiles(q), True)
            lin.scale = self._f32(scale.to(torch.bfloat16).float())
            lin.bias = self._f32(bias if bias is not None else torch.zeros(out))
        else:
            lin.w = self._ptr(pack_tiles(weight.detach().float()), True)
            lin.bias = self._f32(bias) if bias is not None else None
        return lin

    def _prefilter(self, book: Tensor) -> _Linear:
        """The search's first step for codebook [K, d]: int8 codewords with one float32 scale
        each (mode 2: float32 activations, unrounded output), approximate dot products within
        ||r||_1 scale_k / 2 of the exact ones."""
        k, d = book.shape
        q, scale = quantize_int8(book)
        return _Linear(n_in=d, n_out=k, int8=2, q=self._ptr(pack_tiles(q), True), scale=self._f32(scale))

    def _nn_linear(self, layer: nn.Linear) -> _Linear:
        return self._linear(layer.weight, layer.bias, self._int8)

    def _build(self, net: nn.Module, quantizer: ResidualQuantizer) -> _Net:
        h, blocks = self.hop, list(net.blocks)
        width = net.norm.normalized_shape[0]
        kernel = blocks[0].dwconv.kernel_span if blocks else 2
        mlp = blocks[0].fc1.out_features // width if blocks else 1
        cb = []
        for b in blocks:
            w = b.dwconv.conv.weight.detach().float()[:, 0]  # [C, k]
            self._hist.append(self._zeros(b.dwconv.kernel_span - 1, width))
            cb.append(_Block(dw_w=self._ptr(w.t(), True), dw_b=self._f32(b.dwconv.conv.bias),
                             ln_w=self._f32(b.norm.weight), ln_b=self._f32(b.norm.bias),
                             fc1=self._nn_linear(b.fc1), fc2=self._nn_linear(b.fc2), gamma=self._f32(b.gamma),
                             hist=self._hist[-1].data_ptr(), pos=0))
        block_array = (_Block * max(1, len(cb)))(*cb)
        self._keep.append(block_array)
        stages = quantizer.stages
        tables = [s.tables() for s in stages]  # (search codebook [K, d], latent-space table [K, D])
        kmax = max(t[0].shape[0] for t in tables)
        latent = quantizer.latent_dim
        io = self._io
        n = io.window
        k = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
        twiddle = torch.stack([torch.cos(k), -torch.sin(k)], dim=1).float()
        per_token = io.subframes * 3 * io.bins  # the most values a token's features or head outputs take
        # Every buffer frame_engine.c carves out of the scratch, for a group of G frames (a superset).
        g = self._lib.codec_group_frames()
        scratch = (g * (3 * per_token + 5 * width + 2 * mlp * width + 7 * latent + 2 * kmax) + 3 * kmax + 4 * n
                   + 2 * (n + h) + 4096)
        netc = _Net(hop=h, width=width, latent=latent, n_blocks=len(cb), kernel=kernel,
                    n_stages=len(stages), sub_hop=io.sub_hop, n_fft=n,
                    head=HEAD_CODES[io.head] if self.part == "decoder" else 0,
                    ln_eps=float(net.norm.eps), blocks=block_array,
                    ln_w=self._f32(net.norm.weight), ln_b=self._f32(net.norm.bias),
                    window=self._f32(torch.hann_window(n, periodic=True)), twiddle=self._ptr(twiddle),
                    samples=self._samples.data_ptr(), lat_hist=self._lat.data_ptr(),
                    sizes=self._ptr(torch.tensor([t[0].shape[0] for t in tables], dtype=torch.int32)),
                    scratch=self._ptr(torch.zeros(scratch)))
        # the tables are read a row per code (and the search's candidates), not in full
        table_ptrs = (c_void_p * len(tables))(*[self._f32(t[1], False) for t in tables])
        self._keep.append(table_ptrs)
        netc.tables = ctypes.cast(table_ptrs, POINTER(c_void_p))
        if self.part == "encoder":
            netc.inp = self._nn_linear(net.inp)
            netc.out = self._nn_linear(net.out)
            pre = (_Linear * len(tables))(*[self._prefilter(book) for book, _ in tables])
            # the squared norms PyTorch's fp32 search uses, the same floats
            e2 = (c_void_p * len(tables))(*[self._ptr(codebook_norms(book, torch.float32)[1][0], True)
                                            for book, _ in tables])
            self._keep += [pre, e2]
            netc.prefilter = ctypes.cast(pre, POINTER(_Linear))
            netc.e2 = ctypes.cast(e2, POINTER(c_void_p))
        else:
            conv = net.inp.conv  # [width, latent, 3] -> [width, 3 latent] over [z_{t-2} z_{t-1} z_t]
            w = conv.weight.detach().float().permute(0, 2, 1).reshape(conv.out_channels, -1)
            netc.inp = self._linear(w, conv.bias, False)  # a conv, not an nn.Linear: fp32 in PyTorch too
            netc.out = self._nn_linear(net.head)
        return netc

    # ----- streaming ----------------------------------------------------------------------
    def encode(self, wav: Tensor, n_q: int) -> Tensor:
        """The next chunk, float [1, 1, L] (any L) -> codes int64 [1, n_q, frames completed]."""
        x = wav.detach().reshape(-1).to(torch.float32)
        if self._pending.numel():
            x = torch.cat([self._pending, x])
        x = x.contiguous()
        frames = x.numel() // self.hop
        self._pending = x[frames * self.hop :].clone()
        codes = torch.empty(n_q, frames, dtype=torch.long)
        if frames:
            rc = self._lib.codec_encode_frames(ctypes.byref(self._net), x.data_ptr(), frames, n_q, codes.data_ptr())
            if rc != 0:
                raise RuntimeError(f"native encoder refused the chunk (code {rc})")
        return codes.unsqueeze(0)

    def search(self, z: Tensor, n_q: int, exhaustive: bool = False) -> Tensor:
        """The engine's residual code search alone (encoder engines): latents float [R, D] ->
        codes int64 [n_q, R]. ``exhaustive`` scores every codeword exactly instead of the
        int8-prefiltered candidates (the reference the prefilter must reproduce)."""
        if self.part != "encoder":
            raise ValueError("only an encoder engine searches codes")
        z = z.detach().to(torch.float32).contiguous().clone()
        codes = torch.empty(n_q, z.shape[0], dtype=torch.long)
        rc = self._lib.codec_search(ctypes.byref(self._net), z.data_ptr(), z.shape[0], n_q, codes.data_ptr(),
                                    int(exhaustive))
        if rc != 0:
            raise RuntimeError(f"native search refused the latents (code {rc})")
        return codes

    def decode(self, codes: Tensor) -> Tensor:
        """The next frames' codes, int64 [1, n, F] -> audio float [1, 1, F hop] (fewer at a
        delayed synthesis's start: the samples that are final, as CausalISTFT streams them).
        Raises IndexError (and keeps its state) when a code is outside its codebook."""
        c = codes[0].to(torch.long).contiguous()
        n, frames = c.shape
        out = torch.empty(frames * self.hop)
        rc = self._lib.codec_decode_frames(ctypes.byref(self._net), c.data_ptr(), n, frames, out.data_ptr())
        if rc == -2:
            raise IndexError("a code is outside its stage's codebook")
        if rc != 0:
            raise RuntimeError(f"native decoder refused the codes (code {rc})")
        if self._skip:
            dropped = min(self._skip, out.numel())
            out = out[dropped:]
            self._skip -= dropped
        return out.view(1, 1, -1)
