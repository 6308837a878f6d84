"""Start-footprint metrics: how well a rollout keeps the content knowable from its first frame.

In a rollout the model sees only the start image; the rest of the map is new to it, so only the
part of each later frame that shows a place already visible in frame 0 — the *start view's
footprint* on the map — has a ground truth the model could know. On the navigation world every
frame's camera position is exact, so that part is an exact pixel mask:

* :func:`footprint_masks` - per frame, the pixels whose map position lies inside the start
  view's footprint (camera position + pixel offset, modulo the wrapping map size).
* :func:`footprint_chunk_psnr` - :func:`.frames.masked_psnr` of each ``[start, end)`` chunk
  over those pixels (``nan`` for a chunk that shows none of the footprint).
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np

from .frames import Frames, masked_psnr


def footprint_masks(camera_positions: np.ndarray, frame_size: tuple[int, int],
                    map_size: Union[int, tuple[int, int]]) -> np.ndarray:
    """``(F, H, W)`` bool: True where frame ``f``'s pixel shows a map position visible in frame 0.

    ``camera_positions`` is ``(F, 2)`` int, ``[x, y]`` of each frame's top-left pixel on the
    map (the navigation world's ``camera_positions``; wrapped or not); ``frame_size`` is
    ``(H, W)``; ``map_size`` is the wrapping map's side, or its ``(width, height)``. Pixel
    ``(r, c)`` of frame ``f`` shows map position ``((x_f + c) mod S_x, (y_f + r) mod S_y)``,
    which frame 0 shows iff ``(x_f + c - x_0) mod S_x < W`` and ``(y_f + r - y_0) mod S_y < H``.
    Frame 0's mask is all True; a frame moved a full view width away is all False.
    """
    positions = np.asarray(camera_positions, dtype=np.int64)
    if positions.ndim != 2 or positions.shape[1] != 2 or len(positions) == 0:
        raise ValueError(f"camera_positions must be (F, 2) [x, y] with F >= 1, got shape {positions.shape}")
    height, width = (int(v) for v in frame_size)
    map_w, map_h = (int(map_size), int(map_size)) if np.isscalar(map_size) else (int(v) for v in map_size)
    if not (0 < width <= map_w and 0 < height <= map_h):
        raise ValueError(f"frame {height}x{width} (HxW) must fit the {map_h}x{map_w} map")
    offset = positions - positions[:1]  # (F, 2): displacement from frame 0
    cols = (offset[:, :1] + np.arange(width)[None, :]) % map_w < width  # (F, W)
    rows = (offset[:, 1:] + np.arange(height)[None, :]) % map_h < height  # (F, H)
    return rows[:, :, None] & cols[:, None, :]  # (F, H, 1) & (F, 1, W) -> (F, H, W)


def footprint_chunk_psnr(generated: Frames, ground_truth: Frames, masks: np.ndarray,
                         ranges: Sequence[Sequence[int]]) -> list[float]:
    """Masked PSNR of each ``[start, end)`` frame range over its footprint pixels (``nan`` if none).

    ``masks`` is :func:`footprint_masks` of the ground-truth route, ``(F, H, W)`` like the videos.
    """
    out = []
    for start, end in ranges:
        start, end = int(start), int(end)
        if not 0 <= start < end <= len(masks):
            raise ValueError(f"chunk range [{start}, {end}) is empty or out of range for {len(masks)} frames")
        out.append(masked_psnr(generated[start:end], ground_truth[start:end], masks[start:end]))
    return out
