"""Engines by name. Each model keeps one ``Registry`` of the backends it can run on.

A ``Backend`` is a name, a builder and ``unavailable_reason(device)``: None when it can run here, else one readable
sentence. Builders import their optional libraries (TensorRT, Triton, Inductor) inside, so a worker loads only the
backend it runs. ``choose("auto", device)`` takes the first available backend of the model's order and returns,
with it, why each one before it was passed over; a backend named explicitly is returned as asked, and its
``build`` fails loudly when it cannot run here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch


class BackendUnavailable(RuntimeError):
    """A backend was asked to build where it cannot run."""


def always_available(device: torch.device) -> str | None:
    return None


def needs_gpu(device: torch.device) -> str | None:
    return None if torch.device(device).type == "cuda" else f"needs a GPU worker (this one runs on {device})"


@dataclass(frozen=True)
class Backend:
    name: str
    builder: Callable[..., Any]
    unavailable_reason: Callable[[torch.device], str | None] = always_available
    summary: str = ""

    def build(self, device: torch.device, *args: Any, **kwargs: Any) -> Any:
        why = self.unavailable_reason(device)
        if why is not None:
            raise BackendUnavailable(f"the {self.name} backend {why}")
        return self.builder(*args, **kwargs)


class Registry:
    def __init__(self, backends: Iterable[Backend], auto: Sequence[str]):
        self.backends = {b.name: b for b in backends}
        unknown = [name for name in auto if name not in self.backends]
        if unknown:
            raise ValueError(f"auto order names unknown backends {unknown}")
        self.auto = tuple(auto)

    @property
    def names(self) -> tuple[str, ...]:
        return ("auto", *self.backends)

    def __getitem__(self, name: str) -> Backend:
        try:
            return self.backends[name]
        except KeyError:
            raise KeyError(f"unknown backend {name!r}; known: {', '.join(self.names)}") from None

    def choose(self, requested: str, device: torch.device) -> tuple[Backend, list[str]]:
        """The backend to build and the reasons the ones before it in the auto order were not taken."""
        if requested != "auto":
            return self[requested], []
        reasons = []
        for name in self.auto:
            why = self.backends[name].unavailable_reason(device)
            if why is None:
                return self.backends[name], reasons
            reasons.append(f"{name} not taken: {why}")
        raise BackendUnavailable(f"no backend can run on {device}: {'; '.join(reasons)}")
