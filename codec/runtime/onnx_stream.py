"""Streaming with onnxruntime from an exported folder (``codec.runtime.export``): what a
program in another language does with the two step graphs, in Python.

``OnnxStream(folder)`` holds both sessions and their states: ``encode(audio)`` takes any
chunk of samples and returns the codes of the frames it completed, ``flush()`` pads the
pending samples to a frame; ``decode(codes)`` returns the samples that are final,
``flush_decoder()`` the look-ahead's last ones. Concatenated, they equal the PyTorch stream
(``Codec.streaming``) up to float rounding. Needs the ``onnxruntime`` package.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from codec.runtime.export import DECODER_FILE, ENCODER_FILE, FORMAT, MANIFEST_FILE, VERSION


class OnnxStream:
    """One encode stream and one decode stream through onnxruntime. ``threads``: intra-op
    threads per session (1: what a real-time codec on a shared machine gets)."""

    def __init__(self, folder: str | Path, threads: int = 1) -> None:
        import onnxruntime as ort

        folder = Path(folder)
        self.manifest = json.loads((folder / MANIFEST_FILE).read_text())
        if self.manifest.get("format") != FORMAT or self.manifest.get("version") != VERSION:
            raise ValueError(f"{folder / MANIFEST_FILE} is not a version-{VERSION} {FORMAT} manifest")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        providers = ["CPUExecutionProvider"]
        self._enc = ort.InferenceSession(str(folder / ENCODER_FILE), opts, providers=providers)
        self._dec = ort.InferenceSession(str(folder / DECODER_FILE), opts, providers=providers)
        self.hop = int(self.manifest["hop_length"])
        self.n_q = int(self.manifest["n_q"])
        self.reset()

    def reset(self) -> None:
        """Both streams start afresh (zero states, nothing pending)."""
        self._enc_states = self._zeros("encoder")
        self._dec_states = self._zeros("decoder")
        self._pending = np.zeros(0, dtype=np.float32)
        self._to_drop = int(self.manifest["lookahead_samples"])

    def _zeros(self, part: str) -> dict[str, np.ndarray]:
        return {s["name"]: np.zeros(s["shape"], dtype=np.float32) for s in self.manifest[part]["states"]}

    def _step(self, session, part: str, name: str, x: np.ndarray, states: dict[str, np.ndarray]) -> np.ndarray:
        """One frame through ``session``; ``states`` updated in place; returns the frame's output."""
        spec = self.manifest[part]["states"]
        outputs = session.run(None, {name: x, **states})
        for s, value in zip(spec, outputs[1:]):
            states[s["name"]] = value
        return outputs[0]

    def encode(self, audio: np.ndarray) -> np.ndarray:
        """Mono float samples [L] (any L) -> codes int64 [n_q, frames completed]."""
        x = np.concatenate([self._pending, np.asarray(audio, dtype=np.float32).reshape(-1)])
        frames = len(x) // self.hop
        codes = [self._step(self._enc, "encoder", "audio", x[None, None, i * self.hop:(i + 1) * self.hop],
                            self._enc_states)[0] for i in range(frames)]
        self._pending = x[frames * self.hop:]
        return np.stack(codes, axis=1) if codes else np.zeros((self.n_q, 0), dtype=np.int64)

    def flush(self) -> np.ndarray:
        """The codes of the pending samples zero-padded to a frame, int64 [n_q, 0 or 1]."""
        if len(self._pending) == 0:
            return np.zeros((self.n_q, 0), dtype=np.int64)
        return self.encode(np.zeros(self.hop - len(self._pending), dtype=np.float32))

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Codes int64 [n_q, F] -> the samples that are final, float32 [<= F hop]."""
        codes = np.asarray(codes, dtype=np.int64)
        out = [self._step(self._dec, "decoder", "codes", np.ascontiguousarray(codes[None, :, i]),
                          self._dec_states)[0, 0] for i in range(codes.shape[1])]
        audio = np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
        drop = min(self._to_drop, len(audio))
        self._to_drop -= drop
        return audio[drop:]

    def flush_decoder(self) -> np.ndarray:
        """The look-ahead's samples still held back, float32 [lookahead] (empty without one);
        the decode stream then starts afresh."""
        flush = self.manifest["flush"]
        tail = np.zeros(0, dtype=np.float32)
        if flush is not None:
            held = self._dec_states[flush["state"]].reshape(-1)[: flush["samples"]]
            tail = held[min(self._to_drop, len(held)):]
        self._dec_states = self._zeros("decoder")
        self._to_drop = int(self.manifest["lookahead_samples"])
        return tail
