"""JPEG decoding on the GPU's hardware JPEG engines (nvImageCodec), off the SMs: ``handler.jpeg_decoder: hardware``.

Under a served load the SMs are the limit, and nvJPEG's decode kernels take part of their time per image; the
H100/H200's JPEG engines decode beside them, and their pixels are closer to libjpeg's (PIL's, the reference
pipeline's) than nvJPEG's (benchmarks/NOTES.md has the measurements). It needs ``pip install nvidia-nvimgcodec-cu13
nvidia-nvjpeg`` (``torchserve-accel[hwjpeg]``); ``jpeg_decoder: auto`` (the default) uses it where it is installed
and works. A JPEG it does not return goes on to nvJPEG and then PIL, as before; orientation is applied by
``images.oriented`` from the header walk, as for nvJPEG. At start nvImageCodec logs "[ERROR] ... Failed to load
nvJPEG2000 / nvTIFF" for its other codecs' missing wheels: harmless here, only JPEG is asked of it.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
import torch
from PIL import Image


class HardwareDecoderUnavailable(RuntimeError):
    """Asked for by name and cannot run here: the worker refuses to start and says why."""


class HardwareJpegDecoder:
    """Batches of JPEGs -> uint8 (3, H, W) views on ``device``, decoded on the hardware engines."""

    def __init__(self, device: torch.device):
        if device.type != "cuda":
            raise HardwareDecoderUnavailable(f"handler.jpeg_decoder: hardware needs a GPU worker, this one is {device}")
        try:
            from nvidia import nvimgcodec
        except ImportError as err:
            raise HardwareDecoderUnavailable(
                f"handler.jpeg_decoder: hardware needs nvImageCodec ({err}); pip install nvidia-nvimgcodec-cu13 "
                "nvidia-nvjpeg, or use jpeg_decoder: nvjpeg") from None
        self._nvimgcodec = nvimgcodec
        self.device = device
        try:
            backend = nvimgcodec.Backend(nvimgcodec.BackendKind.HW_GPU_ONLY)
            self._decoder = nvimgcodec.Decoder(device_id=device.index or 0, backends=[backend])
        except Exception as err:  # noqa: BLE001 - the library's own errors: said at start, not per request
            raise HardwareDecoderUnavailable(f"nvImageCodec's hardware decoder cannot start here: {err}") from None
        self._params = nvimgcodec.DecodeParams(apply_exif_orientation=False)
        self.description = (f"hardware JPEG engines (nvImageCodec {getattr(nvimgcodec, '__version__', '?')}); "
                            "others: nvJPEG, then PIL")

    def check(self) -> None:
        """Decode one JPEG at load: a GPU without JPEG engines returns nothing, and is refused then, not per batch."""
        gradient = np.add.outer(np.arange(48), np.arange(64)).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(np.stack([gradient, gradient[::-1], 255 - gradient], axis=-1)).save(buf, "JPEG", quality=90)
        if self.decode([buf.getvalue()])[0] is None:
            raise HardwareDecoderUnavailable("the hardware JPEG decoder returned nothing for a baseline JPEG: this GPU "
                                             "has no JPEG engines, or nvImageCodec cannot use them")

    def decode(self, blobs: Sequence[bytes | bytearray]) -> list[torch.Tensor | None]:
        """One call for the batch, ordered on the current stream; None where the engines did not decode an image."""
        stream = torch.cuda.current_stream(self.device)
        codec = self._nvimgcodec
        try:
            images = self._decoder.decode([codec.CodeStream(b if isinstance(b, bytes) else bytes(b)) for b in blobs],
                                          params=self._params, cuda_stream=stream.cuda_stream)
        except Exception:  # noqa: BLE001 - a batch the library refuses as a whole: the next decoder takes it
            return [None] * len(blobs)
        # __cuda_array_interface__: the tensor shares the decoder's buffer and keeps the image alive
        return [None if image is None else torch.as_tensor(image, device=self.device).permute(2, 0, 1)
                for image in images]


def choose_jpeg_decoder(choice: str, device: torch.device) -> tuple[HardwareJpegDecoder | None, str]:
    """``handler.jpeg_decoder`` -> (the hardware decoder, or None for nvJPEG/PIL; what was chosen and why).

    auto takes the JPEG engines when nvImageCodec is installed and they decode a test image: measured faster under
    load and closer to PIL's pixels than nvJPEG (benchmarks/NOTES.md); else nvJPEG. hardware, asked for by name,
    raises ``HardwareDecoderUnavailable`` instead of falling back."""
    if choice == "nvjpeg":
        return None, "nvJPEG (asked for)" if device.type == "cuda" else "PIL (CPU worker)"
    if device.type != "cuda" and choice == "auto":
        return None, "PIL (CPU worker)"
    try:
        hardware = HardwareJpegDecoder(device)
        hardware.check()
    except HardwareDecoderUnavailable as err:
        if choice == "hardware":
            raise
        return None, f"nvJPEG (auto; the JPEG engines are not used: {err})"
    return hardware, f"{hardware.description} ({choice})"
