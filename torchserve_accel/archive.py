"""What a model's archive module hands torch-model-archiver (build time only: workers never import this)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ArchiveFiles:
    """``--serialized-file`` and ``--extra-files`` for one archive, all inside the build's staging directory."""

    serialized_file: Path | None
    extra_files: list[Path] = field(default_factory=list)
