"""Masked conditional diffusion maths (paper §3.1.1 and §3.2): small pure functions.

Shapes: latents are ``(B, C, F, h, w)``; a *context mask* is a ``(B, F)`` bool tensor that is
True on the context (past) frames ``z0[:f_p]`` and False on the target frames ``z0[f_p:]``.
The noise schedule itself belongs to the diffusers scheduler (``add_noise``); these functions
only decide *which* frames get noise and *which* frames count in the loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import SchedulerMixin


def context_mask(batch: int, num_context: int, num_target: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(B, f_p + f_g)`` mask, True on the first ``f_p`` (context) frames."""
    if num_context < 1 or num_target < 1:
        raise ValueError(f"need at least one context and one target frame, got f_p={num_context}, f_g={num_target}")
    mask = torch.zeros(batch, num_context + num_target, dtype=torch.bool, device=device)
    mask[:, :num_context] = True
    return mask


def _frame_mask(mask: torch.Tensor) -> torch.Tensor:
    """``(B, F)`` -> ``(B, 1, F, 1, 1)``, broadcastable over latents."""
    return mask[:, None, :, None, None]


def sample_timesteps(scheduler: SchedulerMixin, batch: int, generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu", min_timestep: int = 0,
                     max_timestep: int | None = None) -> torch.Tensor:
    """One training timestep per sample, uniform over ``[min_timestep, max_timestep)``
    (``max_timestep`` None: the scheduler's ``num_train_timesteps``).

    ``min_timestep > 0`` spends the training on the high-noise steps, where the context and the
    action text decide the chunk's layout and motion (at low noise the noisy frames show it);
    ``max_timestep`` below the number of steps keeps it on the low-noise steps (detail and texture).
    """
    steps = scheduler.config.num_train_timesteps
    end = steps if max_timestep is None else max_timestep
    if not 0 <= min_timestep < end <= steps:
        raise ValueError(f"need 0 <= min_timestep < max_timestep <= {steps}, got {min_timestep}, {end}")
    return torch.randint(min_timestep, end, (batch,), generator=generator, device="cpu").to(device)


def noise_targets(
    scheduler: SchedulerMixin,
    clean: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """Eq. 1: ``z_t[:f_p] = z0[:f_p]`` (clean context), ``z_t[f_p:] = sqrt(ab_t) z0 + sqrt(1-ab_t) eps``.

    Context positions are returned bit-identical to ``clean``.
    """
    noisy = scheduler.add_noise(clean, noise, timesteps)
    return torch.where(_frame_mask(mask), clean, noisy)


def noise_whole_sequence(
    scheduler: SchedulerMixin, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """Eq. 3 (Temp-LoRA): noise the whole concatenation ``z' = z0^{i-1} ⊕ z0^i``, no clean context."""
    return scheduler.add_noise(clean, noise, timesteps)


def mix_whole_window(mask: torch.Tensor, share: float, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick each sample with probability ``share`` for Eq. 3 instead of Eq. 1-2: its context mask
    row becomes all False, so :func:`noise_targets` noises the whole window and
    :func:`masked_diffusion_loss` counts every frame. Returns ``(mask, picked)``; ``picked`` is
    ``(B,)`` bool (the caller also drops those samples' action text, as Eq. 3 has none)."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], got {share}")
    picked = torch.rand(mask.shape[0], generator=generator) < share
    return mask & ~picked.to(mask.device)[:, None], picked


def diffusion_target(
    scheduler: SchedulerMixin, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet should predict under the scheduler's ``prediction_type`` (ModelScope: epsilon)."""
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(clean, noise, timesteps)
    if prediction_type == "sample":
        return clean
    raise ValueError(f"unsupported prediction_type {prediction_type!r}")


def motion_weights(clean: torch.Tensor, mask: torch.Tensor, strength: float, threshold: float) -> torch.Tensor:
    """Loss weights ``(B, 1, F, h, w)`` that emphasise what moves: ``1 + strength`` where a target frame's
    clean latents differ from the sample's last context frame by more than ``threshold`` (largest
    absolute difference over the channels), 1 elsewhere, then divided by their mean over the
    sample's target positions (the context, which Eq. 2 masks out, is divided alike).

    Under a plain mean (Eq. 2) a small moving object (a gripper, a pushed block: a few percent of
    the pixels) barely counts against a static background, and "nothing moves" is a near-optimal
    prediction. Normalised per sample, every sample keeps its share of the batch loss, and a chunk
    where everything moves (a camera pan) or nothing moves gets weight 1 everywhere, as before. A
    sample without context (Eq. 3 rows of :func:`mix_whole_window`) gets weight 1 everywhere.
    """
    if not (0.0 <= strength < float("inf") and 0.0 <= threshold < float("inf")):
        raise ValueError(f"strength and threshold must be finite numbers >= 0, got {strength}, {threshold}")
    mask = mask.to(clean.device)
    num_context = mask.sum(dim=1)  # the context is a prefix: its last frame is num_context - 1
    last = (num_context - 1).clamp_min(0)
    reference = clean[torch.arange(clean.shape[0], device=clean.device), :, last][:, :, None]  # (B, C, 1, h, w)
    moving = (clean.float() - reference.float()).abs().amax(dim=1, keepdim=True) > threshold
    targets = ~_frame_mask(mask)
    moving &= targets & (num_context > 0)[:, None, None, None, None]
    weight = 1.0 + strength * moving.to(torch.float32)
    target_weights = (weight * targets).flatten(1)  # (B, F * h * w), 0 on the context
    num_targets = targets.expand_as(weight).flatten(1).sum(dim=1).clamp_min(1)
    mean_on_targets = target_weights.sum(dim=1) / num_targets
    return weight / mean_on_targets[:, None, None, None, None]


def masked_diffusion_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                          weight: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 2: MSE between prediction and target over the target frames only (context masked out).

    ``mask`` is the context mask (True = context, excluded). The mean is over all elements of
    the target frames, so the loss scale does not depend on ``f_p``. Context positions receive
    exactly zero gradient. With ``weight`` (broadcastable to the latents, e.g. :func:`motion_weights`)
    it is the weighted mean over the target frames; uniform weights give the plain mean.
    """
    # counted in float32: in float16 a count above 65504 became inf, the loss 0 and every gradient 0
    weight = (~_frame_mask(mask)).to(torch.float32) * (1.0 if weight is None else weight.to(torch.float32))
    weight = weight.expand_as(prediction)
    squared = (prediction.float() - target.float()).pow(2) * weight
    return squared.sum() / weight.sum().clamp_min(1.0)


def sequence_diffusion_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 3's loss: plain MSE over the whole sequence (every frame was noised)."""
    return F.mse_loss(prediction.float(), target.float())
