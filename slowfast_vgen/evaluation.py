"""Evaluation suites on held-out generated worlds, where every frame's ground truth is exact.

* ``chunk``   — one-chunk prediction from ground-truth context (slow learning, paper Table 1
  left half): PSNR / SSIM against the ground-truth chunk, action accuracy.
* ``long``    — long random-walk routes (up to ~1,000 frames): SCuts, per-chunk PSNR against
  ground truth, drift (PSNR slope per 100 frames), action accuracy.
* ``revisit`` — routes that go out and retrace their steps back (paper §4.1 SRC): revisit
  PSNR / SSIM against the ground truth of the place and against the model's own first
  visit, SRC (ResNet-18 features, or unavailable), SCuts, action accuracy.
* ``rollout`` — autoregressive rollouts of ``rollout_chunks`` random-walk actions generated
  from the first frame only (every chunk's context is the model's own output): per chunk
  index, action accuracy and the start-footprint PSNR — PSNR against ground truth over the
  pixels that show a place visible in the first frame, the only content knowable from it
  (:mod:`.metrics.footprint`). Run it once per ``phrasing`` (``train`` and ``heldout``).

Suites run on the navigation world (``world=navigation``: camera routes, action accuracy from the
global motion). ``world=blocks`` runs ``chunk`` and ``rollout`` on held-out block tables (random
pushes, gripper moves and stays): the camera is fixed, so the whole first frame is the start
footprint, and actions are read by the colour-tracking inverse dynamics
(:class:`.inverse_dynamics.ColourTrackingIDM`: which block moved, which way, or the gripper alone).
A command the world itself cannot execute (a push into another block or the table's edge) is left
out of the action accuracy: only chunks whose ground truth reads as the commanded primitive count
(``action_chunks_scored``).

Every suite runs each fast-learning variant (``off``, ``paper``, ``text``, ``full-sequence``,
the paper's Table 4 ablations) on the same routes and for several generation seeds; results
are per run (variant, seed, route) and summarised per variant as mean and 95 % confidence
interval across runs, and for every variant against ``off`` (when run) as the paired difference
over the runs with the same seed and route (``paired_vs_off``). Routes come from held-out worlds (``world_seed_base`` + route index):
``make_world.py`` seeds worlds ``seed * 1_000_000 + w``, so a base of 900_000_000 is never
used by a training set made with a dataset seed below 900 (which make_world and the live
worlds enforce); ``world_seed_base`` below 900_000_000 is refused.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from . import metrics
from .config import config_from_dict, help_field
from .data.world_dataset import HELDOUT_WORLD_SEED_BASE, heldout_world_seed_problem
from .errors import UserInputError
from .model import ModelBundle
from .session import GenerationConfig, GenerationSession
from .video_io import frames_to_tensor

SUITES = ("chunk", "long", "revisit", "rollout")
WORLDS = ("navigation", "blocks")
BLOCKS_SUITES = ("chunk", "rollout")  # revisit and long routes are camera routes of the navigation world
# rollout suite: curve name -> the per-chunk list of a run it averages
ROLLOUT_CURVES = {"action_accuracy": "chunk_action_correct", "footprint_psnr": "chunk_footprint_psnr"}
# memory curve: series -> its column label (PSNR of the revisit vs truth and vs the first visit; first visit vs truth)
MEMORY_CURVE_SERIES = {"psnr_vs_truth": "vs truth", "psnr_vs_first": "vs first", "first_vs_truth": "first visit vs truth"}


@dataclass
class EvalConfig:
    """What to evaluate and how much."""

    suite: str = help_field("revisit", f"suite: {' | '.join(SUITES)}")
    world: str = help_field(
        "navigation", f"held-out worlds: {' | '.join(WORLDS)} (blocks: suites {' and '.join(BLOCKS_SUITES)}; actions read by "
        "the colour-tracking inverse dynamics)"
    )
    variants: list[str] = help_field(["off", "paper", "text", "full-sequence"], "fast-learning variants to compare")
    seeds: list[int] = help_field([0, 1, 2], "generation seeds (each run uses the same routes)")
    routes: int = help_field(3, "routes (held-out worlds) per seed")
    actions_per_route: int = help_field(8, "actions per route (revisit: out and back; chunk: chunks predicted per route)")
    long_frames: int = help_field(200, "frames of a long-suite route (the paper's long videos: ~1,000)")
    rollout_chunks: int = help_field(32, "chunks of a rollout-suite route, each from the model's own output (>= 2)")
    phrasing: str = help_field("heldout", "action phrasings: train | heldout (never seen in training) | all")
    world_seed_base: int = help_field(
        HELDOUT_WORLD_SEED_BASE, f"held-out world seeds: base + route index (>= {HELDOUT_WORLD_SEED_BASE}: never trained on)"
    )
    memory_source: str = help_field(
        "generated", "what the Temp-LoRA learns after each chunk: generated (the method) | truth (diagnostic upper "
        "bound: the route's ground-truth chunk and its context, which no user has; the video is still generated)"
    )
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    metrics: metrics.MetricsConfig = field(default_factory=metrics.MetricsConfig)

    def __post_init__(self) -> None:
        if self.suite not in SUITES:
            raise ValueError(f"suite must be one of {', '.join(SUITES)}, got {self.suite!r}")
        if self.world not in WORLDS:
            raise ValueError(f"world must be one of {', '.join(WORLDS)}, got {self.world!r}")
        if self.world == "blocks" and self.suite not in BLOCKS_SUITES:
            raise ValueError(f"world=blocks runs the {' and '.join(BLOCKS_SUITES)} suites (revisit and long routes are "
                             f"camera routes of the navigation world), got suite {self.suite!r}")
        from .fast_learner import FAST_MODES

        variants = ["off" if str(v).lower() == "false" else v for v in self.variants]  # YAML reads `off` as false
        bad = [v for v in variants if v not in FAST_MODES]
        if bad or not variants:
            raise ValueError(f"variants must be among {', '.join(FAST_MODES)}, got {variants}")  # `off`, not False
        self.variants = variants
        if not self.seeds or self.routes < 1 or self.actions_per_route < 2:
            raise ValueError("need at least one seed, one route and two actions per route")
        for name, values in (("seeds", list(self.seeds)), ("variants", variants)):
            if len(set(values)) != len(values):  # a repeated run would count twice in the intervals
                raise ValueError(f"{name} must not repeat, got {values}")
        if self.rollout_chunks < 2:
            raise ValueError(f"rollout_chunks must be >= 2, got {self.rollout_chunks}")
        if self.long_frames < 1:
            raise ValueError(f"long_frames must be >= 1, got {self.long_frames}")
        if self.suite == "long" and self.long_frames < 2 * self.generation.frames_per_chunk:
            raise ValueError(f"long_frames must be >= 2 * generation.frames_per_chunk = "
                             f"{2 * self.generation.frames_per_chunk} (a long route has at least two chunks), "
                             f"got {self.long_frames}")
        if self.memory_source not in ("generated", "truth"):
            raise ValueError(f"memory_source must be generated or truth, got {self.memory_source!r}")
        if self.phrasing not in ("train", "heldout", "all"):
            raise ValueError(f"phrasing must be train, heldout or all, got {self.phrasing!r}")
        if problem := heldout_world_seed_problem(self.world_seed_base):
            raise ValueError(problem)
        # a weights file that is named must exist (checked before anything is generated); an unset one makes its
        # metric unavailable, as documented
        metrics.check_weights_files(self.metrics, prefix="metrics.")


@dataclass
class Route:
    """One evaluation route with its exact ground truth."""

    index: int
    world_seed: int
    primitives: list[str]
    actions: list[str]
    frames: np.ndarray  # (1 + M*K, H, W, 3) uint8
    revisit_pairs: list[tuple[int, int]]
    camera_positions: np.ndarray  # (1 + M*K, 2) int: [x, y] of the rendered view's top-left on the wrapping map
    footprint: np.ndarray | None = None  # rollout suite: (1 + M*K, H, W) bool, pixels showing a place frame 0 shows
    # per revisit pair, the frame the place was last seen at before the revisit (the pair's own
    # first frame when it was seen once before): the memory curve's gap is measured from it
    revisit_last: list[int] | None = None
    # blocks world: its colour-tracking reader, and what the world did per chunk as that reader reads the truth
    reader: Any = None
    executed: list[str] | None = None


def build_routes(config: EvalConfig, height: int, width: int, frames_per_chunk: int) -> list[Route]:
    """The suite's routes on held-out worlds (same for every variant and seed)."""
    from .data.readers import resize_center_crop
    from .worlds import build_world_for_frames, view_size_for
    from .worlds.actions import phrase

    if config.world == "blocks":
        return [_blocks_route(config, config.world_seed_base + index, index, height, width, frames_per_chunk)
                for index in range(config.routes)]
    view = view_size_for(height, width)
    routes = []
    for index in range(config.routes):
        world_seed = config.world_seed_base + index
        world = build_world_for_frames("navigation", world_seed, height, width)
        rng = np.random.default_rng(world_seed)
        if config.suite == "revisit":
            route = world.make_route(rng, config.actions_per_route, "return_to_start")
        elif config.suite == "long":
            route = world.make_route(rng, max(2, config.long_frames // frames_per_chunk), "random")
        elif config.suite == "rollout":
            route = world.make_route(rng, config.rollout_chunks, "random")  # persistent walk, occasional stay
        else:
            route = world.make_route(rng, config.actions_per_route + 1, "random")
        start = rng.integers(0, world.map_size, size=2)
        frames, positions = world.rollout(start, route.primitives, frames_per_chunk)
        frames = resize_center_crop(frames, height, width)
        actions = [phrase(p, rng, config.phrasing) for p in route.primitives]
        footprint = None
        if config.suite == "rollout":
            footprint = _frame_footprint(positions, view, world.map_size, height, width)
        routes.append(Route(index, world_seed, list(route.primitives), actions, frames,
                            route.revisit_frames(frames_per_chunk), positions, footprint,
                            route.last_visit_frames(frames_per_chunk)))
    return routes


def _blocks_route(config: EvalConfig, world_seed: int, index: int, height: int, width: int,
                  frames_per_chunk: int) -> Route:
    """A random script of pushes, gripper moves and stays on the held-out block table ``world_seed``."""
    from .data.readers import resize_center_crop
    from .inverse_dynamics import analytic_idm
    from .worlds import build_world_for_frames
    from .worlds.actions import phrase

    world = build_world_for_frames("blocks", world_seed, height, width)
    rng = np.random.default_rng(world_seed)
    num_chunks = config.rollout_chunks if config.suite == "rollout" else config.actions_per_route + 1
    primitives = world.random_script(rng, num_chunks)
    frames, _ = world.rollout(world.initial_state, primitives, frames_per_chunk)
    frames = resize_center_crop(frames, height, width)
    actions = [phrase(p, rng, config.phrasing) for p in primitives]
    reader = analytic_idm("blocks", world.config)
    executed = [reader.read(chunk).primitive for chunk in metrics.action_chunks(frames, frames_per_chunk)]
    footprint = np.ones(frames.shape[:3], dtype=bool) if config.suite == "rollout" else None  # a fixed camera
    return Route(index, world_seed, primitives, actions, frames, [], np.zeros((len(frames), 2), dtype=np.int64),
                 footprint, [], reader, executed)


def _read_actions(route: Route, chunks: list[np.ndarray], config: EvalConfig) -> list[str]:
    """The primitive each chunk ``(1 + K, H, W, 3)`` shows: global motion (navigation) or the
    route's colour-tracking reader (blocks)."""
    if route.reader is not None:
        return [route.reader.read(chunk).primitive for chunk in chunks]
    return metrics.predict_actions(chunks, config.metrics.motion_stay_threshold, config.metrics.motion_max_shift)


def _action_correct(route: Route, predicted: list[str], first: int = 0) -> list[bool | None]:
    """Per chunk (route chunks ``first`` on): did it show the commanded primitive? None for a blocks
    command the world itself did not execute (its ground truth reads otherwise: left out)."""
    commanded = route.primitives[first:first + len(predicted)]
    executed = route.executed[first:first + len(predicted)] if route.executed is not None else commanded
    return [p == c if e == c else None for p, c, e in zip(predicted, commanded, executed, strict=True)]


def _action_scores(route: Route, correct: list[bool | None]) -> dict[str, float | int | None]:
    """``action_accuracy`` over the chunks :func:`_action_correct` scored (None if none), and on blocks
    routes how many it scored (``action_chunks_scored``)."""
    scored = [c for c in correct if c is not None]
    scores: dict[str, float | int | None] = {"action_accuracy": float(np.mean(scored)) if scored else None}
    if route.executed is not None:
        scores["action_chunks_scored"] = len(scored)
    return scores


def _frame_footprint(positions: np.ndarray, view: int, map_size: int, height: int, width: int) -> np.ndarray:
    """``(F, height, width)`` bool start-footprint masks of the frames cut from ``view x view`` renderings.

    With an even frame height and width the view is ``max(height, width)`` and
    :func:`resize_center_crop` only crops it, by whole pixels, so a frame's top-left lies
    ``((view - width) / 2, (view - height) / 2)`` from the view's and the masks are exact.
    """
    if height % 2 or width % 2:
        raise UserInputError(f"the rollout suite needs an even frame height and width (frames that are exact crops of "
                             f"the rendered view), got {height}x{width}")
    offset = np.array([(view - width) // 2, (view - height) // 2])  # [x, y] of the frame inside the view
    return metrics.footprint_masks(positions + offset, (height, width), map_size)


def evaluate(bundle: ModelBundle, config: EvalConfig, progress: Callable[[str], None] | None = None,
             networks: metrics.PretrainedMetrics | None = None) -> dict[str, Any]:
    """Run the suite for every variant x seed x route; returns runs, per-variant summaries, curves
    (``networks``: the pretrained metrics, by default those ``config.metrics`` names)."""
    check_frame_size(config, bundle.height, bundle.width)
    generation = config.generation
    routes = build_routes(config, bundle.height, bundle.width, generation.frames_per_chunk)
    networks = networks or metrics.PretrainedMetrics(config.metrics)
    runs = []
    for variant in config.variants:
        for seed in config.seeds:
            for route in routes:
                started = time.perf_counter()
                run = {"variant": variant, "seed": seed, "route": route.index, "world_seed": route.world_seed,
                       **_run_route(bundle, config, route, variant, seed, networks)}
                run["seconds"] = round(time.perf_counter() - started, 2)
                runs.append(run)
                if progress:
                    progress(f"{config.suite} {variant} seed {seed} route {route.index}: "
                             + ", ".join(f"{k} {v:.3f}" for k, v in run["scores"].items() if isinstance(v, float)))
    return {
        "suite": config.suite,
        "config": _plain(config),
        "availability": {name: {"available": reason is None, "reason": reason}
                         for name, reason in networks.availability().items()},
        "summary": summarise(runs, config.variants),
        **({"paired_vs_off": paired_vs_off(runs, config.variants)} if "off" in config.variants else {}),
        **({"curves": per_chunk_curves(runs, config.variants)} if config.suite == "rollout" else {}),
        **({"memory_curve": memory_curve(runs, config.variants)} if config.suite == "revisit" else {}),
        **({"fvd": fvd_by_variant(runs, config.variants, networks)} if networks.available("fvd") else {}),
        "runs": runs,
    }


def fvd_by_variant(runs: list[dict], variants: list[str], networks: metrics.PretrainedMetrics) -> dict[str, float]:
    """FVD of each variant: every chunk it generated (all seeds and routes) against the true chunks.
    A distance between two sets of clips, so one value per variant, not per run (lower is better);
    None with fewer than 2 chunks."""
    out = {}
    for variant in variants:
        generated = [clip for run in runs if run["variant"] == variant for clip in run["clips"][0]]
        truth = [clip for run in runs if run["variant"] == variant for clip in run["clips"][1]]
        out[variant] = networks.fvd(truth, generated).value if min(len(truth), len(generated)) >= 2 else None
    return out


def check_frame_size(config: EvalConfig, height: int, width: int) -> None:
    """Settings that depend on the model's frame size, checked before anything is generated."""
    shift = config.metrics.motion_max_shift
    limit = (min(height, width) - 1) // 2  # metrics.motion: the search needs 2 * max_shift < min(H, W)
    if shift is not None and shift > limit:
        raise UserInputError(f"metrics.motion_max_shift must be <= {limit} for this model's {height}x{width} "
                             f"frames, got {shift}")


def _run_route(bundle, config: EvalConfig, route: Route, variant: str, seed: int, networks) -> dict[str, Any]:
    """Generate one route with one variant and seed and score it against the ground truth."""
    values = {**asdict(config.generation), "seed": seed}
    values["fast"]["mode"] = variant
    session = GenerationSession(bundle, config_from_dict(GenerationConfig, values))
    K = config.generation.frames_per_chunk
    mc = config.metrics
    scores: dict[str, Any] = {}
    if config.suite == "chunk":
        # one chunk at a time from ground-truth context: slow-learning quality, no memory involved
        psnrs, ssims, action_inputs, lpips_values, clips = [], [], [], [], ([], [])
        for i in range(1, len(route.primitives)):
            session.reset_memory()  # every chunk starts with an empty memory
            session.start(route.frames[: 1 + i * K])
            chunk = session.generate([route.actions[i]])  # (K, H, W, 3)
            truth = route.frames[1 + i * K: 1 + (i + 1) * K]
            psnrs.append(metrics.psnr(chunk, truth))
            clips[0].append(chunk)
            clips[1].append(truth)
            ssims.append(metrics.ssim(chunk, truth))
            lpips = networks.lpips(chunk, truth)
            lpips_values.append(lpips.value if lpips.available else None)
            action_inputs.append(np.concatenate([route.frames[i * K: 1 + i * K], chunk]))  # the frame before + chunk
        commanded = route.primitives[1:]
        predicted = _read_actions(route, action_inputs, config)
        correct = _action_correct(route, predicted, first=1)
        scores.update(psnr=float(np.mean(psnrs)), ssim=float(np.mean(ssims)), **_action_scores(route, correct),
                      detail_ratio=metrics.detail_ratio(np.concatenate(clips[0]), np.concatenate(clips[1])),
                      lpips=None if None in lpips_values else float(np.mean(lpips_values)))
        return {"scores": scores, "predicted": predicted, "commanded": commanded, "chunk_action_correct": correct,
                **({"clips": clips} if networks.available("fvd") else {})}  # dropped before JSON
    session.start(route.frames[0])
    if config.memory_source == "truth":
        session.memory_source = functools.partial(_true_pair, bundle, route.frames, K)
    session.generate(route.actions)
    video = session.video()
    chunk_ranges = [(r.start_frame, r.end_frame) for r in session.records]
    per_chunk = metrics.chunk_scores(video, route.frames, chunk_ranges)
    chunks = metrics.action_chunks(video, K)
    predicted = _read_actions(route, chunks, config)
    correct = _action_correct(route, predicted)
    scores.update(_action_scores(route, correct))
    scores["chunk_psnr"] = float(np.mean([c.psnr for c in per_chunk]))
    generated = slice(chunk_ranges[0][0], chunk_ranges[-1][1])  # the generated frames, not the given first one
    scores["detail_ratio"] = metrics.detail_ratio(video[generated], route.frames[generated])
    scores["scuts"] = float(metrics.scene_cuts(video, mc.scene_threshold, mc.scene_min_len, bundle.fps, mc.scene_upscale))
    curves: dict[str, list] = {}  # per-run series behind the suite's curves
    if config.suite == "long":
        x = np.array([c.start for c in per_chunk], float)
        y = np.array([c.psnr for c in per_chunk], float)
        scores["drift_psnr_per_100_frames"] = float(np.polyfit(x, y, 1)[0] * 100) if len(x) > 1 else 0.0
    if config.suite == "revisit":
        revisits = metrics.revisit_scores(video, route.frames, route.revisit_pairs)
        for key, value in metrics.mean_fields(revisits).items():
            if key.startswith(("psnr", "ssim")):
                scores[f"revisit_{key}"] = float(value)
        # returns to the start frame, whose first visit is the given image; and how close the other
        # (generated) first visits are to the truth: the most a memory that reproduced them could score
        generated_first = [r for r in revisits if r.first > 0]
        scores["revisit_start_psnr_vs_truth"] = _finite_mean([r.psnr_vs_truth for r in revisits if r.first == 0])
        scores["first_visit_psnr_vs_truth"] = _finite_mean([r.first_psnr_vs_truth for r in generated_first])
        # headroom of a memory of first visits: first visit minus revisit, both against the truth
        scores["first_visit_headroom"] = _finite_mean([r.first_psnr_vs_truth - r.psnr_vs_truth
                                                       for r in generated_first])
        # the gap is the revisit's recency: chunks since the place was LAST seen (the comparison
        # frame of psnr_vs_first stays the first visit)
        last_seen = route.revisit_last if route.revisit_last is not None else [r.first for r in revisits]
        curves = {"revisit_by_gap": [{"gap_chunks": round((r.later - last) / K), "psnr_vs_truth": r.psnr_vs_truth,
                                      "psnr_vs_first": r.psnr_vs_first,
                                      # a return to the given start frame has no generated first visit to score
                                      "first_vs_truth": None if r.first == 0 else r.first_psnr_vs_truth}
                                     for r, last in zip(revisits, last_seen, strict=True)]}
        src = networks.src(video, route.revisit_pairs)
        scores["src"] = src.value if src.available else None
    if config.suite == "rollout":
        # start-footprint PSNR per chunk: nan where the chunk shows nothing of frame 0's footprint
        footprint = metrics.footprint_chunk_psnr(video, route.frames, route.footprint, chunk_ranges)
        scores["footprint_psnr_first4"] = _finite_mean(footprint[:4])
        scores["footprint_psnr"] = _finite_mean(footprint)
        scores["footprint_chunks"] = sum(not math.isnan(v) for v in footprint)
        curves = {
            "chunk_action_correct": correct,
            "chunk_footprint_psnr": [None if math.isnan(v) else v for v in footprint],
            "chunk_footprint_pixels": [int(route.footprint[a:b].sum()) for a, b in chunk_ranges],
        }
    return {
        "scores": scores,
        **curves,
        "per_chunk_psnr": [(c.start, c.psnr) for c in per_chunk],
        "predicted": predicted,
        "commanded": route.primitives,
        "memory_loss": [r.temp_lora_loss for r in session.records],
        "video": video,  # dropped before JSON; used for contact sheets
        "truth": route.frames,
        **({"clips": ([video[a:b] for a, b in chunk_ranges], [route.frames[a:b] for a, b in chunk_ranges])}
           if networks.available("fvd") else {}),  # dropped before JSON; for FVD
        "revisit_pairs": route.revisit_pairs,
    }


def _true_pair(bundle, truth: np.ndarray, frames_per_chunk: int, index: int, context: torch.Tensor,
               new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``memory_source=truth``: chunk ``index``'s ground-truth frames and the true frames before
    it (as many as the generated context had), as latents, in place of the generated pair."""
    end = 1 + index * frames_per_chunk  # truth[:end] is what came before chunk `index`
    previous = truth[end - context.shape[2]: end]
    chunk = truth[end: end + new.shape[2]]

    def encode(frames: np.ndarray) -> torch.Tensor:
        return bundle.encode_frames(frames_to_tensor(frames).to(bundle.device)).to(new.dtype)

    return encode(previous), encode(chunk)


def _finite_mean(values: list[float]) -> float | None:
    """Mean of the finite values (a chunk without footprint is nan; an exact copy is inf), None if none."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def summarise(runs: list[dict], variants: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Per variant and score: mean, 95 % CI bounds and n across runs (None scores are skipped)."""
    summary = {}
    for variant in variants:
        rows = [run["scores"] for run in runs if run["variant"] == variant]
        names = dict.fromkeys(name for row in rows for name in row)
        summary[variant] = {}
        for name in names:
            values = [row[name] for row in rows if row.get(name) is not None and math.isfinite(row[name])]
            summary[variant][name] = _interval(values)
    return summary


def _interval(values: list[float]) -> dict[str, float | None]:
    """Mean, 95 % CI bounds and n of ``values`` (all None and n 0 when there are none)."""
    if not values:
        return {"mean": None, "low": None, "high": None, "n": 0}
    mean, low, high = metrics.mean_ci(values)
    return {"mean": mean, "low": low, "high": high, "n": len(values)}


def paired_vs_off(runs: list[dict], variants: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Per variant other than ``off`` and score: the PAIRED difference ``variant - off``, its mean,
    95 % CI bounds and n over the runs matched by generation seed and route (world), where both
    scores are finite. Every variant runs the same routes and seeds, so pairing removes the
    spread between routes that the per-variant intervals of :func:`summarise` include.
    """
    def key(run: dict) -> tuple:
        return run["seed"], run.get("world_seed"), run["route"]

    def finite(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    baseline: dict[tuple, dict] = {}
    for run in runs:
        if run["variant"] == "off":
            baseline.setdefault(key(run), run["scores"])  # a repeated variant: its first run of each route
    paired: dict[str, dict[str, dict[str, float]]] = {}
    for variant in dict.fromkeys(v for v in variants if v != "off"):
        rows: dict[tuple, dict] = {}
        for run in runs:
            if run["variant"] == variant:
                rows.setdefault(key(run), run["scores"])
        names = dict.fromkeys(name for row in rows.values() for name in row)
        paired[variant] = {}
        for name in names:
            diffs = [row[name] - baseline[k][name] for k, row in rows.items()
                     if k in baseline and finite(row.get(name)) and finite(baseline[k].get(name))]
            paired[variant][name] = _interval(diffs)
    return paired


def per_chunk_curves(runs: list[dict], variants: list[str]) -> dict[str, dict[str, list[dict]]]:
    """Rollout curves: per variant, curve (:data:`ROLLOUT_CURVES`) and chunk index, the mean,
    95 % CI bounds and n across runs (missing and non-finite values are skipped, so a chunk index
    with no footprint in any run has ``mean`` None and ``n`` 0)."""
    curves: dict[str, dict[str, list[dict]]] = {}
    for variant in variants:
        rows = [run for run in runs if run["variant"] == variant]
        curves[variant] = {}
        for name, key in ROLLOUT_CURVES.items():
            length = max((len(row.get(key, [])) for row in rows), default=0)
            points = []
            for index in range(length):
                values = [float(v) for row in rows for v in row.get(key, [])[index:index + 1]
                          if v is not None and math.isfinite(v)]
                mean, low, high = metrics.mean_ci(values) if values else (None, None, None)
                points.append({"chunk": index, "mean": mean, "low": low, "high": high, "n": len(values)})
            curves[variant][name] = points
    return curves


def memory_curve(runs: list[dict], variants: list[str]) -> dict[str, list[dict]]:
    """Revisit quality against how long ago the place was seen: per variant and gap (chunks between
    the most recent earlier visit of the place and the revisit; on an out-and-back route also the
    number of other places passed in between), the mean, 95 % CI bounds and n of the revisited frame's
    PSNR against the ground truth and against the first visit. Each run's pairs at a gap are averaged
    first and the interval is taken over runs (``n``: runs with a pair at that gap; ``pairs``: the
    pairs behind them): pairs of one video are not independent, and pooling them would narrow the
    interval and weigh runs by their pair count. A memory that works lifts the long gaps, where the
    place has left the context window, above ``off``.
    ``first_vs_truth`` is the first visit's PSNR against the truth: a memory that reproduced the
    first visit exactly would score that against the truth (no value where the first visit is the
    given start frame, which a perfect memory reproduces exactly).
    """
    curve: dict[str, list[dict]] = {}
    for variant in variants:
        by_gap: dict[int, list[list[dict]]] = {}  # gap -> one list of pairs per run
        for run in runs:
            if run["variant"] == variant:
                per_run: dict[int, list[dict]] = {}
                for pair in run.get("revisit_by_gap", []):
                    per_run.setdefault(pair["gap_chunks"], []).append(pair)
                for gap, pairs in per_run.items():
                    by_gap.setdefault(gap, []).append(pairs)
        points = []
        for gap in sorted(by_gap):
            point = {"gap_chunks": gap, "n": len(by_gap[gap]), "pairs": sum(map(len, by_gap[gap]))}
            for name in MEMORY_CURVE_SERIES:
                values = []
                for pairs in by_gap[gap]:
                    finite = [p[name] for p in pairs if p.get(name) is not None and math.isfinite(p[name])]
                    if finite:
                        values.append(sum(finite) / len(finite))
                mean, low, high = metrics.mean_ci(values) if values else (None, None, None)
                point[name] = {"mean": mean, "low": low, "high": high, "n": len(values)}
            points.append(point)
        curve[variant] = points
    return curve


def _format_entry(entry: dict | None) -> str:
    """``mean ± half-width of the 95 % CI`` (just the mean with one value; "unavailable" with none)."""
    if not entry or entry["mean"] is None:
        return "unavailable"
    if entry["n"] > 1 and math.isfinite(entry["high"]):
        return f"{entry['mean']:.3f} ± {entry['high'] - entry['mean']:.3f}"
    return f"{entry['mean']:.3f}"


def markdown_table(result: dict) -> str:
    """The per-variant summary as a markdown table: ``mean ± half-width of the 95 % CI``; the
    paired differences against ``off`` when it was run (:func:`paired_vs_off`); for a rollout also the per-chunk-index curves (with n, the runs that had a value at that chunk)."""
    summary = result["summary"]
    variants = list(summary)
    names = list(dict.fromkeys(name for variant in variants for name in summary[variant]))
    lines = ["| score | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants)]
    for name in names:
        cells = [_format_entry(summary[variant].get(name)) for variant in variants]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    paired = result.get("paired_vs_off")
    if paired:
        others = list(paired)
        names = list(dict.fromkeys(name for variant in others for name in paired[variant]))
        lines += ["", "Paired difference vs off (variant − off over runs with the same seed and route; "
                      "mean ± 95 % CI half-width, n pairs):", "",
                  "| score | " + " | ".join(f"{variant} − off" for variant in others) + " |",
                  "|---|" + "---|" * len(others)]
        for name in names:
            cells = []
            for variant in others:
                entry = paired[variant].get(name)
                cells.append(f"{_format_entry(entry)} (n {entry['n'] if entry else 0})")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    curves = result.get("curves")
    if curves:
        header = [f"{variant} {name}" for variant in curves for name in ROLLOUT_CURVES]
        lines += ["", "Per chunk index (mean ± 95 % CI half-width, n runs):", "",
                  "| chunk | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
        length = max(len(points) for by_name in curves.values() for points in by_name.values())
        for index in range(length):
            cells = []
            for variant in curves:
                for name in ROLLOUT_CURVES:
                    points = curves[variant][name]
                    entry = points[index] if index < len(points) else None
                    cells.append(f"{_format_entry(entry)} (n {entry['n'] if entry else 0})")
            lines.append(f"| {index} | " + " | ".join(cells) + " |")
    memory = result.get("memory_curve")
    if memory:
        gaps = sorted({point["gap_chunks"] for points in memory.values() for point in points})
        header = [f"{variant} {label}" for label in MEMORY_CURVE_SERIES.values() for variant in memory]
        lines += ["", "Memory curve: revisit PSNR (dB) by chunks since the place was last seen (mean ± 95 % CI half-width):", "",
                  "| gap (chunks) | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
        for gap in gaps:
            found = {variant: next((p for p in points if p["gap_chunks"] == gap), None) for variant, points in memory.items()}
            cells = [_format_entry(found[v].get(name) if found[v] else None)
                     for name in MEMORY_CURVE_SERIES for v in memory]
            lines.append(f"| {gap} | " + " | ".join(cells) + " |")
    fvd = result.get("fvd")
    if fvd:
        lines += ["", "FVD, every generated chunk against the true chunks (lower is better): "
                  + ", ".join(f"{variant} {'n/a' if value is None else f'{value:.3f}'}" for variant, value in fvd.items())]
    notes = [f"- {name}: {info['reason']}" for name, info in result.get("availability", {}).items() if info.get("reason")]
    if notes:
        lines += ["", "Unavailable metrics:", *notes]
    return "\n".join(lines) + "\n"


def _plain(config: EvalConfig) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(config))



FIGURES = ("per_chunk_psnr.png", "rollout_curves.png", "memory_curve.png", "revisit_contact_sheet.png")
"""The figures :func:`save_results` may draw, by file name."""


def save_results(result: dict, out_dir) -> dict[str, str]:
    """Write ``results.json``, ``results.md`` and the PNG figures; returns the written paths."""
    from pathlib import Path

    from .io_utils import atomic_write_json, atomic_write_text
    from .report import Panel, contact_sheet, line_plot, line_plots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    variants = list(result["summary"])
    runs = result["runs"]
    # per-chunk PSNR against the frame index, averaged over seeds and routes, one line per variant
    curves = {}
    for variant in variants:
        table: dict[int, list[float]] = {}
        for run in runs:
            if run["variant"] == variant:
                for start, value in run.get("per_chunk_psnr", []):
                    if math.isfinite(value):
                        table.setdefault(start, []).append(value)
        if table:
            xs = sorted(table)
            curves[variant] = (xs, [float(np.mean(table[x])) for x in xs])
    if curves:
        written["psnr_plot"] = str(line_plot(curves, out / "per_chunk_psnr.png",
                                             f"{result['suite']}: PSNR vs ground truth per chunk", "frame", "PSNR (dB)"))
    # rollout curves against the chunk index, one line per variant
    if result.get("curves"):
        panels = []
        for name, title, ylabel, y_range in (("action_accuracy", "action accuracy per chunk", "accuracy", (0.0, 1.0)),
                                             ("footprint_psnr", "start-footprint PSNR per chunk", "PSNR (dB)", None)):
            series = {variant: ([p["chunk"] for p in by_name[name]],
                                [math.nan if p["mean"] is None else p["mean"] for p in by_name[name]])
                      for variant, by_name in result["curves"].items()}
            panels.append(Panel(series, f"{result['suite']}: {title}", "chunk index", ylabel, y_range))
        written["rollout_plot"] = str(line_plots(panels, out / "rollout_curves.png"))
    # memory curve: revisit PSNR against the chunks since the place was last seen, one line per variant; the
    # vs-truth panel also draws each variant's first visit vs truth (what a perfect memory would score)
    if result.get("memory_curve"):
        panels = []
        for title, names in (("revisit PSNR vs ground truth", {"psnr_vs_truth": "", "first_vs_truth": ": first visit"}),
                             ("revisit PSNR vs first visit", {"psnr_vs_first": ""})):
            series = {f"{variant}{suffix}": ([p["gap_chunks"] for p in points],
                                             [math.nan if p[name]["mean"] is None else p[name]["mean"] for p in points])
                      for name, suffix in names.items() for variant, points in result["memory_curve"].items()}
            panels.append(Panel(series, f"memory curve: {title}", "chunks since last seen", "PSNR (dB)", None))
        written["memory_plot"] = str(line_plots(panels, out / "memory_curve.png"))
    # contact sheet: first visit vs revisit vs ground truth, first run of every variant
    sheet = {}
    for variant in variants:
        run = next((r for r in runs if r["variant"] == variant and r.get("revisit_pairs")), None)
        if run is not None:
            first, later = run["revisit_pairs"][-1]
            sheet[variant] = [run["video"][first], run["video"][later], run["truth"][later]]
    if sheet:
        written["contact_sheet"] = str(contact_sheet(sheet, ["first visit", "revisit", "ground truth"], out / "revisit_contact_sheet.png"))
    drawn = {Path(path).name for path in written.values()}
    for name in FIGURES:  # an earlier run's figures that this run does not draw would describe another run
        if name not in drawn:
            (out / name).unlink(missing_ok=True)
    plain_runs = [{k: v for k, v in run.items() if k not in ("video", "truth", "clips")} for run in runs]
    atomic_write_json(out / "results.json", {**{k: v for k, v in result.items() if k != "runs"}, "runs": plain_runs})
    atomic_write_text(out / "results.md", markdown_table(result))
    written.update(json=str(out / "results.json"), markdown=str(out / "results.md"))
    return written
