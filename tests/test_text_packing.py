"""Host-side packing: chunk plans, bucket sizes, segment layout (torchserve_accel/bert/packing.py)."""

from __future__ import annotations

import numpy as np
import pytest

from torchserve_accel.bert.engines import graph_buckets
from torchserve_accel.bert.packing import pack_chunks, plan_chunks, token_bucket, view_segment


def _seqs(lengths, start=10):
    ids = [list(range(start, start + n)) for n in lengths]
    types = [[i % 2] * n for i, n in enumerate(lengths)]
    return ids, types


def test_token_bucket_bounds_waste_and_is_monotonic():
    previous = 0
    for n in range(1, 70_000, 37):
        b = token_bucket(n)
        assert b >= n and b >= previous
        assert b % 256 == 0
        assert b <= max(256, n * 1.0625 + 256)
        previous = b


def test_graph_buckets_cover_every_chunk_size():
    buckets = set(graph_buckets(32768))
    assert max(buckets) == 32768 and len(buckets) == 64
    for n in range(1, 32769, 97):
        assert token_bucket(n) in buckets
    assert max(graph_buckets(8192)) == 8192 and len(graph_buckets(8192)) == 32


def test_plan_chunks_respects_sequence_and_token_limits():
    lengths = [100, 200, 50, 300, 10, 10, 10]
    chunks = plan_chunks(lengths, max_sequences=3, max_tokens=400)
    assert [(c.start, c.stop) for c in chunks] == [(0, 3), (3, 6), (6, 7)]
    assert all(c.real_tokens <= 400 and c.stop - c.start <= 3 for c in chunks)
    assert [c.max_seqlen for c in chunks] == [200, 300, 10]
    offsets = [c.offset for c in chunks]
    assert offsets[0] == 0 and offsets[1] == chunks[0].size and offsets[2] == offsets[1] + chunks[1].size
    with pytest.raises(ValueError):
        plan_chunks([500], max_sequences=4, max_tokens=400)


def test_exact_layout_fields():
    lengths = [3, 1, 4]
    ids, types = _seqs(lengths)
    (chunk,) = plan_chunks(lengths, 8, 100)
    batch = view_segment(pack_chunks(ids, types, [chunk]), chunk.num_tokens, chunk.seq_slots, chunk.max_seqlen)
    assert batch.input_ids.tolist() == sum(ids, [])
    assert batch.token_type_ids.tolist() == sum(types, [])
    assert batch.position_ids.tolist() == [0, 1, 2, 0, 0, 1, 2, 3]
    assert batch.seq_ids.tolist() == [0, 0, 0, 1, 2, 2, 2, 2]
    assert batch.cu_seqlens.tolist() == [0, 3, 4, 8]
    assert batch.first_token.tolist() == [0, 3, 4]
    assert batch.dense_index.tolist() == [0, 1, 2, 4, 8, 9, 10, 11]  # seq * 4 + pos


def test_bucketed_layout_pads_tokens_and_slots_outside_every_sequence():
    lengths = [3, 5]
    ids, types = _seqs(lengths)
    (chunk,) = plan_chunks(lengths, 4, 1024, graph_max_tokens=256, graph_max_seqlen=16)
    assert (chunk.num_tokens, chunk.seq_slots, chunk.max_seqlen, chunk.graphed) == (256, 4, 16, True)
    assert not chunk.uniform
    batch = view_segment(pack_chunks(ids, types, [chunk], pad_token_id=0), 256, 4, 16)
    assert batch.cu_seqlens.tolist() == [0, 3, 8, 8, 8]  # empty slots repeat the end
    assert batch.first_token.tolist() == [0, 3, 0, 0]
    pad = slice(8, 256)
    assert set(batch.seq_ids[pad].tolist()) == {4}  # the trash slot
    assert set(batch.input_ids[pad].tolist()) == {0}
    dense = batch.dense_index.numpy()
    assert np.all(dense[pad] >= 4 * 16) and np.all(dense[pad] < 5 * 16)


def test_several_chunks_in_one_buffer():
    lengths = [5, 6, 7, 8, 9]
    ids, types = _seqs(lengths)
    chunks = plan_chunks(lengths, 2, 1000)
    host = pack_chunks(ids, types, chunks)
    assert host.numel() == sum(c.size for c in chunks)
    for c in chunks:
        b = view_segment(host[c.offset : c.offset + c.size], c.num_tokens, c.seq_slots, c.max_seqlen)
        assert b.input_ids.tolist() == sum(ids[c.start : c.stop], [])


def test_only_small_chunks_are_laid_out_for_graphs():
    lengths = [100] * 30 + [10] * 3
    chunks = plan_chunks(lengths, 10, 100_000, graph_max_tokens=512, graph_max_seqlen=128)
    assert [c.graphed for c in chunks] == [False, False, False, True]
    assert [(c.num_tokens, c.seq_slots, c.max_seqlen) for c in chunks] == [(1000, 10, 100)] * 3 + [(256, 10, 128)]
    assert [c.uniform for c in chunks] == [True, True, True, False]


def test_uniform_needs_equal_lengths_and_no_padding():
    assert plan_chunks([7, 7, 7], 8, 100)[0].uniform
    assert not plan_chunks([7, 6, 7], 8, 100)[0].uniform
    assert not plan_chunks([7, 7, 7], 8, 100, fixed_max_seqlen=16)[0].uniform
