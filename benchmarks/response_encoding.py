"""What a worker spends turning one answer into its response body: orjson against the standard library's json.

    python3 benchmarks/response_encoding.py --out benchmarks/results/response_encoding_<host>.json

Each case is an answer of the shape our runners return (``serving.handler.encode_responses`` encodes it): ResNet's
native top-5 with the batch's note, TorchServe's stock ``{"label": probability}`` form, BERT's class
probabilities, and BERT's sentence embeddings at 384 (all-MiniLM-L6-v2), 768 (BERT-Base) and 1024 (BERT-Large)
floats, which the runner hands over as float32 numpy rows. Prints and saves microseconds per body on this host's
CPU (single thread, best of ``--repeats``), and the bytes, for ``to_json`` with orjson (what workers use), the
standard library's json as the fallback calls it (numpy rows through ``tolist``), and for embeddings orjson on
``tolist()`` floats (how rows were handed over before: float64 digits). Exits 1 when orjson is not installed or an encoder's JSON does not parse back to
the same answer.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from torchserve_accel.serving import handler  # noqa: E402
from torchserve_accel.tools.loadgen.probes import describe_card, software_versions  # noqa: E402


def cases(rng: random.Random) -> dict[str, object]:
    batch = {"batch_size": 64, "images_in_batch": 64, "engine": "cudnn"}
    labels = ["tabby", "tiger cat", "Egyptian cat", "lynx", "Persian cat"]
    probs = sorted((rng.random() for _ in labels), reverse=True)
    return {
        "resnet-native-top5": {"predictions": [{"label": name, "index": 281 + i, "probability": p}
                                               for i, (name, p) in enumerate(zip(labels, probs))], "batch": batch},
        "resnet-torchserve-top5": dict(zip(labels, probs)),
        "bert-classify-2": {"label": "POSITIVE", "probabilities": [rng.random(), rng.random()], "truncated": False},
        **{f"bert-embed-{n}": {"embedding": np.array([rng.gauss(0.0, 0.05) for _ in range(n)], dtype=np.float32),
                               "truncated": False} for n in (384, 768, 1024)},
    }


def as_floats(answer):
    """The answer as plain Python values (numpy rows through ``tolist``): what the parsed body must equal."""
    if isinstance(answer, dict):
        return {k: as_floats(v) for k, v in answer.items()}
    return answer.tolist() if isinstance(answer, np.ndarray) else answer


def parses_back(body, answer) -> bool:
    """The body's JSON is the answer, float32 rows compared as float32 (orjson writes their shortest digits)."""
    parsed, plain = json.loads(body), as_floats(answer)
    if isinstance(answer, dict) and isinstance(answer.get("embedding"), np.ndarray):
        return (np.array(parsed.pop("embedding"), dtype=np.float32) == answer["embedding"]).all() \
            and parsed == {k: v for k, v in plain.items() if k != "embedding"}
    return parsed == plain


def per_body_us(encode, answer, repeats: int) -> float:
    """Best of ``repeats`` timings of a loop sized to take ~20 ms, in microseconds per body."""
    t = time.perf_counter()
    encode(answer)
    loops = max(1, int(0.02 / max(time.perf_counter() - t, 1e-7)))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(loops):
            encode(answer)
        best = min(best, (time.perf_counter() - t) / loops)
    return best * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    if handler.orjson is None:
        print("orjson is not installed (pip install orjson): nothing to compare", file=sys.stderr)
        return 1
    encoders = {"orjson": handler.to_json,  # to_json takes orjson where it is installed
                "json": lambda answer: json.dumps(answer, default=handler._plain),  # its fallback
                "orjson_floats": lambda answer: handler.orjson.dumps(as_floats(answer))}
    rows, failures = [], []
    for name, answer in cases(random.Random(0)).items():
        row = {"case": name}
        for encoder, encode in encoders.items():
            if encoder == "orjson_floats" and not name.startswith("bert-embed"):
                continue
            if not parses_back(encode(answer), answer):
                failures.append(f"{name}: {encoder}'s JSON does not parse back to the answer")
            row[f"{encoder}_us"] = round(per_body_us(encode, answer, args.repeats), 2)
            row[f"{encoder}_bytes"] = len(encode(answer))
        row["speedup"] = round(row["json_us"] / row["orjson_us"], 1)
        rows.append(row)
        floats = (f"  orjson on floats {row['orjson_floats_us']:6.1f} us {row['orjson_floats_bytes']:6d} bytes"
                  if "orjson_floats_us" in row else "")
        print(f"{name:24s} json {row['json_us']:8.1f} us  orjson {row['orjson_us']:7.1f} us  "
              f"x{row['speedup']:<5} {row['orjson_bytes']:6d} bytes{floats}")
    document = {"schema": "torchserve-accel/response-encoding/1", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "card": describe_card(), "versions": software_versions(), "command": sys.argv,
                "orjson": handler.orjson.__version__, "cases": rows, "failures": failures}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(document, indent=1) + "\n")
        print(f"wrote {args.out}")
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
