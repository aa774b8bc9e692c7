#!/usr/bin/env python3
"""Build a TorchServe archive (.mar) for one of our models with torch-model-archiver.

    python scripts/build_archive.py resnet101 [--weights PATH] [--output-dir model_store] [--force]
    python scripts/build_archive.py bert_large [--weights DIR]
    python scripts/build_archive.py resnet101 --set minWorkers=1 --set maxWorkers=1   # model-config overrides
    python scripts/build_archive.py resnet101 --set handler.blocking_sync=true         # one handler option

The model's module prepares the archive's files (weights as safetensors, tokenizer files, ...) in a staging
directory; the archive then holds the handler entry file, archiver_configs/<model>.yaml as model-config, and
those files, all flat in the archive root. Handler code itself is not in the archive: workers import the
installed ``handlers`` package (``pip install -e .``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
ARCHIVE_VERSION = "1.0"


@dataclass(frozen=True)
class ModelSpec:
    handler: str  # entry file, relative to the repo
    config: str  # archiver --config-file (model-config.yaml), relative to the repo
    module: str  # provides prepare_archive_files(staging_dir, source, log, handler_options=) -> handlers.common.ArchiveFiles


MODELS = {
    "resnet101": ModelSpec("handlers/resnet_handler.py", "archiver_configs/resnet101.yaml", "handlers.vision.resnet"),
    "bert_large": ModelSpec("handlers/bert_handler.py", "archiver_configs/bert_large.yaml", "handlers.text.bert"),
}


class ArchiveError(RuntimeError):
    pass


def archive_inputs(model: str, repo: Path = REPO) -> tuple[ModelSpec, Path, Path]:
    """The model's spec, handler entry file and model-config file; errors name what is missing."""
    if model not in MODELS:
        raise ArchiveError(f"unknown model {model!r}; known: {', '.join(MODELS)}")
    spec = MODELS[model]
    handler, config = repo / spec.handler, repo / spec.config
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
                 output_dir: Path, work_dir: Path) -> Path:
    cmd = [sys.executable, "-m", "model_archiver.model_packaging",
           "--model-name", model, "--version", ARCHIVE_VERSION, "--handler", str(handler),
           "--config-file", str(config), "--export-path", str(output_dir), "--archive-format", "default", "--force"]
    if serialized is not None:
        cmd += ["--serialized-file", str(serialized)]
    if extra:
        cmd += ["--extra-files", ",".join(str(p) for p in extra)]
    # The archiver copies everything to $TMPDIR/<model-name> first: a private TMPDIR keeps parallel builds apart.
    env = dict(os.environ, TMPDIR=str(work_dir))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise ArchiveError(f"torch-model-archiver failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    return output_dir / f"{model}.mar"


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


def build_archive(model: str, weights: Path | None = None, output_dir: Path = REPO / "model_store",
                  force: bool = False, log: Callable[[str], None] = print,
                  config_overrides: dict[str, Any] | None = None, name: str | None = None,
                  handler: Path | None = None, config: Path | None = None) -> Path:
    """Build ``output_dir/<name or model>.mar``; refuses to overwrite an existing archive unless ``force``.

    ``config_overrides``: top-level model-config keys to change (e.g. ``{"minWorkers": 1}``);
    ``handler``/``config``: another entry file or model-config than the model's own (benchmarks use this).
    """
    spec, default_handler, default_config = archive_inputs(model)
    handler, config = Path(handler or default_handler), Path(config or default_config)
    name = name or model
    output_dir = Path(output_dir).resolve()
    target = output_dir / f"{name}.mar"
    if target.exists() and not force:
        raise ArchiveError(f"{target} exists; pass --force to overwrite it")
    if weights is not None and not Path(weights).exists():
        raise ArchiveError(f"--weights {weights} does not exist")
    output_dir.mkdir(parents=True, exist_ok=True)
    module = importlib.import_module(spec.module)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"{model}-archive-") as work:
        staging = Path(work) / "staging"
        staging.mkdir()
        if config_overrides:
            log(f"[{name}] model-config overrides: {config_overrides}")
            config = config_with(config, config_overrides, Path(work) / config.name)
        log(f"[{model}] preparing archive files in {staging} ...")
        files = module.prepare_archive_files(staging, Path(weights) if weights is not None else None, log,
                                             handler_options=handler_section(config))
        extra = [Path(p) for p in files.extra_files]
        check_flat_names(handler, config, files.serialized_file, extra)
        log(f"[{model}] running torch-model-archiver ({len(extra)} extra file(s)) ...")
        out = Path(work) / "out"
        out.mkdir()
        built = run_archiver(name, handler, config, files.serialized_file, extra, out, Path(work))
        # Copy beside the target, then rename: a failed build never leaves a half-written archive in the store.
        partial = target.with_name(target.name + ".partial")
        try:
            shutil.copyfile(built, partial)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    log(f"[{model}] wrote {target} ({target.stat().st_size / 1e6:.1f} MB) in {time.monotonic() - started:.0f} s")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build a TorchServe archive (.mar) for one of our models.")
    parser.add_argument("model", choices=sorted(MODELS))
    parser.add_argument("--weights", type=Path, default=None,
                        help="weights to package (see the model's module); default: random weights")
    parser.add_argument("--output-dir", type=Path, default=REPO / "model_store")
    parser.add_argument("--force", action="store_true", help="overwrite an existing archive")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a top-level model-config key, e.g. --set minWorkers=1 (repeatable)")
    args = parser.parse_args(argv)
    try:
        build_archive(args.model, args.weights, args.output_dir, args.force, log=lambda m: print(m, flush=True),
                      config_overrides=parse_overrides(args.set))
    except ArchiveError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if __package__ in (None, ""):
        sys.path.insert(0, str(REPO))  # `python scripts/build_archive.py` from anywhere
    sys.exit(main())
