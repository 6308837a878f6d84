"""Training chunks rendered on the fly from procedural worlds: no dataset on disk.

:class:`LiveWorldChunks` is an infinite ``IterableDataset`` of the same :class:`ChunkSample` that
:class:`~.dataset.ChunkDataset` reads from a ``make_world.py`` dataset (``context (3, f_p, H, W)``,
``target (3, f_g, H, W)``, float32 in ``[-1, 1]``, an action phrasing), rendered in the
DataLoader's worker processes. :func:`live_chunk_loader` wraps it in a resumable DataLoader of
:class:`ChunkBatch`.

Sample ``k`` of the stream (a global index, across workers and processes) is a pure function of
``(config, k)``: every random choice comes from numpy Generators seeded with ``(seed, k, stream)``
(the world from ``(seed, k // chunks_per_world, 0)``), so a resumed run restarts the stream at any
index and sees exactly the samples an uninterrupted run would. For sample ``k``:

1. the world: group ``g = k // chunks_per_world`` draws a world name (``worlds`` with
   ``world_weights``) and a world index ``w`` uniform in ``[0, num_worlds)``; the world seed is
   ``seed * 1_000_000 + w``, the rule of ``make_world.py``. The ``chunks_per_world`` consecutive
   samples of a group share the world (map or table, built once per worker and cached), each with
   its own route: building a navigation map costs ~30x more than rendering an episode on it;
2. the episode: ``world.sample_episode`` with ``actions_per_episode`` actions of
   ``frames_per_action`` frames, as ``make_world.py`` renders it (frame 0 = start state, action
   ``i`` = frames ``[1 + i*K, 1 + (i+1)*K)``); blocks episodes are rendered only up to the chosen
   action (:func:`render_episode_prefix`, the same frames as the full episode's);
3. the chunk, by the rule of :func:`~.dataset.chunk_frame_indices`: an action segment uniform
   among the episode's, a target window of ``target_frames`` frames uniform inside it, and
   ``f_p`` context frames right before it, ``f_p`` uniform in ``[context_frames_min,
   context_frames_max]`` clipped to the frames that exist (the first action starts at frame 1,
   so its chunk has ``f_p = 1``);
4. the action text: a phrasing of the segment's primitive drawn from ``phrase_split_for(split)``
   (``train``: training phrasings only, as in a ``train`` manifest row).

Interleaving (who renders which index): process ``rank`` of ``world_size`` consumes its stream
in *blocks* of ``block_size`` consecutive indices; block ``b`` (``b = 0, 1, ...``) of process
``p`` holds indices ``start + (b * world_size + p) * block_size + i`` for ``i < block_size``, and
worker ``w`` of ``R`` DataLoader workers renders blocks ``b = w, w + R, w + 2R, ...`` in order.
With ``block_size`` = the DataLoader's ``batch_size`` every batch is one block and the
DataLoader's round-robin over workers returns blocks ``0, 1, 2, ...``: the batches do not depend
on ``num_workers`` and micro-batch ``n`` of process ``p`` is global block ``n * world_size + p``,
the layout of ``training.py``'s disk loader. With ``block_size = 1`` worker ``w`` of process
``p`` yields ``start + p + world_size * (w + R * j)``, ``j = 0, 1, ...``.

Live frames are exact renders; disk datasets went through H.264 (yuv420p), so their colours are
slightly blurred. World seeds: pick a ``seed`` no evaluation dataset was made with (datasets with
different seeds never share a world), and below 900 so the evaluation suites' held-out worlds
(``world_seed_base = 900_000_000``) are never trained on.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..config import help_field
from ..worlds import BlocksWorld, World, available_worlds, build_world, sets_view_size, world_config
from ..worlds.actions import phrase
from ..worlds.base import Episode, action_frame_range, episode_num_frames
from .dataset import ChunkBatch, ChunkSample, collate_chunks, ignore_sigterm, shut_down_when_done
from .world_dataset import (  # noqa: F401 (HELDOUT_WORLD_SEED_BASE, WORLD_SEED_STRIDE: re-exported)
    HELDOUT_WORLD_SEED_BASE,
    SPLITS,
    WORLD_SEED_STRIDE,
    check_training_world_seed,
    phrase_split_for,
    world_seed,
)

WORLD_CACHE_SIZE = 4  # worlds kept per worker (a group's samples arrive close together)
VALIDATION_SEED = 899
"""Dataset seed of the live validation worlds (899,000,000+): a training ``live.seed`` never takes it."""

# numpy seed streams of one sample: (seed, k, stream)
_WORLD_STREAM, _ROUTE_STREAM, _CHUNK_STREAM, _PHRASE_STREAM = 0, 1, 2, 3


@dataclasses.dataclass
class LiveWorldsConfig:
    """Which worlds are rendered and how chunks are cut from them (see the module docstring)."""

    worlds: list[str] = help_field(["navigation", "blocks"], help="world names of the mixture")
    world_weights: list[float] = help_field([0.75, 0.25], help="mixture weight of each world (normalised)")
    seed: int = help_field(
        100, help="dataset seed in [0, 900): world seeds are seed * 1_000_000 + world index, as in make_world.py"
    )
    num_worlds: int = help_field(100_000, help="size of the training world pool; world index drawn uniformly")
    size: int = help_field(32, help="frame height and width in pixels")
    frames_per_action: int = help_field(8, help="frames rendered per action (K)")
    actions_per_episode: int = help_field(10, help="actions per episode (M); an episode has 1 + M*K frames")
    context_frames_min: int = help_field(1, help="smallest number of context frames f_p")
    context_frames_max: int = help_field(4, help="largest number of context frames f_p")
    target_frames: int | None = help_field(
        None, help="number of target frames f_g per chunk (<= frames_per_action); None = frames_per_action"
    )
    split: str = help_field("train", help="phrasings of this dataset split: train = training phrasings only")
    chunks_per_world: int = help_field(
        4, help="consecutive samples sharing one world (each with its own route); 1 = a new world per sample"
    )
    world_settings: dict[str, list[str]] = help_field(
        {}, help="key=value overrides of a world's config, by world name, e.g. {blocks: [push_fraction=0.5]} "
        "(view_size comes from size)"
    )

    def __post_init__(self) -> None:
        known = available_worlds()
        checks = [
            (len(self.worlds) >= 1, f"worlds must name at least one world, got {self.worlds}"),
            (all(w in known for w in self.worlds), f"worlds must be among {known}, got {self.worlds}"),
            (len(set(self.worlds)) == len(self.worlds), f"worlds must not repeat a name, got {self.worlds}"),
            (
                len(self.world_weights) == len(self.worlds),
                f"world_weights needs one weight per world ({len(self.worlds)}), got {self.world_weights}",
            ),
            (
                all(0 <= w < math.inf for w in self.world_weights) and sum(self.world_weights) > 0,
                f"world_weights must be finite and >= 0 with a positive sum, got {self.world_weights}",
            ),
            (
                1 <= self.num_worlds <= WORLD_SEED_STRIDE,
                f"num_worlds must be in [1, {WORLD_SEED_STRIDE}], got {self.num_worlds}",
            ),
            (self.size >= 8 and self.size % 2 == 0, f"size must be an even number >= 8, got {self.size}"),
            (self.frames_per_action >= 1, f"frames_per_action must be >= 1, got {self.frames_per_action}"),
            (self.actions_per_episode >= 1, f"actions_per_episode must be >= 1, got {self.actions_per_episode}"),
            (
                1 <= self.context_frames_min <= self.context_frames_max,
                "need 1 <= context_frames_min <= context_frames_max, "
                f"got {self.context_frames_min}, {self.context_frames_max}",
            ),
            (
                1 <= self.resolved_target_frames <= self.frames_per_action,
                f"target_frames must be in [1, frames_per_action={self.frames_per_action}], got {self.target_frames}",
            ),
            (self.split in SPLITS, f"split must be one of {', '.join(SPLITS)}, got {self.split!r}"),
            (self.chunks_per_world >= 1, f"chunks_per_world must be >= 1, got {self.chunks_per_world}"),
            (
                set(self.world_settings) <= set(self.worlds),
                f"world_settings names worlds that are not in worlds {self.worlds}: {sorted(set(self.world_settings) - set(self.worlds))}",
            ),
            (
                not any(sets_view_size(o) for o in self.world_settings.values()),
                "world_settings must not set view_size: the views are size x size",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        for name in self.world_settings:
            self.config_of_world(name)  # a bad key or value fails here, with the world config's own message
        check_training_world_seed(self.seed, self.num_worlds)  # after the num_worlds range check

    def config_of_world(self, name: str) -> Any:
        """The config of world ``name`` as this stream renders it: ``world_settings`` and ``view_size = size``."""
        return world_config(name, [*self.world_settings.get(name, []), f"view_size={self.size}"])

    @property
    def resolved_target_frames(self) -> int:
        """``target_frames``, or ``frames_per_action`` where it is None (a training run sets it from ``data``)."""
        return self.target_frames if self.target_frames is not None else self.frames_per_action


def global_index(start: int, local: int, rank: int = 0, world_size: int = 1, block_size: int = 1) -> int:
    """The global sample index of process ``rank``'s ``local``-th sample (the module's interleaving)."""
    block, offset = divmod(local, block_size)
    return start + (block * world_size + rank) * block_size + offset


def render_episode_prefix(world: World, rng: np.random.Generator, num_actions: int, frames_per_action: int,
                          upto: int) -> Episode:
    """``world.sample_episode(rng, num_actions, frames_per_action)`` rendered only up to action ``upto``.

    The route is the full episode's (same ``rng`` draws), the frames are its first
    ``1 + (upto + 1) * K`` and ``primitives`` its first ``upto + 1``. Only blocks episodes are cut
    (rendering is their whole cost); other worlds render the full episode and are sliced.
    """
    if not 0 <= upto < num_actions:
        raise ValueError(f"upto must be in [0, {num_actions}), got {upto}")
    if isinstance(world, BlocksWorld):
        # the draws of BlocksWorld.sample_episode (tests check both give the same frames)
        kind_return = num_actions >= 2 and rng.random() < world.config.return_fraction
        if kind_return:
            primitives = world.move_and_return_script(rng, world.initial_state, num_actions)
        else:
            primitives = world.random_script(rng, num_actions)
        primitives = primitives[: upto + 1]
        frames, _ = world.rollout(world.initial_state, primitives, frames_per_action)
        return Episode(frames=frames, primitives=primitives, frames_per_action=frames_per_action, meta={})
    episode = world.sample_episode(rng, num_actions, frames_per_action)
    primitives = episode.primitives[: upto + 1]
    frames = episode.frames[: episode_num_frames(len(primitives), frames_per_action)]
    return Episode(frames=frames, primitives=primitives, frames_per_action=frames_per_action, meta=episode.meta)


class LiveWorldChunks(IterableDataset):
    """Infinite stream of :class:`ChunkSample` rendered from procedural worlds (see module docstring).

    ``start`` is the global index of the stream's first sample; ``rank``/``world_size`` pick this
    process's share and ``block_size`` the interleaving unit (use the DataLoader's ``batch_size``).
    """

    def __init__(self, config: LiveWorldsConfig, start: int = 0, rank: int = 0, world_size: int = 1,
                 block_size: int = 1) -> None:
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.config = config
        self.start, self.rank, self.world_size, self.block_size = start, rank, world_size, block_size
        weights = np.asarray(config.world_weights, dtype=np.float64)
        self._probabilities = weights / weights.sum()
        self._world_configs = {name: config.config_of_world(name) for name in config.worlds}
        self._worlds: collections.OrderedDict[tuple[str, int], World] = collections.OrderedDict()

    def __iter__(self) -> Iterator[ChunkSample]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        block = worker
        while True:
            for offset in range(self.block_size):
                local = block * self.block_size + offset
                yield self.sample(global_index(self.start, local, self.rank, self.world_size, self.block_size))
            block += workers

    def world_of(self, index: int) -> tuple[str, int]:
        """``(world name, world index)`` of global sample ``index`` (shared by its group)."""
        group = index // self.config.chunks_per_world
        rng = np.random.default_rng([self.config.seed, group, _WORLD_STREAM])
        name = self.config.worlds[int(rng.choice(len(self.config.worlds), p=self._probabilities))]
        return name, int(rng.integers(self.config.num_worlds))

    def sample(self, index: int) -> ChunkSample:
        """Global sample ``index``: a pure function of ``(config, index)``."""
        if index < 0:
            raise ValueError(f"sample index must be >= 0, got {index}")
        config = self.config
        k, m = config.frames_per_action, config.actions_per_episode
        # 1. the world of the sample's group
        name, w = self.world_of(index)
        world = self._world(name, world_seed(config.seed, w))
        # 2. the episode's route, rendered up to the chosen action; 3. the chunk (dataset.chunk_frame_indices)
        chunk_rng = np.random.default_rng([config.seed, index, _CHUNK_STREAM])
        action = int(chunk_rng.integers(m))
        episode = render_episode_prefix(world, np.random.default_rng([config.seed, index, _ROUTE_STREAM]), m, k, action)
        segment_start, segment_end = action_frame_range(action, k)
        first = max(segment_start, 1)  # a target never starts at frame 0
        target_start = int(chunk_rng.integers(first, segment_end - config.resolved_target_frames + 1))
        f_p = int(chunk_rng.integers(config.context_frames_min, config.context_frames_max + 1))
        f_p = min(f_p, target_start)
        frames = episode.frames[target_start - f_p : target_start + config.resolved_target_frames]  # (f_p + f_g, H, W, 3) uint8
        # scale in numpy, as ChunkDataset does: (F, H, W, C) -> (C, F, H, W) in [-1, 1]
        pixels = np.ascontiguousarray(frames.transpose(3, 0, 1, 2), dtype=np.float32)
        video = torch.from_numpy(pixels / np.float32(127.5) - np.float32(1.0))
        # 4. the action text, from the split's phrasings
        phrase_rng = np.random.default_rng([config.seed, index, _PHRASE_STREAM])
        text = phrase(episode.primitives[action], phrase_rng, phrase_split_for(config.split))
        return ChunkSample(
            context=video[:, :f_p], target=video[:, f_p:], action=text, video=f"live/{name}-{w:06d}/sample-{index}"
        )

    def _world(self, name: str, seed: int) -> World:
        """The world ``name`` for ``seed``, from this process's small LRU cache."""
        key = (name, seed)
        if key in self._worlds:
            self._worlds.move_to_end(key)
            return self._worlds[key]
        world = build_world(name, seed, config=self._world_configs[name])
        self._worlds[key] = world
        while len(self._worlds) > WORLD_CACHE_SIZE:
            self._worlds.popitem(last=False)
        return world


def live_chunk_loader(config: LiveWorldsConfig, batch_size: int, start_batch: int = 0, rank: int = 0,
                      world_size: int = 1, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """An endless DataLoader of :class:`ChunkBatch`, starting at this process's micro-batch ``start_batch``.

    Micro-batch ``n`` of process ``rank`` holds global samples ``(n * world_size + rank) * batch_size``
    onwards (``batch_size`` of them), whatever ``num_workers``: resuming at ``start_batch = n``
    yields exactly batches ``n, n+1, ...`` of an uninterrupted loader. The loader is already
    sharded by ``rank``: do not pass it through ``accelerator.prepare``. A ``batch_size`` that is a
    multiple of ``config.chunks_per_world`` lets one worker render each world group (full saving).

    The stream never ends. The workers ignore SIGTERM, so a worker still running at exit would block
    ``multiprocessing``'s exit handler, which stops daemon workers with SIGTERM and waits for them:
    ``iter(loader)`` is therefore a generator (:func:`shut_down_when_done`) that stops its workers
    when it is closed, garbage-collected or left by an error (e.g. one raised in a worker), as
    ``training.py``'s disk loader does; a worker's :class:`UserInputError` comes back as its
    one-line message, not wrapped in the worker's traceback.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if start_batch < 0 or num_workers < 0:
        raise ValueError(f"start_batch and num_workers must be >= 0, got {start_batch}, {num_workers}")
    dataset = LiveWorldChunks(
        config, start=start_batch * batch_size * world_size, rank=rank, world_size=world_size, block_size=batch_size
    )
    return _LiveChunkLoader(
        dataset,
        batch_size=batch_size,
        collate_fn=collate_chunks,
        num_workers=num_workers,
        pin_memory=pin_memory,
        worker_init_fn=ignore_sigterm if num_workers else None,
    )


class _LiveChunkLoader(DataLoader):
    """A DataLoader whose iterators stop their workers when closed or left by an error, and give back a
    worker's :class:`UserInputError` as its one-line message (torch wraps it in the worker's traceback)."""

    def __iter__(self) -> Iterator[ChunkBatch]:
        yield from shut_down_when_done(super().__iter__())  # the workers start at the first batch


__all__ = [
    "LiveWorldChunks",
    "LiveWorldsConfig",
    "global_index",
    "live_chunk_loader",
    "render_episode_prefix",
]
