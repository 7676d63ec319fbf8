"""The package's shape: no import circle, every module importable alone, no private name
borrowed across modules, no option object below the command line, one registry of methods."""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src"
PACKAGE = SRC / "negspace"


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__main__":
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _runtime_imports(path: Path) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that runs (function-level ones included; ``if TYPE_CHECKING:``
    blocks never run, so they are left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    return [
        node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in type_only
    ]


def _owner(name: str) -> str | None:
    """The negspace module that ``name`` (a module or a module attribute) lives in."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        edges = set()
        for node in _runtime_imports(path):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names
                ]
            edges |= {_owner(t) for t in targets if t.startswith("negspace")}
        edges.discard(None)
        edges.discard(module)
        graph[module] = edges
    return graph


def test_no_import_cycle_among_the_modules():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_graph_sees_function_level_imports():
    """The check is not vacuous: a lazy import inside a function is an edge."""
    graph = _graph()
    assert (
        "negspace.methods" in graph["negspace.cli.score"] or "negspace.collections_api" in graph["negspace.cli.score"]
    )
    assert "negspace.runs" in graph["negspace.cli.eval"]  # imported inside run()


def test_no_private_name_is_imported_across_modules():
    borrowed = []
    for module, path in MODULES.items():
        for node in _runtime_imports(path):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("negspace"):
                borrowed += [
                    f"{module}: from {node.module} import {a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
                borrowed += [
                    f"{module}: from {node.module}"
                    for part in node.module.split(".")
                    if part.startswith("_") and not part.startswith("__")
                ]
    assert not borrowed, borrowed


def test_no_option_namespace_below_the_command_line():
    for module, path in MODULES.items():
        if module.startswith("negspace.cli"):
            continue
        text = path.read_text(encoding="utf-8")
        assert "argparse" not in text, f"{module} uses argparse: options become configs in negspace.cli"


def test_one_registry_of_methods():
    from negspace import load_detector
    from negspace.cli import build_parser
    from negspace.methods import METHODS
    from negspace.methods import load_detector as registry_load

    assert load_detector is registry_load
    eval_parser = build_parser()._subparsers._group_actions[0].choices["eval"]
    method_action = next(a for a in eval_parser._actions if a.dest == "method")
    assert sorted(method_action.choices) == sorted(METHODS)
    for name, spec in METHODS.items():
        assert spec.name == name and spec.config().__dataclass_params__.frozen, name


def _import_alone(module: str) -> tuple[str, int, str]:
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=300)
    return module, done.returncode, done.stderr[-800:]


@pytest.mark.parametrize("group", ["light", "heavy"])
def test_every_module_imports_alone_in_a_fresh_interpreter(group):
    heavy = ("negspace.encoders", "negspace.engines", "negspace.mllm.hf_backend", "negspace.torch_scoring")
    modules = [m for m in MODULES if m.startswith(heavy) == (group == "heavy")]
    with ThreadPoolExecutor(max_workers=2) as pool:  # 2 cores, shared with the other test worker
        failed = [(m, err) for m, code, err in pool.map(_import_alone, modules) if code != 0]
    assert not failed, failed


def test_importing_the_package_and_the_command_line_loads_no_heavy_library():
    code = (
        "import sys, negspace, negspace.cli; heavy = [m for m in ('torch', 'sklearn', 'scipy', 'open_clip', "
        "'matplotlib', 'pyarrow', 'ray', 'transformers') if m in sys.modules]; print(','.join(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == ""
