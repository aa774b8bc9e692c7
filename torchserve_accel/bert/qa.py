"""Extractive question answering: from per-token start/end logits to the best answer span of each pair.

As HuggingFace's question-answering pipeline scores spans: start and end logits are soft-maxed over the
context's tokens only, a span [s, e] scores p_start(s) * p_end(e), with s <= e < s + max_answer_tokens, and the
best span's characters are cut from the context through the tokenizer's offsets. A long context runs as several
overlapping windows (rows); the pair's answer is the best-scoring span of any of its windows. All rows of a
batch are scored at once (O(tokens x max_answer_tokens)), on the packed logits that came back in the batch's one
copy.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from torchserve_accel.bert.tokenize import TokenizedPairs
from torchserve_accel.serving.requests import RequestError


def best_spans(
    logits: torch.Tensor, lengths: Sequence[int], in_context: torch.Tensor, max_answer_tokens: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits: (T, 2) float32 packed start/end logits of N sequences of ``lengths`` tokens, in_context: (T,) bool.

    -> (start (N,), end (N,) token indices within each sequence, score (N,) in [0, 1]); score 0 (and span 0, 0)
    for a sequence with no context token."""
    lengths = list(lengths)
    start = pad_sequence(logits[:, 0].split(lengths), batch_first=True, padding_value=float("-inf"))  # (N, L)
    end = pad_sequence(logits[:, 1].split(lengths), batch_first=True, padding_value=float("-inf"))
    mask = pad_sequence(in_context.split(lengths), batch_first=True, padding_value=False)
    p_start = torch.softmax(start.masked_fill(~mask, float("-inf")), dim=-1).nan_to_num(0.0)  # all -inf -> 0
    p_end = torch.softmax(end.masked_fill(~mask, float("-inf")), dim=-1).nan_to_num(0.0)
    width = max_answer_tokens
    windows = F.pad(p_end, (0, width - 1)).unfold(1, width, 1)  # (N, L, W): p_end[s + j]
    scores = (p_start[:, :, None] * windows).flatten(1)  # (N, L * W)
    score, flat = scores.max(dim=1)
    first = torch.div(flat, width, rounding_mode="floor")
    return first, first + flat % width, score


def answers(pairs: TokenizedPairs, contexts: Sequence[str], logits: torch.Tensor, max_answer_tokens: int) -> list:
    """Per input pair: {"answer", "score", "start", "end", "truncated"} (character offsets into its context), or a
    ``RequestError`` (413) saying why it could not be run. ``logits``: (T, 2) of the rows of ``pairs`` packed in
    order."""
    in_context = torch.tensor([flag for row in pairs.in_context for flag in row], dtype=torch.bool)
    start, end, score = best_spans(logits, pairs.lengths, in_context, max_answer_tokens)
    best: dict[int, tuple[float, int, int, int]] = {}  # pair -> (score, row, start token, end token)
    for row, (index, s, e, p) in enumerate(zip(pairs.rows, start.tolist(), end.tolist(), score.tolist())):
        if index not in best or p > best[index][0]:
            best[index] = (p, row, s, e)
    out: list = [None] * (len(best) + len(pairs.errors))
    for index, reason in pairs.errors.items():
        out[index] = RequestError(413, reason)
    for index, (p, row, s, e) in best.items():
        if p > 0.0:
            first, last = pairs.offsets[row][s][0], pairs.offsets[row][e][1]
        else:  # no context token at all (e.g. a context of characters the vocabulary drops)
            first = last = 0
        out[index] = {"answer": contexts[index][first:last], "score": p, "start": first, "end": last,
                      "truncated": pairs.truncated[row]}
    return out
