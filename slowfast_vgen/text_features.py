"""Precomputed text features: the frozen text encoder runs once per unique phrasing.

A cache file is one safetensors file::

    states    (T, D) float32   the real-token states of all texts, concatenated (text i: its ``lengths[i]`` rows;
                               float16 in files written before, read as well)
    lengths   (N,)   int64     real tokens of each text
    metadata: {"format": "slowfast_vgen.text_features/1", "encoder": <fingerprint>, "texts": <JSON list>,
               "settings": <fingerprint>, "lowercase": "true" | "false"}     # the last two: absent in older files

Rows are keyed by text. ``encoder`` is the fingerprint of the text encoder that made the
features (:func:`module_fingerprint`: a hash of its weights and tokenizer vocabulary);
``settings`` that of what else the features depend on (:func:`text_settings`: how the
tokenizer splits text, casing and length limit included, and the encoder's activation and
normalisation settings). A model records both in ``slowfast_vgen.json``, and a cache made by
another encoder, or with other settings, is refused (rebuild it); a fingerprint that one side
lacks (files written before it was recorded) is not compared. ``lowercase`` says the tokenizer
ignores case, so "Move Left" reads the row of "move left". A training machine with a cache
needs neither the encoder's package nor its weights.

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


def module_fingerprint(text_encoder: torch.nn.Module, tokenizer, as_float32: bool = True) -> str:
    """SHA-256 (32 hex digits) over a text encoder's weights (names, shapes, values) and its tokenizer's vocabulary.

    With ``as_float32`` (what caches are checked against) floating-point weights are hashed as float32, so
    the fingerprint names the values, not the dtype they are held at: a bfloat16-saved encoder has one
    fingerprint loaded at float32 or at bfloat16 (a cache made from one serves the other), and a float32
    encoder's is what it always was. Rounding the weights to a narrower dtype changes the values, and so
    the fingerprint. Without it they are hashed at their dtype, as :attr:`ModelBundle.model_fingerprint`
    has always hashed them (sessions saved at bfloat16 record that).
    """
    digest = hashlib.sha256()
    hash_tensors(digest, {name: tensor.float() if as_float32 and tensor.is_floating_point() else tensor
                          for name, tensor in text_encoder.state_dict().items()})
    vocab = tokenizer.get_vocab() if tokenizer is not None else {}
    digest.update(json.dumps(sorted(vocab.items())).encode())
    return digest.hexdigest()[:32]


# Texts whose tokens show how a tokenizer treats casing, accents, whitespace, symbols and over-long input.
SETTINGS_PROBES = ("move left", "Move LEFT", "push the red block up", "PUSH THE RED BLOCK UP", "Naïve café, déjà vu!",
                   "naïve café, déjà vu!", "  tabs\tand\nnew lines  ", "\U0001f642 \u2713 \u221e \u4e2d\u6587 ß ǅ",
                   " ".join(["walk"] * 100), "")
# Encoder config entries that change its outputs for the same weights (absent ones read as None).
ENCODER_SETTINGS = ("model_type", "hidden_act", "layer_norm_eps", "position_embedding_type", "is_decoder",
                    "scale_embedding", "pad_token_id")


def text_settings(tokenize, encoder_config) -> tuple[str, bool]:
    """What a text path's features depend on besides its encoder's weights, and whether it ignores case.

    ``tokenize(texts) -> (input_ids, attention_mask or None)`` is the tokenizer exactly as the model calls it
    (length limit included). Returns the SHA-256 (32 hex digits) of the tokens it gives :data:`SETTINGS_PROBES` and of the
    encoder's :data:`ENCODER_SETTINGS`, and ``lowercase``: the probes' upper-case spellings give the tokens
    of their lower-case ones. Tokens, not tokenizer files, are hashed: a tokenizer saved by another library
    version that splits text the same way has the same fingerprint.
    """
    ids, mask = tokenize(list(SETTINGS_PROBES))
    mask = torch.ones_like(ids) if mask is None else mask
    tokens = [row[mask_row.bool()].tolist() for row, mask_row in zip(ids, mask)]
    config = {key: getattr(encoder_config, key, None) for key in ENCODER_SETTINGS}
    digest = hashlib.sha256(json.dumps({"tokens": tokens, "encoder": config}, sort_keys=True, default=str).encode())
    by_text = dict(zip(SETTINGS_PROBES, tokens))
    lowercase = all(by_text[text] == by_text[text.lower()] for text in SETTINGS_PROBES if text.lower() in by_text)
    return digest.hexdigest()[:32], lowercase


def build_text_features(bundle, texts: list[str], batch_size: int = 256) -> "TextFeatureCache":
    """Run the bundle's frozen text encoder once per unique text and return the cache."""
    settings, lowercase = bundle.text_settings
    cache = TextFeatureCache(bundle.text_encoder_fingerprint, settings=settings, lowercase=lowercase)
    unique = list(dict.fromkeys(texts))
    for start in range(0, len(unique), batch_size):
        part = unique[start:start + batch_size]
        states, mask = bundle._run_text_encoder(part, pad_to_max=False)
        cache.add(part, states, mask)
    return cache


class TextFeatureCache:
    """Token states and lengths of a set of texts, made by one text encoder (``fingerprint``) with one tokenizer
    and encoder settings (``settings``, :func:`text_settings`; empty where unknown). With ``lowercase`` (the
    tokenizer ignores case) a text is also found under its lower-case spelling."""

    def __init__(self, fingerprint: str, features: dict[str, torch.Tensor] | None = None, *, settings: str = "",
                 lowercase: bool = False) -> None:
        self.fingerprint = fingerprint
        self.settings = settings
        self.lowercase = lowercase
        self.features: dict[str, torch.Tensor] = dict(features or {})  # text -> (length, D) real-token states

    def _key(self, text: str) -> str:
        """The stored text ``text`` reads: itself, else (``lowercase``) its lower-case spelling where stored."""
        if text not in self.features and self.lowercase and text.lower() in self.features:
            return text.lower()
        return text

    def __contains__(self, text: str) -> bool:
        return self._key(text) in self.features

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
        missing = [t for t in texts if t not in self]
        if missing:
            raise KeyError(missing[0])
        rows = [self.features[self._key(t)] for t in texts]
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
        metadata = {"format": FORMAT, "encoder": self.fingerprint, "texts": json.dumps(texts),
                    "settings": self.settings, "lowercase": json.dumps(self.lowercase)}
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
            and metadata.get("lowercase", "false") in ("true", "false")
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
        return cls(fingerprint, dict(zip(texts, rows)), settings=metadata.get("settings", ""),
                   lowercase=metadata.get("lowercase") == "true")


def world_phrasings() -> list[str]:
    """Every phrasing of every procedural-world primitive (both splits), plus the empty text."""
    from .worlds.actions import all_phrasings

    return [""] + sorted({text for texts in all_phrasings("all").values() for text in texts})


__all__ = ["TextFeatureCache", "build_text_features", "module_fingerprint", "text_settings", "world_phrasings", "FORMAT"]
