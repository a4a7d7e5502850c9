"""Which slow mechanisms a test uses, read from the code it runs, for the collection hook.

A test is read as the Python source of its function (or its class), of the fixtures it
requests that are defined under ``tests/``, and, transitively, of every module-level
function, class or value of those modules it names, and of the functions it imports from
the shared helper modules (``helpers``, ``gates``, ``synthetic`` ...). In that code:

- ``pool``: a real process pool. ``LocalExecutor`` named; ``ParallelHyperband(...)`` or
  Hobbit's ``Hyperband(...)`` called without ``executor=`` (with only ``**kwargs``, it
  counts); ``helpers.tuner(..., real=...)`` with ``real`` anything but
  ``False``; the command line's ``train`` run in this process (``main([...])``,
  ``cli.main([...])`` or ``test_cli``'s ``phobbit(...)``, whose first word is ``train``
  or is not written out; a wrapper that forwards its own ``*args`` leaves the decision
  to its callers).
- ``subprocess``: processes a test starts itself. ``subprocess.run``, ``Popen``,
  ``call``, ``check_call`` or ``check_output`` called, ``multiprocessing`` imported,
  ``ProcessPoolExecutor`` or ``os.fork`` named.
- ``keras``: ``keras``, ``tensorflow`` or ``jax`` imported, or ``KerasTrainable`` or
  ``event_accumulator`` (TensorBoard's reader, which imports TensorFlow) named.
- ``dask``: ``dask``, ``distributed``, ``phobbit.execution.dask`` imported or
  ``DaskExecutor`` named.
- ``benchmark``: a script's ``main`` called in this process (``module.main(...)`` of a
  module other than ``cli``: a benchmark of ``benchmarks/`` run end to end).

The reading errs towards slow: code that names a mechanism but does not reach it costs
the fast lane a test, never a wrong lane. What it could miss (a process started by a name
it does not know) is caught when the test runs: ``conftest.mechanisms_declared`` fails a
test in the fast lane that starts a process or imports Keras or TensorFlow.
"""

from __future__ import annotations

import ast
import functools
import inspect
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parent

MECHANISMS = ("pool", "subprocess", "keras", "dask", "benchmark")
"""The markers set by mechanism; each marked test is ``slow`` too."""

HEAVY_MODULES = ("keras", "tensorflow", "jax")
"""Modules a test of the fast lane must not import (checked as it runs)."""

HELPER_MODULES = frozenset(
    {"helpers", "gates", "synthetic", "backend_probes", "keras_models", "everyday_keras"}
)
"""The shared modules under ``tests/`` whose functions are read when a test names them."""

_POOL_NAMES = frozenset({"LocalExecutor"})
_TUNERS = frozenset({"ParallelHyperband", "Hyperband"})
_SUBPROCESS_NAMES = frozenset({"multiprocessing", "ProcessPoolExecutor", "Popen", "fork"})
_SUBPROCESS_CALLS = frozenset({"run", "call", "check_call", "check_output"})
_KERAS_NAMES = frozenset({"KerasTrainable", "event_accumulator"})
_KERAS_MODULES = frozenset({"keras", "tensorflow", "jax"})
_DASK_NAMES = frozenset({"DaskExecutor"})
_DASK_MODULES = frozenset(
    {"dask", "distributed", "phobbit.execution.dask", "phobbit.dask_executor"}
)
_KNOWN: dict[tuple[str, str], frozenset[str]] = {}
"""The mechanisms of each module-level definition read so far (what it names included)."""

_CLI_CALLEES = frozenset({"main", "phobbit"})
_SCRIPT_MAIN = "<script>.main"


def of(item: pytest.Item) -> set[str]:
    """The mechanisms ``item`` uses (a subset of ``MECHANISMS``)."""
    found: set[str] = set()
    function = getattr(item, "function", None)
    if function is None:
        return found
    module = sys.modules.get(function.__module__)
    if module is None:
        return found
    reader = _Reader(frozenset())
    owner = getattr(item, "cls", None)
    reader.read_name(module, owner.__name__ if owner is not None else function.__name__)
    fixtureinfo = getattr(item, "_fixtureinfo", None)
    for definitions in getattr(fixtureinfo, "name2fixturedefs", {}).values():
        for definition in definitions:
            reader.read_function(getattr(definition, "func", None))
    found |= reader.found
    for marker in item.iter_markers():
        if marker.name in MECHANISMS:  # a mark set by hand counts as well
            found.add(marker.name)
    return found


class _Reader:
    """Walks code and what it names, adding the mechanisms it finds to ``found``.

    ``reading``: the definitions being read further up (a name among them is a cycle:
    ``cut`` says that what was found is not all, so it is not remembered).
    """

    def __init__(self, reading: frozenset[tuple[str, str]]) -> None:
        self.found: set[str] = set()
        self.reading = reading
        self.cut = False

    def read_function(self, function: Any) -> None:
        """Reads a fixture's function, if it is defined under ``tests/``."""
        function = inspect.unwrap(function) if callable(function) else None
        module = sys.modules.get(getattr(function, "__module__", ""), None)
        if module is None or not _under_tests(module):
            return
        if function.__name__ in _definitions(module):
            self.read_name(module, function.__name__)
        else:  # a function that is not at module level: read its own source
            try:
                source = textwrap.dedent(inspect.getsource(function))
            except (OSError, TypeError):
                return
            self.read_nodes(module, ast.parse(source).body)

    def read_name(self, module: ModuleType, name: str) -> None:
        """Reads the module-level definitions of ``name`` in ``module`` (once a session)."""
        key = (module.__name__, name)
        if key in _KNOWN:
            self.found |= _KNOWN[key]
        elif key in self.reading:
            self.cut = True
        elif name in _definitions(module):
            reader = _Reader(self.reading | {key})
            reader.read_nodes(module, _definitions(module)[name])
            if not reader.cut:
                _KNOWN[key] = frozenset(reader.found)
            self.found |= reader.found
            self.cut |= reader.cut

    def read_nodes(self, module: ModuleType, nodes: list[ast.AST]) -> None:
        imported = _imports(module)
        for node in nodes:
            self.visit(module, node, imported, frozenset())

    def visit(
        self, module: ModuleType, node: ast.AST, imported: dict[str, str], varargs: frozenset
    ) -> None:
        """Reads ``node`` and its children; ``varargs``: the ``*args`` names in scope."""
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            if node.args.vararg is not None:
                varargs = varargs | {node.args.vararg.arg}
        self.read_node(module, node, imported, varargs)
        for child in ast.iter_child_nodes(node):
            self.visit(module, child, imported, varargs)

    def read_node(
        self, module: ModuleType, node: ast.AST, imported: dict[str, str], varargs: frozenset
    ) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                self.imported(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module:
            self.imported(node.module)
            for alias in node.names:
                self.named(alias.name)
        elif isinstance(node, ast.Attribute):
            self.named(node.attr)
        elif isinstance(node, ast.Call):
            self.called(node, varargs)
        elif isinstance(node, ast.Name):
            self.named(node.id)
            source = imported.get(node.id)
            if source is not None:
                self.imported(source)
                if source in HELPER_MODULES and node.id != "tuner":
                    helper = sys.modules.get(source)
                    if helper is not None:
                        self.read_name(helper, node.id)
            else:
                self.read_name(module, node.id)

    def imported(self, module: str) -> None:
        top = module.split(".")[0]
        if top in _KERAS_MODULES:
            self.found.add("keras")
        if top in _DASK_MODULES or module in _DASK_MODULES:
            self.found.add("dask")
        if top == "multiprocessing":
            self.found.add("subprocess")

    def named(self, name: str) -> None:
        if name in _POOL_NAMES:
            self.found.add("pool")
        if name in _SUBPROCESS_NAMES:
            self.found.add("subprocess")
        if name in _KERAS_NAMES:
            self.found.add("keras")
        if name in _DASK_NAMES:
            self.found.add("dask")

    def called(self, call: ast.Call, varargs: frozenset) -> None:
        callee = _callee(call)
        function = call.func
        if (
            isinstance(function, ast.Attribute)
            and function.attr in _SUBPROCESS_CALLS
            and isinstance(function.value, ast.Name)
            and function.value.id == "subprocess"
        ):
            self.found.add("subprocess")
        keywords = {k.arg: k.value for k in call.keywords}
        if callee in _TUNERS and "executor" not in keywords:
            self.found.add("pool")
        elif callee == "tuner" and "real" in keywords:
            if not (
                isinstance(keywords["real"], ast.Constant) and keywords["real"].value is False
            ):
                self.found.add("pool")
        elif callee in _CLI_CALLEES and _trains(call, varargs):
            self.found.add("pool")
        elif callee == _SCRIPT_MAIN:
            self.found.add("benchmark")


def _callee(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        if call.func.attr == "main" and not (
            isinstance(call.func.value, ast.Name) and call.func.value.id == "cli"
        ):
            return _SCRIPT_MAIN  # another module's main: a benchmark's
        return call.func.attr
    return None


def _trains(call: ast.Call, varargs: frozenset) -> bool:
    """Whether a command line run in this process may be ``train``."""
    if not call.args:
        return False
    first = call.args[0]
    if isinstance(first, ast.List) and first.elts:
        first = first.elts[0]
    if isinstance(first, ast.Constant):
        return first.value == "train"
    # A wrapper that passes on its own *args: its callers' words are read where they call it.
    return not any(isinstance(n, ast.Name) and n.id in varargs for n in ast.walk(first))


def _under_tests(module: ModuleType) -> bool:
    path = getattr(module, "__file__", None)
    return path is not None and TESTS in Path(path).resolve().parents


@functools.cache
def _tree(module: ModuleType) -> ast.Module:
    try:
        return ast.parse(inspect.getsource(module))
    except (OSError, TypeError):
        return ast.Module(body=[], type_ignores=[])


@functools.cache
def _definitions(module: ModuleType) -> dict[str, list[ast.AST]]:
    """The module-level statements that define each name: functions, classes, values."""
    found: dict[str, list[ast.AST]] = {}
    for node in _tree(module).body:
        for name in _defined(node):
            found.setdefault(name, []).append(node)
    return found


def _defined(node: ast.AST) -> Iterator[str]:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        yield node.name
    elif isinstance(node, ast.Assign):
        for target in node.targets:
            yield from (n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    elif isinstance(node, ast.AnnAssign | ast.AugAssign) and isinstance(node.target, ast.Name):
        yield node.target.id


@functools.cache
def _imports(module: ModuleType) -> dict[str, str]:
    """Each module-level imported name, with the module it comes from."""
    found: dict[str, str] = {}
    for node in _tree(module).body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                found[alias.asname or alias.name.split(".")[0]] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                found[alias.asname or alias.name] = node.module
    return found
