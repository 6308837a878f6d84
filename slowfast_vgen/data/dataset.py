"""Training chunks ``(context frames f_p, action text, target frames f_g)`` read from a manifest.

One item per usable manifest segment of the chosen split. For item ``i`` (randomness from
``seed``, the epoch and ``i``, so an item is reproducible):

* the target is ``target_frames`` consecutive frames of the segment (a random window when the
  segment is longer), labelled with the segment's action;
* the context is the ``f_p`` frames immediately before the target's first frame in the same
  video, ``f_p`` uniform in ``[context_frames_min, context_frames_max]``, clipped to the frames
  that exist before the target;
* a target may not start at frame 0 of a video: when a segment starts at frame 0 (e.g. robot
  clips of one instruction), its first frame is the context (``f_p = 1``) and the target is the
  following frames (Eq. 1 of the paper: first chunk from a single image).

Segments too short for that (fewer than ``target_frames`` frames, or ``target_frames + 1``
when they start at frame 0) are skipped when the index is built and counted
(``num_short_segments``).

Robustness: videos are opened lazily, in the process that reads them (each DataLoader worker
has its own small reader cache; none is opened in ``__init__``). Missing files are found when the
index is built (a cheap ``stat``); corrupt or truncated files when read. Either way the file is
skipped with a warning naming it, counted in ``bad_videos``, and the item is replaced by a
deterministic sequence of other indices (at most ``MAX_ATTEMPTS``). When the bad videos exceed
``max_bad_fraction`` of the split's videos, a :class:`UserInputError` stops training with a
clear message. With ``num_workers > 0`` each worker judges the fraction on what it has seen.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import signal
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import help_field
from ..errors import UserInputError
from .manifest import Segment, read_manifest, resolve_in_root
from .readers import BACKENDS, VideoReadError, VideoReaderBackend, reader_factory, resize_center_crop

MAX_ATTEMPTS = 16
READER_CACHE_SIZE = 8


@dataclasses.dataclass
class ChunkDatasetConfig:
    """Where chunks come from and how they are shaped."""

    root: str = help_field(help="dataset root directory holding manifest.jsonl")
    split: str = help_field("train", help="manifest split to read (train, val, test, ...)")
    height: int = help_field(32, help="frame height after resize and centre crop")
    width: int = help_field(32, help="frame width after resize and centre crop")
    context_frames_min: int = help_field(1, help="smallest number of context frames f_p")
    context_frames_max: int = help_field(4, help="largest number of context frames f_p")
    target_frames: int = help_field(8, help="number of target frames f_g per chunk")
    max_bad_fraction: float = help_field(
        0.1, help="fail when more than this fraction of the split's videos is unreadable"
    )
    seed: int = help_field(0, help="seed of the per-item random choices (context length, target window)")
    backend: str = help_field("auto", help="video reader: auto (decord when installed), decord or imageio")

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise ValueError(f"height and width must be >= 1, got {self.height}x{self.width}")
        if not 1 <= self.context_frames_min <= self.context_frames_max:
            raise ValueError(
                f"need 1 <= context_frames_min <= context_frames_max, got {self.context_frames_min}, {self.context_frames_max}"
            )
        if self.target_frames < 1:
            raise ValueError(f"target_frames must be >= 1, got {self.target_frames}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")
        if not self.split:
            raise ValueError("split must not be empty")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")


@dataclasses.dataclass
class ChunkSample:
    """One chunk: ``context (3, f_p, H, W)`` and ``target (3, f_g, H, W)`` floats in ``[-1, 1]``."""

    context: torch.Tensor
    target: torch.Tensor
    action: str
    video: str


@dataclasses.dataclass
class ChunkBatch:
    """A collated batch: ``frames (B, 3, F, H, W)`` = context ⊕ target, ``context_mask (B, F)``.

    ``context_mask`` is True on context positions (padding included, see :func:`collate_chunks`)
    and False on the ``f_g`` target positions, the only ones in the loss (Eq. 2).
    """

    frames: torch.Tensor
    context_mask: torch.Tensor
    actions: list[str]
    videos: list[str] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return self.frames.shape[0]

    @property
    def num_context(self) -> int:
        """Context positions per sample (the same for every sample after padding)."""
        return int(self.context_mask[0].sum()) if len(self) else 0

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "ChunkBatch":
        return dataclasses.replace(
            self,
            frames=self.frames.to(device, non_blocking=non_blocking),
            context_mask=self.context_mask.to(device, non_blocking=non_blocking),
        )


def collate_chunks(samples: list[ChunkSample]) -> ChunkBatch:
    """Stack samples into a :class:`ChunkBatch`.

    All targets must have the same ``f_g``. When ``f_p`` differs within the batch, shorter
    contexts are LEFT-padded by repeating their first context frame up to the batch's largest
    ``f_p``; padded positions count as context (``context_mask`` True), so they stay clean and
    out of the loss, and the frame right before the target is always the real previous frame.
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    target_lengths = {s.target.shape[1] for s in samples}
    if len(target_lengths) != 1:
        raise ValueError(f"all targets must have the same number of frames, got {sorted(target_lengths)}")
    num_context = max(s.context.shape[1] for s in samples)
    videos = []
    for s in samples:
        pad = num_context - s.context.shape[1]
        context = torch.cat([s.context[:, :1].expand(-1, pad, -1, -1), s.context], dim=1) if pad else s.context
        videos.append(torch.cat([context, s.target], dim=1))  # (3, f_p_max + f_g, H, W)
    frames = torch.stack(videos)  # (B, 3, F, H, W)
    mask = torch.zeros(frames.shape[0], frames.shape[2], dtype=torch.bool)
    mask[:, :num_context] = True  # (B, F)
    return ChunkBatch(frames, mask, [s.action for s in samples], [s.video for s in samples])


@dataclasses.dataclass(frozen=True)
class ChunkIndex:
    """A usable segment: where its target window may start (inclusive range)."""

    segment: Segment
    first_target_start: int
    last_target_start: int


def mark_bad_video(bad_videos: dict[str, str], video: str, reason: str, num_videos: int, config: ChunkDatasetConfig,
                   root: Path) -> None:
    """Record an unreadable ``video`` in ``bad_videos``, warn naming it, and stop with a :class:`UserInputError`
    once the bad ones pass ``config.max_bad_fraction`` of the split's ``num_videos``."""
    bad_videos[video] = reason
    warnings.warn(f"skipping unreadable video {video}: {reason}", RuntimeWarning, stacklevel=4)
    if len(bad_videos) > config.max_bad_fraction * num_videos:
        examples = ", ".join(f"{v} ({r})" for v, r in list(bad_videos.items())[:3])
        raise UserInputError(
            f"{len(bad_videos)} of {num_videos} videos in split {config.split!r} of {root} are "
            f"unreadable, more than max_bad_fraction={config.max_bad_fraction}: {examples}; "
            f"run data_tools/validate.py {root}"
        )


def build_index(segments: list[Segment], target_frames: int) -> tuple[list[ChunkIndex], int]:
    """Usable segments and the count of segments too short for ``target_frames`` (+1 at frame 0)."""
    items, short = [], 0
    for seg in segments:
        first = max(seg.start_frame, 1)  # a target never starts at frame 0: frame 0 is then context
        last = seg.end_frame - target_frames
        if last < first:
            short += 1
            continue
        items.append(ChunkIndex(seg, first, last))
    return items, short


def chunk_frame_indices(
    item: ChunkIndex, rng: np.random.Generator, config: ChunkDatasetConfig
) -> tuple[list[int], int]:
    """Frame indices ``context + target`` of one chunk and ``f_p`` (the number of context frames)."""
    target_start = int(rng.integers(item.first_target_start, item.last_target_start + 1))
    f_p = int(rng.integers(config.context_frames_min, config.context_frames_max + 1))
    f_p = min(f_p, target_start)  # clip to the frames that exist before the target (>= 1)
    return list(range(target_start - f_p, target_start + config.target_frames)), f_p


class ChunkDataset(Dataset):
    """``torch.utils.data.Dataset`` of :class:`ChunkSample` from a manifest split (see module docstring)."""

    def __init__(self, config: ChunkDatasetConfig) -> None:
        self.config = config
        self.root = Path(config.root)
        if not self.root.is_dir():
            raise UserInputError(f"dataset directory not found: {self.root}")
        segments = read_manifest(self.root)
        in_split = [s for s in segments if s.split == config.split]
        if not in_split:
            present = sorted({s.split for s in segments})
            raise UserInputError(f"no segments with split {config.split!r} in {self.root}; splits present: {present}")
        self.num_videos = len({s.video for s in in_split})
        self.bad_videos: dict[str, str] = {}
        self.epoch = 0
        self._open = reader_factory(config.backend)
        self._readers: collections.OrderedDict[str, VideoReaderBackend] = collections.OrderedDict()
        self._readers_pid = os.getpid()
        self._inherited_readers: list[VideoReaderBackend] = []
        for video in sorted({s.video for s in in_split}):
            if not resolve_in_root(self.root, video).is_file():
                self._mark_bad(video, "file not found")
        items, self.num_short_segments = build_index(
            [s for s in in_split if s.video not in self.bad_videos], config.target_frames
        )
        if not items:
            raise UserInputError(
                f"no usable segments in split {config.split!r} of {self.root}: {self.num_short_segments} are shorter than "
                f"target_frames={config.target_frames} (+1 when starting at frame 0), {len(self.bad_videos)} videos missing"
            )
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """Change the per-item random choices (call before creating the epoch's DataLoader iterator)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> ChunkSample:
        if not 0 <= index < len(self.items):
            raise IndexError(f"index {index} out of range for {len(self.items)} chunks")
        stride = _coprime_stride(len(self.items))
        for attempt in range(MAX_ATTEMPTS):
            candidate = (index + attempt * stride) % len(self.items)
            video = self.items[candidate].segment.video
            if video in self.bad_videos:
                continue
            try:
                return self._load(candidate)
            except VideoReadError as err:
                self._mark_bad(video, err.reason)
        raise UserInputError(
            f"could not read a chunk for index {index} after {MAX_ATTEMPTS} attempts; "
            f"{len(self.bad_videos)} bad videos so far, e.g. {next(iter(self.bad_videos), '?')}"
        )

    # -- internals --------------------------------------------------------------------------

    def _load(self, index: int) -> ChunkSample:
        item = self.items[index]
        rng = np.random.default_rng([self.config.seed, self.epoch, index])
        indices, f_p = chunk_frame_indices(item, rng, self.config)
        frames = self._reader(item.segment.video).get_frames(indices)  # (f_p + f_g, h, w, 3) uint8
        frames = resize_center_crop(frames, self.config.height, self.config.width)
        # scale in numpy: torch's intra-op thread pool costs milliseconds per tiny op on small CPUs
        pixels = np.ascontiguousarray(frames.transpose(3, 0, 1, 2), dtype=np.float32)  # (F, H, W, C) -> (C, F, H, W)
        video = torch.from_numpy(pixels / np.float32(127.5) - np.float32(1.0))
        return ChunkSample(
            context=video[:, :f_p], target=video[:, f_p:], action=item.segment.action, video=item.segment.video
        )

    def _own_readers(self) -> collections.OrderedDict[str, VideoReaderBackend]:
        """This process's reader cache (a fresh one after a fork)."""
        if self._readers_pid != os.getpid():
            # Forked from a process that had readers open. Destroying an inherited decord reader
            # joins decoder threads that do not exist in this process and deadlocks, so the
            # inherited readers are kept alive, unused, until the worker exits.
            self._inherited_readers.extend(self._readers.values())
            self._readers = collections.OrderedDict()
            self._readers_pid = os.getpid()
        return self._readers

    def _reader(self, video: str) -> VideoReaderBackend:
        """A cached reader for ``video``, opened lazily in this process (LRU of ``READER_CACHE_SIZE``)."""
        readers = self._own_readers()
        if video in readers:
            readers.move_to_end(video)
            return readers[video]
        reader = self._open(str(resolve_in_root(self.root, video)))
        readers[video] = reader
        while len(readers) > READER_CACHE_SIZE:
            readers.popitem(last=False)
        return reader

    def _mark_bad(self, video: str, reason: str) -> None:
        """Record an unreadable video, warn, and fail once the bad fraction passes the threshold."""
        self._own_readers().pop(video, None)
        mark_bad_video(self.bad_videos, video, reason, self.num_videos, self.config, self.root)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_readers"] = collections.OrderedDict()  # readers never cross process boundaries
        state["_inherited_readers"] = []
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._readers_pid = os.getpid()


def _coprime_stride(n: int) -> int:
    """A stride coprime with ``n`` near ``n / 2.618``, so replacement indices spread over the dataset."""
    if n <= 2:
        return 1
    stride = max(1, int(n / 2.618))
    while math.gcd(stride, n) != 1:
        stride += 1
    return stride


def ignore_sigterm(worker_id: int) -> None:
    """``worker_init_fn`` of the training DataLoaders: workers leave SIGTERM to the main process, which
    checkpoints and exits cleanly (schedulers and ``kill -- -PGID`` signal the whole process group)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def shut_down_when_done(iterator: Iterator) -> Iterator:
    """Yield from a DataLoader ``iterator``, then stop its worker processes (if any) when the generator
    finishes, fails (an error raised in a worker included) or is closed: the workers ignore SIGTERM
    (:func:`ignore_sigterm`), and workers left alive (e.g. held by an error's traceback) would make the
    interpreter's exit wait on them forever. A worker's :class:`UserInputError` comes back as its
    one-line message (:func:`worker_error_message`), not wrapped in the worker's traceback."""
    try:
        yield from iterator
    except UserInputError as err:
        raise UserInputError(worker_error_message(str(err))) from None
    finally:
        shutdown = getattr(iterator, "_shutdown_workers", None)  # only the multi-process iterator has workers
        if shutdown is not None:
            shutdown()


def worker_error_message(text: str) -> str:
    """The original one-line message of a :class:`UserInputError` re-raised by a DataLoader worker
    (torch's text is 'Caught UserInputError in DataLoader worker ...', the traceback, then
    '...UserInputError: <message>'); a message raised in the main process comes back unchanged."""
    lines = text.strip().splitlines()
    if len(lines) > 1 and lines[0].startswith("Caught "):
        for line in reversed(lines):
            kind, _, message = line.partition(": ")
            if kind.endswith("UserInputError") and message:
                return message
    return lines[0] if lines else text
