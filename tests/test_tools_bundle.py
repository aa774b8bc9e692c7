"""Self-contained archives (torchserve_accel/tools/bundle.py, build.py): the library tree a worker needs goes into
the archive, and nothing it does not (tools, build-time modules, caches); the copy imports on its own; the
archive's requirements.txt lists exactly what the bundled modules import; ``torchserve-accel build`` bundles by
default, names and versions archives, and writes .mar, .tar.gz and unpacked directories with the real archiver."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from torchserve_accel.archive import ArchiveFiles
from torchserve_accel.tools import build as ba
from torchserve_accel.tools import bundle
from torchserve_accel.tools.cli import main
from tests.test_library_shape import ENTRY_FILES, REPO, closure, import_graph, imports_of, library_modules
from tests.stubs import stub_model as make_stub_model

OPTIONAL = {"tensorrt"}  # the tensorrt extra: imported only when that backend is asked for
SERVER_SIDE = {"ts"}  # TorchServe itself (serving/metrics.py)


def worker_modules() -> set[str]:
    """Every library module an entry file can reach, with the packages that contain them."""
    modules, graph = library_modules(), import_graph()
    reached = set()
    for entry in ENTRY_FILES:
        reached |= closure(imports_of(REPO / "handlers" / f"{entry}.py", modules), graph)
    return reached | {m.rsplit(".", i)[0] for m in reached for i in range(1, m.count(".") + 1)}


def bundled_modules(staging: Path) -> set[str]:
    return {".".join(p.relative_to(staging).with_suffix("").parts).removesuffix(".__init__")
            for p in staging.rglob("*.py")}


@pytest.fixture(scope="module")
def staging(tmp_path_factory) -> Path:
    return bundle.stage_library(tmp_path_factory.mktemp("bundle"))


def test_the_bundle_holds_what_workers_import_and_leaves_the_rest_out(staging):
    files = {p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file()}
    assert worker_modules() <= bundled_modules(staging)
    assert {"torchserve_accel/__init__.py", "torchserve_accel/serving/handler.py",
            "torchserve_accel/resnet/imagenet_classes.json"} <= files  # the labels resnet/runner.py reads
    assert not [f for f in files if f.startswith("torchserve_accel/tools/") or "__pycache__" in f
                or f.endswith((".pyc", "/archive.py"))]
    assert not {"torchserve_accel/__main__.py", "torchserve_accel/archive.py", "torchserve_accel/bert/vocab.py",
                "torchserve_accel/bert/common_words.txt"} & files
    # everything left out is build-time or tool code, which tests/test_library_shape.py keeps away from workers
    left_out = set(library_modules()) - bundled_modules(staging)
    assert all(m.endswith((".archive", ".vocab", "__main__")) or ".tools" in m or m == "torchserve_accel.tools"
               for m in left_out), left_out


def test_the_bundled_copy_imports_on_its_own(staging):
    """Workers import the bundle's modules (the archive root is ahead of site-packages), entry files included."""
    probe = (f"import sys; sys.path[:0] = [{str(staging)!r}, {str(REPO / 'handlers')!r}]\n"
             "import importlib, torchserve_accel\n"
             f"for name in {sorted(worker_modules())!r} + {sorted(ENTRY_FILES)!r}:\n"
             "    importlib.import_module(name)\n"
             "outside = [m.__file__ for n, m in sys.modules.items() if n.startswith('torchserve_accel')\n"
             f"           and getattr(m, '__file__', None) and not m.__file__.startswith({str(staging)!r})]\n"
             "assert not outside, outside\n"
             "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=staging, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def _third_party_imports() -> set[str]:
    modules = library_modules()
    names = set()
    for module in worker_modules():
        path = modules.get(module)
        for node in ast.walk(ast.parse(path.read_text())) if path else ():
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"torchserve_accel"} - OPTIONAL - SERVER_SIDE


def _dependencies(dist: str, seen: set[str] | None = None) -> set[str]:
    """``dist`` and every distribution it requires (installed ones, markers and extras ignored)."""
    seen = set() if seen is None else seen
    name = bundle._name(dist)
    if name in seen:
        return seen
    seen.add(name)
    try:
        requirements = metadata.requires(name) or []
    except metadata.PackageNotFoundError:
        return seen
    for requirement in requirements:
        if "extra ==" not in requirement:
            _dependencies(bundle._name(requirement), seen)
    return seen


def test_requirements_are_what_the_bundled_library_imports():
    listed = {bundle._name(r) for r in bundle.worker_requirements()}
    providers = metadata.packages_distributions()
    imported = {name: {bundle._name(d) for d in providers.get(name, [])} for name in _third_party_imports()}
    assert imported and all(imported.values()), imported  # every import is provided by an installed distribution
    covered = set().union(*(_dependencies(r) for r in listed))
    assert all(dists & covered for dists in imported.values()), (imported, listed)  # nothing missing
    direct = set().union(*imported.values())
    assert listed <= direct, listed - direct  # nothing TorchServe or the tools alone need
    assert {"torch", "torchvision", "transformers", "pillow"} <= listed
    # with their version ranges as setup.py has them
    assert set(bundle.worker_requirements()) <= set(bundle.install_requires())


def test_requirements_file(tmp_path):
    lines = bundle.write_requirements(tmp_path / "requirements.txt").read_text().splitlines()
    assert lines[0].startswith("# ") and lines[1:] == bundle.worker_requirements()


# ------------------------------------------------------------------------------------------ archives


@pytest.fixture
def stub_model(tmp_path, monkeypatch):
    """A model table entry whose archive module writes a small weights file (the real archiver packs it)."""
    def prepare_archive_files(staging_dir, source, log, handler_options=None):
        (staging_dir / "stub.safetensors").write_bytes(b"weights")
        return ArchiveFiles(serialized_file=staging_dir / "stub.safetensors", extra_files=[])

    make_stub_model(tmp_path, monkeypatch, prepare_archive_files)
    return tmp_path / "store"


def test_the_command_bundles_by_default_with_name_and_version(stub_model):
    assert main(["build", "stub", "--output-dir", str(stub_model), "--model-name", "sentiment",
                 "--version", "2.1"]) == 0
    with zipfile.ZipFile(stub_model / "sentiment.mar") as mar:
        names = set(mar.namelist())
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]
        requirements = mar.read("requirements.txt").decode()
    assert {"stub_handler.py", "stub.yaml", "stub.safetensors", "requirements.txt",
            "torchserve_accel/__init__.py", "torchserve_accel/serving/handler.py",
            "torchserve_accel/resnet/runner.py", "torchserve_accel/bert/runner.py"} <= names
    assert not [n for n in names if "/tools/" in n or n.endswith("/archive.py") or "__pycache__" in n]
    assert manifest["modelName"] == "sentiment" and manifest["modelVersion"] == "2.1"
    assert manifest["requirementsFile"] == "requirements.txt" and manifest["handler"] == "stub_handler.py"
    assert requirements.splitlines()[1:] == bundle.worker_requirements()


def test_no_bundle_leaves_the_library_out_as_build_archive_does_by_default(stub_model):
    assert main(["build", "stub", "--output-dir", str(stub_model), "--no-bundle"]) == 0
    target = ba.build_archive("stub", None, stub_model, log=lambda m: None, name="plain")
    for archive in (stub_model / "stub.mar", target):
        with zipfile.ZipFile(archive) as mar:
            assert set(mar.namelist()) == {"stub_handler.py", "stub.yaml", "stub.safetensors",
                                           "MAR-INF/MANIFEST.json"}, archive


def test_tgz_and_no_archive_formats(stub_model):
    tgz = ba.build_archive("stub", None, stub_model, log=lambda m: None, bundle=True, archive_format="tgz")
    assert tgz == stub_model.resolve() / "stub.tar.gz"
    with tarfile.open(tgz) as archive:
        names = set(archive.getnames())
        manifest = json.loads(archive.extractfile("stub/MAR-INF/MANIFEST.json").read())["model"]
    assert {"stub/stub_handler.py", "stub/requirements.txt", "stub/torchserve_accel/serving/handler.py"} <= names
    assert manifest["modelName"] == "stub"

    unpacked = ba.build_archive("stub", None, stub_model, log=lambda m: None, bundle=True, version="3",
                                archive_format="no-archive")
    assert unpacked == stub_model.resolve() / "stub" and unpacked.is_dir()
    assert (unpacked / "torchserve_accel" / "serving" / "handler.py").is_file()
    assert not (unpacked / "torchserve_accel" / "tools").exists()
    assert json.loads((unpacked / "MAR-INF" / "MANIFEST.json").read_text())["model"]["modelVersion"] == "3"
    assert sorted(p.name for p in stub_model.iterdir()) == ["stub", "stub.tar.gz"]  # nothing half-written left

    with pytest.raises(ba.ArchiveError, match="--force"):
        ba.build_archive("stub", None, stub_model, log=lambda m: None, archive_format="no-archive")
    (unpacked / "stale.txt").write_text("from the previous build")
    ba.build_archive("stub", None, stub_model, force=True, log=lambda m: None, archive_format="no-archive")
    assert not (unpacked / "stale.txt").exists() and not (unpacked / "torchserve_accel").exists()  # replaced whole
    assert sorted(p.name for p in stub_model.iterdir()) == ["stub", "stub.tar.gz"]


def test_a_failed_replacement_keeps_the_previous_archive(tmp_path, monkeypatch):
    target = tmp_path / "m"
    target.mkdir()
    (target / "old.txt").write_text("old")
    built = tmp_path / "built"
    built.mkdir()
    real_replace = ba.os.replace

    def refuse_new(src, dst):
        if str(src).endswith(".partial"):
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(ba.os, "replace", refuse_new)
    with pytest.raises(OSError, match="disk full"):
        ba.install_archive(built, target)
    assert (target / "old.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_names_and_formats_are_checked(stub_model):
    with pytest.raises(ba.ArchiveError, match="model name"):
        ba.build_archive("stub", None, stub_model, log=lambda m: None, name="../evil")
    with pytest.raises(ba.ArchiveError, match="archive format"):
        ba.build_archive("stub", None, stub_model, log=lambda m: None, archive_format="zip")
    with pytest.raises(SystemExit):
        main(["build", "stub", "--archive-format", "zip"])
