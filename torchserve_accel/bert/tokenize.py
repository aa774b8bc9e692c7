"""Tokenizing a whole batch at once with the checkpoint's fast (Rust) tokenizer, truncating to the model's length.

Texts (classify, embed) are truncated at the end. Question/context pairs (qa) keep the whole question in every
row and split a long context into overlapping windows (as HF's question-answering pipeline does with its doc
stride), keeping each token's character span and whether it is a context token.

The work per text is bounded by what can be kept, not by the text's length: the tokenizer first reads at most
``CHARS_PER_TOKEN`` characters per token that can be kept (``max_length`` per text, ``max_length`` per window of a
context), and reads further, four times as much each round, only for a text whose prefix gave fewer tokens than
that. A 100,000-character text costs what its first few thousand characters cost, unless those are mostly spaces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence


@dataclass
class Tokenized:
    ids: list[list[int]]  # per text, [CLS] ... [SEP], at most max_length
    type_ids: list[list[int]]
    truncated: list[bool]

    @property
    def lengths(self) -> list[int]:
        return [len(i) for i in self.ids]


@dataclass
class TokenizedPairs(Tokenized):
    """[CLS] question [SEP] context window [SEP] rows; a long context gives several rows (windows that overlap),
    ``rows[i]`` is the input pair of row i. ``truncated`` (per row, the same for all rows of a pair): the context
    needed more than ``max_windows`` windows and its end was dropped."""

    offsets: list[list[tuple[int, int]]] = field(default_factory=list)  # per row and token: character span
    in_context: list[list[bool]] = field(default_factory=list)  # per row and token: a context token
    rows: list[int] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)  # input pair -> why it does not fit (question too long)


def context_windows(num_tokens: int, room: int, doc_stride: int, max_windows: int) -> tuple[list[int], bool]:
    """Start tokens of the windows of ``room`` tokens that cover ``num_tokens`` context tokens, consecutive windows
    overlapping by ``min(doc_stride, room // 2)`` tokens (so each step advances at least half a window); at most
    ``max_windows`` of them -> (starts, whether the context's end was dropped)."""
    step = room - min(doc_stride, room // 2)
    starts = [0]
    while starts[-1] + room < num_tokens:
        starts.append(starts[-1] + step)
    return starts[:max_windows], len(starts) > max_windows


CHARS_PER_TOKEN = 8  # far above natural text's ~4-5 characters per WordPiece token


def _encode_bounded(tokenizer: Any, texts: Sequence[str], max_tokens: int, **kwargs: Any) -> list:
    """``tokenizer.encode_batch`` over prefixes of ``texts`` that hold at least ``max_tokens`` tokens (or the whole
    text). Tokens past a prefix's end are never needed: the caller keeps at most ``max_tokens``. An encoding counts
    as enough when it has more than ``max_tokens`` tokens, or overflowed its truncation."""
    budget = CHARS_PER_TOKEN * max_tokens
    results: list = [None] * len(texts)
    todo = list(range(len(texts)))
    while todo:
        prefixes = [_prefix(texts[i], budget) for i in todo]
        still_short = []
        for i, prefix, encoding in zip(todo, prefixes, tokenizer.encode_batch(prefixes, **kwargs)):
            whole = len(prefix) == len(texts[i])
            if whole or encoding.overflowing or len(encoding.ids) > max_tokens:
                results[i] = encoding
            else:
                still_short.append(i)
        todo, budget = still_short, budget * 4
    return results


def _prefix(text: str, chars: int) -> str:
    """At most ``chars`` characters of ``text``, ending at a space when one is near the end (a word cut in two could
    tokenize differently)."""
    if len(text) <= chars:
        return text
    cut = text.rfind(" ", chars - 64, chars)
    return text[: cut if cut > 0 else chars]


class BatchTokenizer:
    """The checkpoint's tokenizer, set once to truncate at ``max_length`` with no padding."""

    def __init__(self, backend, max_length: int, pad_token_id: int, cls_token_id: int = 101, sep_token_id: int = 102):
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_str(backend.to_str())  # our own copy: the settings below stay ours
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=max_length)
        self._plain = Tokenizer.from_str(backend.to_str())  # pairs: the windows are laid out here, not by the tokenizer
        self._plain.no_padding()
        self._plain.no_truncation()
        self.max_length = max_length
        self.pad_token_id, self.cls_token_id, self.sep_token_id = pad_token_id, cls_token_id, sep_token_id

    @classmethod
    def from_dir(cls, model_dir: Path, max_length: int) -> "BatchTokenizer":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(f"{model_dir} has no fast tokenizer (tokenizer.json or vocab.txt for BertTokenizerFast)")
        if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
            raise ValueError(f"{model_dir}: the tokenizer has no [CLS]/[SEP] tokens")
        return cls(tokenizer.backend_tokenizer, max_length, tokenizer.pad_token_id or 0, tokenizer.cls_token_id,
                   tokenizer.sep_token_id)

    def __call__(self, texts: Sequence[str]) -> Tokenized:
        """All texts in one call (the Rust tokenizer parallelizes); truncation is reported per text."""
        encodings = _encode_bounded(self._tokenizer, texts, self.max_length)
        return Tokenized(
            ids=[e.ids for e in encodings],
            type_ids=[e.type_ids for e in encodings],
            truncated=[len(e.overflowing) > 0 for e in encodings],
        )

    def pairs(self, questions: Sequence[str], contexts: Sequence[str], doc_stride: int = 128,
              max_windows: int = 16) -> TokenizedPairs:
        """Questions and contexts tokenized in two calls, then laid out as rows of at most ``max_length`` tokens: the
        whole question in every row, the context in overlapping windows (``context_windows``). A pair whose
        question leaves no room for a context token is reported in ``errors`` (the batch goes on without it)."""
        questions_enc = _encode_bounded(self._plain, questions, self.max_length, add_special_tokens=False)
        contexts_enc = _encode_bounded(self._plain, contexts, self.max_length * max_windows, add_special_tokens=False)
        out = TokenizedPairs(ids=[], type_ids=[], truncated=[])
        cls_, sep, none = self.cls_token_id, self.sep_token_id, (0, 0)
        for index, (q, c) in enumerate(zip(questions_enc, contexts_enc)):
            q_ids, c_ids = q.ids, c.ids  # each attribute read builds a new Python list: read once
            room = self.max_length - len(q_ids) - 3
            if room < 1:
                out.errors[index] = (f"the question has {len(q_ids)} tokens and leaves no room for the context "
                                     f"within max_length={self.max_length} tokens")
                continue
            starts, truncated = context_windows(len(c_ids), room, doc_stride, max_windows)
            head, head_offsets, c_offsets = [cls_, *q_ids, sep], [none, *q.offsets, none], c.offsets
            for start in starts:
                window = c_ids[start : start + room]
                out.ids.append(head + window + [sep])
                out.type_ids.append([0] * len(head) + [1] * (len(window) + 1))
                out.offsets.append(head_offsets + c_offsets[start : start + room] + [none])
                out.in_context.append([False] * len(head) + [True] * len(window) + [False])
                out.truncated.append(truncated)
                out.rows.append(index)
        return out
