"""Inverse dynamics: which primitive action a chunk of frames shows (paper §3.4, after AVDC / UniPi).

A video plan is a sequence of generated chunks; an *inverse dynamics model* (IDM) turns each
chunk into the action a robot or camera must execute. Every reader here has one signature,
``read(chunk) -> ActionReading``, where ``chunk`` is ``(1 + K, H, W, 3) uint8``: ``chunk[0]``
is the frame *before* the action (the previous chunk's last frame) and ``chunk[1:]`` the ``K``
frames the action produced (the layout of :func:`slowfast_vgen.metrics.action_chunks`).

* :class:`InverseDynamicsModel` — the learned IDM: a small CNN that looks at the **first and
  last frame of the chunk** (``chunk[0]``, ``chunk[-1]``), stacked with their difference, and
  returns a distribution over the world's primitives plus the continuous displacement of what
  moved. First/last rather than two consecutive frames because the primitive is a chunk-level
  label: a block push first moves only the gripper (approach) and then the block, and on
  generated frames one noisy pair would decide the whole action. A diffusers
  ``ModelMixin``/``ConfigMixin``: ``save_pretrained`` writes ``config.json`` + safetensors,
  :func:`load_idm` refuses pickle.
* :class:`ShiftSearchIDM` — navigation without learning: the exhaustive integer-shift search of
  :mod:`slowfast_vgen.metrics.motion` over consecutive frame pairs (exact on rendered frames).
* :class:`ColourTrackingIDM` — blocks without learning: each block's colour centroid and the
  gripper's dark ring, tracked from the first to the last frame.

Displacements are in the world's own units: navigation = camera motion ``(dx, dy)`` in pixels
of the view (x right, y down); blocks = motion of the object the primitive moves (the pushed
block, or the gripper for ``gripper <dir>``) in table units (the table is 32 units square).

Training pairs come from :class:`PairSampler`, which renders them on the fly from a pool of
procedural worlds with exact ground truth (training in :mod:`slowfast_vgen.idm_training`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .errors import UserInputError, first_line, read_json_object
from .metrics.motion import LUMA_WEIGHTS
from .worlds import BlocksConfig, BlocksWorld, NavigationWorld, build_world, world_config
from .worlds.actions import NAVIGATION_PRIMITIVES, STAY, block_primitives, gripper_primitive, push_primitive
from .worlds.navigation import camera_path

IDM_WORLDS = ("navigation", "blocks")
ANALYTIC = "analytic"
"""``--idm analytic``: :class:`ShiftSearchIDM` (navigation) or :class:`ColourTrackingIDM` (blocks)."""


@dataclasses.dataclass
class ActionReading:
    """What an IDM read from a chunk: the primitive to execute, its distribution, the displacement."""

    primitive: str
    probabilities: dict[str, float]
    displacement: tuple[float, float]  # world units (module docstring)

    @property
    def confidence(self) -> float:
        return float(self.probabilities.get(self.primitive, 0.0))


class ActionReader(Protocol):
    """Anything that reads the executed action from a chunk ``(1 + K, H, W, 3) uint8``."""

    world: str

    def read(self, chunk: np.ndarray) -> ActionReading: ...


def _check_chunk(chunk: np.ndarray) -> np.ndarray:
    chunk = np.asarray(chunk)
    if chunk.ndim != 4 or chunk.shape[-1] != 3 or chunk.shape[0] < 2:
        raise ValueError(f"a chunk is (1 + K, H, W, 3) with K >= 1, got {tuple(chunk.shape)}")
    return chunk


def _direction_of(dx: float, dy: float) -> str:
    """The dominant axis and sign of ``(dx, dy)`` (x wins ties), as ``left|right|up|down``."""
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


# ---------------------------------------------------------------------------- the learned IDM
class InverseDynamicsModel(ModelMixin, ConfigMixin):
    """First and last frame of a chunk -> primitive logits and a displacement (module docstring).

    Input ``(B, 9, H, W)``: first frame, last frame and their difference, each ``(B, 3, H, W)``
    in ``[-1, 1]``. A stem convolution and one stride-2 convolution per further entry of
    ``channels`` (GroupNorm + SiLU), flattened (the spatial layout says where things moved),
    an MLP, then two heads: ``logits`` over ``primitives`` and ``displacement / displacement_scale``.
    """

    @register_to_config
    def __init__(
        self,
        world: str = "navigation",
        primitives: Sequence[str] = NAVIGATION_PRIMITIVES,
        image_size: int = 32,
        frames_per_action: int = 8,
        displacement_scale: float = 16.0,
        world_overrides: Sequence[str] = (),
        channels: Sequence[int] = (32, 64, 128, 128),
        hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        if world not in IDM_WORLDS:
            raise ValueError(f"world must be one of {IDM_WORLDS}, got {world!r}")
        if len(primitives) < 2 or len(set(primitives)) != len(primitives):
            raise ValueError(f"primitives must name at least two distinct primitives, got {list(primitives)}")
        if image_size < 8 or image_size % 2 ** (len(channels) - 1):
            raise ValueError(f"image_size {image_size} must be >= 8 and divisible by {2 ** (len(channels) - 1)}")
        if not channels or min(channels) < 1 or not 0 < displacement_scale < float("inf"):  # nan: every step None
            raise ValueError(f"need channels >= 1 and a finite displacement_scale > 0, got {list(channels)}, "
                             f"{displacement_scale}")
        if hidden_dim < 1:  # 0 trained a model that never reads anything; -5 was a tensor-size traceback
            raise ValueError(f"hidden_dim must be >= 1, got {hidden_dim}")
        if image_size // 2 ** (len(channels) - 1) < 2:  # GroupNorm cannot normalise a 1x1 map in training
            raise ValueError(f"image_size {image_size} leaves a {image_size // 2 ** (len(channels) - 1)}-pixel map after "
                             f"{len(channels) - 1} halvings; use a larger image_size or fewer channels")
        layers: list[nn.Module] = []
        in_channels = 9
        for i, width in enumerate(channels):
            layers += [nn.Conv2d(in_channels, width, 3, stride=1 if i == 0 else 2, padding=1),
                       nn.GroupNorm(min(8, width), width), nn.SiLU()]
            in_channels = width
        self.features = nn.Sequential(*layers)
        side = image_size // 2 ** (len(channels) - 1)
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * side * side, hidden_dim), nn.SiLU())
        self.classify = nn.Linear(hidden_dim, len(primitives))
        self.regress = nn.Linear(hidden_dim, 2)

    def forward(self, first: torch.Tensor, last: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``first``, ``last`` ``(B, 3, H, W)`` in ``[-1, 1]`` -> logits ``(B, P)``, normalised displacement ``(B, 2)``."""
        x = torch.cat([first, last, last - first], dim=1)  # 3 x (B, 3, H, W) -> (B, 9, H, W)
        hidden = self.mlp(self.features(x))  # (B, C, h, w) -> (B, hidden)
        return self.classify(hidden), self.regress(hidden)

    @property
    def world(self) -> str:
        return self.config.world

    @torch.no_grad()
    def read(self, chunk: np.ndarray) -> ActionReading:
        """The primitive shown by ``chunk`` (``(1 + K, H, W, 3) uint8``), from its first and last frame."""
        chunk = _check_chunk(chunk)
        size = self.config.image_size
        if chunk.shape[1:3] != (size, size):
            raise UserInputError(f"this IDM reads {size}x{size} frames, got {chunk.shape[2]}x{chunk.shape[1]}")
        pair = torch.from_numpy(np.ascontiguousarray(chunk[[0, -1]])).float().div(127.5).sub(1.0)
        pair = pair.permute(0, 3, 1, 2).to(self.device, self.dtype)  # (2, H, W, 3) -> (2, 3, H, W)
        was_training = self.training
        self.eval()
        logits, displacement = self(pair[:1], pair[1:])
        self.train(was_training)
        probabilities = logits[0].float().softmax(-1).cpu().tolist()
        best = int(np.argmax(probabilities))
        dx, dy = (displacement[0].float().cpu() * self.config.displacement_scale).tolist()
        return ActionReading(self.config.primitives[best], dict(zip(self.config.primitives, probabilities)), (dx, dy))


def load_idm(path: str | Path, device: str | torch.device = "cpu") -> InverseDynamicsModel:
    """Load a saved :class:`InverseDynamicsModel` directory (safetensors only) with user-facing errors."""
    from .model import _align_tensors, _check_weights_loaded, safetensors_only_kwargs

    path = Path(path)
    if not path.is_dir() or not (path / "config.json").is_file():
        raise UserInputError(f"no inverse dynamics model at {path} (expected a directory with config.json)")
    kwargs = safetensors_only_kwargs(path)  # refuses pickle-only weights
    try:
        read_json_object(path / "config.json")  # a list there: diffusers took it for a hub name and went online
    except (OSError, ValueError) as err:
        raise UserInputError(f"cannot load inverse dynamics model from {path}: config.json: {first_line(err)}") from None
    try:
        model = InverseDynamicsModel.from_pretrained(path, **kwargs)
    except Exception as err:  # a damaged config.json fails anywhere in the constructor (e.g. TypeError)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserInputError(f"cannot load inverse dynamics model from {path}: {first}") from None
    _check_weights_loaded(model, f"cannot load inverse dynamics model from {path}")  # e.g. another network's
    _align_tensors(model)  # exact round trip (see model._align_tensors)
    return model.to(device).eval()


# ---------------------------------------------------------------------------- analytic readers
class ShiftSearchIDM:
    """Navigation IDM without learning: the net content shift of the chunk, summed over consecutive pairs.

    The camera moves opposite to the content; :func:`~slowfast_vgen.metrics.motion.motion_direction`
    classifies it (``stay`` below ``stay_threshold`` px/frame). Exact on rendered frames.
    """

    world = "navigation"

    def __init__(self, stay_threshold: float = 0.5, max_shift: int | None = None) -> None:
        self.stay_threshold, self.max_shift = stay_threshold, max_shift

    def read(self, chunk: np.ndarray) -> ActionReading:
        from .metrics.motion import chunk_displacement, motion_direction

        chunk = _check_chunk(chunk)
        primitive = motion_direction(chunk, self.stay_threshold, self.max_shift)
        dx, dy = chunk_displacement(chunk, self.max_shift)
        probabilities = {p: float(p == primitive) for p in NAVIGATION_PRIMITIVES}
        return ActionReading(primitive, probabilities, (float(-dx), float(-dy)))  # camera = -content


_GRIPPER_MAX_LEVEL, _GRIPPER_MAX_SPREAD = 130, 30  # the gripper ring is dark and grey; table and outlines are coloured


@functools.lru_cache(maxsize=8)  # two kernels per view size, read for every frame
def _disc_kernel(r_in: float, r_out: float, scale: float) -> tuple[torch.Tensor, int]:
    """A normalised annulus ``r_in <= d <= r_out`` (table units) as a ``(1, 1, 2n+1, 2n+1)`` kernel, and ``n``."""
    n = int(np.ceil(r_out * scale)) + 1
    ys, xs = np.mgrid[-n:n + 1, -n:n + 1] / scale
    distance = np.hypot(xs, ys)
    kernel = ((distance >= r_in) & (distance <= r_out)).astype(np.float64)
    return torch.from_numpy(kernel / kernel.sum())[None, None], n


def gripper_centre(frame: np.ndarray, min_contrast: float = 40.0) -> np.ndarray | None:
    """``(x, y)`` in table units of the gripper in an ``(H, W, 3)`` frame of at least 32 px, or None.

    The gripper is the one bright grey dot inside a dark ring; this finds the strongest
    *dot minus ring* contrast of the frame's luma (the dot's mean within 0.9 units, minus the ring's
    mean at 1.6-3 units), then refines the centre around it. Luma is what H.264 keeps at full
    resolution: on decoded videos the ring's colour is smeared by 4:2:0 chroma subsampling, where
    a darkness-and-greyness test lost the gripper in about a third of the moves.
    """
    scale = frame.shape[1] / 32.0  # pixels per table unit
    luma = torch.from_numpy(frame.astype(np.float64) @ np.array(LUMA_WEIGHTS))[None, None]
    contrast = torch.zeros(frame.shape[:2], dtype=torch.float64)
    for (r_in, r_out), sign in (((0.0, 0.9), 1.0), ((1.6, 3.0), -1.0)):
        kernel, n = _disc_kernel(r_in, r_out, scale)
        padded = torch.nn.functional.pad(luma, (n, n, n, n), mode="replicate")
        contrast += sign * torch.nn.functional.conv2d(padded, kernel)[0, 0]
    contrast = contrast.numpy()
    iy, ix = np.unravel_index(np.argmax(contrast), contrast.shape)
    if contrast[iy, ix] < min_contrast:
        return None
    ys, xs = np.indices(contrast.shape)
    weights = (np.hypot(xs - ix, ys - iy) <= 1.5 * scale) * np.clip(contrast - contrast[iy, ix] / 2, 0, None)
    return np.array([((xs + 0.5) * weights).sum(), ((ys + 0.5) * weights).sum()]) / weights.sum() / scale


def _chromaticity(rgb: np.ndarray) -> np.ndarray:
    """``rgb / (r + g + b)``: unchanged by shading, so a block's fill and its darker outline match."""
    return rgb / np.maximum(rgb.sum(-1, keepdims=True), 1.0)


class ColourTrackingIDM:
    """Blocks IDM without learning: colour centroids of every block, and the gripper's centre.

    Blocks are found by chromaticity (fill and outline share it; at 16x16 a block is mostly
    outline), weighted by closeness so antialiased edges count partly. The gripper is found by
    :func:`gripper_centre` (its bright dot inside the dark ring, in luma) in views of 32 px and
    more, and as the centroid of dark grey pixels in smaller ones. The block that moved
    farthest (at least ``min_fraction`` of a push) was pushed along its dominant axis; otherwise
    a gripper that moved that far moved on its own; otherwise ``stay``.
    """

    world = "blocks"

    def __init__(self, config: BlocksConfig | None = None, chroma_tolerance: float = 0.07, min_fraction: float = 0.4) -> None:
        from .worlds.blocks import _BLOCK_RGB

        self.config = config or BlocksConfig()
        self.colours = self.config.colours
        self._chroma = {c: _chromaticity(np.array(_BLOCK_RGB[c], np.float64)) for c in self.colours}
        self.chroma_tolerance, self.min_fraction = chroma_tolerance, min_fraction

    def _centroid(self, weights: np.ndarray) -> np.ndarray | None:
        """Weighted centroid ``(x, y)`` in table units of an ``(H, W)`` weight map; None when empty."""
        total = weights.sum()
        if total < 0.5:
            return None
        ys, xs = np.indices(weights.shape)
        units = 32.0 / weights.shape[1]  # table units per pixel
        return np.array([((xs + 0.5) * weights).sum() / total, ((ys + 0.5) * weights).sum() / total]) * units

    def _positions(self, frame: np.ndarray) -> dict[str, np.ndarray | None]:
        rgb = frame.astype(np.float64)
        chroma, lit = _chromaticity(rgb), rgb.sum(-1) > 45  # very dark pixels have no reliable colour
        found = {c: self._centroid(np.clip(1 - np.linalg.norm(chroma - self._chroma[c], axis=-1) / self.chroma_tolerance, 0, 1) * lit)
                 for c in self.colours}
        if frame.shape[1] >= 32:  # the dot is resolved: luma contrast, right on decoded videos too
            found["gripper"] = gripper_centre(frame)
        else:  # smaller views blur the dot away: the dark grey ring's centroid
            level, spread = rgb.max(-1), rgb.max(-1) - rgb.min(-1)  # the ring is dark and grey: (55, 55, 60)
            dark = np.clip((_GRIPPER_MAX_LEVEL - level) / 40.0, 0, 1) * np.clip((_GRIPPER_MAX_SPREAD - spread) / 12.0, 0, 1)
            found["gripper"] = self._centroid(dark)
        return found

    def read(self, chunk: np.ndarray) -> ActionReading:
        chunk = _check_chunk(chunk)
        before, after = self._positions(chunk[0]), self._positions(chunk[-1])
        moved = {name: after[name] - before[name] for name in before
                 if before[name] is not None and after[name] is not None}
        primitive, displacement = STAY, np.zeros(2)
        blocks = [(float(np.abs(d).max()), c) for c, d in moved.items() if c != "gripper"]
        if blocks and max(blocks)[0] >= self.min_fraction * self.config.push_distance:
            colour = max(blocks)[1]
            displacement = moved[colour]
            primitive = push_primitive(colour, _direction_of(*displacement))
        elif "gripper" in moved and np.abs(moved["gripper"]).max() >= self.min_fraction * self.config.gripper_step:
            displacement = moved["gripper"]
            primitive = gripper_primitive(_direction_of(*displacement))
        probabilities = {p: float(p == primitive) for p in block_primitives(self.colours)}
        return ActionReading(primitive, probabilities, (float(displacement[0]), float(displacement[1])))


def analytic_idm(world: str, config: BlocksConfig | None = None) -> ActionReader:
    """The analytic reader of ``world`` (``config``: the blocks world's, for its colours and distances)."""
    if world == "navigation":
        return ShiftSearchIDM()
    if world == "blocks":
        return ColourTrackingIDM(config)
    raise UserInputError(f"no analytic inverse dynamics for world {world!r}; choose one of {', '.join(IDM_WORLDS)}")


# ---------------------------------------------------------------------------- training pairs
@dataclasses.dataclass
class PairBatch:
    """First and last frames of chunks with their exact primitive and displacement."""

    first: torch.Tensor  # (B, 3, H, W) in [-1, 1]
    last: torch.Tensor  # (B, 3, H, W) in [-1, 1]
    labels: torch.Tensor  # (B,) index into the sampler's primitives
    displacement: torch.Tensor  # (B, 2) world units

    def to(self, device: torch.device | str) -> "PairBatch":
        return PairBatch(*(t.to(device) for t in (self.first, self.last, self.labels, self.displacement)))


class PairSampler:
    """(first, last) frame pairs of one action's chunk, rendered from a pool of procedural worlds.

    World ``w`` of the pool (``w < num_worlds``) has seed ``seed * 1_000_000 + w``, the rule of
    ``make_world.py``, so a ``seed`` below 900 never touches the evaluation worlds
    (``900_000_000 + i``) and two samplers with different seeds never share a world. Worlds are
    built once and cached. A batch is a pure function of the ``rng`` passed in. Primitives are
    drawn uniformly; navigation starts anywhere on the map, blocks after 0-6 random primitives
    from the world's initial layout.
    """

    def __init__(self, world: str, size: int, frames_per_action: int, seed: int, num_worlds: int,
                 world_overrides: Sequence[str] = ()) -> None:
        from .data.world_dataset import WORLD_SEED_STRIDE, check_training_world_seed

        if world not in IDM_WORLDS:
            raise UserInputError(f"unknown world {world!r} for an inverse dynamics model; choose {', '.join(IDM_WORLDS)}")
        if frames_per_action < 1 or num_worlds < 1 or num_worlds > WORLD_SEED_STRIDE:
            raise ValueError(f"need frames_per_action >= 1 and 1 <= num_worlds <= {WORLD_SEED_STRIDE}, "
                             f"got {frames_per_action}, {num_worlds}")
        check_training_world_seed(seed, num_worlds)
        self.world_name, self.size, self.frames_per_action = world, size, frames_per_action
        self.seed, self.num_worlds = seed, num_worlds
        self.world_overrides = [f"view_size={size}", *world_overrides]
        self.world_config = world_config(world, self.world_overrides)
        self._worlds: dict[int, NavigationWorld | BlocksWorld] = {}
        probe = self.world(0)
        self.primitives: tuple[str, ...] = tuple(probe.primitives)
        if world == "navigation":
            self.displacement_scale = float(frames_per_action * probe.speed)
        else:
            self.displacement_scale = float(max(self.world_config.push_distance, self.world_config.gripper_step))

    def world(self, index: int) -> NavigationWorld | BlocksWorld:
        from .data.world_dataset import world_seed

        if index not in self._worlds:
            self._worlds[index] = build_world(self.world_name, world_seed(self.seed, index), config=self.world_config)
        return self._worlds[index]

    def sample(self, rng: np.random.Generator, full: bool = False) -> tuple[np.ndarray, str, np.ndarray]:
        """One chunk drawn with ``rng``: ``(frames, primitive, displacement)``.

        ``frames`` is the whole chunk ``(1 + K, H, W, 3) uint8`` with ``full``, else only its first
        and last frame ``(2, H, W, 3)`` (what the learned IDM reads; the same draws either way).
        In the blocks world an action that moves nothing (a push into another block or the table's
        edge, a gripper move at the edge) is redrawn: its label could not be read from any frames.
        """
        world = self.world(int(rng.integers(self.num_worlds)))
        primitive = self.primitives[int(rng.integers(len(self.primitives)))]
        k = self.frames_per_action
        if isinstance(world, NavigationWorld):
            path = camera_path(rng.integers(0, world.map_size, size=2), [primitive], k, world.speed)  # (1 + K, 2)
            frames = np.stack([world.render(p) for p in (path if full else path[[0, -1]])])
            return frames, primitive, (path[-1] - path[0]).astype(np.float64)
        state = world.initial_state
        for previous in world.random_script(rng, int(rng.integers(0, 7))):
            state = world.simulate(state, previous, 1)[-1]
        while True:
            states = np.concatenate([state[None], world.simulate(state, primitive, k)])  # (1 + K, 1 + B, 2)
            words = primitive.split()  # the moving object: the pushed block, the gripper, or nothing
            row = 1 + world.config.colours.index(words[1]) if words[0] == "push" else 0
            displacement = (states[-1, row] - states[0, row]).astype(np.float64) if primitive != STAY else np.zeros(2)
            if primitive == STAY or displacement.any():
                break
            # a push against a block or the table's edge, or a gripper move at the edge, moves nothing: no reader
            # can tell it from the frames, so it is no pair to learn or score; draw another action (stay ends it)
            primitive = self.primitives[int(rng.integers(len(self.primitives)))]
        frames = np.stack([world.render(s) for s in (states if full else states[[0, -1]])])
        return frames, primitive, displacement

    def batch(self, rng: np.random.Generator, batch_size: int) -> PairBatch:
        """``batch_size`` pairs drawn with ``rng`` (a pure function of its state)."""
        pairs, labels, displacements = [], [], []
        for _ in range(batch_size):
            frames, primitive, displacement = self.sample(rng)
            pairs.append(frames), labels.append(self.primitives.index(primitive)), displacements.append(displacement)
        pixels = torch.from_numpy(np.stack(pairs)).float().div(127.5).sub(1.0)  # (B, 2, H, W, 3)
        pixels = pixels.permute(1, 0, 4, 2, 3).contiguous()  # (B, 2, H, W, 3) -> (2, B, 3, H, W)
        return PairBatch(pixels[0], pixels[1], torch.tensor(labels, dtype=torch.long),
                         torch.from_numpy(np.stack(displacements)).float())


def evaluate_reader(reader: ActionReader, sampler: PairSampler, chunks: int, seed: int = 0) -> dict:
    """Accuracy of ``reader`` on ``chunks`` exact chunks from ``sampler``'s worlds, overall and per primitive.

    Readers get whole ``(1 + K)``-frame chunks, so learned and analytic readers see the same input.
    """
    rng = np.random.default_rng(seed)
    correct: dict[str, list[bool]] = {p: [] for p in sampler.primitives}
    errors = []
    for _ in range(chunks):
        frames, primitive, displacement = sampler.sample(rng, full=True)
        reading = reader.read(frames)
        correct[primitive].append(reading.primitive == primitive)
        errors.append(float(np.abs(np.asarray(reading.displacement) - displacement).mean()))
    everything = [c for values in correct.values() for c in values]
    return {
        "chunks": chunks,
        "accuracy": float(np.mean(everything)),
        "chance": 1.0 / len(sampler.primitives),
        "per_primitive": {p: (float(np.mean(v)) if v else None) for p, v in correct.items()},
        "displacement_mae": float(np.mean(errors)),
        "displacement_units": "pixels" if sampler.world_name == "navigation" else "table units",
    }


__all__ = [
    "ANALYTIC", "ActionReader", "ActionReading", "ColourTrackingIDM", "IDM_WORLDS", "InverseDynamicsModel",
    "PairBatch", "PairSampler", "ShiftSearchIDM", "analytic_idm", "evaluate_reader", "load_idm",
]  # fmt: skip
