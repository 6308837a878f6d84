"""Primitive actions of the procedural worlds and their free-text phrasings.

A *primitive* is the canonical, machine-readable name of an action (``"move left"``,
``"push red left"``, ``"gripper up"``, ``"stay"``); a *phrasing* is one of many free-text ways
a user might say it (``"head west"``, ``"shove the red cube to the left"``). The video model
is conditioned on phrasings, so it must learn the meaning, not one fixed string.

Every primitive's phrasings are split deterministically (by a SHA-256 hash of the text, so the
split never depends on Python's hash seed or on list order) into a *train* set and a *held-out*
set: about one phrasing in four is held out, the canonical primitive string itself is always
in the train set, and every primitive has at least one held-out phrasing. Held-out phrasings
never appear in a training manifest; they measure whether the model generalises to unseen
wordings. :func:`parse_action` maps any phrasing of either split back to its primitive (for
evaluation and planning).
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Literal

import numpy as np

PhraseSplit = Literal["train", "heldout", "all"]

DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
OPPOSITE: dict[str, str] = {"left": "right", "right": "left", "up": "down", "down": "up"}
# (dx, dy) in image coordinates: x grows to the right, y grows downwards.
DIRECTION_VECTORS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}

STAY = "stay"
NAVIGATION_PRIMITIVES: tuple[str, ...] = tuple(f"move {d}" for d in DIRECTIONS) + (STAY,)
BLOCK_COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")

HELDOUT_EVERY = 4  # about 1 phrasing in HELDOUT_EVERY is held out

# ---- phrasing templates ---------------------------------------------------------------------

_MOVE_DIRECTION_WORDS: dict[str, tuple[str, ...]] = {
    "left": ("left", "to the left", "west", "westward", "leftward"),
    "right": ("right", "to the right", "east", "eastward", "rightward"),
    "up": ("up", "upward", "north", "northward", "toward the top"),
    "down": ("down", "downward", "south", "southward", "toward the bottom"),
}
_MOVE_VERBS: tuple[str, ...] = (
    "move",
    "go",
    "walk",
    "head",
    "pan",
    "travel",
    "slide",
    "drift",
    "fly",
    "step",
    "glide",
    "move the camera",
    "pan the camera",
    "shift the view",
    "keep moving",
)
_STAY_PHRASINGS: tuple[str, ...] = (
    "stay",
    "stay still",
    "stay put",
    "wait",
    "hold still",
    "hold position",
    "don't move",
    "do nothing",
    "remain in place",
    "pause",
    "stand still",
    "keep still",
    "wait here",
    "halt",
    "stop moving",
    "remain still",
)
_TABLE_DIRECTION_WORDS: dict[str, tuple[str, ...]] = {
    "left": ("left", "to the left", "leftward"),
    "right": ("right", "to the right", "rightward"),
    "up": ("up", "upward", "toward the top"),
    "down": ("down", "downward", "toward the bottom"),
}
_PUSH_VERBS: tuple[str, ...] = ("push", "shove", "slide", "move", "nudge", "shift")
_BLOCK_NOUNS: tuple[str, ...] = ("the {c} block", "the {c} cube", "the {c} box", "the {c} one", "{c} block")
_GRIPPER_VERBS: tuple[str, ...] = ("move", "shift", "slide", "bring")
_GRIPPER_NOUNS: tuple[str, ...] = ("the gripper", "the arm", "the hand", "the robot arm")


def push_primitive(colour: str, direction: str) -> str:
    """Canonical primitive for pushing the ``colour`` block one step in ``direction``."""
    return f"push {colour} {direction}"


def gripper_primitive(direction: str) -> str:
    """Canonical primitive for moving the (empty) gripper one step in ``direction``."""
    return f"gripper {direction}"


def block_primitives(colours: tuple[str, ...] = BLOCK_COLOURS) -> tuple[str, ...]:
    """All block-world primitives for the given block colours (pushes, gripper moves, stay)."""
    pushes = tuple(push_primitive(c, d) for c in colours for d in DIRECTIONS)
    return pushes + tuple(gripper_primitive(d) for d in DIRECTIONS) + (STAY,)


def _all_primitives() -> tuple[str, ...]:
    return NAVIGATION_PRIMITIVES[:-1] + block_primitives()


def _candidate_phrasings(primitive: str) -> list[str]:
    """Every phrasing of ``primitive`` (canonical first), before the train/held-out split."""
    words = primitive.split()
    if primitive == STAY:
        return list(_STAY_PHRASINGS)
    if words[0] == "move" and len(words) == 2 and words[1] in DIRECTIONS:
        out = [primitive]
        for verb in _MOVE_VERBS:
            out += [f"{verb} {w}" for w in _MOVE_DIRECTION_WORDS[words[1]]]
        return _unique(out)
    if words[0] == "push" and len(words) == 3 and words[1] in BLOCK_COLOURS and words[2] in DIRECTIONS:
        colour, direction = words[1], words[2]
        out = [primitive]
        for verb in _PUSH_VERBS:
            for noun in _BLOCK_NOUNS:
                out += [f"{verb} {noun.format(c=colour)} {w}" for w in _TABLE_DIRECTION_WORDS[direction]]
        return _unique(out)
    if words[0] == "gripper" and len(words) == 2 and words[1] in DIRECTIONS:
        out = [primitive]
        for verb in _GRIPPER_VERBS:
            for noun in _GRIPPER_NOUNS:
                out += [f"{verb} {noun} {w}" for w in _TABLE_DIRECTION_WORDS[words[1]]]
        return _unique(out)
    raise ValueError(f"unknown primitive action {primitive!r}")


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


@functools.lru_cache(maxsize=None)
def _split_table(primitive: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(train, heldout)`` phrasings of ``primitive``; a pure function of the text, cached."""
    candidates = _candidate_phrasings(primitive)
    canonical = candidates[0]
    heldout = [p for p in candidates[1:] if _stable_hash(p) % HELDOUT_EVERY == 0]
    if not heldout and len(candidates) > 1:  # guarantee one held-out phrasing per primitive
        heldout = [min(candidates[1:], key=_stable_hash)]
    train = [p for p in candidates if p not in heldout]
    assert canonical in train
    return tuple(train), tuple(heldout)


def phrasings(primitive: str, split: PhraseSplit = "all") -> tuple[str, ...]:
    """The phrasings of ``primitive`` in ``split`` (``"train"``, ``"heldout"`` or ``"all"``)."""
    train, heldout = _split_table(primitive)
    if split == "train":
        return train
    if split == "heldout":
        return heldout
    if split == "all":
        return train + heldout
    raise ValueError(f"unknown phrasing split {split!r}; expected 'train', 'heldout' or 'all'")


def opposite_phrasing_pairs(direction: str) -> list[tuple[str, str]]:
    """``(move <direction> phrased one way, move <opposite> phrased the same way)`` for every
    navigation template (``("go westward", "go eastward")``), train and held-out phrasings alike.

    Pairs come from the templates before the train/held-out split: each direction's split is
    drawn by its own hash, so position ``i`` of two directions' :func:`phrasings` is not the same
    template.
    """
    ours, theirs = _candidate_phrasings(f"move {direction}"), _candidate_phrasings(f"move {OPPOSITE[direction]}")
    assert len(ours) == len(theirs)  # the direction words of every direction come in the same number
    return list(zip(ours, theirs))


def phrase(primitive: str, rng: np.random.Generator, split: PhraseSplit = "train") -> str:
    """A phrasing of ``primitive`` drawn uniformly from ``split`` with ``rng``."""
    options = phrasings(primitive, split)
    return options[int(rng.integers(len(options)))]


def normalize_action_text(text: str) -> str:
    """Lower-case, trim, collapse whitespace and drop trailing punctuation (``"Go West!"`` -> ``"go west"``)."""
    text = re.sub(r"\s+", " ", text.strip().lower())
    return text.rstrip(".!?,; ").replace("\u2019", "'")


@functools.lru_cache(maxsize=1)
def _phrase_index() -> dict[str, str]:
    """Map every known phrasing (both splits, all worlds) to its primitive."""
    index: dict[str, str] = {}
    for primitive in _all_primitives() + (STAY,):
        for text in phrasings(primitive, "all"):
            key = normalize_action_text(text)
            if index.get(key, primitive) != primitive:
                raise AssertionError(f"phrasing {text!r} is ambiguous: {index[key]!r} and {primitive!r}")
            index[key] = primitive
    return index


def parse_action(text: str) -> str | None:
    """The primitive that ``text`` phrases (any known phrasing, either split), or ``None``."""
    return _phrase_index().get(normalize_action_text(text))


def is_heldout_phrasing(text: str) -> bool:
    """Whether ``text`` is a held-out phrasing of some primitive."""
    primitive = parse_action(text)
    if primitive is None:
        return False
    return normalize_action_text(text) in {normalize_action_text(p) for p in phrasings(primitive, "heldout")}


def all_phrasings(split: PhraseSplit = "all") -> dict[str, tuple[str, ...]]:
    """``{primitive: phrasings}`` for every primitive of every world."""
    return {p: phrasings(p, split) for p in _all_primitives() + (STAY,)}
