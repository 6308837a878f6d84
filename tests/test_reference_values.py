"""Reference values, diffusers style: a seeded tiny model, a few pinned numbers of each output.

How the numbers were obtained: each test's computation was run once on CPU (torch 2.13.0+cpu,
diffusers 0.42.1, peft 0.21.2, 2 threads, as conftest sets) and the printed values pasted here; a
second run gave identical numbers, and a run with 1 thread differed by at most 2e-6, well inside
the 1e-4 tolerance. The model is ``ModelConfig(height=16, width=16, seed=0)`` (conftest's
``tiny_config``): a 1.3 M-parameter pixel-space UNet3D and a random tiny CLIP, both seeded; all
inputs come from seeded ``torch.Generator`` s.

A failure means the numerics changed: the model built from a config, the sampler, guidance, the
Temp-LoRA rules or the training step. If the change is intended, rerun the computation (the body
of the failing test), check the new numbers make sense, and replace them here.
"""

from __future__ import annotations

import pytest
import torch

from slowfast_vgen.config import load_config
from slowfast_vgen.data.dataset import ChunkBatch
from slowfast_vgen.fast_learner import FastLearnerConfig, TempLoRA
from slowfast_vgen.model import ModelBundle
from slowfast_vgen.sampler import make_scheduler, sample_chunk
from slowfast_vgen.training import SlowTrainer, TrainConfig

TOLERANCE = 1e-4
TO_Q = "base_model.model.transformer_in.transformer_blocks.0.attn1.to_q"  # a temporal attention LoRA


def _assert_matches(actual: torch.Tensor, expected: list[float]) -> None:
    actual = actual.detach().flatten().double()
    expected = torch.tensor(expected, dtype=torch.float64)
    assert torch.allclose(actual, expected, atol=TOLERANCE, rtol=0), f"got {[round(v, 6) for v in actual.tolist()]}"


# ---------------------------------------------------------------------------- sampler + guidance
EXPECTED_SAMPLE = [21.137527, 4.735409, -4.772975, -3.835769, 2.348202, 15.438512, 12.755667, 23.694914, -18.372581]
"""``out[0, :, -1, -1, -3:]``: last new frame, last row, last 3 pixels, all 3 channels (DDIM, 3 steps at the
default trailing spacing 999/666/333, guidance 4; the untrained tiny model's x0 at t = 999 is large).
Re-measured when the default spacing became trailing (1 and 2 threads gave the same numbers)."""


def _guided_sample(bundle: ModelBundle, conditional: torch.Tensor, unconditional: torch.Tensor) -> torch.Tensor:
    context = torch.rand(1, 3, 2, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return sample_chunk(bundle.unet, make_scheduler("ddim", bundle.noise_scheduler.config), context, conditional,
                        unconditional, num_frames=3, num_inference_steps=3, guidance_scale=4.0,
                        generator=torch.Generator().manual_seed(0))


def test_sampler_with_guidance_matches_reference(tiny_bundle):
    text, empty = tiny_bundle.encode_text(["move left"]), tiny_bundle.encode_text([""])
    out = _guided_sample(tiny_bundle, text, empty)
    assert out.shape == (1, 3, 3, 16, 16)
    _assert_matches(out[0, :, -1, -1, -3:], EXPECTED_SAMPLE)
    # guidance pushes away from the unconditional prediction: swapping the two texts gives another chunk
    swapped = _guided_sample(tiny_bundle, empty, text)
    assert (swapped[0, :, -1, -1, -3:].flatten() - torch.tensor(EXPECTED_SAMPLE)).abs().max() > 0.1


# ---------------------------------------------------------------------------- fast learning
EXPECTED_MEMORY = {
    # mode: (mean loss of the update's 2 steps, lora_B of transformer_in's attn1.to_q, rows 0-1 (rank 4))
    "paper": (1.1509796, [0.001907, 0.001951, -0.001970, -0.002001, -0.001997, -0.001898, 0.001982, 0.002000]),
    "text": (1.1296467, [0.001841, 0.001868, -0.001938, -0.002001, -0.002001, -0.001984, 0.001577, 0.001990]),
    "full-sequence": (1.1364056, [0.001895, 0.001923, -0.001988, -0.001591, -0.001862, -0.001406, 0.001817, 0.002001]),
}


def test_each_fast_learning_rule_matches_reference(tiny_config):
    """One memory update (2 Adam steps, rank 4, lr 1e-3) per rule on the same chunk pair and history."""
    generator = torch.Generator().manual_seed(1)
    previous = torch.rand(1, 3, 2, 16, 16, generator=generator) * 2 - 1
    new = torch.rand(1, 3, 3, 16, 16, generator=generator) * 2 - 1
    history = torch.cat([torch.rand(1, 3, 4, 16, 16, generator=generator) * 2 - 1, previous, new], dim=2)
    states = {}
    for mode, (expected_loss, expected_b) in EXPECTED_MEMORY.items():
        bundle = ModelBundle.from_config(tiny_config)
        config = FastLearnerConfig(mode=mode, rank=4, alpha=4, learning_rate=1e-3, steps_per_chunk=2)
        learner = TempLoRA(bundle.unet, bundle.noise_scheduler, config)
        loss = learner.update(previous, new, torch.Generator().manual_seed(0), bundle.encode_text([""]),
                              text_embeddings=bundle.encode_text(["move left"]), history=history)
        assert loss == pytest.approx(expected_loss, abs=TOLERANCE), mode
        states[mode] = learner.state_dict()
        _assert_matches(states[mode][f"{TO_Q}.lora_B.weight"][:2], expected_b)
    for first, second in (("paper", "text"), ("paper", "full-sequence"), ("text", "full-sequence")):
        largest = max((states[first][k] - states[second][k]).abs().max() for k in states[first])
        assert largest > TOLERANCE, f"{first} and {second} learn the same memory"


# ---------------------------------------------------------------------------- slow learning
EXPECTED_TRAIN_LOSS = 1.1021115
EXPECTED_CONV_IN = [0.093880, 0.052761, 0.133614]  # conv_in.weight[0, 0, 0] after the step
EXPECTED_CONV_OUT = [0.034481, 0.026829, -0.063368]  # conv_out.weight[0, :3, 1, 1] after the step


class _FixedBatchTrainer(SlowTrainer):
    """SlowTrainer on one fixed synthetic batch: the numbers depend on the training maths only (noise,
    timesteps, text dropout, masked loss, AdamW), not on a dataset or the procedural worlds."""

    def micro_batches(self, start: int):
        frames = torch.rand(2, 3, 6, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1  # (B, 3, F, H, W)
        context_mask = torch.tensor([[True, True, False, False, False, False]] * 2)  # f_p = 2, f_g = 4
        while True:
            yield ChunkBatch(frames, context_mask, ["move left", "move right"])


def test_one_slow_training_step_matches_reference(tmp_path):
    config = load_config(TrainConfig, overrides=[
        "data_source=live", f"output_dir={tmp_path}", "data.height=16", "data.width=16", "max_steps=1", "batch_size=2",
        "learning_rate=1e-2", "lr_warmup_steps=0", "report_to=none", "num_workers=0", "device=cpu",
    ])
    trainer = _FixedBatchTrainer(config)
    result = trainer.train()
    assert result.losses[1] == pytest.approx(EXPECTED_TRAIN_LOSS, abs=TOLERANCE)
    unet = trainer.accelerator.unwrap_model(trainer.unet)
    _assert_matches(unet.conv_in.weight[0, 0, 0], EXPECTED_CONV_IN)
    _assert_matches(unet.conv_out.weight[0, :3, 1, 1], EXPECTED_CONV_OUT)


def test_model_fingerprints_at_every_dtype_stay_those_sessions_recorded(tiny_config):
    """Saved sessions record the model's fingerprint, and a resume compares it. Hashing the text encoder as
    float32 (for feature caches) changed the bfloat16 and float16 fingerprints, and sessions saved at those
    dtypes were refused by the model they were made with. Pinned from the code before that change."""
    bundle = ModelBundle.from_config(tiny_config)
    pinned = {torch.float32: "9fdfcdfc11b94273", torch.bfloat16: "961e4de2f47f8ab6", torch.float16: "057f3284a23e4afc"}
    for dtype, fingerprint in pinned.items():
        bundle.to("cpu", dtype)
        assert bundle.model_fingerprint == fingerprint, dtype
