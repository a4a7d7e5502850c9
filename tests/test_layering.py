"""The import graph keeps the plan: layers import only downwards, no cycle, Keras only in
its adapter, and the driver never loads worker-side Keras code.

Every import of every module counts: at module level, inside functions and under
``if TYPE_CHECKING:``. Each failure is one line: file, line, the import, the rule.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "phobbit"

# Low to high; a module may import its own layer and those below it.
LAYERS = {
    "errors": 0,
    "core": 1,
    "storage": 2,
    "execution": 3,
    "keras_adapter": 4,
    "reporting": 4,
    "testing": 4,
    "api": 5,
    "algorithms": 5,
    "dask_executor": 5,
    "keras_tuner": 5,
    "__init__": 5,
    "cli": 6,
    "__main__": 6,
}
FRAMEWORKS = {"keras", "tensorflow", "jax", "torch"}  # imported only by phobbit.keras_adapter
NOT_IN_CORE = FRAMEWORKS | {"pandas", "joblib"}
# The driver: the library API, the CLI, reporting, and the scheduler and its executors.
DRIVER = (
    "phobbit",
    "phobbit.api",
    "phobbit.algorithms",
    "phobbit.dask_executor",
    "phobbit.keras_tuner",
)
DRIVER_PACKAGES = ("phobbit.cli", "phobbit.reporting", "phobbit.__main__")
DRIVER_EXECUTION = {"scheduler", "executor", "dask", "simulated"}
# The Keras adapter's modules that import no Keras at module level: all the driver may import.
DRIVER_SAFE_KERAS = {
    "phobbit.keras_adapter.fit",
    "phobbit.keras_adapter.data",
    "phobbit.keras_adapter.backends",
    "phobbit.keras_adapter.saving",
    "phobbit.keras_adapter.hypermodel",
}
# Known violations, (importing file, imported module), each to be removed: none.
ALLOWED: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Import:
    """One import statement's target, as written at ``path:line``."""

    path: str
    line: int
    module: str  # the phobbit module or third-party package imported
    text: str
    in_function: bool

    def fail(self, rule: str) -> str:
        return f"{self.path}:{self.line}: {self.text} -- {rule}"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def ours(module: str) -> bool:
    return module == "phobbit" or module.startswith("phobbit.")


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def driver_side(module: str) -> bool:
    parts = module.split(".")
    return (
        module in DRIVER
        or module.startswith(DRIVER_PACKAGES)
        or (layer(module) == "execution" and parts[-1] in DRIVER_EXECUTION)
    )


def imports_of(module: str) -> list[Import]:
    path = MODULES[module]
    source = path.read_text()
    tree = ast.parse(source, str(path))
    where = str(path.relative_to(ROOT))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.Import | ast.ImportFrom):
            # ast.unparse, not get_source_segment: that one splits the whole source on
            # every call, which made collecting this file take seconds.
            text = ast.unparse(node)
            for target in targets(node, package):
                found.append(Import(where, node.lineno, target, text, in_function))
        inner = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, False)
    return found


def targets(node: ast.Import | ast.ImportFrom, package: str) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name if ours(a.name) else a.name.split(".")[0] for a in node.names]
    base = node.module or ""
    if node.level:
        anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
        base = f"{anchor}.{base}" if base else anchor
    if not ours(base):
        return [base.split(".")[0]]
    # ``from phobbit.storage import fence`` imports the module phobbit.storage.fence.
    return list(
        dict.fromkeys(
            f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
        )
    )


GRAPH = {module: imports_of(module) for module in MODULES}


def test_every_import_follows_the_layer_order() -> None:
    failures = []
    for module, found in GRAPH.items():
        for imp in found:
            if (imp.path, imp.module) in ALLOWED:
                continue
            if ours(imp.module):
                if LAYERS[layer(imp.module)] > LAYERS[layer(module)]:
                    failures.append(
                        imp.fail(f"{layer(module)} may not import {layer(imp.module)}")
                    )
            elif imp.module in FRAMEWORKS and layer(module) != "keras_adapter":
                failures.append(imp.fail("only phobbit.keras_adapter imports Keras or a backend"))
            elif imp.module in NOT_IN_CORE and layer(module) in ("errors", "core"):
                failures.append(imp.fail("the core imports no framework, pandas or joblib"))
    assert not failures, "\n".join(failures)


def test_the_driver_imports_only_the_driver_safe_keras_modules() -> None:
    failures = []
    for module, found in GRAPH.items():
        for imp in found:
            keras_side = ours(imp.module) and layer(imp.module) == "keras_adapter"
            if (imp.path, imp.module) in ALLOWED or not keras_side:
                continue
            if driver_side(module) and imp.module not in DRIVER_SAFE_KERAS:
                failures.append(imp.fail("the driver imports worker-side Keras code"))
        if module in DRIVER_SAFE_KERAS:
            failures += [
                imp.fail("a driver-safe module imports Keras at module level")
                for imp in found
                if not imp.in_function
                and (
                    imp.module in FRAMEWORKS
                    or (
                        layer(imp.module) == "keras_adapter"
                        and imp.module not in DRIVER_SAFE_KERAS
                    )
                )
            ]
    assert not failures, "\n".join(failures)


def test_no_import_cycle() -> None:
    edges = {
        m: sorted({i.module for i in found if i.module in MODULES}) for m, found in GRAPH.items()
    }
    done: set[str] = set()

    def cycle_from(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module) :] + [module]
        if module in done:
            return None
        for target in edges[module]:
            found = cycle_from(target, [*path, module])
            if found:
                return found
        done.add(module)
        return None

    for module in edges:
        cycle = cycle_from(module, [])
        assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_importing_the_api_and_the_cli_loads_no_framework() -> None:
    code = (
        "import sys, phobbit.api, phobbit.cli, phobbit.keras_tuner; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FRAMEWORKS)!r}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    assert out.strip() == "[]", f"import phobbit.api, phobbit.cli loaded {out.strip()}"
