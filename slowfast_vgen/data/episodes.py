"""Whole episodes as ordered ground-truth chunks, for the slow-fast learning loop (Algorithm 1b).

An item is one episode of the chosen split: ``chunks_per_episode`` consecutive segments, each cut
to its first ``target_frames`` frames and resized like :class:`ChunkDataset` does, plus their
actions. The loop trainer turns consecutive chunks ``X_i, X_{i+1}`` into records, with the end of
``X_i`` as the context of ``X_{i+1}``, so the chunks must follow each other without a gap: two
segments of one video are consecutive only when the second starts where the first chunk ends
(``start_frame + target_frames``). A ``target_frames`` shorter than the segments, or a segment
dropped as too short, breaks an episode there; it yields its first run of enough consecutive
chunks. Segments in different video files (ingested clips) are taken in manifest order as
consecutive. Episodes without such a run are skipped and counted (``num_short_episodes``).
Episodes with a missing or unreadable video are skipped with a warning naming it, as
:class:`~slowfast_vgen.data.dataset.ChunkDataset` skips them, until ``max_bad_fraction`` is passed.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from ..errors import UserInputError
from .dataset import ChunkDatasetConfig, mark_bad_video
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
        in_split = [segment for segment in read_manifest(self.root) if segment.split == config.split]
        self.num_videos = len({s.video for s in in_split})
        self.bad_videos: dict[str, str] = {}  # skipped with a warning, as ChunkDataset does
        for video in sorted({s.video for s in in_split}):
            if not resolve_in_root(self.root, video).is_file():
                mark_bad_video(self.bad_videos, video, "file not found", self.num_videos, config, self.root)
        by_episode: dict[str, list[Segment]] = defaultdict(list)
        for segment in in_split:
            by_episode[segment.episode].append(segment)
        self.episodes: list[list[Segment]] = []
        self.num_short_episodes = 0
        for name in sorted(by_episode):
            if any(segment.video in self.bad_videos for segment in by_episode[name]):
                continue  # a missing clip would join the clips around it into one run
            run = first_consecutive_run(by_episode[name], config.target_frames, chunks_per_episode)
            if run is None:
                self.num_short_episodes += 1
            else:
                self.episodes.append(run)
        if not self.episodes:
            raise UserInputError(
                f"no episode in split {config.split!r} of {self.root} has {chunks_per_episode} consecutive segments "
                f"of >= {config.target_frames} frames, each chunk starting where the one before ends "
                f"({self.num_short_episodes} episodes have no such run: too few segments, or gaps between the chunks; "
                "the loop needs target_frames equal to the segment length)"
            )
        self._open = reader_factory(config.backend)

    def __len__(self) -> int:
        return len(self.episodes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, list[str]]:
        """Episode ``index``; one with an unreadable video is skipped with a warning (the next readable
        episode is returned instead, the same one every time), until ``max_bad_fraction`` is passed."""
        for attempt in range(len(self.episodes)):
            segments = self.episodes[(index + attempt) % len(self.episodes)]
            if not any(segment.video in self.bad_videos for segment in segments):
                try:
                    return self._load(segments)
                except VideoReadError as err:  # its path is the manifest's name of the video
                    mark_bad_video(self.bad_videos, err.path, err.reason, self.num_videos, self.config, self.root)
        raise UserInputError(f"no episode of split {self.config.split!r} in {self.root} is readable: "
                             f"{len(self.bad_videos)} bad videos, e.g. {next(iter(self.bad_videos), '?')}")

    def _load(self, segments: list[Segment]) -> tuple[torch.Tensor, list[str]]:
        readers, parts = {}, []
        for segment in segments:  # an episode's segments may live in one video or several
            try:
                if segment.video not in readers:
                    readers[segment.video] = self._open(str(resolve_in_root(self.root, segment.video)))
                indices = range(segment.start_frame, segment.start_frame + self.config.target_frames)
                parts.append(readers[segment.video].get_frames(list(indices)))  # (K, h, w, 3) uint8
            except VideoReadError as err:
                raise VideoReadError(segment.video, err.reason) from None
        frames = np.concatenate(parts)  # (I*K, h, w, 3)
        frames = resize_center_crop(frames, self.config.height, self.config.width)
        video = torch.from_numpy(np.ascontiguousarray(frames)).float().div(127.5).sub(1.0)  # (I*K, H, W, 3)
        chunks = video.unflatten(0, (len(segments), self.config.target_frames))  # (I, K, H, W, 3)
        return chunks.permute(0, 4, 1, 2, 3).contiguous(), [s.action for s in segments]  # -> (I, 3, K, H, W)


def first_consecutive_run(segments: list[Segment], target_frames: int, length: int) -> list[Segment] | None:
    """The first ``length`` segments of one episode whose chunks (each segment's first
    ``target_frames`` frames) follow each other without a gap, or ``None``.

    Segments are ordered by video (in order of first appearance) and start frame. Within one video
    the next chunk must start at ``start_frame + target_frames`` of the one before; a segment in
    another video file is taken as the continuation (a recording's ingested clips hold lead-in frames
    of their own). Segments shorter than ``target_frames`` are left out and break the run.
    """
    first_seen = {video: index for index, video in reversed(list(enumerate(s.video for s in segments)))}
    ordered = sorted(segments, key=lambda s: (first_seen[s.video], s.start_frame))
    run: list[Segment] = []
    for segment in ordered:
        if segment.num_frames < target_frames:
            run = []
            continue
        if run and run[-1].video == segment.video and segment.start_frame != run[-1].start_frame + target_frames:
            run = []
        run.append(segment)
        if len(run) == length:
            return run
    return None
