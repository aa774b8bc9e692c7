"""Packing a tokenized batch into padding-free form: one int64 buffer per batch, laid out on the host.

The encoder never sees padding. For a chunk of ``S`` sequences with ``T`` tokens in all, the host writes
one flat int64 segment

    [input_ids T | token_type_ids T | position_ids T | seq_ids T | dense_index T | cu_seqlens S+1 | first_token S]

and the whole batch (all chunks) crosses to the GPU in one copy. Everything the layers need (cu_seqlens for
varlen attention, the gather/scatter indices for padding-based fallbacks, the CLS index for pooling) is in
that segment, so no layer ever asks the host anything.

A chunk can be laid out larger than its content, which is what CUDA graphs need (fixed shapes):
``num_tokens`` rounds up to a bucket (``token_bucket``) and ``seq_slots`` to a fixed slot count. Only small
chunks are worth it (launch-bound); large chunks are GPU-bound and run exactly, without bucket waste. Extra slots
are empty sequences (``cu_seqlens`` repeats the last offset; ``first_token`` 0). Extra tokens are pad tokens
that belong to no sequence: they lie outside ``cu_seqlens`` (varlen attention never reads or writes them),
their ``seq_id`` is the trash slot ``seq_slots`` (dropped by pooling) and every other op is row-wise, so they
cannot leak into real results.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import Sequence

import numpy as np
import torch

NUM_TOKEN_FIELDS = 5  # input_ids, token_type_ids, position_ids, seq_ids, dense_index


@dataclass(frozen=True)
class ChunkLayout:
    """Where one chunk's sequences go: ``[start, stop)`` of the batch, laid out as ``num_tokens`` x ``seq_slots``."""

    start: int
    stop: int
    real_tokens: int
    num_tokens: int  # >= real_tokens (bucketed for CUDA graphs)
    seq_slots: int  # >= stop - start
    max_seqlen: int  # padded length for dense fallbacks and the varlen kernel's grid
    offset: int = 0  # where the chunk's segment starts in the batch buffer
    graphed: bool = False  # laid out for a CUDA graph (bucketed tokens, fixed slots and max_seqlen)

    @property
    def size(self) -> int:
        return segment_size(self.num_tokens, self.seq_slots)

    @property
    def uniform(self) -> bool:
        """Every slot holds a sequence of exactly ``max_seqlen`` tokens: packed is then also dense (S, L)."""
        return self.real_tokens == self.num_tokens == (self.stop - self.start) * self.max_seqlen and (
            self.stop - self.start == self.seq_slots
        )


def segment_size(num_tokens: int, seq_slots: int) -> int:
    return NUM_TOKEN_FIELDS * num_tokens + 2 * seq_slots + 1


@dataclass
class PackedBatch:
    """Views into one chunk's segment (on host or device). Shapes: T = ``num_tokens``, S = ``seq_slots``."""

    input_ids: torch.Tensor  # (T,) int64
    token_type_ids: torch.Tensor  # (T,) int64
    position_ids: torch.Tensor  # (T,) int64
    seq_ids: torch.Tensor  # (T,) int64, in [0, S]; S is the trash slot of pad tokens
    dense_index: torch.Tensor  # (T,) int64, seq_id * max_seqlen + position (padded row of each token)
    cu_seqlens: torch.Tensor  # (S+1,) int64
    first_token: torch.Tensor  # (S,) int64, index of each sequence's [CLS] token (0 for empty slots)
    max_seqlen: int
    uniform: bool = False  # host-known: all S sequences have max_seqlen tokens (T == S * L, no pad tokens)

    @property
    def num_tokens(self) -> int:
        return self.input_ids.shape[0]

    @property
    def seq_slots(self) -> int:
        return self.first_token.shape[0]


def view_segment(
    buffer: torch.Tensor, num_tokens: int, seq_slots: int, max_seqlen: int, uniform: bool = False
) -> PackedBatch:
    """Split a flat int64 segment (host or device) into the fields of a ``PackedBatch``; no copies."""
    t = num_tokens
    fields = buffer[: NUM_TOKEN_FIELDS * t].view(NUM_TOKEN_FIELDS, t)
    tail = buffer[NUM_TOKEN_FIELDS * t : segment_size(t, seq_slots)]
    return PackedBatch(
        input_ids=fields[0],
        token_type_ids=fields[1],
        position_ids=fields[2],
        seq_ids=fields[3],
        dense_index=fields[4],
        cu_seqlens=tail[: seq_slots + 1],
        first_token=tail[seq_slots + 1 :],
        max_seqlen=max_seqlen,
        uniform=uniform,
    )


def token_bucket(num_tokens: int, minimum: int = 256) -> int:
    """Round a packed token count up to a bucket: multiples of ``minimum`` up to ``16 * minimum``, then sixteen
    buckets per power of two (at most 6.25% pad tokens); 64 CUDA graphs cover 1..32768 tokens."""
    if num_tokens <= 16 * minimum:
        return max(minimum, -(-num_tokens // minimum) * minimum)
    step = max(minimum, 1 << (num_tokens.bit_length() - 5))  # 1/16 of the power of two below num_tokens
    return -(-num_tokens // step) * step


def plan_chunks(
    lengths: Sequence[int],
    max_sequences: int,
    max_tokens: int,
    *,
    graph_max_tokens: int = 0,
    graph_max_seqlen: int = 0,
    fixed_max_seqlen: int | None = None,
) -> list[ChunkLayout]:
    """Split sequences (in order) into chunks of at most ``max_sequences`` sequences and ``max_tokens`` tokens.

    A chunk whose ``token_bucket`` is at most ``graph_max_tokens`` is laid out for a CUDA graph:
    ``token_bucket(tokens)`` x ``max_sequences`` slots x ``graph_max_seqlen``. Other chunks are laid out exactly
    (no pad tokens, no empty slots) with ``fixed_max_seqlen`` or else their longest sequence as padded length.
    """
    chunks: list[ChunkLayout] = []
    start, tokens, longest, offset = 0, 0, 0, 0

    def close(stop: int) -> None:
        nonlocal offset
        bucket = token_bucket(tokens)
        if bucket <= graph_max_tokens:
            layout = ChunkLayout(start, stop, tokens, bucket, max_sequences, graph_max_seqlen, offset, graphed=True)
        else:
            layout = ChunkLayout(start, stop, tokens, tokens, stop - start, fixed_max_seqlen or longest, offset)
        chunks.append(layout)
        offset += layout.size

    for i, n in enumerate(lengths):
        if n > max_tokens:
            raise ValueError(f"sequence of {n} tokens exceeds max_batch_tokens={max_tokens}")
        if i > start and (i - start == max_sequences or tokens + n > max_tokens):
            close(i)
            start, tokens, longest = i, 0, 0
        tokens += n
        longest = max(longest, n)
    if len(lengths) > start:
        close(len(lengths))
    return chunks


def pack_chunks(
    ids: Sequence[Sequence[int]],
    type_ids: Sequence[Sequence[int]],
    chunks: Sequence[ChunkLayout],
    pad_token_id: int = 0,
    pin_memory: bool = False,
) -> torch.Tensor:
    """Lay out every chunk of the batch into one flat int64 host tensor (pinned if asked), ready for one copy."""
    total = sum(c.size for c in chunks)
    out = torch.empty(total, dtype=torch.int64, pin_memory=pin_memory)
    buf = out.numpy()
    for c in chunks:
        seg = buf[c.offset : c.offset + c.size]
        t, s, real = c.num_tokens, c.seq_slots, c.real_tokens
        fields = seg[: NUM_TOKEN_FIELDS * t].reshape(NUM_TOKEN_FIELDS, t)
        tail = seg[NUM_TOKEN_FIELDS * t :]
        n_seqs = c.stop - c.start
        lens = np.fromiter((len(ids[i]) for i in range(c.start, c.stop)), dtype=np.int64, count=n_seqs)
        starts = np.zeros(n_seqs, dtype=np.int64)
        np.cumsum(lens[:-1], out=starts[1:])
        if real:
            fields[0, :real] = np.fromiter(chain.from_iterable(ids[c.start : c.stop]), np.int64, real)
            fields[1, :real] = np.fromiter(chain.from_iterable(type_ids[c.start : c.stop]), np.int64, real)
            seq = np.repeat(np.arange(n_seqs, dtype=np.int64), lens)
            pos = np.arange(real, dtype=np.int64) - np.repeat(starts, lens)
            fields[2, :real] = pos
            fields[3, :real] = seq
            fields[4, :real] = seq * c.max_seqlen + pos
        pad = t - real
        if pad:
            fields[0, real:] = pad_token_id
            fields[1, real:] = 0
            fields[2, real:] = 0
            fields[3, real:] = s  # the trash slot
            fields[4, real:] = s * c.max_seqlen + np.arange(pad, dtype=np.int64) % max(c.max_seqlen, 1)
        cu = tail[: s + 1]
        cu[0] = 0
        cu[1 : n_seqs + 1] = np.cumsum(lens)
        cu[n_seqs + 1 :] = real
        first = tail[s + 1 :]
        first[:n_seqs] = starts
        first[n_seqs:] = 0
    return out


def empty_segment(num_tokens: int, seq_slots: int, max_seqlen: int, pad_token_id: int = 0) -> torch.Tensor:
    """A valid segment with no sequences at all (only pad tokens): what CUDA graphs are captured on."""
    layout = ChunkLayout(0, 0, 0, num_tokens, seq_slots, max_seqlen)
    return pack_chunks([], [], [layout], pad_token_id)
