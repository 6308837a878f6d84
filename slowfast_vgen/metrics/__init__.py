"""Evaluation metrics (paper §4.1, Table 1) plus exact ground-truth memory metrics.

Pure maths and feature networks are kept apart (k-diffusion's ``evaluation.py`` style):

* :mod:`.frames` - PSNR (also over a pixel mask), SSIM, the fine-detail ratio (speckle above 1,
  blur below), the LPIPS distance over features;
  :func:`to_unit_frames`.
* :mod:`.frechet` - Fréchet distance between Gaussian fits of features (FVD maths).
* :mod:`.networks` - LPIPS-AlexNet, I3D, ResNet-18; loaded from local ``.safetensors`` only.
* :mod:`.pretrained` - LPIPS / FVD / SRC as :class:`MetricResult` (unavailable, with the
  reason, when the weights are missing).
* :mod:`.long_video` - SCuts (PySceneDetect) and the SRC maths.
* :mod:`.footprint` - the start view's footprint masks and the PSNR over them (rollouts).
* :mod:`.memory` - per-chunk and revisit PSNR / SSIM against the worlds' ground truth.
* :mod:`.motion` - action accuracy from the global motion of generated chunks.
* :mod:`.stats` - mean and 95 % t confidence interval across seeds.

Frames are ``(F, H, W, 3) uint8`` (or ``(F, 3, H, W)`` float in ``[0, 1]``) everywhere.
"""

from .config import MetricsConfig, check_weights_files
from .footprint import footprint_chunk_psnr, footprint_masks
from .frames import (detail_energy, detail_ratio, lpips_distance, masked_psnr, psnr, psnr_per_frame, ssim,
                     ssim_per_frame, to_unit_frames)
from .frechet import frechet_distance, frechet_distance_from_stats, gaussian_fit, sqrtm_psd
from .long_video import scene_cut_frames, scene_cuts, scene_revisit_consistency
from .memory import ChunkScore, RevisitScore, chunk_scores, mean_fields, revisit_scores
from .motion import action_accuracy, action_chunks, chunk_displacement, estimate_shift, motion_direction, predict_actions
from .pretrained import PretrainedMetrics, fvd, lpips, src
from .results import MetricResult, WeightsUnavailable
from .stats import mean_ci, t_quantile_975

__all__ = [
    "ChunkScore", "MetricResult", "MetricsConfig", "PretrainedMetrics", "RevisitScore", "WeightsUnavailable",
    "action_accuracy", "action_chunks", "check_weights_files", "chunk_displacement", "chunk_scores", "detail_energy",
    "detail_ratio", "estimate_shift",
    "footprint_chunk_psnr", "footprint_masks", "frechet_distance", "frechet_distance_from_stats", "fvd",
    "gaussian_fit", "lpips", "lpips_distance", "masked_psnr", "mean_ci", "mean_fields", "motion_direction",
    "predict_actions", "psnr", "psnr_per_frame", "revisit_scores", "scene_cut_frames", "scene_cuts",
    "scene_revisit_consistency", "sqrtm_psd", "src", "ssim", "ssim_per_frame", "t_quantile_975", "to_unit_frames",
]  # fmt: skip
