"""The README and docs/ stay true to the repository: the quick-start commands are the ones CI
runs, every relative link reaches a file (and a heading, where it names one), and every test
that docs/quantizers.md cites exists."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from conftest import REPO

DOCS = sorted((REPO / "docs").glob("*.md"))
DEMO = 'pip install torch==2.13.0 && pip install -e . && codec demo'
TESTS = 'pip install torch==2.13.0 && pip install -e ".[dev]" && python -m pytest -q'


def prose(path: Path) -> str:
    """The file's text without its fenced code blocks."""
    return re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of the file's headings (lower case, punctuation dropped, spaces to -)."""
    heads = re.findall(r"^#+ (.+)$", prose(path), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_quick_start_commands_are_the_ones_ci_runs() -> None:
    readme = (REPO / "README.md").read_text()
    assert f"```\n{DEMO}\n```" in readme and f"```\n{TESTS}\n```" in readme
    assert TESTS in (REPO / ".ci" / "run").read_text()


@pytest.mark.parametrize("path", [REPO / "README.md", *DOCS], ids=lambda p: p.name)
def test_relative_links_reach_their_files_and_headings(path: Path) -> None:
    for link in re.findall(r"\]\(([^)\s]+)\)", prose(path)):
        if re.match(r"[a-z]+:", link):
            continue
        target, _, anchor = link.partition("#")
        resolved = (path.parent / target).resolve() if target else path
        assert resolved.exists(), f"{path.name}: {link} does not exist"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{path.name}: {link} names no heading"


def test_every_test_the_quantizer_reference_cites_exists() -> None:
    text = (REPO / "docs" / "quantizers.md").read_text()
    defined = {f.name: {n.name for n in ast.walk(ast.parse(f.read_text())) if isinstance(n, ast.FunctionDef)}
               for f in (REPO / "tests").glob("test_*.py")}
    cited = re.findall(r"tests/(test_\w+\.py)::(test_\w+)", text)
    assert len(cited) > 50
    missing = sorted({f"{f}::{n}" for f, n in cited if n not in defined.get(f, set())})
    # a list may name further tests of a file without its path: they exist in some test file
    anywhere = set().union(*defined.values())
    missing += sorted(set(re.findall(r"`(test_\w+)`", text)) - anywhere)
    assert not missing, missing
