"""The torch range setup.py declares is the one tested: scripts/lowest_torch.txt pins the lower end of every declared
range (scripts/lowest_torch.sh runs the model tests there), and the releases this suite runs on lie inside the range.
Runs in both environments: .venv (the newest releases) and .venv-lowest (the pins)."""

from __future__ import annotations

import ast
import importlib.metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
RANGED = ("torch", "torchvision", "transformers")


def install_requires() -> dict[str, Requirement]:
    tree = ast.parse((REPO / "setup.py").read_text())
    call = next(node for node in ast.walk(tree)
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setup")
    value = next(kw.value for kw in call.keywords if kw.arg == "install_requires")
    return {req.name: req for req in map(Requirement, ast.literal_eval(value))}


def lowest_pins() -> dict[str, Version]:
    pins = {}
    for line in (REPO / "scripts" / "lowest_torch.txt").read_text().splitlines():
        name, _, version = line.split("#")[0].strip().partition("==")
        if name:
            pins[name] = Version(version)
    return pins


def lower_bound(req: Requirement) -> Version:
    (bound,) = [Version(spec.version) for spec in req.specifier if spec.operator == ">="]
    return bound


@pytest.mark.parametrize("name", RANGED)
def test_lowest_pins_are_the_declared_lower_bounds(name):
    req, pin = install_requires()[name], lowest_pins()[name]
    assert req.specifier.contains(pin), f"{name}=={pin} is outside setup.py's {req}"
    bound = lower_bound(req)
    assert pin.release[: len(bound.release)] == bound.release, (
        f"scripts/lowest_torch.txt pins {name}=={pin}, but setup.py's lower end is {bound}: move one to the other")


@pytest.mark.parametrize("name", RANGED)
def test_this_environment_is_inside_the_declared_range(name):
    installed = Version(importlib.metadata.version(name))
    req = install_requires()[name]
    assert req.specifier.contains(Version(installed.base_version)), f"{name} {installed} is outside setup.py's {req}"
