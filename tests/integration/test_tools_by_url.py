"""The tools against a TorchServe they did not start, given only its URLs and keys (no run directory): register,
scale, describe and unregister through the management URL; predict, bench and soak through the inference URL
(bench and soak also read the management and metrics URLs). Keys come from a copy of TorchServe's key_file.json or
from files holding one key; a refused key stops the command with a message, and nothing is rotated. The server is
a real TorchServe (token auth on) serving the echo test model, started by the test as someone else's would be.
"""

from __future__ import annotations

import json
import shutil

import pytest

from torchserve_accel.tools import soak
from torchserve_accel.tools.cli import main
from tests.integration.serving import ready_workers, running_torchserve

pytestmark = pytest.mark.integration
MODEL = "echo_by_url"


@pytest.fixture(scope="module")
def server(tmp_path_factory, echo_store):
    """The instance, serving the echo model with 2 workers, and what a user of an existing TorchServe has: its URLs
    and key files."""
    with running_torchserve(tmp_path_factory.mktemp("by-url-run"), echo_store) as ts:
        ts.register("echo.mar", MODEL, batch_size=4, max_batch_delay=50, initial_workers=2)
        ready_workers(ts, MODEL, 2, timeout=120)
        keys = tmp_path_factory.mktemp("by-url-keys")
        shutil.copy(ts.run_dir / "key_file.json", keys / "key_file.json")
        for kind in ("inference", "management"):
            (keys / kind).write_text(ts.keys()[kind] + "\n")
        urls = {api: ts.url(api) for api in ("inference", "management", "metrics")}
        yield ts, urls, keys


def management(server, key_file: str = "management") -> list[str]:
    _, urls, keys = server
    return ["--management-url", urls["management"], "--token-file", str(keys / key_file)]


def test_register_scale_describe_unregister_by_url(server, capsys):
    ts, _, _ = server
    name = "echo_lifecycle"
    assert main(["register", "echo.mar", "--name", name, "--batch-size", "2", "--max-batch-delay", "20",
                 *management(server)]) == 0
    assert f'Model "{name}"' in capsys.readouterr().out
    assert main(["scale", name, "--min", "2", *management(server, "key_file.json")]) == 0
    assert len(ready_workers(ts, name, 2, timeout=120)) == 2
    capsys.readouterr()
    assert main(["describe", name, "--json", *management(server, "key_file.json")]) == 0
    description = json.loads(capsys.readouterr().out)
    assert description["modelName"] == name and description["batchSize"] == 2 and len(description["workers"]) == 2
    assert main(["unregister", name, *management(server)]) == 0
    assert main(["describe", name, *management(server)]) == 1
    assert "404" in capsys.readouterr().err


def test_predict_by_url(server, tmp_path, capsys):
    _, urls, keys = server
    body = tmp_path / "payload.bin"
    body.write_bytes(b"x" * 1234)
    assert main(["predict", MODEL, str(body), "--json", "--url", urls["inference"],
                 "--token-file", str(keys / "key_file.json")]) == 0
    (answer,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert answer["status"] == 200 and answer["answer"]["bytes"] == 1234
    assert main(["predict", MODEL, str(body), "--url", urls["inference"].replace("127.0.0.1", "localhost"),
                 "--token-file", str(keys / "inference")]) == 0


def test_bench_by_url(server, tmp_path):
    _, urls, keys = server
    out = tmp_path / "bench.json"
    assert main(["bench", MODEL, "--images", "4", "--concurrency", "4", "--processes", "1", "--warmup", "0.5",
                 "--duration", "2", "--url", urls["inference"], "--management-url", urls["management"],
                 "--metrics-url", urls["metrics"], "--token-file", str(keys / "key_file.json"),
                 "--out", str(out)]) == 0
    document = json.loads(out.read_text())
    r = document["results"]
    assert r["probe"]["status"] == 200 and r["errors"] == {} and r["completed"] > 0
    assert document["config"]["server"]["workers_ready"] == 2 and document["config"]["server"]["batchSize"] == 4
    assert r["server"]["server_requests"] > 0  # TorchServe's request counter, read from the metrics URL
    assert "--url" in document["command"] and "--run-dir" not in document["command"]


def test_bench_without_management_or_metrics_urls_still_runs(server, tmp_path):
    _, urls, keys = server
    out = tmp_path / "bench.json"
    assert main(["bench", MODEL, "--images", "2", "--concurrency", "2", "--processes", "1", "--warmup", "0",
                 "--duration", "1", "--url", urls["inference"], "--token-file", str(keys / "inference"),
                 "--out", str(out)]) == 0
    document = json.loads(out.read_text())
    assert document["config"]["server"] is None and document["results"]["server"]["mean_batch_size"] is None
    assert document["results"]["errors"] == {}


def test_soak_by_url(server, tmp_path):
    """Failures and restarts judged as with a run directory; the workers are processes of this machine here, so
    their memory is measured too (the memory judge itself: tests/integration/test_soak.py)."""
    _, urls, keys = server
    out = tmp_path / "soak.json"
    code = main(["soak", "--model", MODEL, "--minutes", "0.05", "--rate", "4", "--burst-s", "1", "--warmup-s", "1",
                 "--segment-s", "1.5", "--processes", "1", "--images", "4", "--max-growth", "100",
                 "--url", urls["inference"], "--management-url", urls["management"],
                 "--token-file", str(keys / "key_file.json"), "--out", str(out)])
    doc = json.loads(out.read_text())
    assert doc["schema"] == soak.SCHEMA and code == 0 and doc["passed"], doc.get("failures") or doc.get("error")
    assert doc["totals"]["failed"] == 0 and doc["workers_after"] == doc["workers_before"]
    assert doc["memory"]["rss_start_mb"] > 0 and len(doc["memory"]["samples"]) == 3
    assert any(rss > 0 for rss in doc["memory"]["frontend_rss_mb"])  # the frontend found as the workers' parent


def test_soak_needs_the_management_url(server, tmp_path):
    _, urls, keys = server
    out = tmp_path / "soak.json"
    assert main(["soak", "--model", MODEL, "--minutes", "0.05", "--url", urls["inference"],
                 "--token-file", str(keys / "inference"), "--out", str(out)]) == 1
    assert "no management API given: pass --management-url" in json.loads(out.read_text())["error"]


def test_a_refused_key_is_not_rotated(server, tmp_path, capsys):
    ts, urls, keys = server
    before = (ts.run_dir / "key_file.json").read_text()
    (tmp_path / "stale").write_text("not-the-key")
    assert main(["predict", MODEL, "--text", "x", "--url", urls["inference"], "--token-file",
                 str(tmp_path / "stale")]) == 1
    assert main(["describe", MODEL, "--management-url", urls["management"], "--management-token", "nope"]) == 1
    err = capsys.readouterr().err
    assert "the inference API refused the key (--token-file" in err and "nothing here to rotate" in err
    assert "the management API refused the key (--management-token)" in err
    assert (ts.run_dir / "key_file.json").read_text() == before  # no rotation asked for
    assert main(["predict", MODEL, "--text", "x", "--url", urls["inference"].replace("127.0.0.1", "10.255.255.1"),
                 "--token-file", str(keys / "inference")]) == 1
    assert "pass --allow-remote" in capsys.readouterr().err
