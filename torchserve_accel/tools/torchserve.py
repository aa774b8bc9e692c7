"""Start, drive and stop one TorchServe instance, with token auth on.

An instance lives in a run directory:
    config.properties   the base config.properties with this instance's ports and model store
    key_file.json       written by TorchServe (it writes it to the directory it starts in)
    instance.json       ports, model store and Java pid, so later commands find the instance
    tmp/                TMPDIR and java.io.tmpdir: TorchServe's pid file, worker sockets, unpacked archives
    logs/, torchserve.out

Several instances can run at once: each has its own run directory, TMPDIR and ports.

    torchserve-accel start [--model-store DIR] [--ports free | --ports 8080,8081,8082] [--mps [auto|on|off]]
                           [--python /opt/torchserve/bin/python]   # TorchServe and its workers run with that Python
    torchserve-accel register resnet101.mar --batch-size 8 --max-batch-delay 50   # a name in the store
    torchserve-accel scale resnet101 --min 2 --max 2
    torchserve-accel describe resnet101
    torchserve-accel unregister resnet101
    torchserve-accel stop
(each with ``--run-dir DIR``; ``python scripts/tsctl.py ...`` runs the same commands; register, scale, describe and
unregister drive any other TorchServe with ``--management-url URL --token-file FILE`` instead: endpoints.py).
``scale`` (when it lowers the worker count) and ``unregister`` drain the model first unless ``--force``: drain.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
import requests
import requests.adapters

from torchserve_accel.tools import Log, drain
from torchserve_accel.tools.commands import Commands
from torchserve_accel.tools.launch import (
    TorchServeError, derive_config, find_java_home, free_ports, parse_ports, port_in_use, port_of, read_properties,
)
from torchserve_accel.tools.mps import MpsDaemon, MpsError, mps_decision
from torchserve_accel.tools.paths import BASE_CONFIG, DEFAULT_MODEL_STORE, DEFAULT_RUN_DIR, check_store_name
from torchserve_accel.tools.polling import wait_until

TOKEN_FAILED = "Token Authorization failed"
UNREGISTER_ATTEMPTS = 3  # DELETEs through the frontend's 500 race (TorchServe.unregister)


@dataclass
class InstanceInfo:
    inference_port: int
    management_port: int
    metrics_port: int
    model_store: str
    pid: int | None = None
    grpc_ports: tuple[int, int] = (7070, 7071)  # TorchServe always starts its gRPC servers too
    host: str = "127.0.0.1"
    mps: bool = False  # workers are clients of an MPS daemon private to this run directory (mps.py)
    python: str | None = None  # the interpreter TorchServe and its workers run with


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (an exited child not yet reaped) counts as gone."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


class TorchServe:
    """One TorchServe instance rooted at ``run_dir``: lifecycle plus authenticated API calls.

    Requests carry ``Authorization: Bearer <key>`` from ``run_dir/key_file.json``. When TorchServe refuses a
    key (expired keys are refused like wrong ones: 400 "Token Authorization failed"), the key is rotated
    through the management API with the API key and the request is retried once. (``endpoints.TorchServeAt``: the
    same calls to a TorchServe given by URLs and keys.)
    """

    remote_allowed = False  # the load generator drives loopback addresses only, unless this says otherwise

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
                raise TorchServeError(f"no TorchServe instance in {self.run_dir} (run `torchserve-accel start` "
                                      "first)")
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
        python: Path | str | None = None,
    ) -> None:
        """Start TorchServe in ``run_dir`` and wait until /ping answers "Healthy".

        ``ports``: (inference, management, metrics[, grpc inference, grpc management]); None takes all five from
        the base config. Given three, the two gRPC ports (TorchServe always binds them) are chosen free.
        ``mps``: start an NVIDIA MPS control daemon for this instance first and make every worker its client
        (``mps.py``); ``stop`` quits it. ``"auto"``: only where the control program and a GPU are there
        (``mps_decision``), and a daemon that fails to start is logged and TorchServe starts without it.
        ``python``: the interpreter TorchServe and its workers run with (default: this one); it needs TorchServe
        (``ts``), and the ``torchserve_accel`` library unless the archives carry it.
        """
        if (self.run_dir / "instance.json").exists() and self.pid_alive():
            raise TorchServeError(f"TorchServe already runs from {self.run_dir} (pid {self.info.pid}); stop it first")
        ports = self._choose_ports(ports)
        model_store = Path(model_store).resolve()
        if not model_store.is_dir():
            raise TorchServeError(f"model store {model_store} is not a directory")
        python = check_python(python or sys.executable)
        java_home = find_java_home()
        log(f"Java: {java_home or shutil.which('java')}")

        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(exist_ok=True)
        for stale in ("key_file.json", "instance.json"):
            (self.run_dir / stale).unlink(missing_ok=True)
        config = self.run_dir / "config.properties"
        derive_config(self.base_config, config, {
            "inference_address": f"http://127.0.0.1:{ports[0]}",
            "management_address": f"http://127.0.0.1:{ports[1]}",
            "metrics_address": f"http://127.0.0.1:{ports[2]}",
            "grpc_inference_port": str(ports[3]),
            "grpc_management_port": str(ports[4]),
            "model_store": str(model_store),
            **(config_overrides or {}),
        })
        env, mps = self._environment(java_home, mps, log)
        # Workers run under the interpreter that runs TorchServe (it passes its sys.executable to the frontend).
        if python != sys.executable:
            log(f"Python: {python}")
        cmd = [python, "-c", "from ts.model_server import start; start()",
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
                                  mps=mps, python=python)
        (self.run_dir / "instance.json").write_text(json.dumps(asdict(self._info), indent=1))
        self._keys = None
        self._wait_healthy(timeout, log)
        log(f"TorchServe is up (pid {pid})")

    def _choose_ports(self, ports: tuple[int, ...] | None) -> tuple[int, ...]:
        if ports is None:
            base = read_properties(self.base_config)
            ports = tuple(port_of(base[k]) for k in ("inference_address", "management_address", "metrics_address"))
            ports += (int(base.get("grpc_inference_port", 7070)), int(base.get("grpc_management_port", 7071)))
        elif len(ports) == 3:
            ports = tuple(ports) + free_ports(2)
        if len(ports) != 5 or len(set(ports)) != 5:
            raise TorchServeError(f"need five distinct ports (3 HTTP + 2 gRPC), got {ports}")
        busy = [p for p in ports if port_in_use(p)]
        if busy:
            raise TorchServeError(f"port(s) {busy} on 127.0.0.1 already in use: stop what holds them "
                                  "or choose other ports (--ports free)")
        return ports

    def _environment(self, java_home: str | None, mps: bool | str, log: Log) -> tuple[dict[str, str], bool]:
        """TorchServe's environment (its TMPDIR and logs in the run directory, Java, MPS) and whether MPS is on."""
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
        if not mps:
            return env, False
        try:
            return MpsDaemon(self.run_dir).start(env, log=log), True
        except (MpsError, OSError, subprocess.TimeoutExpired) as err:
            if not auto:
                raise TorchServeError(f"--mps: {err}") from None
            log(f"MPS off: the daemon did not start ({err})")
            return env, False

    def _wait_healthy(self, timeout: float, log: Log) -> None:
        def healthy() -> bool:
            if not self.pid_alive():
                MpsDaemon(self.run_dir).stop(log=log)  # nothing else of this instance is left running
                raise TorchServeError(f"TorchServe exited during start-up\n{self.log_tail()}")
            try:
                answer = self._session.get(self.url("inference", "/ping"), timeout=2,
                                           headers=self._auth_header("inference"))
                return answer.status_code == 200 and "Healthy" in answer.text
            except (requests.ConnectionError, requests.Timeout, TorchServeError, KeyError):
                return False

        if not wait_until(healthy, timeout, on_wait=lambda s: log(f"  waiting for TorchServe ({s:.0f} s) ...")):
            self.stop(log=log)
            raise TorchServeError(f"TorchServe did not answer /ping within {timeout:.0f} s\n{self.log_tail()}")

    def pid_alive(self) -> bool:
        try:
            pid = self.info.pid
        except TorchServeError:
            return False
        return pid is not None and pid_alive(pid)

    def worker_pids(self) -> list[int]:
        """The frontend's child processes: its Python workers."""
        try:
            pid = self.info.pid
            return [child.pid for child in psutil.Process(pid).children()] if pid is not None else []
        except (psutil.NoSuchProcess, TorchServeError):
            return []

    def stop(self, timeout: float = 60.0, log: Log = print) -> None:
        """Stop the instance: SIGTERM to the frontend (it stops its workers), SIGKILL after ``timeout``."""
        if not (self.run_dir / "instance.json").exists():
            log(f"no TorchServe instance in {self.run_dir}")
            MpsDaemon(self.run_dir).stop(log=log)  # left over from a start that failed half way
            return
        pid = self.info.pid
        if pid is not None and self.pid_alive():
            log(f"stopping TorchServe (pid {pid}) ...")
            workers = self.worker_pids()
            os.kill(pid, signal.SIGTERM)
            if not wait_until(lambda: not self.pid_alive(), timeout, interval=0.2):
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

    # -- keys

    def keys(self) -> dict[str, str]:
        """{"management": ..., "inference": ..., "API": ...} from key_file.json."""
        if self._keys is None:
            path = self.run_dir / "key_file.json"
            if not path.exists():
                raise TorchServeError(f"no {path}: TorchServe is not running from {self.run_dir} "
                                      "(or runs with token auth off)")
            def read() -> dict | None:
                try:
                    return json.loads(path.read_text())
                except json.JSONDecodeError:
                    return None

            data = wait_until(read, timeout=1.0, interval=0.05)  # TorchServe rewrites the file on rotation
            if data is None:
                raise TorchServeError(f"{path} does not hold the keys (JSON)")
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
            key = self.keys().get(api)
            auth = {"Authorization": f"Bearer {key}"} if key else {}
            answer = self._session.request(method, url, timeout=timeout, headers={**headers, **auth}, **kwargs)
            if attempt == 0 and self.key_refused(answer):
                self.rotate_key(api, refused_key=key)
                continue
            break
        return answer

    def key_refused(self, answer: requests.Response) -> bool:
        """TorchServe's answer to a missing, wrong or expired key."""
        return answer.status_code in (400, 401) and TOKEN_FAILED in answer.text

    def frontend_pid(self) -> int | None:
        """The Java frontend's pid on this machine (None when it is not known here)."""
        return self.info.pid

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

    def unregister(self, model_name: str, log: Log = print) -> dict:
        """DELETE the model, at once. TorchServe 0.12 can answer it 500 ('Cannot invoke
        "org.pytorch.serve.job.Job.isControlCmd()" because "job" is null', a race in its frontend seen with requests
        still queued) with the model gone or still there: gone is done (logged), still there is asked again
        (UNREGISTER_ATTEMPTS in all)."""
        attempt = 1
        while True:
            try:
                return self._json("management", "DELETE", f"/models/{model_name}")
            except TorchServeError as err:
                if err.status is None or err.status < 500:
                    raise
                if not self.is_registered(model_name):
                    log(f"{model_name} unregistered (TorchServe answered {err.status} and removed it: {err})")
                    return {"status": f'Model "{model_name}" unregistered'}
                if attempt == UNREGISTER_ATTEMPTS:
                    raise TorchServeError(f"{err} ({attempt} attempts; {model_name} is still registered)",
                                          err.status, err.body) from None
                log(f"{model_name}: TorchServe answered the unregister {err.status} and kept the model; asking "
                    f"again ({err})")
                time.sleep(0.5)
                attempt += 1

    def is_registered(self, model_name: str) -> bool:
        """Whether describe knows the model (404: it does not; any other failure is raised)."""
        try:
            self.describe(model_name)
        except TorchServeError as err:
            if err.status == 404:
                return False
            raise
        return True

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


def check_python(python: Path | str) -> str:
    """``python`` as an absolute path, once it is known to run and to import TorchServe (``ts``)."""
    path = shutil.which(str(python)) or str(python)
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise TorchServeError(f"Python {python}: not an executable file")
    path = os.path.abspath(path)  # not resolved: a virtual environment's python is a link to its base's
    if path == os.path.abspath(sys.executable):
        return sys.executable
    try:
        done = subprocess.run([path, "-c", "import ts.model_server"], capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise TorchServeError(f"Python {python} did not run: {err}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise TorchServeError(f"Python {python} cannot run TorchServe ({last}): install torchserve there")
    return path


def _message(answer: requests.Response) -> str:
    try:
        return answer.json().get("message", answer.text.strip())
    except ValueError:
        return answer.text.strip()


def worker_summary(description: dict) -> str:
    workers = description.get("workers", [])
    states = ", ".join(f"{w.get('id')}:{w.get('status')}{' gpu' if w.get('gpu') else ''}" for w in workers)
    return (f"{description.get('modelName')} v{description.get('modelVersion')}: {len(workers)} worker(s) "
            f"[{states}] min={description.get('minWorkers')} max={description.get('maxWorkers')} "
            f"batchSize={description.get('batchSize')} maxBatchDelay={description.get('maxBatchDelay')}ms")


# ---------------------------------------------------------------------------------------------- command line


DRAIN_DETAILS = """{what}

TorchServe 0.12 drops the requests a model still holds when it loses workers (queued ones are never answered).
This command first waits until the model has none, queued or in flight, printing what is left while it waits;
past --drain-timeout it stops with exit status 1. In flight is counted from the metrics API (the run directory's,
or --metrics-url); without it only the queue is seen. --force skips the wait.{steps}"""


def add_commands(commands: Commands) -> None:
    p = commands.add("start", _start, "start TorchServe and wait for /ping", instance=True)
    p.add_argument("--model-store", type=Path, default=DEFAULT_MODEL_STORE)
    p.add_argument("--ports", type=parse_ports, default=None,
                   help="INFERENCE,MANAGEMENT,METRICS[,GRPC_INFERENCE,GRPC_MANAGEMENT] or 'free' "
                        "(default: from config.properties)")
    p.add_argument("--config", type=Path, default=BASE_CONFIG, help="base config.properties")
    p.add_argument("--timeout", type=float, default=120)
    p.add_argument("--mps", nargs="?", const="on", default="auto", choices=("auto", "on", "off"),
                   help="run the workers under an NVIDIA MPS daemon private to this instance: auto (default: when "
                        "nvidia-cuda-mps-control and a GPU are there), on (--mps alone; fail if it cannot), off")
    p.add_argument("--python", type=Path, default=None,
                   help="the Python that runs TorchServe and its workers, e.g. an existing TorchServe install's "
                        "(default: this one); archives built without --no-bundle need no torchserve_accel there")

    p = commands.add("stop", lambda ts, a: ts.stop(timeout=a.timeout), "stop TorchServe", instance=True)
    p.add_argument("--timeout", type=float, default=60)

    p = commands.add("register", _register, "register an archive from the model store", instance=True,
                     target="management")
    p.add_argument("url", help="archive name in the model store, e.g. resnet101.mar")
    p.add_argument("--name", default=None)
    p.add_argument("--batch-size", type=int, default=None, help="default: the archive's model-config batchSize")
    p.add_argument("--max-batch-delay", type=int, default=None, help="ms; default: the archive's maxBatchDelay")
    p.add_argument("--initial-workers", type=int, default=1,
                   help="ignored by TorchServe when the archive's model-config sets minWorkers/maxWorkers")
    p.add_argument("--response-timeout", type=int, default=None, help="s; default: the archive's responseTimeout")
    p.add_argument("--asynchronous", action="store_true", help="return before workers are up")

    p = commands.add("scale", _scale, "set a model's worker count", instance=True, target="management",
                     also=("metrics",), details=DRAIN_DETAILS.format(
                         what="set a model's worker count",
                         steps="\nScaling down goes one worker at a time, draining before each step."))
    p.add_argument("name")
    p.add_argument("--min", type=int, required=True, dest="min_worker")
    p.add_argument("--max", type=int, default=None, dest="max_worker")
    p.add_argument("--asynchronous", action="store_true")
    _add_drain_options(p, "scale down at once")

    p = commands.add("describe", _describe, "model status and workers", instance=True, target="management")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")

    p = commands.add("unregister", _unregister, "unregister a model", instance=True, target="management",
                     also=("metrics",), details=DRAIN_DETAILS.format(what="unregister a model", steps=""))
    p.add_argument("name")
    _add_drain_options(p, "unregister at once")

    commands.add("rotate-keys", _rotate_keys, "rotate the management and inference keys", instance=True)


def _add_drain_options(parser: Any, forced: str) -> None:
    parser.add_argument("--drain-timeout", type=float, default=drain.DEFAULT_TIMEOUT, metavar="S",
                        help=f"seconds to wait for draining, in all (default {drain.DEFAULT_TIMEOUT:g}); past "
                             "them nothing more is changed and the exit status is 1")
    parser.add_argument("--force", action="store_true", help=f"do not wait for queued and in-flight requests: "
                                                             f"{forced} (TorchServe may then drop them)")


def _start(ts: TorchServe, args: Any) -> None:
    ts.base_config = args.config
    ts.start(args.model_store, ports=args.ports, timeout=args.timeout, mps=args.mps, python=args.python)


def _named(name: str, what: str = "model name") -> str:
    try:
        return check_store_name(name, what)
    except ValueError as err:
        raise TorchServeError(str(err)) from None


def _register(ts: TorchServe, args: Any) -> None:
    _named(args.url, "archive")
    if args.name is not None:
        _named(args.name)
    print(f"registering {args.url} (loading the model in the workers) ...", flush=True)
    print(ts.register(args.url, args.name, args.batch_size, args.max_batch_delay, args.initial_workers,
                      synchronous=not args.asynchronous, response_timeout=args.response_timeout)["status"])


def _progress(line: str) -> None:
    print(line, flush=True)


def _scale(ts: TorchServe, args: Any) -> None:
    print(drain.scale(ts, _named(args.name), args.min_worker, args.max_worker, timeout=args.drain_timeout,
                      log=_progress, force=args.force, synchronous=not args.asynchronous)["status"])


def _unregister(ts: TorchServe, args: Any) -> None:
    print(drain.unregister(ts, _named(args.name), timeout=args.drain_timeout, log=_progress,
                           force=args.force)["status"])


def _describe(ts: TorchServe, args: Any) -> None:
    description = ts.describe(_named(args.name))
    print(json.dumps(description, indent=1) if args.json else worker_summary(description))


def _rotate_keys(ts: TorchServe, args: Any) -> None:
    ts.rotate_key("management")
    ts.rotate_key("inference")
    print(f"rotated; keys in {ts.run_dir / 'key_file.json'}")
