"""Tokenizing a whole batch at once with the checkpoint's fast (Rust) tokenizer, truncating to the model's length."""

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


class BatchTokenizer:
    """The checkpoint's tokenizer, set once to truncate at ``max_length`` with no padding."""

    def __init__(self, backend, max_length: int, pad_token_id: int):
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_str(backend.to_str())  # our own copy: the settings below stay ours
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=max_length)
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
