"""`sfvgen generate | play | make-model` end to end on a tiny model, and every bad input -> exit 2."""

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import decord
import numpy as np
import pytest
from PIL import Image

from slowfast_vgen.cli import main
from slowfast_vgen.errors import UserInputError

FAST = ["--steps", "2", "frames_per_chunk=3", "context_frames=3", "window=6", "fast.rank=4"]


@pytest.fixture()
def image(tmp_path) -> Path:
    path = tmp_path / "first.png"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(path)  # resized to 16x16
    return path


def _read(path) -> np.ndarray:
    return decord.VideoReader(str(path)).get_batch(list(range(len(decord.VideoReader(str(path)))))).asnumpy()


def test_generate_writes_readable_video_and_sidecar(tiny_model_dir, image, tmp_path, capsys):
    out = tmp_path / "out" / "video.mp4"
    code = main(["generate", "--model", str(tiny_model_dir), "--image", str(image), "--quiet",
                 "--actions", "move right; move right; move left", "--out", str(out), "--gif", *FAST])
    assert code == 0
    frames = _read(out)
    assert frames.shape == (1 + 3 * 3, 128, 128, 3)  # 16x16 frames upscaled x8 for viewing
    assert out.with_suffix(".gif").is_file()
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["frames"] == 10 and sidecar["fast_mode"] == "paper" and sidecar["upscale"] == 8
    assert (sidecar["height"], sidecar["width"]) == (16, 16)
    assert [c["action"] for c in sidecar["chunks"]] == ["move right", "move right", "move left"]
    assert [(c["start_frame"], c["end_frame"]) for c in sidecar["chunks"]] == [(1, 4), (4, 7), (7, 10)]
    assert all(c["seconds"] > 0 and c["temp_lora_loss"] > 0 for c in sidecar["chunks"])
    spent = sum(c["seconds"] + c["memory_seconds"] for c in sidecar["chunks"])
    assert sidecar["generated_frames_per_second"] == pytest.approx(9 / spent, rel=1e-2)  # 9 new frames
    assert "frames_per_chunk: 3" in out.with_suffix(".yaml").read_text()
    assert "wrote" in capsys.readouterr().out


def test_a_video_the_disk_cannot_hold_is_an_error_and_the_old_one_stays(tiny_model_dir, image, tmp_path):
    """On a full disk ffmpeg printed "Error writing trailer", and generate replaced a good video with one
    nothing could open and exited 0. Here the disk is full at 12 kB (a file size limit, which ffmpeg inherits; the video needs about 20 kB)."""
    import resource

    out = tmp_path / "video.mp4"
    assert main(["generate", "--model", str(tiny_model_dir), "--image", str(image), "--quiet", "--actions", "stay",
                 "--out", str(out), *FAST]) == 0
    good = out.read_bytes()

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (12_000, 12_000))

    result = subprocess.run([sys.executable, "-m", "slowfast_vgen", "generate", "--model", str(tiny_model_dir), "--image",
                             str(image), "--quiet", "--actions", "move right; move left; move up", "--out", str(out), *FAST],
                            capture_output=True, text=True, timeout=300, preexec_fn=small_disk,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:") or "Traceback" in line]
    assert result.returncode == 2 and errors == [errors[0]], result.stderr
    assert errors[0].startswith(f"error: the video encoder ") and f"{out}" in errors[0] and "is the disk full?" in errors[0]
    assert out.read_bytes() == good
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".video.")]  # no temporary file left


def test_same_seed_gives_identical_video(tiny_model_dir, image, tmp_path):
    videos = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.mp4"
        assert main(["generate", "--model", str(tiny_model_dir), "--image", str(image), "--quiet", "--seed", "3",
                     "--actions", "move up; move down", "--out", str(out), "--fast", "off", *FAST]) == 0
        videos.append(_read(out))
    assert np.array_equal(videos[0], videos[1])


def test_interrupted_generation_resumes_from_session(tiny_model_dir, image, tmp_path):
    common = ["--model", str(tiny_model_dir), "--image", str(image), "--quiet", *FAST]
    straight = tmp_path / "straight.mp4"
    assert main(["generate", *common, "--actions", "move left; move up; move right", "--out", str(straight)]) == 0
    partial = tmp_path / "partial.mp4"
    session = tmp_path / "session"
    assert main(["generate", *common, "--actions", "move left; move up", "--out", str(partial), "--session", str(session)]) == 0
    resumed = tmp_path / "resumed.mp4"
    assert main(["generate", *common, "--actions", "move left; move up; move right", "--out", str(resumed),
                 "--session", str(session)]) == 0
    assert np.array_equal(_read(resumed), _read(straight))
    assert main(["generate", *common, "--actions", "stay; stay", "--out", str(resumed), "--session", str(session)]) == 2


def test_a_resume_refuses_another_first_frame_and_too_few_actions(tiny_model_dir, image, tmp_path, capsys):
    """--image / --world / --world-seed were silently ignored on resume (the video kept its old start)."""
    session, out = tmp_path / "session", tmp_path / "v.mp4"
    common = ["--model", str(tiny_model_dir), "--quiet", "--out", str(out), "--session", str(session), *FAST]
    assert main(["generate", *common, "--image", str(image), "--actions", "move left; move up"]) == 0
    capsys.readouterr()
    for other in (["--world-seed", "5"], ["--world", "blocks"]):
        assert main(["generate", *common, *other, "--actions", "move left; move up; stay"]) == 2
        assert capsys.readouterr().err.strip() == (f"error: saved session {session} was started from another first "
                                                   "frame than --image/--world/--world-seed give; resume without them "
                                                   "(its own applies) or use a new --session dir")
    assert main(["generate", *common, "--actions", "move left"]) == 2  # the same actions, fewer: not "other actions"
    assert capsys.readouterr().err.strip() == (f"error: saved session {session} already holds 2 chunks, more than the "
                                               "1 actions given; give all its actions (and more to continue)")
    # a save killed between its two renames left the session moved aside, its new one beside it: the next run
    # resumes from the old one
    session.rename(tmp_path / ".session.old-4242")
    (tmp_path / ".session.4242-k1ll3d_x.tmp").mkdir()
    assert main(["generate", *common, "--image", str(image), "--actions", "move left; move up; stay"]) == 0
    assert "resuming " + str(session) + ": 2 of 3 chunks already done" in capsys.readouterr().err


def test_play_reads_actions_and_commands_from_stdin(tiny_model_dir, image, tmp_path, monkeypatch, capsys):
    import io

    saved = tmp_path / "saved"
    script = f"move left\n:save {saved}\n:reset\n:bogus\nmove right\n:load {saved}\nmove up\n:quit\nmove down\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(script))
    out = tmp_path / "play.mp4"
    assert main(["play", "--model", str(tiny_model_dir), "--image", str(image), "--out", str(out), *FAST]) == 0
    text = capsys.readouterr().out
    assert "memory reset" in text and "unknown command :bogus" in text and f"saved to {saved}" in text
    assert (saved / "memory" / "adapter_model.safetensors").is_file()
    # left, (save), right, (load back to after 'left'), up -> 1 + 2 chunks of 3 frames; 'move down' after :quit ignored
    assert _read(out).shape[0] == 7
    assert [c["action"] for c in json.loads(out.with_suffix(".json").read_text())["chunks"]] == ["move left", "move up"]


def test_play_survives_a_failed_chunk_and_takes_home_paths_and_split_overrides(tiny_model_dir, image, tmp_path,
                                                                               monkeypatch, capsys):
    import io

    from slowfast_vgen.fast_learner import TempLoRA

    calls, update = [], TempLoRA.update

    def fails_the_second_time(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("CUDA out of memory (simulated)")
        return update(self, *args, **kwargs)

    monkeypatch.setattr(TempLoRA, "update", fails_the_second_time)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(sys, "stdin", io.StringIO("move left\nmove right\nmove right\n:save ~/saved\n:quit\n"))
    out = tmp_path / "play.mp4"
    # key=value overrides on both sides of the flags
    assert main(["play", "--model", str(tiny_model_dir), "frames_per_chunk=3", "--image", str(image), "--out", str(out),
                 "--steps", "2", "context_frames=3", "window=6", "fast.rank=4"]) == 0
    captured = capsys.readouterr()
    assert "error: the chunk failed (RuntimeError: CUDA out of memory (simulated)); the session is as before it" \
        in captured.out
    assert "Traceback" not in captured.out + captured.err
    assert [c["action"] for c in json.loads(out.with_suffix(".json").read_text())["chunks"]] == ["move left", "move right"]
    assert (tmp_path / "home" / "saved" / "session.json").is_file() and not (Path.cwd() / "~").exists()
    monkeypatch.setattr(sys, "stdin", io.StringIO(":reset\n"))
    assert main(["play", "--model", str(tiny_model_dir), "--image", str(image), "--out", str(out), "--fast", "off",
                 *FAST[:2], *FAST[2:]]) == 0
    assert "error: this session has no memory to reset (Temp-LoRA is off)" in capsys.readouterr().out


def test_play_reports_an_undecodable_line_and_refuses_a_huge_upscale_before_any_chunk(tiny_model_dir, image, tmp_path,
                                                                                       monkeypatch, capsys):
    """A byte that is not UTF-8 on stdin was a UnicodeDecodeError traceback (nothing generated); --upscale too
    large was refused only after the first chunk."""
    import io

    from slowfast_vgen.session import GenerationSession

    stdin = io.TextIOWrapper(io.BytesIO(b"move left\nmove \xff left\n:quit\n"), encoding="utf-8", errors="strict")
    monkeypatch.setattr(sys, "stdin", stdin)
    out = tmp_path / "play.mp4"
    assert main(["play", "--model", str(tiny_model_dir), "--image", str(image), "--out", str(out), *FAST]) == 0
    assert "error: action 1 is not valid text: surrogates not allowed" in capsys.readouterr().out
    assert [c["action"] for c in json.loads(out.with_suffix(".json").read_text())["chunks"]] == ["move left"]

    def never(*args, **kwargs):
        raise AssertionError("generated a chunk before --upscale was checked")

    monkeypatch.setattr(GenerationSession, "generate", never)
    monkeypatch.setattr(sys, "stdin", io.StringIO("move left\n"))
    assert main(["play", "--model", str(tiny_model_dir), "--image", str(image), "--out", str(out), "--upscale", "1000",
                 *FAST]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --upscale 1000 makes 16000-pixel frames; at most 8192")


def test_make_model_refuses_an_unknown_noise_schedule(tmp_path, capsys):
    assert main(["make-model", "--out", str(tmp_path / "m"), "beta_schedule=bogus"]) == 2  # was NotImplementedError
    assert capsys.readouterr().err.strip() == ("error: bad config: beta_schedule must be one of linear, scaled_linear, "
                                               "squaredcos_cap_v2, got 'bogus'")


def test_make_model_writes_a_loadable_model(tmp_path):
    out = tmp_path / "model"
    assert main(["make-model", "--out", str(out), "height=32", "width=32", "use_vae=true"]) == 0
    assert (out / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    assert main(["make-model", "--out", str(out)]) == 2  # refuses to overwrite
    video = tmp_path / "v.mp4"
    assert main(["generate", "--model", str(out), "--actions", "stay", "--out", str(video), "--quiet",
                 "--image", str(Path(__file__)), *FAST]) == 2  # a .py file is no image


def test_make_model_refuses_a_file_or_a_nameless_out_before_building(tmp_path, capsys, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("keep")
    assert main(["make-model", "--out", str(afile)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --out: {afile} is a file; give a directory"
    assert afile.read_text() == "keep"
    monkeypatch.chdir(tmp_path)
    assert main(["make-model", "--out", ".", "--force"]) == 2
    assert capsys.readouterr().err.strip() == "error: --out: '.' names no directory of its own (the model replaces it as a whole)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def _bad_model(tiny_model_dir, tmp_path, kind):
    model = tmp_path / kind
    shutil.copytree(tiny_model_dir, model)
    if kind == "missing":
        shutil.rmtree(model / "scheduler")
    else:
        for file in (model / "unet").glob("*.safetensors"):
            file.unlink()
        (model / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    return model


@pytest.mark.parametrize(
    "case, message",
    [
        ("no-actions", "no actions given"),
        ("empty-action", "action 2 is empty"),
        ("bad-image", "cannot read image"),
        ("missing-image", "image not found"),
        ("unknown-key", "bad config: Key 'colour' not in 'GenerationConfig'"),
        ("bad-type", "bad config: frames_per_chunk: Value 'many'"),
        ("window", "exceeds the window of 6 frames"),
        ("missing-component", "has no scheduler/ component"),
        ("pickle", "refusing to load pickle weights"),
        ("no-model", "model directory not found"),
        ("bad-out", "--out must end in .mp4"),
        # issue #12
        ("out-cannot-create", "--out: cannot create the folder /proc/nope"),
        ("out-not-writable", "--out: cannot write to the folder /sys: "),
        ("out-is-dir", "is a directory; give the path of a video file"),
        ("binary-actions-file", "is not UTF-8 text (byte 0xff at offset 0)"),
        ("seed-too-big", f"--seed must be an integer in [-2**63, 2**64 - 1], got {2**64}"),
        ("seed-too-small", f"--seed must be an integer in [-2**63, 2**64 - 1], got {-2**63 - 1}"),
        ("guidance-nan", "--guidance must be a finite number >= 1 (1 = no guidance), got nan"),
        ("guidance-below-1", "--guidance must be a finite number >= 1 (1 = no guidance), got 0.5"),  # was '>= 0'
        ("scheduler-off", "scheduler must be one of ['ddim', 'dpmsolver++', 'euler'], got 'off'"),  # was 'False'
        ("number-for-switch", "bad config: fast.checkpointing is true or false, got 2"),  # became true
        ("config-is-dir", "is a directory: give a YAML file"),  # was 'config file not found'
        ("config-scalar", "must hold a mapping of keys, got a single value"),  # was 'not valid YAML: Invalid ...
        ("guidance-override-inf", "bad config: guidance_scale must be a number in [1, 100] (1 = no guidance), got inf"),
        ("upscale-0", "--upscale must be an integer >= 1, got 0"),
        # these were tracebacks: PIL's DecompressionBombError, torch's device parser, a 715 GiB allocation
        ("image-bomb", "cannot read image"),
        ("bad-device", "--device must be auto, cpu, cuda or cuda:N, got 'bogus'"),
        ("upscale-huge", "--upscale 1000000000 makes 16000000000-pixel frames; at most 8192 (--upscale <= 512 for 16"),
        ("bom-only-actions-file", "action 2 is empty"),  # was accepted as the action '\ufeff'
        ("actions-and-file", "give either --actions or --actions-file, not both"),  # --actions "" used the file
    ],
)
def test_bad_input_exits_2_with_one_line(case, message, tiny_model_dir, image, tmp_path, capsys):
    model, actions, extra, out = str(tiny_model_dir), ["--actions", "move left; move right"], [], tmp_path / "v.mp4"
    img = str(image)
    if case == "no-actions":
        actions = []
    elif case == "empty-action":
        actions = ["--actions", "move left;  ; move right"]
    elif case == "bad-image":
        img = str(tmp_path / "broken.png")
        Path(img).write_bytes(b"not a png")
    elif case == "missing-image":
        img = str(tmp_path / "none.png")
    elif case == "unknown-key":
        extra = ["colour=red"]
    elif case == "bad-type":
        extra = ["frames_per_chunk=many"]
    elif case == "window":
        extra = ["context_frames=4"]
    elif case in ("missing-component", "pickle"):
        model = str(_bad_model(tiny_model_dir, tmp_path, "missing" if case == "missing-component" else "pickle"))
    elif case == "no-model":
        model = str(tmp_path / "nowhere")
    elif case == "bad-out":
        out = tmp_path / "v.avi"
    elif case == "out-cannot-create":
        out = Path("/proc/nope/x.mp4")
    elif case == "out-not-writable":
        if not os.path.ismount("/sys"):
            pytest.skip("needs sysfs at /sys (no file can be created there)")
        out = Path("/sys/x.mp4")
    elif case == "out-is-dir":
        out = tmp_path / "exists.mp4"
        out.mkdir()
    elif case == "binary-actions-file":
        (tmp_path / "route.bin").write_bytes(b"\xff\xfe\x00move\x80left\n")
        actions = ["--actions-file", str(tmp_path / "route.bin")]
    elif case == "seed-too-big":
        extra = ["--seed", str(2**64)]
    elif case == "seed-too-small":
        extra = ["--seed", str(-2**63 - 1)]
    elif case == "guidance-nan":
        extra = ["--guidance", "nan"]
    elif case == "guidance-below-1":
        extra = ["--guidance", "0.5"]
    elif case == "scheduler-off":
        extra = ["--scheduler", "off"]
    elif case == "number-for-switch":
        extra = ["fast.checkpointing=2"]
    elif case == "config-is-dir":
        (tmp_path / "configs.yaml").mkdir()
        extra = ["--config", str(tmp_path / "configs.yaml")]
    elif case == "config-scalar":
        (tmp_path / "scalar.yaml").write_text("42\n")
        extra = ["--config", str(tmp_path / "scalar.yaml")]
    elif case == "guidance-override-inf":
        extra = ["sampler.guidance_scale=inf"]
    elif case == "upscale-0":
        extra = ["--upscale", "0"]
    elif case == "image-bomb":
        img = str(tmp_path / "bomb.png")
        Image.new("1", (16000, 16000)).save(img)  # 256 M pixels: above PIL's decompression-bomb limit
    elif case == "bad-device":
        extra = ["--device", "bogus"]
    elif case == "upscale-huge":
        extra = ["--upscale", "1000000000"]
    elif case == "actions-and-file":
        (tmp_path / "route.txt").write_text("move left\n")
        actions = ["--actions", "", "--actions-file", str(tmp_path / "route.txt")]
    elif case == "bom-only-actions-file":
        (tmp_path / "route.txt").write_bytes(b"\xef\xbb\xbfmove left\n\xef\xbb\xbf\n")
        actions = ["--actions-file", str(tmp_path / "route.txt")]
    code = main(["generate", "--model", model, "--image", img, "--quiet", "--out", str(out), *actions, *FAST, *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert "Traceback" not in "\n".join(err)
    if case == "out-is-dir":
        assert out.is_dir() and not any(out.iterdir()) and not out.with_suffix(".json").exists()  # nothing generated
    else:
        assert not out.exists()


def test_settings_in_a_model_or_session_file_are_taken_as_written(tiny_model_dir, image, tmp_path, capsys):
    """OmegaConf resolved interpolations in them: a model folder's `${oc.env:HOME}` read the environment and
    printed it in the error ('got /root')."""
    from slowfast_vgen.config import config_from_dict, literal
    from slowfast_vgen.session import GenerationConfig

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    meta = json.loads((model / "slowfast_vgen.json").read_text())
    meta["generation"] = {"sampler": {"scheduler": "${oc.env:HOME}"}}
    (model / "slowfast_vgen.json").write_text(json.dumps(meta))
    code = main(["generate", "--model", str(model), "--image", str(image), "--quiet", "--actions", "move left",
                 "--out", str(tmp_path / "v.mp4"), *FAST])
    err = capsys.readouterr().err
    assert code == 2 and "got '${oc.env:HOME}'" in err and os.environ["HOME"] not in err.replace(str(tmp_path), "")
    for text in ("${oc.env:HOME}", "a\\${b}", "a\\\\${b} ${c}", r"blocks\.\d+\.attn${"):
        assert config_from_dict(GenerationConfig, {"fast": {"target_modules": text}}).fast.target_modules == text
        assert literal({"a": [text]}) != {"a": [text]}  # escaped for OmegaConf, which gives it back as written


def test_config_checks_named_by_the_audit():
    """Each was accepted and failed later with a traceback, or silently meant something else."""
    from slowfast_vgen.config import load_config
    from slowfast_vgen.errors import UserInputError
    from slowfast_vgen.model import ModelConfig
    from slowfast_vgen.session import GenerationConfig
    from slowfast_vgen.training import TrainConfig

    with pytest.raises(UserInputError, match=r"^bad config: fast\.rank: Value '2\.5' of type 'float' could not be"):
        load_config(GenerationConfig, None, ["fast.rank=2.5"])  # the key was not named
    for cls, extra in ((TrainConfig, ["data.root=x"]), (ModelConfig, [])):  # overflow tracebacks in manual_seed
        with pytest.raises(UserInputError, match=r"^bad config: seed must be an integer in \[-2\*\*63, 2\*\*64 - 1\]"):
            load_config(cls, None, [f"seed={2**64}", *extra])
    with pytest.raises(UserInputError, match="^bad config: lr_scheduler must be one of .*got 'piecewise_constant'$"):
        load_config(TrainConfig, None, ["lr_scheduler=piecewise_constant", "data.root=x"])  # diffusers' traceback
    assert load_config(TrainConfig, None, ["compile=true", "data.root=x"]).compile is True
    # a true/false word given to a text key is that text: `no` was read as false, which meant `off`
    with pytest.raises(UserInputError, match="^bad config: fast mode must be one of .*got 'no'$"):
        load_config(GenerationConfig, None, ["fast.mode=no"])
    assert load_config(GenerationConfig, None, ["fast.mode=off"]).fast.mode == "off"
    assert load_config(TrainConfig, None, ["mixed_precision=no", "data.root=x"]).mixed_precision == "no"


def test_true_false_words_in_a_yaml_file_stay_text_for_text_keys(tmp_path):
    """`mode: no` in a --config file was read as false and meant `off`, as `fast.mode=no` did."""
    from slowfast_vgen.config import load_config
    from slowfast_vgen.errors import UserInputError
    from slowfast_vgen.evaluation import EvalConfig
    from slowfast_vgen.session import GenerationConfig
    from slowfast_vgen.training import TrainConfig

    def config(cls, text):
        path = tmp_path / "config.yaml"
        path.write_text(text)
        return load_config(cls, path)

    with pytest.raises(UserInputError, match="^bad config: fast mode must be one of .*got 'no'$"):
        config(GenerationConfig, "fast:\n  mode: no\n")
    assert config(GenerationConfig, "fast:\n  mode: off\n  checkpointing: yes\n").fast.mode == "off"
    assert config(GenerationConfig, "fast: {mode: off, checkpointing: yes}\n").fast.checkpointing is True
    assert config(TrainConfig, "mixed_precision: no\ndata: {root: x}\n").mixed_precision == "no"
    with pytest.raises(UserInputError, match="^bad config: .*'yes'"):
        config(EvalConfig, "variants: [off, yes]\n")


@pytest.mark.parametrize("override, message", [
    ("generation.seed=7", "generation.seed is set per run by seeds (--seeds); leave generation.seed out"),
    ("generation.fast.mode=off", "generation.fast.mode is set per run by variants (--variants); leave"),
    ("generation={seed: 5}", "generation.seed is set per run by seeds (--seeds); leave generation.seed out"),
])
def test_eval_refuses_settings_each_run_sets_itself(override, message, tmp_path, capsys):
    """They were ignored, yet written into results.json's config as if the runs had used them."""
    assert main(["eval", "--out", str(tmp_path / "ev"), "--routes", "1", "--seeds", "0", override]) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}" + ("" if message.endswith("out") else
                                                                       " generation.fast.mode out")
    assert not (tmp_path / "ev").exists()


def test_plan_takes_its_task_from_the_config_without_task_flag(tmp_path, capsys):
    """`task=...` (and a --config file's task) was overwritten by --task, which was required."""
    code = main(["plan", "--oracle", "--episodes", "1", "--out", str(tmp_path / "p"), f"task={tmp_path / 'no.yaml'}"])
    assert code == 2 and "no.yaml" in capsys.readouterr().err


def test_a_byte_order_mark_does_not_turn_a_comment_into_an_action(tiny_model_dir, image, tmp_path):
    """Notepad writes one: the first line '\ufeff# my actions' was generated as a chunk."""
    route = tmp_path / "route.txt"
    route.write_bytes("# my actions\nmove left\n".encode("utf-8-sig"))
    out = tmp_path / "v.mp4"
    assert main(["generate", "--model", str(tiny_model_dir), "--image", str(image), "--quiet", "--actions-file",
                 str(route), "--out", str(out), *FAST]) == 0
    assert [chunk["action"] for chunk in json.loads(out.with_suffix(".json").read_text())["chunks"]] == ["move left"]


def test_an_interrupted_run_keeps_its_finished_chunks(tiny_model_dir, image, tmp_path, monkeypatch, capsys):
    """Ctrl-C (or SIGTERM) without --session threw away every finished chunk; now they are written to
    <out>.partial.mp4 (the video under its own name still appears only complete) and the exit code is 130."""
    from slowfast_vgen.session import GenerationSession

    generate = GenerationSession.generate

    def interrupted_after_two(self, actions, callback=None, **kwargs):
        def stop_after_two(record, frames):
            callback(record, frames)
            if self.num_chunks_done == 2:
                raise KeyboardInterrupt

        return generate(self, actions, callback=stop_after_two, **kwargs)

    monkeypatch.setattr(GenerationSession, "generate", interrupted_after_two)
    out = tmp_path / "v.mp4"
    code = main(["generate", "--model", str(tiny_model_dir), "--image", str(image), "--quiet", "--upscale", "1",
                 "--actions", "move left; move right; move up; stay", "--out", str(out), *FAST])
    assert code == 130 and not out.exists()
    partial = tmp_path / "v.partial.mp4"
    assert "stopped after 2 of 4 chunks: they are in " + str(partial) in capsys.readouterr().err
    assert len(decord.VideoReader(str(partial))) == 1 + 2 * 3  # the first frame and two chunks of 3 (FAST)

    def failing_third(self, actions, callback=None, **kwargs):  # e.g. out of memory: it threw every chunk away
        def fail_after_two(record, frames):
            callback(record, frames)
            if self.num_chunks_done == 2:
                raise RuntimeError("CUDA out of memory (simulated)")

        return generate(self, actions, callback=fail_after_two, **kwargs)

    monkeypatch.setattr(GenerationSession, "generate", failing_third)
    partial.unlink()
    with pytest.raises(RuntimeError, match="out of memory"):
        main(["generate", "--model", str(tiny_model_dir), "--image", str(image), "--quiet", "--upscale", "1",
              "--actions", "move left; move right; move up; stay", "--out", str(out), *FAST])
    assert "stopped after 2 of 4 chunks: they are in " + str(partial) in capsys.readouterr().err
    assert len(decord.VideoReader(str(partial))) == 1 + 2 * 3


def test_seed_limits_are_usable(tiny_model_dir, image, tmp_path):
    """The extreme seeds torch accepts generate (the memory generator's seed + 1 wraps at 2**64)."""
    for seed in (2**64 - 1, -2**63):
        out = tmp_path / f"{seed}.mp4"
        assert main(["generate", "--model", str(tiny_model_dir), "--image", str(image), "--quiet", "--seed", str(seed),
                     "--actions", "stay", "--out", str(out), *FAST]) == 0


def test_bad_output_location_fails_before_generating_without_traceback(tmp_path, capsys):
    """Issue #12: an unusable --out is refused at once, before any model is loaded (--model names nothing).

    The console script's own exit code is test_console_script_exit_code_and_no_traceback's business."""
    (tmp_path / "d.mp4").mkdir()
    for out, message in [("/proc/nope/x.mp4", "error: --out: cannot create the folder /proc/nope: "),
                         (str(tmp_path / "d.mp4"), f"error: --out: {tmp_path / 'd.mp4'} is a directory")]:
        code = main(["generate", "--actions", "move left", "--model", str(tmp_path / "nothing"), "--out", out])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1 and err.startswith(message), err


@pytest.mark.parametrize("case", ["no model", "bad window", "ctrl-c", "play", "folder existed", "finished work"])
def test_failed_generation_removes_the_empty_folders_it_made(case, tiny_model_dir, image, tmp_path, monkeypatch,
                                                             capsys):
    """--out's folder is made before any work (a bad location is refused at once): when generation then
    failed (a bad model, a bad config, Ctrl-C) the made, still empty folders stayed behind. Only those
    go: never a folder that existed before, nor one holding anything."""
    from slowfast_vgen.session import GenerationSession

    before = tmp_path / "before"
    before.mkdir()
    out = before / ("v.mp4" if case == "folder existed" else "a/b/c/v.mp4")
    command, model, actions, extra, expected = "generate", str(tiny_model_dir), ["--actions", "move left"], [], 2
    if case in ("no model", "play", "folder existed"):
        model = str(tmp_path / "nowhere")
    if case == "play":
        command, actions = "play", []
    if case == "bad window":
        extra = ["context_frames=4"]
    if case in ("ctrl-c", "finished work"):
        def interrupted(self, actions, **kwargs):  # during the first chunk, the video stream open
            if case == "finished work":
                (out.parent / "kept.txt").write_text("kept")
            raise KeyboardInterrupt

        monkeypatch.setattr(GenerationSession, "generate", interrupted)
        expected = 130
    code = main([command, "--model", model, "--image", str(image), "--quiet", "--out", str(out), *actions, *FAST,
                 *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == expected and len(err) == 1 and "Traceback" not in err[0], err
    assert before.is_dir()
    if case == "finished work":
        assert sorted(p.relative_to(before).as_posix() for p in before.rglob("*")) == [
            "a", "a/b", "a/b/c", "a/b/c/kept.txt"]
    else:
        assert list(before.iterdir()) == []


def _saved_session(tiny_model_dir, image, tmp_path, *extra) -> tuple[Path, list[str]]:
    common = ["--model", str(tiny_model_dir), "--image", str(image), "--quiet", *FAST]
    session = tmp_path / "session"
    assert main(["generate", *common, *extra, "--actions", "move left", "--out", str(tmp_path / "a.mp4"),
                 "--session", str(session)]) == 0
    return session, common


@pytest.mark.parametrize("damaged", ["optimizer.safetensors", "memory/adapter_model.safetensors",
                                     "memory/adapter_config.json", "state.safetensors", "session.json",
                                     "video/000001.safetensors"])
def test_resume_from_truncated_session_file_exits_2(damaged, tiny_model_dir, image, tmp_path, capsys):
    session, common = _saved_session(tiny_model_dir, image, tmp_path)
    file = session / damaged
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    capsys.readouterr()
    code = main(["generate", *common, "--actions", "move left; move up", "--out", str(tmp_path / "b.mp4"),
                 "--session", str(session)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "Traceback" not in "\n".join(err)
    assert len(err) == 1 and err[0].startswith("error: ") and "is corrupt" in err[0] and damaged.split("/")[-1] in err[0], err
    assert not (tmp_path / "b.mp4").exists()


def test_play_load_of_truncated_session_reports_and_continues(tiny_model_dir, image, tmp_path, monkeypatch, capsys):
    import io

    session, _ = _saved_session(tiny_model_dir, image, tmp_path)
    (session / "optimizer.safetensors").write_bytes((session / "optimizer.safetensors").read_bytes()[:40])
    script = f"move left\n:load {session}\n:save /proc/nope/saved\nmove up\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(script))
    out = tmp_path / "play.mp4"
    assert main(["play", "--model", str(tiny_model_dir), "--image", str(image), "--out", str(out), *FAST]) == 0
    captured = capsys.readouterr()
    assert f"error: saved session {session} is corrupt: optimizer.safetensors" in captured.out
    assert "error: :save: cannot write /proc/nope/saved: No such file or directory (in /proc)" in captured.out
    assert "Traceback" not in captured.out + captured.err
    # the session went on with its own memory: left, (failed load), up -> 1 + 2 chunks of 3 frames
    assert [c["action"] for c in json.loads(out.with_suffix(".json").read_text())["chunks"]] == ["move left", "move up"]
    assert _read(out).shape[0] == 7


def test_play_load_restores_a_session_moved_aside_by_an_interrupted_save(tiny_model_dir, image, tmp_path,
                                                                         monkeypatch, capsys):
    import io

    session, _ = _saved_session(tiny_model_dir, image, tmp_path)
    session.rename(tmp_path / ".session.old-4242")  # a save killed between its two renames
    (tmp_path / ".session.4242-k1ll3d_x.tmp").mkdir()
    monkeypatch.setattr(sys, "stdin", io.StringIO(f":load {session}\nmove up\n"))
    out = tmp_path / "play.mp4"
    assert main(["play", "--model", str(tiny_model_dir), "--image", str(image), "--out", str(out), *FAST]) == 0
    assert f"loaded {session}" in capsys.readouterr().out
    assert (session / "session.json").is_file() and not (tmp_path / ".session.old-4242").exists()
    assert [c["action"] for c in json.loads(out.with_suffix(".json").read_text())["chunks"]] == ["move left", "move up"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--seed", "5"], "other settings: --seed 5 (saved: 3)"),
        (["--steps", "1", "--fast", "off"], "other settings: --fast off (saved: paper), --steps 1 (saved: 2)"),
        (["fast.rank=8"], "other settings: fast.rank=8 (saved: 4)"),
    ],
)
def test_resume_with_conflicting_settings_exits_2(flags, message, tiny_model_dir, image, tmp_path, capsys):
    session, common = _saved_session(tiny_model_dir, image, tmp_path, "--seed", "3")
    capsys.readouterr()
    args = ["generate", *common, *flags, "--actions", "move left; move up", "--out", str(tmp_path / "b.mp4"),
            "--session", str(session)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: saved session {session} was made with") and message in err[0], err
    assert "Traceback" not in "\n".join(err)
    # the same settings (or none of them) resume
    assert main(["generate", *common, "--seed", "3", "--actions", "move left; move up", "--out", str(tmp_path / "b.mp4"),
                 "--session", str(session)]) == 0


def test_version_is_the_installed_distribution_s(capsys):
    """`sfvgen --version` was a usage error (exit 2)."""
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out == f"sfvgen {version('slowfast_vgen')}\n"


def test_eval_help_prints_a_single_percent(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(mean and 95% CI)" in text and "%%" not in text


@pytest.mark.parametrize("command, module, name", [
    ("generate", "session", "GenerationConfig"), ("play", "session", "GenerationConfig"),
    ("serve", "session", "GenerationConfig"), ("eval", "evaluation", "EvalConfig"),
    ("plan", "planning", "PlanConfig"), ("make-model", "model", "ModelConfig")])
def test_help_lists_every_config_key_that_key_value_overrides_may_set(command, module, name, capsys):
    import importlib
    from dataclasses import fields

    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "config keys (in the --config YAML file or as key=value overrides):" in text
    for field in fields(getattr(importlib.import_module(f"slowfast_vgen.{module}"), name)):
        assert f"\n  {field.name} (" in text or f"\n  {field.name}." in text, field.name
    if command == "eval":  # nested keys are dotted, with their default and help text
        assert "\n  generation.fast.rank (default: 32): LoRA rank\n" in text


def test_building_the_command_line_imports_no_torch():
    code = "import sys\nfrom slowfast_vgen.cli import build_parser\nbuild_parser()\nprint('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_console_script_exit_code_and_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, "-m", "slowfast_vgen", "generate", "--actions", "move left",
                             "--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "v.mp4")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: model directory not found: {tmp_path / 'nothing'}"
    assert "Traceback" not in result.stderr


def test_embedded_default_model_generates_offline(tmp_path):
    from slowfast_vgen.cli import DEFAULT_MODEL_DIR
    from slowfast_vgen.model import load_model

    size = sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.rglob("*") if p.is_file())
    assert size <= 25 * 2**20  # the one small shipped model
    assert not [p for p in DEFAULT_MODEL_DIR.rglob("*") if p.suffix in (".bin", ".pt", ".ckpt", ".pth")]
    bundle = load_model(DEFAULT_MODEL_DIR)
    assert (bundle.height, bundle.width) == (32, 32) and bundle.metadata["generation"]["frames_per_chunk"] == 8
    out = tmp_path / "demo.mp4"
    assert main(["generate", "--actions", "move right; head west", "--out", str(out), "--quiet", "--steps", "2"]) == 0
    assert _read(out).shape == (1 + 2 * 8, 128, 128, 3)
    from omegaconf import OmegaConf

    resolved = OmegaConf.load(out.with_suffix(".yaml"))
    assert resolved.sampler.eta == bundle.metadata["generation"]["sampler"]["eta"] == 1.0  # the model's own defaults apply


def test_a_sampling_step_outside_the_trained_noise_levels_is_noted(tmp_path, capsys):
    """The embedded model was last trained on t >= 300: its 3-step default stays inside, --steps 4 ends at 249."""
    from slowfast_vgen.cli import DEFAULT_MODEL_DIR
    from slowfast_vgen.model import load_model

    assert load_model(DEFAULT_MODEL_DIR).trained_timesteps == (300, 1000)
    assert main(["generate", "--actions", "move right", "--out", str(tmp_path / "a.mp4"), "--quiet", "--fast", "off"]) == 0
    assert "note:" not in capsys.readouterr().err
    assert main(["generate", "--actions", "move right", "--out", str(tmp_path / "b.mp4"), "--quiet", "--fast", "off",
                 "--steps", "4"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "(300 <= t < 1000): t = 249 (1 of 4)" in notes[0]


def test_cli_suite_choices_match_the_evaluation_suites():
    from slowfast_vgen import cli, evaluation

    assert tuple(cli.EVAL_SUITES) == tuple(evaluation.SUITES)


def test_device_resolution_is_one_function(monkeypatch):
    import torch

    from slowfast_vgen.cli import resolve_device
    from slowfast_vgen.errors import UserInputError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    with pytest.raises(UserInputError, match="--device is cuda:1, but CUDA is not available"):
        resolve_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:1") == "cuda:1"


def test_play_command_table_matches_the_help():
    import re

    from slowfast_vgen.cli import PLAY_COMMANDS, PLAY_HELP

    assert set(PLAY_COMMANDS) == set(re.findall(r"^  (:\w+)", PLAY_HELP, flags=re.M))


def test_cli_first_frame_is_the_worlds_first_frame():
    from slowfast_vgen.cli import world_first_frame
    from slowfast_vgen.data.readers import resize_center_crop
    from slowfast_vgen.worlds import build_world

    frame = world_first_frame("navigation", 3, 16, 12)
    assert frame.shape == (16, 12, 3) and frame.dtype == np.uint8
    episode = build_world("navigation", 3, overrides=["view_size=16"]).sample_episode(
        np.random.default_rng(3), num_actions=1, frames_per_action=1
    )
    assert np.array_equal(frame, resize_center_crop(episode.frames[:1], 16, 12)[0])  # a crop of a 16x16 view


def test_streamed_video_equals_the_written_one_and_a_failure_leaves_no_file(tmp_path):
    from slowfast_vgen.video_io import video_stream, write_video

    frames = np.random.default_rng(0).integers(0, 256, (17, 16, 16, 3), dtype=np.uint8)
    write_video(tmp_path / "whole.mp4", frames, upscale=2)
    with video_stream(tmp_path / "streamed.mp4", 8.0, 2) as append:
        for start in (0, 1, 9):  # the first frame, then chunks, as `sfvgen generate` streams them
            append(frames[start: start + (1 if start == 0 else 8)])
        assert not (tmp_path / "streamed.mp4").exists()  # nothing partial under the final name
    whole, streamed = (decord.VideoReader(str(tmp_path / n)) for n in ("whole.mp4", "streamed.mp4"))
    assert len(whole) == len(streamed) == 17
    assert np.array_equal(whole.get_batch(range(17)).asnumpy(), streamed.get_batch(range(17)).asnumpy())

    with pytest.raises(KeyboardInterrupt):
        with video_stream(tmp_path / "broken.mp4") as append:
            append(frames[:9])
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["streamed.mp4", "whole.mp4"]  # no partial, no temp file


def test_an_odd_frame_size_is_padded_after_upscaling(tmp_path):
    """yuv420p needs even sizes: 15 px frames were padded to 16 before a 2x upscale (a 32 px mp4 with a 2 px
    band, while the gif and the sidecar said 30); now only an odd upscaled size gets one edge pixel."""
    import imageio.v2 as imageio

    from slowfast_vgen.video_io import write_video

    frames = np.random.default_rng(0).integers(0, 256, (2, 15, 15, 3), dtype=np.uint8)
    for upscale, side in ((2, 30), (3, 46)):
        write_video(tmp_path / f"x{upscale}.mp4", frames, upscale=upscale)
        with imageio.get_reader(tmp_path / f"x{upscale}.mp4") as reader:
            assert reader.get_data(0).shape == (side, side, 3)


@pytest.mark.parametrize("case", ["video inside", "other files", "a file", "under a file", "dot", "video is the session",
                                  "name too long"])
def test_generate_refuses_a_session_dir_it_would_destroy_before_generating(case, tiny_model_dir, image, tmp_path,
                                                                            monkeypatch, capsys):
    """Every chunk saves the session by replacing its directory: a --session path that holds other
    files (or the video) is refused at once with one line and exit 2, and nothing in it is lost."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ep").mkdir()
    (tmp_path / "ep" / "notes.txt").write_text("keep me")
    (tmp_path / "file").write_text("keep me too")
    out, session, message = {
        "video inside": ("new/video.mp4", "new",
                         "--session: the session directory new would hold new/video.mp4, and every save replaces "
                         "the whole directory; give them separate paths"),
        "other files": ("video.mp4", "ep", "--session: ep is a folder of other files, not a saved session "
                        "(no session.json); saving would replace it: give a new or empty directory"),
        "a file": ("video.mp4", "file", "--session: file is a file, not a session directory"),
        "under a file": ("video.mp4", "file/s", "--session: file is a file, so file/s cannot be a session directory"),
        "dot": ("video.mp4", ".", "--session: '.' names no directory of its own; give one such as session1"),
        "video is the session": ("v.mp4", "v.mp4", "--session: the session directory v.mp4 would hold v.mp4, "
                                 "and every save replaces the whole directory; give them separate paths"),
        # an OSError traceback at the first save, after the first chunk (a read-only folder is the same check)
        "name too long": ("video.mp4", "s" * 250, f"--session: cannot write {'s' * 250}: File name too long (in {tmp_path})"),
    }[case]
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    code = main(["generate", "--model", str(tiny_model_dir), "--image", str(image), "--quiet", *FAST,
                 "--actions", "move left", "--out", out, "--session", session])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"error: {message}"]
    after = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert set(after) - set(before) <= {"new"}  # --out's folder may be created, nothing is written or removed
    assert (tmp_path / "ep" / "notes.txt").read_text() == "keep me" and (tmp_path / "file").read_text() == "keep me too"


def test_a_session_dir_holding_an_input_is_refused_before_a_save_replaces_it(tiny_model_dir, image, tmp_path,
                                                                             monkeypatch, capsys):
    """Every save replaces the session directory as a whole: an --actions-file (or --config, --image,
    --model) inside it would be deleted by the first save, on a resume as on play's :save."""
    import io

    session, common = _saved_session(tiny_model_dir, image, tmp_path)
    actions = session / "more.txt"
    actions.write_text("move left\nmove up\n")
    capsys.readouterr()
    code = main(["generate", *common, "--actions-file", str(actions), "--out", str(tmp_path / "b.mp4"),
                 "--session", str(session)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"error: --session: the session directory {session} holds the --actions-file {actions}, "
                                 "and every save replaces the whole directory; give them separate paths"]
    assert actions.read_text() == "move left\nmove up\n" and not (tmp_path / "b.mp4").exists()
    # the model directory inside a new session directory
    model = tmp_path / "new" / "model"
    shutil.copytree(tiny_model_dir, model)
    code = main(["generate", "--model", str(model), "--image", str(image), "--quiet", *FAST, "--actions", "stay",
                 "--out", str(tmp_path / "c.mp4"), "--session", str(tmp_path / "new")])
    assert code == 2 and "holds the --model" in capsys.readouterr().err and (model / "unet").is_dir()
    # play's :save into the folder that holds its --image: a message, and play goes on
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(image, folder / "first.png")
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"move left\n:save {folder}\nmove up\n:quit\n"))
    assert main(["play", "--model", str(tiny_model_dir), "--image", str(folder / "first.png"), *FAST,
                 "--out", str(tmp_path / "p.mp4")]) == 0
    captured = capsys.readouterr()
    assert f":save: the session directory {folder} holds the --image {folder / 'first.png'}" in captured.out + captured.err
    assert (folder / "first.png").is_file() and _read(tmp_path / "p.mp4").shape[0] == 7


def test_generate_uses_an_empty_session_dir(tiny_model_dir, image, tmp_path):
    (tmp_path / "empty").mkdir()
    assert main(["generate", "--model", str(tiny_model_dir), "--image", str(image), "--quiet", *FAST,
                 "--actions", "move left", "--out", str(tmp_path / "v.mp4"), "--session", str(tmp_path / "empty")]) == 0
    assert (tmp_path / "empty" / "session.json").is_file() and _read(tmp_path / "v.mp4").shape[0] == 4


def test_play_save_refuses_a_dir_it_would_destroy_and_goes_on(tiny_model_dir, image, tmp_path, monkeypatch, capsys):
    import io

    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.txt").write_text("keep me")
    script = "move left\n:save play.mp4\n:save notes\n:save .\n:save saved\nmove up\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(script))
    assert main(["play", "--model", str(tiny_model_dir), "--image", str(image), *FAST]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert "error: :save: the session directory play.mp4 would hold play.mp4, and every save replaces the whole " \
           "directory; give them separate paths" in lines
    assert "error: :save: notes is a folder of other files, not a saved session (no session.json); saving would " \
           "replace it: give a new or empty directory" in lines
    assert "error: :save: '.' names no directory of its own; give one such as session1" in lines
    assert "saved to saved" in lines and (tmp_path / "saved" / "session.json").is_file()
    assert "Traceback" not in captured.out + captured.err
    assert (tmp_path / "notes" / "notes.txt").read_text() == "keep me"
    # the session went on: left, (refused saves), up -> 1 + 2 chunks of 3 frames in the video it kept writing
    assert _read(tmp_path / "play.mp4").shape[0] == 7


def test_resume_of_a_session_whose_config_is_not_an_object_exits_2(tiny_model_dir, image, tmp_path, capsys):
    session, common = _saved_session(tiny_model_dir, image, tmp_path)
    meta = json.loads((session / "session.json").read_text())
    (session / "session.json").write_text(json.dumps({**meta, "config": []}))
    capsys.readouterr()
    code = main(["generate", *common, "--actions", "move left; move up", "--out", str(tmp_path / "b.mp4"),
                 "--session", str(session)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [f"error: saved session {session} is corrupt: session.json: config is list, expected an object"]


EVAL_TINY = ["routes=1", "seeds=[0]", "actions_per_route=4", "generation.frames_per_chunk=4",
             "generation.context_frames=4", "generation.window=8", "generation.sampler.num_inference_steps=1"]


@pytest.mark.parametrize("case, message", [
    ("out-is-file", "is a file; give a directory"),
    ("out-under-file", "is a file, so"),
    ("negative-world-seed-base", "bad config: world_seed_base must be >= 900000000"),
    ("training-world-seed-base", "bad config: world_seed_base must be >= 900000000"),
    ("motion-max-shift", "metrics.motion_max_shift must be <= 7 for this model's 16x16 frames, got 8"),
])
def test_bad_eval_input_exits_2_with_one_line_before_generating(case, message, tiny_model_dir, tmp_path, monkeypatch,
                                                                  capsys):
    from slowfast_vgen.session import GenerationSession

    def never(*args, **kwargs):
        raise AssertionError("generated before the input was checked")

    monkeypatch.setattr(GenerationSession, "generate", never)
    out, extra = tmp_path / "eval", []
    if case == "out-is-file":
        out.write_text("keep me")
    elif case == "out-under-file":
        (tmp_path / "file").write_text("keep me")
        out = tmp_path / "file" / "eval"
    elif case == "negative-world-seed-base":
        extra = ["world_seed_base=-1"]
    elif case == "training-world-seed-base":
        extra = ["world_seed_base=1000000"]  # world 0 of a `make_world --seed 1` dataset
    elif case == "motion-max-shift":
        extra = ["metrics.motion_max_shift=8"]
    code = main(["eval", "--model", str(tiny_model_dir), "--variants", "off", "--out", str(out), "--quiet",
                 *EVAL_TINY, *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    if case == "out-is-file":
        assert out.read_text() == "keep me"
    elif case != "out-under-file":
        assert not out.exists()


SPARE = ", an input that must not be overwritten; choose another path"
"""The end of the line refusing an output that would replace an input (io_utils.check_output_spares_inputs)."""


@pytest.mark.parametrize("case", ["config", "actions-file", "image", "gif-image", "hard link", "play config",
                                  "model file"])
def test_out_that_would_replace_an_input_file_exits_2_before_loading(case, image, tmp_path, monkeypatch, capsys):
    """`--out g1/v.mp4 --config g1/v.yaml` used to exit 0 having replaced the user's config with the
    resolved-config sidecar (the same for the actions file and the JSON sidecar, the image and the
    video): an output that is an input is refused with one line, before any model loads."""
    import slowfast_vgen.cli as cli

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the outputs were checked")

    monkeypatch.setattr(cli, "_load_bundle", never)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "g1").mkdir()
    (tmp_path / "g1" / "v.yaml").write_text("seed: 3\n")
    (tmp_path / "g1" / "same.json").write_text("move left\n")
    shutil.copy(image, tmp_path / "g1" / "v.gif")
    (tmp_path / "model" / "unet").mkdir(parents=True)
    (tmp_path / "model" / "model_config.yaml").write_text("weights: keep\n")
    command, args, message = {
        "config": ("generate", ["--config", "g1/v.yaml", "--out", "g1/v.mp4"],
                   "--out: g1/v.yaml (the config written beside the video) is the --config g1/v.yaml" + SPARE),
        "actions-file": ("generate", ["--actions-file", "g1/same.json", "--out", "g1/same.mp4"],
                         "--out: g1/same.json (the JSON sidecar written beside the video) is the --actions-file "
                         "g1/same.json" + SPARE),
        "image": ("generate", ["--image", "g1/v.gif", "--out", str(tmp_path / "g1" / "v.mp4"), "--gif"],
                  f"--out: {tmp_path / 'g1' / 'v.gif'} (the gif written beside the video) is the --image g1/v.gif"
                  + SPARE),
        "gif-image": ("generate", ["--image", "g1/../g1/v.gif", "--out", "./g1/v.mp4", "--gif"],
                      "--out: g1/v.gif (the gif written beside the video) is the --image g1/../g1/v.gif" + SPARE),
        "hard link": ("generate", ["--config", "g1/link.yaml", "--out", "g1/v.mp4"],
                      "--out: g1/v.yaml (the config written beside the video) is the --config g1/link.yaml" + SPARE),
        "play config": ("play", ["--config", "g1/v.yaml", "--out", "g1/v.mp4"],
                        "--out: g1/v.yaml (the config written beside the video) is the --config g1/v.yaml" + SPARE),
        "model file": ("generate", ["--out", "model/model_config.mp4"],
                       "--out: model/model_config.yaml (the config written beside the video) lies inside the "
                       "--model directory model" + SPARE),
    }[case]
    if case == "hard link":
        os.link(tmp_path / "g1" / "v.yaml", tmp_path / "g1" / "link.yaml")
    if "--actions-file" not in args and command == "generate":
        args = ["--actions", "move left", *args]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    code = main([command, "--model", "model", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"error: {message}"], err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # nothing written or replaced


def test_out_into_the_embedded_default_model_is_refused(monkeypatch, capsys):
    """Without --model the embedded default model is read: `--out DEFAULT/slowfast_vgen.mp4` would write
    its JSON sidecar over the model's slowfast_vgen.json."""
    import slowfast_vgen.cli as cli

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the outputs were checked")

    monkeypatch.setattr(cli, "_load_bundle", never)
    out = cli.DEFAULT_MODEL_DIR / "slowfast_vgen.mp4"
    assert main(["generate", "--actions", "move left", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --out: {out.with_suffix('.json')} (the JSON sidecar written beside the video) lies inside the "
        f"default --model directory {cli.DEFAULT_MODEL_DIR}" + SPARE)
    assert not out.exists()


@pytest.mark.parametrize("link", ["hard", "symbolic"])
def test_generate_and_the_data_tools_refuse_an_output_over_an_input_alike(link, tmp_path, monkeypatch, capsys):
    """One check (io_utils.check_output_spares_inputs) for generate/play and the data tools
    (io_utils.check_output_file): the same rule and the same line, naming the flag, the output and the
    input. They were twins: the CLI's line named no input path, and the data tools called a hard link of
    an input "lies inside" it."""
    import slowfast_vgen.cli as cli
    from slowfast_vgen.errors import UserInputError
    from slowfast_vgen.io_utils import check_output_file

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the outputs were checked")

    monkeypatch.setattr(cli, "_load_bundle", never)
    monkeypatch.chdir(tmp_path)
    Path("cfg.yaml").write_text("seed: 3\n")
    (os.link if link == "hard" else os.symlink)("cfg.yaml", "v.yaml")
    assert main(["generate", "--model", "model", "--actions", "move left", "--config", "cfg.yaml",
                 "--out", "v.mp4"]) == 2
    message = "--out: v.yaml (the config written beside the video) is the --config cfg.yaml" + SPARE
    assert capsys.readouterr().err.strip() == f"error: {message}"
    with pytest.raises(UserInputError) as refused:
        check_output_file("v.yaml", "--out", [("--config", "cfg.yaml")])
    assert str(refused.value) == message.replace(" (the config written beside the video)", "")
    assert Path("cfg.yaml").read_text() == "seed: 3\n"
    # each caller keeps its rule for the model directory: generate may add a file beside the model's own
    # (`--model . --out v.mp4`), a data tool writes nothing inside it
    (tmp_path / "model").mkdir()
    args = cli.build_parser().parse_args(["generate", "--model", "model", "--actions", "stay", "--out", "model/v.mp4"])
    cli._check_outputs_spare_inputs(cli._output_files(Path("model/v.mp4")), args)
    with pytest.raises(UserInputError, match="lies inside the --model directory model, an input"):
        check_output_file("model/v.safetensors", "--out", [("--model directory", "model")])


@pytest.mark.parametrize("variants", ["", "  ", ","])
def test_empty_eval_variants_exits_2_before_loading(variants, tmp_path, monkeypatch, capsys):
    """`--variants ""` used to count as not given, so the whole default evaluation ran."""
    import slowfast_vgen.cli as cli

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before --variants was checked")

    monkeypatch.setattr(cli, "_load_bundle", never)
    code = main(["eval", "--variants", variants, "--out", str(tmp_path / "eval")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: --variants is empty"), err
    assert not (tmp_path / "eval").exists()


def test_configs_generate_yaml_is_what_a_plain_generate_with_the_embedded_model_uses():
    """Its header said "every key with its default" while it held 20 steps, guidance 2 and window 16: passing it
    turned the embedded model's real-time sampler into a slow one on a window it was never trained on."""
    from dataclasses import asdict

    from slowfast_vgen.config import load_config
    from slowfast_vgen.session import GenerationConfig

    repo = Path(__file__).resolve().parents[1]
    model = json.loads((repo / "slowfast_vgen/assets/default_model/slowfast_vgen.json").read_text())
    plain = load_config(GenerationConfig, None, [], defaults=model["generation"])  # as _generation_config merges
    assert asdict(load_config(GenerationConfig, str(repo / "configs/generate.yaml"), [])) == asdict(plain)


@pytest.mark.parametrize("error, line", [
    (lambda: UserInputError("no segments with split 'test'"), "error: no segments with split 'test'\n"),
    (lambda: OSError(errno.ENOSPC, "No space left on device", "/tmp/out.mp4"),
     "error: cannot write /tmp/out.mp4: No space left on device\n"),
])
def test_an_error_line_is_written_in_one_piece(error, line, monkeypatch):
    """With PYTHONUNBUFFERED, print() wrote the message and its newline separately: the error lines of two
    torchrun processes sharing one stream ran into each other ("...['train']error: ...")."""
    from slowfast_vgen.errors import run_cli

    writes = []

    class Recorder:
        def write(self, text):
            writes.append(text)

        def flush(self):
            pass

    def fail(argv):
        raise error()

    monkeypatch.setattr(sys, "stderr", Recorder())
    assert run_cli(fail, []) == 2
    assert writes == [line]


def test_a_run_stopped_after_its_video_replaced_the_old_leaves_no_sidecars_of_the_old(
        tiny_model_dir, image, tmp_path, monkeypatch):
    """The new video replaced the old one and the run was stopped before its sidecars were written: the old
    run's video.json (its frames, actions and seconds) and video.yaml stood beside the new video."""
    import slowfast_vgen.cli as cli

    out = tmp_path / "video.mp4"
    common = ["generate", "--model", str(tiny_model_dir), "--image", str(image), "--quiet", *FAST, "--out", str(out)]
    assert main([*common, "--actions", "move left"]) == 0
    old_video = out.read_bytes()
    assert json.loads(out.with_suffix(".json").read_text())["frames"] == 4

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "write_outputs", stopped)
    assert main([*common, "--actions", "move right; move right"]) == 130
    assert out.read_bytes() != old_video and len(decord.VideoReader(str(out))) == 7
    assert not out.with_suffix(".json").exists() and not out.with_suffix(".yaml").exists()
