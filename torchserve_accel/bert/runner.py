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
from torchserve_accel.bert.requests import QARequest, TextRequest, parse_qa_request, parse_text_request
from torchserve_accel.bert.tokenize import BatchTokenizer
from torchserve_accel.serving.memory import halving_on_oom
from torchserve_accel.serving.requests import Request, RequestError, Slots, first_error

log = logging.getLogger(__name__)

Answer = dict[str, Any]


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

    def parse(self, request: Request) -> TextRequest | QARequest:
        limits = (self.options.max_items_per_request, self.options.max_text_chars)
        if self.options.task == "qa":
            return parse_qa_request(request.payload, *limits)
        return parse_text_request(request.payload, *limits, request.content_type)

    def run(self, items: Sequence[TextRequest | QARequest | RequestError],
            timings: dict[str, float] | None = None) -> list[Answer | RequestError]:
        """Every text (pair) of the batch through the engine at once -> one answer per request (``{"results": [...]}``
        for a request that sent a list), each with the batch's size."""
        timings = {} if timings is None else timings
        if self.options.task == "qa":
            slots = Slots(items, lambda request: list(zip(request.questions, request.contexts)))
            outputs = self.answer([q for q, _ in slots.flat], [c for _, c in slots.flat], timings)
        else:
            slots = Slots(items, lambda request: request.texts)
            outputs = self.encode_texts(slots.flat, timings)
        answers = slots.answers(outputs, self._request_answer)
        return [a if isinstance(a, RequestError) else {**a, "batch_size": len(items)} for a in answers]

    def _request_answer(self, request: TextRequest | QARequest, outputs: list) -> Answer | RequestError:
        failed = first_error(outputs, lambda i: f"pairs[{i}]: " if request.as_list else "")
        if failed is not None:
            return failed
        return {"results": outputs} if request.as_list else outputs[0]

    def encode_texts(self, texts: Sequence[str], timings: dict[str, float]) -> list[Answer | RequestError]:
        """Texts -> per text ``{"label", "probabilities", "truncated"}`` or ``{"embedding", "truncated"}`` (a
        ``RequestError`` 503 for a text that alone does not fit in GPU memory: ``halving_on_oom``)."""
        return halving_on_oom(lambda part: self._encode_texts(part, timings), texts, "text") if texts else []

    def _encode_texts(self, texts: Sequence[str], timings: dict[str, float]) -> list[Answer]:
        t0 = time.perf_counter()
        tokenized = self.tokenizer(texts)
        t1 = time.perf_counter()
        rows = self.engine(tokenized).tolist()
        timings["decode"] = timings.get("decode", 0.0) + t1 - t0
        timings["compute"] = timings.get("compute", 0.0) + time.perf_counter() - t1
        if self.options.task == "embed":
            return [{"embedding": row, "truncated": cut} for row, cut in zip(rows, tokenized.truncated)]
        return [self._classified(row, cut) for row, cut in zip(rows, tokenized.truncated)]

    def _classified(self, row: list[float], truncated: bool) -> Answer:
        best = max(range(len(row)), key=row.__getitem__)
        return {"label": self.labels[best], "probabilities": dict(zip(self.labels, row)), "truncated": truncated}

    def answer(self, questions: Sequence[str], contexts: Sequence[str],
               timings: dict[str, float] | None = None) -> list[Answer | RequestError]:
        """Pairs -> per pair an answer (``qa.answers``) or a ``RequestError`` (413: a question too long for any
        context; 503: a pair that alone does not fit in GPU memory)."""
        timings = {} if timings is None else timings
        pairs = list(zip(questions, contexts))
        return halving_on_oom(lambda part: self._answer(part, timings), pairs, "pair") if pairs else []

    def _answer(self, pairs: Sequence[tuple[str, str]], timings: dict[str, float]) -> list[Answer | RequestError]:
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
            self.encode_texts(["warm up"], {})
