"""The shape of the package, read from its imports: no cycle, no arrow running back up, no oversized file.

Floors, from the bottom: helpers (errors, version, config, audio, features, serialization, devices, ...) →
models, data → losses, evaluation, streaming, tokens → training → serving → entry points (train, eval,
tokenize, report, serve, client, doctor, cli) and the package face ``luna``. An arrow may only point down.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Dict, List, Set

import pytest

import luna

PACKAGE = Path(luna.__file__).resolve().parent
ENTRY_POINTS = {"luna.train", "luna.eval", "luna.tokenize", "luna.report", "luna.serve", "luna.client", "luna.doctor"}
MAX_LINES = 360  # "no file over ~350 lines"

#: (importer prefix, imported prefix, why it is wrong)
FORBIDDEN = [
    ("luna.models", "luna.training", "models are nets: training builds on them, not the other way"),
    ("luna.models", "luna.data", "models take tensors, not datasets"),
    ("luna.data", "luna.models", "data knows nothing of the model"),
    ("luna.evaluation", "luna.training", "evaluation reads checkpoints, it does not train"),
    ("luna.losses", "luna.training", "the objective is used by training, not built on it"),
    ("luna.streaming", "luna.training", "streaming runs trained models"),
    ("luna.tokens", "luna.training", "token shards come from trained models"),
]


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> Dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, name: str, modules: Set[str]) -> Set[str]:
    """luna modules ``name`` imports anywhere in its file (top level and inside functions)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            submodules = {f"{base}.{a.name}" for a in node.names} & modules  # `from luna.x import submodule`
            found |= submodules if len(submodules) == len(node.names) else submodules | {base}
    return {m for m in found if m in modules and m != name}


@pytest.fixture(scope="module")
def graph() -> Dict[str, Set[str]]:
    modules = _modules()
    return {name: _imports(path, name, set(modules)) for name, path in modules.items()}


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    out: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_read(graph):
    assert len(graph) > 30
    assert "luna.training.loop" in graph["luna.training.launch"]  # a known arrow: the reader sees nested imports


def test_no_import_cycle(graph):
    assert _cycles(graph) == []


def test_a_cycle_would_be_found():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_arrow_runs_back_up(graph):
    wrong = []
    for importer, targets in graph.items():
        for target in targets:
            if target == "luna" and importer != "luna":
                wrong.append(f"{importer} -> luna (the package face; import luna.version etc. instead)")
            if target in ENTRY_POINTS and importer != target:
                wrong.append(f"{importer} -> {target} (an entry point)")
            for src, dst, why in FORBIDDEN:
                if (importer == src or importer.startswith(src + ".")) and (target == dst or target.startswith(dst + ".")):
                    wrong.append(f"{importer} -> {target}: {why}")
    assert wrong == []


def test_no_file_is_oversized():
    big = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert big == {}


def test_no_module_resolves_paths_against_the_repository():
    """luna must run from a non-editable install: nothing climbs out of the package directory."""
    climbing = []
    for p in PACKAGE.rglob("*.py"):
        depth = len(p.relative_to(PACKAGE.parent).parts)  # luna/config.py: 2 (.parent twice leaves the package)
        for m in re.finditer(r"__file__\)(?:\.resolve\(\))?((?:\.parent)+)", p.read_text().replace(" ", "")):
            if m.group(1).count(".parent") >= depth:
                climbing.append(f"{p.relative_to(PACKAGE.parent)}: {m.group(0)}")
        if "parents[" in p.read_text():
            climbing.append(f"{p.relative_to(PACKAGE.parent)}: parents[...]")
    assert climbing == []


def test_the_path_check_would_catch_the_old_repository_root(tmp_path):
    text = "ROOT = Path(__file__).resolve().parent.parent"
    m = re.search(r"__file__\)(?:\.resolve\(\))?((?:\.parent)+)", text.replace(" ", ""))
    assert m and m.group(1).count(".parent") >= len(Path("luna/config.py").parts)
