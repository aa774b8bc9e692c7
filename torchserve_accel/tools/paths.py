"""Where the tools find their files.

The TorchServe entry files (``handlers/*.py``), the model-configs (``archiver_configs/*.yaml``), the base
``config.properties`` and the stock-style baseline handler are the repository's own files. A wheel ships copies
of them under ``torchserve_accel/tools/data/`` with the same relative paths (setup.py's build step), so
``torchserve-accel build`` works where the repository is not; run from a checkout (an editable install, or
``PYTHONPATH=<repo>``), the tools use the checkout's originals. Default run directories and model stores live in
the checkout, or in the current directory for an installed package.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


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
