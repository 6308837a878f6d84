"""``MetricsConfig``: local weights files of the feature networks and the metric parameters.

No metric downloads anything. A network whose weights file is not set (or not found) makes its
metric *unavailable with a reason*; a path that is not ``.safetensors`` is refused outright
(``.bin`` / ``.pt`` / ``.pth`` files are pickles, which can run code when loaded). ``sfvgen eval``
also refuses a weights file that is set but missing (``check_weights_files``, called by ``EvalConfig``),
so a typo in a path is not reported as an unavailable metric.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Optional

from ..config import help_field

SAFE_WEIGHTS_SUFFIX = ".safetensors"


def check_weights_suffix(path: Optional[str], field: str) -> None:
    """Raise ``ValueError`` when ``path`` is set and does not end in ``.safetensors``."""
    if path and Path(path).suffix.lower() != SAFE_WEIGHTS_SUFFIX:
        raise ValueError(
            f"{field}={path!r} is refused: weights load from {SAFE_WEIGHTS_SUFFIX} files only "
            f"(a {Path(path).suffix or 'suffix-less'} file may be a pickle, which can run code); convert it first"
        )


WEIGHTS_FIELDS = ("lpips_weights", "i3d_weights", "resnet18_weights")


def check_weights_files(config: "MetricsConfig", prefix: str = "") -> None:
    """Raise ``ValueError`` for a weights file that is named in ``config`` but is not a file (missing or a
    directory): a typo must not silently turn a metric into "unavailable". Unset paths are fine."""
    for name in WEIGHTS_FIELDS:
        path = getattr(config, name)
        if path and not Path(path).is_file():
            problem = "is a directory" if Path(path).is_dir() else "does not exist"
            raise ValueError(f"{prefix}{name}={path!r} {problem}: give a .safetensors file, or leave it unset "
                             "(the metric is then reported as unavailable)")


@dataclasses.dataclass
class MetricsConfig:
    """Where the pretrained feature networks live and how the metrics are computed."""

    lpips_weights: Optional[str] = help_field(
        None,
        "LPIPS(AlexNet) weights, one .safetensors file: torchvision AlexNet 'features.{0,3,6,8,10}.*' "
        "plus LPIPS v0.1 'lin{0..4}.model.1.weight'; unset = LPIPS unavailable",
    )
    lpips_min_size: int = help_field(64, "frames smaller than this (short side, px) are upsampled bilinearly before LPIPS")
    i3d_weights: Optional[str] = help_field(
        None, "I3D (Inception-v1, Kinetics-400) weights as .safetensors with pytorch-i3d key names; unset = FVD unavailable"
    )
    fvd_num_frames: int = help_field(16, "clips shorter than this are resampled in time (nearest frame) to this length for I3D")
    fvd_image_size: int = help_field(224, "frames are resized (bilinear) to this square size for I3D")
    resnet18_weights: Optional[str] = help_field(
        None, "ResNet-18 (ImageNet) weights as .safetensors, transformers or torchvision key names; unset = SRC unavailable"
    )
    src_image_size: int = help_field(224, "frames are resized (bilinear) to this square size for ResNet-18")
    scene_threshold: float = help_field(27.0, "PySceneDetect ContentDetector threshold (its default)")
    scene_min_len: int = help_field(15, "PySceneDetect min_scene_len in frames (its default)")
    scene_upscale: int = help_field(1, "nearest-neighbour upscale factor before scene detection (1 = none)")
    motion_max_shift: Optional[int] = help_field(None, "largest per-frame shift searched, px; None = max(2, min(H, W) // 8)")
    motion_stay_threshold: float = help_field(0.5, "mean camera speed (px/frame) below which a chunk counts as 'stay'")
    batch_size: int = help_field(16, "frames or clips per forward pass of a feature network")
    device: str = help_field("cpu", "torch device of the feature networks")

    def __post_init__(self) -> None:
        for name in WEIGHTS_FIELDS:
            check_weights_suffix(getattr(self, name), name)
        for name in ("lpips_min_size", "fvd_num_frames", "fvd_image_size", "src_image_size", "scene_upscale", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.scene_min_len < 0:
            raise ValueError(f"scene_min_len must be >= 0, got {self.scene_min_len}")
        if not (math.isfinite(self.scene_threshold) and self.scene_threshold > 0):  # also refuses NaN
            raise ValueError(f"scene_threshold must be a finite number > 0, got {self.scene_threshold}")
        if self.motion_max_shift is not None and self.motion_max_shift < 1:
            raise ValueError(f"motion_max_shift must be >= 1 or None, got {self.motion_max_shift}")
        if not (math.isfinite(self.motion_stay_threshold) and self.motion_stay_threshold >= 0):  # also refuses NaN
            raise ValueError(f"motion_stay_threshold must be a finite number >= 0, got {self.motion_stay_threshold}")
        check_device(self.device)


def check_device(name: str) -> None:
    """``metrics.device``: a torch device this machine has (checked before the evaluation runs, not when
    the first feature network is moved there after every video was generated)."""
    from ..errors import device_problem

    problem = device_problem(name)
    if problem is not None:
        raise ValueError(f"metrics.device {problem}")
