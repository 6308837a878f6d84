"""Block world: a top-down table with a gripper and coloured blocks, for planning experiments.

Coordinates are integer *table units*: the table is :data:`TABLE_UNITS` units square whatever
the view size (one unit is ``view_size / 32`` pixels), ``x`` grows to the right and ``y``
downwards, and every object position is the centre of the object. Ground truth is exact:
positions are integers at every frame.

Actions (primitives, see :mod:`.actions`):

* ``push <colour> <dir>``: in the first half of the action's frames the gripper travels to the
  side of the block opposite to ``dir``; in the second half gripper and block move together by
  up to ``push_distance`` units. The block stops early at the table edge or before touching
  another block (a fully blocked push moves nothing but the gripper).
* ``gripper <dir>``: the empty gripper moves ``gripper_step`` units (clipped to the table).
* ``stay``: nothing moves.

Scripted ``move_and_return`` episodes push blocks around and then undo every push in reverse
order (opposite directions), so every block ends exactly where it started: the ground truth
for the paper's "move cubes, then return them to where they were" planning task.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from ..config import help_field
from .actions import (
    BLOCK_COLOURS,
    DIRECTION_VECTORS,
    OPPOSITE,
    STAY,
    block_primitives,
    gripper_primitive,
    push_primitive,
)
from .base import Episode, check_primitives

TABLE_UNITS = 32
EPISODE_KINDS: tuple[str, ...] = ("random", "move_and_return")

_BLOCK_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 215),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 190),
    "orange": (245, 135, 25),
}
_GRIPPER_RGB = np.array((55, 55, 60), dtype=np.float64)
_GRIPPER_CENTRE_RGB = np.array((235, 235, 235), dtype=np.float64)


@dataclasses.dataclass
class BlocksConfig:
    """Typed config of the block world (distances in table units; the table is 32 units square)."""

    view_size: int = help_field(32, "height and width of the rendered view in pixels (the whole table)")
    num_blocks: int = help_field(3, f"number of blocks, coloured in order {', '.join(BLOCK_COLOURS)}")
    block_size: int = help_field(6, "side length of a block, in table units")
    push_distance: int = help_field(6, "how far one push moves a block, in table units")
    gripper_step: int = help_field(6, "how far one gripper move goes, in table units")
    margin: int = help_field(2, "width of the table border objects cannot enter, in table units")
    return_fraction: float = help_field(0.5, "fraction of sampled episodes that are scripted move-and-return episodes")
    push_fraction: float = help_field(
        0.75, "fraction of a random episode's actions that are block pushes; the rest are empty-gripper moves and stays (4:1)"
    )
    full_gripper_moves: bool = help_field(
        False, "random episodes draw each empty-gripper move among the directions where it travels its whole "
        "gripper_step (a stay where none does); false: any direction, so moves into the table edge do little or nothing"
    )

    def __post_init__(self) -> None:
        if self.view_size < 8 or self.view_size % 2:
            raise ValueError(f"view_size must be an even number >= 8, got {self.view_size}")
        if not 1 <= self.num_blocks <= len(BLOCK_COLOURS):
            raise ValueError(f"num_blocks must be in [1, {len(BLOCK_COLOURS)}], got {self.num_blocks}")
        if not 2 <= self.block_size <= TABLE_UNITS // 4:
            raise ValueError(f"block_size must be in [2, {TABLE_UNITS // 4}] table units, got {self.block_size}")
        if not (1 <= self.push_distance <= TABLE_UNITS and 1 <= self.gripper_step <= TABLE_UNITS):
            raise ValueError(f"push_distance and gripper_step must be in [1, {TABLE_UNITS}] table units, got "
                             f"{self.push_distance}, {self.gripper_step}")
        if not 0 <= self.margin <= TABLE_UNITS // 4:
            raise ValueError(f"margin must be in [0, {TABLE_UNITS // 4}], got {self.margin}")
        if not 0.0 <= self.return_fraction <= 1.0:
            raise ValueError(f"return_fraction must be in [0, 1], got {self.return_fraction}")
        if not 0.0 <= self.push_fraction <= 1.0:
            raise ValueError(f"push_fraction must be in [0, 1], got {self.push_fraction}")
        if len(self.grid_centres()) < self.num_blocks:
            raise ValueError(f"{self.num_blocks} blocks of block_size {self.block_size} do not always fit on the table "
                             f"inside margin {self.margin}: use fewer or smaller blocks, or a smaller margin")

    def grid_centres(self) -> list[tuple[int, int]]:
        """Block centres on a grid of pitch ``block_size + 1`` inside the margin: blocks there never touch.

        Where random placement gets stuck (blocks scattered so that no gap is left), the world lays
        its blocks on this grid instead, so every accepted config builds every world.
        """
        half = self.block_size // 2
        low, high = self.margin + half, TABLE_UNITS - self.margin - half
        axis = range(low, high + 1, self.block_size + 1)
        return [(x, y) for x in axis for y in axis]

    @property
    def colours(self) -> tuple[str, ...]:
        return BLOCK_COLOURS[: self.num_blocks]


def _interpolate(a: np.ndarray, b: np.ndarray, steps: int) -> np.ndarray:
    """``(steps, ...)`` integer positions going linearly from ``a`` (excluded) to ``b`` (included)."""
    t = (np.arange(1, steps + 1) / steps).reshape(-1, *([1] * a.ndim))
    return np.rint(a + (b - a) * t).astype(np.int64)


class BlocksWorld:
    """A seeded table (texture and initial block layout) on which primitives are simulated and rendered.

    A *state* is an ``(1 + num_blocks, 2)`` int array of centres: row 0 is the gripper, row
    ``1 + i`` the block of colour ``config.colours[i]``.
    """

    name = "blocks"

    def __init__(self, config: BlocksConfig | None = None, seed: int = 0) -> None:
        self.config = config or BlocksConfig()
        self.seed = int(seed)
        rng = np.random.default_rng(seed)
        self._table = self._make_table(rng)
        self.initial_state = self._initial_layout(rng)

    # -- geometry ---------------------------------------------------------------------------

    @property
    def primitives(self) -> tuple[str, ...]:
        return block_primitives(self.config.colours)

    @property
    def object_names(self) -> tuple[str, ...]:
        """Row names of a state: ``("gripper", *colours)``."""
        return ("gripper",) + self.config.colours

    def _bounds(self, half: int) -> tuple[int, int]:
        return self.config.margin + half, TABLE_UNITS - self.config.margin - half

    def _block_fits(self, state: np.ndarray, block: int, centre: np.ndarray) -> bool:
        """Whether block row ``block`` may sit at ``centre``: on the table and not touching another block."""
        half = self.config.block_size // 2
        low, high = self._bounds(half)
        if not (low <= centre[0] <= high and low <= centre[1] <= high):
            return False
        others = np.delete(state[1:], block - 1, axis=0)
        gap = self.config.block_size + 1
        return not np.any(np.all(np.abs(others - centre) < gap, axis=1))

    def _initial_layout(self, rng: np.random.Generator) -> np.ndarray:
        """Random non-touching block centres and a gripper position.

        Each block is drawn uniformly until it fits (1000 attempts); when the blocks drawn so far
        leave no room, all blocks go to distinct random cells of :meth:`BlocksConfig.grid_centres`.
        """
        state = np.full((1 + self.config.num_blocks, 2), -100, dtype=np.int64)
        low, high = self._bounds(self.config.block_size // 2)
        for row in range(1, len(state)):
            for _ in range(1000):
                candidate = rng.integers(low, high + 1, size=2)
                if self._block_fits(state, row, candidate):
                    state[row] = candidate
                    break
            else:  # stuck: the config guarantees the grid holds every block
                cells = np.asarray(self.config.grid_centres(), dtype=np.int64)
                state[1:] = cells[rng.permutation(len(cells))[: self.config.num_blocks]]
                break
        g_low, g_high = self._bounds(2)
        state[0] = rng.integers(g_low, g_high + 1, size=2)
        return state

    def push_travel(self, state: np.ndarray, colour: str, direction: str) -> int:
        """How many units (``<= push_distance``) the block can travel in ``direction`` from ``state``."""
        row = 1 + self.config.colours.index(colour)
        step = np.asarray(DIRECTION_VECTORS[direction])
        travel = 0
        while travel < self.config.push_distance and self._block_fits(state, row, state[row] + step * (travel + 1)):
            travel += 1
        return travel

    # -- simulation --------------------------------------------------------------------------

    def simulate(self, state: np.ndarray, primitive: str, frames_per_action: int) -> np.ndarray:
        """``(K, 1 + B, 2)`` states for the K frames of ``primitive`` starting from ``state``."""
        check_primitives([primitive], self.primitives, "blocks")
        state = np.asarray(state, dtype=np.int64)
        k = frames_per_action
        if primitive == STAY:
            return np.repeat(state[None], k, axis=0)
        words = primitive.split()
        if words[0] == "gripper":
            low, high = self._bounds(2)
            target = state.copy()
            # a blocked push leaves the gripper at its contact point, possibly outside [low, high]: clipping to the
            # bounds alone moved it back inwards, i.e. the opposite way ("gripper left" going right); it now moves
            # the stated way or stays
            target[0] = np.clip(state[0] + np.asarray(DIRECTION_VECTORS[words[1]]) * self.config.gripper_step,
                                np.minimum(low, state[0]), np.maximum(high, state[0]))
            return _interpolate(state, target, k)
        # push <colour> <dir>: 1. approach the contact point, 2. push the block and gripper together
        colour, direction = words[1], words[2]
        row = 1 + self.config.colours.index(colour)
        step = np.asarray(DIRECTION_VECTORS[direction])
        contact = state.copy()
        contact[0] = state[row] - step * (self.config.block_size // 2 + 2)
        pushed = contact.copy()
        travel = self.push_travel(state, colour, direction)
        pushed[0] += step * travel
        pushed[row] += step * travel
        approach = (k + 1) // 2 if k > 1 else 0
        parts = [_interpolate(state, contact, approach)] if approach else []
        parts.append(_interpolate(contact, pushed, k - approach))
        return np.concatenate(parts)

    def rollout(
        self, state: np.ndarray, primitives: Sequence[str], frames_per_action: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Frames ``(1 + M*K, H, W, 3) uint8`` and states ``(1 + M*K, 1 + B, 2)`` for a primitive sequence."""
        states = [np.asarray(state, dtype=np.int64)[None]]
        for primitive in primitives:
            states.append(self.simulate(states[-1][-1], primitive, frames_per_action))
        trajectory = np.concatenate(states)
        return np.stack([self.render(s) for s in trajectory]), trajectory

    # -- scripted episodes -------------------------------------------------------------------

    def move_and_return_script(self, rng: np.random.Generator, state: np.ndarray, num_actions: int) -> list[str]:
        """``num_actions // 2`` full-length pushes, (a ``stay`` if odd,) then every push undone in reverse.

        Only pushes that can travel the full ``push_distance`` are chosen, so undoing them in
        reverse order restores every block exactly.
        """
        forward: list[str] = []
        current = np.asarray(state, dtype=np.int64)
        for _ in range(num_actions // 2):
            undo_last = tuple(forward[-1].split()[1:]) if forward and forward[-1] != STAY else None
            options = [
                (c, d)
                for c in self.config.colours
                for d in OPPOSITE
                if self.push_travel(current, c, d) == self.config.push_distance
                and (undo_last is None or (c, OPPOSITE[d]) != undo_last)
            ]
            if not options:
                forward.append(STAY)
                continue
            colour, direction = options[int(rng.integers(len(options)))]
            forward.append(push_primitive(colour, direction))
            current = self.simulate(current, forward[-1], 1)[-1]
        backward = [p if p == STAY else push_primitive(p.split()[1], OPPOSITE[p.split()[2]]) for p in reversed(forward)]
        return forward + ([STAY] if num_actions % 2 else []) + backward

    def random_script(self, rng: np.random.Generator, num_actions: int) -> list[str]:
        """Random primitives: pushes with probability ``push_fraction``, else a gripper move or ``stay`` (4:1).

        With ``full_gripper_moves`` a gripper move that would end at the table edge early is redrawn among
        the directions that travel the whole step, following the state the script reaches from the
        episode's start (``initial_state``)."""
        pushes = [push_primitive(c, d) for c in self.config.colours for d in OPPOSITE]
        others = [gripper_primitive(d) for d in OPPOSITE] + [STAY]
        script: list[str] = []
        state = self.initial_state
        for _ in range(num_actions):
            is_push = rng.random() < self.config.push_fraction
            primitive = pushes[int(rng.integers(len(pushes)))] if is_push else others[int(rng.integers(len(others)))]
            if self.config.full_gripper_moves:  # the state is only needed to choose gripper moves
                next_state = self.simulate(state, primitive, 1)[-1]
                if not is_push and primitive != STAY and not self._full_gripper_step(state, next_state):
                    ends = {g: self.simulate(state, g, 1)[-1] for g in others[:-1]}
                    options = [g for g, end in ends.items() if self._full_gripper_step(state, end)]
                    primitive = options[int(rng.integers(len(options)))] if options else STAY
                    next_state = ends.get(primitive, state)
                state = next_state
            script.append(primitive)
        return script

    def _full_gripper_step(self, state: np.ndarray, next_state: np.ndarray) -> bool:
        """Whether the gripper travelled its whole ``gripper_step`` from ``state`` to ``next_state``."""
        return int(np.abs(next_state[0] - state[0]).sum()) == self.config.gripper_step

    def sample_episode(self, rng: np.random.Generator, num_actions: int, frames_per_action: int) -> Episode:
        """A scripted move-and-return episode (probability ``return_fraction``) or a random one, rendered."""
        if num_actions < 1:
            raise ValueError(f"num_actions must be >= 1, got {num_actions}")
        kind = "move_and_return" if num_actions >= 2 and rng.random() < self.config.return_fraction else "random"
        if kind == "move_and_return":
            primitives = self.move_and_return_script(rng, self.initial_state, num_actions)
        else:
            primitives = self.random_script(rng, num_actions)
        frames, states = self.rollout(self.initial_state, primitives, frames_per_action)
        names = self.object_names
        meta = {
            "world": self.name,
            "world_seed": self.seed,
            "world_config": dataclasses.asdict(self.config),
            "units": (
                f"table units: the table is {TABLE_UNITS} units square, 1 unit = view_size/{TABLE_UNITS} px; "
                "positions are object centres (x right, y down)"
            ),
            "script": kind,
            "primitives": list(primitives),
            "object_positions": {name: states[:, i].tolist() for i, name in enumerate(names)},
            "initial_positions": {name: states[0, i].tolist() for i, name in enumerate(names)},
            "final_positions": {name: states[-1, i].tolist() for i, name in enumerate(names)},
        }
        return Episode(frames=frames, primitives=list(primitives), frames_per_action=frames_per_action, meta=meta)

    # -- rendering ---------------------------------------------------------------------------

    def _make_table(self, rng: np.random.Generator) -> np.ndarray:
        """``(H, W, 3) float`` wood-like table with seeded hue and grain."""
        size = self.config.view_size
        base = np.array((165, 125, 85), dtype=np.float64) + rng.uniform(-15, 15, 3)
        ys = (np.arange(size) + 0.5) / size * TABLE_UNITS
        phase, freq = rng.uniform(0, 2 * np.pi), rng.uniform(0.6, 1.1)
        grain = 9.0 * np.sin(ys * freq + phase + 1.5 * np.sin(ys * 0.21))  # horizontal wood grain
        table = np.broadcast_to(base, (size, size, 3)) + grain[:, None, None]
        border = self.config.margin * size / TABLE_UNITS
        coords = np.arange(size) + 0.5
        inside = (
            (coords[:, None] > border)
            & (coords[:, None] < size - border)
            & (coords[None] > border)
            & (coords[None] < size - border)
        )
        return np.where(inside[..., None], table, table * 0.6)

    def render(self, state: np.ndarray) -> np.ndarray:
        """The ``(H, W, 3) uint8`` top-down view of ``state``: table, blocks, then the gripper on top."""
        size = self.config.view_size
        scale = size / TABLE_UNITS  # pixels per table unit
        centres = (np.arange(size) + 0.5) / scale  # pixel centres in table units
        py, px = np.meshgrid(centres, centres, indexing="ij")
        image = self._table.copy()
        half = self.config.block_size / 2
        for i, colour in enumerate(self.config.colours):
            bx, by = state[1 + i]
            sdf = (np.maximum(np.abs(px - bx), np.abs(py - by)) - half) * scale  # in pixels
            fill = np.array(_BLOCK_RGB[colour], dtype=np.float64)
            image = _composite(image, sdf, fill, fill * 0.45, outline=max(1.0, scale))
        gx, gy = state[0]
        ring = (np.hypot(px - gx, py - gy) - 2.5) * scale
        image = _composite(image, ring, _GRIPPER_RGB, _GRIPPER_RGB, outline=0.0)
        dot = (np.hypot(px - gx, py - gy) - 0.9) * scale
        image = _composite(image, dot, _GRIPPER_CENTRE_RGB, _GRIPPER_CENTRE_RGB, outline=0.0)
        return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _composite(
    image: np.ndarray, sdf: np.ndarray, fill: np.ndarray, outline_rgb: np.ndarray, outline: float
) -> np.ndarray:
    """Draw an anti-aliased shape given its signed distance in pixels, with an ``outline``-pixel border."""
    shape_alpha = np.clip(0.5 - sdf, 0.0, 1.0)[..., None]  # (H, W, 1)
    fill_alpha = np.clip(0.5 - (sdf + outline), 0.0, 1.0)[..., None]
    return image * (1.0 - shape_alpha) + outline_rgb * (shape_alpha - fill_alpha) + fill * fill_alpha
