"""The package's layering, checked on its source: no module imports from a layer above its own,
and no import circle (function-level imports count too).

    recipe, bitstream  <-  nn, audio_io  <-  quant  <-  runtime  <-  model  <-  files  <-  train, eval  <-  cli

``bitstream`` is the file format and imports no model; ``files`` runs a model to write and read
those files. Modules of one layer may import each other (without a circle); a layer imports
only layers of a lower rank, so two layers of one rank (train and eval) import neither.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "codec"

#: layer -> (rank, module prefixes). The package's own __init__ (re-exports) sits on top.
LAYERS: dict[str, tuple[int, tuple[str, ...]]] = {
    "recipe": (0, ("codec.recipe",)),
    "bitstream": (0, ("codec.bitstream",)),
    "nn": (1, ("codec.nn",)),
    "audio_io": (1, ("codec.audio_io",)),
    "quant": (2, ("codec.quant",)),
    "runtime": (3, ("codec.runtime",)),
    "model": (4, ("codec.model", "codec.config", "codec.pretrained")),
    "files": (5, ("codec.files",)),
    "train": (6, ("codec.train",)),
    "eval": (6, ("codec.eval",)),
    "cli": (7, ("codec.cli", "codec.__main__")),
    "package": (8, ("codec",)),
}


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    """The layer a module belongs to: the longest matching prefix."""
    best = max((p for _, (_, prefixes) in LAYERS.items() for p in prefixes
                if module == p or module.startswith(p + ".")), key=len)
    return next(name for name, (_, prefixes) in LAYERS.items() if best in prefixes)


def imports(source: str, module: str, known: set[str]) -> set[str]:
    """The codec modules ``source`` (of ``module``) imports anywhere in it, resolved to modules
    in ``known`` (``from a.b import c`` is a.b.c when that is a module, else a.b)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        else:
            continue
        found |= {n for n in names if n == "codec" or n.startswith("codec.")}
    return found - {module}


def violations(sources: dict[str, str]) -> list[str]:
    """Every upward or sideways import and every import circle among ``sources`` (module -> code)."""
    known = set(sources)
    graph = {m: imports(src, m, known) for m, src in sources.items()}
    found = []
    for m, deps in sorted(graph.items()):
        lm = layer_of(m)
        for d in sorted(deps):
            ld = layer_of(d)
            if ld != lm and LAYERS[ld][0] >= LAYERS[lm][0]:
                found.append(f"{m} ({lm}) imports {d} ({ld})")
    # circles: depth-first search for a back edge
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if d not in graph:
                continue
            if state.get(d) == 1:
                found.append("import circle: " + " -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return found


def package_sources() -> dict[str, str]:
    return {module_name(p, ROOT): p.read_text() for p in sorted(ROOT.rglob("*.py"))}


def test_every_module_has_a_layer() -> None:
    for module in package_sources():
        assert layer_of(module) in LAYERS


def test_no_module_imports_a_layer_above_it_and_no_circle() -> None:
    assert violations(package_sources()) == []


@pytest.mark.parametrize(("module", "line", "expected"), [
    ("codec.nn.conv", "from codec.quant.search import nearest", "codec.nn.conv (nn) imports codec.quant.search (quant)"),
    ("codec.bitstream.header", "from codec.model import Codec", "codec.bitstream.header (bitstream) imports codec.model"),
    ("codec.train.loop", "from codec.eval.metrics import pesq_wb", "codec.train.loop (train) imports codec.eval.metrics"),
    ("codec.quant.search", "    from codec.quant.residual import ResidualQuantizer", "import circle: codec.quant"),
])
def test_the_check_finds_a_wrong_import(module: str, line: str, expected: str) -> None:
    """A deliberately wrong import (also inside a function) is reported."""
    sources = package_sources()
    body = f"def late():\n{line}\n" if line.startswith(" ") else line + "\n"
    sources[module] += "\n" + body
    assert any(expected in v for v in violations(sources)), violations(sources)
