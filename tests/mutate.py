"""Mutation testing of the decision-critical modules: does some test fail when the code is wrong?

    make mutate                                         # every mutant of every module (long: not in CI)
    python tests/mutate.py --max-per-module 20 --json mutants.json

Each mutant is one small change to one module (a comparison flipped or loosened, + and -, * and /
swapped, `and`/`or` swapped, a `not` dropped, a number changed, True/False swapped). It is written into
a private copy of the tree, never into this one, and that module's tests run against it: a failing
test kills the mutant; a mutant that passes every test survives and is listed. The copy runs with the
compiled kernels of this tree and with the editable install's import redirection turned off (a
sitecustomize.py in the copy, on PYTHONPATH), so the tests, and the processes they start, import the
mutated copy.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# module -> the tests that exercise it (kept short: each mutant runs them)
TARGETS = {
    "edge_ad/training/calibrate.py": ["tests/test_verdict.py", "tests/test_training_hardening.py::"
                                      "test_non_finite_validation_scores_are_refused",
                                      "tests/test_training_hardening.py::test_stored_calibration_is_checked_field_by_field"],
    "edge_ad/runtime/detector.py": ["tests/test_verdict.py", "tests/test_end_to_end.py",
                                    "tests/test_training_hardening.py", "-k", "not resume and not stage"],
    "edge_ad/runtime/result.py": ["tests/test_verdict.py", "tests/test_end_to_end.py"],
    "edge_ad/metrics.py": ["tests/test_metrics.py", "tests/test_thresholds.py"],
    "edge_ad/runtime/thresholds.py": ["tests/test_thresholds.py"],
    "edge_ad/runtime/threshold_rules.py": ["tests/test_thresholds.py"],
    "edge_ad/postprocess.py": ["tests/test_heatmap_kernel.py", "tests/test_ddim_kernel.py", "tests/test_verdict.py",
                               "tests/test_kernel_fallback.py", "tests/test_model_interface.py"],
    "edge_ad/postprocess_numpy.py": ["tests/test_kernel_fallback.py", "-k", "matches or refuses"],   # parity only
    "edge_ad/bundle.py": ["tests/test_bundle_security.py", "tests/test_bundle_hardening.py",
                          "tests/hostile/test_bundle_hostile.py"],
}

SWAP_COMPARE = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
                ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
FLIP_COMPARE = {ast.Lt: ast.Gt, ast.Gt: ast.Lt, ast.LtE: ast.GtE, ast.GtE: ast.LtE}
SWAP_BINOP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult}

# Every Python process of a test run (pytest, and the subprocesses tests start) imports the copy: this
# sitecustomize, found through PYTHONPATH, drops the editable install's redirection to this tree.
_SITECUSTOMIZE = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "ScikitBuildRedirectingFinder"]
"""


@dataclass
class Mutant:
    module: str
    index: int
    line: int
    change: str
    status: str = "pending"
    seconds: float = 0.0


def _docstring_nodes(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _sites(tree: ast.AST) -> list[tuple[ast.AST, str, object]]:
    """Every place a mutation applies: (node, description, replacement spec)."""
    skip = _docstring_nodes(tree)
    sites: list[tuple[ast.AST, str, object]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                for table, word in ((SWAP_COMPARE, "loosen/negate"), (FLIP_COMPARE, "flip")):
                    if type(op) in table:
                        sites.append((node, f"{word} {type(op).__name__}->{table[type(op)].__name__}",
                                      ("cmp", i, table[type(op)])))
        elif isinstance(node, ast.BinOp) and type(node.op) in SWAP_BINOP:
            sites.append((node, f"{type(node.op).__name__}->{SWAP_BINOP[type(node.op)].__name__}", ("bin",)))
        elif isinstance(node, ast.BoolOp):
            sites.append((node, f"{type(node.op).__name__}->{'Or' if isinstance(node.op, ast.And) else 'And'}", ("bool",)))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            sites.append((node, "drop not", ("not",)))
        elif isinstance(node, ast.Constant) and id(node) not in skip:
            if isinstance(node.value, bool):
                sites.append((node, f"{node.value}->{not node.value}", ("const", not node.value)))
            elif isinstance(node.value, (int, float)):
                new = node.value + 1 if isinstance(node.value, int) else (node.value * 2 if node.value else 1.0)
                sites.append((node, f"{node.value!r}->{new!r}", ("const", new)))
    return sites


class _Apply(ast.NodeTransformer):
    def __init__(self, target: ast.AST, spec: tuple) -> None:
        self.target, self.spec = target, spec

    def visit(self, node: ast.AST) -> ast.AST:
        node = self.generic_visit(node)
        if node is not self.target:
            return node
        kind = self.spec[0]
        if kind == "cmp":
            node.ops[self.spec[1]] = self.spec[2]()
        elif kind == "bin":
            node.op = SWAP_BINOP[type(node.op)]()
        elif kind == "bool":
            node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        elif kind == "not":
            return node.operand
        elif kind == "const":
            node.value = self.spec[1]
        return node


def mutants_of(module: str, source: str | None = None) -> list[Mutant]:
    """Every mutant of `module` (its text `source`, by default the file in this tree)."""
    tree = ast.parse(source if source is not None else (ROOT / module).read_text())
    return [Mutant(module, i, getattr(node, "lineno", 0), change) for i, (node, change, _) in enumerate(_sites(tree))]


def mutated_source(module: str, index: int, source: str | None = None) -> str:
    tree = ast.parse(source if source is not None else (ROOT / module).read_text())
    node, _, spec = _sites(tree)[index]
    return ast.unparse(ast.fix_missing_locations(_Apply(node, spec).visit(tree)))


def make_copy(dest: Path) -> None:
    """The tracked and untracked (not ignored) files, and the compiled kernels, in `dest`."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    import edge_ad._kernels as kernels

    shutil.copy2(kernels.__file__, dest / "edge_ad" / Path(kernels.__file__).name)
    (dest / "sitecustomize.py").write_text(_SITECUSTOMIZE)


def run_tests(copy: Path, tests: list[str], timeout: float) -> tuple[str, float]:
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not slow and not gpu", *tests]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(copy), str(copy / "export")])}
    try:
        done = subprocess.run(cmd, cwd=copy, capture_output=True, text=True, timeout=timeout, env=env)
        status = "survived" if done.returncode == 0 else "killed" if done.returncode == 1 else f"error({done.returncode})"
    except subprocess.TimeoutExpired:
        status = "killed (timeout)"
    return status, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modules", default=",".join(TARGETS), help="comma-separated module paths")
    parser.add_argument("--max-per-module", type=int, default=0, help="a seeded sample of this many (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant's test run")
    parser.add_argument("--json", help="write every mutant and its fate here")
    parser.add_argument("--survivors-of", help="a JSON of an earlier run: run again only the mutants that survived "
                                               "it (after new tests; the module must be unchanged since)")
    args = parser.parse_args(argv)
    modules = [m for m in args.modules.split(",") if m]
    unknown = [m for m in modules if m not in TARGETS]
    if unknown:
        parser.error(f"no tests are mapped for {', '.join(unknown)}; known: {', '.join(TARGETS)}")
    results: list[Mutant] = []
    with tempfile.TemporaryDirectory(prefix="edge_ad-mutate-") as tmp:
        copy = Path(tmp)
        make_copy(copy)
        for module in modules:
            original = (copy / module).read_text()
            baseline, _ = run_tests(copy, TARGETS[module], args.timeout)
            if baseline != "survived":
                print(f"{module}: its tests fail without any mutation ({baseline}); skipped", file=sys.stderr)
                continue
            chosen = mutants_of(module, original)       # the copy's text: this tree may change meanwhile
            if args.survivors_of:
                again = {(m["module"], m["index"]) for m in json.loads(Path(args.survivors_of).read_text())
                         if m["status"] == "survived"}
                chosen = [m for m in chosen if (m.module, m.index) in again]
            elif args.max_per_module and len(chosen) > args.max_per_module:
                chosen = sorted(random.Random(args.seed).sample(chosen, args.max_per_module), key=lambda m: m.index)
            for m in chosen:
                (copy / module).write_text(mutated_source(module, m.index, original))
                m.status, m.seconds = run_tests(copy, TARGETS[module], args.timeout)
                print(f"{m.module}:{m.line} {m.change}: {m.status} ({m.seconds:.0f} s)", flush=True)
                results.append(m)
            (copy / module).write_text(original)
    _report(results, args.json)
    return 0


def _report(results: list[Mutant], path: str | None) -> None:
    survivors = [m for m in results if m.status == "survived"]
    print(f"\n{len(results)} mutants, {len(results) - len(survivors)} killed, {len(survivors)} survived")
    for m in survivors:
        print(f"  SURVIVED {m.module}:{m.line} {m.change}")
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps([asdict(m) for m in results], indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
