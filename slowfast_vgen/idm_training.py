"""Training the inverse dynamics model on chunks rendered on the fly from procedural worlds.

    python train/train_idm.py output_dir=/work/idm/nav world=navigation max_minutes=5

* Data: :class:`~slowfast_vgen.inverse_dynamics.PairSampler` renders (first, last) frame pairs
  of one action's chunk with exact labels. Training worlds have seeds ``seed * 1_000_000 + w``
  (``w < num_worlds``), held-out worlds ``val_seed * 1_000_000 + w`` (``w < val_worlds``); both
  seeds must be below 900, so neither ever touches the evaluation and planning worlds
  (``900_000_000 + i``). Batch ``n`` is a pure function of ``(seed, n)``.
* Augmentation (generated frames are blurry and noisy, renders are not): per sample, Gaussian
  pixel noise of a random strength up to ``noise_std`` and, with probability ``blur_prob``, a
  3x3 box blur; drawn from a generator seeded with ``(seed, n)``.
* Loss: cross-entropy over the primitives + ``displacement_weight`` x smooth-L1 of the
  displacement divided by the model's ``displacement_scale``.
* Checkpoints: ``output_dir/checkpoint/`` (``model/`` safetensors + config, optimizer moments
  as safetensors, ``trainer_state.json``) written to a temporary directory and renamed when
  complete (:func:`~slowfast_vgen.io_utils.atomic_output_dir`). Re-running the same command
  resumes from it exactly (same batches, same augmentation, same optimizer state).
* At the end (``max_steps`` reached, or stopped by ``max_minutes`` / ``stop_after``): ``output_dir/model/``
  and ``output_dir/eval.json``, the accuracy on ``val_chunks`` chunks of the held-out worlds.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from .config import check_same_run, config_as_dict, help_field
from .errors import UserInputError, first_line
from .inverse_dynamics import IDM_WORLDS, InverseDynamicsModel, PairBatch, PairSampler, evaluate_reader, load_idm
from .io_utils import atomic_output_dir, atomic_write_json, check_output_directory, restore_moved_aside, trim_log
from .worlds import sets_view_size


MAX_THREADS = 256
"""Most torch CPU threads ``num_threads`` may ask for (100000 crashed the process)."""


@dataclasses.dataclass
class IDMTrainConfig:
    """One inverse dynamics model trained on one world (see the module docstring)."""

    output_dir: str = help_field("", "directory for checkpoint/, model/, eval.json, train_log.jsonl (required)")
    world: str = help_field("navigation", f"world: {' | '.join(IDM_WORLDS)}")
    world_overrides: list[str] = help_field([], "world config overrides, e.g. ['num_blocks=4'] (view_size comes from size)")
    size: int = help_field(32, "frame height and width in pixels (= the video model's)")
    frames_per_action: int = help_field(8, "K: frames per action chunk (= the video model's frames_per_chunk)")
    seed: int = help_field(700, "training world seed: worlds seed * 1_000_000 + w (below 900)")
    num_worlds: int = help_field(400, "training worlds (built once and cached)")
    val_seed: int = help_field(701, "held-out world seed (below 900, different from seed)")
    val_worlds: int = help_field(50, "held-out worlds")
    val_chunks: int = help_field(1000, "held-out chunks scored at the end")
    batch_size: int = help_field(64, "pairs per step")
    max_steps: int = help_field(3000, "optimizer steps")
    max_minutes: float = help_field(0.0, "stop (checkpointed, resumable) after this many minutes; 0 = no limit")
    stop_after: int = help_field(0, "stop (checkpointed, resumable) after this many steps of this run; 0 = no limit")
    lr: float = help_field(1e-3, "AdamW learning rate (cosine decay to 10 % over max_steps)")
    weight_decay: float = help_field(1e-4, "AdamW weight decay")
    displacement_weight: float = help_field(1.0, "weight of the displacement loss")
    noise_std: float = help_field(0.06, "largest per-sample Gaussian pixel noise, in [-1, 1] units")
    blur_prob: float = help_field(0.3, "probability of a 3x3 box blur per sample")
    channels: list[int] = help_field([32, 64, 128, 128], "CNN widths: a stem, then one stride-2 stage each")
    hidden_dim: int = help_field(256, "MLP width")
    checkpoint_every: int = help_field(250, "steps between checkpoints")
    log_every: int = help_field(50, "steps between train_log.jsonl lines")
    num_threads: int = help_field(1, "torch CPU threads (the project's CPU is shared: keep 1)")
    resume: bool = help_field(True, "continue from output_dir/checkpoint when it exists")

    def __post_init__(self) -> None:
        checks = [
            (bool(self.output_dir), "output_dir is required"),
            (self.world in IDM_WORLDS, f"world must be one of {IDM_WORLDS}, got {self.world!r}"),
            (self.seed != self.val_seed, f"seed and val_seed must differ, got {self.seed} for both"),
            (min(self.num_worlds, self.val_worlds, self.val_chunks, self.batch_size) >= 1,
             "num_worlds, val_worlds, val_chunks and batch_size must be >= 1"),
            (self.max_steps >= 1 and 0 <= self.max_minutes < math.inf and self.stop_after >= 0,  # also refuse nan
             f"need max_steps >= 1, a finite max_minutes >= 0, stop_after >= 0, got {self.max_steps}, {self.max_minutes}, {self.stop_after}"),
            (0 < self.lr < math.inf and 0 <= self.noise_std < math.inf and 0 <= self.blur_prob <= 1,  # also refuse nan
             f"need a finite lr > 0, a finite noise_std >= 0, blur_prob in [0, 1], got {self.lr}, {self.noise_std}, "
             f"{self.blur_prob}"),
            (0 <= self.weight_decay < math.inf and 0 <= self.displacement_weight < math.inf,
             f"weight_decay and displacement_weight must be finite numbers >= 0, got {self.weight_decay}, "
             f"{self.displacement_weight}"),
            (self.checkpoint_every >= 1 and self.log_every >= 1 and 1 <= self.num_threads <= MAX_THREADS,
             f"checkpoint_every and log_every must be >= 1, num_threads in [1, {MAX_THREADS}]"),  # 100000 segfaulted
            (self.hidden_dim >= 1, f"hidden_dim must be >= 1, got {self.hidden_dim}"),
            (not sets_view_size(self.world_overrides),
             "set the frame size with size=, not world_overrides view_size"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self._check_sampler_and_model()

    def _check_sampler_and_model(self) -> None:
        """The conditions :class:`PairSampler` and :class:`InverseDynamicsModel` (``inverse_dynamics.py``) and the
        world config enforce, named by config key: checked here, a bad value is a one-line config error before
        anything is written, not a traceback after ``output_dir`` was created (or, for the held-out pool, after
        training). ``tests/test_planning.py`` checks that they reject the same values."""
        from .data.world_dataset import WORLD_SEED_STRIDE, check_training_world_seed
        from .worlds import world_config

        # PairSampler(world, size, frames_per_action, seed, num_worlds) of the training and the held-out pool
        if self.frames_per_action < 1:
            raise ValueError(f"frames_per_action must be >= 1, got {self.frames_per_action}")
        pools = (("seed", self.seed, "num_worlds", self.num_worlds), ("val_seed", self.val_seed, "val_worlds", self.val_worlds))
        for seed_key, seed, worlds_key, worlds in pools:
            if worlds < 1 or worlds > WORLD_SEED_STRIDE:
                raise ValueError(f"need 1 <= {worlds_key} <= {WORLD_SEED_STRIDE}, got {worlds}")
            check_training_world_seed(seed, worlds, what=seed_key)
        # InverseDynamicsModel(image_size=size, channels=channels): a stem, then one stride-2 stage per further width
        channels = list(self.channels)
        if not channels or min(channels) < 1:
            raise ValueError(f"channels must be one or more widths >= 1, got {channels}")
        if self.size < 8 or self.size % 2 ** (len(channels) - 1) or self.size // 2 ** (len(channels) - 1) < 2:
            raise ValueError(f"size {self.size} must be >= 8, divisible by {2 ** (len(channels) - 1)} and leave at "
                             f"least 2 pixels after the IDM halves it {len(channels) - 1} times (2 ** (len(channels) "
                             "- 1))")
        # the world PairSampler renders: view_size = size, then world_overrides
        try:
            world_config(self.world, [f"view_size={self.size}", *self.world_overrides])
        except UserInputError as err:
            raise ValueError(f"world {self.world} with size={self.size} and world_overrides {list(self.world_overrides)}: "
                             f"{str(err).removeprefix('bad config: ')}") from None


@dataclasses.dataclass
class IDMTrainResult:
    step: int
    finished: bool  # max_steps reached (False: stopped by max_minutes or stop_after, resumable)
    output_dir: Path
    evaluation: dict | None


def augment(batch: PairBatch, generator: torch.Generator, noise_std: float, blur_prob: float) -> PairBatch:
    """Noise and blur the frames (the same draw for a sample's first and last frame), clamped to [-1, 1]."""
    b = batch.first.shape[0]
    pair = torch.stack([batch.first, batch.last], dim=1)  # 2 x (B, 3, H, W) -> (B, 2, 3, H, W)
    blur = torch.rand(b, generator=generator) < blur_prob
    if blur.any():
        flat = pair[blur].flatten(0, 1)  # (b', 2, 3, H, W) -> (b' * 2, 3, H, W)
        blurred = F.avg_pool2d(F.pad(flat, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        pair[blur] = blurred.unflatten(0, (-1, 2))
    strength = torch.rand(b, 1, 1, 1, 1, generator=generator) * noise_std
    pair = (pair + strength * torch.randn(pair.shape, generator=generator)).clamp(-1, 1)
    return PairBatch(pair[:, 0], pair[:, 1], batch.labels, batch.displacement)


def idm_loss(model: InverseDynamicsModel, batch: PairBatch, displacement_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, accuracy)`` of one batch: cross-entropy + weighted smooth-L1 on the normalised displacement."""
    logits, displacement = model(batch.first, batch.last)
    target = batch.displacement / model.config.displacement_scale
    loss = F.cross_entropy(logits, batch.labels) + displacement_weight * F.smooth_l1_loss(displacement, target)
    return loss, (logits.argmax(-1) == batch.labels).float().mean()


def lr_factor(step: int, max_steps: int) -> float:
    """Cosine decay from 1 to 0.1 over ``max_steps`` (a pure function of the step: exact resume)."""
    return 0.1 + 0.45 * (1 + math.cos(math.pi * min(step, max_steps) / max_steps))


def _batch_rng(seed: int, step: int) -> tuple[np.random.Generator, torch.Generator]:
    """The data and augmentation generators of batch ``step`` (a pure function: exact resume)."""
    numpy_rng = np.random.default_rng([seed, step])
    torch_rng = torch.Generator().manual_seed(int(numpy_rng.integers(2**62)))
    return numpy_rng, torch_rng


IDM_RESUME_MAY_CHANGE = (  # what a resumed run may set differently: budget, logging, the held-out evaluation
    "output_dir", "resume", "max_minutes", "stop_after", "checkpoint_every", "log_every", "num_threads",
    "val_seed", "val_worlds", "val_chunks",
)


def _save_checkpoint(path: Path, model: InverseDynamicsModel, optimizer: torch.optim.Optimizer, step: int,
                     config: IDMTrainConfig) -> None:
    from .checkpointing import save_optimizer_state

    with atomic_output_dir(path, "trainer_state.json") as tmp:
        model.save_pretrained(tmp / "model", safe_serialization=True)
        save_optimizer_state(optimizer, tmp / "optimizer.safetensors")
        atomic_write_json(tmp / "trainer_state.json", {"step": step, "config": config_as_dict(config)})  # written last


def _trainer_state(file: Path) -> dict:
    """``trainer_state.json``: ``step`` (an int) and, since it was recorded, the run's ``config``."""
    state = json.loads(file.read_text(encoding="utf-8"))
    if not isinstance(state, dict) or isinstance(state.get("step"), bool) or not isinstance(state.get("step"), int):
        raise ValueError("no step")
    if state["step"] < 0:  # a seeding traceback on resume
        raise ValueError(f"step {state['step']} is negative")
    if not isinstance(state.get("config", {}), dict):
        raise ValueError("config is not an object")
    return state


def _checkpoint_part(checkpoint: Path, name: str, read):
    """``read(checkpoint / name)``, or a :class:`UserInputError` naming the file when it is missing or damaged."""
    try:
        return read(checkpoint / name)
    except Exception as err:  # JSON, safetensors and optimizer-state errors alike
        raise UserInputError(f"checkpoint {checkpoint} is corrupt: {name}: {first_line(err)}") from None


def train_idm(config: IDMTrainConfig, progress=print) -> IDMTrainResult:
    """Train (or resume) one IDM on ``config.num_threads`` CPU threads (restored afterwards); returns
    where it stopped and the held-out evaluation."""
    previous = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    try:
        return _train_idm(config, progress)
    finally:
        torch.set_num_threads(previous)


def _train_idm(config: IDMTrainConfig, progress) -> IDMTrainResult:
    from .checkpointing import load_optimizer_state

    check_output_directory(config.output_dir, "output_dir")
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    # 1. data: training and held-out world pools (disjoint seeds, both below the evaluation worlds)
    sampler = PairSampler(config.world, config.size, config.frames_per_action, config.seed, config.num_worlds,
                          config.world_overrides)
    # 2. model and optimizer, resumed from the checkpoint when there is one
    checkpoint = out / "checkpoint"
    step = 0
    architecture = {  # what the saved model's config.json records: a resumed run must match it
        "world": config.world, "primitives": list(sampler.primitives), "image_size": config.size,
        "frames_per_action": config.frames_per_action, "displacement_scale": sampler.displacement_scale,
        "world_overrides": list(config.world_overrides), "channels": list(config.channels), "hidden_dim": config.hidden_dim,
    }
    restore_moved_aside(checkpoint, "trainer_state.json")  # a save that died between its two renames
    if config.resume and (checkpoint / "trainer_state.json").is_file():
        model = load_idm(checkpoint / "model").train()
        for key, value in architecture.items():
            saved = model.config[key]
            if (list(saved) if isinstance(saved, (list, tuple)) else saved) != value:
                raise UserInputError(f"checkpoint {checkpoint} was trained with {key} {saved!r}, this run has {value!r}; "
                                     "use a new output_dir, or the checkpoint's settings to continue it")
        state = _checkpoint_part(checkpoint, "trainer_state.json", _trainer_state)
        step = state["step"]
        if "config" in state:  # lr, seed, batch, augmentation, max_steps (the cosine schedule): another run
            check_same_run(checkpoint, state["config"], config, IDM_RESUME_MAY_CHANGE)
        if step > config.max_steps:  # max_steps is the run's: a larger step was 'done' at once
            raise UserInputError(f"checkpoint {checkpoint} is corrupt: trainer_state.json: step {step} is beyond "
                                 f"max_steps {config.max_steps}")
        trim_log(out / "train_log.jsonl", step)  # lines logged after the checkpoint are logged again
    else:
        trim_log(out / "train_log.jsonl", 0)  # a run killed before its first checkpoint logged steps taken again
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)  # the initial weights are a function of the config
            model = InverseDynamicsModel(**architecture)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if step:
        _checkpoint_part(checkpoint, "optimizer.safetensors", lambda file: load_optimizer_state(optimizer, file))
        progress(f"resuming {checkpoint} at step {step}")
    # 3. the loop: render a batch, augment, step; checkpoint atomically
    model.train()
    log = (out / "train_log.jsonl").open("a", encoding="utf-8")
    finished, first_step = step >= config.max_steps, step
    try:
        while step < config.max_steps:
            numpy_rng, torch_rng = _batch_rng(config.seed, step)
            batch = augment(sampler.batch(numpy_rng, config.batch_size), torch_rng, config.noise_std, config.blur_prob)
            loss, accuracy = idm_loss(model, batch, config.displacement_weight)
            lr = config.lr * lr_factor(step, config.max_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step % config.log_every == 0 or step == config.max_steps:
                line = {"step": step, "loss": round(loss.item(), 5), "batch_accuracy": round(accuracy.item(), 4),
                        "lr": round(lr, 7), "minutes": round((time.monotonic() - started) / 60, 3)}
                log.write(json.dumps(line) + "\n")
                log.flush()
                progress(json.dumps(line))
            out_of_time = bool(config.max_minutes and time.monotonic() - started > 60 * config.max_minutes
                               or config.stop_after and step - first_step >= config.stop_after)
            if step % config.checkpoint_every == 0 or step == config.max_steps or out_of_time:
                _save_checkpoint(checkpoint, model, optimizer, step, config)
            if out_of_time:
                break
        finished = step >= config.max_steps
    finally:
        log.close()
    # 4. the model and its accuracy on held-out worlds
    model.eval()
    with atomic_output_dir(out / "model", "config.json") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
    held_out = PairSampler(config.world, config.size, config.frames_per_action, config.val_seed, config.val_worlds,
                           config.world_overrides)
    evaluation = {"step": step, "finished": finished, "world": config.world, "size": config.size,
                  "frames_per_action": config.frames_per_action, "val_seed": config.val_seed,
                  "val_worlds": config.val_worlds, **evaluate_reader(model, held_out, config.val_chunks, seed=config.val_seed)}
    atomic_write_json(out / "eval.json", evaluation)
    progress(f"held-out accuracy {evaluation['accuracy']:.4f} on {config.val_chunks} chunks of {config.val_worlds} "
             f"worlds (chance {evaluation['chance']:.3f}), displacement MAE {evaluation['displacement_mae']:.3f} "
             f"{evaluation['displacement_units']}")
    return IDMTrainResult(step, finished, out, evaluation)



def idm_main(argv=None) -> int:
    """``train/train_idm.py``: ``[--config YAML] key=value ...`` -> :func:`train_idm`."""
    from .config import ConfigKeysParser, load_config
    from .errors import run_cli

    def main(args) -> int:
        parser = ConfigKeysParser(description="Train an inverse dynamics model on procedural-world chunks.")
        parser.config_class = IDMTrainConfig
        parser.add_argument("--config", help="YAML file with IDMTrainConfig values")
        parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. output_dir=/work/idm/nav max_minutes=5")
        parsed = parser.parse_args(args)
        result = train_idm(load_config(IDMTrainConfig, parsed.config, parsed.overrides), progress=lambda s: print(s, flush=True))
        print(f"{'done' if result.finished else 'stopped by max_minutes or stop_after (re-run to continue)'}: step {result.step}, "
              f"model in {result.output_dir / 'model'}")
        return 0

    return run_cli(main, argv)


__all__ = ["IDMTrainConfig", "IDMTrainResult", "augment", "idm_loss", "idm_main", "train_idm"]
