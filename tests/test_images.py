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
    wide = encode(Image.new("RGB", (201, 1)), "PNG")
    big = encode(Image.new("RGB", (400, 300)), "PNG")
    passthrough = RequestError(400, "earlier problem")
    out = decode_images([b"hello, not an image", truncated, good, wide, big, passthrough], CPU,
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
    assert _jpeg_header(blob) == (123, 77, components, 0xC2 if progressive else 0xC0, 8, 1, True)
    # Only sequential grayscale/YCbCr goes to nvJPEG.
    assert _inspect(blob, ImageLimits()) == (components in (1, 3) and not progressive, 1)
    assert _jpeg_header(blob[:20]) is None
    assert not _jpeg_header(blob[: len(blob) // 2]).complete  # cut in its scan: never handed to nvJPEG
    assert _jpeg_header(blob + b"trailing").complete


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


def torchvision_reference(img: Image.Image) -> torch.Tensor:
    """What a stock handler computes: PIL RGB -> Resize(256) -> CenterCrop(224) -> ToTensor -> Normalize."""
    tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                             transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    return tf(img.convert("RGB"))


@pytest.mark.parametrize("size", [(1, 1), (2, 1), (4, 4), (7, 7), (9, 15)])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_tiny_images_are_upscaled_as_torchvision_does(size, fmt):
    blob = encode(photo(*size, seed=sum(size)), fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    (decoded,) = decode_images([blob], CPU)
    assert decoded.shape == (3, size[1], size[0])
    ours = resize_crop_normalize([decoded], PreprocessSpec(dtype=torch.float32, channels_last=False))[0]
    reference = torchvision_reference(Image.open(io.BytesIO(blob)))
    # PIL's uint8 resize rounds each pass; ours stays in float until the end (normalized units, ~4/255 / 0.225)
    assert (ours - reference).abs().max() < 0.08


def exif_jpeg(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", quality=95, exif=exif.tobytes())


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_on_both_paths_matches_pils_exif_transpose(orientation):
    """The CPU path turns through PIL; the GPU path turns the decoded tensor from the tag read in the header walk.
    Both must give PIL's ``exif_transpose`` of the same bytes."""
    from PIL import ImageOps

    from torchserve_accel.resnet.images import _jpeg_header, oriented

    blob = exif_jpeg(photo(40, 24, seed=orientation), orientation)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(blob))).convert("RGB"))
    expected = torch.from_numpy(expected.copy()).permute(2, 0, 1)
    (cpu_path,) = decode_images([blob], CPU)
    assert torch.equal(cpu_path, expected)
    stored = torch.from_numpy(np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")).copy()).permute(2, 0, 1)
    header = _jpeg_header(blob)
    assert header.orientation == orientation and (header.width, header.height) == (40, 24)
    assert torch.equal(oriented(stored, header.orientation), expected)
    (as_stored,) = decode_images([blob], CPU, exif_orientation=False)
    assert torch.equal(as_stored, stored)


def test_exif_orientation_in_big_endian_exif_and_malformed_exif():
    from torchserve_accel.resnet.images import _exif_orientation

    big_endian = b"MM\x00\x2a\x00\x00\x00\x08\x00\x01" + b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00"
    assert _exif_orientation(big_endian) == 6
    assert _exif_orientation(big_endian[:12]) == 1  # cut inside the entry
    assert _exif_orientation(b"XX\x00\x2a") == 1
    assert _exif_orientation(big_endian.replace(b"\x00\x06", b"\x00\x09")) == 1  # not an orientation


def test_a_second_frame_header_is_refused_before_anything_is_decoded():
    """A small JPEG with a second frame header declaring 12000x12000: decoders may honour the last one, so the
    first one's size cannot be trusted."""
    blob = encode(photo(64, 64), "JPEG")
    sof = blob.index(b"\xff\xc0")
    length = int.from_bytes(blob[sof + 2 : sof + 4], "big")
    second = bytearray(blob[sof : sof + 2 + length])
    second[5:9] = (12000).to_bytes(2, "big") * 2
    patched = blob[: sof + 2 + length] + bytes(second) + blob[sof + 2 + length :]
    (out,) = decode_images([patched], CPU)
    assert isinstance(out, RequestError) and out.status == 400 and "more than one frame header" in out.message


@pytest.mark.gpu
def test_gpu_decode_matches_the_cpu_path_with_orientations_and_tiny_images():
    """nvJPEG + the tensor turn on the GPU against PIL on the CPU, in one batch with PNGs and tiny images."""
    blobs = [exif_jpeg(photo(64, 48, seed=k), k) for k in range(1, 9)]
    blobs += [encode(photo(3, 2), "JPEG"), encode(photo(40, 30), "PNG")]
    on_gpu = decode_images(blobs, torch.device("cuda:0"))
    on_cpu = decode_images(blobs, CPU)
    for gpu, cpu in zip(on_gpu, on_cpu):
        assert gpu.shape == cpu.shape and gpu.is_cuda
        # nvJPEG and libjpeg differ in IDCT and chroma upsampling by a few levels
        assert (gpu.cpu().int() - cpu.int()).abs().float().mean() < 3


def test_the_hardware_decoder_asked_for_by_name_is_refused_on_a_cpu_worker_with_the_reason():
    from torchserve_accel.resnet.hw_jpeg import HardwareDecoderUnavailable, HardwareJpegDecoder, choose_jpeg_decoder

    with pytest.raises(HardwareDecoderUnavailable, match="needs a GPU worker"):
        HardwareJpegDecoder(CPU)
    with pytest.raises(HardwareDecoderUnavailable, match="needs a GPU worker"):
        choose_jpeg_decoder("hardware", CPU)
    assert choose_jpeg_decoder("auto", CPU) == (None, "PIL (CPU worker)")
    assert choose_jpeg_decoder("nvjpeg", CPU) == (None, "PIL (CPU worker)")


@pytest.mark.gpu
def test_auto_takes_the_jpeg_engines_when_installed_else_says_why_not():
    from torchserve_accel.resnet.hw_jpeg import choose_jpeg_decoder

    hardware, why = choose_jpeg_decoder("auto", torch.device("cuda:0"))
    try:
        import nvidia.nvimgcodec  # noqa: F401
    except ImportError:
        assert hardware is None and why.startswith("nvJPEG (auto; the JPEG engines are not used: ") and "pip" in why
    else:
        assert hardware is not None and why.endswith("(auto)"), why
    assert choose_jpeg_decoder("nvjpeg", torch.device("cuda:0")) == (None, "nvJPEG (asked for)")


@pytest.mark.gpu
def test_hardware_jpeg_decoder_matches_the_cpu_path_and_hands_on_what_it_cannot_decode():
    """``jpeg_decoder: hardware`` on one batch of every kind: upright and turned baseline JPEGs (the engines),
    4:4:4, grayscale, progressive, CMYK, tiny, PNG and a cut JPEG (nvJPEG, PIL, or a 400 of its own)."""
    pytest.importorskip("nvidia.nvimgcodec", reason="nvidia-nvimgcodec-cu13 is not installed")
    from torchserve_accel.resnet.hw_jpeg import HardwareJpegDecoder

    gpu = torch.device("cuda:0")
    hardware = HardwareJpegDecoder(gpu)
    hardware.check()
    good = [exif_jpeg(photo(64, 48, seed=k), k) for k in range(1, 9)]
    good += [encode(photo(320, 240, seed=9), "JPEG", quality=90, subsampling=0),
             encode(photo(80, 60, seed=10).convert("L"), "JPEG"),
             encode(photo(96, 64, seed=11), "JPEG", progressive=True),
             encode(photo(72, 40, seed=12).convert("CMYK"), "JPEG"),
             encode(photo(3, 2), "JPEG"), encode(photo(40, 30), "PNG")]
    cut = encode(photo(200, 150, seed=13), "JPEG")[:-600]
    on_engines = decode_images(good + [cut], gpu, hardware=hardware)
    on_cpu = decode_images(good + [cut], CPU)
    for k, (mine, ref) in enumerate(zip(on_engines[:-1], on_cpu[:-1])):
        assert isinstance(mine, torch.Tensor) and mine.is_cuda and mine.shape == ref.shape, k
        # the engines decode as libjpeg does (within a level: benchmarks/NOTES.md); nvJPEG or PIL took the others
        assert (mine.cpu().int() - ref.int()).abs().float().mean() < (0.5 if k < 8 else 3), k
    # the cut JPEG: PIL may still decode its first rows; either way it is that request's alone
    assert isinstance(on_engines[-1], RequestError) == isinstance(on_cpu[-1], RequestError)
    assert sum(image is not None for image in hardware.decode(good[:8])) == 8  # the engines took the baseline ones
