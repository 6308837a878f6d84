"""Render procedural-world episodes into a dataset on disk (the logic of ``data_tools/make_world.py``).

Layout written under ``out``::

    videos/<episode>.mp4     one H.264 video per episode: start frame + K frames per action
    meta/<episode>.json      exact ground truth (camera / object positions per frame, primitives,
                             revisit frames, world seed and config) and the generator settings
    manifest.jsonl           one row per action segment, written last, atomically
    dataset.json             generator settings, split sizes and the seed rule

Splits and seeds (the rule): episode ``e`` lives in world ``w = e // episodes_per_world``, whose
seed is ``seed * 1_000_000 + w``. Worlds are split in contiguous blocks, ``train`` first, then
``val``, then ``test`` (sizes from the fractions, at least one world each when there are 3 or
more worlds), so a world seed never appears in two splits, and datasets made with different
``--seed`` values never share a world (for fewer than a million worlds).

Phrasings: ``train`` rows use training phrasings only; ``val`` and ``test`` rows draw from all
phrasings (training and held-out), so held-out wordings are evaluated there and never trained on.

Resuming: each episode's video and then its meta file are written atomically; an episode whose
both files exist is not rendered again, so an interrupted run continues where it stopped. Before
any rendering, :func:`check_world_out` reads every meta file: one made with other generator
settings refuses the run, a damaged one is reported by name and its episode rendered again (each
reused episode's settings are compared once more when it is reused). The manifest is rebuilt from
the meta files at the end.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from ..config import help_field
from ..errors import UserInputError, first_line, fps_problem, read_json_object
from ..io_utils import atomic_write_json, check_output_directory
from ..worlds import build_world, sets_view_size, world_config, world_spec
from ..worlds.actions import PhraseSplit, phrase
from ..worlds.base import action_frame_range
from .manifest import (
    MANIFEST_NAME, META_DIR, Segment, episode_meta_path, write_episode_meta, write_manifest,
)

WORLD_SEED_STRIDE = 1_000_000
# First seed of the held-out evaluation worlds (evaluation.EvalConfig.world_seed_base): never trained on.
# Defined here, in a module free of torch; data.live_worlds re-exports it.
HELDOUT_WORLD_SEED_BASE = 900_000_000
FORMAT_VERSION = 1
MAX_SIZE = 1024
"""Largest frame size ``make_world`` renders (a 1024 x 1024 view is far beyond what the models train on)."""
SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclasses.dataclass
class MakeWorldConfig:
    """Settings of one generated dataset (see the module docstring for the split/seed rule)."""

    out: str = help_field(help="output dataset directory")
    episodes: int = help_field(help="number of episodes to render")
    seed: int = help_field(0, help="dataset seed in [0, 900); world seeds are seed * 1_000_000 + world index")
    world: str = help_field("navigation", help="world name: navigation or blocks")
    size: int = help_field(32, help="view height and width in pixels")
    frames_per_action: int = help_field(8, help="frames rendered per action (K)")
    actions_per_episode: int = help_field(10, help="actions per episode (M); an episode has 1 + M*K frames")
    fps: float = help_field(8.0, help="frame rate written into the videos and the manifest")
    episodes_per_world: int = help_field(1, help="episodes rendered in each world (different routes, same map)")
    val_fraction: float = help_field(0.1, help="fraction of worlds in the val split")
    test_fraction: float = help_field(0.1, help="fraction of worlds in the test split")
    workers: int = help_field(1, help="parallel worker processes")
    world_overrides: list[str] = help_field([], help="key=value overrides of the world config, e.g. speed=3")

    def __post_init__(self) -> None:
        fps_issue = fps_problem(self.fps)
        checks = [
            (self.episodes >= 1, f"episodes must be >= 1, got {self.episodes}"),
            (8 <= self.size <= MAX_SIZE and self.size % 2 == 0,
             f"size must be an even number in [8, {MAX_SIZE}], got {self.size}"),
            (self.frames_per_action >= 1, f"frames_per_action must be >= 1, got {self.frames_per_action}"),
            (self.actions_per_episode >= 1, f"actions_per_episode must be >= 1, got {self.actions_per_episode}"),
            (fps_issue is None, f"fps {fps_issue}"),
            (self.episodes_per_world >= 1, f"episodes_per_world must be >= 1, got {self.episodes_per_world}"),
            (
                0 <= self.val_fraction < 1
                and 0 <= self.test_fraction < 1
                and self.val_fraction + self.test_fraction < 1,
                "val_fraction and test_fraction must be in [0, 1) with a sum below 1, "
                f"got {self.val_fraction}, {self.test_fraction}",
            ),
            (self.workers >= 1, f"workers must be >= 1, got {self.workers}"),
            (not sets_view_size(self.world_overrides),
             "set the frame size with --size, not --set view_size (the dataset records --size)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.num_worlds > WORLD_SEED_STRIDE:
            raise ValueError(f"at most {WORLD_SEED_STRIDE} worlds per dataset, got {self.num_worlds}")
        check_training_world_seed(self.seed, self.num_worlds)
        if not self.out:
            raise ValueError("out must name a directory")
        world_spec(self.world)  # UserInputError for unknown names

    @property
    def num_worlds(self) -> int:
        return math.ceil(self.episodes / self.episodes_per_world)

    def generator(self) -> dict[str, Any]:
        """Settings that determine an episode's content (what a resumed episode must match)."""
        return {
            "format_version": FORMAT_VERSION,
            "world": self.world,
            "seed": self.seed,
            "size": self.size,
            "frames_per_action": self.frames_per_action,
            "actions_per_episode": self.actions_per_episode,
            "fps": self.fps,
            "episodes_per_world": self.episodes_per_world,
            "world_overrides": list(self.world_overrides),
        }


def check_training_world_seed(seed: int, num_worlds: int, what: str = "seed") -> None:
    """Refuse a dataset seed whose worlds reach the held-out evaluation worlds, which are never trained on.

    The worlds of ``seed`` are ``world_seed(seed, w)`` for ``w < num_worlds``; they must all lie below
    ``HELDOUT_WORLD_SEED_BASE``. Callers check ``1 <= num_worlds <= WORLD_SEED_STRIDE`` first, so the
    allowed seeds are ``[0, HELDOUT_WORLD_SEED_BASE // WORLD_SEED_STRIDE)``. ``what`` names the setting
    in the one-line ``ValueError`` (a config error: exit 2 through ``load_config`` and ``run_cli``).
    """
    if not (0 <= seed and seed * WORLD_SEED_STRIDE + num_worlds <= HELDOUT_WORLD_SEED_BASE):
        raise ValueError(
            f"{what} must be in [0, {HELDOUT_WORLD_SEED_BASE // WORLD_SEED_STRIDE}) so that its worlds "
            f"({what} * {WORLD_SEED_STRIDE} + w) never include the held-out evaluation worlds "
            f"(seeds from {HELDOUT_WORLD_SEED_BASE}), got {seed}"
        )


def heldout_world_seed_problem(base: int) -> str | None:
    """Why ``base`` cannot be the first world seed of an evaluation or planning run (which must use the
    held-out worlds, never trained on), or ``None``; negative seeds fail too (numpy cannot use them)."""
    if base < HELDOUT_WORLD_SEED_BASE:
        return (f"world_seed_base must be >= {HELDOUT_WORLD_SEED_BASE} (the held-out worlds; training datasets use "
                f"the seeds below), got {base}")
    return None


def world_seed(dataset_seed: int, world_index: int) -> int:
    """The seed of world ``world_index`` in a dataset made with ``dataset_seed`` (unique per world)."""
    return dataset_seed * WORLD_SEED_STRIDE + world_index


def split_sizes(num_worlds: int, val_fraction: float, test_fraction: float) -> dict[str, int]:
    """Worlds per split: rounded fractions, at least one val/test world when there are >= 3 worlds."""
    sizes = {}
    for name, fraction in (("val", val_fraction), ("test", test_fraction)):
        count = round(fraction * num_worlds)
        if fraction > 0 and num_worlds >= 3:
            count = max(1, count)
        sizes[name] = count
    sizes["train"] = num_worlds - sizes["val"] - sizes["test"]
    if sizes["train"] < 1:
        raise ValueError(
            f"no world left for training with {num_worlds} worlds and fractions {val_fraction}, {test_fraction}"
        )
    return {name: sizes[name] for name in SPLITS}


def world_split(world_index: int, sizes: dict[str, int]) -> str:
    """The split of ``world_index``: contiguous blocks, train | val | test."""
    if world_index < sizes["train"]:
        return "train"
    if world_index < sizes["train"] + sizes["val"]:
        return "val"
    return "test"


def phrase_split_for(split: str) -> PhraseSplit:
    """Which phrasings a dataset split may use: train -> training phrasings, others -> all."""
    return "train" if split == "train" else "all"


def episode_name(world: str, index: int) -> str:
    return f"{world}-{index:06d}"


def episode_segments(
    name: str,
    video: str,
    primitives: list[str],
    split: str,
    frames_per_action: int,
    fps: float,
    phrase_rng: np.random.Generator,
) -> list[Segment]:
    """One manifest row per action, phrased with ``phrase_rng`` from the split's phrasings."""
    phrase_split = phrase_split_for(split)
    rows = []
    for i, primitive in enumerate(primitives):
        start, end = action_frame_range(i, frames_per_action)
        rows.append(Segment(video, start, end, fps, phrase(primitive, phrase_rng, phrase_split), name, split))
    return rows


@dataclasses.dataclass
class EpisodeJob:
    """Everything a worker needs to render (or resume) one episode."""

    root: str
    index: int
    split: str
    world_seed: int
    config: MakeWorldConfig

    @property
    def name(self) -> str:
        return episode_name(self.config.world, self.index)

    @property
    def video(self) -> str:
        return f"videos/{self.name}.mp4"


def _route_rng(config: MakeWorldConfig, index: int) -> np.random.Generator:
    return np.random.default_rng([config.seed, index, 1])


def _phrase_rng(config: MakeWorldConfig, index: int) -> np.random.Generator:
    return np.random.default_rng([config.seed, index, 2])


def run_episode_job(job: EpisodeJob) -> list[Segment]:
    """Render one episode to ``videos/`` and ``meta/`` (or reuse a finished one); return its rows.

    ``job.root`` must have passed :func:`check_world_out`, which checked the settings of every meta file.
    """
    from ..video_io import write_video

    config = job.config
    root = Path(job.root)
    meta_path = episode_meta_path(root, job.name)
    video_path = root / job.video
    meta = _finished_meta(meta_path, video_path, config)
    if meta is None:
        world = build_world(config.world, job.world_seed, config=world_config(config.world, _world_overrides(config)))
        episode = world.sample_episode(
            _route_rng(config, job.index), config.actions_per_episode, config.frames_per_action
        )
        write_video(video_path, episode.frames, fps=config.fps)
        meta = {
            "episode": job.name,
            "video": job.video,
            "generator": config.generator(),
            "frames": int(episode.frames.shape[0]),
            **episode.meta,
        }
        write_episode_meta(root, job.name, meta)  # written last: its presence marks the episode finished
    return episode_segments(
        job.name,
        job.video,
        list(meta["primitives"]),
        job.split,
        config.frames_per_action,
        config.fps,
        _phrase_rng(config, job.index),
    )


def _world_overrides(config: MakeWorldConfig) -> list[str]:
    """The world overrides plus the view size (``view_size`` is how both worlds name it)."""
    return [f"view_size={config.size}", *config.world_overrides]


def _finished_meta(meta_path: Path, video_path: Path, config: MakeWorldConfig) -> dict[str, Any] | None:
    """The meta of an already rendered episode, ``None`` if it must be rendered (a file missing, the meta damaged).

    :func:`check_world_out` compared the settings of every meta file before any rendering (and
    reported damaged ones); the comparison is repeated here for the one file about to be reused,
    as another run with other settings may have written it since (two runs into one ``--out``).
    """
    if not (meta_path.is_file() and video_path.is_file()):
        return None
    meta = _read_meta(meta_path)[0]
    if meta is not None and meta.get("generator") != config.generator():
        raise UserInputError(f"--out: {meta_path} was generated with other settings ({meta.get('generator')}) "
                             "while this run was rendering; run one make_world per --out directory")
    return meta


def _read_meta(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(meta, None)`` for a readable meta side file, ``(None, why)`` for a damaged one (unreadable, not
    UTF-8, not JSON, not a JSON object, no list of ``primitives``, which a resumed episode's rows are
    made from): its episode is rendered again. The one reader of meta files here."""
    try:
        meta = read_json_object(path)
    except (OSError, ValueError) as err:
        return None, first_line(err)
    primitives = meta.get("primitives")
    if not isinstance(primitives, list) or not all(isinstance(p, str) for p in primitives):
        return None, "no list of primitives"
    return meta, None


OWN_ENTRIES = frozenset({"videos", META_DIR, MANIFEST_NAME, "dataset.json"})
"""What a (finished or interrupted) ``make_world`` run leaves in its output directory."""


def check_world_out(config: MakeWorldConfig, report: Callable[[str], None] | None = None) -> Path:
    """``config.out`` when rendering there resumes or redoes this very dataset; a one-line
    :class:`UserInputError` before any rendering otherwise.

    Refused: a file or a path under a file; a directory holding anything but what ``make_world``
    writes (``videos/``, ``meta/``, ``manifest.jsonl``, ``dataset.json``; hidden files aside); and
    a dataset or partial run made with other generator settings (``dataset.json`` and the
    ``meta/*.json`` side files record them) or of unknown origin (a ``manifest.jsonl`` with
    neither), whose manifest would be replaced and videos orphaned.

    Every existing meta file is checked here, before any work (:func:`_finished_meta` compares a
    reused episode's settings once more, in case another run wrote it since). A damaged meta file
    does not count as a record; when the run is not refused, ``report`` gets one line naming it.
    """
    root = check_output_directory(config.out)
    if not root.is_dir():
        return root
    how = "use a new --out directory, or delete the old dataset first"
    try:
        names = {entry.name for entry in root.iterdir() if not entry.name.startswith(".")}
    except OSError as err:
        raise UserInputError(f"--out: cannot read {root}: {err.strerror or err}") from None
    if names - OWN_ENTRIES:
        shown = ", ".join(sorted(names - OWN_ENTRIES)[:3])
        raise UserInputError(f"--out: {root} is not empty and not a make_world dataset (it holds {shown}); {how}")
    recorded: list[tuple[Path, Any]] = []
    info = root / "dataset.json"
    if info.exists():
        try:
            recorded.append((info, json.loads(info.read_text(encoding="utf-8")).get("generator")))
        except (OSError, ValueError, AttributeError):
            recorded.append((info, None))
    meta_dir = root / META_DIR
    damaged: list[tuple[Path, str]] = []
    if meta_dir.is_dir():
        for path in sorted(meta_dir.glob("*.json")):
            meta, problem = _read_meta(path)
            if meta is None:
                damaged.append((path, problem or "damaged"))  # that episode is rendered again
            else:
                recorded.append((path, meta.get("generator")))
    wanted = config.generator()
    for path, generator in recorded:
        if generator != wanted:
            raise UserInputError(
                f"--out: {root} holds a dataset made with different settings ({path.relative_to(root)}: "
                f"{generator if generator is not None else 'no generator settings'}); re-running replaces only "
                f"a dataset of the same settings ({wanted}): {how}"
            )
    if (root / MANIFEST_NAME).exists() and not recorded:
        raise UserInputError(
            f"--out: {root} holds a dataset not made by make_world ({MANIFEST_NAME} without dataset.json or "
            f"meta/); its manifest would be replaced: {how}"
        )
    if report is not None and damaged:
        names = {episode_name(config.world, index) for index in range(config.episodes)}
        for path, problem in damaged:
            then = f"rendering {path.stem} again" if path.stem in names else "ignored (not an episode of this run)"
            report(f"{path}: damaged episode meta file ({problem}); {then}")
    return root


def plan_jobs(config: MakeWorldConfig) -> list[EpisodeJob]:
    """One job per episode, with its split and world seed fixed by the rule in the module docstring."""
    sizes = split_sizes(config.num_worlds, config.val_fraction, config.test_fraction)
    jobs = []
    for index in range(config.episodes):
        w = index // config.episodes_per_world
        jobs.append(EpisodeJob(str(config.out), index, world_split(w, sizes), world_seed(config.seed, w), config))
    return jobs


def make_world_dataset(
    config: MakeWorldConfig,
    progress: Callable[[Iterable], Iterable] | None = None,
    report: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Render ``config.episodes`` episodes into ``config.out`` and write the manifest; returns a summary.

    ``progress`` wraps the iterator of finished episodes (e.g. ``functools.partial(tqdm, total=n)``);
    ``report`` receives one line per damaged meta file found in an existing output.
    """
    world_config(config.world, _world_overrides(config))  # fail fast on bad overrides, in this process
    root = check_world_out(config, report)
    root.mkdir(parents=True, exist_ok=True)
    jobs = plan_jobs(config)
    results: dict[int, list[Segment]] = {}
    if config.workers == 1:
        finished: Iterable = ((job.index, run_episode_job(job)) for job in jobs)
        for index, rows in progress(finished) if progress else finished:
            results[index] = rows
    else:
        with multiprocessing.get_context("spawn").Pool(config.workers) as pool:
            finished = pool.imap_unordered(_indexed_job, jobs, chunksize=4)
            for index, rows in progress(finished) if progress else finished:
                results[index] = rows
    segments = [row for index in sorted(results) for row in results[index]]
    write_manifest(root / "manifest.jsonl", segments)
    sizes = split_sizes(config.num_worlds, config.val_fraction, config.test_fraction)
    summary = {
        "generator": config.generator(),
        "episodes": config.episodes,
        "worlds": config.num_worlds,
        "world_splits": sizes,
        "episode_splits": {s: sum(1 for j in jobs if j.split == s) for s in SPLITS},
        "segments": len(segments),
        "world_seed_rule": f"world w has seed = seed * {WORLD_SEED_STRIDE} + w; worlds split contiguously train|val|test",
        "phrasings": "train rows: training phrasings only; val/test rows: training and held-out phrasings",
    }
    atomic_write_json(root / "dataset.json", summary)
    return summary


def _indexed_job(job: EpisodeJob) -> tuple[int, list[Segment]]:
    return job.index, run_episode_job(job)


def default_workers() -> int:
    """A sensible worker count: the CPUs this process may use, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))
