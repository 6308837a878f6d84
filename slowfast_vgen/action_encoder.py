"""The action encoder: a small trainable module between the frozen text encoder and the UNet.

A frozen sentence encoder's pooled vector encodes wording more than meaning for short
commands (``move left`` · ``move right`` cosine 0.86, ``move right`` · ``head east`` 0.36;
mean-pooled all-MiniLM-L6-v2 embeddings), so a UNet conditioned on it directly has to dig the
direction out of a tiny component of its input. The action encoder reads the token states and
hands the UNet an action representation it can use:

* attention pooling over the real tokens (one learned scoring head per pooling head, a softmax
  over the attention mask), then an MLP -> an action feature ``h``;
* token 0 of its output, the *global action vector*, goes to the timestep-embedding path
  (``time_cond_proj_dim``), which reaches every residual block of the UNet (as DIAMOND
  conditions its UNet); it is ``unit_rms(mean_pool(states) + W h)`` with ``W`` zero-initialised,
  so a freshly attached encoder starts as exactly the pooled sentence embedding that a
  ``pooled_text_conditioning`` UNet was trained on;
* ``num_tokens`` more tokens (a linear map of ``h``, layer-normalised) for cross-attention;
* optionally a linear classifier over known primitives (``primitives``), for an auxiliary
  cross-entropy objective on data that carries them (the procedural worlds); data with free
  text only simply has no labels.

The conditioning it returns has the layout that :func:`slowfast_vgen.model.unet_text_kwargs`
routes: ``(B, 1 + num_tokens, D)``, token 0 to ``timestep_cond``, all tokens to
``encoder_hidden_states``. It is a diffusers ``ModelMixin``: a model directory holds it as
``action_encoder/`` (config + safetensors), saved and loaded with ``save_pretrained`` /
``from_pretrained``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, L, D)`` token states, ``(B, L)`` mask -> ``(B, D)`` mean over the real tokens."""
    weights = mask.to(states.dtype)[:, :, None]
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def unit_rms(vectors: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Rescale each vector (last axis) to a root-mean-square of 1."""
    return vectors / vectors.pow(2).mean(dim=-1, keepdim=True).add(eps).sqrt()


@dataclass
class ActionEncoderOutput:
    conditioning: torch.Tensor  # (B, 1 + num_tokens, D): token 0 = global action vector
    logits: torch.Tensor | None  # (B, len(primitives)) or None without a classifier


class ActionEncoder(ModelMixin, ConfigMixin):
    """Token states of a frozen text encoder -> the UNet's action conditioning (see module docstring)."""

    @register_to_config
    def __init__(
        self,
        text_dim: int = 384,
        output_dim: int = 384,
        hidden_dim: int = 256,
        pool_heads: int = 4,
        num_tokens: int = 4,
        primitives: list[str] | tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(text_dim)
        self.pool_scores = nn.Linear(text_dim, pool_heads)  # one attention-pooling score per head and token
        self.mlp = nn.Sequential(
            nn.Linear(pool_heads * text_dim + text_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.SiLU(),
        )
        self.to_global = nn.Linear(hidden_dim, output_dim)
        nn.init.zeros_(self.to_global.weight)  # start = the pooled sentence embedding (function-preserving)
        nn.init.zeros_(self.to_global.bias)
        self.to_tokens = nn.Linear(hidden_dim, num_tokens * output_dim)
        self.token_norm = nn.LayerNorm(output_dim)
        self.classifier = nn.Linear(hidden_dim, len(primitives)) if primitives else None
        self.pass_through = text_dim == output_dim  # the residual pooled path needs equal sizes

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> ActionEncoderOutput:
        """``states`` ``(B, L, text_dim)`` (frozen encoder output), ``mask`` ``(B, L)`` (1 = real token)."""
        mask = mask.to(states.device).bool()
        normed = self.norm(states)
        scores = self.pool_scores(normed).masked_fill(~mask[:, :, None], float("-inf"))  # (B, L, heads)
        weights = torch.nan_to_num(scores.softmax(dim=1))  # an all-padding row (never in practice) -> zeros
        pooled = torch.einsum("blh,bld->bhd", weights, normed).flatten(1)  # (B, heads * text_dim)
        mean = masked_mean(states, mask)
        hidden = self.mlp(torch.cat([pooled, self.norm(mean)], dim=-1))  # (B, hidden_dim)
        global_vector = self.to_global(hidden)
        if self.pass_through:
            global_vector = global_vector + mean
        tokens = self.token_norm(self.to_tokens(hidden).unflatten(-1, (self.config.num_tokens, -1)))
        conditioning = torch.cat([unit_rms(global_vector)[:, None], tokens], dim=1)
        logits = self.classifier(hidden) if self.classifier is not None else None
        return ActionEncoderOutput(conditioning=conditioning, logits=logits)

    def primitive_labels(self, texts: list[str]) -> torch.Tensor:
        """Class index of each text's primitive among ``config.primitives`` (``-1``: unknown or no classifier).

        Labels come from the procedural worlds' phrasing table; free text that is not one of its
        phrasings (ingested videos, the empty text of classifier-free guidance) gets ``-1``.
        """
        from .worlds.actions import parse_action

        index = {name: i for i, name in enumerate(self.config.primitives)}
        return torch.tensor([index.get(parse_action(text) or "", -1) if text else -1 for text in texts], dtype=torch.long)


def auxiliary_action_loss(logits: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor | None:
    """Cross-entropy of the primitive classifier over the labelled texts (``-1`` ignored); None if none."""
    if logits is None or not bool((labels >= 0).any()):
        return None
    return nn.functional.cross_entropy(logits, labels.to(logits.device), ignore_index=-1)


__all__ = ["ActionEncoder", "ActionEncoderOutput", "auxiliary_action_loss", "masked_mean", "unit_rms"]
