"""Slow learning (paper §3.1, Eq. 1-2) and the slow-fast learning loop (§3.3, Algorithm 1b).

Both trainers share one loop with the shape of diffusers' training examples —
``accelerator.accumulate``, ``accelerator.backward``, ``if accelerator.sync_gradients`` —
and the same guarantees:

* checkpoints ``checkpoint-N/`` are written atomically (temporary dir + rename) by the main
  process only, pruned to ``checkpoints_total_limit`` after a successful save, and contain no
  pickle (see :mod:`.checkpointing`);
* ``resume=latest|PATH`` restores weights, optimizer, LR schedule and the data position; all
  randomness is a pure function of ``(seed, step, rank)``, so a resumed run produces the losses
  an uninterrupted one would;
* SIGTERM saves a checkpoint at the next step boundary and exits with :data:`EXIT_PREEMPTED`;
* a non-finite loss skips the step (logged); ``max_nonfinite_steps`` in a row abort the run.

:class:`SlowTrainer` trains the UNet (VAE and text encoder frozen) on chunk batches.
:class:`SlowFastLoopTrainer` runs, per episode, the Temp-LoRA fast learner over the
ground-truth chunks recording ``(X_i, X_{i+1}, Theta_i)``, then updates the base weights Phi
with each ``Theta_i`` applied and frozen.
"""

from __future__ import annotations

import copy
import json
import signal
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from . import diffusion
from .action_encoder import auxiliary_action_loss
from .checkpointing import (
    check_checkpoint_files,
    check_no_newer_checkpoints,
    list_checkpoints,
    load_ema_state,
    load_module_weights,
    load_optimizer_state,
    load_unet_weights,
    read_checkpoint_state,
    read_ema_model,
    resolve_resume,
    save_checkpoint,
)
from .text_features import TextFeatureCache
from .config import check_same_run, check_seed, config_as_dict, help_field, save_config
from .data.dataset import ChunkBatch, ChunkDataset, ChunkDatasetConfig, collate_chunks, ignore_sigterm, shut_down_when_done
from .data.live_worlds import VALIDATION_SEED as LIVE_VALIDATION_SEED, LiveWorldChunks, LiveWorldsConfig, live_chunk_loader
from .errors import UserInputError, first_line
from .fast_learner import FastLearnerConfig, TempLoRA, plain_unet, use_adapter
from .io_utils import check_output_directory, remove_stale_temporaries, trim_log
from .model import ModelBundle, ModelConfig, load_model, unet_text_kwargs

RESUME_MAY_CHANGE = (  # what a resumed run may set differently from the run it continues: budget, logging,
    # paths, and the EMA (it follows the weights, never steers them; turned on, it starts from the checkpoint's)
    "output_dir", "resume", "max_steps", "max_minutes", "checkpointing_steps", "checkpoints_total_limit", "log_every",
    "report_to", "num_workers", "sample_every", "sample_actions", "validate_every", "validation_split",
    "validation_chunks", "max_nonfinite_steps", "device", "compile", "data.root", "text_features", "use_ema", "ema_decay",
)
# settings added after checkpoints recorded their config, with the value that trains as before them
SETTINGS_ADDED_SINCE = {"motion_loss_weight": 0.0, "motion_threshold": 0.1, "max_timestep": None}
CONSTANT_SCHEDULES = ("constant", "constant_with_warmup")  # the only schedules that do not depend on max_steps
EXIT_PREEMPTED = 143  # 128 + SIGTERM: a checkpoint was saved, run again with resume=latest
EXIT_DIVERGED = 3


class TrainingDiverged(RuntimeError):
    """Too many non-finite losses in a row."""


LIVE_FROM_DATA = {"size": "height", "context_frames_min": "context_frames_min",
                  "context_frames_max": "context_frames_max", "target_frames": "target_frames"}
"""The ``live.*`` keys a run takes from ``data.*`` (live key -> data key): frame size and chunk lengths."""


def live_settings(live: LiveWorldsConfig, data: ChunkDatasetConfig) -> LiveWorldsConfig:
    """The live worlds a run trains on: ``live`` with the frame size and chunk lengths of ``data``."""
    return replace(live, **{name: getattr(data, key) for name, key in LIVE_FROM_DATA.items()})


@dataclass
class TrainConfig:
    """Slow learning: data, model, optimisation, checkpoints (the slow-fast loop adds ``loop``)."""

    output_dir: str = help_field("runs/slow", "where checkpoints, logs, samples and the final model go")
    init_from: str = help_field("", "model directory to finetune (empty: a fresh model from `model`)")
    model: ModelConfig = field(default_factory=ModelConfig)
    data: ChunkDatasetConfig = field(default_factory=lambda: ChunkDatasetConfig(root=""))  # root: required for disk data
    data_source: str = help_field(
        "disk", "disk: the chunk dataset at data.root | live: procedural worlds rendered on the fly by the DataLoader "
        "workers (settings in `live`; frame size and context/target lengths from `data`), no dataset on disk"
    )
    live: LiveWorldsConfig = field(default_factory=LiveWorldsConfig)
    max_steps: int = help_field(1000, "optimizer steps to train for (total, across resumes)")
    max_minutes: float = help_field(
        0.0, "wall-clock budget of this run in minutes (0 = none): at the first step past it a checkpoint is saved "
        "and the model exported, as at max_steps; running the command again continues exactly"
    )
    batch_size: int = help_field(8, "chunks per process per micro-batch")
    gradient_accumulation_steps: int = help_field(1, "micro-batches per optimizer step")
    learning_rate: float = help_field(2e-4, "peak learning rate (paper, full scale: 5e-6)")
    weight_decay: float = help_field(0.0, "AdamW weight decay")
    lr_scheduler: str = help_field("constant_with_warmup", "diffusers get_scheduler name: constant_with_warmup | cosine | linear ...")
    lr_warmup_steps: int = help_field(100, "linear warmup steps")
    max_grad_norm: float = help_field(1.0, "gradient clipping (0 = off)")
    mixed_precision: str = help_field("no", "no | fp16 | bf16")
    compile: bool = help_field(
        False, "run the training steps' UNet through torch.compile (inductor; the first step compiles). Checkpoints, "
        "validation, samples and the export use the same weights uncompiled; a run continues exactly with the same "
        "setting (benchmarks/train_step.py measures the gain)"
    )
    use_ema: bool = help_field(False, "keep an EMA of the UNet weights (exported as the final model)")
    ema_decay: float = help_field(0.999, "EMA decay")
    min_timestep: int = help_field(
        0, "train on timesteps >= this only (high noise: where the action decides the chunk's motion); 0 = all"
    )
    max_timestep: Optional[int] = help_field(
        None, "train on timesteps < this only (low noise: detail and texture, e.g. the sampler's last step); "
        "null = all up to the scheduler's last"
    )
    add_action_encoder: bool = help_field(
        False, "give the model a fresh action encoder (slowfast_vgen/action_encoder.py) if it has none (e.g. init_from "
        "a model without one); a model that has one keeps it"
    )
    action_loss_weight: float = help_field(
        0.0, "weight of the auxiliary primitive-classification loss of the action encoder (texts that are not "
        "procedural-world phrasings carry no label and add nothing; 0 = off)"
    )
    action_encoder_lr: float = help_field(0.0, "learning rate of the action encoder (0 = learning_rate)")
    text_features: str = help_field(
        "", "precomputed text features (data_tools/text_features.py): the frozen text encoder is not loaded and "
        "every action text must be in the cache (models with an action encoder)"
    )
    text_dropout: float = help_field(0.1, "probability of training with the empty text (enables classifier-free guidance)")
    whole_window_share: float = help_field(
        0.0, "probability that a training sample is noised as a whole window with the empty text (Eq. 3, the "
        "Temp-LoRA memory objective) instead of Eq. 1-2, so the fast learner's loss is in-distribution for the "
        "base model; 0 = off"
    )
    motion_loss_weight: float = help_field(
        0.0, "extra weight of the loss on the target latents that differ from the last context frame by more than "
        "motion_threshold (diffusion.motion_weights): small moving objects (the blocks world's gripper and blocks) "
        "count as much as the static background; a weighted mean, so a chunk where everything moves is weighted as "
        "before. Validation losses stay unweighted; 0 = off"
    )
    motion_threshold: float = help_field(
        0.1, "latent difference that counts as motion for motion_loss_weight (pixel-space models: [-1, 1] units, "
        "0.1 = 13 of 255 levels; a VAE's latents need their own)"
    )
    checkpointing_steps: int = help_field(500, "save a checkpoint every N optimizer steps (and at the end)")
    checkpoints_total_limit: int = help_field(3, "keep at most N checkpoints (0 = all)")
    resume: Optional[str] = help_field(
        "latest", "'' or empty (fresh start), 'latest' (newest checkpoint in output_dir, if any) or a checkpoint path"
    )
    max_nonfinite_steps: int = help_field(5, "abort after this many non-finite losses in a row")
    num_workers: int = help_field(2, "DataLoader worker processes")
    log_every: int = help_field(10, "log the loss every N steps")
    sample_every: int = help_field(0, "write a sample video every N steps (0 = never)")
    validate_every: int = help_field(
        0, "every N steps log the validation loss with the true, the shuffled and no action text (0 = never)"
    )
    validation_split: str = help_field("val", "manifest split of the fixed validation chunks")
    validation_chunks: int = help_field(32, "number of fixed validation chunks")
    sample_actions: list[str] = help_field(["move right", "move left"], "actions of the sample videos")
    report_to: str = help_field("tensorboard", "accelerate tracker: tensorboard | none (train_log.jsonl is always written)")
    device: str = help_field("auto", "auto | cpu | cuda")
    seed: int = help_field(0, "seed of data order, noise, timesteps and text dropout")

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "checkpointing_steps", "max_nonfinite_steps", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.data_source not in ("disk", "live"):
            raise ValueError(f"data_source must be disk or live, got {self.data_source!r}")
        if self.data_source == "disk" and not self.data.root:
            raise ValueError("data.root is required (the dataset directory), or set data_source=live")
        if self.data_source == "live" and self.data.height != self.data.width:
            raise ValueError(f"live worlds render square frames: data.height must equal data.width, got "
                             f"{self.data.height}x{self.data.width}")
        if self.data_source == "live":
            if self.live.split != "train":  # any other split mixes held-out phrasings into training
                raise ValueError(f"live.split must be train for training (validation renders its own), got "
                                 f"{self.live.split!r}")
            if self.live.seed == LIVE_VALIDATION_SEED:  # training on the validation worlds
                raise ValueError(f"live.seed {LIVE_VALIDATION_SEED} is the seed of the live validation worlds; "
                                 "give another")
            live_settings(self.live, self.data)  # target_frames > frames_per_action: a traceback after loading
        if str(self.mixed_precision) == "False":  # YAML and dotlists read a bare `no` as false
            self.mixed_precision = "no"
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        if not 0.0 <= self.text_dropout < 1.0:
            raise ValueError(f"text_dropout must be in [0, 1), got {self.text_dropout}")
        if not 0.0 <= self.whole_window_share < 1.0:  # also refuses nan
            raise ValueError(f"whole_window_share must be in [0, 1), got {self.whole_window_share}")
        for name in ("motion_loss_weight", "motion_threshold"):
            if not 0.0 <= getattr(self, name) < float("inf"):  # also refuses nan
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        for name in ("validate_every", "min_timestep", "lr_warmup_steps", "sample_every"):
            if getattr(self, name) < 0:  # a negative warmup shifted the schedules; sample_every=-1 sampled every step
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.validate_every and self.validation_chunks < 2:
            raise ValueError(f"validation_chunks must be >= 2, got {self.validation_chunks}")
        if self.sample_every:  # a bad action stopped the run at its first sample, after its training steps
            from .session import validate_action

            try:
                for position, action in enumerate(self.sample_actions, 1):
                    validate_action(action, position)
            except UserInputError as err:
                raise ValueError(f"sample_actions: {err}") from None
            if not self.sample_actions:
                raise ValueError("sample_actions is empty (sample_every > 0 writes a sample video of them)")
        if not 0 < self.learning_rate < float("inf"):  # also refuses nan
            raise ValueError(f"learning_rate must be a finite number > 0, got {self.learning_rate}")
        for name in ("weight_decay", "max_grad_norm", "action_loss_weight", "action_encoder_lr", "max_minutes"):
            if not 0 <= getattr(self, name) < float("inf"):  # also refuses nan
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if not 0 <= self.ema_decay <= 1:
            raise ValueError(f"ema_decay must be in [0, 1], got {self.ema_decay}")
        if self.checkpoints_total_limit < 0 or self.num_workers < 0:
            raise ValueError(f"checkpoints_total_limit (0 = keep all) and num_workers must be >= 0, got "
                             f"{self.checkpoints_total_limit}, {self.num_workers}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        check_seed(self.seed)  # a seed above 2**64 trained, then stopped with an overflow traceback
        from accelerate.utils import LoggerType
        from diffusers.optimization import SchedulerType

        # piecewise_constant needs step rules no key here gives: it passed this check and crashed in diffusers
        schedulers = [kind.value for kind in SchedulerType if kind.value != "piecewise_constant"]
        if self.lr_scheduler not in schedulers:
            raise ValueError(f"lr_scheduler must be one of {', '.join(schedulers)}, got {self.lr_scheduler!r}")
        trackers = ["none", *(kind.value for kind in LoggerType)]
        if self.report_to not in ["", *trackers]:
            raise ValueError(f"report_to must be one of {', '.join(trackers)}, got {self.report_to!r}")


@dataclass
class LoopConfig:
    """The slow-fast learning loop (Algorithm 1b)."""

    episodes_per_iteration: int = help_field(2, "episodes per process whose fast-learning records form one D_s")
    chunks_per_episode: int = help_field(6, "ground-truth chunks X_0..X_{I-1} taken from each episode")
    memoryless_share: float = help_field(
        0.0, "share of episodes whose records train Phi without a memory (plain Eq. 1-2), so the model keeps "
             "working without its Temp-LoRA; these episodes skip the inner loop")
    anchor_weight: float = help_field(
        0.0, "weight of a distillation term on the memoryless records: Phi's prediction with the LoRA off is pulled "
             "toward the frozen starting model's (init_from) on the same noisy input, so the model without memory "
             "does not erode; needs init_from and memoryless_share > 0")

    def __post_init__(self) -> None:
        if self.episodes_per_iteration < 1 or self.chunks_per_episode < 2:
            raise ValueError(f"loop.episodes_per_iteration must be >= 1 and loop.chunks_per_episode >= 2, got "
                             f"{self.episodes_per_iteration} and {self.chunks_per_episode}")
        if not 0.0 <= self.memoryless_share <= 1.0:
            raise ValueError(f"loop.memoryless_share must be in [0, 1], got {self.memoryless_share}")
        if not 0 <= self.anchor_weight < float("inf"):  # also refuses nan
            raise ValueError(f"loop.anchor_weight must be a finite number >= 0, got {self.anchor_weight}")
        if self.anchor_weight and not self.memoryless_share:
            raise ValueError("loop.anchor_weight acts on the memoryless records: set loop.memoryless_share > 0")


@dataclass
class LoopTrainConfig(TrainConfig):
    """Slow-fast learning loop: slow-learning settings + the fast learner + episode sampling."""

    batch_size: int = help_field(1, "records per micro-batch: 1, as each record carries its own Theta_i")
    fast: FastLearnerConfig = field(default_factory=FastLearnerConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.validate_every:
            raise ValueError("validate_every is for slow learning (train_slow.py); the loop's UNet carries a Temp-LoRA")
        if self.loop.anchor_weight and not self.init_from:
            raise ValueError("loop.anchor_weight pulls toward the starting model: set init_from")
        if self.fast.read_scale != 1:
            raise ValueError("fast.read_scale is how generation samples with a memory; the loop trains Phi through "
                             f"the memory as learned (scale 1), got {self.fast.read_scale}")
        if self.compile:
            raise ValueError("compile is for slow learning (train_slow.py): the loop's UNet changes its Temp-LoRA "
                             "with every record")
        if self.data_source != "disk":
            raise ValueError(f"the slow-fast loop trains on whole episodes of a dataset on disk (data.root), not "
                             f"data_source={self.data_source}")
        if self.fast.mode == "off":
            raise ValueError("the slow-fast loop trains Phi with each episode's Temp-LoRA: fast.mode must not be off")
        if self.batch_size != 1:  # refused with the config, not after the model is built and the run started
            raise ValueError("the slow-fast loop trains one record (one Theta_i) per micro-batch: set batch_size=1 "
                             "(gradient_accumulation_steps for more records per step)")


@dataclass
class Anchor:
    """A frozen copy of the starting model that a distillation term pulls Phi's predictions toward."""

    unet: torch.nn.Module
    action_encoder: torch.nn.Module | None
    weight: float


@dataclass
class TrainResult:
    step: int
    losses: dict[int, float]
    interrupted: bool
    skipped_steps: list[int]
    output_dir: Path
    replica_checksum: float


class SlowTrainer:
    """Slow learning of the UNet with the masked conditional diffusion loss (Eq. 1-2)."""

    def __init__(self, config: TrainConfig) -> None:
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration
        from diffusers.optimization import get_scheduler

        self.config = config
        check_output_directory(config.output_dir, "output_dir")  # before the model is built, not at the first save
        self.output_dir = Path(config.output_dir)
        if config.device == "cuda" and not torch.cuda.is_available():
            raise UserInputError("device=cuda but no CUDA device is available here (device=auto picks one when "
                                 "there is one, else the CPU)")
        use_cpu = config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available())
        if use_cpu and config.mixed_precision == "fp16":  # accelerate trained in float32 and recorded fp16
            raise UserInputError("mixed_precision=fp16 needs a CUDA device; on the CPU use bf16 or no")
        log_with = _tracker(config.report_to)
        self.accelerator = Accelerator(
            cpu=use_cpu,
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            log_with=log_with,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs")),
        )
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        # 1. model: fresh from the config, or a model directory to finetune (optionally given an action encoder)
        cache = TextFeatureCache.load(config.text_features) if config.text_features else None
        if config.init_from:
            self.bundle = load_model(config.init_from, text_features=cache)
        else:
            self.bundle = ModelBundle.from_config(config.model)
            if cache is not None:
                self.bundle.use_text_features(cache)
        frame = (config.data.height, config.data.width)
        if frame != (self.bundle.height, self.bundle.width):  # it trained on one size and was exported as another
            raise UserInputError(f"data.height/width {frame[0]}x{frame[1]} differ from the model's frame size "
                                 f"{self.bundle.height}x{self.bundle.width}: set data.height={self.bundle.height} "
                                 f"data.width={self.bundle.width}" + ("" if config.init_from else
                                                                     ", or model.height/width to the data's"))
        if config.add_action_encoder and self.bundle.action_encoder is None:
            self.bundle.with_action_encoder(seed=config.seed)
        if cache is not None and self.bundle.action_encoder is None:
            raise UserInputError("text_features serve models with an action encoder (model.action_encoder=true, or "
                                 "add_action_encoder=true with init_from)")
        if config.action_loss_weight and (self.bundle.action_encoder is None or self.bundle.action_encoder.classifier is None):
            raise UserInputError("action_loss_weight needs an action encoder with a primitive classifier")
        # what the run starts from: a resume checks it (init_from re-exported by another run meanwhile, say)
        self.start_fingerprint = self.bundle.model_fingerprint if config.init_from else ""
        self.bundle.forget_model_fingerprint()  # training changes the weights in place
        self.bundle.to(self.accelerator.device)
        num_timesteps = self.bundle.noise_scheduler.config.num_train_timesteps
        if not 0 <= config.min_timestep < num_timesteps:
            raise UserInputError(f"min_timestep must be in [0, {num_timesteps}) for this model, got {config.min_timestep}")
        if config.max_timestep is not None and not config.min_timestep < config.max_timestep <= num_timesteps:
            raise UserInputError(f"max_timestep must be in (min_timestep={config.min_timestep}, {num_timesteps}] for this "
                                 f"model, got {config.max_timestep}")
        self.setup_model()
        trainable = [p for p in self.bundle.unet.parameters() if p.requires_grad]
        groups = [{"params": trainable}]
        encoder = self.bundle.action_encoder
        if encoder is not None:
            encoder.requires_grad_(True)
            groups.append({"params": list(encoder.parameters()), "lr": config.action_encoder_lr or config.learning_rate})
        self.optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, weight_decay=config.weight_decay)
        self.lr_scheduler = get_scheduler(
            config.lr_scheduler, self.optimizer, num_warmup_steps=config.lr_warmup_steps, num_training_steps=config.max_steps
        )
        self.ema, self.encoder_ema = self.new_emas() if config.use_ema else (None, None)
        # 2. resume: weights, optimizer, LR schedule, step (the data position follows from the step)
        self.step = 0
        self.resumed_from = resolve_resume(self.output_dir, config.resume)
        check_no_newer_checkpoints(self.output_dir, self.resumed_from)  # this run's checkpoints would mix with them
        if self.resumed_from is not None:
            self.load_checkpoint(self.resumed_from)
        if encoder is not None:
            self.unet, self.action_encoder, self.optimizer = self.accelerator.prepare(self.bundle.unet, encoder, self.optimizer)
        else:
            self.unet, self.optimizer = self.accelerator.prepare(self.bundle.unet, self.optimizer)
            self.action_encoder = None
        # the module the training loss runs: compiled, it shares self.unet's parameters (nothing else changes)
        self.training_unet = torch.compile(self.unet) if config.compile else self.unet
        self.text_cache: dict[str, torch.Tensor] = {}
        # a missing or too small validation split is an error now, not after hours of training; loaded by every
        # process, so each stops with the one-line error (the others waited in the first step's all-reduce and
        # died with a gloo traceback), then kept by the main process, which validates
        self.validation_batch = self.load_validation_batch() if config.validate_every else None
        if not self.accelerator.is_main_process:
            self.validation_batch = None
        self.stop_requested = False

    def new_emas(self) -> tuple[Any, Any]:
        """EMAs of the UNet's trainable weights and of the action encoder (None without one), starting
        from their current values."""
        from diffusers.training_utils import EMAModel

        unet, encoder = self.bundle.unet, self.bundle.action_encoder
        trainable = [p for p in unet.parameters() if p.requires_grad]
        ema = EMAModel(trainable, decay=self.config.ema_decay, model_cls=type(unet), model_config=unet.config)
        encoder_ema = EMAModel(list(encoder.parameters()), decay=self.config.ema_decay) if encoder is not None else None
        return ema, encoder_ema

    def timestep_band(self) -> tuple[int, int]:
        """The noise levels ``low <= t < high`` this run trains on (``min_timestep``, ``max_timestep`` or the
        scheduler's last step + 1): what the loss draws from, validation measures and the exported model records."""
        high = self.config.max_timestep
        return self.config.min_timestep, self.bundle.noise_scheduler.config.num_train_timesteps if high is None else high

    # ------------------------------------------------------------------ hooks for subclasses
    def exported_generation(self) -> dict[str, Any]:
        """The exported model's generation defaults (its ``slowfast_vgen.json``): the chunk layout it was trained on."""
        data = self.config.data
        return {
            **self.bundle.metadata.get("generation", {}),  # e.g. the sampler settings of an init_from model
            "frames_per_chunk": data.target_frames,
            "context_frames": data.context_frames_max,
            "window": data.context_frames_max + data.target_frames,
        }

    def setup_model(self) -> None:
        """Make the slow weights trainable (VAE and text encoder are frozen by the bundle)."""
        self.bundle.unet.requires_grad_(True)

    def live_config(self, split: str = "train") -> LiveWorldsConfig:
        """The live worlds of ``data_source=live``: frame size and chunk lengths from ``data``; the validation
        split renders other worlds (dataset seed ``VALIDATION_SEED``, 899) with all phrasings and full context."""
        data = self.config.data
        live = live_settings(self.config.live, data)
        if split != "train":
            live = replace(live, split=split, seed=LIVE_VALIDATION_SEED, context_frames_min=data.context_frames_max)
        return live

    def micro_batches(self, start: int) -> Iterator[ChunkBatch]:
        """Micro-batches from global micro-batch index ``start`` on, this process's shard."""
        if self.config.data_source == "live":
            yield from live_chunk_loader(self.live_config(), self.config.batch_size, start_batch=start, rank=self.rank,
                                         world_size=self.world, num_workers=self.config.num_workers,
                                         pin_memory=self.accelerator.device.type == "cuda")
            return
        dataset = ChunkDataset(self.config.data)
        per_epoch = len(dataset) // (self.config.batch_size * self.world)
        if per_epoch == 0:
            raise UserInputError(
                f"dataset split {self.config.data.split!r} has {len(dataset)} chunks, fewer than batch_size x processes "
                f"= {self.config.batch_size * self.world}"
            )
        epoch, offset = divmod(start, per_epoch)
        while True:
            yield from _epoch_loader(dataset, epoch, offset, per_epoch, self.config, self.rank, self.world)
            epoch, offset = epoch + 1, 0

    def loss(self, batch: ChunkBatch, generator: torch.Generator) -> torch.Tensor:
        """Eq. 1-2 on a batch: clean context, noised targets, epsilon loss on the targets only."""
        latents = self.bundle.encode_frames(batch.frames.to(self.accelerator.device))  # (B, C, F, h, w)
        return self.masked_loss(latents, batch.context_mask, batch.actions, generator)

    # ------------------------------------------------------------------ shared maths
    def masked_loss(self, latents: torch.Tensor, mask: torch.Tensor, actions: list[str], generator: torch.Generator,
                    anchor: Anchor | None = None) -> torch.Tensor:
        """Eq. 1-2 on clean latents ``(B, C, F, h, w)``: context frames (``mask`` True) stay clean,
        targets are noised; epsilon loss on the targets; the action text dropped with ``text_dropout``.

        With ``whole_window_share`` > 0, that share of the samples follows Eq. 3 instead (every frame
        noised, empty text), the objective the Temp-LoRA memory trains on at generation time. With an
        ``anchor``, its distillation term is added (see ``loss_at``).
        """
        scheduler = self.bundle.noise_scheduler
        mask = mask.to(latents.device)
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        timesteps = diffusion.sample_timesteps(scheduler, latents.shape[0], generator, latents.device,
                                               *self.timestep_band())
        drop = torch.rand(len(actions), generator=generator) < self.config.text_dropout
        if self.config.whole_window_share > 0:  # drawn only when on: runs without it keep their random stream
            mask, whole = diffusion.mix_whole_window(mask, self.config.whole_window_share, generator)
            drop = drop | whole.cpu()
        texts = ["" if dropped else action for action, dropped in zip(actions, drop.tolist())]
        conditioning, logits = self.conditioning(texts)
        reference = None
        if anchor is not None:  # the frozen model's conditioning for the same (possibly dropped) texts
            with torch.no_grad():  # (a model without an action encoder: the frozen text conditioning, as for Phi)
                reference = (anchor, self.conditioning(texts, anchor.action_encoder)[0])
        weight = None
        if self.config.motion_loss_weight > 0:
            weight = diffusion.motion_weights(latents, mask, self.config.motion_loss_weight, self.config.motion_threshold)
        loss = self.loss_at(self.training_unet, latents, mask, conditioning, noise, timesteps, reference, weight)
        if logits is not None:  # the auxiliary objective (0 x logits keeps every parameter in the graph: DDP)
            labels = self.bundle.action_encoder.primitive_labels(texts)
            auxiliary = auxiliary_action_loss(logits, labels)
            loss = loss + (self.config.action_loss_weight * auxiliary if auxiliary is not None else 0.0 * logits.sum())
        return loss

    def loss_at(self, unet: torch.nn.Module, latents: torch.Tensor, mask: torch.Tensor, conditioning: torch.Tensor,
                noise: torch.Tensor, timesteps: torch.Tensor,
                reference: tuple[Anchor, torch.Tensor] | None = None, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Eq. 1-2 for given text conditioning, noise and timesteps (shared by training and validation).

        With ``reference`` = (anchor, its conditioning), plus ``anchor.weight`` x the same masked MSE
        between the prediction and the frozen anchor UNet's prediction on the same noisy input
        (distillation toward the starting model; zero while Phi equals it). ``weight``: per-position
        loss weights of the diffusion term (``motion_loss_weight``)."""
        scheduler = self.bundle.noise_scheduler
        noisy = diffusion.noise_targets(scheduler, latents, noise, timesteps, mask)  # Eq. 1
        prediction = unet(noisy, timesteps, **unet_text_kwargs(unet, conditioning)).sample
        target = diffusion.diffusion_target(scheduler, latents, noise, timesteps)
        loss = diffusion.masked_diffusion_loss(prediction, target, mask, weight)  # Eq. 2
        if reference is not None:
            anchor, anchor_conditioning = reference
            with torch.no_grad():
                anchored = anchor.unet(noisy, timesteps, **unet_text_kwargs(anchor.unet, anchor_conditioning)).sample
            loss = loss + anchor.weight * diffusion.masked_diffusion_loss(prediction, anchored, mask)
        return loss

    def conditioning(self, texts: list[str], encoder: torch.nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The UNet's text conditioning for ``texts`` and the action encoder's primitive logits (or None).

        The frozen encoder's output is cached per text (or read from ``text_features``); the action encoder,
        when the model has one, runs on it with gradients (it trains with the UNet).
        """
        encoder = encoder if encoder is not None else self.action_encoder
        if encoder is None:
            return self.encode_text(texts), None
        states, mask = self.bundle.encode_text_states(texts)
        device = self.accelerator.device
        output = encoder(states.to(device), mask.to(device))
        return output.conditioning, output.logits

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Frozen text conditioning with a cache (actions repeat a lot); no gradients."""
        if self.action_encoder is not None:
            with torch.no_grad():
                return self.conditioning(texts)[0]
        missing = [t for t in dict.fromkeys(texts) if t not in self.text_cache]
        if missing:
            for text, embedding in zip(missing, self.bundle.encode_text(missing)):
                self.text_cache[text] = embedding
        return torch.stack([self.text_cache[t] for t in texts])

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        modules = [self.unet] + ([self.action_encoder] if self.action_encoder is not None else [])
        return [p for module in modules for p in module.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ the loop
    def train(self) -> TrainResult:
        config, accelerator = self.config, self.accelerator
        if accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            # the live.* keys training takes from data.* as they ran: the file, given back to the command, is valid
            save_config(replace(config, live=live_settings(config.live, config.data)), self.output_dir / "train_config.yaml")
            if self.resumed_from is None:  # a run killed before its first checkpoint logged steps this one takes again
                trim_log(self.output_dir / "train_log.jsonl", 0)
            remove_stale_temporaries(self.output_dir, "*")  # what a killed run left half-written (logs, exports)
        accelerator.init_trackers("slowfast_vgen")
        previous_handler = signal.signal(signal.SIGTERM, self._request_stop)
        losses: dict[int, float] = {}
        skipped: list[int] = []
        nonfinite_in_a_row = 0
        window: list[float] = []
        started = time.perf_counter()
        progress = _progress(config.max_steps, self.step, disable=not accelerator.is_local_main_process)
        budget_spent = False
        micro_index = self.step * config.gradient_accumulation_steps
        batches = self.micro_batches(micro_index)
        self.unet.train()
        try:
            while self.step < config.max_steps:
                step_losses, step_nonfinite = [], False
                for _ in range(config.gradient_accumulation_steps):
                    batch = next(batches)
                    # 1. all randomness of this micro-batch from (seed, micro-batch, rank): exact resume
                    generator = torch.Generator().manual_seed(_mix(config.seed, micro_index, self.rank))
                    torch.manual_seed(_mix(config.seed, micro_index, self.rank, 1))  # UNet3D's dropout uses the global RNG
                    micro_index += 1
                    with accelerator.accumulate(self.unet):
                        # 2. loss (Eq. 1-2, or the loop's variant)
                        loss = self.loss(batch, generator)
                        # 3. a non-finite loss on any process skips the whole step everywhere: no update
                        #    from the other micro-batches of its batch either
                        if not _all_finite(loss, accelerator):
                            step_nonfinite = True
                            continue
                        accelerator.backward(loss)
                        step_losses.append(float(loss.detach()))
                        # 4. optimizer step on the accumulation boundary
                        if accelerator.sync_gradients and not step_nonfinite:
                            if config.max_grad_norm > 0:
                                accelerator.clip_grad_norm_(self.trainable_parameters(), config.max_grad_norm)
                            self.optimizer.step()
                        self.optimizer.zero_grad(set_to_none=True)
                if step_nonfinite:  # inside an accumulation, accelerate's zero_grad leaves the gradients be
                    getattr(self.optimizer, "optimizer", self.optimizer).zero_grad(set_to_none=True)
                step_lr = self.lr_scheduler.get_last_lr()[0]  # the rate this step used
                self.lr_scheduler.step()
                self.step += 1
                progress.update(1)
                if self.ema is not None:
                    self.ema.step([p for p in accelerator.unwrap_model(self.unet).parameters() if p.requires_grad])
                if self.encoder_ema is not None:
                    self.encoder_ema.step(list(accelerator.unwrap_model(self.action_encoder).parameters()))
                # 5. bookkeeping: skipped steps, logs
                if step_nonfinite:
                    skipped.append(self.step)
                    nonfinite_in_a_row += 1
                    accelerator.print(f"step {self.step}: non-finite loss, step skipped ({nonfinite_in_a_row} in a row)")
                    self._log({"event": "nonfinite_loss", "step": self.step})
                    if nonfinite_in_a_row >= config.max_nonfinite_steps:
                        raise TrainingDiverged(f"{nonfinite_in_a_row} non-finite losses in a row at step {self.step}; aborting")
                else:
                    nonfinite_in_a_row = 0
                if step_losses and not step_nonfinite:
                    losses[self.step] = _mean_across(sum(step_losses) / len(step_losses), accelerator)
                    window.append(losses[self.step])
                if self.step % config.log_every == 0 and window:
                    record = {"step": self.step, "loss": sum(window) / len(window), "lr": step_lr,
                              "seconds": round(time.perf_counter() - started, 2)}
                    accelerator.log({"loss": record["loss"], "lr": record["lr"]}, step=self.step)
                    self._log(record)
                    progress.set_postfix(loss=f"{record['loss']:.4f}")
                    window = []
                # 6. checkpoints: periodic, at the end, when SIGTERM arrived and when the time budget is spent
                stop = _any_process(self.stop_requested, accelerator)
                over_budget = bool(config.max_minutes) and time.perf_counter() - started >= 60 * config.max_minutes
                budget_spent = _any_process(over_budget, accelerator)
                if self.step % config.checkpointing_steps == 0 or self.step == config.max_steps or stop or budget_spent:
                    self.save_checkpoint()
                # 7. samples and validation, after the checkpoint: one that fails loses no training step
                if config.sample_every and self.step % config.sample_every == 0:
                    self.write_sample()
                if config.validate_every and self.step % config.validate_every == 0 and accelerator.is_main_process:
                    record = {"step": self.step, **self.validate()}
                    accelerator.log({k: v for k, v in record.items() if k != "step"}, step=self.step)
                    self._log(record)
                if stop:
                    accelerator.print(f"SIGTERM: saved checkpoint-{self.step}; resume with resume=latest")
                    break
                if budget_spent:
                    accelerator.print(f"time budget of {config.max_minutes:g} min spent at step {self.step}: "
                                      f"saved checkpoint-{self.step}; running again continues")
                    break
        finally:
            signal.signal(signal.SIGTERM, previous_handler)
            batches.close()  # shuts the DataLoader workers down now (they ignore SIGTERM: left alive, exit would hang)
            progress.close()
        interrupted = self.step < config.max_steps and not budget_spent
        if not interrupted:
            self.export_model()
        accelerator.end_training()
        checksum = float(sum(p.detach().double().sum() for p in accelerator.unwrap_model(self.unet).parameters()))
        return TrainResult(self.step, losses, interrupted, skipped, self.output_dir, checksum)

    # ------------------------------------------------------------------ checkpoints and exports
    def checkpoint_state(self) -> dict[str, Any]:
        state = {"lr_scheduler": _json_safe(self.lr_scheduler.state_dict()), "config": config_as_dict(self.config),
                 "start_model_fingerprint": self.start_fingerprint, "num_processes": self.world}
        scaler = self.accelerator.scaler  # fp16 only: its loss scale and growth count steer which steps are taken
        if scaler is not None:
            state["grad_scaler"] = _json_safe(scaler.state_dict())
        return state

    def checkpoint_tensors(self) -> dict[str, tuple[dict[str, torch.Tensor], dict[str, str]]]:
        """Further state a subclass needs for an exact resume, as named safetensors files (called on every process)."""
        return {}

    def save_checkpoint(self) -> None:
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        tensors = self.checkpoint_tensors()
        if accelerator.is_main_process:
            optimizer = getattr(self.optimizer, "optimizer", self.optimizer)  # unwrap accelerate's wrapper
            extra = {"action_encoder": accelerator.unwrap_model(self.action_encoder)} if self.action_encoder is not None else {}
            save_checkpoint(
                self.output_dir, self.step, plain_unet(accelerator.unwrap_model(self.unet)), optimizer,
                self.checkpoint_state(), ema=self.ema, total_limit=self.config.checkpoints_total_limit or None,
                extra_modules=extra, extra_emas={"ema_action_encoder": self.encoder_ema} if self.encoder_ema else None,
                extra_tensors=tensors,
            )
        accelerator.wait_for_everyone()

    def load_checkpoint(self, path: Path) -> None:
        state = read_checkpoint_state(path)
        check_checkpoint_files(path, state)
        check_resume_settings(path, state, self.config)
        saved_processes = state.get("num_processes", self.world)  # absent in older checkpoints: not checked
        if saved_processes != self.world:  # the global batch and each process's share of the data order change
            raise UserInputError(f"checkpoint {path} was saved by a run of {saved_processes} process(es), this run has "
                                 f"{self.world}: resume with {saved_processes} (the global batch and the data order "
                                 "depend on it), or give a new output_dir")
        started_from = state.get("start_model_fingerprint")  # absent in older checkpoints: not checked
        if started_from and started_from != self.start_fingerprint:
            raise UserInputError(f"checkpoint {path} continues a run that started from another model than "
                                 f"init_from={self.config.init_from} holds now (its weights differ); resume with the "
                                 "model it started from, or give a new output_dir")
        load_unet_weights(self.bundle.unet, path)
        if self.bundle.action_encoder is not None:
            load_module_weights(self.bundle.action_encoder, path, "action_encoder")
        try:
            load_optimizer_state(self.optimizer, path / "optimizer.safetensors")
        except Exception as err:  # wrong shapes, damaged file
            raise UserInputError(f"checkpoint {path} is corrupt or does not fit: optimizer state: {str(err).splitlines()[0]}") from None
        try:
            schedule = state["lr_scheduler"]
            problem = _schedule_problem(schedule, state["step"], len(self.optimizer.param_groups))
            if problem:
                raise ValueError(problem)
            self.lr_scheduler.load_state_dict(schedule)
        except (KeyError, TypeError, ValueError) as err:
            raise UserInputError(f"checkpoint {path} is corrupt: trainer_state.json: no usable lr_scheduler ({err!r})") from None
        self.load_grad_scaler(path, state)
        device = self.accelerator.device
        if self.ema is not None and not (path / "ema").is_dir():  # saved with use_ema off: start it here
            self.ema, self.encoder_ema = self.new_emas()
            self.accelerator.print(f"{path} holds no EMA (saved with use_ema off): the EMA starts from its weights")
        elif self.ema is not None:
            try:
                self.ema.load_state_dict(read_ema_model(path / "ema", type(self.bundle.unet)).state_dict())
            except Exception as err:  # damaged or foreign ema/ folder
                raise UserInputError(f"checkpoint {path} is corrupt or does not fit: ema: {first_line(err)}") from None
            self.ema.to(device)  # loaded on the CPU: the next EMA step would mix devices
        if self.encoder_ema is not None and (path / "ema").is_dir():
            encoder_ema = path / "ema_action_encoder.safetensors"
            if not encoder_ema.is_file():  # was ignored: the encoder's EMA restarted, the resume was not exact
                raise UserInputError(f"checkpoint {path} is incomplete or corrupt: {encoder_ema.name} is missing "
                                     "(it has the UNet's ema/)")
            load_ema_state(self.encoder_ema, encoder_ema)
            self.encoder_ema.to(device)
        self.step = int(state["step"])
        if self.accelerator.is_main_process:  # a run killed past its checkpoint logged steps it now takes again
            trim_log(self.output_dir / "train_log.jsonl", self.step)
        self.accelerator.print(f"resumed from {path} at step {self.step}")

    def load_grad_scaler(self, path: Path, state: dict) -> None:
        """Restore fp16's loss scaler (scale and growth count), so that a resumed run skips and scales the
        steps an uninterrupted one would; without it the scale restarts at 65,536 and the first steps after
        every resume overflow and are skipped."""
        scaler, saved = self.accelerator.scaler, state.get("grad_scaler")
        if scaler is None:
            return
        if saved is None:  # saved before the scaler was recorded
            self.accelerator.print(f"{path} holds no fp16 loss scale (saved before it was recorded): it restarts")
            return
        problem = _grad_scaler_problem(saved)
        if problem:
            raise UserInputError(f"checkpoint {path} is corrupt: trainer_state.json: grad_scaler {problem}")
        scaler.load_state_dict(saved)

    def export_model(self) -> Path | None:
        """The final model directory ``output_dir/model`` (EMA weights when enabled), loadable by ``sfvgen``."""
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            return None
        unet = accelerator.unwrap_model(self.unet)
        encoder = accelerator.unwrap_model(self.action_encoder) if self.action_encoder is not None else None
        if self.ema is not None:
            trainable = [p for p in unet.parameters() if p.requires_grad]
            self.ema.store(trainable)
            self.ema.copy_to(trainable)
        if self.encoder_ema is not None:
            self.encoder_ema.store(list(encoder.parameters()))
            self.encoder_ema.copy_to(list(encoder.parameters()))
        metadata = {**self.bundle.metadata, "generation": self.exported_generation(),
                    "trained_timesteps": list(self.timestep_band())}  # lets sfvgen name sampler steps outside it
        export = ModelBundle(plain_unet(unet), self.bundle.vae, self.bundle.text_encoder, self.bundle.tokenizer,
                             self.bundle.noise_scheduler, metadata, action_encoder=encoder,
                             text_features=self.bundle.text_features)
        path = export.save_pretrained(self.output_dir / "model")
        if self.ema is not None:
            self.ema.restore(trainable)
        if self.encoder_ema is not None:
            self.encoder_ema.restore(list(encoder.parameters()))
        return path

    def load_validation_batch(self) -> ChunkBatch:
        """``validation_chunks`` chunks spread evenly over the validation split, full context."""
        if self.config.data_source == "live":
            stream = LiveWorldChunks(self.live_config(self.config.validation_split))
            return collate_chunks([stream.sample(i) for i in range(max(2, self.config.validation_chunks))])
        data = replace(self.config.data, split=self.config.validation_split, context_frames_min=self.config.data.context_frames_max)
        dataset = ChunkDataset(data)
        count = min(self.config.validation_chunks, len(dataset))
        if count < 2:
            raise UserInputError(f"validation split {self.config.validation_split!r} needs at least 2 chunks, has {len(dataset)}")
        picks = torch.linspace(0, len(dataset) - 1, count).round().long().tolist()
        return collate_chunks([dataset[i] for i in picks])

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Masked loss (Eq. 2) on fixed validation chunks with fixed noise and evenly spaced timesteps,
        once with each chunk's own action, once with the actions shuffled between chunks, once with no
        action. ``val_loss_shuffled_action - val_loss`` is how much the model uses the action text.
        ``val_loss_whole_window`` is Eq. 3 on the same chunks (every frame noised, no text): the
        objective of the Temp-LoRA memory (``whole_window_share`` trains the base model on it too).

        Runs on the main process only, on the unwrapped UNet (no collective), in eval mode; the
        training RNG streams are untouched, so validation does not change the training losses.
        """
        if self.validation_batch is None:
            self.validation_batch = self.load_validation_batch()
        batch, scheduler = self.validation_batch, self.bundle.noise_scheduler
        unet = self.accelerator.unwrap_model(self.unet)
        unet.eval()
        device = self.accelerator.device
        latents = self.bundle.encode_frames(batch.frames.to(device))
        mask = batch.context_mask.to(device)
        generator = torch.Generator().manual_seed(self.config.seed)
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        low, high = self.timestep_band()
        timesteps = torch.linspace(low, high - 1, latents.shape[0]).round().long().to(device)
        actions = list(batch.actions)
        empty, whole_window = [""] * len(actions), torch.zeros_like(mask)
        runs = {"val_loss": (actions, mask), "val_loss_shuffled_action": (actions[1:] + actions[:1], mask),
                "val_loss_no_action": (empty, mask), "val_loss_whole_window": (empty, whole_window)}
        encoder = self.accelerator.unwrap_model(self.action_encoder) if self.action_encoder is not None else None
        if encoder is not None:
            encoder.eval()
        record = {name: float(self.loss_at(unet, latents, run_mask, self.conditioning(texts, encoder)[0], noise, timesteps))
                  for name, (texts, run_mask) in runs.items()}
        if encoder is not None:
            encoder.train()
        unet.train()
        return record

    def write_sample(self) -> None:
        """A short generated video (no memory) from the first training chunk's first frame (main process)."""
        if not self.accelerator.is_main_process:
            return
        from .session import GenerationConfig, GenerationSession
        from .video_io import auto_upscale, tensor_to_frames, write_video

        unet = self.accelerator.unwrap_model(self.unet)
        sample = LiveWorldChunks(self.live_config()).sample(0) if self.config.data_source == "live" else ChunkDataset(self.config.data)[0]
        first = tensor_to_frames(sample.context[:, :1])[0]  # (H, W, 3) uint8
        window = self.config.data.context_frames_max + self.config.data.target_frames
        config = GenerationConfig(frames_per_chunk=self.config.data.target_frames,
                                  context_frames=self.config.data.context_frames_max, window=window,
                                  fast=FastLearnerConfig(mode="off"))
        config.sampler.num_inference_steps = 10
        encoder = self.accelerator.unwrap_model(self.action_encoder) if self.action_encoder is not None else None
        sample_bundle = ModelBundle(plain_unet(unet), self.bundle.vae, self.bundle.text_encoder, self.bundle.tokenizer,
                                    self.bundle.noise_scheduler, self.bundle.metadata, action_encoder=encoder,
                                    text_features=self.bundle.text_features)
        session = GenerationSession(sample_bundle, config)
        session.start(first)
        session.generate(list(self.config.sample_actions))
        write_video(self.output_dir / "samples" / f"step-{self.step}.mp4", session.video(), fps=self.bundle.fps,
                    upscale=auto_upscale(first.shape[1]))
        unet.train()
        if encoder is not None:
            encoder.train()

    def _log(self, record: dict) -> None:
        if self.accelerator.is_main_process:
            with open(self.output_dir / "train_log.jsonl", "a") as handle:
                handle.write(json.dumps(record) + "\n")

    def _request_stop(self, signum, frame) -> None:
        self.stop_requested = True


class SlowFastLoopTrainer(SlowTrainer):
    """Algorithm 1b: fast learning per episode (inner loop), slow learning with Theta_i frozen (outer loop).

    One *iteration* collects ``D_s`` from ``episodes_per_iteration`` episodes per process: for each
    episode a fresh Temp-LoRA runs over its ground-truth chunks ``X_0..X_{I-1}``, recording
    ``(X_i, X_{i+1}, a_i, Theta_i)`` and then updating ``Theta_i -> Theta_{i+1}`` with the fast
    rule (Eq. 3) on ``X_i ⊕ X_{i+1}`` while Phi is fixed. The outer loop then takes one
    micro-batch per record: ``Theta_i`` is loaded into the LoRA (frozen) and Phi is updated with
    the masked conditional loss of predicting ``X_{i+1}`` from ``X_i`` and the action. A
    ``loop.memoryless_share`` of the episodes is recorded with ``Theta_i = None``: their records
    train Phi with the LoRA switched off, so the base model does not come to depend on a memory. As in
    generation (Algorithm 1a), ``X_i`` enters as its last ``f_p`` frames (``data.context_frames_*``),
    in both the record and the fast update.
    """

    config: LoopTrainConfig

    def exported_generation(self) -> dict[str, Any]:
        """Plus the Temp-LoRA settings Phi was trained with: generation with the exported model uses them."""
        return {**super().exported_generation(), "fast": asdict(self.config.fast)}

    def setup_model(self) -> None:
        unet = self.bundle.unet
        self.anchor = None
        if self.config.loop.anchor_weight:  # the starting model, frozen (setup runs before a resume loads Phi)
            encoder = self.bundle.action_encoder
            self.anchor = Anchor(copy.deepcopy(unet).requires_grad_(False).eval(),
                                 copy.deepcopy(encoder).requires_grad_(False).eval() if encoder is not None else None,
                                 self.config.loop.anchor_weight)
        self.fast_learner = TempLoRA(unet, self.bundle.noise_scheduler, self.config.fast)
        self.lora_names = set(self.fast_learner.parameters)
        self._set_trainable(slow=True)
        self.records: tuple[int, list[dict]] | None = None  # (iteration, its records D_s) being trained on
        self.resumed_records: tuple[int, list[dict]] | None = None  # read from a checkpoint inside an iteration

    def _set_trainable(self, slow: bool) -> None:
        """Slow phase: Phi trainable, Theta frozen; fast phase: the reverse."""
        for name, parameter in self.bundle.unet.named_parameters():
            parameter.requires_grad_((name in self.lora_names) != slow)

    def micro_batches(self, start: int) -> Iterator[dict]:
        """Records of D_s, one per micro-batch; iteration k's records depend only on (seed, k, Phi)."""
        from .data.episodes import EpisodeDataset

        config = self.config
        episodes = EpisodeDataset(config.data, config.loop.chunks_per_episode)
        iteration, offset = divmod(start, self.records_per_iteration)
        while True:
            saved, self.resumed_records = self.resumed_records, None
            # resumed inside an iteration: its saved records (collected with Phi as it was when the iteration began)
            records = saved[1] if saved is not None and saved[0] == iteration else self.collect(episodes, iteration)
            self.records = (iteration, records)
            yield from records[offset:]
            iteration, offset = iteration + 1, 0

    @property
    def records_per_iteration(self) -> int:
        return self.config.loop.episodes_per_iteration * (self.config.loop.chunks_per_episode - 1)

    def checkpoint_tensors(self) -> dict[str, tuple[dict[str, torch.Tensor], dict[str, str]]]:
        """Inside an iteration, its records (every process's) as ``loop_records.safetensors``: a resume
        recomputing them would collect them with Phi as it is now, not as it was when they were collected."""
        iteration, offset = divmod(self.step * self.config.gradient_accumulation_steps, self.records_per_iteration)
        if offset == 0 or self.records is None or self.records[0] != iteration:
            return {}
        records = [_record_to(record, "cpu") for record in self.records[1]]
        if self.world > 1:
            from accelerate.utils import gather_object

            per_process = gather_object([records])
        else:
            per_process = [records]
        return {LOOP_RECORDS: _records_to_tensors(iteration, per_process)}

    def load_checkpoint(self, path: Path) -> None:
        super().load_checkpoint(path)
        file = path / f"{LOOP_RECORDS}.safetensors"
        inside, offset = divmod(self.step * self.config.gradient_accumulation_steps, self.records_per_iteration)
        if offset and not file.is_file():  # collecting them again with Phi as it is now would not be this run
            raise UserInputError(f"checkpoint {path} is incomplete or corrupt: {file.name} is missing (it was saved "
                                 f"inside iteration {inside}, whose records it holds)")
        if offset:
            iteration, records = _records_from_file(file, self.rank)
            if iteration != inside:
                raise UserInputError(f"checkpoint {path} is corrupt: {file.name} holds the records of iteration "
                                     f"{iteration}, but the checkpoint was saved inside iteration {inside}")
            device = self.accelerator.device
            self.resumed_records = (iteration, [_record_to(record, device) for record in records])

    def collect(self, episodes, iteration: int) -> list[dict]:
        """The inner loop: fast learning over each episode's chunks with Phi fixed -> D_s."""
        config = self.config
        generator = torch.Generator().manual_seed(_mix(config.seed, 10_000_019 + iteration, self.rank))
        torch.manual_seed(_mix(config.seed, 10_000_019 + iteration, self.rank, 1))  # dropout in the fast updates
        count = config.loop.episodes_per_iteration
        order = torch.randperm(len(episodes), generator=generator).tolist()
        chosen = [order[(iteration * count * self.world + self.rank * count + k) % len(order)] for k in range(count)]
        unet, device = self.accelerator.unwrap_model(self.unet), self.accelerator.device
        uncond = self.encode_text([""])
        records = []
        self._set_trainable(slow=False)
        try:
            for index in chosen:
                memoryless = (config.loop.memoryless_share > 0
                              and float(torch.rand((), generator=generator)) < config.loop.memoryless_share)
                chunks, actions = episodes[index]  # (I, 3, K, H, W), I actions
                latents = [self.bundle.encode_frames(chunk[None].to(device)) for chunk in chunks]  # I x (1, C, K, h, w)
                self.fast_learner.reset()  # Theta_0^e: a fresh memory per episode
                for i in range(len(latents) - 1):
                    # X_i as generation sees it: its last f_p frames (f_p uniform in [context_frames_min, max])
                    low, high = config.data.context_frames_min, min(config.data.context_frames_max, latents[i].shape[2])
                    f_p = int(torch.randint(low, high + 1, (1,), generator=generator)) if high > low else high
                    context = latents[i][:, :, -f_p:]
                    theta = None if memoryless else self.fast_learner.state_dict()
                    records.append({"context": context, "target": latents[i + 1], "action": actions[i + 1],
                                    "theta": theta})  # D_s += (X_i, X_{i+1}, Theta_i)
                    if memoryless:
                        continue
                    unet.train()
                    history = torch.cat(latents[: i + 2], dim=2) if config.fast.needs_history else None
                    self.fast_learner.update(context, latents[i + 1], generator, uncond,
                                             text_embeddings=self.encode_text([actions[i + 1]]),
                                             history=history)  # Eq. 3 with Phi fixed
        finally:
            self._set_trainable(slow=True)
        return records

    def loss(self, record: dict, generator: torch.Generator) -> torch.Tensor:
        """Phi's loss with Theta_i applied and frozen: predict X_{i+1} from X_i and the action (Eq. 1-2).

        A memoryless record (``theta`` None) computes the same loss with the LoRA switched off, plus the
        distillation term toward the starting model when ``loop.anchor_weight`` > 0."""
        context, target = record["context"], record["target"]
        latents = torch.cat([context, target], dim=2)  # (1, C, f_p + f_g, h, w)
        mask = diffusion.context_mask(1, context.shape[2], target.shape[2], latents.device)
        if record["theta"] is None:
            with use_adapter(self.bundle.unet, None):
                return self.masked_loss(latents, mask, [record["action"]], generator, self.anchor)
        self.fast_learner.load_state_dict(record["theta"])
        return self.masked_loss(latents, mask, [record["action"]], generator)


# ---------------------------------------------------------------------------- helpers
LOOP_RECORDS = "loop_records"


def _record_to(record: dict, device) -> dict:
    theta = None if record["theta"] is None else {k: v.to(device) for k, v in record["theta"].items()}
    return {**record, "context": record["context"].to(device), "target": record["target"].to(device), "theta": theta}


def _records_to_tensors(iteration: int, per_process: list[list[dict]]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The slow-fast loop's records (X_i, X_{i+1}, action, Theta_i or None) of every process as flat
    safetensors entries ``<process>.<record>.<part>`` and JSON metadata (actions, which carry a memory)."""
    tensors, entries = {}, []
    for process, records in enumerate(per_process):
        entries.append([])
        for index, record in enumerate(records):
            prefix = f"{process}.{index}."
            tensors[prefix + "context"], tensors[prefix + "target"] = record["context"], record["target"]
            for name, value in (record["theta"] or {}).items():
                tensors[prefix + "theta." + name] = value
            entries[-1].append({"action": record["action"], "memory": record["theta"] is not None})
    return tensors, {"iteration": str(iteration), "records": json.dumps(entries)}


def _records_from_file(path: Path, rank: int) -> tuple[int, list[dict]]:
    """Inverse of :func:`_records_to_tensors` for one process; a damaged file is a one-line error."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            entries = json.loads(metadata["records"])[rank]
            records = []
            for index, entry in enumerate(entries):
                prefix, theta_prefix = f"{rank}.{index}.", f"{rank}.{index}.theta."
                theta = {key[len(theta_prefix):]: handle.get_tensor(key) for key in handle.keys()
                         if key.startswith(theta_prefix)} if entry["memory"] else None
                records.append({"context": handle.get_tensor(prefix + "context"), "target": handle.get_tensor(prefix + "target"),
                                "action": entry["action"], "theta": theta})
            return int(metadata["iteration"]), records
    except Exception as err:
        raise UserInputError(f"checkpoint file {path} is corrupt or does not fit: {first_line(err)}") from None


def check_resume_settings(path: Path, state: dict, config: TrainConfig) -> None:
    """Refuse to continue the run of checkpoint ``path`` with settings that would make it another run
    (learning rate, batch, seed, data, model, loss, ...): the optimizer and schedule come back from the
    checkpoint, so such a change was silently ignored or silently changed the data order, while
    ``train_config.yaml`` recorded it. Budget, logging and paths may change (:data:`RESUME_MAY_CHANGE`);
    ``max_steps`` only under a constant schedule, as it shapes the others. Checkpoints saved before
    their config was recorded are not checked."""
    saved = state.get("config")
    if not isinstance(saved, dict):
        return
    saved = {**SETTINGS_ADDED_SINCE, **saved}  # absent in checkpoints saved before they existed: trained without them
    live, data = saved.get("live"), saved.get("data")
    if isinstance(live, dict) and isinstance(data, dict):  # compare the live.* keys training takes from data.* as they ran
        saved = {**saved, "live": {**live, **{name: data[key] for name, key in LIVE_FROM_DATA.items() if key in data}}}
    config = replace(config, live=live_settings(config.live, config.data))
    reshaped = saved.get("max_steps") != config.max_steps and config.lr_scheduler not in CONSTANT_SCHEDULES
    check_same_run(path, saved, config, RESUME_MAY_CHANGE, more=[
        f"max_steps {config.max_steps} (saved: {saved.get('max_steps')}; it shapes the {config.lr_scheduler} schedule)"
    ] if reshaped else [])


def _grad_scaler_problem(saved: Any) -> str | None:
    """What is wrong with a saved ``GradScaler.state_dict()``, or None (torch loads any values, and a
    scale of 0 or NaN would only show as every later step being skipped)."""
    if not isinstance(saved, dict):
        return f"is {type(saved).__name__}, not an object"
    scale, tracker = saved.get("scale"), saved.get("_growth_tracker")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < float("inf"):
        return f"scale {scale!r} is not a positive finite number"
    if isinstance(tracker, bool) or not isinstance(tracker, int) or tracker < 0:
        return f"_growth_tracker {tracker!r} is not a count"
    return None


def _schedule_problem(schedule: Any, step: int, groups: int) -> str | None:
    """What is wrong with a saved LR-schedule state (``LambdaLR.state_dict``) of a checkpoint at ``step``
    for an optimizer of ``groups`` parameter groups, or None; torch loads any values and failed only at
    the next step, after a step of training."""
    if not isinstance(schedule, dict):
        return f"it is {type(schedule).__name__}, not an object"
    last_epoch, base_lrs = schedule.get("last_epoch"), schedule.get("base_lrs")
    if isinstance(last_epoch, bool) or last_epoch != step:
        return f"last_epoch {last_epoch!r} is not the checkpoint's step {step}"
    if (not isinstance(base_lrs, list) or len(base_lrs) != groups
            or not all(isinstance(lr, (int, float)) and not isinstance(lr, bool) and 0 <= lr < float("inf") for lr in base_lrs)):
        return f"base_lrs {base_lrs!r} is not {groups} finite learning rate(s)"
    return None


def _mix(*numbers: int) -> int:
    """A 63-bit seed from integers (stable across runs and processes)."""
    value = 1469598103934665603
    for number in numbers:
        value = ((value ^ (number & 0xFFFFFFFFFFFF)) * 1099511628211) % (1 << 63)
    return value


def _epoch_loader(dataset: ChunkDataset, epoch: int, offset: int, per_epoch: int, config: TrainConfig, rank: int, world: int):
    """One epoch's micro-batches for this process, starting at micro-batch ``offset``."""
    from torch.utils.data import DataLoader

    dataset.set_epoch(epoch)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(_mix(config.seed, epoch))).tolist()
    size = config.batch_size
    batches = [order[(i * world + rank) * size:(i * world + rank + 1) * size] for i in range(offset, per_epoch)]
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate_chunks, num_workers=config.num_workers,
                        worker_init_fn=ignore_sigterm if config.num_workers else None)
    yield from shut_down_when_done(iter(loader))  # a worker's UserInputError (too many unreadable videos) as one line


def _all_finite(loss: torch.Tensor, accelerator) -> bool:
    finite = torch.tensor([1.0 if torch.isfinite(loss).all() else 0.0], device=accelerator.device)
    if accelerator.num_processes > 1:
        finite = accelerator.reduce(finite, reduction="sum") / accelerator.num_processes
    return bool(finite.item() == 1.0)


def _any_process(flag: bool, accelerator) -> bool:
    value = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    if accelerator.num_processes > 1:
        value = accelerator.reduce(value, reduction="sum")
    return bool(value.item() > 0)


def _mean_across(value: float, accelerator) -> float:
    if accelerator.num_processes == 1:
        return value
    tensor = torch.tensor([value], device=accelerator.device)
    return float(accelerator.reduce(tensor, reduction="mean").item())


def _json_safe(state: dict) -> dict:
    """LR-scheduler state without callables (LambdaLR keeps its lambdas out of state_dict already)."""
    return json.loads(json.dumps(state, default=lambda value: None))


def _tracker(report_to: str):
    if report_to in ("", "none"):
        return None
    if report_to == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            try:
                import tensorboardX  # noqa: F401
            except ImportError:
                return None  # train_log.jsonl still records everything
    return report_to


def _progress(total: int, initial: int, disable: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", disable=disable, dynamic_ncols=True)


def train(config: TrainConfig) -> TrainResult:
    """Run the trainer that fits the config type (slow learning or the slow-fast loop)."""
    trainer_cls = SlowFastLoopTrainer if isinstance(config, LoopTrainConfig) else SlowTrainer
    return trainer_cls(config).train()


__all__ = ["TrainConfig", "LoopTrainConfig", "LoopConfig", "SlowTrainer", "SlowFastLoopTrainer", "TrainResult",
           "TrainingDiverged", "EXIT_PREEMPTED", "EXIT_DIVERGED", "train", "list_checkpoints"]
