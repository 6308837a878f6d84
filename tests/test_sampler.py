"""The chunk sampler: clean context in every UNet call, right frame count, any scheduler."""

import pytest
import torch

from slowfast_vgen.sampler import make_scheduler, sample_chunk


@pytest.mark.parametrize("name", ["ddim", "dpmsolver++", "euler"])
def test_sampler_keeps_context_and_returns_target_frames(tiny_bundle, name):
    unet = tiny_bundle.unet
    context = torch.rand(1, 3, 3, 16, 16) * 2 - 1
    original = context.clone()
    text = tiny_bundle.encode_text(["move left"])
    uncond = tiny_bundle.encode_text([""])
    seen_inputs = []
    hook = unet.register_forward_pre_hook(lambda module, args, kwargs: seen_inputs.append(args[0].clone()), with_kwargs=True)
    steps = []
    try:
        out = sample_chunk(unet, make_scheduler(name, tiny_bundle.noise_scheduler.config), context, text, uncond,
                           num_frames=5, num_inference_steps=3, guidance_scale=2.0,
                           generator=torch.Generator().manual_seed(0), callback=lambda i, t, x: steps.append(i))
    finally:
        hook.remove()
    assert out.shape == (1, 3, 5, 16, 16)
    assert torch.isfinite(out).all()
    assert torch.equal(context, original)
    assert steps == [0, 1, 2]
    assert len(seen_inputs) == 3
    # the first call sees the starting noise scaled for the UNet: unit variance for every scheduler (euler's
    # latents start at about 14.6 (init_noise_sigma), and scale_model_input divides by sqrt(sigma^2 + 1) at step 999)
    start = torch.randn(1, 3, 5, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(seen_inputs[0][0, :, 3:], start[0], rtol=0.01, atol=1e-4)
    for model_input in seen_inputs:
        assert model_input.shape == (2, 3, 8, 16, 16)  # guidance doubles the batch; f_p + f_g frames
        assert torch.equal(model_input[0, :, :3], context[0])  # clean context re-imposed at every step
        assert torch.equal(model_input[1, :, :3], context[0])


def test_sampler_is_deterministic_per_generator(tiny_bundle):
    context = torch.zeros(1, 3, 1, 16, 16)
    text = tiny_bundle.encode_text(["move right"])
    runs = [
        sample_chunk(tiny_bundle.unet, make_scheduler("ddim", tiny_bundle.noise_scheduler.config), context, text, None,
                     num_frames=2, num_inference_steps=2, generator=torch.Generator().manual_seed(seed))
        for seed in (1, 1, 2)
    ]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_unknown_scheduler_is_refused(tiny_bundle):
    with pytest.raises(ValueError, match="scheduler must be one of"):
        make_scheduler("plms", tiny_bundle.noise_scheduler.config)


def test_ddim_eta_adds_fresh_noise_per_step_and_stays_seeded(tiny_bundle):
    from slowfast_vgen.sampler import SamplerConfig

    context = torch.zeros(1, 3, 1, 16, 16)
    text = tiny_bundle.encode_text(["move right"])

    def run(eta, seed=1):
        return sample_chunk(tiny_bundle.unet, make_scheduler("ddim", tiny_bundle.noise_scheduler.config), context, text, None,
                            num_frames=2, num_inference_steps=3, eta=eta, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(1.0), run(1.0))  # the step noise comes from the same generator
    assert not torch.equal(run(1.0), run(0.0))
    with pytest.raises(ValueError, match="eta applies to the ddim scheduler only"):
        SamplerConfig(scheduler="euler", eta=1.0)
    with pytest.raises(ValueError, match=r"eta must be in \[0, 1\]"):
        SamplerConfig(eta=1.5)


@pytest.mark.parametrize("name", ["ddim", "dpmsolver++", "euler"])
def test_trailing_spacing_starts_from_pure_noise_step(tiny_bundle, name):
    """The default spacing puts the first step at the last training step (999), the only one
    whose input is the pure noise the sampler starts from; `leading` starts lower (751 with DDIM)."""
    config = tiny_bundle.noise_scheduler.config
    trailing = make_scheduler(name, config)
    trailing.set_timesteps(4)
    assert [int(t) for t in trailing.timesteps] == [999, 749, 499, 249]
    leading = make_scheduler(name, config, "leading")
    leading.set_timesteps(4)
    assert int(leading.timesteps[0]) < 999


def test_steps_outside_the_trained_noise_levels_are_noted(tiny_bundle):
    """A model trained on t >= 300 only: 4 trailing DDIM steps end at 249, outside (the embedded model's speckle);
    3 steps end at 332, inside; a model that does not say gets no note."""
    from slowfast_vgen.sampler import SamplerConfig, untrained_steps_note

    scheduler = tiny_bundle.noise_scheduler

    def note(steps, band):
        return untrained_steps_note(SamplerConfig(num_inference_steps=steps, eta=1.0, guidance_scale=1.0), scheduler, band)

    assert note(4, (300, 1000)) == ("note: sampling steps outside the noise levels this model was last trained on "
                                    "(300 <= t < 1000): t = 249 (1 of 4); its predictions there were never fitted and can "
                                    "speckle the frames; another sampler.num_inference_steps may keep every step inside")
    assert note(3, (300, 1000)) is None and note(4, None) is None and note(4, (0, 1000)) is None
    assert "t = 999, 749, 499 (3 of 4)" in note(4, (0, 300))  # a low-noise-only model (max_timestep=300)
    assert "t = 299, 249, 199, 149 and 2 more (6 of 20)" in note(20, (300, 1000))


def test_timestep_spacing_is_validated(tiny_bundle):
    from slowfast_vgen.sampler import SamplerConfig

    assert SamplerConfig().timestep_spacing == "trailing"
    with pytest.raises(ValueError, match="timestep_spacing must be one of trailing, leading, linspace, got 'middle'"):
        SamplerConfig(timestep_spacing="middle")
    with pytest.raises(ValueError, match="timestep_spacing must be one of"):
        make_scheduler("ddim", tiny_bundle.noise_scheduler.config, "middle")


def test_session_samples_at_its_configured_spacing(tiny_bundle):
    """`generation.sampler.timestep_spacing` reaches the UNet: the first call's timestep is 999
    with `trailing`, 1000 - 1000/steps + 1 = 751 with `leading` (4 steps)."""
    import numpy as np

    from slowfast_vgen.fast_learner import FastLearnerConfig
    from slowfast_vgen.sampler import SamplerConfig
    from slowfast_vgen.session import GenerationConfig, GenerationSession

    first_timesteps = {}
    for spacing in ("trailing", "leading"):
        seen = []
        hook = tiny_bundle.unet.register_forward_pre_hook(lambda m, args, kwargs: seen.append(int(args[1])), with_kwargs=True)
        try:
            config = GenerationConfig(frames_per_chunk=2, context_frames=1, window=4, fast=FastLearnerConfig(mode="off"),
                                      sampler=SamplerConfig(num_inference_steps=4, guidance_scale=1.0, timestep_spacing=spacing))
            session = GenerationSession(tiny_bundle, config)
            session.start(np.zeros((16, 16, 3), np.uint8))
            session.generate(["move left"])
        finally:
            hook.remove()
        first_timesteps[spacing] = seen[:4]
    assert first_timesteps == {"trailing": [999, 749, 499, 249], "leading": [751, 501, 251, 1]}
