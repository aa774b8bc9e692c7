"""A WordPiece vocabulary made for the purpose (no hub downloads): special tokens, characters, common suffixes,
common English words (common_words.txt), then ``[unusedN]`` up to BERT's 30,522 entries so the embedding
matrix has the real BERT-Large shape."""

from __future__ import annotations

import string
import tempfile
from pathlib import Path

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SUFFIXES = ["s", "es", "ed", "ing", "ly", "er", "est", "ion", "tion", "ness", "ment", "able", "ful", "less", "al", "y"]
BERT_VOCAB_SIZE = 30522


def build_vocab(size: int = BERT_VOCAB_SIZE) -> list[str]:
    """Lower-cased WordPiece vocabulary: every ASCII letter/digit/punctuation alone and as ``##`` continuation,
    so any ASCII text tokenizes without [UNK]."""
    chars = string.ascii_lowercase + string.digits + string.punctuation
    words_file = Path(__file__).with_name("common_words.txt")
    words = [w for line in words_file.read_text().splitlines() if not line.startswith("#") for w in line.split()]
    vocab: list[str] = []
    seen: set[str] = set()
    for token in [*SPECIAL_TOKENS, *chars, *(f"##{c}" for c in chars), *(f"##{s}" for s in SUFFIXES), *words]:
        if token not in seen:
            seen.add(token)
            vocab.append(token)
    if len(vocab) > size:
        raise ValueError(f"vocabulary has {len(vocab)} tokens, more than size={size}")
    vocab += [f"[unused{i}]" for i in range(size - len(vocab))]
    return vocab


def save_wordpiece_tokenizer(out_dir: Path, vocab: list[str], model_max_length: int = 512) -> None:
    """Build a ``BertTokenizerFast`` from ``vocab`` and ``save_pretrained`` it into ``out_dir``.

    Loads through ``from_pretrained(dir with vocab.txt)``: the one spelling that works in transformers 4.4x
    (``vocab_file=``) and 5.x (``vocab=``) alike.
    """
    from transformers import BertTokenizerFast

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
        tokenizer = BertTokenizerFast.from_pretrained(tmp, do_lower_case=True, model_max_length=model_max_length)
    tokenizer.save_pretrained(str(out_dir))
