"""What every procedural world provides: an :class:`Episode` of frames plus exact ground truth.

Frame layout of an episode (shared by all worlds and by ``data_tools/make_world.py``): frame 0
shows the start state; action ``i`` (0-based) then produces frames
``1 + i*K .. 1 + (i+1)*K - 1`` for ``K = frames_per_action``, so an episode of ``M`` actions
has ``1 + M*K`` frames and the state after ``j`` actions is frame ``j*K``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, Sequence

import numpy as np


def episode_num_frames(num_actions: int, frames_per_action: int) -> int:
    """``1 + num_actions * frames_per_action`` (the start frame plus K frames per action)."""
    return 1 + num_actions * frames_per_action


def action_frame_range(action_index: int, frames_per_action: int) -> tuple[int, int]:
    """``[start, end)`` frame range produced by action ``action_index`` (see module docstring)."""
    start = 1 + action_index * frames_per_action
    return start, start + frames_per_action


@dataclasses.dataclass
class Episode:
    """A rendered episode: frames, the primitive of every action, and JSON-able ground truth.

    ``frames`` is ``(1 + M*K, H, W, 3) uint8``; ``meta`` holds world-specific exact ground truth
    (camera or object positions per frame, revisit pairs, the world seed and config).
    """

    frames: np.ndarray
    primitives: list[str]
    frames_per_action: int
    meta: dict[str, Any]

    def __post_init__(self) -> None:
        expected = episode_num_frames(len(self.primitives), self.frames_per_action)
        if self.frames.shape[0] != expected:
            raise ValueError(f"episode has {self.frames.shape[0]} frames, expected {expected}")

    def segment_ranges(self) -> list[tuple[int, int]]:
        """``[start, end)`` frame range of every action, in order."""
        return [action_frame_range(i, self.frames_per_action) for i in range(len(self.primitives))]


class World(Protocol):
    """A deterministic procedural world (one instance per world seed)."""

    name: str
    seed: int

    @property
    def primitives(self) -> tuple[str, ...]:
        """Every primitive action this world understands."""
        ...

    def sample_episode(self, rng: np.random.Generator, num_actions: int, frames_per_action: int) -> Episode:
        """A scripted or random episode of ``num_actions`` actions, routes drawn from ``rng``."""
        ...


def check_primitives(primitives: Sequence[str], known: Sequence[str], world: str) -> None:
    """Raise ``ValueError`` naming the first primitive ``world`` does not understand."""
    known_set = set(known)
    for p in primitives:
        if p not in known_set:
            raise ValueError(f"unknown {world} primitive {p!r}; expected one of {sorted(known_set)}")
