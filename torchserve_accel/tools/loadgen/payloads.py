"""Request bodies for the load generator: ImageNet-like JPEGs, image files from a folder, or JSON texts; and bad
inputs that a model must refuse, mixed in at a given fraction (the soak's)."""

from __future__ import annotations

import base64
import io
import json
import math
import random
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from torchserve_accel.tools.loadgen.stats import percentile

IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
               ".bmp": "image/bmp", ".gif": "image/gif", ".tif": "image/tiff", ".tiff": "image/tiff"}


@dataclass(frozen=True)
class Payload:
    body: bytes
    content_type: str
    name: str = ""
    bad: bool = False  # a malformed input: the right answer is a 4xx of its own, not 200
    items: tuple[bytes, ...] = ()  # several images in one request: each one's bytes (gRPC sends them as entries)


def photo_like_jpeg(seed: int, size: tuple[int, int] = (500, 375), quality: int = 90, grain: float = 0.17) -> bytes:
    """A synthetic photo (``images.make_image``) with colour grain, JPEG-encoded.

    The grain brings the file to the size of a real ImageNet photo of that shape, so decode work per request is
    realistic.
    """
    from PIL import Image

    from torchserve_accel.tools.images import make_image

    image = Image.open(io.BytesIO(make_image(seed, size=size, fmt="PNG"))).convert("RGB")
    noise = Image.frombytes("RGB", image.size, random.Random(seed + 7_919).randbytes(size[0] * size[1] * 3))
    out = io.BytesIO()
    Image.blend(image, noise, grain).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def image_payloads(count: int = 64, size: tuple[int, int] = (500, 375), quality: int = 90,
                   seed: int = 0) -> list[Payload]:
    return [Payload(photo_like_jpeg(seed + i, size, quality), "image/jpeg", f"synthetic_{seed + i:04d}.jpg")
            for i in range(count)]


def folder_payloads(folder: Path, limit: int | None = None) -> list[Payload]:
    """Image files from ``folder`` (sorted by name), each with the Content-Type of its suffix."""
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_TYPES)
    if not files:
        raise ValueError(f"no image files ({', '.join(sorted(IMAGE_TYPES))}) in {folder}")
    return [Payload(p.read_bytes(), IMAGE_TYPES[p.suffix.lower()], p.name) for p in files[:limit]]


def common_words() -> list[str]:
    text = (resources.files("torchserve_accel.bert") / "common_words.txt").read_text()
    words = [w for line in text.splitlines() if not line.startswith("#") for w in line.split()]
    return [w for w in words if w.isalpha()] or ["the", "quick", "brown", "fox"]


def make_text(rng: random.Random, words: Sequence[str], n_words: int) -> str:
    """``n_words`` words in sentences of 5..14 words, a comma now and then; first word capitalized."""
    parts, sentence = [], 0
    for i in range(n_words):
        word = rng.choice(words)
        parts.append(word.capitalize() if sentence == 0 else word)
        sentence += 1
        last = i == n_words - 1
        if last or (sentence >= 5 and rng.random() < 0.12):
            parts[-1] += "."
            sentence = 0
        elif sentence >= 3 and rng.random() < 0.06:
            parts[-1] += ","
    return " ".join(parts)


def text_payloads(count: int = 256, min_words: int = 4, max_words: int = 100, seed: int = 0) -> list[Payload]:
    """JSON bodies ``{"text": ...}`` of ``min_words..max_words`` common words, lengths spread uniformly.

    Every word is in the vocabulary, so a text costs about one token per word and punctuation mark plus
    [CLS]/[SEP] (``approx_tokens``): with the defaults every text fits a 128-token sequence.
    """
    rng, words = random.Random(seed), common_words()
    payloads = []
    for i in range(count):
        text = make_text(rng, words, rng.randint(min_words, max_words))
        payloads.append(Payload(json.dumps({"text": text}).encode(), "application/json", f"text_{i:04d}"))
    return payloads


def approx_tokens(text: str) -> int:
    """Upper estimate of WordPiece tokens for ``make_text`` output: words + punctuation + [CLS] + [SEP]."""
    return len(re.findall(r"\w+|[^\w\s]", text)) + 2


def build_payloads(model: str, *, texts: int | None = None, images: int | None = None, image_dir: Path | None = None,
                   min_words: int = 4, max_words: int = 100, seed: int = 0, items_per_request: int = 1,
                   image_format: str = "multipart") -> tuple[list[Payload], dict[str, Any]]:
    """The payloads for ``model`` and their description for result documents.

    Texts when ``texts`` is given, or by default for a model whose name says BERT (256 of them); else the images
    of ``image_dir`` (at most ``images``), else ``images`` (default 64) synthetic JPEGs. ``items_per_request`` > 1:
    that many texts or images in each request (``per_request``); the description's ``bytes`` are per item.
    """
    if texts is not None or (image_dir is None and images is None and "bert" in model.lower()):
        count = texts or 256
        payloads = text_payloads(count, min_words, max_words, seed=seed)
        tokens = sorted(approx_tokens(json.loads(p.body)["text"]) for p in payloads)
        desc: dict[str, Any] = {"kind": "text", "count": count, "words": [min_words, max_words],
                                "approx_tokens": {"min": tokens[0], "p50": percentile(tokens, 50), "max": tokens[-1]}}
    elif image_dir is not None:
        payloads = folder_payloads(image_dir, images)
        desc = {"kind": "images", "source": str(image_dir), "count": len(payloads)}
    else:
        count = images or 64
        payloads = image_payloads(count, seed=seed)
        desc = {"kind": "images", "source": "synthetic 500x375 JPEG q90 with grain", "count": count}
    sizes = sorted(len(p.body) for p in payloads)
    desc["bytes"] = {"mean": round(sum(sizes) / len(sizes)), "min": sizes[0], "max": sizes[-1]}
    desc["items_per_request"] = items_per_request
    if items_per_request > 1:
        desc["image_format"] = image_format
    return per_request(payloads, items_per_request, image_format=image_format), desc


def per_request(payloads: Sequence[Payload], count: int, *, image_format: str = "multipart") -> list[Payload]:
    """The same items, ``count`` per request: images as the parts of one multipart/form-data body (binary, no
    base64: what a client batching its own images sends), texts as ``{"texts": [...]}``. The items are taken in
    turn, so every item travels as often as the others; there are as many requests as payloads. ``image_format``
    "json" sends images instead as a JSON list of base64 strings. An image group also keeps its images' bytes
    (``Payload.items``), for a transport that sends them one by one."""
    if image_format not in ("multipart", "json"):
        raise ValueError(f"image format must be 'multipart' or 'json', got {image_format!r}")
    if count < 1:
        raise ValueError(f"items per request must be >= 1, got {count}")
    if count == 1:
        return list(payloads)
    from urllib3 import encode_multipart_formdata

    grouped = []
    for start in range(len(payloads)):
        items = [payloads[(start + k) % len(payloads)] for k in range(count)]
        name = f"{items[0].name}+{count - 1}"
        images = tuple(p.body for p in items)
        if items[0].content_type == "application/json":
            body = json.dumps({"texts": [json.loads(p.body)["text"] for p in items]}).encode()
            grouped.append(Payload(body, "application/json", name))
        elif image_format == "json":
            body = json.dumps([base64.b64encode(p.body).decode() for p in items]).encode()
            grouped.append(Payload(body, "application/json", name, items=images))
        else:
            fields = {f"image{k}": (p.name or f"image{k}", p.body, p.content_type) for k, p in enumerate(items)}
            body, content_type = encode_multipart_formdata(fields, boundary=f"torchserve-accel-{start:06d}")
            grouped.append(Payload(body, content_type, name, items=images))
    return grouped


def bad_inputs(kind: str) -> list[Payload]:
    """Malformed requests that a model of this payload ``kind`` ("images" or "text") must refuse with a 4xx of their
    own (docs/reliability.md, section 1): bytes that are no image and a JPEG cut in half; or JSON that does not
    parse and an empty text."""
    if kind == "text":
        return [Payload(b'{"text": "no closing quote', "application/json", "bad_invalid_json", bad=True),
                Payload(b'{"text": ""}', "application/json", "bad_empty_text", bad=True)]
    if kind == "images":
        jpeg = photo_like_jpeg(0)
        return [Payload(b"this is not an image", "image/jpeg", "bad_not_an_image", bad=True),
                Payload(jpeg[: len(jpeg) // 2], "image/jpeg", "bad_truncated_jpeg", bad=True)]
    raise ValueError(f"no bad inputs for payloads of kind {kind!r}")


def interleave_bad(good: Sequence[Payload], bad: Sequence[Payload], fraction: float) -> list[Payload]:
    """``good`` with every ``round(1 / fraction)``-th entry one of ``bad`` (in turn) and the first entry good; long
    enough for every good and every bad payload to be in it.

    The list is a whole number of those periods long, so a load process cycling through it from any entry sends
    one bad request in every period: the fraction holds for every process and without a random draw in the load
    loop. ``fraction`` 0 returns ``good`` as it is.
    """
    if not 0.0 <= fraction <= 0.5:
        raise ValueError(f"the fraction of bad inputs must be within [0, 0.5], got {fraction}")
    if fraction == 0.0:
        return list(good)
    if not good or not bad:
        raise ValueError("interleaving needs good and bad payloads")
    period = round(1.0 / fraction)
    periods = max(math.ceil(len(good) / (period - 1)), len(bad))
    mixed, g = [], 0
    for i in range(periods * period):
        if i % period == period - 1:
            mixed.append(bad[(i // period) % len(bad)])
        else:
            mixed.append(good[g % len(good)])
            g += 1
    return mixed
