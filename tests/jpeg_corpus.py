"""The JPEG corpus: real files from public decoder test suites (tests/data/jpeg_corpus/, sources and licenses in its
SOURCES.md) and variants encoded here from one of them, each with what the model must answer: classified, or a 4xx
whose message says why. Used by tests/test_jpeg_corpus.py (both decode paths) and the integration test through the
real TorchServe."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

CORPUS = Path(__file__).resolve().parent / "data" / "jpeg_corpus"

# Files that are refused, with words of the message; every other file is classified.
REFUSED = {
    "monkey12.jpg": (415, "12-bit JPEG"),
    "truncated_jpeg.jpg": (400, "truncated"),  # a progressive scan cut short
    "cut-in-header": (400, "cannot"),
    "cut-in-scan": (400, "truncated"),
}


def _encode(image: Image.Image, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", **options)
    return out.getvalue()


def _with_fill_bytes(blob: bytes) -> bytes:
    """0xFF fill bytes before every marker after SOI (allowed by the standard, emitted by some encoders)."""
    head, rest = blob[:2], blob[2:]
    scan = rest.index(b"\xff\xda")
    return head + rest[:scan].replace(b"\xff", b"\xff\xff\xff") + rest[scan:]


def generated() -> dict[str, bytes]:
    """Variants of one photo (flower.jpg) from this machine's libjpeg, for what the fetched files lack."""
    photo = Image.open(CORPUS / "flower.jpg").convert("RGB")
    icc = Image.open(CORPUS / "rgb.jpg").info["icc_profile"]
    baseline = _encode(photo, quality=90)
    return {
        "subsampling-4:4:4": _encode(photo, quality=90, subsampling="4:4:4"),
        "subsampling-4:2:2": _encode(photo, quality=90, subsampling="4:2:2"),
        "subsampling-4:2:0": baseline,
        "progressive": _encode(photo, quality=90, progressive=True),
        "restart-markers": _encode(photo, quality=90, restart_marker_blocks=1),
        "optimized-huffman": _encode(photo, quality=90, optimize=True),
        "quality-1": _encode(photo, quality=1),
        "cmyk": _encode(photo.convert("CMYK"), quality=90),
        "icc-profile": _encode(photo, quality=90, icc_profile=icc),
        "fill-bytes": _with_fill_bytes(baseline),
        "junk-after-eoi": baseline + b"\x00junk" * 100,
        "cut-in-header": baseline[:120],
        "cut-in-scan": baseline[: len(baseline) * 3 // 5],
    }


def corpus() -> dict[str, bytes]:
    """Every case: the fetched files by file name, then the generated variants."""
    files = {path.name: path.read_bytes() for path in sorted(CORPUS.glob("*.jpg"))}
    return {**files, **generated()}
