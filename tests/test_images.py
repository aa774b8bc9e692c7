"""Decoding and preprocessing on real encoded bytes made here (CPU; the GPU path runs in scripts/gpu_check.sh)."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from torchserve_accel.serving.requests import RequestError
from torchserve_accel.resnet.images import ImageLimits, PreprocessSpec, decode_images, resize_crop_normalize

CPU = torch.device("cpu")


def photo(width=500, height=375, seed=0):
    """A smooth RGB picture with some texture, as a PIL image."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([(x * 255 / width), (y * 255 / height), ((x + y) % 64) * 4], axis=-1)
    img = img + rng.normal(0, 8, img.shape)
    return Image.fromarray(img.clip(0, 255).astype(np.uint8), "RGB")


def encode(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_jpeg_and_png_decode_like_pil():
    img = photo()
    jpeg, png = encode(img, "JPEG", quality=92), encode(img, "PNG")
    out = decode_images([jpeg, png], CPU)
    for blob, tensor in zip([jpeg, png], out):
        expected = torch.from_numpy(np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))).permute(2, 0, 1)
        assert tensor.shape == (3, 375, 500) and tensor.dtype == torch.uint8
        assert torch.equal(tensor, expected)


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P"])
def test_other_modes_become_rgb(mode):
    img = photo(64, 48).convert(mode)
    fmt = "JPEG" if mode in ("L", "CMYK") else "PNG"
    (out,) = decode_images([encode(img, fmt)], CPU)
    assert out.shape == (3, 48, 64)


def test_16bit_png_is_scaled_not_clipped():
    wide = (np.linspace(0, 65535, 64 * 32).reshape(32, 64)).astype(np.uint16)
    (out,) = decode_images([encode(Image.fromarray(wide), "PNG")], CPU)
    assert out.shape == (3, 32, 64)
    assert int(out.max()) >= 250 and int(out.min()) == 0  # full 8-bit range, not saturated at 255
    assert (out == 255).float().mean() < 0.05


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (40, 30), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    (out,) = decode_images([buf.getvalue()], CPU)
    assert out[0].float().mean() > 200 and out[2].float().mean() < 50


def test_bad_images_fail_alone():
    good = encode(photo(200, 150), "JPEG")
    truncated = good[: len(good) // 2]
    tiny = encode(Image.new("RGB", (1, 1)), "PNG")
    big = encode(Image.new("RGB", (400, 300)), "PNG")
    passthrough = RequestError(400, "earlier problem")
    out = decode_images([b"hello, not an image", truncated, good, tiny, big, passthrough], CPU,
                        ImageLimits(max_pixels=100_000))
    assert [getattr(o, "status", 200) for o in out] == [415, 400, 200, 422, 413, 400]
    assert out[5] is passthrough
    assert "pixels" in out[4].message


def test_preprocess_matches_torchvision_transforms():
    images = [photo(500, 375, seed=1), photo(375, 500, seed=2), photo(500, 375, seed=3)]
    tensors = [torch.from_numpy(np.asarray(i)).permute(2, 0, 1) for i in images]
    spec = PreprocessSpec(dtype=torch.float32, channels_last=False)
    ours = resize_crop_normalize(tensors, spec)
    reference = transforms.Compose([
        transforms.Resize(256, antialias=True), transforms.CenterCrop(224),
        transforms.ConvertImageDtype(torch.float32),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])
    expected = torch.stack([reference(t.float() / 255.0) for t in tensors])
    assert ours.shape == (3, 3, 224, 224)
    assert (ours - expected).abs().max() < 1e-4


def test_preprocess_output_layout_and_dtype():
    t = torch.from_numpy(np.asarray(photo(300, 300))).permute(2, 0, 1)
    out = resize_crop_normalize([t, t], PreprocessSpec(dtype=torch.float16, channels_last=True))
    assert out.dtype == torch.float16 and out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("mode,progressive,components", [("RGB", False, 3), ("RGB", True, 3), ("L", False, 1),
                                                         ("CMYK", False, 4)])
def test_jpeg_header_parse_matches_pil(mode, progressive, components):
    from torchserve_accel.resnet.images import _inspect, _jpeg_header

    blob = encode(photo(123, 77).convert(mode), "JPEG", progressive=progressive)
    assert _jpeg_header(blob) == (123, 77, components, progressive)
    # Only baseline grayscale/YCbCr goes to nvJPEG.
    assert _inspect(blob, ImageLimits()) == (components in (1, 3) and not progressive)
    assert _jpeg_header(blob[:20]) is None


@pytest.mark.parametrize("in_size,out_size", [(375, 256), (500, 341), (100, 256), (257, 256), (1000, 256),
                                              (224, 224), (33, 8)])
def test_resize_weights_are_pytorchs_antialiased_bilinear(in_size, out_size):
    from torchserve_accel.resnet.images import resize_weights

    signal = torch.rand(1, 1, in_size, 5, dtype=torch.float64)
    expected = torch.nn.functional.interpolate(signal, size=(out_size, 5), mode="bilinear", antialias=True,
                                               align_corners=False)[0, 0]
    ours = torch.from_numpy(resize_weights(in_size, out_size)) @ signal[0, 0]
    assert (ours - expected).abs().max() < 1e-9


def test_resize_weights_window_is_the_same_rows_and_stays_small():
    from torchserve_accel.resnet.images import resize_weights

    full = resize_weights(375, 256)
    assert np.array_equal(resize_weights(375, 256, 16, 224), full[16:240])
    # A 10000 x 8 image resizes to 320000 columns; only the crop window's rows are made (224 x 10000).
    assert resize_weights(10_000, 320_000, 159_888, 224).shape == (224, 10_000)


def test_aspect_ratio_over_the_limit_is_refused_before_decoding():
    wide, ok = encode(photo(1010, 10), "JPEG"), encode(photo(1000, 10), "JPEG")
    out = decode_images([wide, ok], CPU)
    assert out[0].status == 422 and "aspect ratio" in out[0].message
    assert isinstance(out[1], torch.Tensor)


def test_preprocess_of_an_extreme_aspect_ratio_matches_torchvision():
    t = torch.from_numpy(np.asarray(photo(800, 8, seed=4))).permute(2, 0, 1).contiguous()
    ours = resize_crop_normalize([t], PreprocessSpec(dtype=torch.float32, channels_last=False))
    reference = transforms.Compose([
        transforms.Resize(256, antialias=True), transforms.CenterCrop(224),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])
    assert (ours[0] - reference(t.float() / 255.0)).abs().max() < 1e-4


def test_preprocess_mixed_sizes_and_small_images_match_torchvision():
    sizes = [(500, 375), (120, 90), (500, 375), (224, 300), (640, 480)]  # includes upscaling and a repeat
    tensors = [torch.from_numpy(np.asarray(photo(w, h, seed=i))).permute(2, 0, 1) for i, (w, h) in enumerate(sizes)]
    ours = resize_crop_normalize(tensors, PreprocessSpec(dtype=torch.float32, channels_last=True))
    reference = transforms.Compose([
        transforms.Resize(256, antialias=True), transforms.CenterCrop(224),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])
    expected = torch.stack([reference(t.float() / 255.0) for t in tensors])
    assert ours.is_contiguous(memory_format=torch.channels_last)
    assert (ours - expected).abs().max() < 1e-4


def test_preprocess_spec_rejects_crop_larger_than_resize():
    with pytest.raises(ValueError, match="crop"):
        PreprocessSpec(resize=200, crop=224)


def test_gpu_decoder_out_of_memory_is_raised_as_such(monkeypatch):
    """torchvision reports an nvJPEG allocation failure as a plain RuntimeError; it must reach the batch
    splitter as an out-of-memory error, not send every image of the batch to the CPU decoder."""
    import torchserve_accel.resnet.images as images

    def failing_decode(*args, **kwargs):
        raise RuntimeError("Error while decoding JPEG images: CUDA out of memory. Tried to allocate 36.00 MiB")

    monkeypatch.setattr(images, "decode_jpeg", failing_decode)
    blob = encode(photo(64, 48), "JPEG")
    with pytest.raises(torch.cuda.OutOfMemoryError, match="nvJPEG"):
        decode_images([blob, blob], torch.device("cuda", 0))
