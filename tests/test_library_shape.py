"""The shape of the library, checked from its source: no import cycles, workers import no build-time or tool code,
and every model has the same parts behind an entry file of the same form."""

from __future__ import annotations

import ast
import importlib
import inspect
import typing
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LIBRARY = REPO / "torchserve_accel"
ENTRY_FILES = {"resnet_handler": "resnet", "bert_handler": "bert"}
MODELS = ("resnet", "bert")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def library_modules() -> dict[str, Path]:
    return {module_name(p): p for p in LIBRARY.rglob("*.py")}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """Library modules ``path`` imports anywhere in its body (functions included: a lazy import is still a
    dependency)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                     for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in modules)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = library_modules()
    return {name: imports_of(path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for child in sorted(graph.get(node, ())):
            if state.get(child) == 1:
                return path[path.index(child):] + [child]
            if child not in state:
                cycle = visit(child)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def closure(start: set[str], graph: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), list(start)
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return seen


def test_the_library_has_no_import_cycles():
    graph = import_graph()
    assert "torchserve_accel.bert.runner" in graph and graph["torchserve_accel.bert.runner"]  # the walk sees imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_check_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("entry", sorted(ENTRY_FILES))
def test_workers_import_neither_build_time_nor_tool_code(entry):
    """Everything an entry file can reach, lazy imports included: no archive module, no tools, no test helpers."""
    graph = import_graph()
    reached = closure(imports_of(REPO / "handlers" / f"{entry}.py", library_modules()), graph)
    assert f"torchserve_accel.{ENTRY_FILES[entry]}.runner" in reached
    forbidden = [m for m in reached if m.endswith(".archive") or ".tools" in m or m == "torchserve_accel.archive"]
    assert not forbidden, forbidden


@pytest.mark.parametrize("entry", sorted(ENTRY_FILES))
def test_entry_files_are_thin_and_of_one_shape(entry):
    from torchserve_accel.serving.handler import ModelHandler

    source = (REPO / "handlers" / f"{entry}.py").read_text()
    assert len(source.splitlines()) <= 45
    module = importlib.import_module(entry)
    # TorchServe takes the one class defined in the module (there is no module-level ``handle``).
    classes = [c for _, c in inspect.getmembers(module, inspect.isclass) if c.__module__ == module.__name__]
    assert len(classes) == 1 and issubclass(classes[0], ModelHandler) and not hasattr(module, "handle")
    model = ENTRY_FILES[entry]
    assert classes[0].load is importlib.import_module(f"torchserve_accel.{model}.runner").load
    assert classes[0].options.__module__ == f"torchserve_accel.{model}.options"
    assert set(vars(classes[0])) - {"__module__", "__qualname__", "__doc__", "__firstlineno__",
                                    "__static_attributes__"} == {"options", "load"}


@pytest.mark.parametrize("model", MODELS)
def test_every_model_has_the_same_four_parts(model):
    options = importlib.import_module(f"torchserve_accel.{model}.options")
    runner = importlib.import_module(f"torchserve_accel.{model}.runner")
    archive = importlib.import_module(f"torchserve_accel.{model}.archive")
    engines = importlib.import_module(f"torchserve_accel.{model}.engines")
    assert list(inspect.signature(runner.load).parameters) == ["model_dir", "options", "device", "batch_size"]
    runner_class = typing.get_type_hints(runner.load)["return"]
    assert runner_class.__module__ == runner.__name__ and {"parse", "run"} <= set(vars(runner_class))
    assert list(inspect.signature(archive.prepare_archive_files).parameters)[:3] == ["staging_dir", "source", "log"]
    option_classes = [c for _, c in inspect.getmembers(options, inspect.isclass) if c.__module__ == options.__name__]
    (options_class,) = option_classes
    hints = typing.get_type_hints(options_class)
    assert {"backend", "precision", "cuda_graphs", "engine_cache_dir"} <= set(hints)
    assert set(typing.get_args(hints["backend"])) == set(engines.REGISTRY.names)  # every backend, and auto
    # the shared precisions, in the same order; a model may add its own after them (BERT: fp8)
    assert typing.get_args(hints["precision"])[:3] == ("fp16", "bf16", "fp32")
