"""deploy/: Kubernetes manifests valid against the Kubernetes JSON schemas (offline), the properties this project
relies on (GPU, probes, token auth, exposure, volumes, autoscaling signal), the Dockerfile's contract with them,
and the pod's token proxy (deploy/token_proxy.py) against a stand-in TorchServe on loopback.

Schemas: the ``kubernetes-validate`` package bundles the JSON schemas of Kubernetes 1.25-1.37 (strict variants
reject unknown fields); it never fetches anything. Custom resources (Prometheus Operator, KServe) have no schema
there and are skipped for that stated reason; their fields are checked below instead.
"""

from __future__ import annotations

import importlib.util
import json
import re
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import yaml

from tests.stubs import JsonHandler

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
# Oldest: PodDisruptionBudget.unhealthyPodEvictionPolicy is on by default from 1.27. Newest: what the package has.
KUBE_VERSIONS = ("1.27", "1.37")
NOT_RESOURCES = {K8S / "kustomization.yaml", K8S / "monitoring" / "prometheus-adapter-values.yaml"}
CRDS = {
    "monitoring.coreos.com/v1": "Prometheus Operator CRD: no schema in kubernetes-validate (fields checked below)",
    "serving.kserve.io/v1beta1": "KServe CRD: no schema in kubernetes-validate (fields checked below)",
}
POD = {"app.kubernetes.io/name": "torchserve", "app.kubernetes.io/instance": "resnet101"}


# ---------------------------------------------------------------------------------------------- loading


def manifest_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*.yaml") if p not in NOT_RESOURCES)


def documents() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in manifest_files() for doc in yaml.safe_load_all(path.read_text()) if doc]


def the(kind: str, directory: Path = K8S) -> dict:
    found = [doc for path, doc in documents() if doc["kind"] == kind and directory in path.parents]
    assert len(found) == 1, f"expected one {kind} under {directory}, found {len(found)}"
    return found[0]


def container(pod_spec: dict, name: str) -> dict:
    return next(c for c in pod_spec["containers"] if c["name"] == name)


def torchserve_container(pod_spec: dict) -> dict:
    return next(c for c in pod_spec["containers"] if "torchserve" in c.get("args", [])[:1])


def proxy_container(pod_spec: dict) -> dict:
    return next(c for c in pod_spec["containers"] if any("token_proxy.py" in a for a in c.get("args", [])))


def env_of(c: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in c.get("env", [])}


def arg_after(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def properties(text: str) -> dict[str, str]:
    props = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, value = line.split("=", 1)
            props[key.strip()] = value.strip()
    return props


def cluster_config() -> dict[str, str]:
    return properties(the("ConfigMap")["data"]["config.properties"])


def pod_spec() -> dict:
    return the("Deployment")["spec"]["template"]["spec"]


def kserve_pod_spec() -> dict:
    return the("InferenceService", DEPLOY / "kserve")["spec"]["predictor"]


def mounts(c: dict) -> dict[str, dict]:
    return {m["name"]: m for m in c.get("volumeMounts", [])}


def volumes(spec: dict) -> dict[str, dict]:
    return {v["name"]: v for v in spec["volumes"]}


# ---------------------------------------------------------------------------------------------- schemas


@pytest.fixture(scope="module")
def kv():
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("kubernetes-validate is missing: pip install -e .[dev] (it bundles the Kubernetes schemas)")
    return kubernetes_validate


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("path, doc", documents(), ids=lambda x: x.name if isinstance(x, Path) else x["kind"])
def test_manifest_matches_the_kubernetes_schema(kv, path, doc, version):
    if doc["apiVersion"] in CRDS:
        with pytest.raises(kv.SchemaNotFoundError):  # the skip is only for what truly has no bundled schema
            kv.validate(doc, version, strict=True)
        pytest.skip(CRDS[doc["apiVersion"]])
    kv.validate(doc, version, strict=True)


def test_schema_validation_is_offline_and_strict(kv, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    deployment = the("Deployment")
    kv.validate(deployment, KUBE_VERSIONS[0], strict=True)
    typo = json.loads(json.dumps(deployment))
    typo["spec"]["template"]["spec"]["containers"][0]["imagee"] = "x"
    with pytest.raises(kv.ValidationError, match="imagee"):
        kv.validate(typo, KUBE_VERSIONS[0], strict=True)


def test_kustomization_lists_every_core_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in K8S.glob("*.yaml") if p not in NOT_RESOURCES)


def test_no_secret_is_committed():
    assert not [p for p, doc in documents() if doc["kind"] == "Secret"], "create the client-token Secret in-cluster"


# ---------------------------------------------------------------------------------------------- the pod


@pytest.mark.parametrize("spec", [pod_spec(), kserve_pod_spec()], ids=["deployment", "kserve"])
def test_each_torchserve_container_gets_its_gpus_and_sees_exactly_them(spec):
    ts = torchserve_container(spec)
    gpus = ts["resources"]["limits"]["nvidia.com/gpu"]
    assert isinstance(gpus, int) and gpus >= 1
    assert ts["resources"].get("requests", {}).get("nvidia.com/gpu", gpus) == gpus
    # TorchServe counts GPUs from CUDA_VISIBLE_DEVICES; the device plugin numbers the pod's GPUs from 0.
    assert env_of(ts)["CUDA_VISIBLE_DEVICES"] == ",".join(str(i) for i in range(gpus))
    assert "nvidia.com/gpu" not in json.dumps(proxy_container(spec)["resources"])
    assert any(t.get("key") == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in spec["tolerations"])


@pytest.mark.parametrize("spec", [pod_spec(), kserve_pod_spec()], ids=["deployment", "kserve"])
def test_torchserve_runs_in_the_foreground_from_the_mounted_config_and_store(spec):
    ts = torchserve_container(spec)
    assert ts["command"] == ["/usr/bin/tini", "--"]
    args = ts["args"]
    assert args[:4] == ["torchserve", "--start", "--foreground", "--ncs"]
    config_mount = mounts(ts)["config"]
    assert config_mount["readOnly"]
    assert arg_after(args, "--ts-config") == config_mount["mountPath"] + "/config.properties"
    assert volumes(spec)["config"]["configMap"]["name"] == the("ConfigMap")["metadata"]["name"]
    store = mounts(ts)["model-store"]
    assert store["readOnly"] and arg_after(args, "--model-store") == store["mountPath"]
    assert cluster_config()["model_store"] == store["mountPath"]
    assert re.fullmatch(r"\w+=\w+\.mar", arg_after(args, "--models"))


@pytest.mark.parametrize("spec", [pod_spec(), kserve_pod_spec()], ids=["deployment", "kserve"])
def test_token_authorization_is_not_disabled_anywhere(spec):
    config = cluster_config()
    assert config.get("disable_token_authorization", "false").lower() != "true"
    assert config.get("enable_envvars_config", "false").lower() != "true"  # else TS_* variables could turn it off
    for c in spec["containers"]:
        assert not any("disable-token" in a for a in c.get("command", []) + c.get("args", []))
        assert "TS_DISABLE_TOKEN_AUTHORIZATION" not in env_of(c)


def test_cluster_config_is_the_repository_config_but_for_addresses_store_and_model_api():
    ours, repo = cluster_config(), properties((REPO / "config.properties").read_text())
    differ = {"inference_address", "management_address", "metrics_address", "model_store", "enable_model_api"}
    assert {k: v for k, v in ours.items() if k not in differ} == {k: v for k, v in repo.items() if k not in differ}
    assert urlsplit(ours["inference_address"]).hostname == "127.0.0.1"
    assert urlsplit(ours["management_address"]).hostname == "127.0.0.1"
    assert ours["grpc_inference_address"] == ours["grpc_management_address"] == "127.0.0.1"
    assert urlsplit(ours["metrics_address"]).hostname == "0.0.0.0"  # Prometheus scrapes the pod
    assert ours["enable_model_api"] == "false"  # models load at start; nothing registers at run time


def test_key_file_lives_in_a_memory_emptydir_shared_read_only_with_the_proxy():
    spec = pod_spec()
    ts, proxy = torchserve_container(spec), proxy_container(spec)
    run = volumes(spec)["run"]
    assert run["emptyDir"]["medium"] == "Memory"
    assert mounts(ts)["run"]["mountPath"] == ts["workingDir"]  # TorchServe writes key_file.json to its cwd
    assert not mounts(ts)["run"].get("readOnly")
    assert mounts(proxy)["run"] == {"name": "run", "mountPath": ts["workingDir"], "readOnly": True}
    assert arg_after(proxy["args"], "--key-file") == ts["workingDir"] + "/key_file.json"
    # The key file is mode 600: both containers must be the same user, set once for the pod.
    assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"]
    assert not any("runAsUser" in c.get("securityContext", {}) for c in spec["containers"])
    token_mount = mounts(proxy)["client-token"]
    assert volumes(spec)["client-token"]["secret"]["secretName"]
    assert arg_after(proxy["args"], "--client-token-file").startswith(token_mount["mountPath"] + "/")


def test_proxy_points_at_torchserve_as_configured():
    proxy, config = proxy_container(pod_spec()), cluster_config()
    assert arg_after(proxy["args"], "--inference") == config["inference_address"]
    assert arg_after(proxy["args"], "--management") == config["management_address"]
    assert int(arg_after(proxy["args"], "--max-body")) == int(config["max_request_size"])
    listen_port = int(arg_after(proxy["args"], "--listen").rsplit(":", 1)[1])
    assert [p["containerPort"] for p in proxy["ports"] if p["name"] == "http"] == [listen_port]


def test_probes():
    spec = pod_spec()
    ts, proxy = torchserve_container(spec), proxy_container(spec)
    # Readiness is TorchServe's /ping reached through the proxy (TorchServe 0.12 wants the inference key on /ping).
    ready = proxy["readinessProbe"]["httpGet"]
    assert ready["path"] == "/ping" and ready["port"] == "http"
    assert proxy["livenessProbe"]["httpGet"]["path"] == "/livez"
    # TorchServe itself: its metrics endpoint (no token), with a generous start-up allowance.
    for probe in ("startupProbe", "livenessProbe"):
        assert ts[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    startup = ts["startupProbe"]
    archive_startup = yaml.safe_load((REPO / "archiver_configs" / "resnet101.yaml").read_text())["startupTimeout"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= archive_startup
    ports = {p["name"]: p["containerPort"] for c in spec["containers"] for p in c.get("ports", [])}
    assert ports == {"metrics": _port(cluster_config()["metrics_address"]), "http": 8000}


def test_graceful_stop_fits_the_grace_period():
    spec = pod_spec()
    stop = torchserve_container(spec)["lifecycle"]["preStop"]["exec"]["command"]
    assert "torchserve --stop --foreground" in stop[-1]  # SIGTERM to the frontend, wait up to 60 s
    drain = int(re.search(r"sleep (\d+)", stop[-1]).group(1))
    assert spec["terminationGracePeriodSeconds"] >= drain + 60


def test_service_is_cluster_internal_and_reaches_only_the_proxy():
    service, spec = the("Service"), pod_spec()
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"] == POD == the("Deployment")["spec"]["selector"]["matchLabels"]
    proxy_ports = {p["name"] for p in proxy_container(spec)["ports"]}
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"] and "http" in proxy_ports


def test_network_policy_admits_the_proxy_and_the_metrics_scrape_only():
    policy = the("NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"] == POD
    ports = sorted(p["port"] for rule in policy["ingress"] for p in rule["ports"])
    assert ports == [8000, _port(cluster_config()["metrics_address"])]


def test_model_store_is_shared_read_only_and_engine_cache_is_a_shared_volume():
    claims = {doc["metadata"]["name"]: doc for _, doc in documents() if doc["kind"] == "PersistentVolumeClaim"}
    spec = pod_spec()
    store = volumes(spec)["model-store"]["persistentVolumeClaim"]
    assert store["readOnly"] and claims[store["claimName"]]["spec"]["accessModes"] == ["ReadOnlyMany"]
    cache = volumes(spec)["engine-cache"]["persistentVolumeClaim"]
    assert claims[cache["claimName"]]["spec"]["accessModes"] == ["ReadWriteMany"]
    ts = torchserve_container(spec)
    # torchserve_accel.backends.engine_cache.default_cache_root(): $XDG_CACHE_HOME/torchserve-accel/engines
    assert env_of(ts)["XDG_CACHE_HOME"] == mounts(ts)["engine-cache"]["mountPath"]
    options = yaml.safe_load((REPO / "archiver_configs" / "resnet101.yaml").read_text())["handler"]
    assert options["engine_cache_dir"] == ""  # an explicit directory in the archive would bypass the volume


def test_replica_count_belongs_to_the_autoscaler_and_disruptions_leave_one_pod():
    hpa, pdb, deployment = the("HorizontalPodAutoscaler")["spec"], the("PodDisruptionBudget")["spec"], the("Deployment")
    assert "replicas" not in deployment["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": deployment["metadata"]["name"]}
    assert pdb["selector"]["matchLabels"] == POD
    assert hpa["minReplicas"] >= 2 and pdb["maxUnavailable"] < hpa["minReplicas"]


def test_autoscaling_metric_is_built_from_metrics_torchserve_exposes():
    import ts

    exposed = {m["name"] for kind in yaml.safe_load((Path(ts.__file__).parent / "configs" / "metrics.yaml").read_text())
               ["ts_metrics"].values() for m in kind}
    adapter = yaml.safe_load((K8S / "monitoring" / "prometheus-adapter-values.yaml").read_text())["rules"]["custom"]
    served = {rule["name"]["as"]: rule for rule in adapter}
    for rule in adapter:
        used = set(re.findall(r"\b(ts_\w+)\{", rule["metricsQuery"]))
        used |= set(re.findall(r"^(\w+)\{", rule["seriesQuery"]))
        assert used and used <= exposed, used - exposed
    hpa = the("HorizontalPodAutoscaler")["spec"]
    for metric in hpa["metrics"]:
        assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] in served
    # The queue-latency target must sit above the wait a lone request has anyway (maxBatchDelay, in ms).
    queue = next(m["pods"] for m in hpa["metrics"] if m["pods"]["metric"]["name"] == "ts_queue_latency_us_per_request")
    max_batch_delay_ms = yaml.safe_load((REPO / "archiver_configs" / "resnet101.yaml").read_text())["maxBatchDelay"]
    assert int(queue["target"]["averageValue"]) >= 2 * max_batch_delay_ms * 1000
    monitor = the("PodMonitor", K8S / "monitoring")["spec"]
    assert monitor["selector"]["matchLabels"] == POD
    assert [e["port"] for e in monitor["podMetricsEndpoints"]] == ["metrics"]


def test_kserve_alternative_shares_the_configmap_volumes_and_proxy():
    isvc = the("InferenceService", DEPLOY / "kserve")
    spec = kserve_pod_spec()
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert spec["containers"][0] is proxy_container(spec)  # KServe routes to the first container's port
    assert {k: v for k, v in volumes(spec).items()} == volumes(pod_spec())
    assert proxy_container(spec)["args"] == proxy_container(pod_spec())["args"]
    assert torchserve_container(spec)["args"] == torchserve_container(pod_spec())["args"]
    assert env_of(torchserve_container(spec)) == env_of(torchserve_container(pod_spec()))


def _port(address: str) -> int:
    return urlsplit(address).port


# ---------------------------------------------------------------------------------------------- Dockerfile


def dockerfile() -> str:
    return (DEPLOY / "Dockerfile").read_text()


def test_dockerfile_builds_on_a_cuda_pytorch_base_and_installs_the_package_and_torchserve():
    text = dockerfile()
    assert re.search(r"^ARG BASE_IMAGE=pytorch/pytorch:[\w.]+-cuda[\d.]+-cudnn\d+-runtime$", text, re.M)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M)
    assert "openjdk-17-jre-headless" in text and " tini" in text
    assert re.search(r'pip install -c /tmp/base-torch.txt "\.\$\{EXTRAS\}"', text)  # torchserve via setup.py
    commands = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "pip install -e" not in commands  # workers must import an installed package, not a source tree


def test_dockerfile_matches_what_the_manifests_run():
    text = dockerfile()
    spec = pod_spec()
    assert f"USER {spec['securityContext']['runAsUser']}" in text
    assert 'ENTRYPOINT ["/usr/bin/tini", "--"]' in text
    proxy_path = proxy_container(spec)["args"][1]
    assert "COPY deploy/token_proxy.py ./deploy/token_proxy.py" in text and "WORKDIR /opt/torchserve-accel" in text
    assert proxy_path == "/opt/torchserve-accel/deploy/token_proxy.py"
    cmd = json.loads(re.search(r"^CMD (\[.*?\])$", text, re.M | re.S).group(1).replace("\\\n", ""))
    assert cmd == torchserve_container(spec)["args"]
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    for copied in re.findall(r"^COPY (\S+)", text, re.M):
        assert f"!{copied.rstrip('/')}" in [i.rstrip("/") for i in ignore], copied


# ---------------------------------------------------------------------------------------------- token proxy

TOKEN_FAILED = "Token Authorization failed. Token either incorrect, expired, or not provided correctly"


def load_proxy_module():
    spec = importlib.util.spec_from_file_location("token_proxy", DEPLOY / "token_proxy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeTorchServe:
    """TorchServe 0.12's token contract on loopback: keys in key_file.json, 400 for a wrong or expired inference
    key (/ping included), rotation through the management API's /token with the API key."""

    def __init__(self, run_dir: Path):
        self.key_file = run_dir / "key_file.json"
        self.keys = {"management": "man-0", "inference": "inf-0", "API": "api-0"}
        self.expired = False
        self.rotations = 0
        self.seen: list[dict] = []
        self.lock = threading.Lock()
        self.write_keys()
        self.inference = self._serve(self._inference_handler())
        self.management = self._serve(self._management_handler())

    def write_keys(self) -> None:
        self.key_file.write_text(json.dumps({k: {"key": v, "expiration time": "2099-01-01T00:00:00Z"}
                                             for k, v in self.keys.items()}, indent=2))
        self.key_file.chmod(0o600)

    def restart(self) -> None:
        """TorchServe came back with new keys (a restarted container): only the key file tells."""
        with self.lock:
            self.keys = {k: v + "-restarted" for k, v in self.keys.items()}
            self.expired = False
            self.write_keys()

    def url(self, server) -> str:
        return f"http://127.0.0.1:{server.server_address[1]}"

    def close(self) -> None:
        for server in (self.inference, self.management):
            server.shutdown()
            server.server_close()

    @staticmethod
    def _serve(handler) -> ThreadingHTTPServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return server

    def _inference_handler(self):
        fake = self

        class Handler(JsonHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with fake.lock:
                    fake.seen.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    ok = self.headers.get("Authorization") == f"Bearer {fake.keys['inference']}" and not fake.expired
                if not ok:
                    return self._answer(400, {"code": 400, "type": "InvalidKeyException", "message": TOKEN_FAILED})
                if self.path == "/ping":
                    return self._answer(200, {"status": "Healthy"})
                self._answer(200, {"bytes": len(body), "content_type": self.headers.get("Content-Type")})

            do_POST = do_GET

        return Handler

    def _management_handler(self):
        fake = self

        class Handler(JsonHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                url = urlsplit(self.path)
                with fake.lock:
                    if url.path != "/token" or self.headers.get("Authorization") != f"Bearer {fake.keys['API']}":
                        return self._answer(400, {"code": 400, "message": TOKEN_FAILED})
                    assert parse_qs(url.query)["type"] == ["inference"]
                    fake.rotations += 1
                    fake.keys["inference"] = f"inf-{fake.rotations}"
                    fake.expired = False
                    fake.write_keys()
                self._answer(200, {})

        return Handler


@pytest.fixture
def pod(tmp_path):
    """A stand-in TorchServe and the token proxy in front of it, as in the pod: (fake, proxy URL, token file)."""
    fake = FakeTorchServe(tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text("client-secret-1\n")
    proxy = load_proxy_module().build_server("127.0.0.1:0", fake.url(fake.inference), fake.url(fake.management),
                                             str(fake.key_file), str(token_file), timeout=10, max_body=1024)
    threading.Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    yield fake, f"http://127.0.0.1:{proxy.server_address[1]}", token_file
    proxy.shutdown()
    proxy.server_close()
    fake.close()


def predict(url: str, token: str | None, body: bytes = b"jpeg-bytes") -> requests.Response:
    headers = {"Content-Type": "image/jpeg"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return requests.post(f"{url}/predictions/resnet101", data=body, headers=headers, timeout=10)


def test_proxy_requires_the_client_token_and_sends_only_the_pods_inference_key(pod):
    fake, url, _ = pod
    for token in (None, "wrong", fake.keys["inference"]):  # TorchServe's own key is no client credential
        answer = predict(url, token)
        assert answer.status_code == 401 and answer.headers["WWW-Authenticate"].startswith("Bearer"), token
    assert fake.seen == []  # refused at the door
    answer = predict(url, "client-secret-1")
    assert answer.status_code == 200 and answer.json() == {"bytes": 10, "content_type": "image/jpeg"}
    assert fake.seen[-1]["headers"]["Authorization"] == "Bearer inf-0"


def test_ping_needs_no_client_token_and_reflects_torchserve(pod):
    fake, url, _ = pod
    answer = requests.get(f"{url}/ping", timeout=10)
    assert answer.status_code == 200 and answer.json() == {"status": "Healthy"}
    assert requests.get(f"{url}/livez", timeout=10).status_code == 200
    fake.key_file.unlink()  # TorchServe not started yet: not ready
    assert requests.get(f"{url}/ping", timeout=10).status_code == 503


def test_an_expired_key_is_rotated_once_for_many_concurrent_requests(pod):
    fake, url, _ = pod
    fake.expired = True
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: predict(url, "client-secret-1"), range(8)))
    assert [a.status_code for a in answers] == [200] * 8
    assert fake.rotations == 1 and fake.seen[-1]["headers"]["Authorization"] == "Bearer inf-1"


def test_new_keys_after_a_torchserve_restart_are_read_without_rotating(pod):
    fake, url, _ = pod
    assert predict(url, "client-secret-1").status_code == 200
    fake.restart()
    assert predict(url, "client-secret-1").status_code == 200
    assert fake.rotations == 0 and fake.seen[-1]["headers"]["Authorization"] == "Bearer inf-0-restarted"


def test_client_token_rotation_takes_effect_without_a_restart(pod):
    _, url, token_file = pod
    assert predict(url, "client-secret-1").status_code == 200
    token_file.write_text("client-secret-2-longer\n")
    assert predict(url, "client-secret-1").status_code == 401
    assert predict(url, "client-secret-2-longer").status_code == 200


def test_oversized_bodies_are_refused_before_reaching_torchserve(pod):
    fake, url, _ = pod
    assert predict(url, "client-secret-1", b"x" * 2048).status_code == 413
    assert fake.seen == []


def test_kserve_stock_runtime_layout_serves_our_archives_without_an_envelope():
    """deploy/kserve-stock: KServe's own TorchServe runtime reads config/config.properties from the storageUri; it must
    list our archives with their batching and must not set service_envelope (TorchServe's envelopes read only the
    first request of a batch; our handlers read v1/v2 bodies themselves)."""
    isvc = the("InferenceService", DEPLOY / "kserve-stock")
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "pytorch" and model["protocolVersion"] == "v2" and model["storageUri"]
    assert "containers" not in isvc["spec"]["predictor"]  # no custom image, no custom predictor
    config = properties((DEPLOY / "kserve-stock" / "config.properties").read_text())
    assert "service_envelope" not in config and config["model_store"] == "/mnt/models/model-store"
    assert config["install_py_dep_per_model"] == "false" and config["allowed_urls"] == "^$"
    snapshot = json.loads(config["model_snapshot"])
    assert snapshot["modelCount"] == len(snapshot["models"]) == 2
    for name, versions in snapshot["models"].items():
        (entry,) = versions.values()
        shipped = yaml.safe_load((REPO / "archiver_configs" / f"{name}.yaml").read_text())
        assert entry["marName"] == f"{name}.mar" and entry["batchSize"] == shipped["batchSize"]
        assert entry["maxBatchDelay"] == shipped["maxBatchDelay"]
