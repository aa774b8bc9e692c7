"""Security defaults: what the shipped config.properties promises, checked on a real TorchServe started from it,
and weights that load without executing pickled code.

The live checks use the tiny echo archive (the frontend enforces tokens, bindings and URL rules whatever the
model); the archive checks look inside the real ResNet-101 archive.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import requests
import torch

from torchserve_accel.tools.launch import TorchServeError, read_properties
from torchserve_accel.tools.paths import BASE_CONFIG
from torchserve_accel.tools.torchserve import TOKEN_FAILED
from tests.integration.serving import ECHO_HANDLER, ECHO_MODEL, running_torchserve
from tests.integration.test_bad_inputs import model_store

pytestmark = pytest.mark.integration
SHIPPED = read_properties(BASE_CONFIG)
LOOPBACK = "127.0.0.1"
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".pkl", ".pickle", ".ckpt", ".npy", ".joblib")


@pytest.fixture(scope="module")
def secured(tmp_path_factory, echo_store):
    store = model_store(tmp_path_factory.mktemp("security-store"), echo_store / "echo.mar")  # tests add archives
    with running_torchserve(tmp_path_factory.mktemp("security-run"), store) as ts:
        ts.register("echo.mar", "echo", batch_size=1, max_batch_delay=10, initial_workers=1)
        yield ts


# ---------------------------------------------------------------------------------------------- the shipped file


def test_shipped_config_keeps_the_secure_defaults():
    for key in ("inference_address", "management_address", "metrics_address"):
        assert SHIPPED[key].startswith(f"http://{LOOPBACK}:"), key
    assert SHIPPED["grpc_inference_address"] == SHIPPED["grpc_management_address"] == LOOPBACK
    # Token auth is TorchServe's default; nothing here may turn it off.
    assert not {"disable_token_authorization", "enable_token_auth"} & set(SHIPPED)
    assert SHIPPED["allowed_urls"] == "^$"
    assert SHIPPED["install_py_dep_per_model"] == "false"
    assert float(SHIPPED["token_expiration_min"]) <= 60
    assert int(SHIPPED["max_request_size"]) <= 64 << 20 and int(SHIPPED["max_response_size"]) <= 64 << 20
    assert not any(k.startswith(("keystore", "private_key", "certificate")) for k in SHIPPED)  # no secrets in git


def test_instance_config_only_changes_ports_and_store(secured):
    """`torchserve-accel start` copies config.properties per instance; everything but addresses' ports and the store
    is unchanged."""
    derived = read_properties(secured.run_dir / "config.properties")
    for key, value in SHIPPED.items():
        if key.endswith("_address"):
            assert derived[key].rsplit(":", 1)[0] == value.rsplit(":", 1)[0], key
        elif key not in ("model_store", "grpc_inference_port", "grpc_management_port"):
            assert derived[key] == value, key


# ---------------------------------------------------------------------------------------------- token auth


def test_inference_api_refuses_missing_and_wrong_keys(secured):
    keys = secured.keys()
    url = secured.url("inference", "/predictions/echo")
    refused = [{}, {"Authorization": "Bearer not-a-key"}, {"Authorization": keys["inference"]},
               {"Authorization": f"Bearer {keys['management']}"}, {"Authorization": f"Bearer {keys['API']}x"}]
    for headers in refused:
        answer = requests.post(url, data=b"x", timeout=30,
                               headers={"Content-Type": "application/octet-stream", **headers})
        assert answer.status_code == 400 and TOKEN_FAILED in answer.text, headers
        ping = requests.get(secured.url("inference", "/ping"), headers=headers, timeout=30)
        assert ping.status_code == 400, headers
    good = requests.post(url, data=b"x", timeout=30, headers={"Content-Type": "application/octet-stream",
                                                                "Authorization": f"Bearer {keys['inference']}"})
    assert good.status_code == 200


MANAGEMENT_CALLS = [
    ("GET", "/models", {}),
    ("GET", "/models/echo", {}),
    ("POST", "/models", {"url": "echo.mar", "model_name": "intruder", "initial_workers": "0"}),
    ("PUT", "/models/echo", {"min_worker": "3", "max_worker": "3"}),
    ("DELETE", "/models/echo", {}),
    ("GET", "/token", {"type": "inference"}),  # rotation needs the API key
]


@pytest.mark.parametrize("method, path, params", MANAGEMENT_CALLS, ids=[f"{m} {p}" for m, p, _ in MANAGEMENT_CALLS])
def test_management_api_refuses_missing_and_wrong_keys(secured, method, path, params):
    keys = secured.keys()
    wrong = [{}, {"Authorization": "Bearer nope"}, {"Authorization": f"Bearer {keys['inference']}"}]
    if path == "/token":
        wrong.append({"Authorization": f"Bearer {keys['management']}"})
    for headers in wrong:
        answer = requests.request(method, secured.url("management", path), params=params, headers=headers, timeout=30)
        # /token words it "Token Authentication failed"; every other endpoint "Token Authorization failed"
        assert answer.status_code == 400 and "Token Auth" in answer.text, (headers, answer.text[:200])
    # Nothing changed: still one model, one worker.
    assert [m["modelName"] for m in secured.list_models()] == ["echo"]
    assert len(secured.describe("echo")["workers"]) == 1


def test_key_file_is_private_and_keys_stay_out_of_logs(secured):
    key_file = secured.run_dir / "key_file.json"
    assert key_file.stat().st_mode & 0o077 == 0, oct(key_file.stat().st_mode)
    assert secured.predict("echo", b"log me", "application/octet-stream").status_code == 200
    secured.describe("echo")
    # The handler does see the Authorization header (TorchServe forwards all request headers to the worker):
    # our handlers never log headers, and neither frontend nor worker logs contain a key.
    logs = [secured.log_file, *sorted((secured.run_dir / "logs").glob("*.log"))]
    text = "\n".join(p.read_text(errors="replace") for p in logs if p.exists())
    for kind, key in secured.keys().items():
        assert key not in text, f"the {kind} key appears in the logs"


# ---------------------------------------------------------------------------------------------- bindings


def _listening_tcp(pid: int) -> list[tuple[str, int]]:
    """(address, port) of the TCP sockets ``pid`` listens on, from /proc (IPv4 and IPv6)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table, width in (("tcp", 8), ("tcp6", 32)):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            address_hex, port_hex = local.split(":")
            raw = bytes.fromhex(address_hex)
            if width == 8:
                address = socket.inet_ntop(socket.AF_INET, raw[::-1])
            else:  # four little-endian 32-bit words
                address = socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
            found.append((address.removeprefix("::ffff:"), int(port_hex, 16)))
    return found


def test_every_endpoint_listens_on_loopback_only(secured):
    info = secured.info
    listening = _listening_tcp(info.pid)
    ports = {info.inference_port, info.management_port, info.metrics_port, *info.grpc_ports}
    assert ports <= {port for _, port in listening}, listening
    assert {address for address, _ in listening} == {LOOPBACK}, listening
    # Workers talk to the frontend over a Unix socket in the instance's private tmp dir: no TCP listener at all.
    for worker in secured.describe("echo")["workers"]:
        assert _listening_tcp(worker["pid"]) == []
        argv = Path(f"/proc/{worker['pid']}/cmdline").read_bytes().decode().split("\0")
        assert argv[argv.index("--sock-type") + 1] == "unix"
        assert Path(argv[argv.index("--sock-name") + 1]).parent == secured.tmp_dir


def test_metrics_need_no_key(secured):
    """Reachable from this machine only: its port is among those test_every_endpoint_listens_on_loopback_only finds
    bound to loopback alone (no connection to the host's other addresses is needed to know it)."""
    assert requests.get(secured.url("metrics", "/metrics"), timeout=30).status_code == 200


# ---------------------------------------------------------------------------------------------- model URLs


@pytest.mark.parametrize("url", [
    "https://example.com/resnet101.mar",
    "http://127.0.0.1:1/echo.mar",
    "file:///etc/passwd",
    "FILE_IN_STORE",  # file:// of an archive that is in the store
])
def test_allowed_urls_refuse_downloads_and_file_urls(secured, url):
    url = f"file://{Path(secured.info.model_store) / 'echo.mar'}" if url == "FILE_IN_STORE" else url
    with pytest.raises(TorchServeError) as refused:
        secured.register(url, "downloaded", initial_workers=0)
    assert refused.value.status == 404 and "does not match any allowed URL" in str(refused.value)


@pytest.mark.parametrize("url", ["../echo.mar", "echo.mar/../../echo.mar"])
def test_relative_paths_out_of_the_store_are_refused(secured, url):
    with pytest.raises(TorchServeError) as refused:
        secured.register(url, "escaped", initial_workers=0)
    assert refused.value.status == 404 and "Relative path is not allowed" in str(refused.value)


def test_absolute_directory_urls_are_a_known_gap_guarded_by_the_management_key(secured, tmp_path):
    """TorchServe 0.12 registers any absolute local directory as a model (allowed_urls is not consulted), so
    whoever holds the management key can run code from any directory the server can read. Documented in
    docs/reliability.md; this test notices if that ever changes. Without the key, it is refused."""
    directory = tmp_path / "elsewhere"
    directory.mkdir()
    (directory / "handler.py").write_text("def handle(data, context):\n    return data\n")
    no_key = requests.post(secured.url("management", "/models"), timeout=30,
                           params={"url": str(directory), "model_name": "elsewhere", "initial_workers": "0"})
    assert no_key.status_code == 400 and TOKEN_FAILED in no_key.text
    secured.register(str(directory), "elsewhere", initial_workers=0)  # with the key: accepted (no worker runs)
    try:
        assert secured.describe("elsewhere")["workers"] == []
    finally:
        secured.unregister("elsewhere")


def test_archives_never_install_packages(secured, tmp_path):
    """install_py_dep_per_model=false: an archive's requirements.txt is ignored. This one would make pip fail
    (a wheel path that does not exist; no index is contacted), so registration succeeding proves no install."""
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("./no-such-package-1.0-py3-none-any.whl\n")
    config = tmp_path / "config.yaml"
    config.write_text("handler:\n  delay_s: 0.0\n")
    subprocess.run([sys.executable, "-m", "model_archiver.model_packaging", "--model-name", "with_requirements",
                    "--version", "1.0", "--handler", str(ECHO_HANDLER), "--extra-files", str(ECHO_MODEL),
                    "--config-file", str(config),
                    "--requirements-file", str(requirements), "--export-path", secured.info.model_store, "--force"],
                   check=True, capture_output=True, text=True)
    with zipfile.ZipFile(Path(secured.info.model_store) / "with_requirements.mar") as mar:
        assert "requirements.txt" in mar.namelist()
    secured.register("with_requirements.mar", "with_requirements", initial_workers=1)
    try:
        assert secured.predict("with_requirements", b"ok", "application/octet-stream").status_code == 200
    finally:
        secured.unregister("with_requirements")


# ---------------------------------------------------------------------------------------------- weights


class _Payload:
    """Unpickling this creates the directory ``marker``: what a malicious checkpoint would do (and worse)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _malicious_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"conv1.weight": torch.zeros(1), "payload": _Payload(marker)}, path)
    return path


def test_the_malicious_checkpoint_is_live(tmp_path):
    """Control: loading it the unsafe way does run the payload, so the refusals below mean something."""
    marker = tmp_path / "pwned"
    checkpoint = _malicious_checkpoint(tmp_path / "evil.pth", marker)
    code = f"import torch; torch.load({str(checkpoint)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)
    assert marker.exists()


def test_resnet_loader_refuses_pickled_code(tmp_path):
    from torchserve_accel.resnet.model import load_state_dict

    marker = tmp_path / "pwned"
    checkpoint = _malicious_checkpoint(tmp_path / "resnet101.pth", marker)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_state_dict(checkpoint)
    assert not marker.exists()


def test_bert_loader_refuses_pickled_code(tmp_path):
    from torchserve_accel.bert.checkpoint import read_hf_state_dict

    marker = tmp_path / "pwned"
    _malicious_checkpoint(tmp_path / "pytorch_model.bin", marker)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        read_hf_state_dict(tmp_path)
    assert not marker.exists()


def test_resnet_archive_carries_safetensors_only(resnet_store):
    with zipfile.ZipFile(resnet_store / "resnet101.mar") as mar:
        names = mar.namelist()
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
    assert manifest["model"]["serializedFile"] == "resnet101.safetensors"
    assert not [n for n in names if n.lower().endswith(PICKLE_SUFFIXES)], names
