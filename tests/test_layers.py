"""The package's layering: import-linter's contracts, no import circle, modules of readable size."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp

import stream_cluster

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(stream_cluster.__file__).resolve().parent


def _env() -> dict[str, str]:
    # This checkout's package, not another one an editable install may point at.
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


def test_import_contracts_hold() -> None:
    """Check that `lint-imports` keeps every contract in pyproject.toml (layers, no Dask below
    the runner): a lower layer importing a higher one fails here."""
    assert PACKAGE == ROOT / "stream_cluster", f"testing {PACKAGE}, not this checkout"
    exe = shutil.which("lint-imports")
    assert exe, "lint-imports is missing: pip install -e '.[test]' installs import-linter"
    proc = subprocess.run([exe, "--no-cache"], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    modules = sorted(graph.modules)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in modules:
        if start in index:
            continue
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in graph.modules:
                    continue
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    imported = graph.find_modules_directly_imported_by(child)
                    work.append((child, iter(sorted(imported))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    scc = []
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        scc.append(m)
                        if m == node:
                            break
                    if len(scc) > 1:
                        found.append(sorted(scc))
    return found


def test_no_import_circle() -> None:
    """Check that no two modules of the package import each other, directly or through others
    (function-level and TYPE_CHECKING imports included)."""
    sys.path.insert(0, str(ROOT))
    try:
        graph = grimp.build_graph("stream_cluster", cache_dir=None)
    finally:
        sys.path.remove(str(ROOT))
    assert "stream_cluster.runner.pipeline" in graph.modules
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_circle() -> None:
    """Check that the circle finder reports a circle it is given (so an empty answer means
    something)."""
    graph = grimp.ImportGraph()
    for a, b in [("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d")]:
        graph.add_import(importer=a, imported=b)
    assert _cycles(graph) == [["p.a", "p.b", "p.c"]]



def test_modules_stay_readable() -> None:
    """Check that no module is over 400 lines and the runner (its stage sequence) is under 250."""
    sizes = {p.relative_to(PACKAGE).as_posix(): len(p.read_text(encoding="utf-8").splitlines())
             for p in PACKAGE.rglob("*.py")}  # fmt: skip
    assert {m: n for m, n in sizes.items() if n > 400} == {}
    assert sizes["runner/sequence.py"] < 250
