"""TorchServe handler: BERT sequence classification, sentence embeddings or extractive question answering on a
fused, padding-free encoder.

Requests (one text per request, or a list):
    POST text/plain                 <text>
    POST application/json           {"text": "<text>"}
    POST application/json           {"texts": ["<text>", ...]}      (at most handler.max_items_per_request)
    task qa:                        {"question": "<q>", "context": "<c>"}  or  {"pairs": [{...}, ...]}
Responses (application/json):
    task classify:  {"label": "positive", "probabilities": {"negative": 0.1, "positive": 0.9},
                     "truncated": false, "batch_size": 12}
    task embed:     {"embedding": [...floats...], "truncated": false, "batch_size": 12}
    task qa:        {"answer": "<span of the context>", "score": 0.93, "start": 41, "end": 52,
                     "truncated": false, "batch_size": 12}   (start/end: character offsets into the context)
    for lists:      {"results": [<one object as above without batch_size>, ...], "batch_size": 12}
``truncated``: the text had more than max_length tokens and was cut (qa: a long context runs in overlapping
windows of max_length tokens; true when it needed more than max_windows and its end was dropped).
``batch_size``: requests in the batch run.
A bad request (empty text, invalid UTF-8, wrong JSON fields/types, too many items, missing body) gets a 4xx
with {"error": ..., "status": ...}; the other requests of its batch are answered normally.

The archive root (model_dir) holds the HF checkpoint (config.json, model.safetensors, tokenizer files);
options come from the ``handler:`` section of model-config.yaml (handlers/text/options.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

from handlers.common import RequestError, claim_device, finish_batch, record_batch
from handlers.config import options_from_context
from handlers.text.bert import build_runner
from handlers.text.options import BertOptions
from handlers.text.requests import QARequest, parse_qa_request, parse_text_request, request_content_type

logger = logging.getLogger(__name__)


class BertHandler:
    def __init__(self):
        self.initialized = False
        self.runner = None

    def initialize(self, context):
        self.options = options_from_context(BertOptions, context)
        model_dir = Path(context.system_properties["model_dir"])
        self.runner = build_runner(model_dir, self.options, claim_device(context), log=logger.info)
        self.initialized = True

    def preprocess(self, data, context=None):
        """Requests -> a ``TextRequest`` (``QARequest`` for task qa) or a ``RequestError`` per request."""
        requests, limits = [], (self.options.max_items_per_request, self.options.max_text_chars)
        for idx, request in enumerate(data):
            try:
                if self.options.task == "qa":
                    requests.append(parse_qa_request(request, *limits))
                else:
                    requests.append(parse_text_request(request, *limits, request_content_type(context, idx)))
            except RequestError as err:
                requests.append(err)
        return requests

    def inference(self, requests):
        """All texts (pairs) of the batch through the encoder in one go -> per text (output row, truncated), per
        pair an answer dict or the reason it could not run."""
        good = [r for r in requests if not isinstance(r, RequestError)]
        if self.options.task == "qa":
            questions = [q for r in good for q in r.questions]
            return self.runner.answer(questions, [c for r in good for c in r.contexts]) if questions else []
        texts = [t for r in good for t in r.texts]
        if not texts:
            return []
        outputs, truncated = self.runner.run(texts)
        return list(zip(outputs.tolist(), truncated))

    def postprocess(self, requests, results):
        batch_size = len(requests)
        answers, cursor = [], 0
        for request in requests:
            if isinstance(request, RequestError):
                answers.append(request)
                continue
            count = len(request.questions if isinstance(request, QARequest) else request.texts)
            mine, cursor = results[cursor : cursor + count], cursor + count
            if isinstance(request, QARequest):
                failed = next(((i, why) for i, why in enumerate(mine) if isinstance(why, str)), None)
                if failed is not None:
                    where = f"pairs[{failed[0]}]: " if request.as_list else ""
                    answers.append(RequestError(413, f"{where}{failed[1]}"))
                    continue
                items = mine
            else:
                items = [self._item(*row) for row in mine]
            answer = {"results": items} if request.as_list else items[0]
            answers.append({**answer, "batch_size": batch_size})
        return answers

    def _item(self, row: list[float], truncated: bool) -> dict:
        if self.options.task == "embed":
            return {"embedding": row, "truncated": truncated}
        labels = self.runner.labels
        best = max(range(len(row)), key=row.__getitem__)
        return {"label": labels[best], "probabilities": dict(zip(labels, row)), "truncated": truncated}

    def handle(self, data, context):
        requests = self.preprocess(data, context)
        answers = self.postprocess(requests, self.inference(requests))
        record_batch(context, len(data))
        return finish_batch(context, answers)


_service = BertHandler()


def handle(data, context):
    """TorchServe entry point (a module-level ``handle`` wins over class discovery)."""
    if not _service.initialized:
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data, context)
