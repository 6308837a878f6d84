"""Slow learning and the slow-fast loop: checkpoints, exact resume, SIGTERM, NaN, 2 processes."""

from __future__ import annotations

import json
import os
import re
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from slowfast_vgen.checkpointing import list_checkpoints, save_checkpoint
from slowfast_vgen.config import load_config
from slowfast_vgen.data.world_dataset import MakeWorldConfig, make_world_dataset
from slowfast_vgen.diffusion import context_mask
from slowfast_vgen.errors import UserInputError
from slowfast_vgen.model import load_model
from slowfast_vgen.training import (
    LoopTrainConfig,
    SlowFastLoopTrainer,
    SlowTrainer,
    TrainConfig,
    TrainingDiverged,
    train,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world")
    make_world_dataset(MakeWorldConfig(out=str(root), episodes=4, size=32, frames_per_action=4, actions_per_episode=4,
                                       val_fraction=0.0, test_fraction=0.0, workers=1))
    return root


def _overrides(root: Path, out: Path, *extra: str) -> list[str]:
    return [f"data.root={root}", f"output_dir={out}", "data.height=16", "data.width=16", "data.context_frames_max=2",
            "data.target_frames=4", "batch_size=2", "num_workers=0", "lr_warmup_steps=1", "report_to=none",
            "log_every=1", "checkpointing_steps=100", *extra]


def _slow(root, out, *extra) -> TrainConfig:
    return load_config(TrainConfig, overrides=_overrides(root, out, *extra))


def _unet_state(out: Path) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in load_model(out / "model").unet.state_dict().items()}


def test_three_steps_write_checkpoints_and_a_loadable_model(world_root, tmp_path):
    out = tmp_path / "run"
    result = train(_slow(world_root, out, "max_steps=3", "checkpointing_steps=2"))
    assert result.step == 3 and sorted(result.losses) == [1, 2, 3] and not result.interrupted
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-3"]
    files = sorted(str(p.relative_to(out / "checkpoint-3")) for p in (out / "checkpoint-3").rglob("*") if p.is_file())
    assert files == ["optimizer.safetensors", "trainer_state.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors"]
    assert json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["step"] == 3
    assert not [p for p in out.rglob("*") if p.suffix in (".bin", ".pkl", ".pt")]  # nothing pickled
    assert [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()] == [1, 2, 3]
    bundle = load_model(out / "model")
    assert bundle.metadata["generation"] == {"frames_per_chunk": 4, "context_frames": 2, "window": 6}


def test_resume_gives_the_losses_and_weights_of_an_uninterrupted_run(world_root, tmp_path):
    straight = train(_slow(world_root, tmp_path / "a", "max_steps=4"))
    first = train(_slow(world_root, tmp_path / "b", "max_steps=2"))
    resumed = train(_slow(world_root, tmp_path / "b", "max_steps=4", "resume=latest"))
    assert sorted(first.losses) == [1, 2] and sorted(resumed.losses) == [3, 4]
    for step in (1, 2):
        assert first.losses[step] == straight.losses[step]
    for step in (3, 4):
        assert resumed.losses[step] == straight.losses[step]
    a, b = _unet_state(tmp_path / "a"), _unet_state(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_compiled_run_resumes_exactly_and_exports_plain_weights(world_root, tmp_path):
    straight = train(_slow(world_root, tmp_path / "a", "max_steps=4", "compile=true"))
    first = train(_slow(world_root, tmp_path / "b", "max_steps=2", "compile=true"))
    resumed = train(_slow(world_root, tmp_path / "b", "max_steps=4", "compile=true"))
    assert {**first.losses, **resumed.losses} == straight.losses
    a, b = _unet_state(tmp_path / "a"), _unet_state(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)  # keys of the plain UNet: no torch.compile prefix in the export
    with pytest.raises(UserInputError, match="compile is for slow learning"):
        load_config(LoopTrainConfig, overrides=_overrides(world_root, tmp_path / "loop", "compile=true"))


def test_pruning_keeps_the_newest_and_only_after_a_successful_save(world_root, tmp_path):
    out = tmp_path / "run"
    train(_slow(world_root, out, "max_steps=4", "checkpointing_steps=1", "checkpoints_total_limit=2"))
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-3", "checkpoint-4"]

    class Exploding(torch.nn.Module):
        def save_pretrained(self, *args, **kwargs):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(out, 5, Exploding(), torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1), {}, total_limit=2)
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-3", "checkpoint-4"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_a_run_that_would_mix_its_checkpoints_with_another_runs_newer_ones_is_refused(world_root, tmp_path):
    out = tmp_path / "run"
    train(_slow(world_root, out, "max_steps=3", "checkpointing_steps=1", "checkpoints_total_limit=0"))
    for resume, how in (("resume=", r"starts fresh \(resume=''\)"), (f"resume={out / 'checkpoint-1'}", "resumes from step 1")):
        with pytest.raises(UserInputError, match=rf"^output_dir {out} holds checkpoints of another run up to checkpoint-3, "
                                                 rf"and this run {how}: continue that run \(resume=latest\)"):
            SlowTrainer(_slow(world_root, out, "max_steps=5", resume))
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    from slowfast_vgen.checkpointing import resolve_resume

    assert resolve_resume(out, "latest") == out / "checkpoint-3"  # the newest, not the first listed
    assert SlowTrainer(_slow(world_root, out, "max_steps=5")).resumed_from == out / "checkpoint-3"
    assert _slow(world_root, tmp_path / "x", "resume=").resume is None  # `resume=` as a shell passes it: a fresh start
    assert SlowTrainer(_slow(world_root, tmp_path / "fresh", "resume=")).resumed_from is None
    # pruning never removes the checkpoint just written, whatever else the folder holds
    save_checkpoint(out, 2, load_model(out / "model").unet, torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1), {},
                    total_limit=1)
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-3"]


def test_turning_on_ema_when_resuming_starts_it_from_the_checkpoint_weights(world_root, tmp_path, capsys):
    out = tmp_path / "run"
    train(_slow(world_root, out, "max_steps=2"))
    trainer = SlowTrainer(_slow(world_root, out, "max_steps=3", "use_ema=true"))
    assert "holds no EMA (saved with use_ema off): the EMA starts from its weights" in capsys.readouterr().out
    trainable = [p for p in trainer.bundle.unet.parameters() if p.requires_grad]
    assert all(torch.equal(a, b) for a, b in zip(trainer.ema.shadow_params, trainable, strict=True))


def test_fp16_on_the_cpu_is_refused_instead_of_training_in_float32(world_root, tmp_path):
    with pytest.raises(UserInputError, match="^mixed_precision=fp16 needs a CUDA device; on the CPU use bf16 or no$"):
        SlowTrainer(_slow(world_root, tmp_path / "run", "device=cpu", "mixed_precision=fp16"))


def test_the_fp16_loss_scale_is_saved_and_restored_so_a_resume_skips_the_same_steps(world_root, tmp_path, capsys):
    # fp16 needs CUDA, so a CPU GradScaler stands in for the one accelerate makes there; the save and the
    # resume go through the trainer's own checkpoint code
    out = tmp_path / "run"
    trainer = SlowTrainer(_slow(world_root, out, "max_steps=1"))
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    trainer.accelerator.scaler.load_state_dict({"scale": 256.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                                "growth_interval": 2000, "_growth_tracker": 7})
    trainer.optimizer.step()  # no gradients: the weights stay; the schedule moves to step 1 with it
    trainer.lr_scheduler.step()
    trainer.step = 1
    trainer.save_checkpoint()
    resumed = SlowTrainer(_slow(world_root, out, "max_steps=2"))  # resume=latest; float32 run: no scaler to restore
    resumed.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    resumed.load_checkpoint(out / "checkpoint-1")
    assert resumed.accelerator.scaler.get_scale() == 256.0 and resumed.accelerator.scaler._get_growth_tracker() == 7
    state_file = out / "checkpoint-1" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["grad_scaler"]["scale"] = 0.0
    state_file.write_text(json.dumps(state))
    with pytest.raises(UserInputError, match=r"^checkpoint .*checkpoint-1 is corrupt: trainer_state.json: grad_scaler "
                                             r"scale 0.0 is not a positive finite number$"):
        resumed.load_checkpoint(out / "checkpoint-1")
    del state["grad_scaler"]  # a checkpoint saved before the scale was recorded: it restarts, and says so
    state_file.write_text(json.dumps(state))
    resumed.load_checkpoint(out / "checkpoint-1")
    assert "holds no fp16 loss scale (saved before it was recorded): it restarts" in capsys.readouterr().out


def test_device_cuda_without_cuda_is_a_one_line_error(world_root, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserInputError, match="^device=cuda but no CUDA device is available here"):
        SlowTrainer(_slow(world_root, tmp_path / "run", "device=cuda"))


@pytest.mark.parametrize("name", ["unet/diffusion_pytorch_model.safetensors", "optimizer.safetensors"])
def test_a_bit_flipped_in_a_checkpoint_is_named_before_the_run_resumes(name, world_root, tmp_path):
    """A flipped bit in a weight or an optimizer moment still parsed, and the run resumed from it silently:
    trainer_state.json records every file's SHA-256."""
    out = tmp_path / "run"
    train(_slow(world_root, out, "max_steps=2"))
    file = out / "checkpoint-2" / name
    data = bytearray(file.read_bytes())
    data[-3] ^= 0x10  # inside the last tensor's values: still valid safetensors
    file.write_bytes(bytes(data))
    with pytest.raises(UserInputError) as caught:
        SlowTrainer(_slow(world_root, out, "max_steps=3"))
    assert str(caught.value) == (f"checkpoint {out / 'checkpoint-2'} is corrupt: {name}: its content is not what "
                                 "trainer_state.json records (damaged or replaced)")


def test_corrupt_or_missing_checkpoint_is_a_clear_error(world_root, tmp_path):
    out = tmp_path / "run"
    train(_slow(world_root, out, "max_steps=2"))
    weights = out / "checkpoint-2" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(UserInputError, match="checkpoint .*checkpoint-2 is corrupt"):
        SlowTrainer(_slow(world_root, out, "max_steps=3"))
    (out / "checkpoint-2" / "trainer_state.json").unlink()
    with pytest.raises(UserInputError, match="incomplete or corrupt: trainer_state.json is missing"):
        SlowTrainer(_slow(world_root, out, "max_steps=3"))
    with pytest.raises(UserInputError, match="checkpoint to resume from not found"):
        SlowTrainer(_slow(world_root, out, f"resume={tmp_path / 'nope'}"))


def test_checkpoint_of_another_model_or_with_a_damaged_state_is_a_one_line_error(world_root, tmp_path):
    out = tmp_path / "run"
    train(_slow(world_root, out, "max_steps=1"))
    wider = ["max_steps=2", "model.block_out_channels=[32,96]", f"resume={out / 'checkpoint-1'}"]
    with pytest.raises(UserInputError, match=r"checkpoint .*checkpoint-1 continues a run made with other settings: "
                                             r"model\.block_out_channels \[32, 96\] \(saved: \[32, 64\]\)"):
        SlowTrainer(_slow(world_root, tmp_path / "wider", *wider))
    state = out / "checkpoint-1" / "trainer_state.json"
    saved = json.loads(state.read_text())
    state.write_text(json.dumps({key: value for key, value in saved.items() if key != "config"}))  # an older checkpoint
    with pytest.raises(UserInputError, match=r"checkpoint .*checkpoint-1 does not fit this model: weight down_blocks\.1\."
                                             r"\S+ has shape \(64,\) in the checkpoint, \(96,\) in the model$"):
        SlowTrainer(_slow(world_root, tmp_path / "wider", *wider))
    schedule = saved["lr_scheduler"]
    for damaged, message in (("[]", "trainer_state.json holds no step"), ('{"step": 1}', "no usable lr_scheduler"),
                             (json.dumps({**saved, "lr_scheduler": {**schedule, "last_epoch": "x"}}),
                              "no usable lr_scheduler .*last_epoch 'x' is not the checkpoint's step 1"),
                             (json.dumps({**saved, "lr_scheduler": {**schedule, "base_lrs": "abc"}}),
                              "no usable lr_scheduler .*base_lrs 'abc' is not 1 finite learning rate"),
                             (b"\xff\xfe", "is corrupt: trainer_state.json")):
        state.write_bytes(damaged if isinstance(damaged, bytes) else damaged.encode())
        with pytest.raises(UserInputError, match=message):
            SlowTrainer(_slow(world_root, out, "max_steps=2"))


def _nan_on_call(monkeypatch, which: int) -> dict:
    """Make the ``which``-th call of the training loss NaN; the call count is in the returned dict."""
    original, calls = SlowTrainer.loss, {"n": 0}

    def sometimes_nan(self, batch, generator):
        calls["n"] += 1
        loss = original(self, batch, generator)
        return loss * float("nan") if calls["n"] == which else loss

    monkeypatch.setattr(SlowTrainer, "loss", sometimes_nan)
    return calls


def test_nonfinite_loss_is_skipped_and_logged_then_aborts(world_root, tmp_path, monkeypatch):
    _nan_on_call(monkeypatch, 2)
    out = tmp_path / "run"
    result = train(_slow(world_root, out, "max_steps=3"))
    assert result.skipped_steps == [2] and sorted(result.losses) == [1, 3]
    assert any(json.loads(line).get("event") == "nonfinite_loss" for line in (out / "train_log.jsonl").read_text().splitlines())
    assert all(torch.isfinite(v).all() for v in _unet_state(out).values())

    monkeypatch.setattr(SlowTrainer, "loss", lambda self, batch, generator: torch.tensor(float("inf"), requires_grad=True))
    with pytest.raises(TrainingDiverged, match="2 non-finite losses in a row"):
        train(_slow(world_root, tmp_path / "diverge", "max_steps=5", "max_nonfinite_steps=2"))


def test_a_nonfinite_micro_batch_skips_its_whole_step(world_root, tmp_path, monkeypatch):
    """With gradient accumulation, a step whose first micro-batch was NaN was logged as skipped but
    updated the weights from its other micro-batch (accelerate's zero_grad does nothing mid-accumulation)."""
    calls = _nan_on_call(monkeypatch, 1)
    trainer = SlowTrainer(_slow(world_root, tmp_path / "run", "max_steps=1", "gradient_accumulation_steps=2",
                                "lr_warmup_steps=0"))
    before = {k: v.clone() for k, v in trainer.bundle.unet.state_dict().items()}
    result = trainer.train()
    assert calls["n"] == 2 and result.skipped_steps == [1] and result.losses == {}
    after = trainer.bundle.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_logged_learning_rate_is_the_one_the_step_used(world_root, tmp_path):
    out = tmp_path / "run"
    train(_slow(world_root, out, "max_steps=3", "lr_warmup_steps=2", "learning_rate=2e-4"))
    logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [(line["step"], line["lr"]) for line in logged if "lr" in line] == [(1, 0.0), (2, 1e-4), (3, 2e-4)]


def test_resuming_with_settings_that_make_another_run_is_refused(world_root, tmp_path):
    """The optimizer and schedule come back from the checkpoint: a new learning rate was silently
    ignored (while train_config.yaml recorded it), a new seed or batch silently changed the data order."""
    out = tmp_path / "run"
    train(_slow(world_root, out, "max_steps=2"))
    for changed, listed in ((["learning_rate=1e-6"], "learning_rate 1e-06 (saved: 0.0002)"),
                            (["seed=5", "batch_size=1"], "batch_size 1 (saved: 2), seed 5 (saved: 0)"),
                            (["lr_scheduler=cosine"], "lr_scheduler cosine (saved: constant_with_warmup), max_steps 4 "
                                                      "(saved: 2; it shapes the cosine schedule)")):
        with pytest.raises(UserInputError) as caught:
            SlowTrainer(_slow(world_root, out, "max_steps=4", *changed))
        assert str(caught.value) == (f"checkpoint {out / 'checkpoint-2'} continues a run made with other settings: "
                                     f"{listed}; resume with its settings, or give a new output_dir")
    # the budget, logging and paths may change: a longer constant-schedule run goes on from step 2
    resumed = SlowTrainer(_slow(world_root, out, "max_steps=4", "log_every=2", "checkpointing_steps=1", "max_minutes=5"))
    assert resumed.step == 2


def test_a_run_stopped_by_its_time_budget_does_not_say_done(world_root, tmp_path, capsys):
    from slowfast_vgen.train_cli import slow_main

    assert slow_main(_overrides(world_root, tmp_path / "run", "max_steps=3", "max_minutes=1e-6")) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("stopped by max_minutes at step 1 of 3, last loss ") and "(re-run to continue)" in last, last


def test_a_runs_saved_config_given_back_to_the_command_continues_the_run(world_root, tmp_path):
    """train_config.yaml recorded live.size=32 and live.target_frames=None next to data.height=16 and
    data.target_frames=4, so `train_slow.py --config RUN/train_config.yaml` refused the run's own settings
    ("live.size=32 differs from data.height=16"). It records what training used; the run resumes from it."""
    from slowfast_vgen.train_cli import slow_main

    out = tmp_path / "run"
    assert slow_main(_overrides(world_root, out, "max_steps=1", "checkpointing_steps=1")) == 0
    saved = out / "train_config.yaml"
    live = OmegaConf.load(saved).live
    assert (live.size, live.target_frames, live.context_frames_max) == (16, 4, 2)
    assert slow_main(["--config", str(saved), "max_steps=2"]) == 0
    assert json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["step"] == 2


def test_bad_config_key_exits_2(tmp_path):
    from slowfast_vgen.train_cli import slow_main

    assert slow_main([f"output_dir={tmp_path}", "data.root=x", "learning_rat=1"]) == 2
    assert slow_main([f"output_dir={tmp_path}"]) == 2  # data.root is required


def test_an_output_dir_that_cannot_be_written_is_refused_before_training(world_root, tmp_path):
    """A read-only folder or a name too long was an OSError traceback after the model was built."""
    out = tmp_path / ("r" * 250)
    with pytest.raises(UserInputError, match=f"^output_dir: cannot write {out}: File name too long \\(in {tmp_path}\\)$"):
        SlowTrainer(_slow(world_root, out))


def test_other_processes_of_a_launch_leave_config_errors_to_the_main_one(tmp_path, capsys, monkeypatch):
    """Every process of `torchrun --nproc_per_node 2` printed the same `error:` line."""
    from slowfast_vgen.train_cli import slow_main

    monkeypatch.setenv("RANK", "1")
    assert slow_main([f"output_dir={tmp_path}", "data.root=x", "learning_rat=1"]) == 2
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    assert slow_main([f"output_dir={tmp_path}", "data.root=x", "learning_rat=1"]) == 2
    assert capsys.readouterr().err.startswith("error: bad config: Key 'learning_rat' not in 'TrainConfig'")


def test_two_processes_train_once_and_refuse_a_resume_by_one(world_root, tmp_path):
    """Data parallel on the CPU (gloo): one log, one `done` line, the same weights on both processes; a
    checkpoint of 2 processes resumed by 1 was accepted and retrained part of the data order. A validation
    split that is missing stopped the main process with one line while the other died in the first
    all-reduce with a gloo traceback."""
    out = tmp_path / "run"
    args = _overrides(world_root, out, "max_steps=2", "checkpointing_steps=2")
    launch = f"{sys.executable} -m torch.distributed.run --standalone --nproc_per_node 2 train/train_slow.py"
    output, _ = _run_script(launch, args).communicate(timeout=300)
    checksums = re.findall(r"^rank checksum (\S+)$", output, re.M)
    assert len(checksums) == 2 and checksums[0] == checksums[1], output
    assert len(re.findall(r"^done: 2 steps", output, re.M)) == 1, output
    assert [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()] == [1, 2]
    assert json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["num_processes"] == 2
    single = _run_script(f"{sys.executable} train/train_slow.py", [*args, "max_steps=3"])
    output, _ = single.communicate(timeout=300)
    assert single.returncode == 2 and output.strip().splitlines() == [
        f"error: checkpoint {out}/checkpoint-2 was saved by a run of 2 process(es), this run has 1: resume with 2 "
        "(the global batch and the data order depend on it), or give a new output_dir"], output
    output, _ = _run_script(launch, [*_overrides(world_root, tmp_path / "bad", "max_steps=2", "validate_every=1",
                                                 "validation_split=test")]).communicate(timeout=300)
    errors = sorted(line for line in output.splitlines() if "error" in line.lower() or "gloo" in line.lower())
    message = f"no segments with split 'test' in {world_root}"
    assert [line.split(message)[0] for line in errors if message in line] == ["error: ", "error: process 1: "], output
    assert not [line for line in output.splitlines() if "[rank1]" in line or "gloo" in line.lower()], output


def _run_script(script: str, args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([*script.split(), *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def test_sigterm_saves_a_checkpoint_and_exits_143(world_root, tmp_path):
    out = tmp_path / "run"
    # its own process group, signalled as a whole (as batch schedulers do): DataLoader workers included
    process = _run_script(f"{sys.executable} train/train_slow.py",
                          _overrides(world_root, out, "max_steps=100000", "num_workers=1"), start_new_session=True)
    log = out / "train_log.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (log.is_file() and len(log.read_text().splitlines()) >= 2):
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGTERM)
    output, _ = process.communicate(timeout=240)
    assert process.returncode == 143, output
    checkpoints = list_checkpoints(out)
    assert len(checkpoints) == 1
    step = json.loads((checkpoints[0] / "trainer_state.json").read_text())["step"]
    assert step >= 2 and checkpoints[0].name == f"checkpoint-{step}"
    resumed = train(_slow(world_root, out, f"max_steps={step + 1}"))
    assert sorted(resumed.losses) == [step + 1] and (out / "model").is_dir()


def test_unreadable_videos_in_a_dataloader_worker_end_with_one_line_and_exit_2(world_root, tmp_path):
    """The worker's error once came back wrapped in its traceback, and the process then hung at exit
    on the worker it had not shut down (the workers ignore SIGTERM)."""
    import shutil

    root = tmp_path / "world"
    shutil.copytree(world_root, root)
    videos = sorted((root / "videos").glob("*.mp4"))
    for video in videos[1:]:
        video.write_bytes(os.urandom(3000))
    process = _run_script(f"{sys.executable} train/train_slow.py",
                          _overrides(root, tmp_path / "run", "max_steps=50", "num_workers=1"))
    output, _ = process.communicate(timeout=240)
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert process.returncode == 2, output
    assert len(errors) == 1 and "Traceback" not in output, output
    assert "unreadable, more than max_bad_fraction=0.1" in errors[0] and "run data_tools/validate.py" in errors[0]


def test_two_cpu_processes_stay_in_sync_and_only_rank_0_writes(world_root, tmp_path):
    out = tmp_path / "ddp"
    process = _run_script(f"{sys.executable} -m torch.distributed.run --standalone --nproc_per_node 2 train/train_slow.py",
                          _overrides(world_root, out, "max_steps=2", "checkpointing_steps=1", "batch_size=1"))
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    checksums = [line.split()[-1] for line in output.splitlines() if line.startswith("rank checksum")]
    assert len(checksums) == 2 and checksums[0] == checksums[1], output
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-1", "checkpoint-2"]
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 2  # one writer


def test_slow_fast_loop_updates_phi_with_each_theta_frozen(world_root, tmp_path):
    config = load_config(LoopTrainConfig, overrides=_overrides(
        world_root, tmp_path / "loop", "batch_size=1", "max_steps=3", "fast.rank=4", "fast.learning_rate=1e-2",
        "loop.episodes_per_iteration=1", "loop.chunks_per_episode=4"))
    seen = []

    class Recording(SlowFastLoopTrainer):
        def loss(self, record, generator):
            if seen:  # the previous record's Theta_i was not changed by the outer (Phi) update
                previous = seen[-1]["theta"]
                assert all(torch.equal(previous[k], v) for k, v in self.fast_learner.state_dict().items())
            value = super().loss(record, generator)
            assert all(torch.equal(record["theta"][k], v) for k, v in self.fast_learner.state_dict().items())
            assert not any(p.requires_grad for p in self.fast_learner.parameters.values())
            seen.append(record)
            return value

    trainer = Recording(config)
    phi_before = {k: v.clone() for k, v in trainer.accelerator.unwrap_model(trainer.unet).state_dict().items() if "lora_" not in k}
    result = trainer.train()
    assert result.step == 3 and len(seen) == 3
    thetas = [record["theta"] for record in seen]
    fresh = {f"base_model.model.{k.replace('.temp_lora', '')}": v for k, v in trainer.fast_learner.initial_state.items()}
    assert thetas[0].keys() == fresh.keys()
    assert all(torch.equal(thetas[0][k], fresh[k]) for k in fresh)  # Theta_0 of an episode is a fresh memory
    assert any(not torch.equal(thetas[0][k], thetas[1][k]) for k in thetas[0])  # the fast learner moved between chunks
    phi_after = {k: v for k, v in trainer.accelerator.unwrap_model(trainer.unet).state_dict().items() if "lora_" not in k}
    assert any(not torch.equal(phi_before[k], phi_after[k]) for k in phi_before)
    exported = load_model(tmp_path / "loop" / "model")
    assert not any("lora_" in k or "base_layer" in k for k in exported.unet.state_dict())
    fast = exported.metadata["generation"]["fast"]  # generation with the exported model uses the memory Phi learned with
    assert (fast["rank"], fast["learning_rate"], fast["mode"]) == (4, 1e-2, "paper")


def test_loop_resumes_exactly_from_a_checkpoint_inside_an_iteration(world_root, tmp_path):
    """A resume inside an iteration once re-collected its Temp-LoRAs with the updated Phi; the checkpoint
    now carries the iteration's records (here 2 episodes x 2 records, one episode without memory)."""
    def config(out, *extra):
        return load_config(LoopTrainConfig, overrides=_overrides(
            world_root, out, "batch_size=1", "fast.rank=4", "fast.learning_rate=1e-2", "loop.episodes_per_iteration=2",
            "loop.chunks_per_episode=3", "loop.memoryless_share=0.5", "seed=1", "lr_warmup_steps=0", *extra))

    straight = train(config(tmp_path / "a", "max_steps=3"))
    first = train(config(tmp_path / "b", "max_steps=1"))
    saved = tmp_path / "b" / "checkpoint-1" / "loop_records.safetensors"
    from safetensors import safe_open

    with safe_open(str(saved), framework="pt") as handle:
        kinds = [entry["memory"] for entry in json.loads(handle.metadata()["records"])[0]]
    assert sorted(kinds) == [False, False, True, True]  # both kinds among the records resumed from
    # without them the records were collected again with the updated Phi, and the resume was not exact
    shutil.copytree(tmp_path / "b", tmp_path / "c")
    (tmp_path / "c" / "checkpoint-1" / "loop_records.safetensors").unlink()
    with pytest.raises(UserInputError, match=r"^checkpoint .*/c/checkpoint-1 is incomplete or corrupt: "
                                             r"loop_records.safetensors is missing \(it was saved inside iteration 0"):
        train(config(tmp_path / "c", "max_steps=3", "resume=latest"))
    resumed = train(config(tmp_path / "b", "max_steps=3", "resume=latest"))
    assert sorted(resumed.losses) == [2, 3]
    assert {**first.losses, **resumed.losses} == straight.losses
    a, b = _unet_state(tmp_path / "a"), _unet_state(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_loop_memoryless_share_trains_phi_with_the_lora_switched_off(world_root, tmp_path):
    from slowfast_vgen.data.episodes import EpisodeDataset

    def loop(share: str, out: str) -> SlowFastLoopTrainer:
        return SlowFastLoopTrainer(load_config(LoopTrainConfig, overrides=_overrides(
            world_root, tmp_path / out, "batch_size=1", "max_steps=2", "fast.rank=4", "fast.learning_rate=1e-2",
            "loop.episodes_per_iteration=2", "loop.chunks_per_episode=3", f"loop.memoryless_share={share}")))

    plain = loop("0.0", "plain")
    episodes = EpisodeDataset(plain.config.data, 3)
    assert all(record["theta"] is not None for record in plain.collect(episodes, 0))
    trainer = loop("1.0", "memoryless")
    records = trainer.collect(episodes, 0)
    assert len(records) == 4 and all(record["theta"] is None for record in records)
    fast = trainer.fast_learner
    assert all(torch.equal(p, fast.initial_state[k]) for k, p in fast.parameters.items())  # no inner loop ran
    with torch.no_grad():  # a memory that would change the output if it were applied
        for parameter in fast.parameters.values():
            parameter.normal_(std=0.5)
    memoryless = trainer.loss(records[0], torch.Generator().manual_seed(0))
    assert trainer.loss(dict(records[0], theta=plain.fast_learner.state_dict()),
                        torch.Generator().manual_seed(0)).item() != memoryless.item()
    fast.reset()  # B = 0: the LoRA adds exactly nothing
    with fast.activated():
        without = trainer.masked_loss(torch.cat([records[0]["context"], records[0]["target"]], dim=2),
                                      context_mask(1, records[0]["context"].shape[2], records[0]["target"].shape[2]),
                                      [records[0]["action"]], torch.Generator().manual_seed(0))
    assert memoryless.item() == without.item()
    assert not any(p.requires_grad for p in fast.parameters.values())  # Theta stays frozen for the outer loop
    with pytest.raises(UserInputError, match=r"loop.memoryless_share must be in \[0, 1\], got 1.5"):
        load_config(LoopTrainConfig, overrides=_overrides(world_root, tmp_path / "bad", "loop.memoryless_share=1.5"))


def test_loop_anchor_pulls_the_memoryless_prediction_toward_the_frozen_starting_model(world_root, tmp_path):
    from slowfast_vgen.data.episodes import EpisodeDataset
    from slowfast_vgen.model import ModelBundle

    start = tmp_path / "start"
    ModelBundle.from_config(_slow(world_root, tmp_path / "unused").model).save_pretrained(start)

    def loop(weight: str, out: str, *extra: str) -> SlowFastLoopTrainer:
        return SlowFastLoopTrainer(load_config(LoopTrainConfig, overrides=_overrides(
            world_root, tmp_path / out, "batch_size=1", "max_steps=2", "fast.rank=4", f"init_from={start}",
            "loop.episodes_per_iteration=1", "loop.chunks_per_episode=3", "loop.memoryless_share=1.0",
            f"loop.anchor_weight={weight}", *extra)))

    plain, anchored, doubled = loop("0", "plain"), loop("1.0", "anchored"), loop("2.0", "doubled")
    record = plain.collect(EpisodeDataset(plain.config.data, 3), 0)[0]
    assert record["theta"] is None

    def losses() -> list[float]:
        return [trainer.loss(record, torch.Generator().manual_seed(0)).item() for trainer in (plain, anchored, doubled)]

    without, with_anchor, with_double = losses()
    assert with_anchor == pytest.approx(without, abs=1e-7) and with_double == pytest.approx(without, abs=1e-7)
    with torch.no_grad():  # Phi drifts away from the starting model, identically in all three trainers
        for trainer in (plain, anchored, doubled):
            torch.manual_seed(3)
            for name, parameter in trainer.bundle.unet.named_parameters():
                if "lora_" not in name:
                    parameter.add_(torch.randn_like(parameter) * 0.05)
    without, with_anchor, with_double = losses()
    distillation = with_anchor - without
    assert distillation > 1e-4  # the anchor term sees the drift ...
    assert with_double - without == pytest.approx(2 * distillation, rel=1e-4)  # ... weighted linearly
    # the anchor is the starting model, frozen: a training step moves Phi, not the anchor
    reference = {k: v.clone() for k, v in anchored.anchor.unet.state_dict().items()}
    assert not any(p.requires_grad for p in anchored.anchor.unet.parameters())
    saved = load_model(start).unet.state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in reference.items())
    anchored.train()
    assert all(torch.equal(v, anchored.anchor.unet.state_dict()[k]) for k, v in reference.items())
    with pytest.raises(UserInputError, match=r"loop.anchor_weight must be a finite number >= 0, got -1.0"):
        loop("-1", "bad")
    with pytest.raises(UserInputError, match="loop.anchor_weight acts on the memoryless records: set loop.memoryless_share > 0"):
        loop("1.0", "bad", "loop.memoryless_share=0")
    with pytest.raises(UserInputError, match="loop.anchor_weight pulls toward the starting model: set init_from"):
        load_config(LoopTrainConfig, overrides=_overrides(world_root, tmp_path / "bad", "loop.memoryless_share=0.5",
                                                          "loop.anchor_weight=1"))


@pytest.mark.parametrize("value", ["0", "0.5", "2"])
def test_the_loop_refuses_a_memory_read_scale_it_would_ignore(tmp_path, value):
    """The loop trains Phi through Theta_i as learned; ``fast.read_scale`` only changes sampling."""
    with pytest.raises(UserInputError, match=f"fast.read_scale is how generation samples with a memory.*got {float(value)}"):
        load_config(LoopTrainConfig, overrides=_overrides(tmp_path, tmp_path / "out", f"fast.read_scale={value}"))
    config = load_config(LoopTrainConfig, overrides=_overrides(tmp_path, tmp_path / "out", "batch_size=1", "fast.read_scale=1"))
    assert config.fast.read_scale == 1


def test_training_help_lists_every_config_key_with_its_help(capsys):
    from dataclasses import fields

    from slowfast_vgen.train_cli import loop_main

    with pytest.raises(SystemExit) as exit_info:
        loop_main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "  loop.memoryless_share (default: 0.0): share of episodes whose records train Phi without a memory" in text
    assert "  data.root (required): " in text and "  fast.rank (default: " in text
    for field in fields(LoopTrainConfig):  # every top-level key is listed (nested ones as dotted keys)
        assert f"  {field.name} (" in text or f"  {field.name}." in text, field.name


def test_loop_script_runs_end_to_end(world_root, tmp_path):
    out = tmp_path / "loop-script"
    process = _run_script(f"{sys.executable} train/train_loop.py", _overrides(
        world_root, out, "batch_size=1", "max_steps=3", "fast.rank=4", "loop.episodes_per_iteration=1",
        "loop.chunks_per_episode=3", "checkpointing_steps=2"))
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-3"]
    assert (out / "model" / "unet").is_dir()


def test_pooled_text_model_trains_on_high_noise_steps_only_when_asked(world_root, tmp_path):
    from slowfast_vgen.model import ModelBundle

    out = tmp_path / "pooled"
    config = _slow(world_root, out, "max_steps=2", "model.pooled_text_conditioning=true", "min_timestep=900")
    result = train(config)
    assert result.step == 2
    trained = load_model(out / "model").unet
    assert load_model(out / "model").trained_timesteps == (900, 1000)  # no max_timestep: up to the last step
    fresh = ModelBundle.from_config(config.model).unet
    assert trained.config.time_cond_proj_dim == trained.config.cross_attention_dim
    # the action's sentence embedding received gradient through the timestep path
    assert not torch.equal(trained.time_embedding.cond_proj.weight, fresh.time_embedding.cond_proj.weight)
    with pytest.raises(UserInputError, match=r"min_timestep must be in \[0, 1000\)"):
        SlowTrainer(_slow(world_root, tmp_path / "bad", "min_timestep=1000"))


def test_max_timestep_keeps_training_on_the_low_noise_band(world_root, tmp_path, drawn_timesteps):
    assert train(_slow(world_root, tmp_path / "low", "max_steps=3", "min_timestep=200", "max_timestep=300")).step == 3
    values = torch.cat(drawn_timesteps)
    assert len(drawn_timesteps) == 3 and values.min() >= 200 and values.max() < 300
    assert load_model(tmp_path / "low" / "model").trained_timesteps == (200, 300)  # the band, in slowfast_vgen.json
    for bad in ("max_timestep=200", "max_timestep=1001"):  # not above min_timestep, past the scheduler's steps
        with pytest.raises(UserInputError, match=r"^max_timestep must be in \(min_timestep=200, 1000\] for this model"):
            SlowTrainer(_slow(world_root, tmp_path / "bad", "min_timestep=200", bad))


def test_validation_logs_action_use_without_changing_the_training_losses(world_root, tmp_path):
    plain = train(_slow(world_root, tmp_path / "plain", "max_steps=2"))
    validated = train(_slow(world_root, tmp_path / "val", "max_steps=2", "validate_every=1", "validation_split=train",
                            "validation_chunks=4"))
    assert validated.losses == plain.losses  # validation draws no training randomness
    records = [json.loads(line) for line in (tmp_path / "val" / "train_log.jsonl").read_text().splitlines()]
    checks = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in checks] == [1, 2]
    for r in checks:
        names = ("val_loss", "val_loss_shuffled_action", "val_loss_no_action", "val_loss_whole_window")
        assert set(names) <= set(r) and all(0 < r[k] < 10 for k in names)
        assert r["val_loss_whole_window"] != r["val_loss_no_action"]  # Eq. 3 also noises the context frames
        assert r["val_loss"] != r["val_loss_no_action"]  # the text reaches the UNet
    with pytest.raises(UserInputError, match="no segments with split 'val'"):
        SlowTrainer(_slow(world_root, tmp_path / "noval", "max_steps=1", "validate_every=1"))
    assert not (tmp_path / "noval").exists()
    with pytest.raises(UserInputError, match="validate_every is for slow learning"):
        load_config(LoopTrainConfig, overrides=_overrides(world_root, tmp_path / "loop", "validate_every=5"))


def test_whole_window_share_trains_eq3_samples_without_text(world_root, tmp_path, monkeypatch):
    plain = train(_slow(world_root, tmp_path / "plain", "max_steps=2"))
    assert train(_slow(world_root, tmp_path / "zero", "max_steps=2", "whole_window_share=0.0")).losses == plain.losses
    trainer = SlowTrainer(_slow(world_root, tmp_path / "mixed", "max_steps=1", "whole_window_share=0.99"))
    seen = {}

    def spy(unet, latents, mask, conditioning, noise, timesteps, reference=None, weight=None):
        assert reference is None and weight is None  # slow learning has no anchor; motion weighting is off
        seen.update(mask=mask.clone(), conditioning=conditioning.clone())
        return conditioning.sum() * 0 + 1.0

    monkeypatch.setattr(trainer, "loss_at", spy)
    latents = torch.randn(64, 4, 6, 2, 2)
    trainer.masked_loss(latents, context_mask(64, 2, 4), ["move left"] * 64, torch.Generator().manual_seed(0))
    whole = ~seen["mask"].any(dim=1)
    assert int(whole.sum()) >= 60  # ~99 % of the samples: no context frame at all
    empty, left = trainer.encode_text(["", "move left"])
    assert not torch.equal(empty, left)
    for row in torch.nonzero(whole).flatten().tolist():
        assert torch.equal(seen["conditioning"][row], empty)  # Eq. 3 has no action text
    with pytest.raises(UserInputError, match=r"whole_window_share must be in \[0, 1\)"):
        _slow(world_root, tmp_path / "bad", "whole_window_share=1.0")


@pytest.mark.parametrize("key, value, message", [
    ("learning_rate", "nan", "learning_rate must be a finite number > 0, got nan"),
    ("learning_rate", "inf", "learning_rate must be a finite number > 0, got inf"),
    ("learning_rate", "0", "learning_rate must be a finite number > 0, got 0.0"),
    ("weight_decay", "nan", "weight_decay must be a finite number >= 0, got nan"),
    ("max_grad_norm", "-1", "max_grad_norm must be a finite number >= 0, got -1.0"),
    ("action_encoder_lr", "inf", "action_encoder_lr must be a finite number >= 0, got inf"),
    ("action_loss_weight", "nan", "action_loss_weight must be a finite number >= 0, got nan"),
    ("ema_decay", "nan", "ema_decay must be in \\[0, 1\\], got nan"),
    ("loop.anchor_weight", "nan", "loop.anchor_weight must be a finite number >= 0, got nan"),
    ("checkpoints_total_limit", "-1", r"checkpoints_total_limit \(0 = keep all\) and num_workers must be >= 0, got -1, 0"),
    ("num_workers", "-1", r"checkpoints_total_limit \(0 = keep all\) and num_workers must be >= 0, got 3, -1"),
    ("device", "cuda:7", "device must be auto, cpu or cuda, got 'cuda:7'"),
    ("lr_scheduler", "bogus", "lr_scheduler must be one of linear, cosine, .*, got 'bogus'"),
    ("report_to", "bogus", "report_to must be one of none, .*tensorboard.*, got 'bogus'"),
    ("data_source", "live", "the slow-fast loop trains on whole episodes of a dataset on disk \\(data.root\\), not "
                            "data_source=live"),
    ("fast.mode", "off", "the slow-fast loop trains Phi with each episode's Temp-LoRA: fast.mode must not be off"),
    ("lr_warmup_steps", "-5", "lr_warmup_steps must be >= 0, got -5"),  # was accepted: it shifted the schedules
    ("sample_every", "-1", "sample_every must be >= 0, got -1"),  # was accepted: step % -1 == 0, a sample every step
    # refused only after the model was built and the progress bar started
    ("batch_size", "2", r"the slow-fast loop trains one record \(one Theta_i\) per micro-batch: set batch_size=1 "
                        r"\(gradient_accumulation_steps for more records per step\)"),
])
def test_nonfinite_or_out_of_range_optimizer_settings_are_config_errors(tmp_path, key, value, message):
    """``learning_rate=nan`` crashed in torch's AdamW after the model was built; the others were accepted."""
    with pytest.raises(UserInputError, match=f"^bad config: {message}$"):
        load_config(LoopTrainConfig, overrides=_overrides(tmp_path, tmp_path / "out", "batch_size=1", f"{key}={value}"))


def test_the_loop_defaults_to_one_record_per_micro_batch_and_data_must_match_the_model_frame_size(world_root,
                                                                                                  tmp_path):
    """The README's loop command failed after the model was built (batch_size defaulted to 8); the slow trainer
    trained a 16x16 model on 32x32 frames (data.height's default) and exported it as 16x16."""
    config = load_config(LoopTrainConfig, overrides=[f"data.root={world_root}", f"output_dir={tmp_path / 'loop'}"])
    assert config.batch_size == 1
    with pytest.raises(UserInputError, match=r"^data.height/width 32x32 differ from the model's frame size 16x16: set "
                                             r"data.height=16 data.width=16, or model.height/width to the data's$"):
        SlowTrainer(load_config(TrainConfig, overrides=[*_overrides(world_root, tmp_path / "slow"), "data.height=32",
                                                        "data.width=32"]))
    assert not (tmp_path / "slow" / "model").exists()


def test_a_resume_refuses_an_init_from_that_now_holds_another_model(world_root, tmp_path, tiny_config):
    """A resume took whatever init_from held now (a model re-exported by another run, say): the exported model
    paired the trained UNet with the other model's parts, and the loop's anchor pulled toward the other model."""
    from dataclasses import replace

    from slowfast_vgen.model import ModelBundle

    start, out = tmp_path / "start", tmp_path / "run"
    ModelBundle.from_config(tiny_config).save_pretrained(start)
    train(_slow(world_root, out, f"init_from={start}", "max_steps=1", "checkpointing_steps=1"))
    ModelBundle.from_config(tiny_config).save_pretrained(start)  # the same model again: resumes
    assert train(_slow(world_root, out, f"init_from={start}", "max_steps=2", "resume=latest")).step == 2
    ModelBundle.from_config(replace(tiny_config, seed=7)).save_pretrained(start)
    with pytest.raises(UserInputError, match=f"^checkpoint {out}/checkpoint-2 continues a run that started from "
                                             f"another model than init_from={start} holds now"):
        train(_slow(world_root, out, f"init_from={start}", "max_steps=3", "resume=latest"))


def test_a_resume_refuses_another_number_of_processes(world_root, tmp_path):
    """A checkpoint of 2 processes resumed by 1 (or the reverse) was accepted: the global batch halved and
    the run retrained (or skipped) part of the epoch's data order, as each process takes every world-th batch."""
    out = tmp_path / "run"
    train(_slow(world_root, out, "max_steps=1", "checkpointing_steps=1"))
    state_file = out / "checkpoint-1" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    assert state["num_processes"] == 1 and state["config"]["live"]["target_frames"] is None
    # checkpoints saved before live.target_frames defaulted to None (= live.frames_per_action) recorded 8
    state["config"]["live"]["target_frames"] = state["config"]["live"]["frames_per_action"]
    state_file.write_text(json.dumps(state))
    assert train(_slow(world_root, out, "max_steps=2", "checkpointing_steps=1")).step == 2
    state_file = out / "checkpoint-2" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**state, "num_processes": 2}))  # as a torchrun --nproc_per_node 2 run saves it
    with pytest.raises(UserInputError, match=f"^checkpoint {out}/checkpoint-2 was saved by a run of 2 process\\(es\\), "
                                             "this run has 1: resume with 2"):
        train(_slow(world_root, out, "max_steps=3", "resume=latest"))


def test_sample_and_validation_settings_are_checked_before_training(world_root, tmp_path, monkeypatch):
    """A bad sample action stopped the run at its first sample, and the steps since the last checkpoint
    were lost; validation_chunks=1 blamed the split."""
    for extra, message in ((["sample_every=2", "sample_actions=[move right,'']"], "sample_actions: action 2 is empty"),
                           (["sample_every=2", "sample_actions=[]"], "sample_actions is empty"),
                           (["validate_every=2", "validation_chunks=1"], "validation_chunks must be >= 2, got 1")):
        with pytest.raises(UserInputError, match=f"^bad config: {re.escape(message)}"):
            _slow(world_root, tmp_path / "bad", *extra)

    def failing_sample(self):
        raise UserInputError("the sample failed")

    monkeypatch.setattr(SlowTrainer, "write_sample", failing_sample)
    out = tmp_path / "run"
    with pytest.raises(UserInputError, match="the sample failed"):
        train(_slow(world_root, out, "max_steps=3", "sample_every=2", "checkpointing_steps=2"))
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"]  # saved before the sample was written


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_an_output_dir_that_is_or_is_under_a_file_is_refused_before_the_model_is_built(tmp_path, monkeypatch, capsys,
                                                                                       where):
    """It crashed with FileExistsError / NotADirectoryError at the first save (slow trainer) or at once (IDM)."""
    from slowfast_vgen import training
    from slowfast_vgen.idm_training import idm_main

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before output_dir was checked")

    monkeypatch.setattr(training.ModelBundle, "from_config", no_model)
    monkeypatch.setattr(training, "load_model", no_model)
    (tmp_path / "afile").write_text("keep me")
    out = tmp_path / "afile" if where == "file" else tmp_path / "afile" / "run"
    expected = (f"output_dir: {out} is a file; give a directory" if where == "file" else
                f"output_dir: {tmp_path / 'afile'} is a file, so {out} cannot be a directory")
    with pytest.raises(UserInputError, match=f"^{re.escape(expected)}$"):
        SlowTrainer(_slow(tmp_path, out))
    with pytest.raises(UserInputError, match=f"^{re.escape(expected)}$"):
        SlowFastLoopTrainer(load_config(LoopTrainConfig, overrides=_overrides(tmp_path, out, "batch_size=1")))
    capsys.readouterr()
    assert idm_main([f"output_dir={out}", "max_steps=1"]) == 2
    assert capsys.readouterr().err == f"error: {expected}\n"
    assert (tmp_path / "afile").read_text() == "keep me"


def _dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_what_killed_writers_left_is_removed_and_a_deleted_folder_not_brought_back(tmp_path):
    """SIGKILLed saves left their temporaries (whole checkpoints, session copies, videos) for good, and a session
    copy moved aside by a save killed after its swap came back as the session after the user deleted it."""
    from slowfast_vgen.io_utils import atomic_output_dir, atomic_write_text, remove_stale_temporaries, restore_moved_aside

    swapped, dead, alive = _dead_pid(), _dead_pid(), os.getpid()
    session = tmp_path / "s"
    with atomic_output_dir(session, "session.json") as tmp:
        (tmp / "session.json").write_text("1")
    (tmp_path / f".s.old-{swapped}").mkdir()  # killed after its swap, before removing the old copy
    (tmp_path / f".s.old-{swapped}" / "session.json").write_text("0")
    shutil.rmtree(session)  # the user deletes the session
    assert not restore_moved_aside(session, "session.json") and not session.exists()
    for name in (f".s.{dead}-abc_123.tmp", f".s.{alive}-abc_124.tmp", f".v.mp4.{dead}-x9.tmp.mp4",
                 f".v.mp4.{alive}-x8.tmp.mp4", f".checkpoint-7.{dead}-q1.tmp", ".unrelated.tmp"):
        (tmp_path / name).mkdir() if "mp4" not in name else (tmp_path / name).write_text("")
    with atomic_output_dir(session, "session.json") as tmp:
        (tmp / "session.json").write_text("2")
    atomic_write_text(tmp_path / "v.mp4", "video")
    remove_stale_temporaries(tmp_path, "v.*")  # what `sfvgen generate --out v.mp4` does once before writing
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([".checkpoint-7." + f"{dead}-q1.tmp", f".s.{alive}-abc_124.tmp", ".unrelated.tmp",
                           f".v.mp4.{alive}-x8.tmp.mp4", "s", "v.mp4"])  # the running writer's stay
    assert (session / "session.json").read_text() == "2"
    remove_stale_temporaries(tmp_path, "checkpoint-*")  # what save_checkpoint does before each save
    assert not (tmp_path / f".checkpoint-7.{dead}-q1.tmp").exists()


def test_a_save_stopped_between_its_two_renames_puts_the_old_folder_back(tmp_path, monkeypatch):
    from slowfast_vgen.io_utils import atomic_output_dir

    session = tmp_path / "s"
    with atomic_output_dir(session, "session.json") as tmp:
        (tmp / "session.json").write_text("1")
    real, calls = os.replace, []

    def interrupted(source, target):
        calls.append(target)
        if len(calls) == 2:  # the new folder into place
            raise KeyboardInterrupt
        real(source, target)

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with atomic_output_dir(session, "session.json") as tmp:
            (tmp / "session.json").write_text("2")
    monkeypatch.setattr(os, "replace", real)
    assert (session / "session.json").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_check_output_directory_accepts_existing_and_new_directories(tmp_path):
    from slowfast_vgen.io_utils import check_output_directory

    assert check_output_directory(tmp_path, "output_dir") == tmp_path
    assert check_output_directory(str(tmp_path / "new" / "nested"), "output_dir") == tmp_path / "new" / "nested"
    assert not (tmp_path / "new").exists()  # it only checks
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(UserInputError, match="^output_dir: .*dangling is a file; give a directory$"):
        check_output_directory(tmp_path / "dangling", "output_dir")


@pytest.mark.parametrize("text", ["- a\n- b\n", "[]\n"])
def test_a_config_file_holding_a_list_is_a_one_line_error(tmp_path, capsys, text):
    """``OmegaConf.merge`` raised ``TypeError: Cannot merge incompatible container types`` in every config loader."""
    from slowfast_vgen.idm_training import IDMTrainConfig, idm_main
    from slowfast_vgen.session import GenerationConfig
    from slowfast_vgen.train_cli import slow_main

    path = tmp_path / "list.yaml"
    path.write_text(text)
    expected = f"bad config: {path} must hold a mapping of keys, got a list"
    for config_class in (TrainConfig, GenerationConfig, IDMTrainConfig):
        with pytest.raises(UserInputError, match=f"^{re.escape(expected)}$"):
            load_config(config_class, path, [f"output_dir={tmp_path / 'out'}"] if config_class is not GenerationConfig else [])
    capsys.readouterr()
    for main in (slow_main, idm_main):
        assert main(["--config", str(path), f"output_dir={tmp_path / 'out'}"]) == 2
        assert capsys.readouterr().err == f"error: {expected}\n"
    assert not (tmp_path / "out").exists()


def test_a_resume_drops_the_log_lines_written_after_its_checkpoint(tmp_path):
    """A run killed after its checkpoint had logged steps it then took again: train_log.jsonl held step 29
    twice (the IDM trainer checkpoints only every checkpoint_every steps, and SIGTERM saves none)."""
    from slowfast_vgen.io_utils import trim_log

    log = tmp_path / "train_log.jsonl"
    log.write_text('{"step": 1}\n{"step": 2, "val_loss": 0.5}\n{"note": "no step"}\n{"step": 3}\n{"step": 4, "lo')
    trim_log(log, 2)
    assert log.read_text() == '{"step": 1}\n{"step": 2, "val_loss": 0.5}\n{"note": "no step"}\n'
    before = log.stat().st_mtime_ns
    trim_log(log, 5)  # nothing past it: the file is left alone
    assert log.stat().st_mtime_ns == before
    trim_log(tmp_path / "none.jsonl", 0)  # no log yet


def test_a_run_killed_before_its_first_checkpoint_is_logged_once(world_root, tmp_path):
    """Re-running it starts afresh, and its steps were logged a second time after the first run's."""
    from slowfast_vgen.idm_training import idm_main

    out = tmp_path / "run"
    out.mkdir()
    (out / "train_log.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "loss": 9.0}\n{"step": 3, "lo')
    train(_slow(world_root, out, "max_steps=2"))
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(r["loss"] != 9.0 for r in records)
    idm = tmp_path / "idm"
    idm.mkdir()
    (idm / "train_log.jsonl").write_text('{"step": 1, "loss": 9.0}\n')
    assert idm_main([f"output_dir={idm}", "max_steps=1", "size=16", "frames_per_action=2", "batch_size=2",
                     "channels=[8,16]", "hidden_dim=16", "num_threads=1"]) == 0
    assert [json.loads(line).get("loss") != 9.0 for line in (idm / "train_log.jsonl").read_text().splitlines()] == [True]


def test_motion_loss_weight_weights_the_loss_toward_what_moves(world_root, tmp_path, monkeypatch):
    plain = train(_slow(world_root, tmp_path / "plain", "max_steps=2"))
    weighted = train(_slow(world_root, tmp_path / "weighted", "max_steps=2", "motion_loss_weight=20"))
    assert weighted.losses != plain.losses  # same data, noise and timesteps: only the weights differ
    trainer = SlowTrainer(_slow(world_root, tmp_path / "spy", "max_steps=1", "motion_loss_weight=4",
                                "motion_threshold=0.5"))
    seen = {}

    def spy(unet, latents, mask, conditioning, noise, timesteps, reference=None, weight=None):
        seen.update(weight=weight)
        return conditioning.sum() * 0 + 1.0

    monkeypatch.setattr(trainer, "loss_at", spy)
    latents = torch.zeros(2, 4, 6, 2, 2)
    latents[0, :, 2:, 0, 0] = 1.0  # sample 0: one position moves after its context; sample 1: nothing moves
    trainer.masked_loss(latents, context_mask(2, 2, 4), ["move left"] * 2, torch.Generator().manual_seed(0))
    weight = seen["weight"]
    assert weight[0, 0, 2:, 0, 0].tolist() == pytest.approx([5 / 2] * 4)  # 1 + 4 over the mean (4 x 5 + 12 x 1) / 16
    assert (weight[1] == 1.0).all()
    for value, message in (("-1", "motion_loss_weight must be a finite number >= 0, got -1.0"),
                           ("nan", "motion_loss_weight must be a finite number >= 0, got nan")):
        with pytest.raises(UserInputError, match=re.escape(message)):
            _slow(world_root, tmp_path / "bad", f"motion_loss_weight={value}")
    with pytest.raises(UserInputError, match=re.escape("motion_threshold must be a finite number >= 0, got inf")):
        _slow(world_root, tmp_path / "bad", "motion_threshold=inf")


def test_a_checkpoint_saved_before_motion_weighting_existed_resumes_without_it(world_root, tmp_path):
    out = tmp_path / "run"
    train(_slow(world_root, out, "max_steps=1"))
    state_file = out / "checkpoint-1" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    for key in ("motion_loss_weight", "motion_threshold"):
        del state["config"][key]
    state_file.write_text(json.dumps(state))
    assert SlowTrainer(_slow(world_root, out, "max_steps=2")).step == 1
    with pytest.raises(UserInputError, match=re.escape("motion_loss_weight 1.0 (saved: 0.0)")):
        SlowTrainer(_slow(world_root, out, "max_steps=2", "motion_loss_weight=1"))


def test_file_digests_are_hashed_in_parallel_and_the_first_problem_in_record_order_is_named(tmp_path):
    """Checkpoint and session files are hashed in threads (a checkpoint's weights and optimizer moments at
    once); the digests, and the problem a check names first, stay those of hashing one file after another."""
    from slowfast_vgen.io_utils import digest_problem, file_digests, sha256_of_file

    folder = tmp_path / "checkpoint"
    for index, size in enumerate((0, 1, 70_000, 3)):
        (folder / f"part{index % 2}").mkdir(parents=True, exist_ok=True)
        (folder / f"part{index % 2}" / f"file{index}.bin").write_bytes(os.urandom(size))
    digests = file_digests(folder)
    assert list(digests) == ["part0/file0.bin", "part0/file2.bin", "part1/file1.bin", "part1/file3.bin"]
    assert digests == {name: sha256_of_file(folder / name) for name in digests}
    assert digest_problem(folder, digests, "trainer_state.json") is None
    (folder / "part1" / "file3.bin").write_bytes(b"new")
    (folder / "part0" / "file2.bin").unlink()
    assert digest_problem(folder, digests, "trainer_state.json") == ("part0/file2.bin", "No such file or directory")
    changed = ("part1/file3.bin", "its content is not what trainer_state.json records (damaged or replaced)")
    assert digest_problem(folder, digests, "trainer_state.json", missing_ok=True) == changed
    # a name outside the folder is the record's problem, after the files named before it
    assert digest_problem(folder, {**digests, "../x": "0" * 64}, "trainer_state.json", missing_ok=True) == changed
    assert digest_problem(folder, {"/etc/passwd": "0" * 64, **digests}, "trainer_state.json") == (
        "trainer_state.json", "files names '/etc/passwd', a path outside checkpoint/")
