"""TorchServe entry point: BERT sequence classification, sentence embeddings or extractive question answering on a
fused, padding-free encoder.

Requests (one text per request, or a list):
    text/plain                      <text>
    application/json                {"text": "<text>"}   or   {"texts": ["<text>", ...]}  (at most max_items_per_request)
    task qa:                        {"question": "<q>", "context": "<c>"}  or  {"pairs": [{...}, ...]}
Responses (application/json):
    task classify:  {"label": "positive", "probabilities": {"negative": 0.1, "positive": 0.9}, "truncated": false,
                     "batch_size": 12}
    task embed:     {"embedding": [...floats...], "truncated": false, "batch_size": 12}
    task qa:        {"answer": "<span of the context>", "score": 0.93, "start": 41, "end": 52, "truncated": false,
                     "batch_size": 12}   (start/end: character offsets into the context)
    for lists:      {"results": [<one object as above without batch_size>, ...], "batch_size": 12}
A bad request gets its own 4xx with {"error": ..., "status": ...}; the other requests of its batch are answered.
Options: the ``handler:`` section of the archive's model-config.yaml (``torchserve_accel/bert/options.py``).
Everything else lives in the installed ``torchserve_accel`` library: ``torchserve_accel/bert/runner.py``.
"""

try:
    from torchserve_accel.bert import runner
    from torchserve_accel.bert.options import BertOptions
    from torchserve_accel.serving.handler import ModelHandler
except ImportError as err:  # TorchServe would report this as "No module named 'ts.torch_handler...'"
    raise RuntimeError(
        f"torchserve-accel is not importable in the Python that runs TorchServe workers ({err}); "
        "install it there (pip install torchserve-accel) or build the archive with the library inside"
    ) from err


class BertHandler(ModelHandler):
    options = BertOptions
    load = runner.load
