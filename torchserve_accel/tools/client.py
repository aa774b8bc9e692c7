"""Send images or texts to a running TorchServe model concurrently and print the answers.

    torchserve-accel predict resnet101 photo1.jpg photo2.png --concurrency 8
    torchserve-accel predict bert_large --text "first sentence" --text "second one"

Images go as the raw body with their own Content-Type (image/jpeg, image/png, ...); texts go as JSON
({"text": ...}). Keys come from the instance's key_file.json (``--run-dir``); any other TorchServe is reached by
``--url URL --token-file FILE`` (endpoints.py).
"""

from __future__ import annotations

import json
import mimetypes
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchserve_accel.tools.commands import Commands
from torchserve_accel.tools.torchserve import TorchServe


@dataclass
class Answer:
    name: str
    status: int
    body: object  # parsed JSON, or the text when it is not JSON
    seconds: float


def content_type_for(path: Path) -> str:
    kind, _ = mimetypes.guess_type(path.name)
    return kind or "application/octet-stream"


def send_all(ts: TorchServe, model: str, items: list[tuple[str, bytes | str, str]], concurrency: int) -> list[Answer]:
    """POST every (name, body, content_type) with up to ``concurrency`` in flight; answers in input order."""

    def one(item: tuple[str, bytes | str, str]) -> Answer:
        name, body, content_type = item
        started = time.monotonic()
        answer = ts.predict(model, body, content_type)
        try:
            parsed = answer.json()
        except ValueError:
            parsed = answer.text
        return Answer(name, answer.status_code, parsed, time.monotonic() - started)

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        return list(pool.map(one, items))


def describe_answer(answer: Answer) -> str:
    body = answer.body
    if answer.status == 200 and isinstance(body, dict) and isinstance(body.get("predictions"), list):
        top = body["predictions"][:3]
        shown = ", ".join(f"{p.get('label', p.get('index'))} {p.get('score', p.get('probability', 0)):.3f}"
                          for p in top if isinstance(p, dict))
        extra = f" (batch {body['batch_size']})" if "batch_size" in body else ""
        return f"{answer.status} {answer.seconds * 1000:6.0f} ms  {answer.name}: {shown}{extra}"
    if answer.status == 200 and isinstance(body, dict) and "label" in body:
        probability = body.get("probabilities", {}).get(body["label"]) if isinstance(body.get("probabilities"),
                                                                                    dict) else None
        shown = body["label"] + (f" {probability:.3f}" if isinstance(probability, float) else "")
        extra = (" (truncated)" if body.get("truncated") else "") + (
            f" (batch {body['batch_size']})" if "batch_size" in body else "")
        return f"{answer.status} {answer.seconds * 1000:6.0f} ms  {answer.name}: {shown}{extra}"
    text = json.dumps(body) if not isinstance(body, str) else body.strip()
    return f"{answer.status} {answer.seconds * 1000:6.0f} ms  {answer.name}: {text[:300]}"


# ---------------------------------------------------------------------------------------------- command line


def add_commands(commands: Commands) -> None:
    p = commands.add("predict", _predict, "send images or texts to a TorchServe model concurrently", instance=True,
                     details=__doc__, target="inference")
    p.add_argument("model")
    p.add_argument("files", nargs="*", type=Path, help="image files (sent raw with their Content-Type)")
    p.add_argument("--text", action="append", default=[], help="a text to send as JSON (repeatable)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--json", action="store_true", help="print the full JSON answers")


def _predict(ts: TorchServe, args: Any) -> int:
    items: list[tuple[str, bytes | str, str]] = []
    for path in args.files:
        if not path.is_file():
            args.parser.error(f"{path} is not a file")
        items.append((str(path), path.read_bytes(), content_type_for(path)))
    items += [(f"text[{i}]", json.dumps({"text": t}), "application/json") for i, t in enumerate(args.text)]
    if not items:
        args.parser.error("nothing to send: give image files and/or --text")
    answers = send_all(ts, args.model, items, args.concurrency)
    for answer in answers:
        print(json.dumps({"name": answer.name, "status": answer.status, "answer": answer.body})
              if args.json else describe_answer(answer))
    return 0 if all(a.status == 200 for a in answers) else 2
