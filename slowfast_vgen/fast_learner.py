"""Temp-LoRA, the fast learner (paper §3.2, Algorithm 1a, Eq. 3): episodic memory in LoRA weights.

The UNet's weights ``Phi`` stay frozen; a peft LoRA ``Theta`` on the temporal attention
projections is trained for a few steps after every generated chunk. With the paper's rule the
training sample is the previous chunk and the new chunk concatenated into one temporal
continuum ``z' = z_0^{i-1} ⊕ z_0^i``, noised as a whole, without the action text, so the memory
is action-agnostic and has a fixed size whatever the video length.

Variants (the paper's Table 4 ablations):

* ``off``           — no fast learner.
* ``paper``         — Eq. 3 as above (default).
* ``text``          — the original Temp-LoRA: learn the input -> output pair with the action
                      text, i.e. the masked conditional loss of Eq. 2 on (previous ⊕ new).
* ``full-sequence`` — no local learning rule: each update trains on a window drawn uniformly
                      from the whole generated history instead of the latest pair.

The memory saves as a standard peft adapter directory (``adapter_config.json`` +
``adapter_model.safetensors``) that plain peft can load, plus ``fast_learner.json``: the settings
it was made with (how it learned and how strongly it is read), which peft ignores.

Several memories can share one UNet: each is a peft adapter with its own name, and
:func:`use_adapter` makes one of them (or none) the active adapter while it runs, restoring the
previous state afterwards. A :class:`~slowfast_vgen.session.GenerationSession` owns one such
adapter, so two sessions on one model never see each other's memory.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.functional import delete_adapter, set_adapter
from peft.tuners.tuners_utils import BaseTunerLayer, cast_adapter_dtype
from safetensors.torch import load_file, save_file
from torch.utils.checkpoint import checkpoint

try:
    from peft.utils.error import NoMatchingPeftModuleError
except ImportError:  # older peft raised a plain ValueError when target_modules matched nothing
    NoMatchingPeftModuleError = ValueError

from . import diffusion
from .model import frozen_weights_on_fast_path, unet_text_kwargs
from .checkpointing import load_optimizer_state, save_optimizer_state
from .config import help_field
from .errors import UserInputError, first_line, read_json_object
from .io_utils import atomic_output_dir, atomic_write_json

FAST_MODES = ("off", "paper", "text", "full-sequence")
TEMPORAL_ATTENTION_REGEX = (
    r".*(temp_attentions\.\d+|transformer_in)\.transformer_blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)"
)
ADAPTER_NAME = "temp_lora"
PEFT_PREFIX = "base_model.model."  # key prefix of adapters saved by peft's PeftModel
SETTINGS_FILE = "fast_learner.json"  # beside peft's files in a saved memory: the FastLearnerConfig it was made with


@dataclass
class FastLearnerConfig:
    """Temp-LoRA hyper-parameters (paper: rank 32, Adam, lr 1e-4)."""

    mode: str = help_field("paper", f"fast-learning rule: {' | '.join(FAST_MODES)}")
    rank: int = help_field(32, "LoRA rank")
    alpha: float = help_field(32.0, "LoRA alpha (scale = alpha / rank)")
    learning_rate: float = help_field(1e-4, "Adam learning rate of the LoRA")
    steps_per_chunk: int = help_field(1, "gradient steps after every generated chunk")
    batch_size: int = help_field(1, "noise draws (timesteps) per gradient step")
    replay: int = help_field(
        0, "paper rule only: windows drawn uniformly from the generated history that every memory step "
        "trains on besides the latest pair, so older places (the first frame among them) are rehearsed "
        "instead of overwritten (0 = the paper's local rule)"
    )
    target_modules: str = help_field(
        TEMPORAL_ATTENTION_REGEX, "regex over UNet module names that get a LoRA (default: temporal attention)"
    )
    max_grad_norm: float = help_field(1.0, "gradient clipping of the LoRA update (0 = off)")
    min_timestep: int = help_field(
        0, "the memory trains on noise levels t >= min_timestep only (0 = all, the paper): high t is where a "
        "chunk's layout is decided, low t its texture"
    )
    max_timestep: Optional[int] = help_field(
        None, "the memory trains on noise levels t < max_timestep only (null = up to the model's last step)"
    )
    read_scale: float = help_field(
        1.0, "how strongly the memory is read when sampling: each LoRA layer's W + read_scale * (alpha / r) B A "
        "(1 = the paper; above 1 amplifies what the memory learned, 0 samples without it); the memory update "
        "always trains the LoRA at scale 1"
    )
    checkpointing: bool = help_field(
        False, "recompute each UNet layer's activations in the backward pass of the memory step "
        "(same update; embedded model on the CPU: peak 780 -> 663 MB, update 0.25 -> 0.41 s)"
    )
    seed: int = help_field(0, "seed of the LoRA's initial A matrices")

    @property
    def needs_history(self) -> bool:
        """Whether the update rule reads the whole generated history (``full-sequence``, ``replay``)."""
        return self.mode == "full-sequence" or self.replay > 0

    def __post_init__(self) -> None:
        if str(self.mode).lower() == "false":  # YAML 1.1 reads a bare `off` as the boolean false
            self.mode = "off"
        if self.mode not in FAST_MODES:
            raise ValueError(f"fast mode must be one of {', '.join(FAST_MODES)}, got {self.mode!r}")
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if self.steps_per_chunk < 0:
            raise ValueError(f"steps_per_chunk must be >= 0, got {self.steps_per_chunk}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.replay < 0:
            raise ValueError(f"fast.replay must be >= 0, got {self.replay}")
        if self.replay and self.mode not in ("paper", "off"):
            raise ValueError(f"fast.replay rehearses history windows under the paper rule, not mode {self.mode!r}")
        if not 0 <= self.learning_rate < float("inf"):  # also refuses NaN
            raise ValueError(f"fast.learning_rate must be a finite number >= 0, got {self.learning_rate}")
        if not 0 < self.alpha < float("inf"):
            raise ValueError(f"fast.alpha must be a finite number > 0, got {self.alpha}")
        if not 0 <= self.max_grad_norm < float("inf"):
            raise ValueError(f"fast.max_grad_norm must be a finite number >= 0 (0 = off), got {self.max_grad_norm}")
        try:
            re.compile(self.target_modules)
        except (re.error, TypeError) as err:
            raise ValueError(f"fast.target_modules is not a valid regular expression: {self.target_modules!r} ({err})") from None
        if self.min_timestep < 0:
            raise ValueError(f"fast.min_timestep must be >= 0, got {self.min_timestep}")
        if self.max_timestep is not None and self.max_timestep <= self.min_timestep:
            raise ValueError(f"fast.max_timestep must be above fast.min_timestep, got {self.max_timestep} <= "
                             f"{self.min_timestep}")
        if not 0 <= self.read_scale < float("inf"):  # also refuses NaN
            raise ValueError(f"fast.read_scale must be a finite number >= 0, got {self.read_scale}")
        if not -(2**63) <= self.seed <= 2**64 - 1:
            raise ValueError(f"fast.seed must be an integer in [-2**63, 2**64 - 1], got {self.seed}")


def check_timestep_band(config: FastLearnerConfig, noise_scheduler) -> None:
    """A one-line :class:`UserInputError` when ``fast.min_timestep`` / ``fast.max_timestep`` do not fit the
    model's noise schedule (``noise_scheduler.config.num_train_timesteps`` steps); the limits that need
    no model are checked by :class:`FastLearnerConfig` itself. A generation session checks this when it
    is made, whatever ``fast.mode`` (with ``off`` the band is used once the rule is switched on)."""
    steps = noise_scheduler.config.num_train_timesteps
    if config.min_timestep >= steps:
        raise UserInputError(f"fast.min_timestep must be below the model's {steps} training timesteps, "
                             f"got {config.min_timestep}")
    if config.max_timestep is not None and config.max_timestep > steps:
        raise UserInputError(f"fast.max_timestep must be at most the model's {steps} training timesteps, "
                             f"got {config.max_timestep}")


REGEX_CHECK_SECONDS = 10.0  # a pattern that takes longer to match a UNet's module names is refused
_PATTERNS_THAT_FINISHED: set[tuple[str, tuple[str, ...]]] = set()  # checked once per process and model layout


def check_target_modules_finish(pattern: str, module_names: Sequence[str], seconds: float | None = None) -> None:
    """A one-line :class:`UserInputError` when ``fast.target_modules`` (from a saved session, a model's
    ``slowfast_vgen.json`` or an override) does not finish matching ``module_names`` within ``seconds``
    (default :data:`REGEX_CHECK_SECONDS`).

    peft matches the pattern against every module name in this process with the GIL held, so a
    catastrophically backtracking pattern such as ``(.|.)*Z`` would hang it for good (in the web app,
    every user's). The match is tried first in a separate Python process that can be stopped; the
    built-in pattern is trusted and not checked.
    """
    if pattern == TEMPORAL_ATTENTION_REGEX or (pattern, tuple(module_names)) in _PATTERNS_THAT_FINISHED:
        return
    seconds = REGEX_CHECK_SECONDS if seconds is None else seconds
    code = "import json, re, sys\np, names = json.load(sys.stdin)\nr = re.compile(p)\nfor n in names: r.fullmatch(n)"
    try:
        subprocess.run([sys.executable, "-I", "-c", code], input=json.dumps([pattern, list(module_names)]),
                       text=True, capture_output=True, timeout=seconds, check=True)
    except subprocess.TimeoutExpired:
        raise UserInputError(f"fast.target_modules {pattern!r} did not finish matching the model's layers within "
                             f"{seconds:g} s (a regular expression that backtracks without end)") from None
    except subprocess.CalledProcessError as err:
        raise UserInputError(f"fast.target_modules {pattern!r} cannot be matched: "
                              f"{(err.stderr.strip().splitlines() or ['exit status %d' % err.returncode])[-1]}") from None
    _PATTERNS_THAT_FINISHED.add((pattern, tuple(module_names)))


class TempLoRA:
    """A LoRA injected into a UNet in place, with its own optimizer and the memory-update rule.

    ``unet``'s base parameters are frozen (``requires_grad=False``) and never modified. The LoRA is
    the peft adapter ``adapter_name``; other adapters on the same UNet are left in place (one with
    the same name is replaced). Like peft's ``inject_adapter_in_model``, construction leaves the new
    adapter as the active one; :meth:`update` and :meth:`loss` make it the only active adapter while
    they run (:func:`use_adapter`), whatever another user of the UNet activated in between.
    """

    def __init__(self, unet: torch.nn.Module, noise_scheduler, config: FastLearnerConfig,
                 adapter_name: str = ADAPTER_NAME) -> None:
        if config.mode == "off":
            raise ValueError("TempLoRA with mode 'off' is meaningless: build no fast learner instead")
        check_timestep_band(config, noise_scheduler)
        # from a model's slowfast_vgen.json, a session or an override: peft would match it with the GIL held
        check_target_modules_finish(config.target_modules, [name for name, _ in unet.named_modules()])
        self.unet = unet
        self.noise_scheduler = noise_scheduler
        self.config = config
        self.adapter_name = adapter_name
        self.lora_config = LoraConfig(
            r=config.rank,
            lora_alpha=config.alpha,
            target_modules=config.target_modules,
            lora_dropout=0.0,
            init_lora_weights=True,  # B = 0: a fresh memory leaves the model's output unchanged
        )
        remove_adapter(unet, adapter_name)  # a reused name starts from a fresh memory
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")  # several adapters: intended
            torch.manual_seed(config.seed)
            try:
                inject_adapter_in_model(self.lora_config, unet, adapter_name=adapter_name)
            except NoMatchingPeftModuleError:
                remove_adapter(unet, adapter_name)  # the model as it was
                raise UserInputError(f"Temp-LoRA target regex matched no module of the UNet: "
                                     f"{config.target_modules!r}") from None
        # the LoRA and Adam in float32 on a float16 / bfloat16 UNet (as peft's get_peft_model does): in
        # float16, Adam's eps (1e-8) rounds to 0 and the first step on A (zero gradient while B = 0) is 0 / 0
        cast_adapter_dtype(unet, adapter_name)
        set_adapter(unet, adapter_name)  # the new memory is the active adapter (as on a UNet without one)
        self.parameters = {name: p for name, p in unet.named_parameters() if f".{adapter_name}." in name}
        if not self.parameters:
            raise UserInputError(f"Temp-LoRA target regex matched no module of the UNet: {config.target_modules!r}")
        for name, parameter in unet.named_parameters():
            parameter.requires_grad_(name in self.parameters)
        self.initial_state = {name: p.detach().clone() for name, p in self.parameters.items()}
        self.optimizer = torch.optim.Adam(list(self.parameters.values()), lr=config.learning_rate)

    # ------------------------------------------------------------------ the update rule
    def update(
        self,
        previous: torch.Tensor,
        new: torch.Tensor,
        generator: torch.Generator,
        unconditional_embeddings: torch.Tensor,
        text_embeddings: torch.Tensor | None = None,
        history: torch.Tensor | None = None,
    ) -> float:
        """Train the LoRA on one chunk pair; returns the mean loss of the steps taken.

        ``previous`` ``(1, C, f_p, h, w)`` is the context the chunk was generated from and ``new``
        ``(1, C, f_g, h, w)`` the generated chunk (both clean latents). ``history`` (all latents so
        far, ``(1, C, N, h, w)``) is needed by the ``full-sequence`` variant and by ``replay``.
        """
        losses, trained = [], list(self.parameters.values())
        with self.activated(), activation_checkpointing(self.unet, enabled=self.config.checkpointing), \
                frozen_weights_on_fast_path(self.unet):
            for _ in range(self.config.steps_per_chunk):
                self.optimizer.zero_grad(set_to_none=True)
                loss = self._loss(previous, new, generator, unconditional_embeddings, text_embeddings, history)
                for parameter, gradient in zip(trained, torch.autograd.grad(loss, trained)):  # the LoRA's only
                    parameter.grad = gradient
                if self.config.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(trained, self.config.max_grad_norm)
                self.optimizer.step()
                losses.append(float(loss.detach()))
        self.optimizer.zero_grad(set_to_none=True)
        return sum(losses) / len(losses) if losses else float("nan")

    def loss(
        self,
        previous: torch.Tensor,
        new: torch.Tensor,
        generator: torch.Generator,
        unconditional_embeddings: torch.Tensor,
        text_embeddings: torch.Tensor | None = None,
        history: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The memory loss of the configured variant on one pair (differentiable w.r.t. the LoRA)."""
        with self.activated():
            return self._loss(previous, new, generator, unconditional_embeddings, text_embeddings, history)

    def _loss(
        self,
        previous: torch.Tensor,
        new: torch.Tensor,
        generator: torch.Generator,
        unconditional_embeddings: torch.Tensor,
        text_embeddings: torch.Tensor | None,
        history: torch.Tensor | None,
    ) -> torch.Tensor:
        mode, repeat = self.config.mode, self.config.batch_size
        sequence = torch.cat([previous, new], dim=2)  # z' = z_0^{i-1} ⊕ z_0^i: (1, C, f_p+f_g, h, w)
        if mode == "full-sequence":
            if history is None:
                raise ValueError("the full-sequence variant needs the generated history")
            sequence = _random_window(history, sequence.shape[2], generator)
        clean = sequence.expand(repeat, *sequence.shape[1:])  # (R, C, F, h, w)
        if self.config.replay:
            # rehearsal: the latest pair plus `replay` windows of the history, each noised as a whole
            if history is None:
                raise ValueError("fast.replay needs the generated history")
            if history.shape[2] >= sequence.shape[2]:  # a shorter history lies inside the pair already
                windows = [_random_window(history, sequence.shape[2], generator) for _ in range(self.config.replay)]
                clean = torch.cat([clean, *(w.expand(repeat, *w.shape[1:]) for w in windows)])  # (R (1 + replay), C, F, h, w)
                repeat = clean.shape[0]
        noise = torch.randn(clean.shape, generator=generator, dtype=torch.float32).to(clean)
        timesteps = diffusion.sample_timesteps(self.noise_scheduler, repeat, generator, clean.device,
                                               self.config.min_timestep, self.config.max_timestep)
        target = diffusion.diffusion_target(self.noise_scheduler, clean, noise, timesteps)
        if mode == "text":
            # original Temp-LoRA: the input -> output pair with its action text (Eq. 1-2)
            if text_embeddings is None:
                raise ValueError("the text variant needs the action's text embeddings")
            mask = diffusion.context_mask(repeat, previous.shape[2], new.shape[2], clean.device)
            noisy = diffusion.noise_targets(self.noise_scheduler, clean, noise, timesteps, mask)
            embeddings = text_embeddings.expand(repeat, *text_embeddings.shape[1:])
            prediction = self.unet(noisy, timesteps, **unet_text_kwargs(self.unet, embeddings)).sample
            return diffusion.masked_diffusion_loss(prediction, target, mask)
        # paper rule, Eq. 3: the whole sequence noised, no action text
        noisy = diffusion.noise_whole_sequence(self.noise_scheduler, clean, noise, timesteps)
        embeddings = unconditional_embeddings.expand(repeat, *unconditional_embeddings.shape[1:])
        prediction = self.unet(noisy, timesteps, **unet_text_kwargs(self.unet, embeddings)).sample
        return diffusion.sequence_diffusion_loss(prediction, target)

    # ------------------------------------------------------------------ memory management
    def activated(self):
        """Context manager: this memory is the UNet's only active adapter inside (see :func:`use_adapter`)."""
        return use_adapter(self.unet, self.adapter_name)

    @torch.no_grad()
    def reset(self) -> None:
        """Forget the episode: restore the initial LoRA (in place) and clear Adam's moments."""
        for name, parameter in self.parameters.items():
            parameter.copy_(self.initial_state[name])
        self.optimizer.state.clear()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The LoRA weights in peft's ``PeftModel`` format (``base_model.model.<module>.lora_A.weight``)."""
        state = get_peft_model_state_dict(self.unet, adapter_name=self.adapter_name)
        return {PEFT_PREFIX + k: v.detach().clone().contiguous() for k, v in state.items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the memory's LoRA weights by ``state`` (keys as :meth:`state_dict` gives them).

        Checked before anything changes: ``state`` must hold exactly this memory's LoRA weights, in
        their shapes, so a memory made on other layers (``fast.target_modules``) or another model
        is a :class:`UserInputError` and the memory in place stays as it was.
        """
        own = self.state_dict()
        for key in own.keys() - state.keys():
            raise UserInputError(f"memory does not fit this Temp-LoRA: it has no weight for {key.removeprefix(PEFT_PREFIX)} "
                                 "(made on other layers, fast.target_modules?)")
        for key in state.keys() - own.keys():
            raise UserInputError(f"memory does not fit this model: unexpected LoRA weight {key.removeprefix(PEFT_PREFIX)}")
        for key, value in own.items():
            if state[key].shape != value.shape:
                raise UserInputError(f"memory does not fit this model: {key.removeprefix(PEFT_PREFIX)} has shape "
                                     f"{tuple(state[key].shape)}, this model's is {tuple(value.shape)}")
        set_peft_model_state_dict(self.unet, {k.removeprefix(PEFT_PREFIX): v for k, v in state.items()},
                                  adapter_name=self.adapter_name)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the memory as a peft adapter directory (loadable with ``PeftModel.from_pretrained``)."""
        directory = Path(directory)
        with atomic_output_dir(directory, "adapter_config.json") as tmp:
            self.lora_config.save_pretrained(str(tmp))
            save_file(self.state_dict(), str(tmp / "adapter_model.safetensors"))
            atomic_write_json(tmp / SETTINGS_FILE, asdict(self.config))
        return directory

    def load(self, directory: str | os.PathLike) -> list[str]:
        """Load a memory saved by :meth:`save` (safetensors only); its rank, alpha and layers must
        match. Returns how the settings it was made with differ from this memory's in how it learns
        and is read (e.g. ``read_scale 0.5 -> 1.0``); empty when they agree or were not recorded."""
        settings = read_memory_settings(directory)  # every file checked before the memory in place changes
        self.load_state_dict(read_memory(directory, self.config))
        return settings_differences(settings, self.config)

    # optimizer state without pickle: tensors to safetensors, the rest to JSON
    def save_optimizer(self, path: str | os.PathLike) -> None:
        save_optimizer_state(self.optimizer, path)

    def load_optimizer(self, path: str | os.PathLike) -> None:
        load_optimizer_state(self.optimizer, path)


def read_memory(directory: str | os.PathLike, config: FastLearnerConfig) -> dict[str, torch.Tensor]:
    """The LoRA weights of a memory directory written by :meth:`TempLoRA.save`, read completely.

    :class:`UserInputError` naming the file when a file is missing or damaged (truncated JSON or
    safetensors), or when the memory's rank or alpha differs from ``config``'s: read at another
    ``alpha / r`` the same weights would be another memory.
    """
    directory = Path(directory)
    weights = directory / "adapter_model.safetensors"
    config_file = directory / "adapter_config.json"
    if not weights.is_file() or not config_file.is_file():
        raise UserInputError(f"{directory} is not a Temp-LoRA memory (needs adapter_config.json + adapter_model.safetensors)")
    try:
        saved = read_json_object(config_file)
    except (OSError, ValueError) as err:
        raise UserInputError(f"memory {config_file} is corrupt: {first_line(err)}") from None
    if saved.get("r") != config.rank:
        raise UserInputError(f"memory {directory} has LoRA rank {saved.get('r')!r}, this model uses {config.rank}")
    if saved.get("lora_alpha") != config.alpha:
        raise UserInputError(f"memory {directory} has LoRA alpha {saved.get('lora_alpha')}, this episode uses "
                             f"{config.alpha} (fast.alpha)")
    try:
        return load_file(str(weights))
    except Exception as err:  # safetensors raises its own error types
        raise UserInputError(f"memory {weights} is corrupt: {first_line(err)}") from None


def read_memory_settings(directory: str | os.PathLike) -> dict | None:
    """The settings a memory directory records in ``fast_learner.json``; ``None`` for a memory saved
    before they were recorded (or by plain peft). :class:`UserInputError` when the file is damaged."""
    path = Path(directory) / SETTINGS_FILE
    if not path.is_file():
        return None
    try:
        return read_json_object(path)
    except (OSError, ValueError) as err:
        raise UserInputError(f"memory {path} is corrupt: {first_line(err)}") from None


_SETTINGS_THAT_SHAPE_THE_MEMORY = ("mode", "learning_rate", "steps_per_chunk", "batch_size", "replay",
                                   "min_timestep", "max_timestep", "read_scale")


def settings_differences(saved: dict | None, config: FastLearnerConfig) -> list[str]:
    """``"name saved -> current"`` for each setting that decides how a memory learns or is read and
    differs between ``saved`` (a memory's recorded settings) and ``config``."""
    if not saved:
        return []
    current = asdict(config)
    return [f"{name} {saved[name]} -> {current[name]}" for name in _SETTINGS_THAT_SHAPE_THE_MEMORY
            if name in saved and saved[name] != current[name]]


def _adapter_layers(unet: torch.nn.Module) -> list[BaseTunerLayer]:
    return [module for module in unet.modules() if isinstance(module, BaseTunerLayer)]


def _adapter_names(layer: BaseTunerLayer) -> set[str]:
    return {name for attribute in layer.adapter_layer_names for name in getattr(layer, attribute).keys()}


@contextmanager
def restored_adapters(unet: torch.nn.Module) -> Iterator[None]:
    """Undo, on exit, changes to which adapters of ``unet`` are active and to their ``requires_grad``.

    A LoRA layer created inside the block (a new adapter's first layer on a plain ``Linear``)
    ends with no active adapter: the UNet computes outside the block what it computed before.
    """
    active = {layer: list(layer.active_adapters) for layer in _adapter_layers(unet)}
    flags = [(parameter, parameter.requires_grad) for layer in active
             for name, parameter in layer.named_parameters() if name.startswith("lora_")]
    try:
        yield
    finally:
        for layer in _adapter_layers(unet):  # adapters deleted inside the block stay deleted
            existing = _adapter_names(layer)
            layer.set_adapter([name for name in active.get(layer, []) if name in existing])  # sets requires_grad too
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


CHECKPOINTED_LAYERS = ("ResnetBlock2D", "TemporalConvLayer", "Transformer2DModel", "TransformerTemporalModel")
"""UNet layers whose activations the memory step recomputes instead of storing (diffusers class names)."""


@contextmanager
def activation_checkpointing(unet: torch.nn.Module, enabled: bool = True) -> Iterator[None]:
    """Inside the block, each layer of :data:`CHECKPOINTED_LAYERS` keeps only its inputs for the
    backward pass and recomputes its internals there (``torch.utils.checkpoint``, non-reentrant).

    The gradients are the same; the peak memory of a training step drops to the layer boundaries
    plus one layer's internals. diffusers' ``UNet3DConditionModel`` has no gradient checkpointing
    of its own, so the layers' ``forward`` is wrapped for the duration of the block only.
    """
    wrapped = []
    if enabled:
        for module in unet.modules():
            if type(module).__name__ in CHECKPOINTED_LAYERS and "forward" not in vars(module):
                module.forward = functools.partial(checkpoint, module.forward, use_reentrant=False,
                                                   preserve_rng_state=False)
                wrapped.append(module)
    try:
        yield
    finally:
        for module in wrapped:
            del module.forward  # back to the class's forward


@contextmanager
def merged_adapter(unet: torch.nn.Module, adapter_name: str | None, scale: float = 1.0) -> Iterator[None]:
    """Sample with the memory folded into the base weights: ``W' = W + scale (alpha / r) B A`` in every
    layer of adapter ``adapter_name``, no adapter active inside, the exact ``W`` copied back on exit.
    ``scale`` is :attr:`FastLearnerConfig.read_scale` (1: the LoRA as trained).

    The same function as running the LoRA beside the layer (up to float rounding), without
    peft's per-layer LoRA branch at every denoising step: with the embedded model on the CPU,
    0.99 s instead of 1.10-1.27 s per chunk (8 DDIM steps). The base weights are restored by copy, not by
    subtracting the delta, so they stay byte-equal however many chunks are generated.
    ``None`` (no memory): nothing to do.
    """
    if adapter_name is None:
        yield
        return
    if scale == 0:  # the memory unread: the base weights as they are (a diverged memory cannot leak in as 0 * inf)
        with use_adapter(unet, None):
            yield
        return
    layers = [layer for layer in _adapter_layers(unet) if adapter_name in getattr(layer, "lora_A", {})]
    originals = []
    try:
        with torch.no_grad():
            for layer in layers:
                weight = layer.get_base_layer().weight
                originals.append((weight, weight.detach().clone()))
                weight.add_((scale * layer.get_delta_weight(adapter_name)).to(weight.dtype))
        with use_adapter(unet, None):
            yield
    finally:
        with torch.no_grad():
            for weight, original in originals:
                weight.copy_(original)


@contextmanager
def use_adapter(unet: torch.nn.Module, adapter_name: str | None) -> Iterator[None]:
    """Run the block with ``adapter_name`` as the only active adapter of ``unet`` (``None``: no adapter,
    the base model), then restore the previously active adapters and ``requires_grad`` flags."""
    if not _adapter_layers(unet):  # a plain UNet: nothing to switch
        if adapter_name is not None:
            raise ValueError(f"the UNet has no adapter {adapter_name!r}")
        yield
        return
    with restored_adapters(unet):
        set_adapter(unet, [] if adapter_name is None else [adapter_name])  # LoRA layers skip inactive adapters
        yield


def remove_adapter(unet: torch.nn.Module, adapter_name: str = ADAPTER_NAME) -> bool:
    """Delete a Temp-LoRA adapter from ``unet`` if present (the base weights are untouched).

    The other adapters stay as they were: active or not, trainable or not.
    """
    present = any(adapter_name in getattr(module, "lora_A", {}) for module in unet.modules())
    if present:
        with restored_adapters(unet):
            for layer in _adapter_layers(unet):
                # deactivate it first, else peft activates another adapter in its place
                layer.set_adapter([name for name in layer.active_adapters if name != adapter_name])
            delete_adapter(unet, adapter_name, prefix="lora_")
    configs = getattr(unet, "peft_config", None)
    if isinstance(configs, dict):
        configs.pop(adapter_name, None)
        if not configs:
            del unet.peft_config
    return present


def base_state_dict(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The UNet's own weights under their original names, without any LoRA.

    peft wraps a targeted ``Linear`` so its weight becomes ``...to_q.base_layer.weight``; this
    undoes the renaming, so the result loads into a plain ``UNet3DConditionModel``.
    """
    return {name.replace(".base_layer.", "."): tensor for name, tensor in unet.state_dict().items() if "lora_" not in name}


def plain_unet(unet: torch.nn.Module) -> torch.nn.Module:
    """``unet`` itself when it carries no LoRA layers, else a plain copy with the base weights."""
    if not any("lora_" in name for name, _ in unet.named_parameters()) and not any(
        ".base_layer." in name for name, _ in unet.named_parameters()
    ):
        return unet
    copy = type(unet).from_config(unet.config)
    copy.load_state_dict(base_state_dict(unet))
    weight = next(unet.parameters())
    return copy.to(device=weight.device, dtype=weight.dtype)


def _random_window(history: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
    """A window of ``length`` consecutive frames drawn uniformly from ``history`` ``(1, C, N, h, w)``."""
    total = history.shape[2]
    if total <= length:
        return history
    start = int(torch.randint(0, total - length + 1, (1,), generator=generator))
    return history[:, :, start:start + length]
