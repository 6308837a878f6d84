"""Navigation world: a camera flying over a procedurally generated, wrapping 2-D map.

Each seed gives one toroidal map, ``map_scale`` views wide and high, made of smooth coloured
regions (terrain-like palette, wavy borders, medium-frequency brightness texture) and
distinctive landmarks (filled, outlined shapes of several kinds and colours). The map wraps
around, so any route is valid and no camera ever hits a wall; the landmarks make a revisit
checkable and the texture makes a blurry guess visibly wrong, while the content stays simple
enough for a small diffusion model at 32x32.

Geometry scales with ``view_size`` (a 64x64 view sees the same map as a 32x32 view, at twice
the resolution); the camera moves a whole number of pixels per frame, so ground truth is exact:
the camera position (top-left corner of the view, ``(x, y)`` in map pixels) is known for every
frame, ``"move right"`` shifts the view content left by exactly ``speed`` pixels per frame, and
a route that returns to its start ends on a frame byte-identical to its first.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import numpy as np

from ..config import help_field
from .actions import DIRECTION_VECTORS, NAVIGATION_PRIMITIVES, OPPOSITE, STAY
from .base import Episode, check_primitives

ROUTE_KINDS: tuple[str, ...] = ("random", "return_to_start", "return_to_waypoint")

# Muted terrain colours for background regions (RGB).
_TERRAIN = np.array(
    [
        (96, 140, 70),
        (52, 98, 60),
        (204, 186, 130),
        (70, 120, 170),
        (140, 100, 70),
        (128, 128, 128),
        (215, 220, 228),
        (170, 90, 70),
        (120, 150, 90),
        (140, 120, 170),
        (60, 140, 130),
        (180, 150, 60),
    ],
    dtype=np.float32,
)
# Saturated landmark colours (RGB), distinct from the terrain.
_LANDMARK_COLOURS = np.array(
    [
        (225, 35, 35),
        (250, 215, 30),
        (30, 210, 230),
        (215, 50, 205),
        (250, 250, 250),
        (250, 135, 20),
        (35, 60, 230),
        (25, 25, 25),
    ],
    dtype=np.float32,
)
LANDMARK_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "ring")


MAX_MAP_PIXELS = 8192
"""Widest map a world renders (its noise fields are float arrays of this side squared)."""
MAX_MAP_ITEMS = 10_000
"""Most regions or landmarks on one map (their placement is quadratic in the count: 10**8 hung make_world)."""
MAX_LANDMARK_RADIUS = 16.0
"""Largest landmark radius in pixels of a 32x32 view (half the view; 1e30 was a traceback or a 298 GiB array)."""


@dataclasses.dataclass
class NavigationConfig:
    """Typed config of the navigation world (all sizes in pixels of a 32x32 view unless noted)."""

    view_size: int = help_field(32, "height and width of the camera view in pixels (32 and 64 are tested)")
    map_scale: int = help_field(8, "the wrapping map is map_scale x map_scale views large")
    speed: Optional[int] = help_field(
        None, "camera speed in whole pixels per frame; None = view_size // 16 (2 at 32x32)"
    )
    num_regions: int = help_field(28, "number of coloured background regions on the map")
    num_landmarks: int = help_field(44, "number of landmarks (coloured outlined shapes) on the map")
    landmark_radius_min: float = help_field(4.0, "smallest landmark radius, in pixels of a 32x32 view")
    landmark_radius_max: float = help_field(7.0, "largest landmark radius, in pixels of a 32x32 view")
    texture_strength: float = help_field(14.0, "amplitude of the brightness texture, in uint8 grey levels")
    revisit_fraction: float = help_field(
        0.6, "fraction of sampled episodes that are revisit routes (the rest are random walks)"
    )

    def __post_init__(self) -> None:
        if self.view_size < 8 or self.view_size % 2:
            raise ValueError(f"view_size must be an even number >= 8, got {self.view_size}")
        if self.map_scale < 2:
            raise ValueError(f"map_scale must be >= 2 (the map must be larger than the view), got {self.map_scale}")
        if self.map_scale * self.view_size > MAX_MAP_PIXELS:
            raise ValueError(f"the map is map_scale x view_size = {self.map_scale * self.view_size} pixels wide; at most "
                             f"{MAX_MAP_PIXELS} fit in memory: lower map_scale")
        if self.speed is not None and not 0 < self.speed < self.view_size:
            raise ValueError(f"speed must be in [1, view_size - 1] pixels per frame, got {self.speed}")
        if not (1 <= self.num_regions <= MAX_MAP_ITEMS and 0 <= self.num_landmarks <= MAX_MAP_ITEMS):
            raise ValueError(f"need num_regions in [1, {MAX_MAP_ITEMS}] and num_landmarks in [0, {MAX_MAP_ITEMS}] (the "
                             f"placement is quadratic in them), got {self.num_regions}, {self.num_landmarks}")
        if not 1.0 <= self.landmark_radius_min <= self.landmark_radius_max <= MAX_LANDMARK_RADIUS:
            raise ValueError(
                f"need 1 <= landmark_radius_min <= landmark_radius_max <= {MAX_LANDMARK_RADIUS:g} (half a 32x32 view), "
                f"got {self.landmark_radius_min}, {self.landmark_radius_max}"
            )
        if not 0 <= self.texture_strength < math.inf:  # NaN rendered a black map, inf a black-and-white one
            raise ValueError(f"texture_strength must be a finite number >= 0, got {self.texture_strength}")
        if not 0.0 <= self.revisit_fraction <= 1.0:
            raise ValueError(f"revisit_fraction must be in [0, 1], got {self.revisit_fraction}")

    @property
    def resolved_speed(self) -> int:
        return self.speed if self.speed is not None else max(1, self.view_size // 16)


# ---- routes (pure functions of primitives; independent of the map) ---------------------------


@dataclasses.dataclass
class Route:
    """A primitive sequence plus the places it revisits.

    ``revisits`` holds ``(first, later)`` action-boundary indices (``j`` = the position after
    ``j`` actions, which is frame ``j * K`` of the rollout) where the camera is back exactly at
    a place it had left; ``first`` is the place's first visit (see :func:`find_revisits`), the
    most recent earlier visit is :meth:`last_visits`.
    """

    kind: str
    primitives: list[str]
    revisits: list[tuple[int, int]]

    def revisit_frames(self, frames_per_action: int) -> list[tuple[int, int]]:
        """``revisits`` as ``(first_frame, later_frame)`` indices of a rollout with K frames per action."""
        return [(i * frames_per_action, j * frames_per_action) for i, j in self.revisits]

    def last_visits(self) -> list[int]:
        """Per ``revisits`` pair, the boundary of the most recent earlier visit (:func:`last_visits`)."""
        return last_visits(self.primitives, self.revisits)

    def last_visit_frames(self, frames_per_action: int) -> list[int]:
        """:meth:`last_visits` as frame indices of a rollout with K frames per action."""
        return [i * frames_per_action for i in self.last_visits()]


def step_displacements(primitives: Sequence[str]) -> np.ndarray:
    """``(M, 2)`` int displacement ``(dx, dy)`` of each navigation primitive, in steps."""
    check_primitives(primitives, NAVIGATION_PRIMITIVES, "navigation")
    out = np.zeros((len(primitives), 2), dtype=np.int64)
    for i, p in enumerate(primitives):
        if p != STAY:
            out[i] = DIRECTION_VECTORS[p.split()[1]]
    return out


def find_revisits(primitives: Sequence[str]) -> list[tuple[int, int]]:
    """``(first, later)`` boundary pairs where the camera returns to a place it had left.

    Positions are compared on the unwrapped plane (a lap around the torus is not a revisit).
    For each later boundary the place's FIRST visit (the earliest matching earlier boundary) is
    reported, the reference a revisit is compared with, and only if the camera was somewhere
    else in between (standing still is not a revisit). When a route passes a place three or
    more times, every later pass is paired with the first one; how long ago the place was last
    seen (the recency of the revisit) is measured from :func:`last_visits`, not from ``first``.
    """
    boundaries = _boundaries(primitives)
    pairs: list[tuple[int, int]] = []
    for later in range(1, len(boundaries)):
        for first in range(later):
            if np.array_equal(boundaries[first], boundaries[later]):
                between = boundaries[first + 1 : later]
                if len(between) and np.any(np.any(between != boundaries[later], axis=1)):
                    pairs.append((first, later))
                break
    return pairs


def _boundaries(primitives: Sequence[str]) -> np.ndarray:
    """``(M + 1, 2)`` unwrapped position (in steps) at every action boundary, starting at 0."""
    return np.concatenate([np.zeros((1, 2), np.int64), np.cumsum(step_displacements(primitives), axis=0)])


def last_visits(primitives: Sequence[str], pairs: Sequence[Sequence[int]]) -> list[int]:
    """Per ``(first, later)`` revisit pair, the most recent earlier boundary at the same place.

    This is the boundary the place was last seen at before ``later`` (``first`` itself when the
    place was seen only once before), so ``later - last`` is the revisit's recency in actions:
    on a route that doubles back past a place three times, the third pass is measured from the
    second, not from the first. A camera that stood still at the place right before ``later``
    saw it one action ago.
    """
    boundaries = _boundaries(primitives)
    out = []
    for first, later in pairs:
        first, later = int(first), int(later)
        if not 0 <= first < later < len(boundaries) or not np.array_equal(boundaries[first], boundaries[later]):
            raise ValueError(f"({first}, {later}) is not a revisit pair of a route of {len(primitives)} actions")
        out.append(max(k for k in range(first, later) if np.array_equal(boundaries[k], boundaries[later])))
    return out


def _walk(rng: np.random.Generator, num_actions: int, stay_prob: float, persistence: float) -> list[str]:
    """A persistent random walk: repeat the last direction with probability ``persistence``."""
    moves = [p for p in NAVIGATION_PRIMITIVES if p != STAY]
    out: list[str] = []
    last: str | None = None
    for _ in range(num_actions):
        if stay_prob > 0 and rng.random() < stay_prob:
            out.append(STAY)
            continue
        if last is not None and rng.random() < persistence:
            out.append(last)
        else:
            last = moves[int(rng.integers(len(moves)))]
            out.append(last)
    return out


def _retrace(primitives: Sequence[str]) -> list[str]:
    """The primitives that undo ``primitives``: reversed order, opposite directions."""
    return [p if p == STAY else f"move {OPPOSITE[p.split()[1]]}" for p in reversed(primitives)]


def random_walk_route(
    rng: np.random.Generator, num_actions: int, stay_prob: float = 0.1, persistence: float = 0.6
) -> Route:
    """A persistent random walk of ``num_actions`` primitives (revisits found, not planned)."""
    primitives = _walk(rng, num_actions, stay_prob, persistence)
    return Route("random", primitives, find_revisits(primitives))


def return_to_start_route(rng: np.random.Generator, num_actions: int) -> Route:
    """Go out for ``num_actions // 2`` moves, then retrace them back to the start.

    With an odd ``num_actions`` the camera stays still once at the turning point; the final
    position always equals the start, so the last frame equals the first frame exactly.
    """
    if num_actions < 2:
        raise ValueError(f"a return route needs at least 2 actions, got {num_actions}")
    out = _walk(rng, num_actions // 2, stay_prob=0.0, persistence=0.6)
    turn = [STAY] if num_actions % 2 else []
    primitives = out + turn + _retrace(out)
    return Route("return_to_start", primitives, find_revisits(primitives))


def return_to_waypoint_route(rng: np.random.Generator, num_actions: int) -> Route:
    """Walk to a waypoint, make an excursion, retrace it back to the waypoint, then walk on."""
    if num_actions < 3:
        raise ValueError(f"a waypoint route needs at least 3 actions, got {num_actions}")
    excursion = max(1, num_actions // 3)
    prefix = int(rng.integers(0, num_actions - 2 * excursion + 1))
    suffix = num_actions - 2 * excursion - prefix
    head = _walk(rng, prefix, stay_prob=0.1, persistence=0.6)
    away = _walk(rng, excursion, stay_prob=0.0, persistence=0.6)
    tail = _walk(rng, suffix, stay_prob=0.1, persistence=0.6)
    primitives = head + away + _retrace(away) + tail
    return Route("return_to_waypoint", primitives, find_revisits(primitives))


def camera_path(start: Sequence[int], primitives: Sequence[str], frames_per_action: int, speed: int) -> np.ndarray:
    """``(1 + M*K, 2)`` unwrapped camera positions ``(x, y)``: the start, then K frames per action."""
    if frames_per_action < 1:
        raise ValueError(f"frames_per_action must be >= 1, got {frames_per_action}")
    per_frame = np.repeat(step_displacements(primitives) * speed, frames_per_action, axis=0)  # (M*K, 2)
    origin = np.asarray(start, dtype=np.int64).reshape(1, 2)
    return np.concatenate([origin, origin + np.cumsum(per_frame, axis=0)])


# ---- map generation ---------------------------------------------------------------------------


def _periodic_noise(rng: np.random.Generator, size: int, min_freq: int, max_freq: int, power: float) -> np.ndarray:
    """Zero-mean, unit-std band-limited noise on a ``size x size`` torus.

    The random Fourier coefficients are drawn for integer frequencies (cycles per map) in
    ``[min_freq, max_freq]``, independent of ``size``, so the same seed gives the same field at
    every resolution.
    """
    max_freq = min(max_freq, size // 2 - 1)  # only tiny maps are affected (avoid aliasing)
    freqs = np.arange(-max_freq, max_freq + 1)
    ky, kx = np.meshgrid(freqs, freqs, indexing="ij")
    radius = np.hypot(kx, ky)
    coef = (rng.standard_normal(kx.shape) + 1j * rng.standard_normal(kx.shape)) * np.where(
        (radius >= min_freq) & (radius <= max_freq), np.maximum(radius, 1.0) ** -power, 0.0
    )
    spectrum = np.zeros((size, size), dtype=np.complex128)
    spectrum[ky % size, kx % size] = coef
    field = np.fft.ifft2(spectrum).real
    std = field.std()
    return (field - field.mean()) / (std if std > 0 else 1.0)


def _periodic_box_blur(image: np.ndarray, radius: int) -> np.ndarray:
    """Separable box blur with wrap-around edges; ``image`` is ``(S, S, C)`` float."""
    if radius <= 0:
        return image
    for axis in (0, 1):
        acc = np.zeros_like(image)
        for shift in range(-radius, radius + 1):
            acc += np.roll(image, shift, axis=axis)
        image = acc / (2 * radius + 1)
    return image


def _shape_sdf(shape: str, dx: np.ndarray, dy: np.ndarray, radius: float) -> np.ndarray:
    """Approximate signed distance (pixels, negative inside) of a landmark shape centred at 0."""
    if shape == "circle":
        return np.hypot(dx, dy) - radius
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - 0.85 * radius
    if shape == "diamond":
        return (np.abs(dx) + np.abs(dy)) / np.sqrt(2.0) - 0.8 * radius
    if shape == "triangle":  # apex up (y grows downwards); inradius 0.55 R
        r_in = 0.55 * radius
        oy = dy - 0.25 * radius  # move the centroid down so the shape is visually centred
        return np.maximum.reduce([oy, -0.866 * dx - 0.5 * oy, 0.866 * dx - 0.5 * oy]) - r_in
    if shape == "cross":
        arm = 0.34 * radius
        bar_h = np.maximum(np.abs(dx) - radius, np.abs(dy) - arm)
        bar_v = np.maximum(np.abs(dx) - arm, np.abs(dy) - radius)
        return np.minimum(bar_h, bar_v)
    if shape == "ring":
        return np.abs(np.hypot(dx, dy) - 0.7 * radius) - 0.3 * radius
    raise ValueError(f"unknown landmark shape {shape!r}")


@dataclasses.dataclass(frozen=True)
class Landmark:
    """One landmark: centre ``(x, y)`` in map pixels, shape, colour index, radius in pixels."""

    x: float
    y: float
    shape: str
    colour: int
    radius: float

    def to_json(self) -> dict:
        return {
            "x": round(self.x, 3),
            "y": round(self.y, 3),
            "shape": self.shape,
            "colour": self.colour,
            "radius": round(self.radius, 3),
        }


def _toroidal_delta(a: np.ndarray, b: float | np.ndarray, size: float) -> np.ndarray:
    """Signed shortest difference ``a - b`` on a circle of circumference ``size``."""
    return (np.asarray(a) - b + size / 2) % size - size / 2


def _place_landmarks(rng: np.random.Generator, config: NavigationConfig, size: int, unit: float) -> list[Landmark]:
    """Rejection-sample non-overlapping landmarks (bounded attempts, so generation always ends)."""
    landmarks: list[Landmark] = []
    low, high = config.landmark_radius_min, config.landmark_radius_max
    for _ in range(config.num_landmarks * 30):
        if len(landmarks) == config.num_landmarks:
            break
        radius = float(rng.uniform(low, high)) * unit
        x, y = (float(v) for v in rng.uniform(0, size, 2))
        shape = LANDMARK_SHAPES[int(rng.integers(len(LANDMARK_SHAPES)))]
        colour = int(rng.integers(len(_LANDMARK_COLOURS)))
        clear = all(  # plain floats: this loop runs ~num_landmarks^2 times
            math.hypot((x - m.x + size / 2) % size - size / 2, (y - m.y + size / 2) % size - size / 2)
            > radius + m.radius + 3 * unit
            for m in landmarks
        )
        if clear:
            landmarks.append(Landmark(x, y, shape, colour, radius))
    return landmarks


def _draw_landmark(image: np.ndarray, landmark: Landmark, unit: float) -> None:
    """Composite one anti-aliased, outlined landmark into ``image`` (``(S, S, 3)`` float), wrapping."""
    size = image.shape[0]
    half = int(np.ceil(landmark.radius + 2 * unit)) + 1
    cx, cy = int(np.floor(landmark.x)), int(np.floor(landmark.y))
    offsets = np.arange(-half, half + 1)
    dy, dx = np.meshgrid(offsets + cy + 0.5 - landmark.y, offsets + cx + 0.5 - landmark.x, indexing="ij")
    sdf = _shape_sdf(landmark.shape, dx, dy, landmark.radius)
    outline_width = max(1.0, unit)
    shape_alpha = np.clip(0.5 - sdf, 0.0, 1.0)[..., None]  # (P, P, 1)
    fill_alpha = np.clip(0.5 - (sdf + outline_width), 0.0, 1.0)[..., None]
    fill = _LANDMARK_COLOURS[landmark.colour]
    outline = fill * 0.3 if fill.sum() > 150 else np.full(3, 235.0, np.float32)
    rows, cols = (offsets + cy) % size, (offsets + cx) % size
    patch = image[np.ix_(rows, cols)]
    patch = patch * (1.0 - shape_alpha) + outline * (shape_alpha - fill_alpha) + fill * fill_alpha
    image[np.ix_(rows, cols)] = patch


def generate_map(config: NavigationConfig, seed: int) -> tuple[np.ndarray, list[Landmark]]:
    """The ``(S, S, 3) uint8`` wrapping map for ``seed`` (``S = map_scale * view_size``) and its landmarks."""
    rng = np.random.default_rng(seed)
    size = config.map_scale * config.view_size
    unit = config.view_size / 32.0
    # 1. regions: nearest of num_regions centres on the torus, borders warped by smooth noise
    centres = rng.uniform(0.0, 1.0, (config.num_regions, 2))
    colours = _TERRAIN[rng.integers(len(_TERRAIN), size=config.num_regions)] + rng.uniform(
        -14, 14, (config.num_regions, 3)
    )
    warp_x = _periodic_noise(rng, size, 1, 2 * config.map_scale, 1.0) * 0.03
    warp_y = _periodic_noise(rng, size, 1, 2 * config.map_scale, 1.0) * 0.03
    coords = (np.arange(size) + 0.5) / size
    v, u = np.meshgrid(coords, coords, indexing="ij")  # (S, S) map-fraction coordinates
    u, v = (u + warp_x) % 1.0, (v + warp_y) % 1.0
    best = np.full((size, size), np.inf)
    label = np.zeros((size, size), dtype=np.int64)
    for i, (cu, cv) in enumerate(centres):
        du, dv = np.abs(u - cu), np.abs(v - cv)
        dist = np.minimum(du, 1.0 - du) ** 2 + np.minimum(dv, 1.0 - dv) ** 2  # squared distance on the unit torus
        closer = dist < best
        best[closer], label[closer] = dist[closer], i
    image = colours[label].astype(np.float64)  # (S, S, 3)
    image = _periodic_box_blur(image, max(1, int(round(unit))))
    # 2. texture: medium-frequency brightness variation (2-6 cycles per view)
    texture = _periodic_noise(rng, size, 2 * config.map_scale, 6 * config.map_scale, 0.5)
    image += config.texture_strength * texture[..., None]
    # 3. landmarks on top
    landmarks = _place_landmarks(rng, config, size, unit)
    for landmark in landmarks:
        _draw_landmark(image, landmark, unit)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), landmarks


# ---- the world ---------------------------------------------------------------------------------


class NavigationWorld:
    """One seeded navigation map with a camera; renders exact ground-truth frames for any route."""

    name = "navigation"

    def __init__(self, config: NavigationConfig | None = None, seed: int = 0) -> None:
        self.config = config or NavigationConfig()
        self.seed = int(seed)
        self.map, self.landmarks = generate_map(self.config, self.seed)
        view = self.config.view_size
        # the map plus a wrapped copy of its first `view` rows/columns: every view is one slice
        self._padded = np.pad(self.map, ((0, view), (0, view), (0, 0)), mode="wrap")

    @property
    def primitives(self) -> tuple[str, ...]:
        return NAVIGATION_PRIMITIVES

    @property
    def map_size(self) -> int:
        """Side length of the square wrapping map, in pixels."""
        return self.map.shape[0]

    @property
    def speed(self) -> int:
        """Camera speed in whole pixels per frame."""
        return self.config.resolved_speed

    def wrap(self, position: Sequence[int] | np.ndarray) -> np.ndarray:
        """Positions reduced onto the torus, ``[0, map_size)`` per axis (any leading shape)."""
        return np.asarray(position, dtype=np.int64) % self.map_size

    def distance(self, a: Sequence[float], b: Sequence[float]) -> float:
        """Shortest Euclidean distance between two camera positions on the wrapping map, in pixels."""
        d = _toroidal_delta(np.asarray(a, float), np.asarray(b, float), float(self.map_size))
        return float(np.hypot(d[0], d[1]))

    def render(self, position: Sequence[int]) -> np.ndarray:
        """The ``(H, W, 3) uint8`` view whose top-left corner is at map pixel ``position = (x, y)``."""
        x, y = (int(v) for v in self.wrap(position))
        view = self.config.view_size
        return self._padded[y : y + view, x : x + view].copy()

    def rollout(
        self, start: Sequence[int], primitives: Sequence[str], frames_per_action: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Frames ``(1 + M*K, H, W, 3) uint8`` and wrapped camera positions ``(1 + M*K, 2)`` for a route."""
        positions = self.wrap(camera_path(start, primitives, frames_per_action, self.speed))
        frames = np.stack([self.render(p) for p in positions])
        return frames, positions

    def make_route(self, rng: np.random.Generator, num_actions: int, kind: str) -> Route:
        """A route of ``kind`` (one of :data:`ROUTE_KINDS`), falling back to simpler kinds when too short."""
        if kind == "return_to_waypoint" and num_actions >= 3:
            return return_to_waypoint_route(rng, num_actions)
        if kind in ("return_to_start", "return_to_waypoint") and num_actions >= 2:
            return return_to_start_route(rng, num_actions)
        if kind not in ROUTE_KINDS:
            raise ValueError(f"unknown route kind {kind!r}; expected one of {ROUTE_KINDS}")
        return random_walk_route(rng, num_actions)

    def sample_episode(self, rng: np.random.Generator, num_actions: int, frames_per_action: int) -> Episode:
        """A random start and a route (revisit route with probability ``revisit_fraction``), rendered."""
        if num_actions < 1:
            raise ValueError(f"num_actions must be >= 1, got {num_actions}")
        if rng.random() < self.config.revisit_fraction:
            kind = ROUTE_KINDS[1 + int(rng.integers(2))]
        else:
            kind = "random"
        route = self.make_route(rng, num_actions, kind)
        start = rng.integers(0, self.map_size, size=2)
        frames, positions = self.rollout(start, route.primitives, frames_per_action)
        meta = {
            "world": self.name,
            "world_seed": self.seed,
            "world_config": dataclasses.asdict(self.config),
            "map_size": [self.map_size, self.map_size],
            "speed": self.speed,
            "route": route.kind,
            "primitives": list(route.primitives),
            "camera_positions": positions.tolist(),
            "revisit_frames": [list(pair) for pair in route.revisit_frames(frames_per_action)],
            "landmarks": [m.to_json() for m in self.landmarks],
        }
        return Episode(frames=frames, primitives=list(route.primitives), frames_per_action=frames_per_action, meta=meta)
