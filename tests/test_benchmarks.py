"""benchmarks/: CPU smoke runs (modelscope_gpu.py tiny preset and the real config on the meta device; train_step.py)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from diffusers import UNet3DConditionModel
from torch.utils.flop_counter import FlopCounterMode

from slowfast_vgen.errors import UserInputError

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    name = "benchmark_modelscope_gpu"
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / "modelscope_gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(name, None)


def independent_forward_flops(unet_config: dict, batch: int, frames: int, size: int, tokens: int) -> int:
    """One forward of a plain diffusers UNet3D on the meta device, counted by FlopCounterMode."""
    with torch.device("meta"):
        unet = UNet3DConditionModel(**unet_config)
        sample = torch.empty(batch, unet_config["in_channels"], frames, size, size)
        states = torch.empty(batch, tokens, unet_config["cross_attention_dim"])
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(sample, 500, encoder_hidden_states=states)
    return counter.get_total_flops()


def test_tiny_cpu_run_writes_every_mode(bench, tmp_path):
    assert bench.main(["--size", "tiny", "--device", "cpu", "--chunks", "2", "--out", str(tmp_path), "--name", "smoke"]) == 0
    result = json.loads((tmp_path / "smoke.json").read_text())
    modes, summary, config = result["modes"], result["summary"], result["config"]
    preset = bench.PRESETS["tiny"]
    assert set(modes) == set(bench.MODES)
    assert config["frames"] == preset.frames and config["context_frames"] == 8 and config["steps"] == preset.steps

    counted = {}  # an independent count per frame count (two modes share one)
    for name, mode in modes.items():
        assert len(mode["per_chunk"]) == 2 and mode["measured_chunks"] == 1 and not mode["truncated"]
        assert [c["warmup"] for c in mode["per_chunk"]] == [True, False]
        assert all(c["seconds"] > 0 and c["sampling_seconds"] > 0 for c in mode["per_chunk"])
        assert mode["peak_memory_mb"] > 0
        # the FLOP count matches an independent count of one forward at the mode's batch and frames
        frames = preset.frames + (0 if name == "reference" else config["context_frames"])
        assert mode["unet_frames"] == frames and mode["unet_batch"] == 2
        if frames not in counted:
            counted[frames] = independent_forward_flops(preset.unet, 2, frames, preset.latent_size, preset.text_tokens)
        expected = counted[frames]
        assert mode["unet_forward_flops"] == expected > 0
        # per-chunk FLOPs, MFU and the means follow from the records
        assert mode["flops_per_chunk"] == config["steps"] * expected + mode["temp_lora_update_flops"]
        seconds = mode["per_chunk"][1]["seconds"]
        assert mode["seconds_per_chunk"] == pytest.approx(seconds)
        assert mode["mfu"] == pytest.approx(mode["flops_per_chunk"] / seconds / (result["peak_tflops"] * 1e12))
    lora = modes["project_temp_lora"]
    assert lora["temp_lora_update_flops"] > 0 and lora["per_chunk"][1]["update_seconds"] > 0
    assert modes["project"]["per_chunk"][1]["update_seconds"] == 0

    ref, project = modes["reference"], modes["project"]
    assert summary["project_over_reference_time"] == pytest.approx(project["seconds_per_chunk"] / ref["seconds_per_chunk"])
    assert summary["project_over_reference_flops"] == pytest.approx(project["flops_per_chunk"] / ref["flops_per_chunk"])
    assert summary["temp_lora_time_ratio"] == pytest.approx(lora["seconds_per_chunk"] / project["seconds_per_chunk"])
    assert summary["temp_lora_memory_ratio"] == pytest.approx(lora["peak_memory_mb"] / project["peak_memory_mb"])
    assert summary["project_mfu"] == project["mfu"]
    assert summary["goal"]["met"] == (summary["project_over_reference_time"] <= 0.8 and project["mfu"] >= 0.45)


def test_full_size_config_builds_on_meta(bench):
    unet = bench.build_unet(bench.PRESETS["modelscope"], "meta")
    assert all(p.device.type == "meta" for p in unet.parameters())  # no memory behind the weights
    assert sum(p.numel() for p in unet.parameters()) == pytest.approx(1.41e9, abs=0.02e9)


def test_bad_arguments_are_user_errors(bench, tmp_path):
    for argv, message in (
        (["--modes", "fastest"], "--modes must name"), (["--chunks", "1", "--warmup", "1"], "--chunks must exceed"),
        (["--guidance-scale", "1"], "--guidance-scale must be > 1"),
        # --steps -1 ran and recorded negative FLOPs, 0 silently ran the preset's; these were tracebacks:
        (["--steps", "-1"], "--steps must be >= 1, got -1"), (["--steps", "0"], "--steps must be >= 1, got 0"),
        (["--frames", "-2"], "--frames must be >= 1, got -2"),
        (["--peak-tflops", "0"], "--peak-tflops must be a finite number > 0, got 0.0"),
    ):
        with pytest.raises(bench.UserInputError, match=f"^{message}"):
            bench.main(["--size", "tiny", "--device", "cpu", "--out", str(tmp_path), *argv])
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv", [["--chunks", "0"], ["--chunks", "1", "--warmup", "0"], ["--chunks", "2", "--warmup", "2"],
                                  ["--warmup", "-1"]])
def test_chunk_cost_refuses_chunk_counts_it_cannot_summarise(argv, capsys):
    """--chunks 0 and 1 were tracebacks (an empty mean; no second chunk for the memory growth), and --warmup 5
    --chunks 2 averaged the warm-up chunks."""
    spec = importlib.util.spec_from_file_location("benchmark_chunk_cost", BENCHMARKS / "chunk_cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.run_cli(module.main, argv) == 2
    assert capsys.readouterr().err.startswith("error: --chunks must be >= 2 and exceed --warmup >= 0, got ")


def test_chunk_cost_records_the_settings_each_mode_ran_with(tmp_path, capsys):
    """The results gave only the model's own generation defaults (4 steps, no guidance) for a run made with
    50 guided steps; the settings were in the command line alone."""
    spec = importlib.util.spec_from_file_location("benchmark_chunk_cost", BENCHMARKS / "chunk_cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.run_cli(module.main, ["--chunks", "2", "--modes", "off,paper", "--out", str(tmp_path), "--name", "c",
                                        "sampler.num_inference_steps=2", "frames_per_chunk=4", "context_frames=2"]) == 0
    modes = json.loads((tmp_path / "c.json").read_text())["modes"]
    assert [modes[m]["generation"]["fast"]["mode"] for m in ("off", "paper")] == ["off", "paper"]
    assert {modes[m]["generation"]["sampler"]["num_inference_steps"] for m in modes} == {2}


def test_chunk_cost_refuses_an_unknown_mode_before_measuring_any(monkeypatch, capsys):
    """`--modes off,bogus` measured the whole `off` mode (about 14 s) before the child process refused `bogus`."""
    spec = importlib.util.spec_from_file_location("benchmark_chunk_cost", BENCHMARKS / "chunk_cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module.subprocess, "run", lambda *a, **k: pytest.fail("a mode was measured"))
    assert module.run_cli(module.main, ["--chunks", "2", "--modes", "off,bogus"]) == 2
    assert capsys.readouterr().err == ("error: --modes: unknown fast mode 'bogus'; choose from off, paper, text, "
                                       "full-sequence\n")


def test_benchmark_results_stay_in_out_which_is_checked_first(tmp_path, capsys):
    """`action_space.py --name ../../escape` wrote outside the results folder, and an --out that is a file
    failed with a FileExistsError traceback after the whole measurement."""
    spec = importlib.util.spec_from_file_location("benchmark_action_space", BENCHMARKS / "action_space.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (tmp_path / "afile").write_text("x")
    for argv, message in ((["--name", "../../escape"], "--name must be a plain file name (no folders), got "
                                                        "'../../escape'"),
                          (["--out", str(tmp_path / "afile")], f"--out: {tmp_path / 'afile'} is a file; give a "
                                                               "directory")):
        assert module.run_cli(module.main, ["--model", str(tmp_path / "no_model"), *argv]) == 2  # before loading it
        assert capsys.readouterr().err == f"error: {message}\n"


@pytest.fixture(scope="module")
def train_step():
    """benchmarks/train_step.py as a module (benchmarks/ is no package)."""
    spec = importlib.util.spec_from_file_location("benchmark_train_step", BENCHMARKS / "train_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SMALL_STEP = ["--batch", "2", "--frames", "3", "--context", "1", "--warmup", "1", "--steps", "2", "--top", "5"]


def test_train_step_benchmark_times_the_slow_learner_step_and_breaks_it_down(train_step, tmp_path):
    assert train_step.main([*SMALL_STEP, "--out", str(tmp_path), "--name", "smoke"]) == 0
    result = json.loads((tmp_path / "smoke.json").read_text())
    assert len(result["eager_seconds"]) == 2 and all(s > 0 for s in result["eager_seconds"])
    assert result["eager_seconds_per_step"] == pytest.approx(sum(result["eager_seconds"]) / 2)  # the median of two
    shares = [row["share"] for row in result["breakdown_eager"]]
    assert len(shares) == 5 and shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1
    assert "compiled_seconds_per_step" not in result  # only with --compile
    # by default the CPU recipe's settings, on the tiny random model (given the recipe's action encoder)
    recipe = result["train_config"]
    assert Path(result["config"]["config"]).name == "cpu_recipe.yaml" and recipe["init_from"] == ""
    assert recipe["action_loss_weight"] == 0.1 and recipe["text_dropout"] == 0.1 and recipe["min_timestep"] == 300
    assert result["model"]["action_encoder_parameters"] > 0
    with pytest.raises(SystemExit):
        train_step.main(["--context", "3", "--frames", "3", "--out", str(tmp_path)])
    with pytest.raises(UserInputError, match="no_such_key"):
        train_step.main([*SMALL_STEP, "--out", str(tmp_path), "no_such_key=1"])


def test_train_step_benchmark_runs_the_trainers_loss_with_the_configs_settings(train_step, tmp_path, monkeypatch):
    """The timed step is SlowTrainer's own: its loss drops the texts with the config's text_dropout."""
    from slowfast_vgen.training import SlowTrainer

    seen, conditioning = [], SlowTrainer.conditioning

    def spy(self, texts, encoder=None):
        seen.append(list(texts))
        return conditioning(self, texts, encoder)

    monkeypatch.setattr(SlowTrainer, "conditioning", spy)
    config = tmp_path / "dropout.yaml"
    config.write_text("text_dropout: 0.99\nbatch_size: 2\n")
    args = [*SMALL_STEP, "--config", str(config), "whole_window_share=0.5", "--out", str(tmp_path), "--name", "dropout"]
    assert train_step.main(args) == 0
    result = json.loads((tmp_path / "dropout.json").read_text())
    assert result["train_config"]["text_dropout"] == 0.99 and result["train_config"]["whole_window_share"] == 0.5
    assert result["model"]["action_encoder_parameters"] == 0  # this config's model, not the recipe's
    assert len(seen) == 1 + 2 + 1  # warmup, timed steps, profiled step: one loss each
    assert seen == [["", ""]] * 4  # every text dropped: the benchmark's own step always used the action text


def test_session_save_counts_only_the_bytes_each_save_wrote(tmp_path, capsys):
    """A save after every chunk writes the new chunk (and the fixed-size memory), not the whole video: the
    bytes a save writes stay flat while the session on disk grows by a chunk a save."""
    spec = importlib.util.spec_from_file_location("benchmark_session_save", BENCHMARKS / "session_save.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.run_cli(module.main, ["--chunks", "1"]) == 2
    assert capsys.readouterr().err == "error: --chunks must be >= 2, got 1\n"
    assert module.run_cli(module.main, ["--chunks", "6", "--out", str(tmp_path), "--name", "s",
                                        "--session-dir", str(tmp_path / "session")]) == 0
    rows = json.loads((tmp_path / "s.json").read_text())["per_save"]
    assert [row["chunks"] for row in rows] == [1, 2, 3, 4, 5, 6]
    chunk_mb = (rows[-1]["session_mb"] - rows[0]["session_mb"]) / 5
    assert chunk_mb > 0 and len(list((tmp_path / "session" / "video").iterdir())) == 7
    assert max(row["written_mb"] for row in rows[1:]) - min(row["written_mb"] for row in rows[1:]) < chunk_mb / 10


def test_checkpoint_cost_measures_a_checkpoint_of_weights_and_both_adam_moments(tmp_path, capsys):
    """The benchmark saves what the trainer saves (UNet + AdamW's two moments, digested) and times the
    digests within the save and the resume's check; bad arguments are one-line errors."""
    spec = importlib.util.spec_from_file_location("benchmark_checkpoint_cost", BENCHMARKS / "checkpoint_cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.run_cli(module.main, ["--repeats", "0"]) == 2
    assert capsys.readouterr().err == "error: --repeats must be >= 1, got 0\n"
    assert module.run_cli(module.main, ["--model", str(tmp_path), "block_out_channels=[8,16]"]) == 2
    assert capsys.readouterr().err == "error: key=value overrides shape a random UNet: give them or --model, not both\n"
    assert module.run_cli(module.main, ["--repeats", "2", "--out", str(tmp_path), "--name", "c",
                                        "--dir", str(tmp_path), "block_out_channels=[16,32]", "norm_num_groups=4"]) == 0
    result = json.loads((tmp_path / "c.json").read_text())
    summary, rows = result["summary"], result["per_repeat"]
    assert len(rows) == 2 and result["command"].endswith("block_out_channels=[16,32] norm_num_groups=4")
    assert [row["checkpoint_mb"] for row in rows] == [rows[0]["checkpoint_mb"]] * 2
    weights_mb = summary["unet_parameters"] * 4 / 1e6  # float32: the weights, then the two moments
    assert 3 * weights_mb < summary["checkpoint_mb"] < 3 * weights_mb * 1.1
    assert all(0 < row["digest_seconds"] < row["save_seconds"] and row["digest_serial_seconds"] > 0 for row in rows)
    assert 0 < summary["digest_share_of_save"] < 1 and 0 < summary["verify_share_of_resume"] < 1
    assert list(tmp_path.glob("checkpoint-cost-*")) == []  # the checkpoints went with their temporary folder
