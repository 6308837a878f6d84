"""Action accuracy: does the global motion of a generated chunk match the commanded action?

Convention (the navigation world's): ``"move right"`` = the camera moves right = the content
shifts LEFT by ``speed`` px per frame; ``"move down"`` = content shifts UP; ``"stay"`` = no shift.

The direction is estimated without any learned model:

1. :func:`estimate_shift` finds the integer content shift between two frames by exhaustive
   search over ``[-m, m]^2``: a fixed central crop of the second frame is compared (MSE on
   standardised grey levels, so global brightness changes do not matter) with every shifted
   window of the first. Content entering at the borders never enters the comparison.
2. :func:`chunk_displacement` sums the shifts of consecutive frame pairs (the net displacement
   of the chunk; a per-pair search stays within ``m`` even for long chunks, and a blurry frame
   that yields one wrong pair costs one step, not the whole chunk).
3. :func:`motion_direction` classifies the net camera displacement: mean speed along the
   dominant axis below ``stay_threshold`` px/frame -> ``"stay"``, otherwise that axis and sign.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from ..worlds.actions import NAVIGATION_PRIMITIVES, STAY
from .frames import Frames, to_unit_frames


LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma of RGB (what H.264 keeps at full resolution)


def _grey(frames: Frames) -> np.ndarray:
    """``(F, H, W)`` float64 luminance of any accepted frames, each frame standardised."""
    video = to_unit_frames(frames)  # (F, 3, H, W)
    weights = torch.tensor(LUMA_WEIGHTS).view(1, 3, 1, 1)
    grey = (video * weights).sum(dim=1).double().numpy()  # (F, H, W)
    grey = grey - grey.mean(axis=(1, 2), keepdims=True)
    return grey / (grey.std(axis=(1, 2), keepdims=True) + 1e-8)


def default_max_shift(height: int, width: int) -> int:
    """Search radius: an eighth of the short side, at least 2 px (4 px at 32x32)."""
    return max(2, min(height, width) // 8)


def _candidates(max_shift: int) -> list[tuple[int, int]]:
    """All ``(dx, dy)`` in ``[-m, m]^2``, smallest shifts first (ties go to the smaller shift)."""
    r = range(-max_shift, max_shift + 1)
    return sorted(((dx, dy) for dy in r for dx in r), key=lambda d: (abs(d[0]) + abs(d[1]), d))


def _shift(a: np.ndarray, b: np.ndarray, max_shift: int) -> tuple[int, int]:
    h, w = a.shape
    m = max_shift
    target = b[m : h - m, m : w - m]
    best, best_err = (0, 0), np.inf
    for dx, dy in _candidates(m):
        window = a[m - dy : h - m - dy, m - dx : w - m - dx]  # a[y - dy, x - dx] under the crop
        err = float(np.mean((window - target) ** 2))
        if err < best_err - 1e-12:
            best, best_err = (dx, dy), err
    return best


def estimate_shift(a: Frames, b: Frames, max_shift: Optional[int] = None) -> tuple[int, int]:
    """Integer content shift ``(dx, dy)`` from frame ``a`` to frame ``b``: ``b[y, x] ~ a[y - dy, x - dx]``.

    ``a`` and ``b`` are single frames ``(H, W, 3) uint8`` or ``(3, H, W)`` float (x right, y down).
    """
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        pair: Frames = np.stack([a, b])  # (2, H, W, 3) or (2, 3, H, W)
    else:
        pair = torch.stack([torch.as_tensor(a), torch.as_tensor(b)])
    grey = _grey(pair)
    h, w = grey.shape[1:]
    m = max_shift if max_shift is not None else default_max_shift(h, w)
    if 2 * m >= min(h, w):
        raise ValueError(f"max_shift {m} is too large for {h}x{w} frames")
    return _shift(grey[0], grey[1], m)


def chunk_displacement(frames: Frames, max_shift: Optional[int] = None) -> tuple[int, int]:
    """Net content displacement ``(dx, dy)`` over a chunk: the sum of consecutive-frame shifts."""
    grey = _grey(frames)
    if grey.shape[0] < 2:
        raise ValueError(f"a chunk needs at least 2 frames to show motion, got {grey.shape[0]}")
    h, w = grey.shape[1:]
    m = max_shift if max_shift is not None else default_max_shift(h, w)
    if 2 * m >= min(h, w):
        raise ValueError(f"max_shift {m} is too large for {h}x{w} frames")
    shifts = np.array([_shift(grey[i], grey[i + 1], m) for i in range(grey.shape[0] - 1)])  # (F-1, 2)
    dx, dy = shifts.sum(axis=0)
    return int(dx), int(dy)


def motion_direction(frames: Frames, stay_threshold: float = 0.5, max_shift: Optional[int] = None) -> str:
    """The navigation primitive (``"move left|right|up|down"`` or ``"stay"``) a chunk shows.

    The camera moves opposite to the content; if its mean speed along the dominant axis is below
    ``stay_threshold`` px/frame the chunk is ``"stay"``. A tie between the axes goes to x.
    """
    dx, dy = chunk_displacement(frames, max_shift)
    steps = frames.shape[0] - 1
    cam_x, cam_y = -dx, -dy  # camera displacement
    if max(abs(cam_x), abs(cam_y)) / steps < stay_threshold:
        return STAY
    if abs(cam_x) >= abs(cam_y):
        return "move right" if cam_x > 0 else "move left"
    return "move down" if cam_y > 0 else "move up"


def action_chunks(video: Frames, frames_per_action: int) -> list[Frames]:
    """Split an episode-layout video (``1 + M*K`` frames) into the ``M`` chunks that show each action.

    Chunk ``i`` is frames ``i*K .. (i+1)*K`` inclusive: the state before action ``i`` (frame
    ``i*K``) and the K frames it produced, so all K steps of motion are in the chunk.
    """
    total = video.shape[0]
    if frames_per_action < 1 or (total - 1) % frames_per_action != 0 or total < 1 + frames_per_action:
        raise ValueError(f"a video of {total} frames is not 1 + M*K frames for K={frames_per_action}")
    k = frames_per_action
    return [video[i * k : (i + 1) * k + 1] for i in range((total - 1) // k)]


def predict_actions(chunks: Sequence[Frames], stay_threshold: float = 0.5, max_shift: Optional[int] = None) -> list[str]:
    """:func:`motion_direction` of every chunk."""
    return [motion_direction(c, stay_threshold=stay_threshold, max_shift=max_shift) for c in chunks]


def action_accuracy(
    chunks: Sequence[Frames], commanded: Sequence[str], stay_threshold: float = 0.5, max_shift: Optional[int] = None
) -> float:
    """Fraction of chunks whose estimated motion equals the commanded navigation primitive."""
    if len(chunks) != len(commanded):
        raise ValueError(f"got {len(chunks)} chunks but {len(commanded)} commanded actions")
    if not chunks:
        raise ValueError("action_accuracy needs at least one chunk, got none")
    unknown = [c for c in commanded if c not in NAVIGATION_PRIMITIVES]
    if unknown:
        raise ValueError(f"action accuracy is defined for navigation primitives {NAVIGATION_PRIMITIVES}, got {unknown[0]!r}")
    predicted = predict_actions(chunks, stay_threshold=stay_threshold, max_shift=max_shift)
    return sum(p == c for p, c in zip(predicted, commanded)) / len(commanded)
