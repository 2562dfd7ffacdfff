"""The architecture as tests (DESIGN.md, "Layout"): import layers one way, no cycle, a torch-free CLI front, and the
size limits of files and functions. Every import counts, those inside functions too."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("align", "data_builders", "rewards", "kernels")
# which top-level packages each may import (besides itself): kernels and data_builders are leaves
ALLOWED_PACKAGES = {
    "kernels": set(),
    "data_builders": set(),
    "rewards": {"data_builders"},
    "align": {"data_builders", "rewards", "kernels"},
}
# inside align: a module may import its own layer's package and any lower layer
ALIGN_LAYERS = {"align": 0, "align.config": 0, "align.core": 1, "align.rollout": 2, "align.eval": 2,
                "align.recipes": 3, "align.demo": 4, "align.cli": 5, "align.__main__": 6}  # fmt: skip
HEAVY = ("torch", "transformers", "peft", "datasets")
MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 60


def module_files() -> dict[str, Path]:
    files = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


MODULES = module_files()


def imports_of(name: str, path: Path) -> set[str]:
    """Project modules `name` imports anywhere in its file; `from pkg import mod` counts as importing pkg.mod."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                kept = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(kept + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # `import a.b.c` of a package path: the longest known prefix
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: imports_of(name, path) for name, path in MODULES.items()}


def align_layer(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else "align"


def layer_violation(src: str, dst: str) -> str | None:
    top_src, top_dst = src.split(".")[0], dst.split(".")[0]
    if top_src != top_dst:
        return None if top_dst in ALLOWED_PACKAGES[top_src] else f"{top_src} may not import {top_dst}"
    if top_src != "align":
        return None
    a, b = align_layer(src), align_layer(dst)
    if a == b == "align.recipes" and src != "align.recipes" and dst != "align.recipes":
        return "a recipe imports another recipe (share it through align.core)"
    if a != b and ALIGN_LAYERS[b] >= ALIGN_LAYERS[a]:
        return f"{a} may not import {b} (layers: config <- core <- rollout, eval <- recipes <- demo <- cli)"
    return None


def test_imports_point_down_the_layers():
    bad = [f"{s} -> {d}: {why}" for s, dsts in GRAPH.items() for d in dsts if (why := layer_violation(s, d))]
    assert not bad, "\n".join(bad)


def test_the_layer_rules_catch_what_they_should():
    assert layer_violation("align.config.sections", "align.eval.judge")
    assert layer_violation("align.core.trainer", "align.eval.callback")
    assert layer_violation("align.recipes.rlaif_v", "align.recipes.dpo")
    assert layer_violation("align.eval.runner", "align.rollout.engine")
    assert layer_violation("data_builders.opa_dpo", "align.core.models")
    assert layer_violation("kernels.reference", "data_builders.schema")
    assert not layer_violation("align.recipes.dpo", "align.core.preference")
    assert not layer_violation("rewards", "data_builders.schema")


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the components with more than one module."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        component.append(top)
                        if top == node:
                            break
                    if len(component) > 1:
                        out.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter[0]
                counter[0] += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return out


def test_no_import_cycle():
    assert strongly_connected(GRAPH) == []
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_config_names_match_the_eval_registry():
    from align.config.sections import EVAL_SUITES, PUBLIC_BENCHMARKS
    from align.eval.benchmarks import BENCHMARKS
    from align.eval.runner import EVAL_SUITES as RUNNER_SUITES

    assert PUBLIC_BENCHMARKS == {name: bench.needs_judge for name, bench in BENCHMARKS.items()}
    assert EVAL_SUITES == tuple(RUNNER_SUITES)


@pytest.mark.parametrize(
    "argv",
    [
        ["validate"],
        ["--help"],
        ["train", "--help"],
        ["build-data", "--help"],
        ["eval", "--help"],
        ["demo", "--help"],
        ["train", "configs/toy/dpo.yaml", "optim.lr=3e-4", "--help"],  # the config's fields (align/cli/configs.py)
        ["build-data", "configs/toy/toyworld.yaml", "-h"],
        ["show", "configs/toy/opa_dpo.yaml"],
        ["configs"],
    ],
)
def test_config_and_help_import_no_torch(argv):
    script = (
        "import sys\nfrom align.cli import main\n"
        f"try:\n    code = main({argv!r})\nexcept SystemExit as e:\n    code = e.code\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print('HEAVY', heavy)\nsys.exit(code or (1 if heavy else 0))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.returncode == 0, done.stderr[-2000:]


def long_functions(path: Path) -> list[str]:
    return [
        f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]


def test_library_files_and_functions_stay_small():
    files = [*MODULES.values(), *sorted((REPO / "bench").glob("*.py"))]
    lines = {p: len(p.read_text().splitlines()) for p in files}
    too_long = [f"{p.relative_to(REPO)} ({n} lines)" for p, n in lines.items() if n > MAX_FILE_LINES]
    assert not too_long, f"files over {MAX_FILE_LINES} lines: {too_long}"
    functions = [f for p in files for f in long_functions(p)]
    assert not functions, f"functions over {MAX_FUNCTION_LINES} lines: {functions}"


def test_no_test_reads_a_hard_coded_tmp_path():
    offenders = [
        str(p.relative_to(REPO))
        for p in sorted((REPO / "tests").rglob("*.py"))
        if p.name != Path(__file__).name and ('"/tmp' in p.read_text() or "'/tmp" in p.read_text())
    ]
    assert not offenders, f"use pytest's tmp_path instead of /tmp in {offenders}"
