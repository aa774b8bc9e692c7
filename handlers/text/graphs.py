"""CUDA graphs for the packed encoder: one graph per packed-token bucket, all sharing one memory pool.

A graph is captured on a segment of fixed shape (``token_bucket`` tokens x ``seq_slots`` sequences x a fixed
``max_seqlen``), so any chunk that ``plan_chunks(..., graph_max_tokens=...)`` lays out for graphs replays it
after one device-to-device copy into the graph's input segment. Only small chunks take graphs: there the
~170 launches of a forward cost more than the GPU work; big chunks are GPU-bound and run eagerly. Outputs are cloned out of the graph's static buffer
(tiny: S x labels or S x H), so several chunks of one batch can replay the same graph.
"""

from __future__ import annotations

from typing import Callable

import torch

from handlers.text.packing import empty_segment, view_segment


class _Captured:
    def __init__(self, graph: torch.cuda.CUDAGraph, segment: torch.Tensor, output: torch.Tensor):
        self.graph, self.segment, self.output = graph, segment, output


class CudaGraphRunner:
    def __init__(
        self,
        forward: Callable,
        device: torch.device,
        seq_slots: int,
        max_seqlen: int,
        pad_token_id: int = 0,
        log: Callable[[str], None] = lambda _: None,
    ):
        self.forward, self.device = forward, torch.device(device)
        self.seq_slots, self.max_seqlen, self.pad_token_id = seq_slots, max_seqlen, pad_token_id
        self.graphs: dict[int, _Captured] = {}
        self.pool = None
        self.log = log

    def capture(self, num_tokens: int) -> _Captured:
        """Capture the forward for segments of ``num_tokens`` tokens (after one warm-up run on a side stream)."""
        segment = empty_segment(num_tokens, self.seq_slots, self.max_seqlen, self.pad_token_id).to(self.device)
        batch = view_segment(segment, num_tokens, self.seq_slots, self.max_seqlen)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):  # warm-up: Triton JIT, cuBLAS handles, allocator
            self.forward(batch)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            output = self.forward(batch)
        self.pool = graph.pool()
        captured = self.graphs[num_tokens] = _Captured(graph, segment, output)
        self.log(f"captured CUDA graph for {num_tokens} packed tokens x {self.seq_slots} sequences")
        return captured

    def capture_all(self, buckets: list[int]) -> None:
        """Capture the largest first, so smaller graphs reuse its pool memory."""
        for num_tokens in sorted(set(buckets), reverse=True):
            if num_tokens not in self.graphs:
                self.capture(num_tokens)

    def __call__(self, segment: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """segment: a device int64 segment laid out at ``num_tokens`` x ``seq_slots`` -> cloned output."""
        captured = self.graphs.get(num_tokens) or self.capture(num_tokens)
        captured.segment.copy_(segment)
        captured.graph.replay()
        return captured.output.clone()
