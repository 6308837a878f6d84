"""Ground-truth memory metrics: the procedural worlds know every frame exactly, so a generated
route can be scored chunk by chunk, and at every revisit of a place, without learned features.

* :func:`chunk_scores` - PSNR / SSIM of each generated chunk against the ground truth
  (how quality decays along a long route).
* :func:`revisit_scores` - at each ``(first, later)`` revisit pair: the generated frame at the
  later visit against the ground truth of that place, and against the model's own first visit
  (self-consistency: what Temp-LoRA memory should improve), and the first visit against the
  ground truth (what a memory that reproduced the first visit exactly would score at the revisit).

Frames as in :mod:`.frames`: ``(F, H, W, 3) uint8`` or ``(F, 3, H, W)`` float in ``[0, 1]``.
The PSNR of an exactly reproduced frame is ``inf``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

from .frames import Frames, psnr, ssim, to_unit_frames
from .long_video import check_pairs


@dataclasses.dataclass(frozen=True)
class ChunkScore:
    """Scores of generated frames ``[start, end)`` against the ground truth."""

    start: int
    end: int
    psnr: float
    ssim: float


@dataclasses.dataclass(frozen=True)
class RevisitScore:
    """Scores of the generated frame at ``later`` (a revisit of the place first seen at ``first``)."""

    first: int
    later: int
    psnr_vs_truth: float
    ssim_vs_truth: float
    psnr_vs_first: float
    ssim_vs_first: float
    first_psnr_vs_truth: float  # the first visit against the truth: a perfect memory's score (inf at the start frame)


def _aligned(generated: Frames, ground_truth: Frames):
    gen, truth = to_unit_frames(generated), to_unit_frames(ground_truth)
    if gen.shape != truth.shape:
        raise ValueError(f"generated and ground-truth videos differ in shape: {tuple(gen.shape)} vs {tuple(truth.shape)}")
    return gen, truth


def chunk_scores(generated: Frames, ground_truth: Frames, ranges: Sequence[Sequence[int]]) -> list[ChunkScore]:
    """PSNR (clip-pooled, see :func:`.frames.psnr`) and mean SSIM of each ``[start, end)`` range."""
    gen, truth = _aligned(generated, ground_truth)
    out = []
    for start, end in ranges:
        start, end = int(start), int(end)
        if not 0 <= start < end <= gen.shape[0]:
            raise ValueError(f"chunk range [{start}, {end}) is empty or out of range for {gen.shape[0]} frames")
        out.append(ChunkScore(start, end, psnr(gen[start:end], truth[start:end]), ssim(gen[start:end], truth[start:end])))
    return out


def revisit_scores(generated: Frames, ground_truth: Frames, pairs: Sequence[Sequence[int]]) -> list[RevisitScore]:
    """Per revisit pair: generated[later] vs ground_truth[later] and vs generated[first], and
    generated[first] vs ground_truth[first] (``inf`` where the first visit is the given start frame)."""
    gen, truth = _aligned(generated, ground_truth)
    out = []
    for first, later in check_pairs(pairs, gen.shape[0]):
        g_later = gen[later : later + 1]  # (1, 3, H, W)
        out.append(
            RevisitScore(
                first=first,
                later=later,
                psnr_vs_truth=psnr(g_later, truth[later : later + 1]),
                ssim_vs_truth=ssim(g_later, truth[later : later + 1]),
                psnr_vs_first=psnr(g_later, gen[first : first + 1]),
                ssim_vs_first=ssim(g_later, gen[first : first + 1]),
                first_psnr_vs_truth=psnr(gen[first : first + 1], truth[first : first + 1]),
            )
        )
    return out


def mean_fields(scores: Sequence[object]) -> dict[str, float]:
    """Mean of every float field of a list of :class:`ChunkScore` / :class:`RevisitScore`."""
    if not scores:
        raise ValueError("no scores to average")
    fields = [f.name for f in dataclasses.fields(scores[0]) if isinstance(getattr(scores[0], f.name), float)]  # type: ignore[arg-type]
    return {name: math.fsum(getattr(s, name) for s in scores) / len(scores) for name in fields}
