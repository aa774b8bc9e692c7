"""Build a TorchServe archive (.mar) for one of our models with torch-model-archiver.

    torchserve-accel build resnet101 [--weights PATH] [--output-dir model_store] [--force]
    torchserve-accel build bert_large [--weights DIR]
    torchserve-accel build resnet101 --set minWorkers=1 --set maxWorkers=1   # model-config overrides
    torchserve-accel build resnet101 --set handler.blocking_sync=true         # one handler option

    torchserve-accel build bert_large --weights DIR --model-name sentiment --version 2.1
    torchserve-accel build resnet101 --archive-format no-archive   # model_store/resnet101/, registered by name
    torchserve-accel build resnet101 --no-bundle                   # workers import the installed library

The model's archive module prepares the archive's files (weights as safetensors, tokenizer files, ...) in a
staging directory; the archive then holds the handler entry file, archiver_configs/<model>.yaml as model-config,
and those files, flat in the archive root. The command puts the ``torchserve_accel`` library in too
(``torchserve_accel/...`` beside them, what workers need of it: bundle.py) with a ``requirements.txt`` of what it
imports, so the archive runs in any TorchServe whose Python has torch, torchvision, transformers and pillow;
with ``--no-bundle`` (and for ``build_archive`` callers unless ``bundle=True``) workers import the installed
library. Formats (``--archive-format``): ``default`` writes ``<name>.mar``; ``tgz`` ``<name>.tar.gz``;
``no-archive`` the unpacked directory ``<name>/``, which TorchServe registers by name and uses in place instead
of unzipping it at every start.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from torchserve_accel.tools import Log
from torchserve_accel.tools.bundle import stage_library, write_requirements
from torchserve_accel.tools.commands import Commands
from torchserve_accel.tools.paths import DEFAULT_MODEL_STORE, check_store_name, data_file

ARCHIVE_VERSION = "1.0"
ARCHIVE_SUFFIXES = {"default": ".mar", "tgz": ".tar.gz", "no-archive": ""}  # torch-model-archiver's --archive-format


@dataclass(frozen=True)
class ModelSpec:
    handler: str  # entry file, relative to the repository (paths.data_file)
    config: str  # archiver --config-file (model-config.yaml), likewise
    module: str  # provides prepare_archive_files(staging_dir, source, log, handler_options=) -> ArchiveFiles


MODELS = {
    "resnet101": ModelSpec("handlers/resnet_handler.py", "archiver_configs/resnet101.yaml",
                           "torchserve_accel.resnet.archive"),
    "bert_large": ModelSpec("handlers/bert_handler.py", "archiver_configs/bert_large.yaml",
                            "torchserve_accel.bert.archive"),
}


class ArchiveError(RuntimeError):
    pass


def archive_inputs(model: str) -> tuple[ModelSpec, Path, Path]:
    """The model's spec, handler entry file and model-config file; errors name what is missing."""
    if model not in MODELS:
        raise ArchiveError(f"unknown model {model!r}; known: {', '.join(MODELS)}")
    spec = MODELS[model]
    handler, config = data_file(spec.handler), data_file(spec.config)
    missing = [str(p) for p in (handler, config) if not p.is_file()]
    if missing:
        raise ArchiveError(f"{model}: missing {', '.join(missing)}")
    return spec, handler, config


def check_flat_names(handler: Path, config: Path, serialized: Path | None, extra: list[Path]) -> None:
    """Extra files land flat in the archive root: two files with one name would silently overwrite each other."""
    seen: dict[str, Path] = {}
    for path in [handler, config, *([serialized] if serialized else []), *extra]:
        path = Path(path)
        if not path.exists():
            raise ArchiveError(f"archive input {path} does not exist")
        if "," in str(path):
            raise ArchiveError(f"archive input {path}: torch-model-archiver splits paths on ','")
        names = [p.name for p in path.iterdir()] if path.is_dir() else [path.name]
        for name in names:
            if name in seen or name == "MAR-INF":
                raise ArchiveError(f"archive name clash: {name!r} from {path} and {seen.get(name, 'MAR-INF')}")
            seen[name] = path


def run_archiver(model: str, handler: Path, config: Path, serialized: Path | None, extra: list[Path],
                 output_dir: Path, work_dir: Path, *, version: str = ARCHIVE_VERSION, archive_format: str = "default",
                 requirements: Path | None = None) -> Path:
    """Run torch-model-archiver; the archive it wrote (a directory for ``no-archive``)."""
    cmd = [sys.executable, "-m", "model_archiver.model_packaging",
           "--model-name", model, "--version", version, "--handler", str(handler),
           "--config-file", str(config), "--export-path", str(output_dir), "--archive-format", archive_format,
           "--force"]
    if serialized is not None:
        cmd += ["--serialized-file", str(serialized)]
    if extra:
        cmd += ["--extra-files", ",".join(str(p) for p in extra)]
    if requirements is not None:
        cmd += ["--requirements-file", str(requirements)]
    # The archiver copies everything to $TMPDIR/<model-name> first: a private TMPDIR keeps parallel builds apart.
    env = dict(os.environ, TMPDIR=str(work_dir))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise ArchiveError(f"torch-model-archiver failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    return output_dir / f"{model}{ARCHIVE_SUFFIXES[archive_format]}"


def handler_section(config: Path) -> dict[str, Any]:
    """The ``handler:`` section of a model-config YAML ({} when it has none)."""
    import yaml

    section = (yaml.safe_load(config.read_text()) or {}).get("handler") or {}
    if not isinstance(section, dict):
        raise ArchiveError(f"{config}: 'handler' must be a mapping")
    return section


def config_with(config: Path, overrides: dict[str, Any], target: Path) -> Path:
    """``config`` (model-config YAML) with ``overrides`` applied, written to ``target``. A dotted key
    (``handler.blocking_sync``) sets one entry of a section and keeps the rest of it."""
    import yaml

    data = yaml.safe_load(config.read_text()) or {}
    for key, value in overrides.items():
        *sections, leaf = key.split(".")
        node = data
        for section in sections:
            if not isinstance(node.get(section, {}), dict):
                raise ArchiveError(f"--set {key}: {section!r} is not a section of {config.name}")
            node = node.setdefault(section, {})
        node[leaf] = value
    target.write_text(f"# {config.name} with {overrides}\n" + yaml.safe_dump(data, sort_keys=False))
    return target


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["minWorkers=1", "maxBatchDelay=5"]`` -> ``{"minWorkers": 1, "maxBatchDelay": 5}`` (values as YAML)."""
    import yaml

    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ArchiveError(f"--set expects KEY=VALUE, got {pair!r}")
        overrides[key] = yaml.safe_load(value)
    return overrides


def serialized_from_archive(archive: Path, target_dir: Path) -> Path | None:
    """The serialized file (the manifest's ``serializedFile``) of an existing .mar, extracted into ``target_dir``;
    None when there is no such archive or file."""
    try:
        with zipfile.ZipFile(archive) as mar:
            name = json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"].get("serializedFile")
            if not name:
                return None
            return Path(mar.extract(name, target_dir))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def build_archive(model: str, weights: Path | None = None, output_dir: Path = DEFAULT_MODEL_STORE,
                  force: bool = False, log: Log = print, config_overrides: dict[str, Any] | None = None,
                  name: str | None = None, handler: Path | None = None, config: Path | None = None,
                  weights_from: Path | None = None, extra_files: Sequence[Path] = (), *, bundle: bool = False,
                  version: str = ARCHIVE_VERSION, archive_format: str = "default") -> Path:
    """Build ``output_dir/<name or model>.mar``; refuses to overwrite an existing archive unless ``force``.

    ``config_overrides``: model-config keys to change (e.g. ``{"minWorkers": 1}``, ``{"handler.task": "qa"}``).
    For other archives of a model (the benchmarks' stock-style baseline): ``handler``/``config``, another entry
    file or model-config than the model's own; ``weights_from``, an existing archive whose serialized file is
    taken as is (the model prepares its files only when that archive has none); ``extra_files``, more files.
    ``bundle``: put the library (what workers import of it) and its requirements.txt in the archive.
    ``version``: the manifest's modelVersion. ``archive_format``: ``default`` (.mar), ``tgz`` (.tar.gz) or
    ``no-archive`` (a directory); the path returned is the archive written.
    """
    spec, default_handler, default_config = archive_inputs(model)
    handler, config = Path(handler or default_handler), Path(config or default_config)
    name = name or model
    try:
        check_store_name(name, "model name")
    except ValueError as err:
        raise ArchiveError(str(err)) from None
    if archive_format not in ARCHIVE_SUFFIXES:
        raise ArchiveError(f"archive format {archive_format!r}; known: {', '.join(ARCHIVE_SUFFIXES)}")
    output_dir = Path(output_dir).resolve()
    target = output_dir / f"{name}{ARCHIVE_SUFFIXES[archive_format]}"
    if target.exists() and not force:
        raise ArchiveError(f"{target} exists; pass --force to overwrite it")
    if weights is not None and not Path(weights).exists():
        raise ArchiveError(f"--weights {weights} does not exist")
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"{name}-archive-") as work:
        staging = Path(work) / "staging"
        staging.mkdir()
        if config_overrides:
            log(f"[{name}] model-config overrides: {config_overrides}")
            config = config_with(config, config_overrides, Path(work) / config.name)
        serialized = serialized_from_archive(weights_from, staging) if weights_from is not None else None
        if serialized is not None:
            log(f"[{name}] {serialized.name} from {weights_from} (the very file that archive has)")
            extra = []
        else:
            log(f"[{name}] preparing archive files in {staging} ...")
            files = importlib.import_module(spec.module).prepare_archive_files(
                staging, Path(weights) if weights is not None else None, log, handler_options=handler_section(config))
            serialized, extra = files.serialized_file, [Path(p) for p in files.extra_files]
        extra += [Path(p) for p in extra_files]
        requirements = None
        if bundle:
            extra.append(stage_library(Path(work) / "library"))
            requirements = write_requirements(Path(work) / "requirements.txt")
            needs = [line for line in requirements.read_text().splitlines() if not line.startswith("#")]
            log(f"[{name}] the torchserve_accel library goes in the archive; requirements.txt: {', '.join(needs)}")
        check_flat_names(handler, config, serialized, extra + ([requirements] if requirements else []))
        log(f"[{name}] running torch-model-archiver ({len(extra)} extra file(s), {archive_format}) ...")
        out = Path(work) / "out"
        out.mkdir()
        built = run_archiver(name, handler, config, serialized, extra, out, Path(work), version=version,
                             archive_format=archive_format, requirements=requirements)
        install_archive(built, target)
    log(f"[{name}] wrote {target} ({_size(target) / 1e6:.1f} MB) in {time.monotonic() - started:.0f} s")
    return target


def install_archive(built: Path, target: Path) -> None:
    """Move ``built`` (a file, or a no-archive directory) to ``target``: beside it first, then renamed, so a failed
    build never leaves a half-written archive in the store, and an existing one is replaced whole."""
    partial, old = target.with_name(target.name + ".partial"), target.with_name(target.name + ".old")
    for leftover in (partial, old):
        _remove(leftover)
    try:
        shutil.move(str(built), str(partial))
        if target.is_dir():  # a directory cannot be renamed over a non-empty one
            os.replace(target, old)
        os.replace(partial, target)
    finally:
        _remove(partial)
        if old.exists() and not target.exists():
            os.replace(old, target)  # the new one did not make it: keep the previous archive
        _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


# ---------------------------------------------------------------------------------------------- command line


def add_commands(commands: Commands) -> None:
    p = commands.add("build", _build, "build a TorchServe archive (.mar) for one of our models", details=__doc__)
    p.add_argument("model", choices=sorted(MODELS))
    p.add_argument("--weights", type=Path, default=None,
                   help="weights to package (see the model's archive module); default: random weights")
    p.add_argument("--output-dir", type=Path, default=DEFAULT_MODEL_STORE)
    p.add_argument("--force", action="store_true", help="overwrite an existing archive")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model-config key, e.g. --set minWorkers=1 or --set handler.task=qa (repeatable)")
    p.add_argument("--model-name", default=None, help="the archive's (and the registered model's) name; "
                                                      "default: MODEL")
    p.add_argument("--version", default=ARCHIVE_VERSION, help=f"the model version (default {ARCHIVE_VERSION})")
    p.add_argument("--archive-format", choices=list(ARCHIVE_SUFFIXES), default="default",
                   help="default: NAME.mar; tgz: NAME.tar.gz; no-archive: the directory NAME/ (TorchServe registers "
                        "it by name and uses it in place, no unzipping at every start)")
    p.add_argument("--no-bundle", dest="bundle", action="store_false",
                   help="leave the torchserve_accel library out: workers import the one installed next to TorchServe")


def _build(args: Any) -> None:
    build_archive(args.model, args.weights, args.output_dir, args.force, log=lambda m: print(m, flush=True),
                  config_overrides=parse_overrides(args.set), name=args.model_name, bundle=args.bundle,
                  version=args.version, archive_format=args.archive_format)
