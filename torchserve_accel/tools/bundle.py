"""The library inside an archive: which of its files a worker needs, and what they need installed.

A directory given to torch-model-archiver's ``--extra-files`` contributes its contents to the archive root with
their subfolders kept, and TorchServe puts the unpacked archive root on the worker's ``sys.path`` (PYTHONPATH,
ahead of site-packages). So a staging directory holding ``torchserve_accel/...`` ships the package tree, and a
worker imports that copy, whatever is (or is not) installed next to TorchServe. What is left out: the tools (the
``torchserve-accel`` command), the build-time modules (``archive.py``, the made-up BERT vocabulary) and caches;
tests/test_tools_bundle.py checks that everything an entry file can import is in.

``requirements.txt``: the distributions the bundled library imports, taken from the package's own
``install_requires`` (setup.py in a checkout, the installed metadata otherwise) minus what only TorchServe and the
tools use. TorchServe installs it only with ``install_py_dep_per_model=true``.
"""

from __future__ import annotations

import ast
import fnmatch
import re
import shutil
from importlib import metadata
from pathlib import Path

import torchserve_accel
from torchserve_accel.tools.paths import CHECKOUT

PACKAGE = "torchserve_accel"
DISTRIBUTION = "torchserve-accel"
# Never imported by a worker (paths inside the package, as fnmatch patterns): the command and its data,
# `python -m torchserve_accel`, the build-time modules, caches.
LEFT_OUT = ("tools", "__main__.py", "archive.py", "*/archive.py", "bert/vocab.py", "bert/common_words.txt",
            "__pycache__", "*/__pycache__", "*.pyc")
# install_requires entries the bundled library does not import: TorchServe's side and the tools'.
NOT_FOR_WORKERS = {"torchserve", "torch-model-archiver", "pyyaml", "requests", "prometheus-client", "psutil",
                   "nvidia-ml-py"}


def package_dir() -> Path:
    """The ``torchserve_accel`` package these tools run from (the checkout's, or the installed one)."""
    return Path(torchserve_accel.__file__).resolve().parent


def _left_out(root: Path):
    def ignore(directory: str, names: list[str]) -> set[str]:
        inside = Path(directory).relative_to(root)
        return {name for name in names if any(fnmatch.fnmatch((inside / name).as_posix(), p) for p in LEFT_OUT)}

    return ignore


def stage_library(staging_dir: Path) -> Path:
    """Copy what workers need of the library into ``staging_dir/torchserve_accel``; returns ``staging_dir``
    (the directory to hand ``--extra-files``)."""
    staging_dir = Path(staging_dir)
    shutil.copytree(package_dir(), staging_dir / PACKAGE, ignore=_left_out(package_dir()))
    return staging_dir


def _name(requirement: str) -> str:
    """The normalized distribution name of a requirement line (``"Pillow>=9"`` -> ``"pillow"``)."""
    return re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1)).lower()


def install_requires() -> list[str]:
    """The package's ``install_requires``: setup.py's literal list in a checkout, else the installed metadata
    (without extras)."""
    if CHECKOUT is not None:
        tree = ast.parse((CHECKOUT / "setup.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "install_requires":
                return list(ast.literal_eval(node.value))
        raise ValueError(f"{CHECKOUT / 'setup.py'} has no literal install_requires")
    return [r for r in metadata.requires(DISTRIBUTION) or [] if "extra ==" not in r]


def worker_requirements() -> list[str]:
    """What the bundled library needs installed, as requirement lines (version ranges kept)."""
    return [r for r in install_requires() if _name(r) not in NOT_FOR_WORKERS]


def write_requirements(path: Path) -> Path:
    path = Path(path)
    path.write_text(f"# what the bundled {PACKAGE} library imports ({DISTRIBUTION} {torchserve_accel.__version__})\n"
                    + "".join(f"{r}\n" for r in worker_requirements()))
    return path
