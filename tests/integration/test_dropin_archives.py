"""Archives that carry the library serve in a TorchServe whose Python does not have it, as an existing TorchServe
install would be: ``torchserve-accel start --python`` runs TorchServe and its workers with a Python that sees
torch, transformers and TorchServe (this environment's site-packages, added by a .pth line) but not the
``torchserve_accel`` library (installed here in editable mode, through a .pth file in that site-packages, which a
directory added by another .pth line does not process). Two negative controls show the library really is missing
there: that Python cannot import it, and an archive built with ``--no-bundle`` does not load there. The model is
a tiny random BERT classifier (tests/integration/test_bad_inputs.py) in each archive format.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from torchserve_accel.tools.build import build_archive
from torchserve_accel.tools.cli import main
from torchserve_accel.tools.torchserve import TorchServe, TorchServeError
from tests.integration.serving import log
from tests.integration.test_bad_inputs import TINY_BERT

pytestmark = pytest.mark.integration
TINY = {"minWorkers": 1, "maxWorkers": 1}
TEXT = json.dumps({"text": "the archive brought its own code"})


def isolated_python(root: Path) -> Path:
    """A virtual environment whose site-packages holds one .pth line: the directories torch and TorchServe are
    installed in here. It imports those, and not what an editable install adds through its own .pth file."""
    import torch
    import ts

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    python = root / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    dirs = dict.fromkeys(str(Path(m.__file__).resolve().parents[1]) for m in (torch, ts))
    (Path(purelib) / "torchserve_deps.pth").write_text("".join(f"{d}\n" for d in dirs))
    return python


def without_pythonpath() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def imports(python: Path, module: str, cwd: Path) -> bool:
    return subprocess.run([str(python), "-c", f"import {module}"], cwd=cwd, env=without_pythonpath(),
                          capture_output=True, timeout=300).returncode == 0


@pytest.fixture(scope="module")
def dropin(tmp_path_factory, java_home):
    """A TorchServe running under the isolated Python, with a store of tiny-BERT archives: ``tiny.mar`` (bundled,
    through the command), ``tinytgz.tar.gz`` and ``tinydir/`` (bundled), ``plain.mar`` (--no-bundle)."""
    from torchserve_accel.bert.archive import make_random_checkpoint

    root = tmp_path_factory.mktemp("dropin")
    python = isolated_python(root / "venv")
    checkpoint = make_random_checkpoint(root / "checkpoint", seed=6, config_overrides=TINY_BERT)
    store = root / "model_store"
    sets = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]
    assert main(["build", "bert_large", "--weights", str(checkpoint), "--output-dir", str(store),
                 "--model-name", "tiny", "--version", "2.0", *sets]) == 0
    assert main(["build", "bert_large", "--weights", str(checkpoint), "--output-dir", str(store),
                 "--model-name", "plain", "--no-bundle", *sets]) == 0
    for name, archive_format in (("tinytgz", "tgz"), ("tinydir", "no-archive")):
        build_archive("bert_large", checkpoint, store, log=log, config_overrides=TINY, name=name, bundle=True,
                      archive_format=archive_format)
    run_dir = root / "run"
    with pytest.MonkeyPatch.context() as env:
        env.delenv("PYTHONPATH", raising=False)  # the checkout must not reach the workers by this way either
        assert main(["start", "--run-dir", str(run_dir), "--model-store", str(store), "--ports", "free",
                     "--python", str(python), "--mps", "off", "--timeout", "180"]) == 0
    ts = TorchServe(run_dir)
    try:
        yield ts, python, store
    except BaseException:
        print(ts.log_tail(), flush=True)
        raise
    finally:
        ts.stop(log=log)


def test_that_python_runs_torchserve_but_cannot_import_the_library(dropin, tmp_path):
    ts, python, _ = dropin
    assert imports(python, "torch, transformers, torchvision, PIL, ts.model_server", tmp_path)
    assert not imports(python, "torchserve_accel", tmp_path)  # negative control
    assert imports(sys.executable, "torchserve_accel", tmp_path)  # while this one can
    assert ts.info.python == str(python)


@pytest.mark.parametrize("url, model", [("tiny.mar", "tiny"), ("tinytgz.tar.gz", "tinytgz"), ("tinydir", "tinydir")])
def test_a_bundled_archive_serves_there(dropin, url, model):
    ts, python, store = dropin
    ts.register(url, model)
    try:
        answer = ts.predict(model, TEXT, "application/json")
        assert answer.status_code == 200, answer.text
        assert answer.json()["label"] in ("negative", "positive")
        (worker,) = ts.describe(model)["workers"]
        assert psutil.Process(worker["pid"]).cmdline()[0] == str(python)  # the worker runs the isolated Python
        if model == "tiny":
            assert ts.describe(model)["modelVersion"] == "2.0"
        if model == "tinydir":  # registered in place: the model directory is the store's, not an unpacked copy
            (linked,) = (ts.tmp_dir / "models").glob("*/tinydir")
            assert linked.resolve() == (store / "tinydir").resolve()
    finally:
        ts.unregister(model)


def test_an_archive_without_the_library_does_not_load_there(dropin):
    ts, _, _ = dropin
    with pytest.raises(TorchServeError, match="Failed to start workers") as refused:
        ts.register("plain.mar", "plain")
    assert refused.value.status == 500
    model_log = (ts.run_dir / "logs" / "model_log.log").read_text(errors="replace")
    assert "torchserve-accel is not importable in the Python that runs TorchServe workers" in model_log
    try:
        ts.unregister("plain")
    except TorchServeError:
        pass
