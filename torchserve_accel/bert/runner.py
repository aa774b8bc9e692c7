"""BERT classification, embeddings or question answering: ``load`` at ``initialize``, then ``BertRunner.run``.

``load`` reads the checkpoint in the archive root (config.json, safetensors, tokenizer files), builds the engine
the registry chooses (bert/engines.py) and logs what it chose and why. ``run`` is the whole request path: every text
(or question/context pair) of the batch tokenized in one call, one engine call, then one answer per request.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from torchserve_accel.bert import qa
from torchserve_accel.bert.checkpoint import label_names, read_hf_config
from torchserve_accel.bert.engines import REGISTRY
from torchserve_accel.bert.options import BertOptions
from torchserve_accel.bert.requests import Encoded, TextInput, parse_request
from torchserve_accel.bert.tokenize import BatchTokenizer
from torchserve_accel.serving.memory import halving_on_oom
from torchserve_accel.serving.requests import Job, Request, RequestError, Slots

log = logging.getLogger(__name__)

def load(model_dir: Path, options: BertOptions, device: torch.device, batch_size: int) -> "BertRunner":
    """The checkpoint in ``model_dir`` -> a warmed runner on ``device``. ``batch_size`` (TorchServe's batchSize) is
    only logged: the encoder bounds its own calls by ``max_batch_sequences`` and ``max_batch_tokens``."""
    model_dir, device = Path(model_dir), torch.device(device)
    t0 = time.perf_counter()
    hf_config = read_hf_config(model_dir)
    max_position = hf_config.max_position_embeddings
    max_length = options.max_length or max_position
    if max_length > max_position:
        raise ValueError(f"max_length={max_length} exceeds max_position_embeddings={max_position}")
    if options.max_batch_tokens < max_length:
        raise ValueError(f"max_batch_tokens={options.max_batch_tokens} must be >= max_length={max_length}")
    tokenizer = BatchTokenizer.from_dir(model_dir, max_length)
    head = options.task if options.task in ("classify", "qa") else f"embed_{options.pooling}"
    backend, passed_over = REGISTRY.choose(options.backend, device)
    engine = backend.build(device, model_dir, options, device, tokenizer, head)
    labels = label_names(hf_config, engine.config.num_labels) if head == "classify" else []
    description = {
        "backend": "; ".join([*passed_over, f"{backend.name} ({'auto' if options.backend == 'auto' else 'asked for'})"]),
        "device": str(device),
        **engine.description,
        "max_length": str(max_length),
        "head": head,
        "requests per batch": str(batch_size),
    }
    runner = BertRunner(tokenizer, engine, options, labels, description)
    runner.warm_up()  # Triton JIT, compile, first graph replay: before the first request
    description["ready"] = f"in {time.perf_counter() - t0:.1f} s"
    log.info("BERT encoder ready: %s", description)
    return runner


class BertRunner:
    def __init__(self, tokenizer: BatchTokenizer, engine: Any, options: BertOptions, labels: list[str],
                 description: dict[str, str]):
        self.tokenizer, self.engine, self.options, self.labels = tokenizer, engine, options, labels
        self.description = description  # what was chosen at load, and why

    def parse(self, request: Request) -> Job:
        """The request's texts (or pairs) and its answer's shape, in any accepted form (bert/requests.py)."""
        return parse_request(request, self.options, self.labels)

    def run(self, items: Sequence[Job | RequestError], timings: dict[str, float] | None = None
            ) -> list[Any | RequestError]:
        """Every text (pair) of the batch's requests through the engine at once -> one answer per request."""
        timings = {} if timings is None else timings
        slots = Slots(items, lambda job: job.inputs)
        if self.options.task == "qa":
            outputs = self.answer([q for q, _ in slots.flat], [c for _, c in slots.flat], timings)
        else:
            outputs = self.encode_texts(slots.flat, timings)
        batch = {"batch_size": len(items)}
        return slots.answers(outputs, lambda job, mine: job.reply(mine, batch))

    def encode_texts(self, texts: Sequence[TextInput], timings: dict[str, float]) -> list[Encoded | RequestError]:
        """Texts -> per text its class probabilities or embedding, and whether it was cut to max_length tokens; a
        ``RequestError`` for a text too long where its request said ``truncate: false`` (413), or that alone does not
        fit in GPU memory (503, ``halving_on_oom``)."""
        return halving_on_oom(lambda part: self._encode_texts(part, timings), texts, "text") if texts else []

    def _encode_texts(self, texts: Sequence[TextInput], timings: dict[str, float]) -> list[Encoded | RequestError]:
        t0 = time.perf_counter()
        tokenized = self.tokenizer([t.text for t in texts])
        t1 = time.perf_counter()
        rows = self.engine(tokenized)
        if self.options.task == "embed":  # normalized here, per request (the engine's embeddings never are)
            wanted = torch.tensor([t.normalize for t in texts])[:, None]
            rows = torch.where(wanted, torch.nn.functional.normalize(rows, dim=-1), rows)
        # Embeddings stay float32 numpy rows (C-contiguous, as orjson requires): orjson writes their shortest
        # float32 digits, fewer bytes and less CPU than Python floats (benchmarks/NOTES.md).
        rows = list(rows.float().contiguous().cpu().numpy()) if self.options.task == "embed" else rows.tolist()
        timings["decode"] = timings.get("decode", 0.0) + t1 - t0
        timings["compute"] = timings.get("compute", 0.0) + time.perf_counter() - t1
        return [Encoded(row, cut) if t.truncate or not cut else
                RequestError(413, f"has more than max_length={self.tokenizer.max_length} tokens (truncate: false)")
                for t, row, cut in zip(texts, rows, tokenized.truncated)]

    def answer(self, questions: Sequence[str], contexts: Sequence[str],
               timings: dict[str, float] | None = None) -> list[dict | RequestError]:
        """Pairs -> per pair an answer (``qa.answers``) or a ``RequestError`` (413: a question too long for any
        context; 503: a pair that alone does not fit in GPU memory)."""
        timings = {} if timings is None else timings
        pairs = list(zip(questions, contexts))
        return halving_on_oom(lambda part: self._answer(part, timings), pairs, "pair") if pairs else []

    def _answer(self, pairs: Sequence[tuple[str, str]], timings: dict[str, float]) -> list[dict | RequestError]:
        questions, contexts = [q for q, _ in pairs], [c for _, c in pairs]
        t0 = time.perf_counter()
        pairs = self.tokenizer.pairs(questions, contexts, self.options.doc_stride, self.options.max_windows)
        t1 = time.perf_counter()
        logits = self.engine(pairs) if pairs.ids else torch.empty(0, 2)
        answers = qa.answers(pairs, contexts, logits, self.options.max_answer_tokens)
        timings["decode"] = timings.get("decode", 0.0) + t1 - t0
        timings["compute"] = timings.get("compute", 0.0) + time.perf_counter() - t1
        return answers

    def warm_up(self) -> None:
        if self.options.task == "qa":
            self.answer(["warm up?"], ["warm up."])
        else:
            self.encode_texts([TextInput("warm up")], {})
