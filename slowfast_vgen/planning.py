"""Long-horizon video planning (paper §3.4, §4.2): subgoals -> generated chunks -> IDM -> the real world.

A *task* is a sequence of free-text subgoals: an outward part, then a return part. Each subgoal
is realised as one chunk by a *world model*, an inverse dynamics model (IDM,
:mod:`.inverse_dynamics`) reads the action the chunk shows, and the *real world* (the
procedural world's exact simulator and renderer) executes it. Two built-in tasks, the paper's
two return tasks, on held-out worlds (seed ``world_seed_base + episode``, never trained on):

* ``navigate-return`` (Minecraft "retrace the path back to the start"): a random route of
  ``outward_actions`` moves, then the same moves retraced in reverse. Metrics on the wrapping
  map, in pixels of the map at the frame size (shortest toroidal distances, exact camera
  positions): the closest distance of the return leg to each waypoint of the planned route (the
  positions before each outward move, the start included) and the final distance to the start.
* ``blocks-return`` (RLBench "move the cubes, then return them to where they were"):
  ``outward_actions`` full-length pushes, then every push undone in reverse order. Metric: the
  mean distance of the blocks from their original places, in table units (32 per table side).

``success`` needs both legs: the real world reached the planned turning point (navigation: the
camera; blocks: every block) within ``success_radius`` AND ended within ``success_radius`` of
the start (navigation) / of every original place (blocks). A policy that never moves is
therefore not a success, although its final distance is 0.

A task file (YAML) gives the subgoals itself, the same for every episode::

    world: navigation          # or blocks
    outward: [move right, head north, head north]
    return: [go south, go south, move left]

Every subgoal must be a phrasing the world knows (:func:`~.worlds.actions.parse_action`): the
metrics need the intended primitive. The outward subgoals must move the camera (the blocks) away
from the start and the return ones back to it, or no policy could succeed (or one that never moves would).

World models (one interface: ``start(frames, state)``, ``generate(subgoal) -> (K, H, W, 3)``):

* :class:`VideoWorldModel` — a :class:`~.session.GenerationSession` of the video model. A new
  session (fresh Temp-LoRA memory) per episode; the memory is then updated after every chunk
  for the whole episode (``generation.fast.mode``: ``off`` | ``paper`` | ...).
* :class:`OracleWorldModel` — the world's own simulator and renderer: it "generates" the true
  chunk of the subgoal's primitive (the upper bound). It is privileged: ``start`` takes the
  exact world state that came with the observation.

Loops: ``closed`` — after every executed action, the real observation re-seeds the world model
(``session.start`` with the last ``context_frames`` real frames: the next chunk continues from
what really happened, while the Temp-LoRA memory, which ``start`` leaves alone, carries on);
``open`` — the whole plan runs on generated frames only, the real world just executes.

Policies: ``model`` (world model + IDM) and ``random`` (uniform over the world's primitives,
the lower bound).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence

import numpy as np

from .config import SEED_RANGE, help_field
from .data.world_dataset import heldout_world_seed_problem
from .errors import UserInputError
from .inverse_dynamics import ANALYTIC, ActionReader, analytic_idm, load_idm
from .session import GenerationConfig, GenerationSession
from .worlds import BlocksConfig, BlocksWorld, NavigationConfig, NavigationWorld
from .worlds.blocks import BLOCK_COLOURS
from .worlds.actions import parse_action, phrase
from .worlds.navigation import camera_path, return_to_start_route

TASKS: dict[str, str] = {"navigate-return": "navigation", "blocks-return": "blocks"}
POLICIES = ("model", "random")
LOOPS = ("closed", "open")
VIDEO_PANELS = ("target", "plan", "executed")
"""Left to right in every episode video: the subgoals executed exactly, the plan, the real rollout."""


MAX_SIZE = 1024
"""Largest frame size of the oracle and random policy (a video model's own size is used as is): the navigation
map alone is ``(8 * size)**2`` pixels, 32 and 64 are the tested sizes."""
MAX_SEED = SEED_RANGE[1]  # 2**64 - 1: generation seeds (seed + episode); world seeds are kept to the same range


@dataclasses.dataclass
class PlanConfig:
    """One planning experiment (see the module docstring)."""

    task: str = help_field("navigate-return", f"{' | '.join(TASKS)} | a task file (YAML: world, outward, return)")
    episodes: int = help_field(4, "episodes; episode i runs on held-out world world_seed_base + i")
    seed: int = help_field(0, "episode i: generation seed seed + i, random-policy stream (seed, i)")
    policy: str = help_field("model", "model = world model + IDM; random = uniform primitives (lower bound)")
    oracle: bool = help_field(False, "world model = the world's own renderer (upper bound) instead of the video model")
    loop: str = help_field("closed", "closed = re-seed the world model from every real observation; open = plan on generated frames only")
    idm: str = help_field(ANALYTIC, "inverse dynamics: 'analytic' (shift search / colour tracking) or a trained IDM directory")
    outward_actions: int = help_field(4, "built-in tasks: subgoals of the outward part (the return part has as many)")
    phrasing: str = help_field("heldout", "built-in tasks: subgoal phrasings: train | heldout (never trained on) | all")
    world_seed_base: int = help_field(900_000_000, "held-out world seeds: base + episode")
    size: int = help_field(32, f"frame size when no video model is loaded (--oracle, --policy random); even, "
                                f"8 to {MAX_SIZE}")
    num_blocks: int = help_field(3, f"blocks world: number of blocks (1 to {len(BLOCK_COLOURS)})")
    success_radius: float = help_field(1.0, "success radius: pixels (navigation) / table units (blocks)")
    generation: GenerationConfig = dataclasses.field(default_factory=GenerationConfig)

    def __post_init__(self) -> None:
        world_seed_issue = heldout_world_seed_problem(self.world_seed_base)  # as sfvgen eval
        checks = [
            (self.episodes >= 1, f"episodes must be >= 1, got {self.episodes}"),
            (self.policy in POLICIES, f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}"),
            (self.loop in LOOPS, f"loop must be one of {', '.join(LOOPS)}, got {self.loop!r}"),
            (not (self.oracle and self.policy == "random"), "the oracle is a world model: use it with policy=model"),
            (1 <= self.outward_actions <= 1000,  # 10**9 hung drawing its route
             f"outward_actions must be in [1, 1000], got {self.outward_actions}"),
            (self.phrasing in ("train", "heldout", "all"), f"phrasing must be train, heldout or all, got {self.phrasing!r}"),
            (8 <= self.size <= MAX_SIZE and self.size % 2 == 0,
             f"size must be an even number in [8, {MAX_SIZE}], got {self.size}"),
            (0 <= self.success_radius < math.inf,  # inf counted every episode a success
             f"success_radius must be a finite number >= 0, got {self.success_radius}"),
            (world_seed_issue is None, world_seed_issue),
            (self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
            # episode i uses generation seed seed + i and world seed world_seed_base + i: both must stay seeds
            (self.seed + self.episodes - 1 <= MAX_SEED,
             f"seed + episodes - 1 (the last episode's generation seed) must be <= 2**64 - 1, "
             f"got seed {self.seed}, episodes {self.episodes}"),
            (self.world_seed_base + self.episodes - 1 <= MAX_SEED,
             f"world_seed_base + episodes - 1 (the last episode's world seed) must be <= 2**64 - 1, "
             f"got world_seed_base {self.world_seed_base}, episodes {self.episodes}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        BlocksConfig(num_blocks=self.num_blocks)  # the blocks world's own range check (num_blocks in [1, 6])

    @property
    def uses_video_model(self) -> bool:
        return self.policy == "model" and not self.oracle


# ---------------------------------------------------------------------------- tasks
@dataclasses.dataclass
class TaskTemplate:
    """Where an episode's subgoals come from: a built-in task, or fixed subgoals from a file."""

    name: str
    world: str
    outward: list[str] | None = None  # task files only
    back: list[str] | None = None


@dataclasses.dataclass
class Task:
    """One episode's task: subgoal texts, their intended primitives, where the return part starts."""

    subgoals: list[str]
    primitives: list[str]
    return_from: int
    start: np.ndarray  # the real world's start state


def resolve_task(name: str, num_blocks: int = 3) -> TaskTemplate:
    """A built-in task name or a task file; :class:`UserInputError` (one line) for anything else."""
    if name in TASKS:
        return TaskTemplate(name, TASKS[name])
    path = Path(name)
    if not path.is_file():
        raise UserInputError(f"unknown task {name!r}: choose {', '.join(TASKS)} or a task file (YAML with world, outward, return)")
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise UserInputError(f"task file {path} is not readable YAML: {str(err).strip().splitlines()[0]}") from None
    if not isinstance(data, dict) or set(data) != {"world", "outward", "return"}:
        keys = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__  # `1: a` is an int key
        raise UserInputError(f"task file {path} needs exactly the keys world, outward, return; got {keys}")
    world = data["world"]
    if world not in TASKS.values():
        raise UserInputError(f"task file {path}: world must be navigation or blocks, got {world!r}")
    known = set(_world_primitives(world, num_blocks))
    parts = {}
    for key in ("outward", "return"):
        items = data[key]
        if not isinstance(items, list) or not items:
            raise UserInputError(f"task file {path}: {key} must be a non-empty list of subgoals")
        for position, text in enumerate(items, 1):
            if not isinstance(text, str) or parse_action(text) not in known:
                raise UserInputError(f"task file {path}: {key} subgoal {position} ({text!r}) is not an action the "
                                     f"{world} world knows (e.g. {sorted(known)[0]!r})")
        parts[key] = [text.strip() for text in items]
    outward = _displacements(parse_action(text) for text in parts["outward"])
    total = _displacements(parse_action(text) for text in parts["outward"] + parts["return"])
    moved = "camera" if world == "navigation" else "blocks"
    if not any(map(any, outward.values())):  # the turn is the start: a policy that never moves succeeds
        raise UserInputError(f"task file {path}: the outward subgoals bring the {moved} back to the start; "
                             f"they must lead away from it")
    if any(map(any, total.values())):  # success is measured at the start: no route could reach it
        off = ", ".join(f"{name} {vector}" for name, vector in sorted(total.items()) if any(vector))
        raise UserInputError(f"task file {path}: the return subgoals do not lead the {moved} back to the start "
                             f"(left over, in steps right and down: {off})")
    return TaskTemplate(str(path), world, parts["outward"], parts["return"])


def _displacements(primitives: Iterable[str]) -> dict[str, tuple[int, int]]:
    """Steps ``(right, down)`` each scored thing takes under ``primitives`` on an open table: ``camera``
    (navigation) or a block colour (a push; the gripper and ``stay`` move nothing the scores measure). A
    block pushed into a wall or another block moves less, so for blocks this is what the subgoals ask."""
    from .worlds.actions import DIRECTION_VECTORS

    totals: dict[str, tuple[int, int]] = {}
    for primitive in primitives:
        words = primitive.split()
        if words[0] == "move":
            thing = "camera"
        elif words[0] == "push":
            thing = words[1]
        else:
            continue
        dx, dy = DIRECTION_VECTORS[words[-1]]
        x, y = totals.get(thing, (0, 0))
        totals[thing] = (x + dx, y + dy)
    return totals


def _world_primitives(world: str, num_blocks: int) -> tuple[str, ...]:
    from .worlds.actions import NAVIGATION_PRIMITIVES, block_primitives

    return NAVIGATION_PRIMITIVES if world == "navigation" else block_primitives(BlocksConfig(num_blocks=num_blocks).colours)


MAX_ROUTE_DRAWS = 100
"""Routes drawn for a built-in task until one turns away from its start (one in about 15 does not)."""


def make_task(template: TaskTemplate, env: "Environment", rng: np.random.Generator, outward_actions: int,
              phrasing: str) -> Task:
    """The episode's task on ``env``, drawn with ``rng`` (start, route, phrasings)."""
    start = env.initial_state(rng)
    if template.outward is not None:  # a task file: fixed subgoals
        subgoals = template.outward + template.back
        return Task(subgoals, [parse_action(s) for s in subgoals], len(template.outward), start)
    placed = slice(1, None) if template.world == "blocks" else slice(None)  # blocks: the blocks, not the gripper
    for _ in range(MAX_ROUTE_DRAWS):  # a route out and back to its start (right, left, left, right) turns at the
        if template.world == "navigation":  # start, so a policy that never moves succeeded: draw another
            primitives = return_to_start_route(rng, 2 * outward_actions).primitives
        else:
            primitives = env.world.move_and_return_script(rng, start, 2 * outward_actions)
        turn = start
        for primitive in primitives[:outward_actions]:
            turn = env.simulate(turn, primitive)[-1]
        if not np.array_equal(turn[placed], start[placed]):
            break
    subgoals = [phrase(p, rng, phrasing) for p in primitives]
    return Task(subgoals, list(primitives), outward_actions, start)


# ---------------------------------------------------------------------------- the real world
class Environment(Protocol):
    """The real world: exact states, an exact simulator and renderer, ``K`` frames per action."""

    name: str
    frames_per_action: int
    primitives: tuple[str, ...]

    def initial_state(self, rng: np.random.Generator) -> np.ndarray: ...
    def simulate(self, state: np.ndarray, primitive: str) -> np.ndarray: ...  # (K, *state.shape)
    def render(self, state: np.ndarray) -> np.ndarray: ...  # (H, W, 3) uint8


class NavigationEnv:
    """Camera over a wrapping map; the state is the camera's unwrapped top-left corner ``(x, y)`` in pixels."""

    name = "navigation"

    def __init__(self, world: NavigationWorld, frames_per_action: int) -> None:
        self.world, self.frames_per_action = world, frames_per_action
        self.primitives = world.primitives

    def initial_state(self, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, self.world.map_size, size=2)

    def simulate(self, state: np.ndarray, primitive: str) -> np.ndarray:
        return camera_path(state, [primitive], self.frames_per_action, self.world.speed)[1:]  # (K, 2)

    def render(self, state: np.ndarray) -> np.ndarray:
        return self.world.render(state)

    def distances(self, positions: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Shortest distances on the wrapping map from ``positions`` ``(N, 2)`` to ``target`` ``(2,)``, in pixels."""
        size = float(self.world.map_size)
        delta = (np.asarray(positions, float) - np.asarray(target, float) + size / 2) % size - size / 2
        return np.hypot(delta[..., 0], delta[..., 1])


class BlocksEnv:
    """Table with a gripper and blocks; the state is ``(1 + B, 2)`` centres in table units (row 0: gripper)."""

    name = "blocks"

    def __init__(self, world: BlocksWorld, frames_per_action: int) -> None:
        self.world, self.frames_per_action = world, frames_per_action
        self.primitives = world.primitives

    def initial_state(self, rng: np.random.Generator) -> np.ndarray:
        return self.world.initial_state.copy()

    def simulate(self, state: np.ndarray, primitive: str) -> np.ndarray:
        return self.world.simulate(state, primitive, self.frames_per_action)  # (K, 1 + B, 2)

    def render(self, state: np.ndarray) -> np.ndarray:
        return self.world.render(state)


def make_environment(world: str, world_seed: int, size: int, frames_per_action: int, num_blocks: int) -> Environment:
    if world == "navigation":
        return NavigationEnv(NavigationWorld(NavigationConfig(view_size=size), world_seed), frames_per_action)
    return BlocksEnv(BlocksWorld(BlocksConfig(view_size=size, num_blocks=num_blocks), world_seed), frames_per_action)


def rollout(env: Environment, start: np.ndarray, primitives: Sequence[str]) -> np.ndarray:
    """Exact states ``(1 + M*K, ...)`` of executing ``primitives`` from ``start``."""
    states = [np.asarray(start)[None]]
    for primitive in primitives:
        states.append(env.simulate(states[-1][-1], primitive))
    return np.concatenate(states)


# ---------------------------------------------------------------------------- world models
class WorldModel(Protocol):
    def start(self, frames: np.ndarray, state: np.ndarray) -> None:
        """(Re-)seed from observed frames ``(N, H, W, 3)``; ``state`` is the exact world state (oracle only)."""

    def generate(self, subgoal: str) -> np.ndarray:
        """The chunk ``(K, H, W, 3) uint8`` that realises ``subgoal``."""


class VideoWorldModel:
    """The video model as a world model: one :class:`GenerationSession` (fresh memory) per episode."""

    def __init__(self, bundle, generation: GenerationConfig) -> None:
        self.session = GenerationSession(bundle, generation)
        self.context_frames = generation.context_frames

    def start(self, frames: np.ndarray, state: np.ndarray) -> None:
        self.session.start(frames[-self.context_frames:])  # the Temp-LoRA memory is kept

    def generate(self, subgoal: str) -> np.ndarray:
        return self.session.generate([subgoal])

    @property
    def memory_loss(self) -> float | None:
        return self.session.records[-1].temp_lora_loss if self.session.records else None


class OracleWorldModel:
    """The world's own simulator and renderer behind the world-model interface (upper bound)."""

    def __init__(self, env: Environment) -> None:
        self.env = env
        self.state: np.ndarray | None = None

    def start(self, frames: np.ndarray, state: np.ndarray) -> None:
        self.state = np.asarray(state)

    def generate(self, subgoal: str) -> np.ndarray:
        primitive = parse_action(subgoal)
        if primitive not in self.env.primitives:
            raise UserInputError(f"the oracle cannot realise {subgoal!r}: not a {self.env.name} action")
        states = self.env.simulate(self.state, primitive)
        self.state = states[-1]
        return np.stack([self.env.render(s) for s in states])


# ---------------------------------------------------------------------------- policies
@dataclasses.dataclass
class Decision:
    """The action to execute for one subgoal, and the plan chunk it was read from (None: no plan)."""

    primitive: str
    confidence: float
    displacement: tuple[float, float] | None
    chunk: np.ndarray | None
    memory_loss: float | None = None


class ModelPolicy:
    """World model + IDM: realise the subgoal as a chunk, read the action from it."""

    def __init__(self, world_model: WorldModel, reader: ActionReader) -> None:
        self.world_model, self.reader = world_model, reader
        self.last_frame: np.ndarray | None = None

    def begin(self, frames: np.ndarray, state: np.ndarray) -> None:
        self.world_model.start(frames, state)
        self.last_frame = frames[-1]

    observe = begin  # closed loop: the real observation re-seeds the world model

    def act(self, subgoal: str) -> Decision:
        chunk = self.world_model.generate(subgoal)  # (K, H, W, 3)
        reading = self.reader.read(np.concatenate([self.last_frame[None], chunk]))  # (1 + K, H, W, 3)
        self.last_frame = chunk[-1]
        return Decision(reading.primitive, reading.confidence, reading.displacement, chunk,
                        getattr(self.world_model, "memory_loss", None))


class RandomPolicy:
    """Uniform over the world's primitives, ignoring subgoals and observations (lower bound)."""

    def __init__(self, primitives: Sequence[str], rng: np.random.Generator) -> None:
        self.primitives, self.rng = tuple(primitives), rng

    def begin(self, frames: np.ndarray, state: np.ndarray) -> None:
        pass

    observe = begin

    def act(self, subgoal: str) -> Decision:
        return Decision(self.primitives[int(self.rng.integers(len(self.primitives)))], 1.0 / len(self.primitives), None, None)


# ---------------------------------------------------------------------------- one episode
@dataclasses.dataclass
class EpisodeRun:
    states: np.ndarray  # (1 + M*K, ...) exact states of the real world
    observed: np.ndarray  # (1 + M*K, H, W, 3) real frames
    plan: np.ndarray  # (1 + M*K, H, W, 3) the plan's chunks (grey where there is no plan)
    decisions: list[Decision]


def run_episode(task: Task, env: Environment, policy, loop: str, context_frames: int) -> EpisodeRun:
    """Execute ``task`` in ``env`` with ``policy`` (Algorithm: plan a chunk, read it, execute, re-seed)."""
    # 0. the real world's start
    states = [np.asarray(task.start)]
    observed = [env.render(states[0])]
    plan = [observed[0]]
    policy.begin(np.stack(observed), states[-1])
    decisions = []
    for index, subgoal in enumerate(task.subgoals):
        # 1. plan: the world model realises the subgoal as one chunk; 2. the IDM reads the action
        decision = policy.act(subgoal)
        # 3. the real world executes it
        new_states = env.simulate(states[-1], decision.primitive)  # (K, ...)
        states.extend(new_states)
        observed.extend(env.render(s) for s in new_states)
        plan.extend(decision.chunk if decision.chunk is not None else np.full((len(new_states), *observed[0].shape), 128, np.uint8))
        decisions.append(decision)
        # 4. closed loop: what really happened seeds the next chunk
        if loop == "closed" and index + 1 < len(task.subgoals):
            policy.observe(np.stack(observed[-context_frames:]), states[-1])
    return EpisodeRun(np.stack(states), np.stack(observed), np.stack(plan), decisions)


# ---------------------------------------------------------------------------- metrics
def navigation_scores(env: NavigationEnv, task: Task, states: np.ndarray, target: np.ndarray, radius: float) -> dict:
    """Waypoint, turn and final distances (pixels, wrapping map) of an executed navigate-return episode."""
    k, r = env.frames_per_action, task.return_from
    waypoints = target[[j * k for j in range(r)]]  # the planned route's positions before each outward move
    return_leg = states[r * k:]
    closest = [float(env.distances(return_leg, w).min()) for w in waypoints]
    final = float(env.distances(states[-1:], target[0])[0])
    turn = float(env.distances(states[r * k: r * k + 1], target[r * k])[0])
    return {"final_distance_px": final, "waypoint_distance_px": float(np.mean(closest)), "turn_distance_px": turn,
            "success": bool(final <= radius and turn <= radius), "waypoint_distances_px": closest}


def blocks_scores(env: BlocksEnv, task: Task, states: np.ndarray, target: np.ndarray, radius: float) -> dict:
    """Distances of the blocks from their original places (table units) and from the planned turn layout."""
    k, r = env.frames_per_action, task.return_from
    original, final = states[0, 1:], states[-1, 1:]  # (B, 2) block centres
    distances = np.linalg.norm((final - original).astype(float), axis=1)
    turn = np.linalg.norm((states[r * k, 1:] - target[r * k, 1:]).astype(float), axis=1)
    px_per_unit = env.world.config.view_size / 32.0
    return {"block_distance": float(distances.mean()), "block_distance_px": float(distances.mean() * px_per_unit),
            "turn_block_distance": float(turn.mean()),
            "success": bool(distances.max() <= radius and turn.max() <= radius),
            "block_distances": dict(zip(env.world.config.colours, distances.tolist()))}


def plan_fidelity(plan: np.ndarray, observed: np.ndarray, return_start: int) -> dict:
    """How faithfully the world model imagined what the world then showed: PSNR (dB) of the plan's
    frames ``(1 + M*K, H, W, 3)`` against the real frames at the same steps, over every generated
    frame (``plan_psnr``) and over the return leg only (``return_plan_psnr``, frames after
    ``return_start``). On the return leg every place was seen on the way out, so this is where an
    episodic memory can show (paper §4.1: revisits); the distances cannot, once the actions are right.
    """
    from .metrics import psnr

    return {"plan_psnr": psnr(plan[1:], observed[1:]),
            "return_plan_psnr": psnr(plan[return_start + 1:], observed[return_start + 1:])}


# ---------------------------------------------------------------------------- the experiment
def make_reader(idm: str, world: str, env: Environment, frames_per_action: int, size: int) -> ActionReader:
    """``analytic`` or a trained IDM directory, checked against the world, frame size and chunk length."""
    if idm == ANALYTIC:
        return analytic_idm(world, env.world.config if world == "blocks" else None)
    model = load_idm(idm)
    config = model.config
    problems = []
    if config.world != world:
        problems.append(f"world {config.world} (task: {world})")
    if config.image_size != size:
        problems.append(f"{config.image_size}x{config.image_size} frames (plan: {size}x{size})")
    if config.frames_per_action != frames_per_action:
        problems.append(f"{config.frames_per_action} frames per action (plan: {frames_per_action})")
    if list(config.primitives) != list(env.primitives) and not problems:
        problems.append(f"primitives {list(config.primitives)} (world: {list(env.primitives)})")
    if not problems and config.world_overrides:  # another speed or push distance: its displacements mean other moves
        from dataclasses import asdict

        from .worlds import world_config

        def effective(settings) -> dict:  # `speed=2` restates the derived default (None = view_size // 16)
            values = asdict(settings)
            if "speed" in values:
                values["speed"] = settings.resolved_speed
            return values

        trained = world_config(world, [f"view_size={size}", *config.world_overrides])
        if effective(trained) != effective(env.world.config):
            problems.append(f"world_overrides {list(config.world_overrides)} (the planning worlds use none but "
                            f"{'num_blocks' if world == 'blocks' else 'the frame size'})")
    if problems:
        raise UserInputError(f"the IDM {idm} was trained for {', '.join(problems)}; train one for this setting")
    return model


def run_plan(config: PlanConfig, bundle=None, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every episode of the experiment; returns the results (per episode, summary) and the videos."""
    from .config import config_from_dict

    template = resolve_task(config.task, config.num_blocks)
    if config.uses_video_model:
        if bundle is None:
            raise ValueError("policy=model without the oracle needs a video model bundle")
        if bundle.height != bundle.width or bundle.height % 2:
            raise UserInputError(f"planning needs square frames of even size, the model makes {bundle.width}x{bundle.height}")
        size = bundle.height
    else:
        size = config.size
    k = config.generation.frames_per_chunk
    world_model_name = "oracle" if config.oracle else ("video model" if config.policy == "model" else None)
    episodes, videos = [], []
    reader = None  # built once, on the first episode's world (every episode has the same settings)
    for episode in range(config.episodes):
        started = time.perf_counter()
        world_seed = config.world_seed_base + episode
        env = make_environment(template.world, world_seed, size, k, config.num_blocks)
        task = make_task(template, env, np.random.default_rng(world_seed), config.outward_actions, config.phrasing)
        # the policy: world model + IDM, or random
        if config.policy == "random":
            policy = RandomPolicy(env.primitives, np.random.default_rng([config.seed, episode]))
        else:
            if config.oracle:
                world_model: WorldModel = OracleWorldModel(env)
            else:
                values = {**dataclasses.asdict(config.generation), "seed": config.seed + episode}
                world_model = VideoWorldModel(bundle, config_from_dict(GenerationConfig, values))
            reader = reader or make_reader(config.idm, template.world, env, k, size)
            policy = ModelPolicy(world_model, reader)
        run = run_episode(task, env, policy, config.loop, config.generation.context_frames)
        target = rollout(env, task.start, task.primitives)
        scorer = navigation_scores if template.world == "navigation" else blocks_scores
        scores = scorer(env, task, run.states, target, config.success_radius)
        executed = [d.primitive for d in run.decisions]
        scores["action_agreement"] = float(np.mean([e == p for e, p in zip(executed, task.primitives)]))
        if config.uses_video_model:  # the oracle's plan is the observation itself; random has none
            scores.update(plan_fidelity(run.plan, run.observed, task.return_from * k))
        episodes.append({
            "episode": episode, "world_seed": world_seed, "start": np.asarray(task.start).tolist(),
            "return_from": task.return_from, "scores": scores,
            "steps": [{"subgoal": s, "intended": p, "executed": d.primitive, "confidence": round(d.confidence, 4),
                       "displacement": None if d.displacement is None else [round(v, 3) for v in d.displacement],
                       "memory_loss": d.memory_loss}
                      for s, p, d in zip(task.subgoals, task.primitives, run.decisions)],
            "seconds": round(time.perf_counter() - started, 2),
        })
        target_frames = np.stack([env.render(s) for s in target])
        videos.append(np.stack([target_frames, run.plan, run.observed]))  # (3, 1 + M*K, H, W, 3)
        if progress:
            headline = [f"{name} {value:.2f}" if isinstance(value, float) else f"{name} {value}"
                        for name, value in scores.items() if isinstance(value, (float, bool))]
            progress(f"episode {episode} (world {world_seed}): " + ", ".join(headline))
    return {
        "task": template.name, "world": template.world,
        "policy": config.policy if config.policy == "random" else f"{world_model_name} + IDM",
        "world_model": world_model_name, "idm": config.idm if config.policy == "model" else None,
        "loop": config.loop, "fast_mode": config.generation.fast.mode if config.uses_video_model else None,
        "size": size, "frames_per_action": k, "video_panels": list(VIDEO_PANELS),
        "config": _plain(config), "summary": summarise(episodes), "episodes": episodes, "videos": videos,
    }


def summarise(episodes: list[dict]) -> dict[str, dict]:
    """Per scalar score: mean, 95 % CI bounds (None with one episode) and n across episodes."""
    from .metrics import mean_ci

    names = [name for name, value in episodes[0]["scores"].items() if isinstance(value, (float, bool, int))]
    summary = {}
    for name in names:
        values = [float(e["scores"][name]) for e in episodes]
        mean, low, high = mean_ci(values)
        summary[name] = {"mean": mean, "low": None if math.isnan(low) else low,
                         "high": None if math.isnan(high) else high, "n": len(values)}
    return summary


def _format(entry: dict) -> str:
    if entry["high"] is None:
        return f"{entry['mean']:.3f}"
    return f"{entry['mean']:.3f} ± {entry['high'] - entry['mean']:.3f}"


def markdown_table(result: dict) -> str:
    """Summary (mean ± 95 % CI half-width over episodes) and one row per episode."""
    lines = [f"Task `{result['task']}` ({result['world']}), policy **{result['policy']}**"
             + (f", IDM `{result['idm']}`" if result["idm"] else "") + f", loop {result['loop']}"
             + (f", fast {result['fast_mode']}" if result["fast_mode"] else "")
             + f", {len(result['episodes'])} episodes, {result['size']}x{result['size']} frames, K = {result['frames_per_action']}",
             "", "| score | mean ± 95 % CI |", "|---|---|"]
    lines += [f"| {name} | {_format(entry)} |" for name, entry in result["summary"].items()]
    names = list(result["summary"])
    lines += ["", "| episode | world seed | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for episode in result["episodes"]:
        cells = [f"{float(episode['scores'][n]):.3f}" if not isinstance(episode["scores"][n], bool) else str(episode["scores"][n])
                 for n in names]
        lines.append(f"| {episode['episode']} | {episode['world_seed']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def save_plan_results(result: dict, out_dir: str | Path, fps: float = 8.0) -> dict[str, str]:
    """``results.json``, ``results.md`` and ``episodes/episode-NNN.mp4`` (target | plan | executed)."""
    from .io_utils import atomic_write_json, atomic_write_text
    from .video_io import auto_upscale, write_video

    out = Path(out_dir)
    written = {}
    for episode, panels in zip(result["episodes"], result["videos"]):
        name = f"episodes/episode-{episode['episode']:03d}.mp4"
        frames = side_by_side(panels)
        write_video(out / name, frames, fps=fps, upscale=auto_upscale(frames.shape[2]))
        episode["video"] = name
    videos = {episode["video"] for episode in result["episodes"]}
    for stale in (out / "episodes").glob("episode-[0-9][0-9][0-9].mp4"):  # an earlier run's episodes beyond this one's
        if f"episodes/{stale.name}" not in videos:
            stale.unlink()
    atomic_write_json(out / "results.json", {k: v for k, v in result.items() if k != "videos"})
    atomic_write_text(out / "results.md", markdown_table(result))
    written.update(json=str(out / "results.json"), markdown=str(out / "results.md"), videos=str(out / "episodes"))
    return written


def side_by_side(panels: np.ndarray, gap: int = 2) -> np.ndarray:
    """``(P, F, H, W, 3)`` -> ``(F, H, P*W + (P-1)*gap, 3)``: panels left to right, white gaps."""
    p, f, h, w, _ = panels.shape
    out = np.full((f, h, p * w + (p - 1) * gap, 3), 255, np.uint8)
    for i in range(p):
        out[:, :, i * (w + gap): i * (w + gap) + w] = panels[i]
    return out


def _plain(config: PlanConfig) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(config))


__all__ = [
    "BlocksEnv", "Decision", "EpisodeRun", "LOOPS", "ModelPolicy", "NavigationEnv", "OracleWorldModel", "POLICIES",
    "PlanConfig", "RandomPolicy", "TASKS", "Task", "TaskTemplate", "VideoWorldModel", "blocks_scores", "make_reader",
    "make_task", "markdown_table", "navigation_scores", "plan_fidelity", "resolve_task", "rollout", "run_episode", "run_plan",
    "save_plan_results", "side_by_side", "summarise",
]  # fmt: skip
