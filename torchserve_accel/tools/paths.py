"""Where the tools find their files.

The TorchServe entry files (``handlers/*.py``), the model-configs (``archiver_configs/*.yaml``), the base
``config.properties`` and the stock-style baseline handler are the repository's own files. A wheel ships copies
of them under ``torchserve_accel/tools/data/`` with the same relative paths (setup.py's build step), so
``torchserve-accel build`` works where the repository is not; run from a checkout (an editable install, or
``PYTHONPATH=<repo>``), the tools use the checkout's originals. Default run directories and model stores live in
the checkout, or in the current directory for an installed package.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

# A model name, or an archive's name in the model store (x.mar, x.tar.gz, a no-archive directory): no separators, no
# leading dot. TorchServe 0.12 registers names like ".", ".." and "a/b" that can then be neither reached nor
# unregistered, and an absolute path registers whatever directory it names; the tools refuse them first.
STORE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _find_checkout() -> Path | None:
    root = Path(__file__).resolve().parents[2]
    return root if (root / "setup.py").is_file() and (root / "handlers").is_dir() else None


CHECKOUT = _find_checkout()  # the repository this package runs from, or None for an installed package
WORKDIR = CHECKOUT or Path.cwd()
DEFAULT_RUN_DIR = WORKDIR / ".run" / "torchserve"
DEFAULT_MODEL_STORE = WORKDIR / "model_store"


def data_file(relative: str) -> Path:
    """The shipped copy of a repository file (``"handlers/resnet_handler.py"``), else the checkout's. Where neither
    exists, the path it would have, so that errors can name it."""
    shipped = resources.files(__package__) / "data" / relative
    if CHECKOUT is None or (isinstance(shipped, Path) and shipped.is_file()):
        return Path(str(shipped))
    return CHECKOUT / relative


BASE_CONFIG = data_file("config.properties")


def check_store_name(name: str, what: str) -> str:
    """``name`` when it is a plain name (``STORE_NAME``); ValueError naming ``what`` otherwise."""
    if not STORE_NAME.fullmatch(name):
        raise ValueError(f"{what} {name!r}: letters, digits, '_', '-' and '.' only, starting with a letter or digit "
                         "(a name in the model store, not a path)")
    return name
