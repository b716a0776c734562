"""The stream runner: which runtime takes each chunk of a stream, the native frame engine or the
PyTorch layers, and the hand-over of the stream's state between them.

A chunk goes to the frame engine (``codec.runtime.native``) when the streamer has one for its
part (``prepare_engines``: the native backend, CPU, the native library built, an architecture
it covers, not the exact float64 encode), the stream has batch 1 and the chunk completes at
most ``ENGINE_MAX_FRAMES`` frames; longer chunks go to the PyTorch layers, whose
matrix-matrix products are faster there. Whenever the path changes, the state moves across
(``FrameEngine.load_state`` / ``store_state``), so chunks of any sizes can be mixed in one
stream.
"""
from __future__ import annotations

from torch import nn

from codec.runtime import native
from codec.runtime.native.engine import FrameEngine, unsupported
from codec.runtime.snapshot import Snapshot

#: Streamed chunks of at most this many frames run in the native frame engine (when it
#: applies); longer ones in the PyTorch layers, whose matrix-matrix products win there.
ENGINE_MAX_FRAMES = 32
ENGINE, LAYERS = "engine", "layers"
PARTS = ("encoder", "decoder")


def prepare_engines(snapshot: Snapshot) -> dict[str, FrameEngine | None]:
    """Per part ("encoder", "decoder"), a frame engine holding the snapshot's weights in the
    engine's layout (int8 for the "int8" precision), or None where the engine does not apply:
    a model off the CPU, an architecture the engine lacks (``unsupported``), no built library,
    or the "exact" precision's float64 encoder."""
    lib = native.load()
    engines: dict[str, FrameEngine | None] = {}
    for part in PARTS:
        net = getattr(snapshot, part)
        on_cpu = next(net.parameters()).device.type == "cpu"
        usable = lib is not None and on_cpu and not (part == "encoder" and snapshot.precision == "exact")
        if usable and unsupported(net, snapshot.quantizer, part) is None:
            engines[part] = FrameEngine(lib, net, snapshot.quantizer, part, snapshot.precision == "int8")
        else:
            engines[part] = None
    return engines


class StreamRunner:
    """Routes the chunks of one encode stream and one decode stream. ``nets``: the streaming
    networks per part (their layers hold the PyTorch path's state); ``engines``: the prepared
    engine per part or None (``prepare_engines``). ``start()`` begins new streams, ``route()``
    picks each chunk's runtime."""

    def __init__(self, nets: dict[str, nn.Module], engines: dict[str, FrameEngine | None]) -> None:
        self._nets = nets
        self.engines = engines
        self._active: dict[str, FrameEngine | None] = {}
        self._paths: dict[str, str] = {}

    def start(self) -> None:
        """New streams: nothing chosen yet for either part."""
        self._active, self._paths = {}, {}

    def restart(self, part: str) -> None:
        """``part``'s stream starts afresh within the current stream (its engine's history
        cleared; the PyTorch layers' are the caller's to reset)."""
        engine = self._active.get(part)
        if engine is not None:
            engine.reset()
        self._paths.pop(part, None)

    def to_layers(self, part: str) -> None:
        """Hand ``part``'s stream state to the PyTorch layers if the engine holds it (before a
        layer reads it directly, as ``Streamer.flush_decoder`` does)."""
        if self._paths.get(part) == ENGINE:
            self._active[part].store_state(self._nets[part])
            self._paths[part] = LAYERS

    def engine(self, part: str) -> FrameEngine | None:
        """The current stream's engine for ``part`` (None: the engine does not apply to it, or
        the part has not streamed yet)."""
        return self._active.get(part)

    def path(self, part: str) -> str | None:
        """Which runtime holds ``part``'s stream state now: ENGINE, LAYERS or None (no chunk yet)."""
        return self._paths.get(part)

    def route(self, part: str, batch: int, frames: int) -> FrameEngine | None:
        """The engine for this chunk of ``part``, which completes ``frames`` frames of a
        ``batch``-item stream, or None when the PyTorch layers take it: always without an
        engine or for a stream that started with batch > 1, and for chunks of more than
        ENGINE_MAX_FRAMES frames. Moves the stream state when the path changes."""
        if part not in self._active:  # the stream's first chunk decides
            engine = self.engines[part] if batch == 1 else None
            if engine is not None:
                engine.reset()
            self._active[part] = engine
        engine = self._active[part]
        if engine is None:
            return None
        if batch != 1:
            raise ValueError(f"a stream's batch size cannot change (it started with 1, got {batch})")
        path, net = self._paths.get(part), self._nets[part]
        if frames <= ENGINE_MAX_FRAMES:
            if path == LAYERS:
                engine.load_state(net)
            self._paths[part] = ENGINE
            return engine
        if path == ENGINE:
            engine.store_state(net)
        self._paths[part] = LAYERS
        return None
