"""``pip install .`` installs the library and the ``torchserve-accel`` command, and ``build`` works from such an
install where the repository is not there: the wheel ships the TorchServe entry files, the model-configs, the base
config.properties and the stock-style baseline handler (setup.py's build step), and the tools find them inside it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHIPPED = ["config.properties", "handlers/resnet_handler.py", "handlers/bert_handler.py",
           "archiver_configs/resnet101.yaml", "archiver_configs/bert_large.yaml",
           "benchmarks/baseline_handler/baseline_handler.py", "benchmarks/baseline_handler/model-config.yaml"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of what setup.py reads (the build leaves build/ and egg-info behind it)."""
    source = tmp_path_factory.mktemp("source")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "data")
    for name in ("setup.py", "MANIFEST.in", "config.properties"):
        shutil.copy2(REPO / name, source / name)
    for name in ("handlers", "archiver_configs", "benchmarks/baseline_handler", "torchserve_accel"):
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-w",
                           str(out)], cwd=source, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = out.glob("torchserve_accel-*.whl")
    return built


def test_the_wheel_holds_the_library_the_tool_data_and_the_command(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
        for path in SHIPPED:
            assert archive.read(f"torchserve_accel/tools/data/{path}") == (REPO / path).read_bytes(), path
    assert "[console_scripts]" in scripts and "torchserve-accel = torchserve_accel.tools.cli:main" in scripts
    assert {"torchserve_accel/__main__.py", "torchserve_accel/tools/cli.py", "torchserve_accel/resnet/runner.py",
            "torchserve_accel/resnet/imagenet_classes.json", "torchserve_accel/bert/common_words.txt"} <= names
    assert not any(n.startswith(("handlers/", "scripts/", "tests/", "benchmarks/")) for n in names)


def test_an_install_finds_its_own_copies(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = ("from torchserve_accel.tools import build, paths\n"
             "print(paths.CHECKOUT, paths.BASE_CONFIG, *build.archive_inputs('resnet101')[1:], sep='\\n')\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    data = site / "torchserve_accel" / "tools" / "data"
    assert done.stdout.split() == ["None", str(data / "config.properties"), str(data / "handlers/resnet_handler.py"),
                                   str(data / "archiver_configs/resnet101.yaml")]
    command = subprocess.run([str(site / "bin" / "torchserve-accel"), "build", "--help"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
    assert command.returncode == 0 and "usage: torchserve-accel build" in command.stdout, command.stderr
