"""Chunk sampler: denoise the next chunk's latents given the previous chunk's clean latents.

Generation (paper §3.2): start the ``f_g`` new frames from noise ``z_T^i``; at every denoising
step concatenate the previous chunk's CLEAN latents ``z_0^{i-1}`` (the context, ``f_p`` frames)
with the noisy ``z_t^i``, run the UNet on the whole window, keep only the new frames'
prediction and step the scheduler on them. The context therefore enters every step exactly as
it was (re-imposed, never noised or changed).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, SchedulerMixin
from tqdm.auto import tqdm

from .config import help_field
from .errors import UserInputError, first_line
from .model import frozen_weights_on_fast_path, unet_text_kwargs

SCHEDULERS = {
    "ddim": lambda config, **kwargs: DDIMScheduler.from_config(config, clip_sample=False, set_alpha_to_one=False, **kwargs),
    "dpmsolver++": lambda config, **kwargs: DPMSolverMultistepScheduler.from_config(
        config, algorithm_type="dpmsolver++", solver_order=2, **kwargs
    ),
    "euler": lambda config, **kwargs: EulerDiscreteScheduler.from_config(config, **kwargs),
}
TIMESTEP_SPACINGS = ("trailing", "leading", "linspace")
"""How the sampling steps are spread over the 1,000 training steps (diffusers ``timestep_spacing``).
``trailing`` starts at the last training step, the only one whose input is (almost) pure noise:
with 4 steps it samples at 999, 749, 499, 249. ``leading`` (diffusers' default, which the
ModelScope and our training scheduler configs leave in place) starts at 751 with 4 steps, from
pure noise that the model only ever saw at 999 (Lin et al. 2024, "Common Diffusion Noise
Schedules and Sample Steps are Flawed", §3.3). On the 2,344-step embedded model at 4 steps, trailing raised
the start-footprint PSNR of 32-chunk rollouts from 17.05 to 18.89 dB (README, Results)."""
DEFAULT_TIMESTEP_SPACING = "trailing"  # of SamplerConfig and make_scheduler


def check_timestep_spacing(spacing: str) -> None:
    """``ValueError`` unless ``spacing`` is one of :data:`TIMESTEP_SPACINGS`."""
    if spacing not in TIMESTEP_SPACINGS:
        raise ValueError(f"timestep_spacing must be one of {', '.join(TIMESTEP_SPACINGS)}, got {spacing!r}")


DDIM_GAP_TOLERANCE = 0.01  # how far (relative) a schedule's gaps may differ from DDIM's fixed stride T // steps
MAX_GUIDANCE_SCALE = 100.0  # far above any useful value (2-15); larger ones overflow the latents


StepCallback = Callable[[int, int, torch.Tensor], None]
"""``callback(step_index, timestep, latents)`` called after every denoising step."""


@dataclass
class SamplerConfig:
    """How each chunk is denoised."""

    scheduler: str = help_field("ddim", f"denoising scheduler: {' | '.join(SCHEDULERS)}")
    num_inference_steps: int = help_field(20, "denoising steps per chunk")
    guidance_scale: float = help_field(
        2.0, "classifier-free guidance on the action text (1 = off; the empty text is unconditional)"
    )
    eta: float = help_field(
        0.0, "ddim only: 0 = deterministic DDIM, 1 = fresh noise at every step (DDPM-like, removes noise a small model leaves)"
    )
    timestep_spacing: str = help_field(
        DEFAULT_TIMESTEP_SPACING, f"where the steps fall: {' | '.join(TIMESTEP_SPACINGS)} (trailing: the first step at the last "
        "training step, 999, where the input is pure noise; leading: diffusers' default, starts lower (ddim and euler: 1000 - "
        "1000/steps + 1; dpmsolver++: 1000 - 1000/(steps + 1) + 1)"
    )

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {sorted(SCHEDULERS)}, got {self.scheduler!r}")
        if self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {self.num_inference_steps}")
        if not 1.0 <= self.guidance_scale <= MAX_GUIDANCE_SCALE:  # also refuses nan; 1e308 overflowed to NaN frames
            raise ValueError(f"guidance_scale must be a number in [1, {MAX_GUIDANCE_SCALE:g}] (1 = no guidance), "
                             f"got {self.guidance_scale}")
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {self.eta}")
        check_timestep_spacing(self.timestep_spacing)
        if self.eta and self.scheduler != "ddim":
            raise ValueError(f"eta applies to the ddim scheduler only, got scheduler {self.scheduler!r} with eta "
                             f"{self.eta:g} (the embedded model's settings use eta 1: add sampler.eta=0)")


def check_inference_steps(config: SamplerConfig, noise_scheduler) -> None:
    """A one-line :class:`UserInputError` when ``sampler.num_inference_steps`` does not give a usable
    schedule on this model: more steps than its training timesteps
    (``noise_scheduler.config.num_train_timesteps``), or, near that count, timesteps that diffusers'
    schedulers place outside ``[0, T)`` or repeat (``leading`` spacing with ``steps_offset=1`` reaches
    ``T``: ddim raised an IndexError at the first chunk, dpmsolver++ gave NaN frames). The limits that
    need no model are checked by :class:`SamplerConfig` itself."""
    total, steps = noise_scheduler.config.num_train_timesteps, config.num_inference_steps
    if steps > total:
        raise UserInputError(f"sampler.num_inference_steps must be at most the model's {total} training timesteps, "
                             f"got {steps}")
    try:
        timesteps = sampling_timesteps(config, noise_scheduler)
        fits = 0 <= min(timesteps) and max(timesteps) < total and len(set(timesteps)) == len(timesteps)
        problem = None if fits else (f"its timesteps run from {min(timesteps)} to {max(timesteps)}, outside [0, {total}) "
                                     "or repeated")
    except (IndexError, ValueError) as err:
        problem = first_line(err)
    if problem is None and config.scheduler == "ddim" and len(timesteps) > 1:
        # diffusers' DDIM steps from t to t - T // steps whatever the schedule (huggingface/diffusers#12633):
        # with other gaps the latent's noise level no longer matches the timestep the UNet is told
        # (a gap 1 off a large stride, as trailing spacing gives 999, 666, 332 for 3 steps, is kept: 0.3 %)
        stride, gaps = total // steps, sorted({a - b for a, b in zip(timesteps, timesteps[1:])})
        if max(abs(gap - stride) for gap in gaps) > DDIM_GAP_TOLERANCE * stride:
            problem = f"its timesteps are {', '.join(map(str, gaps[:4]))} apart, but diffusers' DDIM steps {stride} at a time"
    if problem is not None:
        raise UserInputError(f"sampler.num_inference_steps={steps} does not fit the {config.scheduler} scheduler with "
                             f"{config.timestep_spacing} spacing on this model's {total} training timesteps ({problem}); "
                             "use trailing spacing with a step count that divides it, or the dpmsolver++ or euler scheduler")


def sampling_timesteps(config: SamplerConfig, noise_scheduler) -> list[int]:
    """The timesteps a chunk is denoised at with ``config`` on this model's noise schedule."""
    scheduler = make_scheduler(config.scheduler, noise_scheduler.config, config.timestep_spacing)
    scheduler.set_timesteps(config.num_inference_steps)
    return [int(t) for t in scheduler.timesteps]


def untrained_steps_note(config: SamplerConfig, noise_scheduler, trained_timesteps: tuple[int, int] | None) -> str | None:
    """A one-line note when sampling steps fall outside the noise levels ``low <= t < high`` the model was last
    trained on (:attr:`ModelBundle.trained_timesteps`), where its predictions were never fitted; None when
    they all fall inside or the model does not say. The embedded model, trained last on ``t >= 300``,
    speckled its frames at 4 steps, whose last step runs at t = 249; its 3 steps end at t = 332 (README,
    Results). Call after :func:`check_inference_steps`."""
    if trained_timesteps is None:
        return None
    low, high = trained_timesteps
    outside = [t for t in sampling_timesteps(config, noise_scheduler) if not low <= t < high]
    if not outside:
        return None
    shown = ", ".join(map(str, outside[:4])) + (f" and {len(outside) - 4} more" if len(outside) > 4 else "")
    return (f"note: sampling steps outside the noise levels this model was last trained on ({low} <= t < {high}): "
            f"t = {shown} ({len(outside)} of {config.num_inference_steps}); its predictions there were never fitted and can "
            "speckle the frames; another sampler.num_inference_steps may keep every step inside")


def make_scheduler(name: str, noise_scheduler_config, timestep_spacing: str = DEFAULT_TIMESTEP_SPACING) -> SchedulerMixin:
    """A fresh sampling scheduler sharing the model's noise schedule (betas, prediction type);
    ``timestep_spacing`` as in :data:`TIMESTEP_SPACINGS`."""
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {sorted(SCHEDULERS)}, got {name!r}")
    check_timestep_spacing(timestep_spacing)
    return SCHEDULERS[name](noise_scheduler_config, timestep_spacing=timestep_spacing)


@torch.no_grad()
def sample_chunk(
    unet: torch.nn.Module,
    scheduler: SchedulerMixin,
    context: torch.Tensor,
    text_embeddings: torch.Tensor,
    unconditional_embeddings: torch.Tensor | None,
    num_frames: int,
    num_inference_steps: int,
    guidance_scale: float = 1.0,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Denoise ``num_frames`` new latent frames after the clean ``context``; returns ``(B, C, f_g, h, w)``.

    ``context`` is ``(B, C, f_p, h, w)``; ``text_embeddings`` (and the unconditional ones, used
    when ``guidance_scale > 1``) are ``(B, L, D)``.
    """
    batch, channels, num_context, height, width = context.shape
    device, dtype = context.device, context.dtype
    use_guidance = guidance_scale > 1.0 and unconditional_embeddings is not None
    if use_guidance:
        embeddings = torch.cat([unconditional_embeddings, text_embeddings])  # (2B, L, D)
    else:
        embeddings = text_embeddings
    step_parameters = inspect.signature(scheduler.step).parameters
    step_kwargs = {"generator": generator} if "generator" in step_parameters else {}
    if eta:
        if "eta" not in step_parameters:
            raise ValueError(f"{type(scheduler).__name__} has no eta; use DDIM")
        step_kwargs["eta"] = eta

    # 1. timesteps and the initial noise z_T for the new frames only
    scheduler.set_timesteps(num_inference_steps, device=device)
    noise_shape = (batch, channels, num_frames, height, width)
    latents = torch.randn(noise_shape, generator=generator, device="cpu", dtype=torch.float32)
    latents = (latents * scheduler.init_noise_sigma).to(device=device, dtype=dtype)

    # 2. denoising loop: clean context ⊕ noisy targets through the UNet, step the targets only
    with frozen_weights_on_fast_path(unet):  # under no_grad: no graph, 2x faster on the CPU
        for index, timestep in enumerate(tqdm(scheduler.timesteps, desc="denoise", leave=False, disable=not progress)):
            model_input = torch.cat([context, scheduler.scale_model_input(latents, timestep)], dim=2)  # (B, C, f_p+f_g, h, w)
            if use_guidance:
                model_input = torch.cat([model_input, model_input])  # (2B, C, F, h, w)
            prediction = unet(model_input, timestep, **unet_text_kwargs(unet, embeddings)).sample
            prediction = prediction[:, :, num_context:]  # keep the new frames: (B or 2B, C, f_g, h, w)
            if use_guidance:
                unconditional, conditional = prediction.chunk(2)
                prediction = unconditional + guidance_scale * (conditional - unconditional)
            latents = scheduler.step(prediction, timestep, latents, **step_kwargs).prev_sample
            if callback is not None:
                callback(index, int(timestep), latents)
    return latents
