"""Streaming sessions: frame bookkeeping, determinism, exact save/resume, memory reset."""

import numpy as np
import pytest
import torch

from slowfast_vgen.config import load_config
from slowfast_vgen.errors import UserInputError
from slowfast_vgen.session import GenerationConfig, GenerationSession

FAST_OVERRIDES = ["frames_per_chunk=3", "context_frames=3", "window=6", "sampler.num_inference_steps=2",
                  "fast.rank=4", "fast.learning_rate=1e-3", "fast.steps_per_chunk=2"]


def _config(*extra):
    return load_config(GenerationConfig, overrides=FAST_OVERRIDES + list(extra))


def _session(bundle, first_frame, *extra):
    session = GenerationSession(bundle, _config(*extra))
    session.start(first_frame)
    return session


def test_frames_and_records_follow_the_actions(tiny_bundle, first_frame):
    session = _session(tiny_bundle, first_frame)
    new = session.generate(["move left", "  move right  "])
    assert new.shape == (6, 16, 16, 3) and new.dtype == np.uint8
    video = session.video()
    assert video.shape == (7, 16, 16, 3)
    assert np.array_equal(video[0], first_frame)
    assert [r.action for r in session.records] == ["move left", "move right"]
    assert [(r.start_frame, r.end_frame, r.context_frames) for r in session.records] == [(1, 4, 1), (4, 7, 3)]
    assert session.latents.shape == (1, 3, 7, 16, 16)
    assert all(r.temp_lora_loss is not None and r.seconds > 0 for r in session.records)


def test_same_seed_same_frames_other_seed_other_frames(tiny_config, first_frame):
    from slowfast_vgen.model import ModelBundle

    videos = []
    for seed in (5, 5, 6):
        session = _session(ModelBundle.from_config(tiny_config), first_frame, f"seed={seed}")
        session.generate(["move up", "move down"])
        videos.append(session.video())
    assert np.array_equal(videos[0], videos[1])
    assert not np.array_equal(videos[0], videos[2])


@pytest.mark.parametrize("mode", ["paper", "off"])
def test_save_load_continue_equals_uninterrupted_run(tiny_config, first_frame, tmp_path, mode):
    from slowfast_vgen.model import ModelBundle

    actions = ["move left", "move left", "move right", "move right"]
    straight = _session(ModelBundle.from_config(tiny_config), first_frame, f"fast.mode={mode}")
    straight.generate(actions)

    interrupted = _session(ModelBundle.from_config(tiny_config), first_frame, f"fast.mode={mode}")
    interrupted.generate(actions[:2])
    interrupted.save(tmp_path / "session")
    del interrupted
    resumed = GenerationSession.load(tmp_path / "session", ModelBundle.from_config(tiny_config))
    assert resumed.actions == actions[:2]
    resumed.generate(actions[2:])

    assert np.array_equal(resumed.video(), straight.video())
    assert torch.equal(resumed.latents, straight.latents)
    if mode == "paper":
        for name, parameter in straight.fast_learner.parameters.items():
            assert torch.equal(parameter, resumed.fast_learner.parameters[name]), name


def test_reset_memory_restores_initial_lora(tiny_bundle, first_frame):
    session = _session(tiny_bundle, first_frame)
    initial = {n: p.detach().clone() for n, p in session.fast_learner.parameters.items()}
    session.generate(["move left"])
    assert any(not torch.equal(initial[n], p) for n, p in session.fast_learner.parameters.items())
    session.reset_memory()
    assert all(torch.equal(initial[n], p) for n, p in session.fast_learner.parameters.items())
    assert session.num_frames == 4  # frames are kept


def test_off_mode_has_no_lora(tiny_bundle, first_frame):
    session = _session(tiny_bundle, first_frame, "fast.mode=off")
    session.generate(["stay"])
    assert session.fast_learner is None
    assert not any("lora_" in name for name, _ in tiny_bundle.unet.named_parameters())
    assert session.records[0].temp_lora_loss is None


def test_bad_inputs_are_user_errors(tiny_bundle, first_frame, tmp_path):
    session = _session(tiny_bundle, first_frame)
    with pytest.raises(UserInputError, match="action 2 is empty"):
        session.generate(["move left", "   "])
    with pytest.raises(UserInputError, match="the model needs 16x16"):
        session.start(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(UserInputError, match="exceeds the window of 6 frames"):
        _config("context_frames=4")
    with pytest.raises(UserInputError, match="not a saved session"):
        GenerationSession.load(tmp_path, tiny_bundle)
    (tmp_path / "session.json").write_text("{}")
    (tmp_path / "state.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UserInputError, match="corrupt"):
        GenerationSession.load(tmp_path, tiny_bundle)


def test_context_spans_chunk_boundaries(tiny_bundle, first_frame):
    session = _session(tiny_bundle, first_frame, "frames_per_chunk=2", "context_frames=3", "window=5")
    session.generate(["move left", "move right", "stay"])
    assert len(session.latent_chunks) == 4 and session.latents.shape[2] == 7
    for count in (1, 2, 3, 5, 7, 9):
        assert torch.equal(session.last_latents(count), session.latents[:, :, -count:])
    assert [r.context_frames for r in session.records] == [1, 3, 3]


@pytest.mark.parametrize("damaged", ["optimizer.safetensors", "memory/adapter_model.safetensors",
                                     "memory/adapter_config.json", "state.safetensors", "session.json"])
def test_truncated_session_file_is_a_user_error_and_leaves_the_running_session_intact(
    damaged, tiny_bundle, first_frame, tmp_path
):
    """Issue #12: a damaged file is an error naming it, raised before the shared model is touched."""
    saved = _session(tiny_bundle, first_frame)
    saved.generate(["move left"])
    saved.save(tmp_path / "session")
    file = tmp_path / "session" / damaged
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    running = _session(tiny_bundle, first_frame)  # a session on the same model, as in `sfvgen play`
    running.generate(["move up"])
    parameters = {name: p.detach().clone() for name, p in running.fast_learner.parameters.items()}
    with pytest.raises(UserInputError, match=rf"is corrupt: .*{damaged.split('/')[-1]}|{damaged.split('/')[-1]} is corrupt"):
        GenerationSession.load(tmp_path / "session", tiny_bundle)
    # the running session still owns the model's LoRA and keeps learning in it
    lora_names = {name for name, _ in tiny_bundle.unet.named_parameters() if "lora_" in name}
    assert lora_names == set(running.fast_learner.parameters)
    running.generate(["move down"])
    assert any(not torch.equal(parameters[n], p) for n, p in running.fast_learner.parameters.items())


def test_extreme_seeds_are_accepted_and_out_of_range_seeds_refused(tiny_bundle, first_frame):
    for seed in (2**64 - 1, -2**63):
        _session(tiny_bundle, first_frame, f"seed={seed}").generate(["stay"])
    for seed in (2**64, -2**63 - 1):
        with pytest.raises(UserInputError, match=rf"seed must be an integer in \[-2\*\*63, 2\*\*64 - 1\], got {seed}"):
            _config(f"seed={seed}")
