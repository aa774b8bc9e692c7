"""Typed options, read once from the ``handler:`` section of an archive's model-config.yaml.

Unknown keys and wrongly typed values are ``OptionsError`` at ``initialize``: a typo in a config must never be
silently ignored on a serving fleet. The words are the same for every model: ``backend`` (a name in the model's
engine registry, or ``auto``), ``precision`` (``fp16 | bf16 | fp32`` on a GPU; CPU workers run fp32),
``cuda_graphs``, ``cuda_wait``, ``engine_cache_dir``, ``correctness_gate``, ``max_items_per_request``.

An options class may rename old keys: ``upgrade(section) -> notes`` rewrites them in place before the check, and
every note is logged as a deprecation warning.
"""

from __future__ import annotations

import dataclasses
import logging
import typing
from typing import Any, Literal, Mapping, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

Precision = Literal["fp16", "bf16", "fp32"]
# How a worker's host threads wait for its GPU (serving/device.py): auto is CUDA's own choice (spin while the
# process has fewer active CUDA contexts than the host has cores, else yield); sleep blocks the thread on a
# synchronization primitive until the GPU is done, leaving the core to other workers and the frontend.
CudaWait = Literal["auto", "spin", "yield", "sleep"]


class OptionsError(ValueError):
    """A model-config.yaml ``handler:`` section that does not fit the model's options."""


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union:  # Optional[X] and X | None
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(name, value, inner)
    if origin is typing.Literal:
        if value not in args:
            raise OptionsError(f"handler.{name}: {value!r} is not one of {list(args)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise OptionsError(f"handler.{name}: expected a list, got {value!r}")
        item_type = args[0] if args else Any
        items = [_coerce(f"{name}[]", v, item_type) for v in value]
        return tuple(items) if origin is tuple else items
    if annotation is bool:
        if not isinstance(value, bool):
            raise OptionsError(f"handler.{name}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise OptionsError(f"handler.{name}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise OptionsError(f"handler.{name}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise OptionsError(f"handler.{name}: expected a string, got {value!r}")
        return value
    return value


def parse_options(cls: type[T], section: Mapping[str, Any] | None) -> T:
    """Build the dataclass ``cls`` from a mapping, checking names and types, then ``validate()``.

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Opts:
    ...     top_k: int = 5
    >>> parse_options(Opts, {"top_k": 3})
    Opts(top_k=3)
    """
    section = dict(section or {})
    upgrade = getattr(cls, "upgrade", None)
    for note in upgrade(section) if upgrade is not None else []:
        log.warning("deprecated option: %s", note)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(section) - set(fields))
    if unknown:
        raise OptionsError(f"unknown handler option(s) {unknown}; known: {sorted(fields)}")
    kwargs = {name: _coerce(name, value, hints[name]) for name, value in section.items()}
    options = cls(**kwargs)
    validate = getattr(options, "validate", None)
    if validate is not None:
        validate()
    return options


def options_from_context(cls: type[T], context: Any) -> T:
    """Read ``cls`` from ``context.model_yaml_config['handler']`` (missing section: all defaults)."""
    yaml_config = getattr(context, "model_yaml_config", None) or {}
    return parse_options(cls, yaml_config.get("handler"))


def rename_option(section: dict, old: str, new: str, values: Mapping[Any, Any] | None = None) -> list[str]:
    """Move ``section[old]`` to ``section[new]`` (through ``values`` when given); the deprecation note, if any."""
    if old not in section:
        return []
    value = section.pop(old)
    if new in section:
        raise OptionsError(f"handler.{old} is the deprecated name of handler.{new}: set only {new}")
    section[new] = values.get(value, value) if values is not None else value
    shown = f"{new}: {section[new]}" if section[new] != value else new
    return [f"handler.{old}: {value!r} is now handler.{shown}"]
