"""Whole episodes as ordered ground-truth chunks, for the slow-fast learning loop (Algorithm 1b).

An item is one episode of the chosen split: its first ``chunks_per_episode`` segments (in frame
order), each cut to ``target_frames`` frames and resized like :class:`ChunkDataset` does, plus
their actions. The loop trainer turns consecutive chunks ``X_i, X_{i+1}`` into records.
Episodes with fewer usable segments are skipped and counted (``num_short_episodes``).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from ..errors import UserInputError
from .dataset import ChunkDatasetConfig
from .manifest import Segment, read_manifest, resolve_in_root
from .readers import VideoReadError, reader_factory, resize_center_crop


class EpisodeDataset(torch.utils.data.Dataset):
    """``(chunks (I, 3, K, H, W) in [-1, 1], actions list[str])`` per episode."""

    def __init__(self, config: ChunkDatasetConfig, chunks_per_episode: int) -> None:
        if chunks_per_episode < 2:
            raise UserInputError(f"chunks_per_episode must be >= 2 (X_i and X_(i+1)), got {chunks_per_episode}")
        self.config, self.chunks_per_episode = config, chunks_per_episode
        self.root = Path(config.root)
        if not self.root.is_dir():
            raise UserInputError(f"dataset directory not found: {self.root}")
        by_episode: dict[str, list[Segment]] = defaultdict(list)
        for segment in read_manifest(self.root):
            if segment.split == config.split:
                by_episode[segment.episode].append(segment)
        self.episodes: list[list[Segment]] = []
        self.num_short_episodes = 0
        for name in sorted(by_episode):
            usable = [
                s for s in sorted(by_episode[name], key=lambda s: s.start_frame) if s.num_frames >= config.target_frames
            ]
            if len(usable) >= chunks_per_episode:
                self.episodes.append(usable[:chunks_per_episode])
            else:
                self.num_short_episodes += 1
        if not self.episodes:
            raise UserInputError(
                f"no episode in split {config.split!r} of {self.root} has {chunks_per_episode} segments of "
                f">= {config.target_frames} frames ({self.num_short_episodes} too short)"
            )
        self._open = reader_factory(config.backend)

    def __len__(self) -> int:
        return len(self.episodes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, list[str]]:
        segments, readers, parts = self.episodes[index], {}, []
        for segment in segments:  # an episode's segments may live in one video or several
            try:
                if segment.video not in readers:
                    readers[segment.video] = self._open(str(resolve_in_root(self.root, segment.video)))
                indices = range(segment.start_frame, segment.start_frame + self.config.target_frames)
                parts.append(readers[segment.video].get_frames(list(indices)))  # (K, h, w, 3) uint8
            except VideoReadError as err:
                raise UserInputError(f"cannot read episode video {segment.video}: {err.reason}") from None
        frames = np.concatenate(parts)  # (I*K, h, w, 3)
        frames = resize_center_crop(frames, self.config.height, self.config.width)
        video = torch.from_numpy(np.ascontiguousarray(frames)).float().div(127.5).sub(1.0)  # (I*K, H, W, 3)
        chunks = video.unflatten(0, (len(segments), self.config.target_frames))  # (I, K, H, W, 3)
        return chunks.permute(0, 4, 1, 2, 3).contiguous(), [s.action for s in segments]  # -> (I, 3, K, H, W)
