"""Eq. 1-3 helpers: which frames get noise, which frames count in the loss."""

import pytest
import torch
from diffusers import DDPMScheduler

from slowfast_vgen import diffusion


@pytest.fixture()
def scheduler():
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def test_context_mask_marks_first_frames():
    mask = diffusion.context_mask(2, 3, 5)
    assert mask.shape == (2, 8)
    assert mask[:, :3].all() and not mask[:, 3:].any()
    with pytest.raises(ValueError, match="at least one context"):
        diffusion.context_mask(1, 0, 4)


def test_noise_targets_keeps_context_bit_identical(scheduler):
    generator = torch.Generator().manual_seed(0)
    clean = torch.randn(2, 4, 6, 8, 8, generator=generator)
    noise = torch.randn(clean.shape, generator=generator)
    mask = torch.tensor([[True, True, False, False, False, False], [True, False, False, False, False, False]])
    timesteps = torch.tensor([999, 500])
    noisy = diffusion.noise_targets(scheduler, clean, noise, timesteps, mask)
    assert torch.equal(noisy[0, :, :2], clean[0, :, :2])
    assert torch.equal(noisy[1, :, :1], clean[1, :, :1])
    expected = scheduler.add_noise(clean, noise, timesteps)
    assert torch.equal(noisy[0, :, 2:], expected[0, :, 2:])
    assert torch.equal(noisy[1, :, 1:], expected[1, :, 1:])
    assert not torch.allclose(noisy[0, :, 2:], clean[0, :, 2:])


def test_whole_sequence_noise_touches_every_frame(scheduler):
    clean = torch.randn(1, 4, 6, 8, 8)
    noisy = diffusion.noise_whole_sequence(scheduler, clean, torch.randn_like(clean), torch.tensor([900]))
    per_frame_change = (noisy - clean).abs().flatten(3).mean(dim=(0, 1, 3))
    assert (per_frame_change > 0.1).all()


def test_masked_loss_has_zero_gradient_on_context():
    prediction = torch.randn(2, 4, 6, 4, 4, requires_grad=True)
    target = torch.randn(2, 4, 6, 4, 4)
    mask = diffusion.context_mask(2, 2, 4)
    loss = diffusion.masked_diffusion_loss(prediction, target, mask)
    loss.backward()
    assert torch.count_nonzero(prediction.grad[:, :, :2]) == 0
    assert (prediction.grad[:, :, 2:].abs() > 0).all()
    expected = (prediction[:, :, 2:] - target[:, :, 2:]).pow(2).mean()
    assert torch.allclose(loss, expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_masked_loss_in_half_precision_is_the_mean_over_the_target_frames(dtype):
    """The target elements were counted in the prediction's dtype: in float16 more than 65504 became
    inf and the loss 0 (the `text` memory never learned), in bfloat16 693 rounded to 692."""
    for shape, context in (((2, 4, 14, 32, 32), 1), ((1, 3, 4, 7, 11), 1)):
        prediction, target = torch.zeros(shape, dtype=dtype), torch.ones(shape, dtype=dtype)
        mask = diffusion.context_mask(shape[0], context, shape[2] - context)
        assert diffusion.masked_diffusion_loss(prediction, target, mask).item() == 1.0


def test_masked_loss_ignores_context_values():
    target = torch.zeros(1, 3, 5, 2, 2)
    prediction = torch.zeros(1, 3, 5, 2, 2)
    prediction[:, :, :2] = 100.0  # wrong context prediction must not matter
    mask = diffusion.context_mask(1, 2, 3)
    assert diffusion.masked_diffusion_loss(prediction, target, mask).item() == 0.0


def test_diffusion_target_follows_prediction_type(scheduler):
    clean, noise, t = torch.randn(1, 3, 2, 4, 4), torch.randn(1, 3, 2, 4, 4), torch.tensor([10])
    assert torch.equal(diffusion.diffusion_target(scheduler, clean, noise, t), noise)
    v_scheduler = DDPMScheduler(prediction_type="v_prediction")
    assert torch.allclose(diffusion.diffusion_target(v_scheduler, clean, noise, t), v_scheduler.get_velocity(clean, noise, t))
    assert torch.equal(diffusion.diffusion_target(DDPMScheduler(prediction_type="sample"), clean, noise, t), clean)


def test_sequence_loss_is_the_mean_squared_error_over_every_frame():
    """Eq. 3's loss: an L1 loss or one that skipped frames also falls when trained, so pin its value."""
    prediction, target = torch.zeros(1, 3, 4, 2, 2), torch.full((1, 3, 4, 2, 2), 2.0)
    target[:, :, 0] = 0.0  # the first frame counts too: (0 + 3 * 4) / 4
    assert diffusion.sequence_diffusion_loss(prediction, target).item() == 3.0


def test_sample_timesteps_respects_min_and_max_timestep(scheduler):
    everywhere = diffusion.sample_timesteps(scheduler, 4000, torch.Generator().manual_seed(0))
    assert everywhere.min() < 100 and everywhere.max() == 999
    high = diffusion.sample_timesteps(scheduler, 4000, torch.Generator().manual_seed(0), min_timestep=600)
    assert high.min() == 600 and high.max() == 999
    low = diffusion.sample_timesteps(scheduler, 4000, torch.Generator().manual_seed(0), max_timestep=400)
    assert low.min() == 0 and low.max() == 399
    band = diffusion.sample_timesteps(scheduler, 4000, torch.Generator().manual_seed(0), min_timestep=200, max_timestep=300)
    assert band.min() == 200 and band.max() == 299
    for low_end, high_end in ((1000, None), (500, 500), (0, 1001), (-1, None)):
        with pytest.raises(ValueError, match=r"need 0 <= min_timestep < max_timestep <= 1000"):
            diffusion.sample_timesteps(scheduler, 1, min_timestep=low_end, max_timestep=high_end)


def test_mix_whole_window_turns_picked_rows_into_eq3_samples(scheduler):
    mask = diffusion.context_mask(64, 3, 5)
    mixed, picked = diffusion.mix_whole_window(mask, 0.25, torch.Generator().manual_seed(0))
    assert picked.shape == (64,) and picked.dtype == torch.bool and 4 <= int(picked.sum()) <= 30
    assert not mixed[picked].any()  # picked: no context, every frame noised and in the loss
    assert torch.equal(mixed[~picked], mask[~picked])  # the others keep Eq. 1-2's context
    again, picked_again = diffusion.mix_whole_window(mask, 0.25, torch.Generator().manual_seed(0))
    assert torch.equal(again, mixed) and torch.equal(picked_again, picked)
    clean = torch.randn(64, 4, 8, 2, 2)
    noisy = diffusion.noise_targets(scheduler, clean, torch.randn_like(clean), torch.full((64,), 900), mixed)
    assert not torch.isclose(noisy[picked][:, :, :3], clean[picked][:, :, :3]).any()
    assert torch.equal(noisy[~picked][:, :, :3], clean[~picked][:, :, :3])
    assert not diffusion.mix_whole_window(mask, 1.0)[0].any() and torch.equal(diffusion.mix_whole_window(mask, 0.0)[0], mask)
    with pytest.raises(ValueError, match="share must be in"):
        diffusion.mix_whole_window(mask, 1.5)


def test_motion_weights_emphasise_what_moves_and_keep_each_samples_mean():
    """Sample 0: one latent position of its 3 target frames changes (a small moving object);
    sample 1: everything moves (a camera pan); sample 2: no context (an Eq. 3 row)."""
    clean = torch.zeros(3, 12, 5, 4, 4)
    clean[0, :, 2:, 0, 0] = 1.0
    clean[1] += torch.arange(5.0)[None, :, None, None]
    clean[2, :, 3:, 1, 1] = 1.0
    mask = diffusion.context_mask(3, 2, 3)
    mask[2] = False
    weight = diffusion.motion_weights(clean, mask, strength=9.0, threshold=0.1)
    assert weight.shape == (3, 1, 5, 4, 4)
    targets = ~mask[:, None, :, None, None].expand_as(weight)
    for sample in range(3):  # every sample keeps its share of the batch loss
        assert weight[sample][targets[sample]].mean().item() == pytest.approx(1.0)
    moving, still = weight[0, 0, 2:, 0, 0], weight[0, 0, 2:, 1:, :]
    assert torch.allclose(moving / still.max(), torch.full((3,), 10.0))  # 1 + strength against 1
    assert (weight[1][targets[1]] == 1.0).all() and (weight[2] == 1.0).all()
    below = diffusion.motion_weights(clean * 0.05, mask, strength=9.0, threshold=0.1)  # changes under the threshold
    assert (below[0][targets[0]] == 1.0).all()
    with pytest.raises(ValueError, match="finite numbers >= 0"):
        diffusion.motion_weights(clean, mask, strength=float("nan"), threshold=0.1)


def test_weighted_masked_loss_is_the_weighted_mean_over_the_target_frames():
    prediction = torch.randn(2, 4, 6, 3, 3, requires_grad=True)
    target = torch.randn(2, 4, 6, 3, 3)
    mask = diffusion.context_mask(2, 2, 4)
    plain = diffusion.masked_diffusion_loss(prediction, target, mask)
    assert torch.allclose(diffusion.masked_diffusion_loss(prediction, target, mask, torch.ones(2, 1, 6, 3, 3)), plain)
    weight = torch.ones(2, 1, 6, 3, 3)
    weight[:, :, 2:, 0, 0] = 5.0
    weight[:, :, :2] = 1000.0  # the context stays out whatever its weight
    loss = diffusion.masked_diffusion_loss(prediction, target, mask, weight)
    squared = (prediction - target).pow(2)[:, :, 2:]
    expected = (squared * weight[:, :, 2:]).sum() / (weight[:, :, 2:].expand_as(squared)).sum()
    assert torch.allclose(loss, expected)
    loss.backward()
    assert torch.count_nonzero(prediction.grad[:, :, :2]) == 0
