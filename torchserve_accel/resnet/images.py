"""Batched image decoding and preprocessing: request bytes in, one normalized fp16 NCHW batch out.

The hot path is two functions:

* ``decode_images(blobs, device, limits)``: JPEGs that nvJPEG takes decode on the GPU in ONE batched call (or on
  the GPU's hardware JPEG engines when a ``HardwareJpegDecoder`` is given; those it returns nothing for go on to
  nvJPEG); anything else (PNG, GIF, WebP, CMYK or progressive JPEG, tiny images, ...) decodes per image on the
  CPU with PIL and reaches the GPU in ONE host-to-device copy for the whole batch. Both paths turn an image as its
  EXIF Orientation tag says (on the GPU: a flip/transpose of the decoded tensor, from the tag read in the header
  walk).
  A bad image becomes a ``RequestError`` in its slot; the other images are unaffected.
* ``resize_crop_normalize(images, spec)``: resize (shorter side, antialiased bilinear, as torchvision's
  ``Resize``), center crop and normalize, batched over images of equal size, producing the engine's input
  dtype and memory format directly. The antialiased resize is linear and separable, so for each image size it
  is two small matrices (PyTorch's own resize weights, restricted to the crop window): resize + crop +
  normalize become two matmuls and one multiply-add.
"""

from __future__ import annotations

import functools
import io
import struct
import warnings
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

from torchserve_accel.resnet.hw_jpeg import HardwareJpegDecoder
from torchserve_accel.serving.requests import RequestError

# torchvision 0.29 marks its image codecs deprecated in favour of TorchCodec; the GPU decoder still works and
# is the one we want here. Silence the per-call warning once, at import.
warnings.filterwarnings("ignore", message=r".*TorchCodec.*", category=UserWarning)
warnings.filterwarnings("ignore", message=r".*deprecated.*", category=UserWarning, module=r"torchvision\.io.*")
warnings.filterwarnings("ignore", message=r".*buffer is not writable.*", category=UserWarning)
from torchvision.io import ImageReadMode, decode_jpeg  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImageLimits:
    """Refuse images before decoding them: ``max_pixels`` guards against decompression bombs; ``max_aspect_ratio``
    bounds the resize operators of one image size (their width grows with the longer side: a 40-Mpixel image
    of 5,000,000 x 8 would need a 224 x 5,000,000 weight matrix). Any size from 1x1 up is upscaled as torchvision's
    ``Resize`` does."""

    max_pixels: int = 40_000_000
    max_aspect_ratio: float = 100.0


GPU_MIN_SIDE = 16  # smaller JPEGs decode on the CPU: cheap there, and never a reason for nvJPEG to fail a batch


@dataclass(frozen=True)
class PreprocessSpec:
    resize: int = 256  # shorter side after resize
    crop: int = 224  # square center crop
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    dtype: torch.dtype = torch.float16
    channels_last: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.crop <= self.resize:
            raise ValueError(f"crop ({self.crop}) must be positive and at most resize ({self.resize})")


def _sniff(blob: bytes) -> str:
    if blob[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if blob[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if blob[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if blob[:4] == b"RIFF" and blob[8:12] == b"WEBP":
        return "webp"
    if blob[:2] == b"BM":
        return "bmp"
    if blob[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    return "unknown"


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame; C4/C8/CC are other segments


class JpegHeader(NamedTuple):
    width: int
    height: int
    components: int
    coding: int  # the frame header's marker: 0xC0 baseline, 0xC1 extended, 0xC2 progressive, 0xC9 arithmetic, ...
    precision: int  # bits per sample
    orientation: int  # EXIF Orientation (1 = as stored)
    complete: bool  # an end-of-image marker follows the first scan (the file was not cut short)


def _jpeg_header(blob: bytes | bytearray) -> JpegHeader | None:
    """The frame header (and EXIF orientation) of a JPEG, from its markers up to the first scan; None if it has no
    frame header. More than one frame header is refused: a decoder may honour the last one, so the first one's size
    could hide a decompression bomb.

    Walking the markers here is far cheaper than ``PIL.Image.open``, whose per-image cost at batch 64 exceeded the
    GPU decode itself (benchmarks/NOTES.md).
    """
    pos, end = 2, len(blob)
    frame, orientation = None, 1
    while pos + 4 <= end:
        if blob[pos] != 0xFF:
            break
        marker = blob[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # segments without a length
            pos += 2
            continue
        length = (blob[pos + 2] << 8) | blob[pos + 3]
        if marker in _SOF_MARKERS:
            if frame is not None:
                raise RequestError(400, "JPEG has more than one frame header")
            if pos + 10 > end:
                return None
            height = (blob[pos + 5] << 8) | blob[pos + 6]
            width = (blob[pos + 7] << 8) | blob[pos + 8]
            frame = (width, height, blob[pos + 9], marker, blob[pos + 4])
        elif marker == 0xE1 and blob[pos + 4 : pos + 10] == b"Exif\0\0":
            orientation = _exif_orientation(bytes(blob[pos + 10 : pos + 2 + length]))
        elif marker == 0xDA:  # start of scan: the frame header, if any, came before
            break
        pos += 2 + length
    if frame is None:
        return None
    # Inside scans every 0xFF byte is followed by 0x00 or a restart marker, so FF D9 after the first scan can only
    # be the end of the image. nvJPEG decodes a file cut short without an error (the missing rows come out black),
    # where PIL refuses it: such files go to PIL. Most files end with the marker; the search (from the end) is for
    # trailing bytes.
    complete = blob[-2:] == b"\xff\xd9" or blob.rfind(b"\xff\xd9", pos) != -1
    return JpegHeader(*frame, orientation, complete)


EXIF_ORIENTATION = 0x0112


def _exif_orientation(tiff: bytes) -> int:
    """The Orientation tag (0x0112) of an EXIF block's first IFD, 1 when absent or malformed. Read here, not through
    PIL, for the reason ``_jpeg_header`` gives."""
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    try:
        if order is None or struct.unpack_from(order + "H", tiff, 2)[0] != 42:
            return 1
        ifd = struct.unpack_from(order + "I", tiff, 4)[0]
        for entry in range(struct.unpack_from(order + "H", tiff, ifd)[0]):
            tag, kind, _, value = struct.unpack_from(order + "HHIH", tiff, ifd + 2 + 12 * entry)
            if tag == EXIF_ORIENTATION and kind == 3:  # SHORT
                return value if 1 <= value <= 8 else 1
    except struct.error:
        pass
    return 1


# EXIF orientation -> (transpose first, then flip these dims) on a (3, H, W) tensor: PIL's exif_transpose.
_ORIENT = {2: (False, (-1,)), 3: (False, (-2, -1)), 4: (False, (-2,)), 5: (True, ()), 6: (True, (-1,)),
           7: (True, (-2, -1)), 8: (True, (-2,))}


def oriented(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """(3, H, W) turned as EXIF ``orientation`` says to display it (a view; 1 or unknown: unchanged)."""
    if orientation not in _ORIENT:
        return image
    transpose, dims = _ORIENT[orientation]
    image = image.transpose(-2, -1) if transpose else image
    return image.flip(dims) if dims else image


def _inspect(blob: bytes | bytearray, limits: ImageLimits) -> tuple[bool, int]:
    """Validate one image from its header alone -> (nvJPEG can decode it, EXIF orientation). Raises RequestError."""
    kind = _sniff(blob)
    if kind == "unknown":
        raise RequestError(415, "body is not an image this model accepts (JPEG, PNG, GIF, WebP, BMP, TIFF)")
    header = _jpeg_header(blob) if kind == "jpeg" else None
    if header is not None:
        width, height, components, coding, precision, orientation, complete = header
        if precision != 8:  # 12-bit (medical, some cameras): neither nvJPEG's batched decoder nor PIL reads them
            raise RequestError(415, f"a {precision}-bit JPEG: only 8-bit JPEGs are decoded")
    else:
        try:
            with Image.open(io.BytesIO(blob)) as img:  # parses the header only
                (width, height), components, coding, orientation, complete = img.size, 4, None, 1, False
        except Image.DecompressionBombError as err:
            raise RequestError(413, f"image too large: {err}") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
            raise RequestError(400, f"cannot read {kind} image header: {err}") from None
    _check_size(width, height, limits)
    # nvJPEG's batched decoder takes complete, sequential Huffman-coded grayscale/YCbCr JPEGs; CMYK/YCCK,
    # progressive, arithmetic-coded and cut ones go to the CPU.
    gpu_ok = coding in (0xC0, 0xC1) and components in (1, 3) and complete and min(width, height) >= GPU_MIN_SIDE
    return gpu_ok, orientation


def _check_size(width: int, height: int, limits: ImageLimits) -> None:
    if width * height > limits.max_pixels:
        raise RequestError(413, f"image has {width}x{height} pixels, over the limit of {limits.max_pixels}")
    if min(width, height) < 1:
        raise RequestError(422, f"image is {width}x{height}: it has no pixels")
    if max(width, height) > limits.max_aspect_ratio * min(width, height):
        raise RequestError(422, f"image is {width}x{height}; the aspect ratio is over {limits.max_aspect_ratio:g}:1")


def _as_tensor(blob: bytes | bytearray) -> torch.Tensor:
    """A uint8 view of the request bytes, no copy. nvJPEG only reads it; torch warns that ``bytes`` is read-only
    (silenced at import), which is harmless here."""
    return torch.frombuffer(blob, dtype=torch.uint8)


def _decode_on_cpu(blob: bytes, limits: ImageLimits, exif_orientation: bool) -> torch.Tensor:
    """PIL decode to uint8 RGB, (3, H, W). First frame of animations; alpha dropped; 16-bit scaled to 8; turned as
    its EXIF orientation says when ``exif_orientation``. The size PIL will decode is checked again first."""
    try:
        with Image.open(io.BytesIO(blob)) as img:
            _check_size(*img.size, limits)
            frame = next(iter(ImageSequence.Iterator(img)))
            if exif_orientation and frame.getexif().get(EXIF_ORIENTATION, 1) != 1:
                frame = ImageOps.exif_transpose(frame)  # (it copies even an upright image: only when needed)
            if frame.mode.startswith("I"):
                # 16/32-bit grayscale: scale to 8 bits (convert("RGB") would clip instead of scale).
                wide = np.asarray(frame).astype(np.uint32)
                gray = torch.from_numpy((wide // 257).clip(0, 255).astype(np.uint8))
                return gray.expand(3, -1, -1).contiguous()
            rgb = np.array(frame.convert("RGB"))  # writable copy
            return torch.from_numpy(rgb).permute(2, 0, 1)
    except RequestError:
        raise
    except UnidentifiedImageError:
        raise RequestError(400, "cannot decode image: PIL does not recognize its data") from None
    except Exception as err:  # truncated or corrupt data: PIL raises many types
        raise RequestError(400, f"cannot decode image: {err}") from None


def _to_device_once(images: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Move CPU-decoded images to ``device`` in one copy (pinned staging buffer, then split)."""
    if device.type == "cpu" or not images:
        return images
    sizes = [img.numel() for img in images]
    staging = torch.empty(sum(sizes), dtype=torch.uint8, pin_memory=True)
    torch.cat([img.reshape(-1) for img in images], out=staging)
    flat = staging.to(device, non_blocking=True)
    return [chunk.view(img.shape) for chunk, img in zip(flat.split(sizes), images)]


def decode_images(
    blobs: Sequence[bytes | bytearray | RequestError], device: torch.device, limits: ImageLimits = ImageLimits(),
    exif_orientation: bool = True, hardware: HardwareJpegDecoder | None = None,
) -> list[torch.Tensor | RequestError]:
    """Decode a batch of encoded images to uint8 RGB tensors (3, H, W) on ``device`` (views, possibly flipped or
    transposed, when ``exif_orientation`` turns them).

    Items that are already ``RequestError`` pass through; bad images become ``RequestError`` in their slot.
    """
    results: list[torch.Tensor | RequestError | None] = [None] * len(blobs)
    gpu_slots: list[int] = []
    cpu_slots: list[int] = []
    orientations: dict[int, int] = {}
    for i, blob in enumerate(blobs):
        if isinstance(blob, RequestError):
            results[i] = blob
            continue
        try:
            gpu_ok, orientations[i] = _inspect(blob, limits)
        except RequestError as err:
            results[i] = err
            continue
        (gpu_slots if gpu_ok and device.type == "cuda" else cpu_slots).append(i)

    if gpu_slots and hardware is not None:
        rest = []
        for i, img in zip(gpu_slots, hardware.decode([blobs[i] for i in gpu_slots])):
            if img is None:
                rest.append(i)
            else:
                results[i] = oriented(img, orientations[i]) if exif_orientation else img
        gpu_slots = rest
    if gpu_slots:
        encoded = [_as_tensor(blobs[i]) for i in gpu_slots]
        try:
            decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
            for i, img in zip(gpu_slots, decoded):
                results[i] = oriented(img, orientations[i]) if exif_orientation else img
        except RuntimeError as err:
            if "out of memory" in str(err):
                # torchvision reports an allocation failure as a plain RuntimeError; the caller splits the batch.
                raise torch.cuda.OutOfMemoryError(f"nvJPEG decode: {err}") from None
            # The batched decoder returns nothing if any image fails: those go to the CPU path one by one,
            # where a corrupt one is isolated as its own RequestError.
            cpu_slots.extend(gpu_slots)

    cpu_images: list[torch.Tensor] = []
    cpu_ok_slots: list[int] = []
    for i in sorted(cpu_slots):
        try:
            cpu_images.append(_decode_on_cpu(blobs[i], limits, exif_orientation))
            cpu_ok_slots.append(i)
        except RequestError as err:
            results[i] = err
    for i, img in zip(cpu_ok_slots, _to_device_once(cpu_images, device)):
        results[i] = img
    return results  # type: ignore[return-value]


def resize_weights(in_size: int, out_size: int, start: int = 0, count: int | None = None) -> np.ndarray:
    """(count, in_size) float64 rows ``start .. start+count`` of PyTorch's antialiased bilinear resize along one
    axis from ``in_size`` to ``out_size`` (all ``out_size`` rows by default).

    The same weights as ``F.interpolate(mode="bilinear", antialias=True, align_corners=False)`` (PIL's
    triangle filter, widened by the scale when shrinking), so ``W @ signal`` resizes one axis. Only the rows
    asked for are made: a 10000x8 image resizes to 320000 columns, of which the crop keeps 224.
    """
    count = out_size - start if count is None else count
    scale = in_size / out_size
    support, invscale = (scale, 1.0 / scale) if scale >= 1.0 else (1.0, 1.0)
    center = scale * (np.arange(start, start + count) + 0.5)
    lo = np.maximum((center - support + 0.5).astype(np.int64), 0)  # truncation toward zero, as in ATen
    hi = np.minimum((center + support + 0.5).astype(np.int64), in_size)
    j = np.arange(in_size)
    weights = np.clip(1.0 - np.abs((j[None, :] - center[:, None] + 0.5) * invscale), 0.0, None)
    weights *= (j[None, :] >= lo[:, None]) & (j[None, :] < hi[:, None])
    total = weights.sum(axis=1, keepdims=True)
    return weights / np.where(total == 0.0, 1.0, total)


def resized_size(h: int, w: int, resize: int) -> tuple[int, int]:
    """Shorter side to ``resize``, aspect kept (torchvision's ``Resize(int)``)."""
    scale = resize / min(h, w)
    return (resize, max(resize, int(w * scale))) if h <= w else (max(resize, int(h * scale)), resize)


@functools.lru_cache(maxsize=32)
def _resize_operators(h: int, w: int, spec: PreprocessSpec, device: torch.device, dtype: torch.dtype):
    """For ``h x w`` images: rows (crop, h), cols (w, crop), and per-channel scale and shift (1, 3, 1, 1).

    ``(rows @ img[c] @ cols) * scale[c] + shift[c]`` is resize + center crop + normalize of channel c on
    0..255 pixels. One ``rows`` for all channels keeps the height step a batched matmul that reads it with a
    zero batch stride (per-channel rows would be broadcast to every image and copied first). Made once per
    image size and device (a host-to-device copy per batch would synchronize the stream).
    """
    new_h, new_w = resized_size(h, w, spec.resize)
    top = int(round((new_h - spec.crop) / 2.0))
    left = int(round((new_w - spec.crop) / 2.0))
    rows = resize_weights(h, new_h, top, spec.crop)
    cols = resize_weights(w, new_w, left, spec.crop).T
    std = np.asarray(spec.std, dtype=np.float64)
    scale = (1.0 / (255.0 * std)).reshape(1, 3, 1, 1)
    shift = (-np.asarray(spec.mean, dtype=np.float64) / std).reshape(1, 3, 1, 1)

    def put(a: np.ndarray, dt: torch.dtype) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dt)

    return put(rows, dtype), put(cols, dtype), put(scale, torch.float32), put(shift, torch.float32)


def resize_crop_normalize(images: Sequence[torch.Tensor], spec: PreprocessSpec = PreprocessSpec()) -> torch.Tensor:
    """uint8 (3, H_i, W_i) images on one device -> normalized (N, 3, crop, crop) in ``spec.dtype``.

    Same result as torchvision's ``Resize(resize, antialias=True)``, ``CenterCrop(crop)``, ``Normalize``.
    Images of equal size go through together (the common case, a client sending one camera's frames, is one
    group). Per group: one uint8 -> compute-dtype conversion, two matmuls that resize only the crop window
    (one GEMM over every row of every image for the width, one batched GEMM for the height), and one
    multiply-add into the output's dtype and memory format. On CUDA with an fp16 output the matmuls run in
    fp16 on tensor cores (fp32 accumulation; pixels 0..255 are exact in fp16).
    """
    if not images:
        raise ValueError("resize_crop_normalize needs at least one image")
    device = images[0].device
    compute = torch.float16 if device.type == "cuda" and spec.dtype == torch.float16 else torch.float32
    memory_format = torch.channels_last if spec.channels_last else torch.contiguous_format
    crop = spec.crop
    out = torch.empty((len(images), 3, crop, crop), dtype=spec.dtype, device=device, memory_format=memory_format)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(tuple(img.shape[-2:]), []).append(i)
    for (h, w), idx in groups.items():
        rows, cols, scale, shift = _resize_operators(h, w, spec, device, compute)
        n = len(idx)
        batch = torch.stack([images[i] for i in idx]).to(compute)  # (n, 3, h, w)
        narrow = batch.view(n * 3 * h, w) @ cols  # width -> crop window, all rows of all images: one GEMM
        resized = (rows @ narrow.view(n * 3, h, crop)).view(n, 3, crop, crop)  # height -> crop window
        if n == len(images):
            torch.addcmul(shift, resized, scale, out=out)
        else:
            # From pinned memory the index copy is asynchronous: no stream sync on the request path.
            out[torch.tensor(idx, pin_memory=device.type == "cuda").to(device, non_blocking=True)] = (
                torch.addcmul(shift, resized, scale).to(spec.dtype))
    return out
