"""The action encoder and precomputed text features: shapes, warm start, save/load, cache rules, training."""

import copy
import json

import pytest
import torch

from slowfast_vgen.action_encoder import ActionEncoder, auxiliary_action_loss, masked_mean, unit_rms
from slowfast_vgen.errors import UserInputError
from slowfast_vgen.model import ModelBundle, ModelConfig, load_model, pooled_sentence_embedding, unet_text_kwargs
from slowfast_vgen.text_features import TextFeatureCache, build_text_features


@pytest.fixture()
def encoder_bundle() -> ModelBundle:
    return ModelBundle.from_config(ModelConfig(height=16, width=16, action_encoder=True, action_tokens=3, seed=0))


def test_masked_mean_ignores_padding():
    states = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert torch.equal(masked_mean(states, torch.tensor([[1, 1, 0]])), torch.tensor([[2.0, 3.0]]))
    assert torch.allclose(unit_rms(torch.tensor([[3.0, 4.0]])).pow(2).mean(), torch.tensor(1.0))


def test_encoder_output_layout_and_padding_invariance():
    encoder = ActionEncoder(text_dim=8, output_dim=8, hidden_dim=16, num_tokens=2, primitives=["move left", "stay"])
    states = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out = encoder(states, mask)
    assert out.conditioning.shape == (2, 3, 8) and out.logits.shape == (2, 2)
    assert torch.allclose(out.conditioning[:, 0].pow(2).mean(dim=-1), torch.ones(2))  # global vector at unit RMS
    garbage = states.clone()
    garbage[0, 3:] = 1e3  # padding content must not matter
    assert torch.allclose(encoder(garbage, mask).conditioning[0], out.conditioning[0], atol=1e-6)
    trimmed = encoder(states[:1, :3], mask[:1, :3])  # nor the padded length
    assert torch.allclose(trimmed.conditioning, out.conditioning[:1], atol=1e-6)


def test_fresh_encoder_starts_as_the_pooled_sentence_embedding(encoder_bundle):
    """to_global is zero-initialised: token 0 equals what a pooled_text_conditioning UNet was trained on."""
    texts = ["move left", "head west", ""]
    states, mask = encoder_bundle.encode_text_states(texts)
    conditioning = encoder_bundle.encode_text(texts)
    assert conditioning.shape == (3, 4, encoder_bundle.unet.config.cross_attention_dim)
    assert torch.allclose(conditioning[:, 0], pooled_sentence_embedding(states, mask), atol=1e-5)
    kwargs = unet_text_kwargs(encoder_bundle.unet, conditioning)
    assert torch.equal(kwargs["timestep_cond"], conditioning[:, 0])


def test_primitive_labels_and_auxiliary_loss(encoder_bundle):
    encoder = encoder_bundle.action_encoder
    labels = encoder.primitive_labels(["move left", "head west", "", "dance a jig", "shove the red cube to the left"])
    names = encoder.config.primitives
    assert names[labels[0]] == "move left" and labels[1] == labels[0]
    assert labels[2] == -1 and labels[3] == -1  # empty text and free text carry no label
    assert names[labels[4]] == "push red left"
    logits = torch.zeros(5, len(names))
    logits[torch.arange(5), labels.clamp(min=0)] = 50.0
    assert float(auxiliary_action_loss(logits, labels)) < 1e-6  # only labelled rows count, and they are right
    assert auxiliary_action_loss(logits, torch.full((5,), -1)) is None


def test_save_load_round_trip_with_action_encoder(encoder_bundle, tmp_path):
    encoder_bundle.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "action_encoder" / "diffusion_pytorch_model.safetensors").is_file()
    index = json.loads((tmp_path / "m" / "model_index.json").read_text())
    assert index["action_encoder"] == ["slowfast_vgen", "ActionEncoder"]
    meta = json.loads((tmp_path / "m" / "slowfast_vgen.json").read_text())
    assert meta["text_encoder_fingerprint"] == encoder_bundle.text_encoder_fingerprint
    loaded = load_model(tmp_path / "m")
    texts = ["move up", "push the blue block down"]
    assert torch.equal(loaded.encode_text(texts), encoder_bundle.encode_text(texts))


def test_text_feature_cache_round_trip_and_encoder_check(encoder_bundle, tmp_path):
    texts = ["", "move left", "slide the green box to the right"]
    cache = build_text_features(encoder_bundle, texts)
    path = cache.save(tmp_path / "features.safetensors")
    loaded = TextFeatureCache.load(path, expected_fingerprint=encoder_bundle.text_encoder_fingerprint)
    states, mask = loaded.lookup(texts)
    direct, direct_mask = encoder_bundle._run_text_encoder(texts, pad_to_max=False)
    assert torch.equal(mask, direct_mask)
    # exactly the live encoder's states (float16 storage changed them by up to 2e-3 on the shipped encoder)
    assert torch.equal(states * mask[..., None], direct.float() * direct_mask[..., None])
    with pytest.raises(UserInputError, match="made by another text encoder"):
        TextFeatureCache.load(path, expected_fingerprint="0" * 32)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(UserInputError, match="is corrupt"):
        TextFeatureCache.load(path)



def _cased_copy(bundle: ModelBundle) -> ModelBundle:
    """``bundle`` with a tokenizer that keeps case (its own lower-cases): same weights, other features for 'Move'."""
    from tokenizers import normalizers

    other = copy.deepcopy(bundle)
    other.tokenizer.backend_tokenizer.normalizer = normalizers.StripAccents()
    return other


def test_a_cache_made_with_other_tokenizer_or_encoder_settings_is_refused(encoder_bundle, tmp_path):
    """The cache's check covered the encoder's weights and vocabulary only: a tokenizer that keeps case, cuts texts
    shorter or an encoder with another activation gave other features from a cache that was accepted."""
    cache = build_text_features(encoder_bundle, ["", "move left"])
    assert cache.settings == encoder_bundle.text_settings[0] and cache.lowercase
    cache = TextFeatureCache.load(cache.save(tmp_path / "features.safetensors"))
    assert (cache.settings, cache.lowercase) == encoder_bundle.text_settings
    shorter = copy.deepcopy(encoder_bundle)
    shorter.tokenizer.model_max_length = 4
    activation = copy.deepcopy(encoder_bundle)
    activation.text_encoder.config.hidden_act = "relu"
    for other in (_cased_copy(encoder_bundle), shorter, activation):
        assert other.text_encoder_fingerprint == encoder_bundle.text_encoder_fingerprint  # the weights are the same
        with pytest.raises(UserInputError, match="^the text feature cache was made with other tokenizer or text "
                                                 "encoder settings than this model's"):
            other.use_text_features(cache)
    # a model saved with other settings refuses the cache without its text encoder too
    shorter.save_pretrained(tmp_path / "shorter")
    meta = json.loads((tmp_path / "shorter" / "slowfast_vgen.json").read_text())
    assert meta["text_settings_fingerprint"] == shorter.text_settings[0] != cache.settings
    with pytest.raises(UserInputError, match="other tokenizer or text encoder settings"):
        ModelBundle.from_pretrained(tmp_path / "shorter", text_features=cache)
    # files written before settings were recorded are not compared
    older = TextFeatureCache(cache.fingerprint, cache.features)
    shorter.use_text_features(older)
    ModelBundle.from_pretrained(tmp_path / "shorter", text_features=older)


def test_a_bfloat16_saved_text_encoder_serves_its_own_cache(encoder_bundle, tmp_path):
    """The fingerprint hashed the weights at the dtype they were held: a model saved in bfloat16 recorded the
    bfloat16 fingerprint, loaded at float32 (the default) its encoder had another, and the cache made from it
    was refused by the model it was made for."""
    encoder_bundle.to("cpu", torch.bfloat16).save_pretrained(tmp_path / "bf16")
    recorded = json.loads((tmp_path / "bf16" / "slowfast_vgen.json").read_text())["text_encoder_fingerprint"]
    loaded = load_model(tmp_path / "bf16")
    assert loaded.text_encoder.dtype == torch.float32 and loaded.text_encoder_fingerprint == recorded
    assert load_model(tmp_path / "bf16", dtype=torch.bfloat16).text_encoder_fingerprint == recorded
    cache = build_text_features(loaded, ["", "move left"])
    assert ModelBundle.from_pretrained(tmp_path / "bf16", text_features=cache).text_encoder is None


def test_a_case_blind_tokenizer_reads_any_casing_from_the_cache(encoder_bundle, tmp_path):
    """Without its text encoder a model refused "Move Left" where the live encoder gives the features of
    "move left"; with a tokenizer that keeps case the spelling must be in the cache as written."""
    encoder_bundle.save_pretrained(tmp_path / "m")
    cache = TextFeatureCache.load(build_text_features(encoder_bundle, ["", "move left"]).save(tmp_path / "f.safetensors"))
    loaded = ModelBundle.from_pretrained(tmp_path / "m", text_features=cache)
    assert torch.equal(loaded.encode_text(["Move LEFT"]), loaded.encode_text(["move left"]))
    assert torch.allclose(loaded.encode_text(["Move LEFT"]), encoder_bundle.encode_text(["Move LEFT"]), atol=1e-6)
    cased = _cased_copy(encoder_bundle)
    cased.save_pretrained(tmp_path / "cased")
    cased_cache = build_text_features(cased, ["", "move left"])
    assert not cased_cache.lowercase
    loaded = ModelBundle.from_pretrained(tmp_path / "cased", text_features=cased_cache)
    with pytest.raises(UserInputError, match="'Move LEFT' is not in the text feature cache"):
        loaded.encode_text(["Move LEFT"])


@pytest.mark.parametrize("tensors, texts", [
    ({"states": torch.zeros(3, 4), "lengths": torch.tensor([1.0, 2.0])}, '["a", "b"]'),  # float lengths
    ({"states": torch.zeros(3), "lengths": torch.tensor([1, 2])}, '["a", "b"]'),  # 1-D states
    ({"states": torch.zeros(2, 4), "lengths": torch.tensor([1, 1])}, '"ab"'),  # texts as one string
    ({"states": torch.zeros(2, 4), "lengths": torch.tensor([1, 1])}, '["a", "a"]'),  # a text twice
    ({"states": torch.zeros(2, 4), "lengths": torch.tensor([3, -1])}, '["a", "b"]'),  # a negative length
], ids=["float-lengths", "1d-states", "string-texts", "repeated-text", "negative-length"])
def test_a_malformed_text_feature_cache_is_one_line_error(tmp_path, tensors, texts):
    """Hand-made or damaged caches gave raw TypeErrors and IndexErrors, or loaded a string as a list of letters."""
    from safetensors.torch import save_file

    from slowfast_vgen.text_features import FORMAT

    path = tmp_path / "cache.safetensors"
    save_file(tensors, str(path), metadata={"format": FORMAT, "encoder": "x", "texts": texts})
    with pytest.raises(UserInputError, match=f"^text feature cache {path} is not a {FORMAT} file$"):
        TextFeatureCache.load(path)


def test_model_loads_without_text_encoder_from_a_cache(encoder_bundle, tmp_path):
    encoder_bundle.save_pretrained(tmp_path / "m")
    cache = build_text_features(encoder_bundle, ["", "move left"])
    loaded = ModelBundle.from_pretrained(tmp_path / "m", text_features=cache)
    assert loaded.text_encoder is None
    expected = encoder_bundle.encode_text(["move left"])
    assert torch.allclose(loaded.encode_text(["move left"]), expected, atol=1e-6)
    with pytest.raises(UserInputError, match="'go north' is not in the text feature cache"):
        loaded.encode_text(["go north"])
    other = TextFeatureCache("f" * 32, cache.features)
    with pytest.raises(UserInputError, match="made by another text encoder"):
        ModelBundle.from_pretrained(tmp_path / "m", text_features=other)
    # too narrow for the action encoder: a 47-line LayerNorm traceback at the first chunk
    narrow = TextFeatureCache(cache.fingerprint, {text: row[:, :16] for text, row in cache.features.items()})
    width = encoder_bundle.action_encoder.config.text_dim
    with pytest.raises(UserInputError, match=f"^the text feature cache holds 16-wide token states, this model's "
                                             f"action encoder reads {width}: "):
        ModelBundle.from_pretrained(tmp_path / "m", text_features=narrow)
    # not finite: the first chunk came out "not finite", blaming the model
    path = TextFeatureCache(cache.fingerprint, {"": cache.features[""] * float("nan")}).save(tmp_path / "nan.safetensors")
    with pytest.raises(UserInputError, match=f"^text feature cache {path} is corrupt: its token states are not all "
                                             "finite$"):
        TextFeatureCache.load(path)


def test_attaching_an_encoder_keeps_a_pooled_model_unchanged():
    bundle = ModelBundle.from_config(ModelConfig(height=16, width=16, pooled_text_conditioning=True, seed=1))
    texts = ["move right", "stay"]
    before = bundle.encode_text(texts)
    bundle.with_action_encoder(num_tokens=2)
    after = bundle.encode_text(texts)
    assert after.shape[1] == 3 and torch.allclose(after[:, 0], before[:, 0], atol=1e-5)
    with pytest.raises(UserInputError, match="already has an action encoder"):
        bundle.with_action_encoder()


def test_the_text_memo_follows_the_encoder_dtype(encoder_bundle):
    """Texts encoded before `bundle.to(bfloat16)` kept their float32 states: the output depended on call history."""
    encoder_bundle.encode_text(["move left"])
    encoder_bundle.to("cpu", torch.bfloat16)
    fresh = copy.deepcopy(encoder_bundle)
    fresh.text_features = None
    assert torch.equal(encoder_bundle.encode_text(["move left"]), fresh.encode_text(["move left"]))
