"""Precomputed text features: the frozen text encoder runs once per unique phrasing.

A cache file is one safetensors file::

    states    (T, D) float32   the real-token states of all texts, concatenated (text i: its ``lengths[i]`` rows;
                               float16 in files written before, read as well)
    lengths   (N,)   int64     real tokens of each text
    metadata: {"format": "slowfast_vgen.text_features/1", "encoder": <fingerprint>, "texts": <JSON list>}

Rows are keyed by text. ``encoder`` is the fingerprint of the text encoder that made the
features (:func:`module_fingerprint`: a hash of its weights and tokenizer vocabulary); a
model records the fingerprint of its encoder in ``slowfast_vgen.json``, and a cache made by
another encoder is refused (rebuild it). A training machine with a cache needs neither the
encoder's package nor its weights.

Only models whose text path reads the real tokens (an action encoder, see
:mod:`.action_encoder`) can be trained from a cache: padding states are not stored.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import UserInputError
from .io_utils import atomic_output_file

FORMAT = "slowfast_vgen.text_features/1"


def hash_tensors(digest, state_dict: dict[str, torch.Tensor]) -> None:
    """Feed ``state_dict``'s tensors (names, dtypes, shapes, bytes; sorted by name) into the hashlib ``digest``."""
    for name, tensor in sorted(state_dict.items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")


def module_fingerprint(text_encoder: torch.nn.Module, tokenizer) -> str:
    """SHA-256 (32 hex digits) over a text encoder's weights (names, dtypes, bytes) and its tokenizer's vocabulary."""
    digest = hashlib.sha256()
    hash_tensors(digest, text_encoder.state_dict())
    vocab = tokenizer.get_vocab() if tokenizer is not None else {}
    digest.update(json.dumps(sorted(vocab.items())).encode())
    return digest.hexdigest()[:32]


def build_text_features(bundle, texts: list[str], batch_size: int = 256) -> "TextFeatureCache":
    """Run the bundle's frozen text encoder once per unique text and return the cache."""
    cache = TextFeatureCache(bundle.text_encoder_fingerprint)
    unique = list(dict.fromkeys(texts))
    for start in range(0, len(unique), batch_size):
        part = unique[start:start + batch_size]
        states, mask = bundle._run_text_encoder(part, pad_to_max=False)
        cache.add(part, states, mask)
    return cache


class TextFeatureCache:
    """Token states and lengths of a set of texts, made by one text encoder (``fingerprint``)."""

    def __init__(self, fingerprint: str, features: dict[str, torch.Tensor] | None = None) -> None:
        self.fingerprint = fingerprint
        self.features: dict[str, torch.Tensor] = dict(features or {})  # text -> (length, D) real-token states

    def __contains__(self, text: str) -> bool:
        return text in self.features

    def __len__(self) -> int:
        return len(self.features)

    @property
    def width(self) -> int | None:
        """``D``, the width of the token states (``None`` while empty)."""
        return next(iter(self.features.values())).shape[1] if self.features else None

    def add(self, texts: list[str], states: torch.Tensor, mask: torch.Tensor) -> None:
        """Store ``(B, L, D)`` states of ``texts`` (only the real tokens, per ``mask``)."""
        lengths = mask.long().sum(dim=1).tolist()
        for text, row, length in zip(texts, states.detach().float().cpu(), lengths):
            self.features[text] = row[:length].clone()

    def lookup(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, L, D)`` states padded with zeros to the longest text, and the ``(B, L)`` mask."""
        missing = [t for t in texts if t not in self.features]
        if missing:
            raise KeyError(missing[0])
        rows = [self.features[t] for t in texts]
        length = max(1, max(row.shape[0] for row in rows))
        states = torch.zeros(len(rows), length, rows[0].shape[1])
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        for i, row in enumerate(rows):
            states[i, : row.shape[0]] = row
            mask[i, : row.shape[0]] = 1
        return states, mask

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically; states are stored as float32, exactly what the live encoder gives (a few MB for
        thousands of phrasings; float16 made training from a cache condition on other inputs than generation)."""
        texts = sorted(self.features)
        rows = [self.features[t] for t in texts]
        states = torch.cat(rows).float() if rows else torch.zeros(0, 1)
        lengths = torch.tensor([row.shape[0] for row in rows], dtype=torch.long)
        metadata = {"format": FORMAT, "encoder": self.fingerprint, "texts": json.dumps(texts)}
        with atomic_output_file(path) as tmp:
            save_file({"states": states.contiguous(), "lengths": lengths}, str(tmp), metadata=metadata)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike, expected_fingerprint: str | None = None) -> "TextFeatureCache":
        """Read a cache; refuse a damaged file or one made by another encoder (one-line errors)."""
        path = Path(path)
        if not path.is_file():
            raise UserInputError(f"text feature cache not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                states, lengths = handle.get_tensor("states"), handle.get_tensor("lengths")
            texts = json.loads(metadata["texts"])
        except Exception as err:  # SafetensorError, KeyError, JSONDecodeError
            raise UserInputError(f"text feature cache {path} is corrupt: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
        well_formed = (
            metadata.get("format") == FORMAT and isinstance(texts, list) and all(isinstance(t, str) for t in texts)
            and len(set(texts)) == len(texts) and states.ndim == 2 and states.is_floating_point()
            and lengths.ndim == 1 and lengths.dtype == torch.long and len(texts) == lengths.shape[0]
            and bool((lengths >= 0).all()) and int(lengths.sum()) == states.shape[0]
        )
        if not well_formed:  # texts as one string, float lengths, 1-D states, repeated texts: raw errors before
            raise UserInputError(f"text feature cache {path} is not a {FORMAT} file")
        if not bool(torch.isfinite(states).all()):  # the first chunk then came out "not finite", blaming the model
            raise UserInputError(f"text feature cache {path} is corrupt: its token states are not all finite")
        fingerprint = metadata.get("encoder", "")
        if expected_fingerprint and fingerprint != expected_fingerprint:
            raise UserInputError(
                f"text feature cache {path} was made by another text encoder ({fingerprint} != {expected_fingerprint}): rebuild it"
            )
        rows = states.float().split(lengths.tolist())
        return cls(fingerprint, dict(zip(texts, rows)))


def world_phrasings() -> list[str]:
    """Every phrasing of every procedural-world primitive (both splits), plus the empty text."""
    from .worlds.actions import all_phrasings

    return [""] + sorted({text for texts in all_phrasings("all").values() for text in texts})


__all__ = ["TextFeatureCache", "build_text_features", "module_fingerprint", "world_phrasings", "FORMAT"]
