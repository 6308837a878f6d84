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


def _saved_midway(bundle, first_frame, directory, *extra, actions=("move left", "move left")):
    """A session on ``bundle`` that generated ``actions`` and was saved to ``directory``."""
    session = _session(bundle, first_frame, *extra)
    session.generate(list(actions))
    session.save(directory)
    return session


def _session_json(directory):
    import json

    return json.loads((directory / "session.json").read_text())


@pytest.mark.parametrize("mode", ["paper", "off"])
def test_save_load_continue_equals_uninterrupted_run(tiny_config, tiny_model_dir, first_frame, tmp_path, mode):
    """Resumed on the same model, loaded afresh from its directory: the session records the fingerprint of
    the model it was made with (built from its config), the loaded model has it too, and the run goes on
    as if never interrupted."""
    from slowfast_vgen.model import ModelBundle

    actions = ["move left", "move left", "move right", "move right"]
    straight = _session(ModelBundle.from_config(tiny_config), first_frame, f"fast.mode={mode}")
    straight.generate(actions)

    interrupted = _saved_midway(ModelBundle.from_config(tiny_config), first_frame, tmp_path / "session",
                                f"fast.mode={mode}", actions=actions[:2])
    del interrupted
    bundle = ModelBundle.from_pretrained(tiny_model_dir)  # tiny_config's model, saved
    assert _session_json(tmp_path / "session")["model_fingerprint"] == bundle.model_fingerprint
    resumed = GenerationSession.load(tmp_path / "session", bundle)
    assert resumed.actions == actions[:2]
    resumed.generate(actions[2:])

    assert np.array_equal(resumed.video(), straight.video())
    assert torch.equal(resumed.latents, straight.latents)
    if mode == "paper":
        for name, parameter in straight.fast_learner.parameters.items():
            assert torch.equal(parameter, resumed.fast_learner.parameters[name]), name


def test_a_session_saved_with_another_model_is_refused_and_the_running_session_is_intact(
    tiny_bundle, first_frame, tmp_path
):
    """A session resumed on another model of the same frame size continued silently from latents that
    model never produced: session.json records the model's fingerprint, and load refuses another."""
    from slowfast_vgen.model import ModelBundle, ModelConfig

    other_config = ModelConfig(height=16, width=16, seed=1)  # same size and architecture, other weights
    _saved_midway(tiny_bundle, first_frame, tmp_path / "session", "fast.mode=off", actions=["move left"])
    other = ModelBundle.from_config(other_config)
    running = _session(other, first_frame, "seed=3")  # a session on the other model, as in `sfvgen play`
    running.generate(["move up"])
    parameters = {name: p.detach().clone() for name, p in running.fast_learner.parameters.items()}
    adapters = set(other.unet.peft_config)
    with pytest.raises(UserInputError) as caught:
        GenerationSession.load(tmp_path / "session", other)
    assert str(caught.value) == (
        f"saved session {tmp_path / 'session'} was made with another model (model fingerprint "
        f"{tiny_bundle.model_fingerprint} != {other.model_fingerprint}); resume it with the model it was generated with"
    )
    # refused before the model was touched: no adapter came or went, the running memory is as it was
    assert set(other.unet.peft_config) == adapters
    assert {name for name, _ in other.unet.named_parameters() if "lora_" in name} == set(running.fast_learner.parameters)
    assert all(torch.equal(parameters[name], p) for name, p in running.fast_learner.parameters.items())
    running.generate(["move down"])  # and it goes on exactly as it would have alone
    alone = _session(ModelBundle.from_config(other_config), first_frame, "seed=3")
    alone.generate(["move up", "move down"])
    assert np.array_equal(running.video(), alone.video())


def test_a_session_saved_at_another_dtype_names_both_dtypes(tiny_bundle, tiny_config, first_frame, tmp_path):
    from slowfast_vgen.model import ModelBundle

    _saved_midway(tiny_bundle, first_frame, tmp_path / "session", "fast.mode=off", actions=["move left"])
    wide = ModelBundle.from_config(tiny_config)
    assert wide.model_fingerprint == tiny_bundle.model_fingerprint
    wide.to("cpu", torch.float64)  # the same weights, widened: other bytes, other numerics
    with pytest.raises(UserInputError) as caught:
        GenerationSession.load(tmp_path / "session", wide)
    assert str(caught.value) == (
        f"saved session {tmp_path / 'session'} was made with another model or dtype (model fingerprint "
        f"{tiny_bundle.model_fingerprint} != {wide.model_fingerprint}; its weights were float32, this model's are "
        "float64); resume it with the model and dtype it was generated with"
    )
    # a module's own .to (as a pipeline's .to does) is noticed too: the cached fingerprint is not reused
    again = ModelBundle.from_config(tiny_config)
    before = again.model_fingerprint
    again.unet.to(torch.float64)
    assert again.model_fingerprint != before


def test_the_model_fingerprint_ignores_injected_and_merged_memories(tiny_bundle, tiny_config, first_frame, tmp_path):
    """peft renames a wrapped layer's weight to ``...base_layer.weight`` and adds ``lora_`` tensors; a chunk
    merges the memory into the weights while it samples. None of it changes the fingerprint."""
    from slowfast_vgen.fast_learner import merged_adapter
    from slowfast_vgen.model import ModelBundle, model_fingerprint

    plain = model_fingerprint(tiny_bundle.unet)  # no adapter yet
    session = _session(tiny_bundle, first_frame)  # injects its memory
    names = [name for name, _ in tiny_bundle.unet.named_parameters()]
    assert any("lora_" in name for name in names) and any(".base_layer." in name for name in names)
    assert model_fingerprint(tiny_bundle.unet) == plain
    # the CLI saves after every chunk, from the chunk callback: the bundle's first fingerprint is read there
    session.generate(["move left", "move right"], callback=lambda record, frames: session.save(tmp_path / "s"))
    fresh = ModelBundle.from_config(tiny_config).model_fingerprint  # no adapter ever
    assert _session_json(tmp_path / "s")["model_fingerprint"] == tiny_bundle.model_fingerprint == fresh
    assert model_fingerprint(tiny_bundle.unet) == plain  # the merged memory left the weights as they were
    with merged_adapter(tiny_bundle.unet, session.adapter_name):  # why it is never computed inside a chunk
        assert model_fingerprint(tiny_bundle.unet) != plain


def test_the_model_fingerprint_covers_the_action_encoder(tiny_config):
    from slowfast_vgen.model import ModelBundle

    bundles = [ModelBundle.from_config(tiny_config) for _ in range(3)]
    without = bundles[0].model_fingerprint
    for bundle, seed in zip(bundles, (0, 0, 1)):
        bundle.with_action_encoder(hidden_dim=16, num_tokens=1, classifier=False, seed=seed)
    fingerprints = [bundle.model_fingerprint for bundle in bundles]
    assert fingerprints[0] == fingerprints[1] != fingerprints[2] and without not in fingerprints


def test_the_model_fingerprint_covers_the_noise_schedule(tiny_config):
    """The same weights trained for another parameterisation (epsilon vs v) are another model."""
    from diffusers import DDPMScheduler

    from slowfast_vgen.model import ModelBundle

    same, other = ModelBundle.from_config(tiny_config), ModelBundle.from_config(tiny_config)
    other.noise_scheduler = DDPMScheduler.from_config({**other.noise_scheduler.config, "prediction_type": "v_prediction"})
    assert same.model_fingerprint == ModelBundle.from_config(tiny_config).model_fingerprint != other.model_fingerprint


def test_a_session_saved_without_a_model_fingerprint_loads_and_its_next_save_records_one(
    tiny_bundle, first_frame, tmp_path
):
    """Sessions saved before fingerprints were recorded resume on any model of their size (nothing to
    compare); saved again, they carry the fingerprint of the model that continued them."""
    import json

    from slowfast_vgen.model import ModelBundle, ModelConfig

    _saved_midway(tiny_bundle, first_frame, tmp_path / "old", "fast.mode=off", actions=["move left"])
    meta = _session_json(tmp_path / "old")
    for key in ("model_fingerprint", "model_dtype"):
        meta.pop(key, None)
    (tmp_path / "old" / "session.json").write_text(json.dumps(meta))
    other = ModelBundle.from_config(ModelConfig(height=16, width=16, seed=1))
    resumed = GenerationSession.load(tmp_path / "old", other)
    resumed.generate(["move right"])
    resumed.save(tmp_path / "again")
    with pytest.raises(UserInputError, match="was made with another model"):
        GenerationSession.load(tmp_path / "again", tiny_bundle)
    assert _session_json(tmp_path / "again")["model_fingerprint"] == other.model_fingerprint


@pytest.mark.parametrize("key", ["model_fingerprint", "model_dtype"])
def test_a_model_fingerprint_that_is_not_a_string_is_corrupt(key, tiny_bundle, first_frame, tmp_path):
    import json

    _saved_midway(tiny_bundle, first_frame, tmp_path / "session", "fast.mode=off", actions=["move left"])
    (tmp_path / "session" / "session.json").write_text(json.dumps({**_session_json(tmp_path / "session"), key: 5}))
    with pytest.raises(UserInputError) as caught:
        GenerationSession.load(tmp_path / "session", tiny_bundle)
    assert str(caught.value) == (f"saved session {tmp_path / 'session'} is corrupt: session.json: "
                                 f"{key} is int, expected a string")


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
    with pytest.raises(UserInputError, match="action 2 must be text, got int"):  # was "action 2 is empty"
        session.generate(["move left", 1])
    with pytest.raises(UserInputError, match="action 1 is not valid text: surrogates not allowed at character 5"):
        session.generate(["move \udcff left"])  # undecodable stdin: the tokenizer's TypeError
    assert session.num_chunks_done == 0
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
                                     "memory/adapter_config.json", "state.safetensors", "session.json",
                                     "video/000001.safetensors"])
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
    # the failed load added and removed no adapter: the running session still owns its LoRA and keeps learning in it
    lora_names = {name for name, _ in tiny_bundle.unet.named_parameters() if "lora_" in name}
    assert lora_names == set(saved.fast_learner.parameters) | set(running.fast_learner.parameters)
    running.generate(["move down"])
    assert any(not torch.equal(parameters[n], p) for n, p in running.fast_learner.parameters.items())


def test_extreme_seeds_are_accepted_and_out_of_range_seeds_refused(tiny_bundle, first_frame):
    for seed in (2**64 - 1, -2**63):
        _session(tiny_bundle, first_frame, f"seed={seed}").generate(["stay"])
    for seed in (2**64, -2**63 - 1):
        with pytest.raises(UserInputError, match=rf"seed must be an integer in \[-2\*\*63, 2\*\*64 - 1\], got {seed}"):
            _config(f"seed={seed}")


def _run_alone(tiny_config, first_frame, mode, seed, actions):
    from slowfast_vgen.model import ModelBundle

    session = _session(ModelBundle.from_config(tiny_config), first_frame, f"fast.mode={mode}", f"seed={seed}")
    for action in actions:
        session.generate([action])
    return session


@pytest.mark.parametrize("other_mode", ["paper", "off", "full-sequence"])
def test_interleaved_sessions_on_one_model_equal_each_alone(tiny_bundle, tiny_config, first_frame, other_mode):
    """Issue #12: each session owns its Temp-LoRA (an adapter of its own, active only while it runs)."""
    actions_a, actions_b = ["move left", "move up"], ["move right", "stay"]
    alone_a = _run_alone(tiny_config, first_frame, "paper", 1, actions_a)
    alone_b = _run_alone(tiny_config, first_frame, other_mode, 2, actions_b)

    a = _session(tiny_bundle, first_frame, "fast.mode=paper", "seed=1")
    b = _session(tiny_bundle, first_frame, f"fast.mode={other_mode}", "seed=2")
    for action_a, action_b in zip(actions_a, actions_b):  # A chunk, B chunk, A chunk, B chunk
        a.generate([action_a])
        b.generate([action_b])

    for together, alone in ((a, alone_a), (b, alone_b)):
        assert np.array_equal(together.video(), alone.video())
        assert torch.equal(together.latents, alone.latents)
        assert [r.temp_lora_loss for r in together.records] == [r.temp_lora_loss for r in alone.records]
        if together.fast_learner is not None:
            mine, reference = together.fast_learner.state_dict(), alone.fast_learner.state_dict()
            assert mine.keys() == reference.keys() and all(torch.equal(mine[k], reference[k]) for k in mine)
    assert b.fast_learner is None or a.adapter_name != b.adapter_name


def test_closing_a_session_deletes_only_its_adapter(tiny_bundle, first_frame):
    a = _session(tiny_bundle, first_frame)
    b = _session(tiny_bundle, first_frame)
    b.generate(["move left"])
    b_state = b.fast_learner.state_dict()
    a.close()
    lora_names = {name for name, _ in tiny_bundle.unet.named_parameters() if "lora_" in name}
    assert lora_names == set(b.fast_learner.parameters)
    assert all(torch.equal(v, b.fast_learner.state_dict()[k]) for k, v in b_state.items())
    with pytest.raises(RuntimeError, match="closed"):
        a.save("unused")
    c = _session(tiny_bundle, first_frame)  # takes the freed name
    assert c.adapter_name == a.adapter_name != b.adapter_name


def test_a_collected_session_never_deletes_a_newer_adapter_of_its_name(tiny_bundle, first_frame):
    from slowfast_vgen.fast_learner import remove_adapter

    old = _session(tiny_bundle, first_frame)
    remove_adapter(tiny_bundle.unet, old.adapter_name)  # someone else freed the name
    new = _session(tiny_bundle, first_frame)
    assert new.adapter_name == old.adapter_name
    del old  # its finalizer runs now: the adapter of that name is not its own any more
    assert set(new.fast_learner.parameters) <= {name for name, _ in tiny_bundle.unet.named_parameters()}
    new.generate(["move left"])


def test_the_memory_shapes_the_next_chunk(tiny_config, first_frame):
    """Paper vs off with one seed: the same first chunk (a fresh LoRA is a no-op), then the memory is active
    while the session samples, so the second chunk differs."""
    actions = ["move left", "move up"]
    paper = _run_alone(tiny_config, first_frame, "paper", 1, actions)
    off = _run_alone(tiny_config, first_frame, "off", 1, actions)
    assert torch.allclose(paper.latent_chunks[1], off.latent_chunks[1], atol=1e-5, rtol=0)
    assert not torch.allclose(paper.latent_chunks[2], off.latent_chunks[2], atol=1e-5, rtol=0)


def test_a_memory_read_at_scale_0_samples_like_no_memory(tiny_bundle, first_frame):
    """``fast.read_scale`` reaches the sampler: at 0 the trained memory is not read (the frames equal
    ``off``'s with the same seed), at the default 1 it is."""
    actions = ["move left", "move up"]
    frames = {}
    for label, extra in {"off": ["fast.mode=off"], "unread": ["fast.read_scale=0"], "read": []}.items():
        session = _session(tiny_bundle, first_frame, "seed=1", *extra)
        frames[label] = session.generate(actions)
        session.close()
    assert np.array_equal(frames["unread"], frames["off"])
    assert not np.array_equal(frames["read"], frames["off"])


def test_off_session_ignores_an_active_adapter_and_leaves_it_active(tiny_bundle, tiny_config, first_frame):
    from slowfast_vgen.fast_learner import FastLearnerConfig, TempLoRA

    learner = TempLoRA(tiny_bundle.unet, tiny_bundle.noise_scheduler, FastLearnerConfig(rank=4, learning_rate=1e-2))
    uncond = tiny_bundle.encode_text([""])
    learner.update(torch.rand(1, 3, 2, 16, 16) * 2 - 1, torch.rand(1, 3, 3, 16, 16) * 2 - 1, torch.Generator(), uncond)
    probe = torch.randn(1, 3, 5, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = tiny_bundle.unet(probe, 500, encoder_hidden_states=uncond).sample
    off = _session(tiny_bundle, first_frame, "fast.mode=off", "seed=4")
    off.generate(["move left", "move up"])
    assert torch.equal(off.latents, _run_alone(tiny_config, first_frame, "off", 4, ["move left", "move up"]).latents)
    paper = _session(tiny_bundle, first_frame, "seed=4")
    paper.generate(["move left"])
    with torch.no_grad():  # the learner's memory is active again, untouched by both sessions
        assert torch.equal(tiny_bundle.unet(probe, 500, encoder_hidden_states=uncond).sample, before)
    assert all(p.requires_grad for p in learner.parameters.values())


def test_session_saved_before_spacing_setting_resumes_at_leading(tiny_config, first_frame, tmp_path):
    """A session saved without `sampler.timestep_spacing` (older versions) was sampled at the
    schedulers' `leading` spacing; it resumes with that, not with the new default."""
    import json

    from slowfast_vgen.model import ModelBundle

    session = _session(ModelBundle.from_config(tiny_config), first_frame, "sampler.timestep_spacing=leading")
    session.generate(["move left"])
    session.save(tmp_path / "old")
    meta_file = tmp_path / "old" / "session.json"
    meta = json.loads(meta_file.read_text())
    del meta["config"]["sampler"]["timestep_spacing"]
    meta_file.write_text(json.dumps(meta))
    assert GenerationSession.load(tmp_path / "old", ModelBundle.from_config(tiny_config)).config.sampler.timestep_spacing == "leading"
    session.save(tmp_path / "new")  # a session saved now records its spacing
    assert GenerationSession.load(tmp_path / "new", ModelBundle.from_config(tiny_config)).config.sampler.timestep_spacing == "leading"
    default = _session(ModelBundle.from_config(tiny_config), first_frame)
    assert default.config.sampler.timestep_spacing == "trailing"


def test_replay_memory_learns_from_the_whole_generated_history(tiny_bundle, first_frame, monkeypatch):
    from slowfast_vgen.fast_learner import TempLoRA

    histories = []
    original = TempLoRA.update

    def spy(self, previous, new, generator, unconditional, text_embeddings=None, history=None):
        histories.append(None if history is None else history.shape[2])
        return original(self, previous, new, generator, unconditional, text_embeddings, history)

    monkeypatch.setattr(TempLoRA, "update", spy)
    session = _session(tiny_bundle, first_frame, "fast.replay=1")
    lengths = []
    for action in ("move left", "move up"):
        session.generate([action])
        lengths.append(session.latents.shape[2])
    assert histories == lengths and lengths[1] > lengths[0]  # every frame so far, the new chunk included
    plain = []
    monkeypatch.setattr(TempLoRA, "update", lambda self, *a, history=None, **k: plain.append(history) or 0.0)
    _session(tiny_bundle, first_frame).generate(["move left"])
    assert plain == [None]  # the paper's local rule needs no history


def test_a_chunk_that_comes_out_not_finite_is_refused_and_not_appended(tiny_bundle, first_frame, monkeypatch):
    """NaN latents (an overflowing model or sampler setting) were decoded into a black chunk and kept."""
    from slowfast_vgen import session as session_module

    session = _session(tiny_bundle, first_frame, "fast.mode=off")
    monkeypatch.setattr(session_module, "sample_chunk", lambda *args, **kwargs: torch.full((1, 3, 3, 16, 16), float("nan")))
    with pytest.raises(UserInputError, match=r"^chunk 1 \('move left'\) came out not finite \(NaN or inf latents\)"):
        session.generate(["move left"])
    assert session.num_chunks_done == 0 and session.num_frames == 1
    with pytest.raises(UserInputError, match=r"guidance_scale must be a number in \[1, 100\]"):
        _config("sampler.guidance_scale=1e308")  # overflowed to NaN frames


@pytest.mark.parametrize("fails", ["memory update", "decoding"])
def test_a_failed_chunk_leaves_the_session_as_before(tiny_config, first_frame, tmp_path, monkeypatch, fails):
    """A chunk that raises (e.g. CUDA out of memory while decoding or learning) commits nothing: latents,
    frames, records, LoRA, optimizer and generators stay as they were, and a retry equals an uninterrupted run."""
    from slowfast_vgen.model import ModelBundle

    straight = _session(ModelBundle.from_config(tiny_config), first_frame, "fast.steps_per_chunk=1")
    straight.generate(["move left", "move right"])

    session = _session(ModelBundle.from_config(tiny_config), first_frame, "fast.steps_per_chunk=1")
    session.generate(["move left"])
    learner = session.fast_learner
    weights = {name: p.detach().clone() for name, p in learner.parameters.items()}
    moments = {key: value.clone() for key, value in learner.optimizer.state_dict()["state"][0].items()}
    real_step = learner.optimizer.step

    def out_of_memory(*args, **kwargs):
        if fails == "memory update":
            real_step()  # half-way: the LoRA and Adam's moments have moved
        raise RuntimeError("CUDA out of memory")

    target = (learner.optimizer, "step") if fails == "memory update" else (session.bundle, "decode_latents")
    monkeypatch.setattr(*target, out_of_memory)
    with pytest.raises(RuntimeError, match="out of memory"):
        session.generate(["move right"])
    monkeypatch.undo()
    assert session.latents.shape[2] == session.num_frames == 4 and len(session.latent_chunks) == 2
    assert [r.action for r in session.records] == ["move left"]
    assert all(torch.equal(p, weights[name]) for name, p in learner.parameters.items())
    assert all(torch.equal(value, moments[key]) for key, value in learner.optimizer.state_dict()["state"][0].items())
    session.save(tmp_path / "session")
    assert GenerationSession.load(tmp_path / "session", ModelBundle.from_config(tiny_config)).num_frames == 4

    session.generate(["move right"])  # the retry: as if the failure never happened
    assert np.array_equal(session.video(), straight.video())
    assert torch.equal(session.latents, straight.latents)


def _as_format_1(directory):
    """Rewrite a saved session as format 1 wrote it: the whole video in state.safetensors, no video/ folder."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    meta = _session_json(directory)
    meta.pop("files")  # format 1 recorded no digests
    chunks = [load_file(str(directory / "video" / f"{i:06d}.safetensors")) for i in range(len(meta.pop("video")))]
    state = load_file(str(directory / "state.safetensors"))
    state["latents"] = torch.cat([chunk["latents"] for chunk in chunks], dim=2)
    state["frames"] = torch.cat([chunk["frames"] for chunk in chunks])
    save_file(state, str(directory / "state.safetensors"))
    shutil.rmtree(directory / "video")
    (directory / "session.json").write_text(json.dumps({**meta, "format": 1}))


def _rewrite_chunk(directory, index, change):
    """Replace chunk ``index``'s file by ``change(tensors)`` and record its new SHA-256, as a consistent but
    wrong writer would."""
    import hashlib
    import json

    from safetensors.torch import load_file, save

    file = directory / "video" / f"{index:06d}.safetensors"
    data = save(change(load_file(str(file))))
    file.write_bytes(data)
    meta = _session_json(directory)
    meta["video"][index] = hashlib.sha256(data).hexdigest()
    (directory / "session.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("saved_format", [1, 2])
def test_load_refuses_latents_and_frames_of_different_lengths(saved_format, tiny_bundle, first_frame, tmp_path):
    directory = tmp_path / "session"
    _saved_midway(tiny_bundle, first_frame, directory, actions=["move left"])
    orphan = lambda tensors: {**tensors, "latents": torch.cat([tensors["latents"], tensors["latents"]], dim=2)}
    _rewrite_chunk(directory, 1, orphan)  # an orphan chunk's latents
    if saved_format == 1:
        _as_format_1(directory)
    with pytest.raises(UserInputError) as caught:
        GenerationSession.load(directory, tiny_bundle)
    assert str(caught.value) == {
        1: f"saved session {directory} is corrupt: state.safetensors: 7 latent frames but 4 frames",
        2: f"saved session {directory} is corrupt: video/000001.safetensors: latents (1, 3, 6, 16, 16) and uint8 "
           "frames (3, 16, 16, 3) are not a chunk",
    }[saved_format]


def test_a_session_saved_in_format_1_resumes_identically_and_is_saved_per_chunk(tiny_bundle, first_frame, tmp_path):
    """Sessions saved before the video was kept per chunk (the whole video in state.safetensors) resume."""
    actions = ["move left", "move right", "move up", "move down"]
    straight = _session(tiny_bundle, first_frame)
    straight.generate(actions)
    directory = tmp_path / "session"
    _saved_midway(tiny_bundle, first_frame, directory, actions=actions[:2])
    _as_format_1(directory)
    resumed = GenerationSession.load(directory, tiny_bundle)
    assert [chunk.shape[2] for chunk in resumed.latent_chunks] == [1, 3, 3]  # split as generated
    resumed.generate(actions[2:])
    assert np.array_equal(resumed.video(), straight.video()) and torch.equal(resumed.latents, straight.latents)
    resumed.save(directory)
    assert _session_json(directory)["format"] == 2 and len(list((directory / "video").iterdir())) == 5
    assert np.array_equal(GenerationSession.load(directory, tiny_bundle).video(), straight.video())


def test_each_save_writes_only_the_new_chunks_and_links_the_others(tiny_bundle, first_frame, tmp_path):
    """Every save rewrote the whole video (state.safetensors): after 1,000 chunks of the embedded model a save
    wrote 124 MB and took 0.36 s. A chunk's file is written once and linked by later saves, also after a load."""
    directory = tmp_path / "session"
    session = _saved_midway(tiny_bundle, first_frame, directory, actions=["move left", "move right"])
    files = lambda: {p.name: p.stat().st_ino for p in (directory / "video").iterdir()}
    first = files()
    session.generate(["move up"])
    session.save(directory)
    second = files()
    assert len(second) == 4 and {name: second[name] for name in first} == first
    loaded = GenerationSession.load(directory, tiny_bundle)
    loaded.generate(["move down"])
    loaded.save(directory)
    third = files()
    assert len(third) == 5 and {name: third[name] for name in second} == second
    assert np.array_equal(GenerationSession.load(directory, tiny_bundle).video(), loaded.video())


def test_sessions_that_diverged_saved_to_one_directory_keep_their_own_chunks(tiny_bundle, first_frame, tmp_path):
    """Two sessions loaded from one directory go on differently and are saved back in turn: each save holds
    its own chunks (a chunk is linked only when its SHA-256 is the saved one's)."""
    directory = tmp_path / "session"
    _saved_midway(tiny_bundle, first_frame, directory, actions=["move left"])
    left, right = (GenerationSession.load(directory, tiny_bundle) for _ in range(2))
    left.generate(["move left", "move left"])
    left.save(directory)
    right.generate(["move right", "move right"])
    right.save(directory)
    assert not np.array_equal(left.video(), right.video())
    assert np.array_equal(GenerationSession.load(directory, tiny_bundle).video(), right.video())


def test_a_damaged_chunk_file_is_named_when_the_session_loads(tiny_bundle, first_frame, tmp_path):
    """A bit flipped in the saved video loaded silently (no checksum): now its SHA-256 is checked."""
    directory = tmp_path / "session"
    _saved_midway(tiny_bundle, first_frame, directory)
    file = directory / "video" / "000002.safetensors"
    data = bytearray(file.read_bytes())
    data[-5] ^= 1  # a pixel of the last frame
    file.write_bytes(bytes(data))
    with pytest.raises(UserInputError) as caught:
        GenerationSession.load(directory, tiny_bundle)
    assert str(caught.value) == (f"saved session {directory} is corrupt: video/000002.safetensors: its content is "
                                 "not what session.json records (damaged or replaced)")
    (file.parent / "000001.safetensors").unlink()
    with pytest.raises(UserInputError, match=r"is corrupt: video/000001.safetensors: \[Errno 2\] No such file"):
        GenerationSession.load(directory, tiny_bundle)


@pytest.mark.parametrize("config", [[], "paper", 3, None])
def test_session_config_that_is_not_an_object_is_corrupt(config, tiny_bundle, first_frame, tmp_path):
    import json

    session = _session(tiny_bundle, first_frame)
    session.generate(["move left"])
    session.save(tmp_path / "session")
    meta_file = tmp_path / "session" / "session.json"
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "config": config}))
    with pytest.raises(UserInputError) as caught:
        GenerationSession.load(tmp_path / "session", tiny_bundle)
    assert str(caught.value) == (f"saved session {tmp_path / 'session'} is corrupt: session.json: "
                                 f"config is {type(config).__name__}, expected an object")


def test_save_never_replaces_a_folder_of_other_files(tiny_bundle, first_frame, tmp_path):
    session = _session(tiny_bundle, first_frame)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.txt").write_text("keep me")
    (tmp_path / "file").write_text("keep me too")
    with pytest.raises(UserInputError, match="notes is a folder of other files, not a saved session"):
        session.save(tmp_path / "notes")
    with pytest.raises(UserInputError, match="file is a file, not a session directory"):
        session.save(tmp_path / "file")
    assert (tmp_path / "notes" / "notes.txt").read_text() == "keep me"
    assert (tmp_path / "file").read_text() == "keep me too"
    (tmp_path / "empty").mkdir()
    for directory in (tmp_path / "empty", tmp_path / "empty"):  # an empty folder, then the saved session in it
        session.save(directory)
        assert (directory / "session.json").is_file()


@pytest.mark.parametrize("mode", ["off", "paper"])
def test_a_band_of_noise_levels_outside_the_model_is_refused_when_the_session_is_made(tiny_bundle, mode):
    """With ``fast.mode=off`` the band was only checked when a Temp-LoRA was built, so a bad value
    surfaced later (e.g. when the web app switched the rule on); now the session refuses it at once."""
    steps = tiny_bundle.noise_scheduler.config.num_train_timesteps
    adapters_before = dict(getattr(tiny_bundle.unet, "peft_config", None) or {})
    with pytest.raises(UserInputError, match=f"^fast.min_timestep must be below the model's {steps} training "
                                             f"timesteps, got {steps}$"):
        GenerationSession(tiny_bundle, _config(f"fast.mode={mode}", f"fast.min_timestep={steps}"))
    with pytest.raises(UserInputError, match=f"^fast.max_timestep must be at most the model's {steps} training "
                                             f"timesteps, got {steps + 1}$"):
        GenerationSession(tiny_bundle, _config(f"fast.mode={mode}", f"fast.max_timestep={steps + 1}"))
    assert dict(getattr(tiny_bundle.unet, "peft_config", None) or {}) == adapters_before  # the model is untouched
    # the band's limits themselves are accepted
    session = GenerationSession(tiny_bundle, _config(f"fast.mode={mode}", f"fast.min_timestep={steps - 1}",
                                                     f"fast.max_timestep={steps}"))
    assert (session.config.fast.min_timestep, session.config.fast.max_timestep) == (steps - 1, steps)
    session.close()


@pytest.mark.parametrize("mode", ["paper", "off"])
def test_save_and_resume_keep_the_memory_s_read_scale_and_noise_band(tiny_config, first_frame, tmp_path, mode):
    """``fast.read_scale``, ``fast.min_timestep`` and ``fast.max_timestep`` are saved in session.json and
    apply after resuming: the resumed run equals an uninterrupted one with the same settings."""
    from slowfast_vgen.model import ModelBundle

    settings = [f"fast.mode={mode}", "fast.read_scale=0.5", "fast.min_timestep=300", "fast.max_timestep=700"]
    actions = ["move left", "move right", "move up"]
    straight = _session(ModelBundle.from_config(tiny_config), first_frame, *settings)
    straight.generate(actions)

    interrupted = _session(ModelBundle.from_config(tiny_config), first_frame, *settings)
    interrupted.generate(actions[:2])
    interrupted.save(tmp_path / "session")
    resumed = GenerationSession.load(tmp_path / "session", ModelBundle.from_config(tiny_config))
    fast = resumed.config.fast
    assert (fast.mode, fast.read_scale, fast.min_timestep, fast.max_timestep) == (mode, 0.5, 300, 700)
    assert resumed.config == straight.config
    resumed.generate(actions[2:])
    assert np.array_equal(resumed.video(), straight.video())


@pytest.mark.parametrize("mode", ["off", "paper"])
def test_more_denoising_steps_than_the_model_s_timesteps_are_refused_when_the_session_is_made(tiny_bundle, mode):
    """``sfvgen generate --steps 1000000000`` crashed in the first chunk with diffusers' ValueError."""
    steps = tiny_bundle.noise_scheduler.config.num_train_timesteps
    adapters_before = dict(getattr(tiny_bundle.unet, "peft_config", None) or {})
    with pytest.raises(UserInputError, match=f"^sampler.num_inference_steps must be at most the model's {steps} "
                                             f"training timesteps, got 1000000000$"):
        GenerationSession(tiny_bundle, _config(f"fast.mode={mode}", "sampler.num_inference_steps=1000000000"))
    with pytest.raises(UserInputError, match=f"got {steps + 1}$"):
        GenerationSession(tiny_bundle, _config(f"fast.mode={mode}", f"sampler.num_inference_steps={steps + 1}"))
    assert dict(getattr(tiny_bundle.unet, "peft_config", None) or {}) == adapters_before  # the model is untouched
    session = GenerationSession(tiny_bundle, _config(f"fast.mode={mode}", f"sampler.num_inference_steps={steps}"))
    assert session.config.sampler.num_inference_steps == steps  # the limit itself is accepted
    session.close()


@pytest.mark.parametrize("scheduler, spacing, steps, problem", [
    ("ddim", "leading", 1000, "its timesteps run from 1 to 1000"),  # was an IndexError at the first chunk
    ("dpmsolver++", "leading", 999, "its timesteps run from 2 to 1000"),  # was a black (NaN) video, exit 0
    ("dpmsolver++", "linspace", 1000, "outside [0, 1000) or repeated"),  # was NaN too
    # diffusers' DDIM steps T // steps whatever the spacing: at 999, 666, 333, 0 the latent sat at 749 when the
    # UNet was told 666 (an exact noise predictor ended 0.375 rms from the truth)
    ("ddim", "linspace", 4, "its timesteps are 333 apart, but diffusers' DDIM steps 250 at a time"),
    ("ddim", "trailing", 300, "its timesteps are 3, 4 apart, but diffusers' DDIM steps 3 at a time"),
])
def test_step_counts_whose_timesteps_leave_the_schedule_are_refused(tiny_bundle, scheduler, spacing, steps, problem):
    config = _config("fast.mode=off", f"sampler.scheduler={scheduler}", f"sampler.timestep_spacing={spacing}",
                     f"sampler.num_inference_steps={steps}")
    with pytest.raises(UserInputError) as caught:
        GenerationSession(tiny_bundle, config)
    message = str(caught.value)
    assert message.startswith(f"sampler.num_inference_steps={steps} does not fit the {scheduler} scheduler with "
                              f"{spacing} spacing on this model's 1000 training timesteps (") and problem in message
    fine = _config("fast.mode=off", f"sampler.scheduler={scheduler}", f"sampler.timestep_spacing={spacing}",
                   f"sampler.num_inference_steps={1000 if spacing == 'linspace' and scheduler == 'ddim' else 500}")
    GenerationSession(tiny_bundle, fine).close()


def test_saving_through_a_symlinked_session_folder_updates_its_target(tiny_bundle, first_frame, tmp_path):
    """The first save replaced the link itself with a real folder; the second failed ("Cannot call rmtree on a
    symbolic link") and lost that chunk, and the linked folder was never updated."""
    session = GenerationSession(tiny_bundle, _config("fast.mode=off"))
    session.start(first_frame)
    session.step("move left")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    for action in ("move right", "move up"):
        session.step(action)
        session.save(tmp_path / "link")
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real" / "session.json").is_file()
    assert {p.name for p in tmp_path.iterdir()} == {"link", "real"}  # no leftover of the swap
    resumed = GenerationSession.load(tmp_path / "real", tiny_bundle)
    assert np.array_equal(resumed.video(), session.video())


def test_a_saved_layer_pattern_that_never_finishes_matching_is_refused(tiny_bundle, first_frame, tmp_path,
                                                                       monkeypatch):
    """A session from elsewhere (a web upload) names the Temp-LoRA's layers by a regular expression; one
    that backtracks without end (``(.|.)*Z``) hung the process with the GIL held when peft matched it."""
    import json

    from slowfast_vgen import fast_learner

    _saved_midway(tiny_bundle, first_frame, tmp_path / "session")
    meta_file = tmp_path / "session" / "session.json"
    meta = json.loads(meta_file.read_text())
    same_layers = f"{meta['config']['fast']['target_modules']}|nothing\\.of\\.this\\.model"
    meta_file.write_text(json.dumps({**meta, "config": {**meta["config"], "fast": {
        **meta["config"]["fast"], "target_modules": same_layers}}}))
    assert GenerationSession.load(tmp_path / "session", tiny_bundle).fast_learner is not None  # another pattern: fine

    monkeypatch.setattr(fast_learner, "REGEX_CHECK_SECONDS", 2.0)
    meta_file.write_text(json.dumps({**meta, "config": {**meta["config"], "fast": {
        **meta["config"]["fast"], "target_modules": "(.|.)*Z"}}}))
    with pytest.raises(UserInputError) as caught:
        GenerationSession.load(tmp_path / "session", tiny_bundle)
    assert str(caught.value) == (f"saved session {tmp_path / 'session'} is corrupt: session.json: fast.target_modules "
                                 "'(.|.)*Z' did not finish matching the model's layers within 2 s (a regular "
                                 "expression that backtracks without end)")


@pytest.mark.parametrize("name", ["memory/adapter_model.safetensors", "optimizer.safetensors", "state.safetensors"])
def test_a_bit_flipped_in_the_memory_optimizer_or_state_is_named_when_the_session_loads(
        name, tiny_bundle, first_frame, tmp_path):
    """A flipped bit in a weight of the saved memory (or in the optimizer's moments, or an RNG state) still
    parsed, and the session resumed silently with another memory: session.json records each file's SHA-256."""
    directory = tmp_path / "session"
    _saved_midway(tiny_bundle, first_frame, directory)
    file = directory / name
    data = bytearray(file.read_bytes())
    data[-3] ^= 0x10  # inside the last tensor's values: the file stays valid safetensors
    file.write_bytes(bytes(data))
    with pytest.raises(UserInputError) as caught:
        GenerationSession.load(directory, tiny_bundle)
    assert str(caught.value) == (f"saved session {directory} is corrupt: {name}: its content is not what "
                                 "session.json records (damaged or replaced)")


def test_a_session_json_naming_files_outside_the_session_is_refused(tiny_bundle, first_frame, tmp_path):
    import json

    directory = tmp_path / "session"
    _saved_midway(tiny_bundle, first_frame, directory)
    meta = _session_json(directory)
    meta["files"]["../outside"] = "0" * 64
    (directory / "session.json").write_text(json.dumps(meta))
    with pytest.raises(UserInputError, match=r"is corrupt: session.json: files names '../outside', a path outside session/$"):
        GenerationSession.load(directory, tiny_bundle)
