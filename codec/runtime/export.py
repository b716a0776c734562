"""ONNX export of a codec's streams: the encoder step and the decoder step as two graphs with
explicit state, runnable by onnxruntime (or any ONNX runtime) from any language.

One call of a step is one token frame (``hop`` samples, 20 ms at 16 kHz):

- ``encoder_step.onnx``: audio float32 [1, 1, hop] and the encoder's states -> codes int64
  [1, n_q] and the next states;
- ``decoder_step.onnx``: codes int64 [1, n_q] and the decoder's states -> audio float32
  [1, 1, hop] and the next states.

Every state starts as zeros (its shape is in ``codec.json``) and each output state feeds the
same-named input of the next call. The graphs are traced from the PyTorch streaming layers
of a float32 snapshot of the codec (``codec.runtime.snapshot``: its prepared weights and the
stack's tables become constants of the graphs) (``torch.onnx.export``'s TorchScript tracer: the layers keep their state in plain
attributes, which the torch.export-based exporter cannot follow), with the STFT's DFTs as
matrix products (``codec.nn.stft.exporting``): what the PyTorch stream computes, up to float
rounding. A synthesis with a look-ahead (``lookahead_samples`` in codec.json) puts that many
samples before sample 0 at the start of its output, and leaves the last ones in its
``flush_state`` at the end: drop the first, append the second (``OnnxStream`` does).
``codec.json`` also holds the rates, the stage table (codebook sizes, bits) and the latency.
"""
from __future__ import annotations

import inspect
import json
import math
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from codec.nn.stft import CausalISTFT
from codec.nn.streaming import StreamingLayer, set_streaming
from codec.runtime.snapshot import Snapshot

ENCODER_FILE, DECODER_FILE, MANIFEST_FILE = "encoder_step.onnx", "decoder_step.onnx", "codec.json"
#: The manifest's format tag and version (bumped when a field changes meaning).
FORMAT, VERSION = "rvq-codec-onnx-stream", 1
OPSET = 17


class ExportError(ValueError):
    """A model this export cannot write (its architecture has no per-frame streaming step)."""


def _layers(net: nn.Module) -> list[StreamingLayer]:
    return [m for m in net.modules() if isinstance(m, StreamingLayer)]


class _Step(nn.Module):
    """One streaming part as a pure function of its input and its states: forward(x, *states)
    -> (y, *next states). ``run`` maps the input to the output through ``net``'s layers in
    streaming mode; one probing step of ``example`` gives the states' ``shapes`` and the
    ``output`` example. Zero-size states (a layer with nothing to remember) are constants, not
    inputs: ``carried`` lists the layers whose states are."""

    def __init__(self, net: nn.Module, run, example: Tensor) -> None:
        super().__init__()
        self.net = net  # a submodule, so that its weights become the graph's initializers
        self.run = run
        self.layers = _layers(net)
        set_streaming(net, True)
        try:
            run(example)
            self.shapes = [tuple(layer.stream_state().shape) for layer in self.layers]
            self.carried = [i for i, s in enumerate(self.shapes) if math.prod(s) > 0]
            # a step as the graph takes it (a first streamed frame would drop a look-ahead's samples)
            self.output = self(example, *[torch.zeros(self.shapes[i]) for i in self.carried])[0]
        finally:
            set_streaming(net, False)

    def forward(self, x: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        given = dict(zip(self.carried, states))
        for i, layer in enumerate(self.layers):
            layer.load_stream_state(given.get(i, torch.zeros(self.shapes[i])))
            if isinstance(layer, CausalISTFT):
                layer.skip = 0  # the look-ahead's samples before sample 0 stay in the output
        y = self.run(x)
        return (y, *[self.layers[i].stream_state() for i in self.carried])


def _spec(name: str, t: Tensor) -> dict:
    """A graph input or output as codec.json describes it."""
    return {"name": name, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}


def export_onnx(codec: nn.Module, out_dir: str | Path, n_q: int | None = None) -> dict:
    """Write ``codec``'s (a ``codec.model.Codec``) encoder and decoder steps at ``n_q`` stages
    (all by default) and their manifest into ``out_dir`` (created; existing files of these
    names are replaced). Returns the manifest (what codec.json holds). ExportError for an
    architecture without a per-frame step (the SEANet convolutions stream at other chunk
    sizes than one frame) or a torch older than 2.5."""
    if "dynamo" not in inspect.signature(torch.onnx.export).parameters:
        raise ExportError(f"ONNX export needs torch 2.5 or newer (this is {torch.version.__version__})")
    if not hasattr(codec.decoder, "istft"):
        raise ExportError("ONNX export covers the frame-rate architecture (convnext), not "
                          f"{codec.config.get('architecture')}")
    n = codec.quantizer.check_n_q(n_q)
    hop = codec.hop_length
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    snap = Snapshot(codec, "fp32")

    def encode(audio: Tensor) -> Tensor:
        return snap.tables.encode(snap.encoder(audio), n)[..., 0]

    def decode(codes: Tensor) -> Tensor:
        return snap.decoder(snap.tables.decode(codes[..., None]))

    audio = torch.zeros(1, 1, hop)
    codes = torch.zeros(1, n, dtype=torch.long)
    parts, carried = {}, {}
    with torch.no_grad():
        for name, net, run, x, file, in_name, out_name in (
                ("encoder", snap.encoder, encode, audio, ENCODER_FILE, "audio", "codes"),
                ("decoder", snap.decoder, decode, codes, DECODER_FILE, "codes", "audio")):
            step = _Step(net, run, x)
            carried[name] = step.carried
            names = [f"state{i}" for i in range(len(step.carried))]
            states = [torch.zeros(step.shapes[i]) for i in step.carried]
            set_streaming(net, True)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice, tracer notes
                    torch.onnx.export(step, (x, *states), str(out / file), dynamo=False, opset_version=OPSET,
                                      input_names=[in_name, *names],
                                      output_names=[out_name, *[f"next_{s}" for s in names]])
            finally:
                set_streaming(net, False)
            parts[name] = {"file": file, "input": _spec(in_name, x), "output": _spec(out_name, step.output),
                           "states": [{**_spec(s, t), "next": f"next_{s}"} for s, t in zip(names, states)]}
    istft = snap.decoder.istft
    flush = None
    if istft.lookahead:  # the synthesis' partial sums: their first lookahead samples end the stream
        flush = {"state": f"state{carried['decoder'].index(_layers(snap.decoder).index(istft))}",
                 "samples": istft.lookahead}
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "sample_rate": codec.sample_rate,
        "hop_length": hop,
        "frame_rate": codec.frame_rate,
        "n_q": n,
        "codebook_sizes": codec.codebook_sizes[:n],
        "bits_per_frame": sum(math.log2(k) for k in codec.codebook_sizes[:n]),
        "bitrate": codec.bitrate(n),
        "latency_samples": codec.latency,
        "lookahead_samples": istft.lookahead,
        "flush": flush,
        "fingerprint": codec.fingerprint().hex(),
        "encoder": parts["encoder"],
        "decoder": parts["decoder"],
    }
    tmp = out / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(out / MANIFEST_FILE)
    return manifest
