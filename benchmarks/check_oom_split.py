"""GPU check: a batch that runs out of GPU memory is split and retried, and every request is still answered.

    python3 benchmarks/check_oom_split.py --out gpu_out/oom_split.json

Caps this process's GPU memory (``torch.cuda.set_per_process_memory_fraction``) at what the loaded classifier
uses plus ``--headroom-gb``, then classifies a batch of large JPEGs whose decoded float copies do not fit at
once. Passes when every image gets predictions equal to those of the same images run one by one without the
cap, and at least one split happened.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_resnet import photo_jpegs  # noqa: E402
from torchserve_accel.resnet import runner  # noqa: E402
from torchserve_accel.resnet.archive import prepare_archive_files  # noqa: E402
from torchserve_accel.resnet.options import ResNetOptions  # noqa: E402
from torchserve_accel.resnet.requests import Classified  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("gpu_out/oom_split.json"))
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", default="4000x3000", help="WIDTHxHEIGHT of each JPEG")
    parser.add_argument("--headroom-gb", type=float, default=1.5)
    args = parser.parse_args()
    splits = []

    class Counter(logging.Handler):
        def emit(self, record):
            if "splitting" in record.getMessage():
                splits.append(record.getMessage())

    logging.getLogger("torchserve_accel.resnet.runner").addHandler(Counter())
    device = torch.device("cuda:0")
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        prepare_archive_files(Path(tmp), None, log=lambda m: None)
        classifier = runner.load(Path(tmp), ResNetOptions(backend="cudnn", batch_buckets=(1, 8, 16, 32)),
                             device, batch_size=args.images)
    blobs = photo_jpegs(args.images, width, height)
    alone = [classifier.classify([b])[0] for b in blobs]
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(device).total_memory
    cap = torch.cuda.memory_reserved(device) + args.headroom_gb * 2**30
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), device)
    batched = classifier.classify(blobs)
    same = all(isinstance(b, Classified) and b.indices[0] == a.indices[0] for a, b in zip(alone, batched))
    report = {"device": torch.cuda.get_device_name(device), "images": args.images, "size": args.size,
              "cap_gb": round(cap / 2**30, 2), "splits": len(splits), "all_answered_same": same,
              "statuses": [getattr(r, "status", 200) for r in batched], "passed": same and len(splits) > 0}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "statuses"}))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
