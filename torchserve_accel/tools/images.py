"""Make synthetic but photo-like test images (gradients, shapes, noise) as encoded JPEG/PNG bytes.

    torchserve-accel images OUT_DIR [--count 16] [--format jpeg|png|mixed]

Used by the main job, the load generator and the tests; nothing is downloaded.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFilter

from torchserve_accel.tools.commands import Commands

SIZES = [(500, 375), (375, 500), (640, 480), (224, 224), (320, 240), (800, 600)]


def make_image(seed: int, size: tuple[int, int] | None = None, fmt: str = "JPEG", quality: int = 90) -> bytes:
    """One encoded image; ``fmt`` is a PIL format name ("JPEG", "PNG", ...). Same seed, same bytes."""
    rng = random.Random(seed)
    width, height = size or SIZES[seed % len(SIZES)]
    top = tuple(rng.randrange(256) for _ in range(3))
    bottom = tuple(rng.randrange(256) for _ in range(3))
    gradient = Image.linear_gradient("L").resize((width, height))
    image = Image.composite(Image.new("RGB", (width, height), bottom), Image.new("RGB", (width, height), top), gradient)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(3, 8)):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        # shapes of 20 px or more, clipped at the border: a thumbnail (down to 1x1) gets a corner of one
        x1, y1 = x0 + rng.randint(20, max(20, width // 2)), y0 + rng.randint(20, max(20, height // 2))
        color = tuple(rng.randrange(256) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=color)
    image = image.filter(ImageFilter.GaussianBlur(radius=1.5))
    noise = Image.frombytes("L", (width, height), rng.randbytes(width * height)).convert("RGB")
    image = Image.blend(image, noise, 0.06)  # sensor-like grain (seeded: same seed, same bytes)
    out = io.BytesIO()
    if fmt.upper() in ("JPEG", "JPG"):
        image.save(out, format="JPEG", quality=quality)
    else:
        image.save(out, format=fmt.upper())
    return out.getvalue()


def write_images(out_dir: Path, count: int, fmt: str = "jpeg") -> list[Path]:
    """Write ``count`` images to ``out_dir``; ``fmt`` "mixed" alternates JPEG and PNG."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        this = ("jpeg", "png")[i % 2] if fmt == "mixed" else fmt
        path = out_dir / f"sample_{i:03d}.{'jpg' if this == 'jpeg' else this}"
        path.write_bytes(make_image(i, fmt=this.upper()))
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------- command line


def add_commands(commands: Commands) -> None:
    p = commands.add("images", _images, "write synthetic test images", details=__doc__)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--count", type=int, default=16)
    p.add_argument("--format", choices=["jpeg", "png", "mixed"], default="jpeg")


def _images(args: Any) -> None:
    for path in write_images(args.out_dir, args.count, args.format):
        print(path)
