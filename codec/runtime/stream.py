"""The stream runner: which runtime takes each chunk of a stream, the native frame engine or the
PyTorch layers, and the hand-over of the stream's state between them.

A chunk goes to the frame engine (``codec.runtime.native``) when the engine applies to the
stream (batch 1, CPU, the native library built, an architecture it covers, not the exact
float64 encode) and the chunk completes at most ``ENGINE_MAX_FRAMES`` frames; longer chunks
go to the PyTorch layers, whose matrix-matrix products are faster there. Whenever the path
changes, the state moves across (``FrameEngine.load_state`` / ``store_state``), so chunks of
any sizes can be mixed in one stream.
"""
from __future__ import annotations

from torch import nn

from codec.runtime import native
from codec.runtime.native.engine import FrameEngine, unsupported

#: Streamed chunks of at most this many frames run in the native frame engine (when it
#: applies); longer ones in the PyTorch layers, whose matrix-matrix products win there.
ENGINE_MAX_FRAMES = 32
ENGINE, LAYERS = "engine", "layers"


class StreamRunner:
    """Routes the chunks of a codec's streams. ``codec``: any module with ``encoder``,
    ``decoder`` and ``quantizer`` (a ResidualQuantizer) attributes, read at every new stream,
    so replacing one of them is seen. ``start()`` begins a stream, ``route()`` picks each
    chunk's runtime, ``stop()`` ends it. Prepared engines are kept between streams while the
    weights they were built from are unchanged (same storage and version counters)."""

    def __init__(self, codec: nn.Module) -> None:
        self._codec = codec
        self._cache: dict[str, tuple[tuple | None, FrameEngine]] = {}
        self._engines: dict[str, FrameEngine | None] = {}
        self._paths: dict[str, str] = {}

    def start(self) -> None:
        """A new stream: nothing chosen yet for either part."""
        self._engines, self._paths = {}, {}

    def stop(self) -> None:
        """The stream ended: forget its engines' paths (prepared engines stay cached)."""
        self._engines, self._paths = {}, {}

    def restart(self, part: str) -> None:
        """``part``'s stream starts afresh within the current stream (its engine's history
        cleared; the PyTorch layers' are the caller's to reset)."""
        engine = self._engines.get(part)
        if engine is not None:
            engine.reset()
        self._paths.pop(part, None)

    def to_layers(self, part: str) -> None:
        """Hand ``part``'s stream state to the PyTorch layers if the engine holds it (before a
        layer reads it directly, as ``Codec.flush_decoder`` does)."""
        if self._paths.get(part) == ENGINE:
            self._engines[part].store_state(getattr(self._codec, part))
            self._paths[part] = LAYERS

    def engine(self, part: str) -> FrameEngine | None:
        """The current stream's engine for ``part`` (None: the engine does not apply, or the
        part has not streamed yet)."""
        return self._engines.get(part)

    def path(self, part: str) -> str | None:
        """Which runtime holds ``part``'s stream state now: ENGINE, LAYERS or None (no chunk yet)."""
        return self._paths.get(part)

    def cached_engine(self, part: str) -> FrameEngine | None:
        """The prepared engine kept for ``part`` between streams, if any."""
        entry = self._cache.get(part)
        return entry[1] if entry else None

    def route(self, part: str, batch: int, frames: int, *, native_on: bool, exact: bool,
              int8: bool) -> FrameEngine | None:
        """The engine for this chunk of ``part`` ("encoder" / "decoder"), which completes
        ``frames`` frames of a ``batch``-item stream, or None when the PyTorch layers take it:
        always for batch > 1, ``native_on`` False, the ``exact`` (float64) encode, a model
        off the CPU, an architecture the engine lacks or no compiler; and for chunks of more
        than ENGINE_MAX_FRAMES frames. Moves the stream state when the path changes."""
        engine = self._engines[part] if part in self._engines else self._new_engine(part, batch, native_on,
                                                                                   exact, int8)
        if engine is None:
            return None
        if batch != 1:
            raise ValueError(f"a stream's batch size cannot change (it started with 1, got {batch})")
        path = self._paths.get(part)
        net = getattr(self._codec, part)
        if frames <= ENGINE_MAX_FRAMES:
            if path == LAYERS:
                engine.load_state(net)
            self._paths[part] = ENGINE
            return engine
        if path == ENGINE:
            engine.store_state(net)
        self._paths[part] = LAYERS
        return None

    def _new_engine(self, part: str, batch: int, native_on: bool, exact: bool, int8: bool) -> FrameEngine | None:
        """The engine of a new stream's ``part`` (None where it does not apply), recorded."""
        net, quantizer, engine = getattr(self._codec, part), self._codec.quantizer, None
        on_cpu = next(net.parameters()).device.type == "cpu"
        if native_on and batch == 1 and not (part == "encoder" and exact) and on_cpu:
            lib = native.load() if unsupported(net, quantizer, part) is None else None
            if lib is not None:
                key = FrameEngine.weights_key(net, quantizer, int8)
                cached = self._cache.get(part)
                if key is not None and cached is not None and cached[0] == key:
                    engine = cached[1]
                    engine.reset()
                else:
                    engine = FrameEngine(lib, net, quantizer, part, int8)
                    self._cache[part] = (key, engine)
        self._engines[part] = engine
        return engine
