"""On-the-fly procedural-world chunks: sample format, determinism, resuming, phrasings, config checks."""

from __future__ import annotations

import dataclasses
import itertools
import multiprocessing
import signal
import time

import numpy as np
import pytest
import torch

from slowfast_vgen.config import load_config
from slowfast_vgen.data.dataset import ChunkBatch, ChunkSample, collate_chunks
from slowfast_vgen.data.live_worlds import (
    _ROUTE_STREAM,
    HELDOUT_WORLD_SEED_BASE,
    LiveWorldChunks,
    LiveWorldsConfig,
    global_index,
    live_chunk_loader,
    render_episode_prefix,
)
from slowfast_vgen.data.world_dataset import world_seed
from slowfast_vgen.errors import UserInputError
from slowfast_vgen.metrics.motion import motion_direction
from slowfast_vgen.worlds import build_world
from slowfast_vgen.worlds.actions import is_heldout_phrasing, parse_action

NAVIGATION = dict(worlds=["navigation"], world_weights=[1.0])


def sample_index(sample: ChunkSample) -> int:
    """The global index a sample was rendered for (its ``video`` is ``live/<world>-<w>/sample-<k>``)."""
    return int(sample.video.rsplit("sample-", 1)[1])


def batch_indices(batch: ChunkBatch) -> list[int]:
    return [int(v.rsplit("sample-", 1)[1]) for v in batch.videos]


def assert_same_batch(a: ChunkBatch, b: ChunkBatch) -> None:
    assert a.actions == b.actions and a.videos == b.videos
    assert torch.equal(a.frames, b.frames) and torch.equal(a.context_mask, b.context_mask)


def unit_frames(sample: ChunkSample) -> torch.Tensor:
    """Last context frame + target as ``(F, 3, H, W)`` in ``[0, 1]`` (the metrics' float layout)."""
    video = torch.cat([sample.context[:, -1:], sample.target], dim=1)  # (3, 1 + f_g, H, W)
    return (video.permute(1, 0, 2, 3) + 1.0) / 2.0  # (3, F, H, W) -> (F, 3, H, W)


def test_samples_have_the_chunk_dataset_format():
    config = LiveWorldsConfig(context_frames_min=1, context_frames_max=4)
    ds = LiveWorldChunks(config)
    samples = [ds.sample(k) for k in range(24)]
    seen_fp, seen_worlds = set(), set()
    for s in samples:
        f_p = s.context.shape[1]
        assert 1 <= f_p <= 4
        seen_fp.add(f_p)
        seen_worlds.add(s.video.split("/")[1].split("-")[0])
        assert s.context.shape == (3, f_p, 32, 32) and s.target.shape == (3, 8, 32, 32)
        assert s.context.dtype == s.target.dtype == torch.float32
        assert -1.0 <= float(s.context.min()) and float(s.target.max()) <= 1.0
        assert float(s.target.max()) - float(s.target.min()) > 0.1  # a real picture, not a constant
        assert parse_action(s.action) is not None and not is_heldout_phrasing(s.action)
    assert len(seen_fp) >= 2 and seen_worlds == {"navigation", "blocks"}
    batch = collate_chunks(samples[:8])
    f = max(s.context.shape[1] for s in samples[:8]) + 8
    assert isinstance(batch, ChunkBatch) and batch.frames.shape == (8, 3, f, 32, 32)
    assert (~batch.context_mask).sum(dim=1).tolist() == [8] * 8
    assert batch.actions == [s.action for s in samples[:8]]


def test_chunks_are_the_frames_make_world_renders():
    """Context + target are consecutive frames of the world's episode, cut by ChunkDataset's rule."""
    config = LiveWorldsConfig(context_frames_min=4, context_frames_max=4, target_frames=6, size=16)
    ds = LiveWorldChunks(config)
    for k in range(16):
        s = ds.sample(k)
        name, w = ds.world_of(k)
        world = build_world(name, world_seed(config.seed, w), overrides=["view_size=16"])
        episode = world.sample_episode(np.random.default_rng([config.seed, k, _ROUTE_STREAM]), 10, 8)
        video = torch.cat([s.context, s.target], dim=1)  # (3, f_p + f_g, H, W)
        frames = ((video.permute(1, 2, 3, 0) + 1.0) * 127.5).round().to(torch.uint8).numpy()  # (F, H, W, 3)
        starts = [t for t in range(episode.frames.shape[0] - len(frames) + 1)
                  if np.array_equal(episode.frames[t : t + len(frames)], frames)]
        assert starts, f"sample {k} is not a window of its episode"
        f_p = s.context.shape[1]
        # the target starts where f_p = min(4, target start) and lies inside one action segment,
        # whose primitive the text phrases (the rule of ChunkDataset)
        fits = [
            t + f_p for t in starts
            if f_p == min(4, t + f_p) and (t + f_p - 1) // 8 == (t + f_p + 6 - 2) // 8
            and episode.primitives[(t + f_p - 1) // 8] == parse_action(s.action)
        ]
        assert fits, f"sample {k}: no window matches the chunk rule"
    # a segment starting at frame 1 with a full-length target: one context frame, frame 0
    single = LiveWorldChunks(dataclasses.replace(config, actions_per_episode=1, target_frames=8))
    assert {single.sample(k).context.shape[1] for k in range(6)} == {1}


def test_navigation_motion_matches_the_action():
    ds = LiveWorldChunks(LiveWorldsConfig(**NAVIGATION))
    for k in range(40):
        s = ds.sample(k)
        assert motion_direction(unit_frames(s)) == parse_action(s.action), s.video


def test_same_index_same_sample_and_indices_differ():
    config = LiveWorldsConfig(seed=3)
    a, b = LiveWorldChunks(config), LiveWorldChunks(LiveWorldsConfig(seed=3))
    for k in (0, 5, 1234567):
        x = a.sample(k)
        b.sample(k + 1)  # a different cache state must not matter
        y = b.sample(k)
        assert torch.equal(x.context, y.context) and torch.equal(x.target, y.target)
        assert x.action == y.action and x.video == y.video
    assert not torch.equal(a.sample(0).target, a.sample(1).target)
    assert not torch.equal(LiveWorldChunks(LiveWorldsConfig(seed=4)).sample(0).target, a.sample(0).target)


def test_worker_interleaving_is_documented_and_independent_of_workers():
    config = LiveWorldsConfig(size=16)
    ds = LiveWorldChunks(config, start=7)
    plain = [sample_index(s) for s in itertools.islice(iter(ds), 6)]
    assert plain == list(range(7, 13))
    loader = torch.utils.data.DataLoader(LiveWorldChunks(config, start=7), batch_size=None, num_workers=2, timeout=120)
    assert [sample_index(s) for s in itertools.islice(iter(loader), 6)] == plain
    # worker w of R workers of process p yields start + p + world_size * (w + R * j)
    assert [global_index(7, local, rank=1, world_size=2) for local in (0, 1, 2)] == [8, 10, 12]
    assert [global_index(0, local, rank=1, world_size=2, block_size=3) for local in range(5)] == [3, 4, 5, 9, 10]


def test_loader_batches_equal_across_worker_counts_and_resume():
    config = LiveWorldsConfig(size=16)
    serial = list(itertools.islice(iter(live_chunk_loader(config, batch_size=4)), 4))
    assert [batch_indices(b) for b in serial] == [list(range(4 * n, 4 * n + 4)) for n in range(4)]
    parallel_loader = live_chunk_loader(config, batch_size=4, num_workers=2)
    assert parallel_loader.worker_init_fn is not None
    parallel = list(itertools.islice(iter(parallel_loader), 4))
    for a, b in zip(serial, parallel):
        assert_same_batch(a, b)
    resumed = list(itertools.islice(iter(live_chunk_loader(config, batch_size=4, start_batch=2)), 2))
    for a, b in zip(serial[2:], resumed):
        assert_same_batch(a, b)


def test_ranks_share_the_stream_without_overlap():
    config = LiveWorldsConfig(size=16, chunks_per_world=1)
    seen = []
    for rank in (0, 1):
        batches = list(itertools.islice(iter(live_chunk_loader(config, 2, rank=rank, world_size=2)), 3))
        assert [batch_indices(b) for b in batches] == [[4 * n + 2 * rank, 4 * n + 2 * rank + 1] for n in range(3)]
        seen += [i for b in batches for i in batch_indices(b)]
        resumed = next(iter(live_chunk_loader(config, 2, start_batch=2, rank=rank, world_size=2)))
        assert_same_batch(resumed, batches[2])
    assert sorted(seen) == list(range(12))


def test_world_mixture_pool_and_groups():
    ds = LiveWorldChunks(LiveWorldsConfig(num_worlds=50, chunks_per_world=3))
    draws = [ds.world_of(k) for k in range(0, 3 * 3000, 3)]
    share = sum(name == "navigation" for name, _ in draws) / len(draws)
    assert 0.72 < share < 0.78
    assert {w for _, w in draws} == set(range(50))
    assert ds.world_of(6) == ds.world_of(7) == ds.world_of(8)


def test_world_settings_reach_the_rendered_worlds():
    blocks = dict(worlds=["blocks"], world_weights=[1.0], size=16, chunks_per_world=8)
    rich = load_config(LiveWorldsConfig, overrides=[*(f"{k}={v}" for k, v in blocks.items() if k != "worlds"),
                                                    "worlds=[blocks]", "world_settings={blocks: [push_fraction=0.0]}"])
    assert rich.world_settings == {"blocks": ["push_fraction=0.0"]}
    plain_ds, rich_ds = LiveWorldChunks(LiveWorldsConfig(**blocks)), LiveWorldChunks(rich)
    name, w = rich_ds.world_of(0)
    world = rich_ds._world(name, world_seed(rich.seed, w))
    assert world.config.push_fraction == 0.0 and world.config.view_size == 16
    kinds = [parse_action(rich_ds.sample(k).action).split()[0] for k in range(40)]
    plain_kinds = [parse_action(plain_ds.sample(k).action).split()[0] for k in range(40)]
    assert "push" in plain_kinds
    assert set(kinds) <= {"gripper", "stay", "push"} and kinds.count("push") < plain_kinds.count("push")
    for settings, message in (({"kitchen": []}, "world_settings names worlds that are not in worlds"),
                              ({"blocks": ["view_size=64"]}, "must not set view_size"),
                              ({"blocks": ["push_fraction=2"]}, "push_fraction must be in"),
                              ({"blocks": ["bogus=1"]}, "bogus")):
        with pytest.raises((ValueError, UserInputError), match=message):
            LiveWorldsConfig(worlds=["blocks"], world_weights=[1.0], world_settings=settings)


def test_phrasings_follow_the_split():
    train = LiveWorldChunks(LiveWorldsConfig(**NAVIGATION, size=16, chunks_per_world=8))
    val = LiveWorldChunks(LiveWorldsConfig(**NAVIGATION, size=16, chunks_per_world=8, split="val"))
    train_actions = [train.sample(k).action for k in range(48)]
    val_actions = [val.sample(k).action for k in range(48)]
    assert not any(is_heldout_phrasing(a) for a in train_actions)
    assert any(is_heldout_phrasing(a) for a in val_actions)
    assert all(parse_action(a) is not None for a in train_actions + val_actions)


@pytest.mark.parametrize("name", ["navigation", "blocks"])
def test_episode_prefix_equals_the_full_episode(name):
    world = build_world(name, 11, overrides=["view_size=16"])
    for seed in range(12):
        full = world.sample_episode(np.random.default_rng(seed), 6, 4)
        for upto in (0, 2, 5):
            part = render_episode_prefix(world, np.random.default_rng(seed), 6, 4, upto)
            assert part.primitives == full.primitives[: upto + 1]
            assert np.array_equal(part.frames, full.frames[: 1 + (upto + 1) * 4])


def test_config_loads_from_overrides_and_heldout_base_matches_evaluation():
    from slowfast_vgen.evaluation import EvalConfig

    assert HELDOUT_WORLD_SEED_BASE == EvalConfig.__dataclass_fields__["world_seed_base"].default
    config = load_config(LiveWorldsConfig, overrides=["worlds=[blocks]", "world_weights=[1.0]", "size=16"])
    assert config.worlds == ["blocks"] and config.size == 16


@pytest.mark.parametrize(
    "field, value",
    [
        ("worlds", []),
        ("worlds", ["navigation", "kitchen"]),
        ("world_weights", [1.0]),
        ("world_weights", [-1.0, 2.0]),
        ("world_weights", [0.0, 0.0]),
        ("world_weights", [1.0, float("inf")]),  # was accepted, then the first batch raised "probabilities contain NaN"
        ("world_weights", [1.0, float("nan")]),
        ("seed", -1),
        ("seed", 900),
        ("num_worlds", 0),
        ("num_worlds", 2_000_000),
        ("size", 7),
        ("frames_per_action", 0),
        ("actions_per_episode", 0),
        ("context_frames_min", 0),
        ("context_frames_max", 0),
        ("target_frames", 9),
        ("split", ""),
        ("chunks_per_world", 0),
    ],
)
def test_bad_config_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        LiveWorldsConfig(**{field: value})


def test_seeds_whose_worlds_reach_the_heldout_worlds_are_refused():
    for seed in (-1, 900):
        with pytest.raises(ValueError, match=rf"^seed must be in \[0, 900\) so that its worlds .* got {seed}$"):
            LiveWorldsConfig(seed=seed)
    assert LiveWorldsConfig(seed=899, num_worlds=1_000_000).seed == 899


def test_bad_stream_arguments_raise():
    config = LiveWorldsConfig()
    cases = [({"start": -1}, "start"), ({"rank": 2, "world_size": 2}, "rank"), ({"block_size": 0}, "block_size")]
    for kwargs, field in cases:
        with pytest.raises(ValueError, match=field):
            LiveWorldChunks(config, **kwargs)
    with pytest.raises(ValueError, match="batch_size"):
        live_chunk_loader(config, batch_size=0)


def test_workers_ignore_sigterm():
    loader = live_chunk_loader(LiveWorldsConfig(), batch_size=2, num_workers=1)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        loader.worker_init_fn(0)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert live_chunk_loader(LiveWorldsConfig(), batch_size=2).worker_init_fn is None


def _new_children(before: set) -> list:
    """Child processes started since ``before`` (a set of ``multiprocessing.active_children()``), still alive."""
    return [p for p in multiprocessing.active_children() if p not in before and p.is_alive()]


def _children_left(before: set, seconds: float = 20.0) -> list:
    """:func:`_new_children` once they are gone, or after ``seconds`` (a worker finishes the batch it is
    rendering before it exits, which can outlast torch's 5 s join on a loaded machine)."""
    deadline = time.monotonic() + seconds
    while _new_children(before) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _new_children(before)


def test_loader_stops_its_workers_when_closed():
    """The workers ignore SIGTERM: left alive, they would block the interpreter's exit (see live_chunk_loader)."""
    before = set(multiprocessing.active_children())
    batches = iter(live_chunk_loader(LiveWorldsConfig(**NAVIGATION, size=16, actions_per_episode=2), 2, num_workers=1))
    next(batches)
    assert _new_children(before)
    batches.close()
    assert not _children_left(before)


@pytest.mark.skipif(multiprocessing.get_start_method() != "fork", reason="the patch reaches forked workers only")
def test_loader_stops_its_workers_when_a_worker_fails(monkeypatch):
    def fail(self, index):
        raise RuntimeError(f"cannot render sample {index}")

    monkeypatch.setattr(LiveWorldChunks, "sample", fail)  # the worker is forked after the patch
    before = set(multiprocessing.active_children())

    def micro_batches():  # how training.py reads the loader
        yield from live_chunk_loader(LiveWorldsConfig(**NAVIGATION, size=16), batch_size=2, num_workers=1)

    with pytest.raises(RuntimeError, match="cannot render sample 0") as failure:
        next(micro_batches())
    assert not _children_left(before), failure  # the error's traceback still holds the DataLoader's iterator


@pytest.mark.skipif(multiprocessing.get_start_method() != "fork", reason="the patch reaches forked workers only")
def test_a_user_input_error_in_a_worker_comes_back_as_one_line(monkeypatch, capsys):
    """torch re-raises a worker's error wrapped in the worker's traceback; the loader gives back the one-line
    message (as training.py's disk loader does), so the entry point prints one ``error:`` line and exits 2.
    No live worker raises a UserInputError today (world names and configs are checked in the main process):
    the world builder is patched to raise one."""
    from slowfast_vgen.data import live_worlds
    from slowfast_vgen.errors import EXIT_USER_ERROR, UserInputError, run_cli

    message = "world 'navigation' cannot be built for seed 100000007: bad world"

    def fail(name, seed, config=None, overrides=()):
        raise UserInputError(message)

    monkeypatch.setattr(live_worlds, "build_world", fail)  # the worker is forked after the patch
    before = set(multiprocessing.active_children())

    def micro_batches():  # how training.py reads the loader
        yield from live_chunk_loader(LiveWorldsConfig(**NAVIGATION, size=16), batch_size=2, num_workers=1)

    with pytest.raises(UserInputError) as failure:
        next(micro_batches())
    assert str(failure.value) == message  # not "Caught UserInputError in DataLoader worker process 0 ..."
    assert failure.value.__cause__ is None and failure.value.__suppress_context__
    assert not _children_left(before)

    def main(argv):
        next(micro_batches())

    assert run_cli(main, []) == EXIT_USER_ERROR
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not _children_left(before)
