"""On-disk engine cache shared by every worker of one GPU type.

The key covers everything that makes a compiled engine valid: GPU model and compute capability, torch /
CUDA / cuDNN / Triton / TensorRT versions, a hash of the weights, the batch buckets, dtype and backend
options. The first worker to need an entry builds it under an exclusive file lock; workers that start
meanwhile wait on the lock and then load the finished entry, so one GPU type compiles once.

Layout: ``<root>/<key>/`` holds ``key.json`` (what the key was made of), ``READY`` once built, the
Inductor/Triton cache (``inductor/``) and backend files (e.g. ``engine.plan`` for TensorRT).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable, Iterator

import torch


def default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "torchserve-accel" / "engines"


def software_fingerprint(device: torch.device) -> dict:
    """What compiled artifacts depend on besides the model: card, driver-facing libraries, compilers."""
    fields = {"torch": torch.__version__, "cuda": torch.version.cuda, "device_type": device.type}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        fields.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                      cudnn=torch.backends.cudnn.version())
    try:
        import triton

        fields["triton"] = triton.__version__
    except ImportError:
        pass
    try:
        import tensorrt

        fields["tensorrt"] = tensorrt.__version__
    except ImportError:
        pass
    return fields


class EngineCache:
    def __init__(self, root: Path, key_fields: dict):
        self.key_fields = dict(key_fields)
        blob = json.dumps(self.key_fields, sort_keys=True, default=str).encode()
        self.key = hashlib.sha256(blob).hexdigest()[:20]
        self.dir = Path(root) / self.key

    @property
    def ready(self) -> bool:
        return (self.dir / "READY").exists()

    def path(self, name: str) -> Path:
        return self.dir / name

    @contextlib.contextmanager
    def building(self, progress: Callable[[str], None] = print) -> Iterator["EngineCache"]:
        """Hold the entry while building or loading it; mark it READY when the body succeeds.

        Points Inductor's (and so Triton's) on-disk cache at this entry, so a warm entry skips code
        generation and autotuning.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "key.json").write_text(json.dumps(self.key_fields, indent=1, sort_keys=True, default=str))
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(self.dir / "inductor")
        # Without this Inductor keeps Triton kernels per device index: GPU 1's first worker would recompile
        # what GPU 0's built. Triton's own key covers the architecture.
        os.environ["TRITON_CACHE_DIR"] = str(self.dir / "triton")
        if self.ready:
            progress(f"engine cache hit: {self.dir}")
            yield self
            return
        t0 = time.perf_counter()
        with open(self.dir / ".lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                progress(f"another worker is building engine {self.key}; waiting for it")
                fcntl.flock(lock, fcntl.LOCK_EX)
                progress(f"waited {time.perf_counter() - t0:.0f} s for engine {self.key}")
            if self.ready:
                progress(f"engine cache hit after wait: {self.dir}")
            else:
                progress(f"engine cache miss: building into {self.dir} (first build on this GPU type takes minutes)")
            yield self
            (self.dir / "READY").write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


