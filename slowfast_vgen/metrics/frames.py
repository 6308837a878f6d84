"""Frame metrics as pure functions: PSNR, SSIM, the fine-detail ratio and the LPIPS distance over given features.

Inputs: a video is ``(F, H, W, 3) uint8`` (numpy or torch), the layout the worlds, the data and
the generation pipeline produce; every function also accepts ``(F, 3, H, W)`` float frames in
``[0, 1]``. The dtype decides the layout: integer frames are channels-last, float frames
channels-first. :func:`to_unit_frames` converts either to the ``(F, 3, H, W) float32`` tensor
in ``[0, 1]`` the maths runs on. PSNR and SSIM use torchmetrics (``data_range=1``).
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import numpy as np
import torch

Frames = Union[np.ndarray, torch.Tensor]


def to_unit_frames(frames: Frames) -> torch.Tensor:
    """``(F, H, W, 3) uint8`` or ``(F, 3, H, W) float in [0, 1]`` -> ``(F, 3, H, W) float32`` in ``[0, 1]``."""
    video = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if video.ndim != 4:
        raise ValueError(f"expected frames of shape (F, H, W, 3) uint8 or (F, 3, H, W) float, got {tuple(video.shape)}")
    if not torch.is_floating_point(video):
        if video.shape[-1] != 3:
            raise ValueError(f"integer frames must be (F, H, W, 3), got {tuple(video.shape)}")
        return video.permute(0, 3, 1, 2).float().div(255.0)  # (F, H, W, 3) -> (F, 3, H, W)
    if video.shape[1] != 3:
        raise ValueError(f"float frames must be (F, 3, H, W) in [0, 1], got {tuple(video.shape)}")
    return video.detach().float()


def _pair(x: Frames, y: Frames) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = to_unit_frames(x), to_unit_frames(y)
    if a.shape != b.shape:
        raise ValueError(f"videos differ in shape: {tuple(a.shape)} vs {tuple(b.shape)} (as (F, 3, H, W))")
    return a, b


PSNR_CEILING_DB = 100.0
"""What every PSNR here reports for identical frames (and at most otherwise), instead of ``inf``: a
perfectly recalled frame then counts as the best score in means and intervals, where an ``inf`` would
have to be dropped. Above any real error of 8-bit frames up to ~200k values (a one-level difference
in a single value of a 32x32 RGB frame is 83 dB)."""


def psnr_per_frame(x: Frames, y: Frames) -> torch.Tensor:
    """``(F,)`` PSNR in dB of each frame pair (:data:`PSNR_CEILING_DB` for an identical frame)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    a, b = _pair(x, y)
    value = peak_signal_noise_ratio(a, b, data_range=1.0, reduction="none", dim=(1, 2, 3))
    return value.clamp(max=PSNR_CEILING_DB)


def psnr(x: Frames, y: Frames) -> float:
    """PSNR in dB of a whole clip: the MSE is pooled over all frames and pixels (torchmetrics'
    default), so one exactly copied frame does not decide the clip's score; identical clips give
    :data:`PSNR_CEILING_DB`."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    a, b = _pair(x, y)
    return min(float(peak_signal_noise_ratio(a, b, data_range=1.0)), PSNR_CEILING_DB)


def masked_psnr(x: Frames, y: Frames, mask: Union[np.ndarray, torch.Tensor]) -> float:
    """PSNR in dB of two clips over the pixels ``mask`` selects only.

    ``mask`` is ``(F, H, W)`` bool, True where a pixel counts. The squared error is pooled over
    every selected pixel of every frame and its 3 channels (in ``[0, 1]`` units, as
    :func:`psnr`), then ``PSNR = 10 log10(1 / MSE)``: with an all-True mask this equals
    :func:`psnr`. Returns ``nan`` when the mask selects no pixel and :data:`PSNR_CEILING_DB` when the
    selected pixels are identical.
    """
    a, b = _pair(x, y)  # (F, 3, H, W) each
    keep = torch.as_tensor(mask, dtype=torch.bool)  # (F, H, W)
    expected = (a.shape[0], a.shape[2], a.shape[3])
    if tuple(keep.shape) != expected:
        raise ValueError(f"mask must be (F, H, W) = {expected}, got {tuple(keep.shape)}")
    count = int(keep.sum())
    if count == 0:
        return math.nan
    squared = (a.double() - b.double()).pow(2).sum(dim=1)  # (F, 3, H, W) -> (F, H, W), summed over channels
    mse = float(squared[keep].sum()) / (3 * count)
    return PSNR_CEILING_DB if mse == 0.0 else min(10.0 * math.log10(1.0 / mse), PSNR_CEILING_DB)


def detail_energy(frames: Frames) -> float:
    """Mean squared fine detail of a clip: each frame minus its 3x3 box blur, over the interior pixels
    and 3 channels (``[0, 1]`` units). Speckle and sharp edges raise it, blur lowers it."""
    video = to_unit_frames(frames).double()  # (F, 3, H, W)
    if video.shape[2] < 3 or video.shape[3] < 3:
        raise ValueError(f"frames of {video.shape[3]}x{video.shape[2]} have no interior pixels for a 3x3 blur")
    blurred = torch.nn.functional.avg_pool2d(video, kernel_size=3, stride=1)  # (F, 3, H-2, W-2)
    return float((video[:, :, 1:-1, 1:-1] - blurred).pow(2).mean())


def detail_ratio(x: Frames, y: Frames) -> float:
    """:func:`detail_energy` of clip ``x`` over that of its ground truth ``y``: 1 = as much fine detail
    as the truth, above 1 = more (speckle, noise), below 1 = less (blur); ``nan`` when the truth has
    none. It measures the amount, not the place: wrong detail in the right amount also scores 1."""
    generated, truth_frames = _pair(x, y)  # same shape; converted once
    truth = detail_energy(truth_frames)
    return detail_energy(generated) / truth if truth > 0 else math.nan


def ssim_per_frame(x: Frames, y: Frames) -> torch.Tensor:
    """``(F,)`` SSIM of each frame pair (Gaussian window 11, sigma 1.5; 1 for identical frames)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    a, b = _pair(x, y)
    return structural_similarity_index_measure(a, b, data_range=1.0, reduction="none")


def ssim(x: Frames, y: Frames) -> float:
    """Mean SSIM over the frames of a clip, in ``[-1, 1]`` (papers report it x100)."""
    return float(ssim_per_frame(x, y).mean())


def lpips_distance(feats_x: Sequence[torch.Tensor], feats_y: Sequence[torch.Tensor], weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """LPIPS (Zhang et al. 2018, Eq. 1) from the backbone activations of two image batches.

    For each layer ``l`` with activations ``(N, C_l, H_l, W_l)``: unit-normalise along channels,
    take the squared difference, weight the channels with ``w_l (C_l,)``, average over space;
    sum over layers. Returns ``(N,)`` distances (0 for identical images).
    """
    if not (len(feats_x) == len(feats_y) == len(weights)):
        raise ValueError(f"need one weight vector per layer: {len(feats_x)}, {len(feats_y)}, {len(weights)}")
    total = None
    for fx, fy, w in zip(feats_x, feats_y, weights):
        nx = fx / (fx.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)  # (N, C, H, W), unit length along C
        ny = fy / (fy.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
        per_pixel = ((nx - ny).pow(2) * w.view(1, -1, 1, 1)).sum(dim=1)  # (N, H, W)
        layer = per_pixel.mean(dim=(1, 2))  # (N,)
        total = layer if total is None else total + layer
    assert total is not None, "lpips_distance needs at least one layer"
    return total
