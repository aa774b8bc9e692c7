"""Tokenizing a whole batch at once with the checkpoint's fast (Rust) tokenizer, truncating to the model's length.

Texts (classify, embed) are truncated at the end; question/context pairs (qa) keep the whole question and
truncate the context only, and keep each token's character span and which of the two it came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


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
    """[CLS] question [SEP] context [SEP] for the pairs that fit; ``rows[i]`` is the input pair of row i."""

    offsets: list[list[tuple[int, int]]] = None  # per row and token: character span in its own text
    in_context: list[list[bool]] = None  # per row and token: a context token (not question, not special)
    rows: list[int] = None
    errors: dict[int, str] = None  # input pair -> why it does not fit (its question alone is too long)


class BatchTokenizer:
    """The checkpoint's tokenizer, set once to truncate at ``max_length`` with no padding."""

    def __init__(self, backend, max_length: int, pad_token_id: int):
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_str(backend.to_str())  # our own copy: the settings below stay ours
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=max_length)
        self._pairs = Tokenizer.from_str(backend.to_str())
        self._pairs.no_padding()
        self._pairs.enable_truncation(max_length=max_length, strategy="only_second")
        self.max_length = max_length
        self.pad_token_id = pad_token_id

    @classmethod
    def from_dir(cls, model_dir: Path, max_length: int) -> "BatchTokenizer":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(f"{model_dir} has no fast tokenizer (tokenizer.json or vocab.txt for BertTokenizerFast)")
        return cls(tokenizer.backend_tokenizer, max_length, tokenizer.pad_token_id or 0)

    def __call__(self, texts: Sequence[str]) -> Tokenized:
        """All texts in one call (the Rust tokenizer parallelizes); truncation is reported per text."""
        encodings = self._tokenizer.encode_batch(list(texts))
        return Tokenized(
            ids=[e.ids for e in encodings],
            type_ids=[e.type_ids for e in encodings],
            truncated=[len(e.overflowing) > 0 for e in encodings],
        )

    def pairs(self, questions: Sequence[str], contexts: Sequence[str]) -> TokenizedPairs:
        """All (question, context) pairs in one call; the context is truncated, never the question. A pair whose
        question alone leaves no room for its context is reported in ``errors`` (the batch goes on without it)."""
        pairs = list(zip(questions, contexts))
        try:
            encodings = self._pairs.encode_batch(pairs)
            rows, errors = list(range(len(pairs))), {}
        except Exception:  # noqa: BLE001 - the Rust tokenizer raises a bare Exception; find the pair(s) one by one
            encodings, rows, errors = [], [], {}
            for i, pair in enumerate(pairs):
                try:
                    encodings.append(self._pairs.encode(*pair))
                    rows.append(i)
                except Exception:  # noqa: BLE001
                    errors[i] = f"the question leaves no room for the context within max_length={self.max_length} tokens"
        return TokenizedPairs(
            ids=[e.ids for e in encodings],
            type_ids=[e.type_ids for e in encodings],
            truncated=[len(e.overflowing) > 0 for e in encodings],
            offsets=[e.offsets for e in encodings],
            in_context=[[s == 1 for s in e.sequence_ids] for e in encodings],
            rows=rows,
            errors=errors,
        )
