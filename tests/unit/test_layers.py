"""The package's layering, checked on the source (docs/architecture.md states it).

The import graph counts every import, including those inside functions; ``from package
import submodule`` is an edge to the submodule only (the package's ``__init__`` runs first,
but it is not what the importer depends on). The torch checks run a
fresh interpreter per module, so nothing imported by this test process can hide a leak.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[2] / "nudgeserve"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _graph() -> dict[str, set[str]]:
    """{module: every module it imports} (ours and third-party roots)."""
    paths = {_module_name(p): p for p in PACKAGE_ROOT.rglob("*.py")}
    # Cython modules: leaves here (besides NumPy they import only their own NumPy reference,
    # which imports nothing of ours).
    compiled = {_module_name(p) for p in PACKAGE_ROOT.rglob("*.pyx")}
    graph: dict[str, set[str]] = {name: set() for name in compiled}
    for name, path in paths.items():
        is_pkg = path.name == "__init__.py"
        package = name if is_pkg else name.rpartition(".")[0]
        out: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                out.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                submodules = {f"{target}.{a.name}" for a in node.names} & (paths.keys() | compiled)
                out.update(submodules)
                if len(submodules) < len(node.names):  # names defined by ``target`` itself
                    out.add(target)
        graph[name] = out
    return graph


GRAPH = _graph()
OURS = set(GRAPH)


def _ours(targets: set[str]) -> set[str]:
    return {t for t in targets if t in OURS}


def _imports_root(targets: set[str], root: str) -> bool:
    return any(t == root or t.startswith(root + ".") for t in targets)


def test_the_import_graph_has_no_cycle():
    # Tarjan's strongly connected components over our modules; a package's __init__
    # importing its own submodules is an edge like any other.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(_ours(GRAPH[v])):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(OURS):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def _layer_violations(layer: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{m} imports {t}"
        for m in sorted(OURS)
        if m == layer or m.startswith(layer + ".")
        for t in sorted(GRAPH[m])
        if any(t == f or t.startswith(f + ".") for f in forbidden)
    ]


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        ("nudgeserve.kernels", ("nudgeserve.models", "nudgeserve.serve", "nudgeserve.commands")),
        ("nudgeserve.models", ("nudgeserve.serve", "nudgeserve.commands", "ray")),
        ("nudgeserve.serve.protocol", ("nudgeserve.serve.engine", "nudgeserve.serve.http",
                                       "nudgeserve.serve.ray", "nudgeserve.serve.decisions",
                                       "nudgeserve.models", "ray", "torch")),
        ("nudgeserve.serve.engine", ("nudgeserve.serve.http", "nudgeserve.serve.ray", "ray")),
        ("nudgeserve.serve.decisions", ("nudgeserve.serve.engine", "nudgeserve.serve.http",
                                        "nudgeserve.serve.ray", "ray", "torch")),
        ("nudgeserve.serve.http", ("nudgeserve.serve.ray", "ray")),
    ],
)  # fmt: skip
def test_layers_never_reach_upward(layer, forbidden):
    assert not _layer_violations(layer, forbidden)


def test_only_the_ray_layer_imports_ray():
    outside = [
        m
        for m in sorted(OURS)
        if _imports_root(GRAPH[m], "ray") and not m.startswith("nudgeserve.serve.ray")
    ]
    assert outside == []


def _imports_torch_on_import(module: str) -> bool:
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return out.stdout.strip() == "True"


# The NumPy-only decision science, the serving layers that must start fast, and the two
# Ray actors that hold no model (their processes would otherwise load torch for nothing).
TORCH_FREE = [
    "nudgeserve.models",
    "nudgeserve.models.policies.intervention",
    "nudgeserve.models.policies.linear_bandit",
    "nudgeserve.models.evaluation.ope",
    "nudgeserve.models.evaluation.metrics",
    "nudgeserve.models.evaluation.stats",
    "nudgeserve.models.evaluation.impact",
    "nudgeserve.models.evaluation.impact_logs",
    "nudgeserve.models.evaluation.effects",
    "nudgeserve.models.evaluation.qini",
    "nudgeserve.models.evaluation.uplift_calibration",
    "nudgeserve.models.evaluation.tables",
    "nudgeserve.models.evaluation.plots",
    "nudgeserve.models.policies.slates",
    "nudgeserve.models.learn.datasets",
    "nudgeserve.models.learn.features",
    "nudgeserve.serve",
    "nudgeserve.serve.http.router",
    "nudgeserve.serve.ray.budget",
    "nudgeserve.serve.ray.learner",
]


@pytest.mark.parametrize("module", TORCH_FREE)
def test_numpy_only_modules_import_without_torch(module):
    assert not _imports_torch_on_import(module)
