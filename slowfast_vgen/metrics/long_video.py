"""Long-video metrics: SCuts (scene cuts found by PySceneDetect) and SRC (Scene Revisit Consistency).

* **SCuts** - the number of cuts PySceneDetect's ``ContentDetector`` finds in a generated video
  (lower = more consistent), as in the paper. Frames in memory are fed to
  ``ContentDetector.process_frame`` with a ``FrameTimecode``. Our frames are tiny (32x32), but
  the detector's default score is the mean HSV difference between consecutive frames, which
  nearest-neighbour upscaling leaves unchanged (measured: identical scores at x1 and x4), so
  frames are not upscaled by default; ``upscale`` exists for edge-weighted detector settings.
  As in PySceneDetect, no cut is reported within ``min_scene_len`` frames of the start.
* **SRC** - mean cosine similarity between the features (ResNet-18 in the paper) of the first
  visit of a place and of each later visit, given ``(first, later)`` frame-index pairs.
  :func:`scene_revisit_consistency` is the pure maths over features; the network lives in
  :mod:`.networks` and :class:`~.pretrained.PretrainedMetrics` composes them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .frames import Frames, to_unit_frames


def _uint8_frames(frames: Frames) -> np.ndarray:
    """Any accepted frames -> ``(F, H, W, 3) uint8`` numpy."""
    if isinstance(frames, np.ndarray) and frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[-1] == 3:
        return frames
    video = to_unit_frames(frames)  # (F, 3, H, W) in [0, 1]
    return (video.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # -> (F, H, W, 3)


def scene_cut_frames(
    frames: Frames, threshold: float = 27.0, min_scene_len: int = 15, fps: float = 8.0, upscale: int = 1
) -> list[int]:
    """Frame indices where PySceneDetect's ``ContentDetector`` starts a new scene.

    ``threshold`` and ``min_scene_len`` (frames) are the detector's parameters (its defaults);
    ``fps`` only labels the timecodes; ``upscale`` enlarges frames (nearest neighbour) first.
    """
    from scenedetect import ContentDetector, FrameTimecode

    video = _uint8_frames(frames)
    if upscale > 1:
        video = video.repeat(upscale, axis=1).repeat(upscale, axis=2)  # (F, H*k, W*k, 3)
    detector = ContentDetector(threshold=float(threshold), min_scene_len=int(min_scene_len))
    cuts: list[int] = []
    timecode = None
    for index, frame in enumerate(video):
        timecode = FrameTimecode(index, fps=fps)
        bgr = np.ascontiguousarray(frame[..., ::-1])  # OpenCV detectors expect BGR
        cuts += [int(tc.frame_num) for tc in detector.process_frame(timecode, bgr)]
    if timecode is not None:
        cuts += [int(tc.frame_num) for tc in detector.post_process(timecode)]
    return sorted(set(cuts))


def scene_cuts(frames: Frames, threshold: float = 27.0, min_scene_len: int = 15, fps: float = 8.0, upscale: int = 1) -> int:
    """SCuts: the number of scene cuts in a video (see :func:`scene_cut_frames`)."""
    return len(scene_cut_frames(frames, threshold=threshold, min_scene_len=min_scene_len, fps=fps, upscale=upscale))


def check_pairs(pairs: Sequence[Sequence[int]], num_frames: int) -> list[tuple[int, int]]:
    """Validate ``(first, later)`` frame-index pairs against a video of ``num_frames`` frames."""
    out = [(int(a), int(b)) for a, b in pairs]
    if not out:
        raise ValueError("need at least one (first, later) revisit pair, got none")
    for a, b in out:
        if not (0 <= a < num_frames and 0 <= b < num_frames):
            raise ValueError(f"revisit pair ({a}, {b}) is out of range for a video of {num_frames} frames")
    return out


def scene_revisit_consistency(features: torch.Tensor, pairs: Sequence[Sequence[int]]) -> float:
    """SRC: mean cosine similarity of ``features[first]`` and ``features[later]`` over the pairs.

    ``features`` is ``(F, D)`` (one row per frame); 1.0 when every revisit looks the same.
    """
    checked = check_pairs(pairs, features.shape[0])
    first = features[[a for a, _ in checked]].double()  # (P, D)
    later = features[[b for _, b in checked]].double()
    return float(F.cosine_similarity(first, later, dim=1).mean())
