"""The torch line (docs/architecture.md): the runtime side imports neither torch nor the training side, and has no
import circles.

Runtime side: edge_ad/runtime, edge_ad/stream, bundle.py, postprocess.py, imaging.py, logs.py, found on
disk so a new module is covered without editing this file. Two checks: a static one over every import
statement (module level and inside functions), and a live one that imports every module in a fresh
process where torch, timm, the training package and the export pipeline raise ImportError.
"""

from __future__ import annotations

import ast
import json
import textwrap
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "edge_ad"
RUNTIME_FILES = ("bundle.py", "postprocess.py", "postprocess_numpy.py", "imaging.py", "logs.py", "metrics.py",
                 "regions.py")
RUNTIME_PACKAGES = ("runtime", "stream")
# What the runtime side may never import (a prefix matches the package and its modules).
FORBIDDEN = ("torch", "torchvision", "timm", "edge_ad.training", "edge_ad.models", "edge_ad.data", "edge_ad_export")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_side() -> dict[str, Path]:
    """Every runtime-side module, by dotted name, from the file system."""
    paths = [PACKAGE / name for name in RUNTIME_FILES if (PACKAGE / name).is_file()]
    for package in RUNTIME_PACKAGES:
        paths += sorted((PACKAGE / package).rglob("*.py"))
    return {module_name(p): p for p in paths}


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of the import nodes inside `if TYPE_CHECKING:` blocks (never executed)."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skipped


def imports_of(path: Path, name: str, *, executed_only: bool = False) -> set[str]:
    """Absolute names of everything `path` imports, anywhere in the file: for `from X import Y`, both X
    and X.Y (Y may be a module). `executed_only` leaves out `if TYPE_CHECKING:` imports."""
    tree = ast.parse(path.read_text(), str(path))
    skipped = _type_checking_only(tree) if executed_only else set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules among `modules` whose code runs when it imports them: the target, and the
    target's packages (their __init__ runs first), less the importer's own packages (already running)."""
    graph = {}
    for name, path in modules.items():
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        edges = set()
        for target in imports_of(path, name, executed_only=True):
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if prefix in modules and prefix not in own and prefix != name:
                    edges.add(prefix)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


# ------------------------------------------------------------------------------------------ static


def test_the_runtime_side_is_found_on_disk() -> None:
    modules = runtime_side()
    for expected in ("edge_ad.runtime", "edge_ad.runtime.detector", "edge_ad.runtime.registry", "edge_ad.stream",
                     "edge_ad.stream.pipeline", "edge_ad.bundle", "edge_ad.postprocess"):
        assert expected in modules
    assert not any(_under(m, FORBIDDEN) for m in modules)


def test_no_runtime_module_names_torch_or_the_training_side() -> None:
    """Every import statement, lazy ones and TYPE_CHECKING ones included: the torch backend is reached
    only through the registry's "module:attribute" string."""
    crossing = {name: sorted(t for t in imports_of(path, name) if _under(t, FORBIDDEN))
                for name, path in runtime_side().items()}
    assert {name: found for name, found in crossing.items() if found} == {}


def test_the_runtime_side_has_no_import_circles() -> None:
    modules = {**runtime_side(), "edge_ad": PACKAGE / "__init__.py"}
    graph = import_graph(modules)
    assert graph["edge_ad.runtime.tensorrt"] >= {"edge_ad.runtime.engine_builder", "edge_ad.runtime.devices"}
    assert "edge_ad.stream" in graph["edge_ad.runtime.detector"]         # Detector.stream, lazily
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_circle() -> None:
    """The checker itself: the circles this tree had before the runtime was split from the export side."""
    graph = {"edge_ad.runtime.tensorrt": {"edge_ad.runtime.engine_builder"},
             "edge_ad.runtime.engine_builder": {"edge_ad.runtime.tensorrt"},
             "edge_ad.stream.sources": {"edge_ad.stream.capture"}, "edge_ad.stream.capture": {"edge_ad.stream.sources"},
             "edge_ad.bundle": set()}
    assert cycles(graph) == [["edge_ad.runtime.engine_builder", "edge_ad.runtime.tensorrt"],
                             ["edge_ad.stream.capture", "edge_ad.stream.sources"]]


def test_lazy_and_relative_imports_are_seen(tmp_path) -> None:
    source = tmp_path / "mod.py"
    source.write_text(textwrap.dedent("""
        from typing import TYPE_CHECKING
        from . import sibling
        if TYPE_CHECKING:
            from edge_ad.runtime.result import Result
        def f():
            import torch
    """))
    seen = imports_of(source, "edge_ad.stream.mod")
    assert {"torch", "edge_ad.stream.sibling", "edge_ad.runtime.result"} <= seen
    assert "edge_ad.runtime.result" not in imports_of(source, "edge_ad.stream.mod", executed_only=True)


# ------------------------------------------------------------------------------------------ live

def run_blocked(code: str, blocked: tuple[str, ...] = FORBIDDEN) -> str:
    """Run `code` in a fresh interpreter (this venv's) where importing any of `blocked` raises ImportError."""
    from fakes import python_without

    out = python_without(blocked, "BLOCKED = " + repr(tuple(blocked)) + "\n" + textwrap.dedent(code), cwd=ROOT)
    assert out.returncode == 0, out.stderr[-4000:]
    return out.stdout


def test_every_runtime_module_imports_without_torch_or_the_training_side() -> None:
    names = sorted(runtime_side()) + ["edge_ad", "edge_ad.cli"]
    out = run_blocked(f"""
        import importlib, json
        for name in {names!r}:
            importlib.import_module(name)
        loaded = sorted(m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in BLOCKED))
        print(json.dumps(loaded))
    """)
    assert json.loads(out.strip().splitlines()[-1]) == []


def test_the_blocker_blocks() -> None:
    """The live check would pass vacuously if the blocking did not work."""
    out = run_blocked("""
        for name in ("torch", "edge_ad.training.torch_backend", "edge_ad_export.exporter", "timm"):
            try:
                __import__(name)
            except ImportError as err:
                print("blocked", name)
    """)
    assert out.count("blocked") == 4


def test_a_bundle_runs_on_onnxruntime_without_torch(tiny_bundle) -> None:
    """The edge box: load, predict and stream a real bundle with torch and the training side unimportable."""
    out = run_blocked(f"""
        import numpy as np
        import edge_ad
        from edge_ad.runtime import BACKENDS
        det = edge_ad.load({str(tiny_bundle)!r}, backend="onnxruntime")
        frames = [np.random.default_rng(i).integers(0, 256, (90, 120, 3), dtype=np.uint8) for i in range(3)]
        results = det.predict(frames)
        streamed = [item.result.score for item in det.stream([frames], batch=1)]
        print(det.backend.name, len(results), results[0].heatmap.shape, len(streamed))
    """)
    assert out.split() == ["onnxruntime", "3", "(90,", "120)", "3"]


def test_the_torch_backend_without_torch_names_the_train_extra(tiny_bundle) -> None:
    out = run_blocked(f"""
        import edge_ad
        from edge_ad.runtime.registry import BackendUnavailable
        try:
            edge_ad.load({str(tiny_bundle)!r}, backend="torch-cpu")
        except BackendUnavailable as err:
            print(err)
    """)
    assert 'pip install "edge_ad[train]"' in out and "torch" in out


def test_runtime_commands_run_without_the_training_side(tmp_path) -> None:
    """`edge-ad info`, `stream --help` and `opcheck`'s refusal parse and run with the training side blocked."""
    out = run_blocked(f"""
        from edge_ad.cli import main
        print("codes", main(["info"]), main(["opcheck", {str(tmp_path / 'x.onnx')!r}]), main(["stream", "--help"]))
    """)
    assert "codes 0 2 0" in out and "--source" in out
