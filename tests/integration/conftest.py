"""Fixtures for tests against the real TorchServe frontend: archives built by the real archiver once per
session; instances (tests/integration/serving.py) on free loopback ports with token auth on, each in its own
run directory, so each has its own TMPDIR, worker sockets and key_file.json.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from torchserve_accel.tools.build import build_archive
from torchserve_accel.tools.launch import find_java_home
from tests.integration.serving import build_echo_archive, log


@pytest.fixture(scope="session")
def java_home():
    """Fails (does not skip) without Java 17+: these tests exist to run TorchServe for real."""
    return find_java_home()


@pytest.fixture(scope="session")
def echo_store(tmp_path_factory, java_home) -> Path:
    store = tmp_path_factory.mktemp("echo") / "model_store"
    build_echo_archive(store)
    return store


@pytest.fixture(scope="session")
def resnet_store(tmp_path_factory, java_home):
    """model_store/resnet101.mar with random weights, built once per session (~170 MB, ~20 s on 2 cores)."""
    store = tmp_path_factory.mktemp("resnet") / "model_store"
    # The shipped model-config's worker count is tuned for a GPU; two CPU workers suit this machine.
    build_archive("resnet101", None, store, force=False, log=log, config_overrides={"minWorkers": 2, "maxWorkers": 2})
    yield store
    shutil.rmtree(store, ignore_errors=True)  # pytest keeps the last runs' tmp dirs: don't keep 170 MB each
