"""CUDA graphs keyed by a static shape, sharing one memory pool: the one place graphs are captured and replayed.

A model runs a graph by copying its input into the graph's static input (``replay``) and reading the graph's
static output, which the next replay overwrites: callers copy out what they keep. Graphs share one memory pool;
that is safe because replays never overlap and no graph reads another's intermediates.
"""

from __future__ import annotations

from typing import Any, Callable

import torch


class _Captured:
    def __init__(self, graph: torch.cuda.CUDAGraph, static_input: torch.Tensor, static_output: Any):
        self.graph, self.static_input, self.static_output = graph, static_input, static_output


class GraphSet:
    """``fn(static_input) -> output`` captured once per key (e.g. a batch bucket or a packed-token count).

    ``warmup_runs`` calls run on a side stream before each capture: Triton JIT, torch.compile, cuDNN autotuning and
    cuBLAS handles must all be done before capture.
    """

    def __init__(self, fn: Callable[[torch.Tensor], Any], device: torch.device, warmup_runs: int = 1,
                 log: Callable[[str], None] = lambda message: None):
        self.fn, self.device, self.warmup_runs, self.log = fn, torch.device(device), warmup_runs, log
        self.graphs: dict[Any, _Captured] = {}
        self.pool = None

    def __contains__(self, key: Any) -> bool:
        return key in self.graphs

    @torch.inference_mode()
    def capture(self, key: Any, static_input: torch.Tensor) -> _Captured:
        """Capture ``fn`` on ``static_input`` (a device tensor the graph keeps as its input buffer)."""
        current = torch.cuda.current_stream(self.device)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(current)
        with torch.cuda.stream(stream):
            for _ in range(self.warmup_runs):
                self.fn(static_input)
        current.wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            static_output = self.fn(static_input)
        self.pool = graph.pool()
        captured = self.graphs[key] = _Captured(graph, static_input, static_output)
        self.log(f"captured a CUDA graph for {key} ({tuple(static_input.shape)} input)")
        return captured

    def replay(self, key: Any, source: torch.Tensor) -> Any:
        """Copy ``source`` into the first rows of graph ``key``'s static input, replay, return its static output.

        Rows past ``source`` keep what an earlier replay left there: callers read only the rows they filled.
        """
        captured = self.graphs[key]
        captured.static_input[: source.shape[0]].copy_(source)
        captured.graph.replay()
        return captured.static_output
