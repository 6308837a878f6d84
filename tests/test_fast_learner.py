"""Temp-LoRA: base weights frozen and untouched, memory learns, resets, saves as a plain peft adapter."""

import pytest
import torch
from peft import PeftModel

from slowfast_vgen.errors import UserInputError
from slowfast_vgen.fast_learner import (
    FastLearnerConfig, TempLoRA, activation_checkpointing, merged_adapter, remove_adapter, use_adapter,
)
from slowfast_vgen.model import ModelBundle


def _chunk_pair(seed=0):
    generator = torch.Generator().manual_seed(seed)
    previous = torch.rand(1, 3, 2, 16, 16, generator=generator) * 2 - 1
    new = torch.rand(1, 3, 4, 16, 16, generator=generator) * 2 - 1
    return previous, new


def _base_state(unet):
    """Base weights by their original names (peft renames a wrapped layer's weight to base_layer.weight)."""
    return {k.replace(".base_layer", ""): v.detach().clone() for k, v in unet.state_dict().items() if "lora_" not in k}


def _learner(bundle, **overrides):
    config = FastLearnerConfig(**{"rank": 4, "alpha": 4, "learning_rate": 1e-3, **overrides})
    return TempLoRA(bundle.unet, bundle.noise_scheduler, config)


def _output(unet, text, seed=0):
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(1, 3, 6, 16, 16, generator=generator).to(text.dtype)
    with torch.no_grad():
        return unet(sample, 500, encoder_hidden_states=text).sample


def test_only_lora_parameters_change_and_base_is_byte_equal(tiny_bundle):
    before = _base_state(tiny_bundle.unet)
    learner = _learner(tiny_bundle)
    trainable = {n for n, p in tiny_bundle.unet.named_parameters() if p.requires_grad}
    assert trainable == set(learner.parameters) and all("lora_" in n for n in trainable)
    assert all("temp_attentions" in n or "transformer_in" in n for n in trainable)
    lora_before = {n: p.detach().clone() for n, p in learner.parameters.items()}
    previous, new = _chunk_pair()
    uncond = tiny_bundle.encode_text([""])
    for _ in range(3):
        learner.update(previous, new, torch.Generator().manual_seed(1), uncond)
    after = _base_state(tiny_bundle.unet)
    assert before.keys() == after.keys()
    for key in before:
        assert before[key].numpy().tobytes() == after[key].numpy().tobytes(), key
    assert any(not torch.equal(lora_before[n], p) for n, p in learner.parameters.items())


def test_memory_on_a_float16_unet_trains_in_float32_and_stays_finite(tiny_bundle):
    """A float16 UNet (`--dtype float16`) once gave float16 LoRA weights: Adam's eps rounded to 0 and the
    first step turned A into NaN (its gradient is exactly 0 while B = 0)."""
    dtype = torch.float16
    tiny_bundle.to("cpu", dtype)
    before = _base_state(tiny_bundle.unet)
    learner = _learner(tiny_bundle)
    assert {p.dtype for p in learner.parameters.values()} == {torch.float32}
    previous, new = (x.to(dtype) for x in _chunk_pair())
    uncond = tiny_bundle.encode_text([""])
    losses = [learner.update(previous, new, torch.Generator().manual_seed(i), uncond) for i in range(2)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all(torch.isfinite(p).all() for p in learner.parameters.values())
    assert any(not torch.equal(learner.initial_state[n], p) for n, p in learner.parameters.items())
    output = _output(tiny_bundle.unet, uncond.to(dtype))
    assert output.dtype == dtype and torch.isfinite(output).all()
    after = _base_state(tiny_bundle.unet)
    assert all(torch.equal(before[key], after[key]) and after[key].dtype == dtype for key in before)


def test_update_leaves_base_frozen_without_grads_and_matches_a_plain_backward(tiny_bundle):
    """The memory step runs the frozen weights on the CPU's fast path (marked trainable for the
    step): afterwards they are frozen again, hold no .grad, and the LoRA moved exactly as Adam on
    the plain loss.backward() gradient moves it."""
    previous, new = _chunk_pair()
    uncond = tiny_bundle.encode_text([""])
    learner = _learner(tiny_bundle)
    learner.update(previous, new, torch.Generator().manual_seed(5), uncond)
    updated = {n: p.detach().clone() for n, p in learner.parameters.items()}
    base = [(n, p) for n, p in tiny_bundle.unet.named_parameters() if n not in learner.parameters]
    assert base and all(not p.requires_grad and p.grad is None for _, p in base)
    assert all(p.requires_grad and p.grad is None for p in learner.parameters.values())  # zeroed after the step

    reference = _learner(tiny_bundle)  # same name and seed: the same fresh memory
    reference.optimizer.zero_grad(set_to_none=True)
    loss = reference.loss(previous, new, torch.Generator().manual_seed(5), uncond)
    loss.backward()  # the frozen weights stay out of the graph here
    torch.nn.utils.clip_grad_norm_(list(reference.parameters.values()), reference.config.max_grad_norm)
    reference.optimizer.step()
    assert any(not torch.equal(updated[n], reference.initial_state[n]) for n in updated)
    for name, parameter in reference.parameters.items():
        torch.testing.assert_close(updated[name], parameter.detach(), rtol=1e-4, atol=1e-5)  # lr 1e-3 steps; matmul paths differ in rounding


def test_memory_loss_falls_over_update_steps(tiny_bundle):
    learner = _learner(tiny_bundle, learning_rate=1e-2, steps_per_chunk=1, batch_size=2)
    previous, new = _chunk_pair()
    uncond = tiny_bundle.encode_text([""])

    def probe():  # the same noise and timesteps every time
        with torch.no_grad():
            return float(learner.loss(previous, new, torch.Generator().manual_seed(123), uncond))

    start = probe()
    train_generator = torch.Generator().manual_seed(7)
    for _ in range(10):
        learner.update(previous, new, train_generator, uncond)
    assert probe() < 0.9 * start  # measured: 0.84 of the start after 10 updates


def test_checkpointed_update_equals_the_plain_update_and_unwraps(tiny_bundle):
    """Recomputing activations in the backward pass changes the memory's cost, not its weights."""
    previous, new = _chunk_pair()
    uncond = tiny_bundle.encode_text([""])
    weights = {}
    for checkpointing in (False, True):
        learner = _learner(tiny_bundle, checkpointing=checkpointing)  # same name: a fresh memory each time
        for _ in range(2):
            learner.update(previous, new, torch.Generator().manual_seed(3), uncond)
        weights[checkpointing] = {n: p.detach().clone() for n, p in learner.parameters.items()}
    moved = [n for n in weights[False] if not torch.equal(weights[False][n], learner.initial_state[n])]
    assert moved  # the comparison is between memories that learned something
    for name in weights[False]:
        torch.testing.assert_close(weights[True][name], weights[False][name], rtol=1e-5, atol=1e-7)
    with activation_checkpointing(tiny_bundle.unet):
        assert any("forward" in vars(m) for m in tiny_bundle.unet.modules())
    assert not any("forward" in vars(m) for m in tiny_bundle.unet.modules())  # the class forward again


def test_merged_memory_samples_like_the_lora_branch_and_restores_base_exactly(tiny_bundle):
    learner = _learner(tiny_bundle, learning_rate=1e-2)
    previous, new = _chunk_pair()
    uncond = tiny_bundle.encode_text([""])
    for _ in range(3):  # a memory that changes the output
        learner.update(previous, new, torch.Generator().manual_seed(2), uncond)
    before = _base_state(tiny_bundle.unet)
    text = tiny_bundle.encode_text(["move left"])
    with use_adapter(tiny_bundle.unet, learner.adapter_name):
        branch = _output(tiny_bundle.unet, text)
    with use_adapter(tiny_bundle.unet, None):
        base = _output(tiny_bundle.unet, text)
    with merged_adapter(tiny_bundle.unet, learner.adapter_name):
        merged = _output(tiny_bundle.unet, text)
    assert (branch - base).abs().max() > 1e-3  # the memory matters for this output
    torch.testing.assert_close(merged, branch, rtol=1e-4, atol=1e-5)
    after = _base_state(tiny_bundle.unet)
    for key in before:
        assert before[key].numpy().tobytes() == after[key].numpy().tobytes(), key


def test_read_scale_reads_the_memory_weaker_or_stronger_and_restores_base_exactly(tiny_bundle):
    learner = _learner(tiny_bundle, learning_rate=1e-2)
    previous, new = _chunk_pair()
    uncond = tiny_bundle.encode_text([""])
    for _ in range(3):
        learner.update(previous, new, torch.Generator().manual_seed(2), uncond)
    before = _base_state(tiny_bundle.unet)
    text = tiny_bundle.encode_text(["move left"])
    with use_adapter(tiny_bundle.unet, None):
        base = _output(tiny_bundle.unet, text)
    with merged_adapter(tiny_bundle.unet, learner.adapter_name, scale=0.0):
        torch.testing.assert_close(_output(tiny_bundle.unet, text), base, rtol=1e-4, atol=1e-5)
    # scale 2 = peft's LoRA branch with twice the scaling alpha / r in every layer
    layers = [m for m in tiny_bundle.unet.modules() if learner.adapter_name in getattr(m, "scaling", {})]
    assert layers
    for layer in layers:
        layer.scaling[learner.adapter_name] *= 2
    with use_adapter(tiny_bundle.unet, learner.adapter_name):
        doubled_branch = _output(tiny_bundle.unet, text)
    for layer in layers:
        layer.scaling[learner.adapter_name] /= 2
    with merged_adapter(tiny_bundle.unet, learner.adapter_name, scale=2.0):
        doubled = _output(tiny_bundle.unet, text)
    with merged_adapter(tiny_bundle.unet, learner.adapter_name):
        single = _output(tiny_bundle.unet, text)
    assert (doubled - single).abs().max() > 1e-3
    torch.testing.assert_close(doubled, doubled_branch, rtol=1e-4, atol=1e-5)
    after = _base_state(tiny_bundle.unet)
    for key in before:
        assert before[key].numpy().tobytes() == after[key].numpy().tobytes(), key


@pytest.mark.parametrize("mode, band, low, high", [("paper", {"min_timestep": 900}, 900, 999),
                                                   ("text", {"min_timestep": 900}, 900, 999),
                                                   ("paper", {"max_timestep": 100}, 0, 99),
                                                   ("paper", {"min_timestep": 40, "max_timestep": 60}, 40, 59)])
def test_the_memory_trains_on_its_band_of_noise_levels_only(tiny_bundle, drawn_timesteps, mode, band, low, high):
    learner = _learner(tiny_bundle, mode=mode, batch_size=8, **band)
    previous, new = _chunk_pair()
    text = tiny_bundle.encode_text(["move left"])
    learner.update(previous, new, torch.Generator().manual_seed(0), tiny_bundle.encode_text([""]), text_embeddings=text)
    timesteps = torch.cat(drawn_timesteps)
    assert timesteps.numel() == 8 and low <= int(timesteps.min()) and int(timesteps.max()) <= high


def test_a_band_of_noise_levels_outside_the_model_s_timesteps_is_a_user_error(tiny_bundle):
    steps = tiny_bundle.noise_scheduler.config.num_train_timesteps
    with pytest.raises(UserInputError, match=f"fast.min_timestep must be below the model's {steps} training "
                                             f"timesteps, got {steps}"):
        _learner(tiny_bundle, min_timestep=steps)
    with pytest.raises(ValueError, match="fast.min_timestep must be >= 0, got -1"):
        FastLearnerConfig(min_timestep=-1)
    with pytest.raises(UserInputError, match=f"fast.max_timestep must be at most the model's {steps} training "
                                             f"timesteps, got {steps + 1}"):
        _learner(tiny_bundle, max_timestep=steps + 1)
    with pytest.raises(ValueError, match="fast.max_timestep must be above fast.min_timestep, got 500 <= 500"):
        FastLearnerConfig(min_timestep=500, max_timestep=500)


@pytest.mark.parametrize("value", [-0.5, float("nan"), float("inf")])
def test_read_scale_must_be_finite_and_not_negative(value):
    with pytest.raises(ValueError, match=f"fast.read_scale must be a finite number >= 0, got {value}"):
        FastLearnerConfig(read_scale=value)


def test_fresh_memory_changes_nothing_and_reset_restores_initial_output(tiny_bundle):
    text = tiny_bundle.encode_text([""])
    without_lora = _output(tiny_bundle.unet, text)
    learner = _learner(tiny_bundle)
    base_output = _output(tiny_bundle.unet, text)
    # B = 0 at start: the fresh memory is a no-op (up to float summation order)
    assert torch.allclose(base_output, without_lora, atol=1e-5, rtol=0)
    previous, new = _chunk_pair()
    for _ in range(3):
        learner.update(previous, new, torch.Generator().manual_seed(1), text)
    assert not torch.equal(_output(tiny_bundle.unet, text), base_output)
    parameters_before = {n: id(p) for n, p in learner.parameters.items()}
    learner.reset()
    assert torch.equal(_output(tiny_bundle.unet, text), base_output)
    assert {n: id(p) for n, p in learner.parameters.items()} == parameters_before  # in place
    assert len(learner.optimizer.state) == 0


def test_saved_memory_reloads_into_plain_peft_exactly(tiny_bundle, tiny_config, tmp_path):
    learner = _learner(tiny_bundle)
    previous, new = _chunk_pair()
    text = tiny_bundle.encode_text([""])
    for _ in range(2):
        learner.update(previous, new, torch.Generator().manual_seed(3), text)
    expected = _output(tiny_bundle.unet, text)
    learner.save(tmp_path / "memory")
    assert sorted(p.name for p in (tmp_path / "memory").iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "fast_learner.json"]

    fresh_unet = ModelBundle.from_config(tiny_config).unet  # same base weights (same seed)
    peft_model = PeftModel.from_pretrained(fresh_unet, tmp_path / "memory", adapter_name="temp_lora")
    with torch.no_grad():
        sample = torch.randn(1, 3, 6, 16, 16, generator=torch.Generator().manual_seed(0))
        reloaded = peft_model(sample, 500, encoder_hidden_states=text).sample
    assert torch.equal(reloaded, expected)

    # and back into our own learner on another fresh model
    other = ModelBundle.from_config(tiny_config)
    other_learner = _learner(other)
    other_learner.load(tmp_path / "memory")
    assert torch.equal(_output(other.unet, text), expected)


def test_memory_with_other_rank_is_refused(tiny_bundle, tiny_config, tmp_path):
    _learner(tiny_bundle).save(tmp_path / "memory")
    other = ModelBundle.from_config(tiny_config)
    with pytest.raises(Exception, match="rank 4"):
        _learner(other, rank=8).load(tmp_path / "memory")


def _trained(bundle, seed, **overrides):
    learner = _learner(bundle, **overrides)
    previous, new = _chunk_pair(seed)
    learner.update(previous, new, torch.Generator().manual_seed(seed), bundle.encode_text([""]))
    return learner


ALL_ATTENTION = r".*attn[12]\.(to_q|to_k|to_v|to_out\.0)"  # more layers than the default temporal attention


@pytest.mark.parametrize("saved, loading, message", [
    ({}, {"alpha": 8}, r"has LoRA alpha 4(\.0)?, this episode uses 8(\.0)? \(fast\.alpha\)"),
    ({}, {"target_modules": ALL_ATTENTION}, r"does not fit this Temp-LoRA: it has no weight for .*\(made on other layers"),
    ({"target_modules": ALL_ATTENTION}, {}, r"does not fit this model: unexpected LoRA weight"),
])
def test_a_memory_made_with_other_alpha_or_layers_is_refused_and_the_memory_in_place_kept(
        tiny_bundle, tiny_config, tmp_path, saved, loading, message):
    _trained(tiny_bundle, 1, **saved).save(tmp_path / "memory")
    other = ModelBundle.from_config(tiny_config)
    learner = _trained(other, 2, **loading)
    text = other.encode_text([""])
    before = _output(other.unet, text)
    with pytest.raises(UserInputError, match=message):
        learner.load(tmp_path / "memory")
    assert torch.equal(_output(other.unet, text), before)


def test_weights_of_another_shape_are_refused_before_any_is_loaded(tiny_bundle):
    learner = _trained(tiny_bundle, 1)
    state = learner.state_dict()
    text = tiny_bundle.encode_text([""])
    before = _output(tiny_bundle.unet, text)
    key = sorted(state)[-1]
    wrong = {k: torch.zeros_like(v) for k, v in state.items()} | {key: torch.zeros(3, 3)}
    with pytest.raises(UserInputError, match=r"has shape \(3, 3\), this model's is"):
        learner.load_state_dict(wrong)
    assert torch.equal(_output(tiny_bundle.unet, text), before)


def test_a_saved_memory_records_its_settings_and_loading_names_those_that_differ(tiny_bundle, tiny_config, tmp_path):
    _trained(tiny_bundle, 1, read_scale=0.5, learning_rate=1e-3).save(tmp_path / "memory")
    other = ModelBundle.from_config(tiny_config)
    assert _learner(other, read_scale=0.5).load(tmp_path / "memory") == []
    assert _learner(ModelBundle.from_config(tiny_config), mode="text", learning_rate=2e-3).load(tmp_path / "memory") == [
        "mode paper -> text", "learning_rate 0.001 -> 0.002", "read_scale 0.5 -> 1.0"]
    (tmp_path / "memory" / "fast_learner.json").unlink()  # as plain peft or an older version saves it: nothing to compare
    assert _learner(ModelBundle.from_config(tiny_config)).load(tmp_path / "memory") == []


def test_a_memory_is_not_saved_over_a_folder_of_other_files(tiny_bundle, tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(UserInputError, match=r"notes: it is a folder of other files \(no adapter_config\.json\)"):
        _learner(tiny_bundle).save(tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def test_a_damaged_settings_file_is_named_and_the_memory_in_place_kept(tiny_bundle, tiny_config, tmp_path):
    _trained(tiny_bundle, 1).save(tmp_path / "memory")
    (tmp_path / "memory" / "fast_learner.json").write_text('{"mode": "pa')
    other = ModelBundle.from_config(tiny_config)
    learner = _trained(other, 2)
    text = other.encode_text([""])
    before = _output(other.unet, text)
    with pytest.raises(UserInputError, match=r"memory .*fast_learner\.json is corrupt"):
        learner.load(tmp_path / "memory")
    assert torch.equal(_output(other.unet, text), before)


@pytest.mark.parametrize("mode", ["text", "full-sequence"])
def test_ablation_variants_train_the_lora(tiny_bundle, mode):
    before = _base_state(tiny_bundle.unet)
    learner = _learner(tiny_bundle, mode=mode)
    initial = {n: p.detach().clone() for n, p in learner.parameters.items()}
    previous, new = _chunk_pair()
    history = torch.cat([torch.rand(1, 3, 10, 16, 16), previous, new], dim=2)
    loss = learner.update(previous, new, torch.Generator().manual_seed(0), tiny_bundle.encode_text([""]),
                          text_embeddings=tiny_bundle.encode_text(["move left"]), history=history)
    assert loss == loss and loss > 0
    assert any(not torch.equal(initial[n], p) for n, p in learner.parameters.items())
    after = _base_state(tiny_bundle.unet)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_history_windows_are_drawn_from_the_first_to_the_last():
    from slowfast_vgen.fast_learner import _random_window

    history = torch.arange(10.0).reshape(1, 1, 10, 1, 1)
    generator = torch.Generator().manual_seed(0)
    starts = {int(_random_window(history, 4, generator)[0, 0, 0, 0, 0]) for _ in range(200)}
    assert starts == set(range(7))  # every window of 4 in 10 frames, the last (6..9) included
    assert torch.equal(_random_window(history[:, :, :3], 4, generator), history[:, :, :3])  # shorter: the whole history


def test_text_rule_masks_the_previous_frames_as_context(tiny_bundle, monkeypatch):
    """The `text` variant trains Eq. 1-2 on the pair: the f_p previous frames are clean context, the f_g new
    ones the targets (f_p != f_g here, so swapped lengths show)."""
    from slowfast_vgen import diffusion

    masks = []
    real = diffusion.masked_diffusion_loss
    monkeypatch.setattr(diffusion, "masked_diffusion_loss", lambda p, t, mask: masks.append(mask) or real(p, t, mask))
    learner = _learner(tiny_bundle, mode="text", batch_size=2)
    previous, new = _chunk_pair()  # 2 previous frames, 4 new
    learner.update(previous, new, torch.Generator().manual_seed(0), tiny_bundle.encode_text([""]),
                   text_embeddings=tiny_bundle.encode_text(["move left"]))
    assert len(masks) == 1 and masks[0].tolist() == [[True, True, False, False, False, False]] * 2


@pytest.mark.parametrize("max_grad_norm, clipped", [(0.5, True), (0.0, False)])
def test_memory_gradients_are_clipped_to_max_grad_norm(tiny_bundle, monkeypatch, max_grad_norm, clipped):
    calls = []
    real = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, max_norm, *a, **k: calls.append(max_norm) or real(params, max_norm, *a, **k))
    learner = _learner(tiny_bundle, steps_per_chunk=2, max_grad_norm=max_grad_norm)
    previous, new = _chunk_pair()
    learner.update(previous, new, torch.Generator().manual_seed(0), tiny_bundle.encode_text([""]))
    assert calls == ([max_grad_norm] * 2 if clipped else [])


def test_optimizer_state_round_trips_without_pickle(tiny_bundle, tmp_path):
    learner = _learner(tiny_bundle)
    previous, new = _chunk_pair()
    uncond = tiny_bundle.encode_text([""])
    learner.update(previous, new, torch.Generator().manual_seed(0), uncond)
    learner.save_optimizer(tmp_path / "optimizer.safetensors")
    saved = learner.optimizer.state_dict()
    learner.optimizer.state.clear()
    learner.load_optimizer(tmp_path / "optimizer.safetensors")
    loaded = learner.optimizer.state_dict()
    assert saved["param_groups"] == loaded["param_groups"]
    for index, slots in saved["state"].items():
        for key, value in slots.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(loaded["state"][index][key]))


def test_remove_adapter_restores_plain_unet(tiny_bundle):
    text = tiny_bundle.encode_text([""])
    base_output = _output(tiny_bundle.unet, text)
    learner = _learner(tiny_bundle)
    learner.update(*_chunk_pair(), torch.Generator().manual_seed(0), text)
    assert remove_adapter(tiny_bundle.unet)
    assert torch.allclose(_output(tiny_bundle.unet, text), base_output, atol=1e-5, rtol=0)
    assert not any(p.requires_grad and "lora_" in n for n, p in tiny_bundle.unet.named_parameters())
    assert not remove_adapter(tiny_bundle.unet)


def test_bad_fast_config_is_refused():
    with pytest.raises(ValueError, match="fast mode must be one of"):
        FastLearnerConfig(mode="sometimes")


def test_replay_trains_on_the_latest_pair_plus_windows_of_the_history(tiny_bundle, monkeypatch):
    from slowfast_vgen import fast_learner

    seen = []
    original = fast_learner.diffusion.noise_whole_sequence

    def spy(scheduler, clean, noise, timesteps):
        seen.append(clean.detach().clone())
        return original(scheduler, clean, noise, timesteps)

    monkeypatch.setattr(fast_learner.diffusion, "noise_whole_sequence", spy)
    before = _base_state(tiny_bundle.unet)
    learner = _learner(tiny_bundle, replay=2, batch_size=2)
    previous, new = _chunk_pair()
    older = torch.rand(1, 3, 10, 16, 16, generator=torch.Generator().manual_seed(5))
    history = torch.cat([older, previous, new], dim=2)  # 16 frames; windows are 6 long
    loss = learner.update(previous, new, torch.Generator().manual_seed(0), tiny_bundle.encode_text([""]), history=history)
    assert loss == loss and loss > 0

    (clean,) = seen
    assert clean.shape == (2 * 3, 3, 6, 16, 16)  # batch_size x (latest pair + 2 replayed windows)
    pair = torch.cat([previous, new], dim=2)[0]
    assert torch.equal(clean[0], pair) and torch.equal(clean[1], pair)
    windows = [history[0, :, s:s + 6] for s in range(16 - 6 + 1)]
    for sample in clean[2:]:
        assert any(torch.equal(sample, window) for window in windows)
    assert torch.equal(clean[2], clean[3]) and torch.equal(clean[4], clean[5])  # one window, batch_size noise draws
    after = _base_state(tiny_bundle.unet)
    assert all(torch.equal(before[k], after[k]) for k in before)

    with pytest.raises(ValueError, match="fast.replay needs the generated history"):
        learner.update(previous, new, torch.Generator().manual_seed(0), tiny_bundle.encode_text([""]))


def test_bad_replay_is_refused():
    with pytest.raises(ValueError, match="fast.replay must be >= 0, got -1"):
        FastLearnerConfig(replay=-1)
    with pytest.raises(ValueError, match="fast.replay rehearses history windows under the paper rule, not mode 'text'"):
        FastLearnerConfig(mode="text", replay=1)
    assert FastLearnerConfig(mode="off", replay=1).replay == 1  # `sfvgen eval --variants off,paper fast.replay=1`


@pytest.mark.parametrize("field, value, message", [
    ("learning_rate", float("nan"), "fast.learning_rate must be a finite number >= 0"),
    ("learning_rate", float("inf"), "fast.learning_rate must be a finite number >= 0"),
    ("learning_rate", -1e-3, "fast.learning_rate must be a finite number >= 0"),
    ("alpha", float("nan"), "fast.alpha must be a finite number > 0"),
    ("alpha", float("inf"), "fast.alpha must be a finite number > 0"),
    ("alpha", 0.0, "fast.alpha must be a finite number > 0"),
    ("max_grad_norm", -1.0, "fast.max_grad_norm must be a finite number >= 0"),
    ("max_grad_norm", float("nan"), "fast.max_grad_norm must be a finite number >= 0"),
    ("max_grad_norm", float("inf"), "fast.max_grad_norm must be a finite number >= 0"),
])
def test_fast_float_settings_must_be_finite_and_in_range(field, value, message):
    """NaN crashed Adam (``Invalid learning rate: nan``); an infinite learning rate or a NaN alpha was
    accepted and broke the memory; a negative max_grad_norm was accepted."""
    with pytest.raises(ValueError, match=f"^{message}.*, got {value}$"):
        FastLearnerConfig(**{field: value})
    assert FastLearnerConfig(learning_rate=0.0, max_grad_norm=0.0).max_grad_norm == 0.0  # 0 = frozen memory, no clipping


def test_bad_target_modules_regex_is_a_config_error_and_one_matching_nothing_a_user_error(tiny_bundle):
    with pytest.raises(ValueError, match=r"^fast.target_modules is not a valid regular expression: '\('"):
        FastLearnerConfig(target_modules="(")
    before = {name: p.detach().clone() for name, p in tiny_bundle.unet.named_parameters()}
    with pytest.raises(UserInputError, match="^Temp-LoRA target regex matched no module of the UNet: 'no_such_module'$"):
        _learner(tiny_bundle, target_modules="no_such_module")
    # the UNet is left as it was: no adapter, no config, same parameters
    assert getattr(tiny_bundle.unet, "peft_config", None) in (None, {})
    assert {name: p.detach() for name, p in tiny_bundle.unet.named_parameters()}.keys() == before.keys()


def test_a_target_modules_pattern_that_backtracks_without_end_is_refused_wherever_it_comes_from(tiny_bundle,
                                                                                                 monkeypatch):
    """From a model's slowfast_vgen.json (or an override) `(.|.)*Z` hung generation in peft's matching, with the
    GIL held; only a saved session's pattern was checked. Every Temp-LoRA now checks its pattern first."""
    from slowfast_vgen import fast_learner

    monkeypatch.setattr(fast_learner, "REGEX_CHECK_SECONDS", 2.0)
    before = {name for name, _ in tiny_bundle.unet.named_parameters()}
    with pytest.raises(UserInputError, match=r"^fast.target_modules '\(.\|.\)\*Z' did not finish matching the "
                                             r"model's layers within 2 s"):
        TempLoRA(tiny_bundle.unet, tiny_bundle.noise_scheduler, FastLearnerConfig(target_modules="(.|.)*Z"))
    assert {name for name, _ in tiny_bundle.unet.named_parameters()} == before  # nothing injected
