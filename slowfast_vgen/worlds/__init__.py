"""Procedural action worlds with exact ground truth, chosen by name.

``navigation`` (a camera over a wrapping 2-D map with landmarks) and ``blocks`` (a gripper
pushing coloured blocks on a table). Each world has a typed config dataclass; a world instance
is fully determined by ``(config, seed)``, and renders the same bytes for the same inputs.

    world = build_world("navigation", seed=3, overrides=["speed=3"])
    episode = world.sample_episode(np.random.default_rng(0), num_actions=10, frames_per_action=8)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..config import load_config
from ..errors import UserInputError
from .base import Episode, World
from .blocks import BlocksConfig, BlocksWorld
from .navigation import NavigationConfig, NavigationWorld


@dataclasses.dataclass(frozen=True)
class WorldSpec:
    """How to build a world: its config dataclass and a ``factory(config, seed)``."""

    name: str
    config_cls: type
    factory: Callable[[Any, int], World]
    description: str


WORLDS: Mapping[str, WorldSpec] = {
    "navigation": WorldSpec(
        "navigation", NavigationConfig, NavigationWorld, "camera over a wrapping 2-D map with landmarks"
    ),
    "blocks": WorldSpec("blocks", BlocksConfig, BlocksWorld, "gripper pushing coloured blocks on a table"),
}


def available_worlds() -> list[str]:
    """Names accepted by :func:`build_world`."""
    return sorted(WORLDS)


def world_spec(name: str) -> WorldSpec:
    """The :class:`WorldSpec` registered as ``name``; :class:`UserInputError` for unknown names."""
    if not isinstance(name, str) or name not in WORLDS:  # a list from a web page: not a TypeError
        raise UserInputError(f"unknown world {name!r}; choose one of {', '.join(available_worlds())}")
    return WORLDS[name]


def world_config(name: str, overrides: Sequence[str] = ()) -> Any:
    """The config dataclass of world ``name`` with ``key=value`` overrides applied (typed, validated)."""
    return load_config(world_spec(name).config_cls, None, overrides)


def build_world(name: str, seed: int, config: Any | None = None, overrides: Sequence[str] = ()) -> World:
    """World ``name`` for ``seed``, from ``config`` (default: the config class's defaults plus ``overrides``)."""
    spec = world_spec(name)
    if config is None:
        config = world_config(name, overrides)
    elif overrides:
        raise ValueError("pass either config or overrides, not both")
    if not isinstance(config, spec.config_cls):
        raise TypeError(f"world {name!r} needs a {spec.config_cls.__name__}, got {type(config).__name__}")
    return spec.factory(config, seed)


def sets_view_size(overrides: Sequence[str]) -> bool:
    """Whether world ``key=value`` overrides set ``view_size``, which dataset and IDM configs take from
    their own frame size instead (and record as that)."""
    return any(override.split("=")[0].strip() == "view_size" for override in overrides)


def view_size_for(height: int, width: int) -> int:
    """The square view a world renders for ``height x width`` model frames: the larger side, made even.

    :func:`slowfast_vgen.data.readers.resize_center_crop` then only crops the view (whole pixels
    when ``height`` and ``width`` are even), so frames keep the world's exact geometry.
    """
    size = max(height, width)
    return size + size % 2  # worlds render even, square views


def build_world_for_frames(name: str, seed: int, height: int, width: int) -> World:
    """World ``name`` for ``seed``, rendering views of :func:`view_size_for` ``(height, width)``."""
    return build_world(name, seed, overrides=[f"view_size={view_size_for(height, width)}"])


def world_first_frame(name: str, seed: int, height: int, width: int) -> np.ndarray:
    """The first frame ``(height, width, 3) uint8`` of an episode of world ``name`` with ``seed``,
    at a model's frame size (the CLI's and the pipeline's default first frame)."""
    from ..data.readers import resize_center_crop

    episode = build_world_for_frames(name, seed, height, width).sample_episode(
        np.random.default_rng(seed), num_actions=1, frames_per_action=1
    )
    return resize_center_crop(episode.frames[:1], height, width)[0]  # (1, V, V, 3) -> (height, width, 3)


__all__ = [
    "BlocksConfig",
    "BlocksWorld",
    "Episode",
    "NavigationConfig",
    "NavigationWorld",
    "WORLDS",
    "World",
    "WorldSpec",
    "available_worlds",
    "build_world",
    "build_world_for_frames",
    "sets_view_size",
    "view_size_for",
    "world_config",
    "world_first_frame",
    "world_spec",
]
