"""The correctness gate: a fast engine against fp32 eager on image-like input, before it may serve.

``correctness_gate`` runs at load (``handler.correctness_gate``); ``synthetic_images`` is its input (and the
calibration input of random-weight archives).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn


def synthetic_images(n: int, size: int = 224, generator: torch.Generator | None = None) -> torch.Tensor:
    """Smooth, image-like normalized input (N, 3, size, size) float32: low-frequency noise, not white noise."""
    coarse = torch.rand((n, 3, size // 16, size // 16), generator=generator)
    img = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    img = img + 0.05 * torch.randn((n, 3, size, size), generator=generator)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (img.clamp(0, 1) - mean) / std



@dataclass
class GateResult:
    rel_err: float
    top1_agreement: float  # plain: engine argmax == reference argmax
    top1_agreement_ties: float  # near-ties within the error bound count as agreeing
    passed: bool
    detail: str


@torch.inference_mode()
def correctness_gate(
    engine, reference: nn.Module, sample: torch.Tensor, max_rel_err: float, min_top1: float
) -> GateResult:
    """Compare ``engine`` with ``reference`` (fp32 eager, TF32 off) on ``sample`` (N, 3, H, W) float32.

    rel_err is ``||engine - ref|| / ||ref||`` over all logits. Top-1 agreement for the gate counts a row as
    agreeing when the reference scores the engine's choice within ``max_rel_err`` x the row's RMS logit of
    its own best: a near-tie that fp16 rounding may flip is not evidence of a wrong engine, and a gate on a
    few images must not fail on one. The plain agreement is reported too.
    """
    device = engine.spec.device
    ref_model = copy.deepcopy(reference).to(device=device, dtype=torch.float32).eval()
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        ref = ref_model(sample.to(device))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        del ref_model
    x = sample.to(device=device, dtype=engine.spec.dtype).contiguous(memory_format=torch.channels_last)
    out = engine(x)
    rel_err = float((out - ref).norm() / ref.norm())
    choice = out.argmax(1)
    plain = float((choice == ref.argmax(1)).float().mean())
    tolerance = max_rel_err * ref.pow(2).mean(1).sqrt()
    chosen_score = ref.gather(1, choice[:, None]).squeeze(1)
    with_ties = float((chosen_score >= ref.max(1).values - tolerance).float().mean())
    passed = rel_err <= max_rel_err and with_ties >= min_top1 and bool(torch.isfinite(out).all())
    detail = (f"{engine.name} vs fp32 eager on {len(sample)} images: relative error {rel_err:.2e} "
              f"(bound {max_rel_err:.0e}), top-1 agreement {plain:.1%} ({with_ties:.1%} counting near-ties; "
              f"bound {min_top1:.0%})")
    return GateResult(rel_err, plain, with_ties, passed, detail)
