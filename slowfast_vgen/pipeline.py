"""``SlowFastVGenPipeline``: the diffusers entry point (first frame + actions -> long video).

::

    import torch
    from diffusers.utils import export_to_video
    from slowfast_vgen import SlowFastVGenPipeline

    pipe = SlowFastVGenPipeline.from_pretrained("path/to/model")   # or DiffusionPipeline.from_pretrained
    output = pipe("first.png", ["move right", "move left"], generator=torch.Generator().manual_seed(0))
    export_to_video(output.frames[0], "video.mp4", fps=pipe.fps)

The pipeline wraps a :class:`~slowfast_vgen.model.ModelBundle` (loaded by :func:`load_model`, the
loader ``sfvgen`` uses) and runs a :class:`~slowfast_vgen.session.GenerationSession` configured
exactly as ``sfvgen generate`` configures it: the model's recommended settings (``generation`` in
``slowfast_vgen.json``), then ``overrides``, then the named arguments. The same seed therefore
gives the same frames as ``sfvgen generate --seed``. ``pipe.session(...)`` returns the started
session itself for streamed use (``session.generate([action])`` per chunk).

Registration with diffusers: ``DiffusionPipeline.from_pretrained(dir)`` reads ``_class_name``
from ``dir/model_index.json`` and looks the class up as ``getattr(diffusers, _class_name)``
(``diffusers.pipelines.pipeline_loading_utils._get_pipeline_class``), then builds it with its
generic per-component loader, which knows neither a text encoder shipped as a pip package nor
``slowfast_vgen.json``. ``import slowfast_vgen`` therefore routes ``DiffusionPipeline.from_pretrained``
for a directory whose index names ``SlowFastVGenPipeline`` to :meth:`SlowFastVGenPipeline.from_pretrained`
(see ``slowfast_vgen/__init__.py``), and importing this module also sets
``diffusers.SlowFastVGenPipeline``. Other directories load exactly as before.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from .errors import UserInputError
from .model import ModelBundle, load_model
from .video_io import as_shown_rgb

if TYPE_CHECKING:
    from .session import ChunkRecord, GenerationConfig, GenerationSession

PIPELINE_NAME = "SlowFastVGenPipeline"
OUTPUT_TYPES = ("np", "pil", "pt", "latent")
ImageInput = Any  # None | path | PIL image(s) | (H, W, 3) array(s) or (3, H, W) tensor(s): integers 0-255, floats [0, 1]
_LOAD_KWARGS_WITHOUT_EFFECT = ("local_files_only", "low_cpu_mem_usage", "use_safetensors")
"""diffusers ``from_pretrained`` arguments that change nothing here: loading is local and safetensors-only."""


@dataclass
class SlowFastVGenPipelineOutput(BaseOutput):
    """What :meth:`SlowFastVGenPipeline.__call__` returns.

    ``frames``: the whole video, the first frame(s) included (what ``sfvgen generate`` writes), as a batch
    of one video: ``output_type="np"`` an array ``(1, N, H, W, 3)`` float32 in ``[0, 1]``; ``"pil"`` a list
    holding one list of PIL images; ``"pt"`` a tensor ``(1, N, 3, H, W)`` in ``[0, 1]``; ``"latent"`` the
    clean latents ``(1, C, N, h, w)``. ``export_to_video(output.frames[0], path, fps=pipe.fps)`` writes it.

    ``records``: one dict per chunk (:class:`~slowfast_vgen.session.ChunkRecord`): action, frame range,
    context frames, seconds, memory-update seconds, Temp-LoRA loss, peak memory.
    """

    frames: np.ndarray | torch.Tensor | list[list[PIL.Image.Image]]
    records: list[dict[str, Any]]


_DTYPE_NAMES = ("float32", "float16", "bfloat16")
"""``torch_dtype`` strings :meth:`SlowFastVGenPipeline.from_pretrained` takes."""


class SlowFastVGenPipeline(DiffusionPipeline):
    """Action-driven long video generation: a masked conditional video diffusion model (slow learner) whose
    Temp-LoRA episodic memory (fast learner) is trained after every chunk.

    Components are those of a model directory: ``unet`` (``UNet3DConditionModel``), ``scheduler`` (the
    training noise schedule; sampling uses ``sampler.scheduler`` of the generation config, built from its
    config), ``vae`` (``None``: pixel space), ``text_encoder`` + ``tokenizer`` and ``action_encoder``
    (optional). ``metadata`` is ``slowfast_vgen.json`` (frame size, fps, recommended generation settings).
    """

    model_cpu_offload_seq = "text_encoder->action_encoder->unet->vae"
    _optional_components = ["vae", "text_encoder", "tokenizer", "action_encoder"]

    def __init__(self, unet, scheduler, vae=None, text_encoder=None, tokenizer=None, action_encoder=None,
                 metadata: dict[str, Any] | None = None, text_features: Any | None = None) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                              action_encoder=action_encoder)
        self.bundle = ModelBundle(unet, vae, text_encoder, tokenizer, scheduler, metadata,
                                  action_encoder=action_encoder, text_features=text_features)

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_bundle(cls, bundle: ModelBundle) -> "SlowFastVGenPipeline":
        """The pipeline over an existing bundle (the very same object and modules, not copies)."""
        pipeline = cls(bundle.unet, bundle.noise_scheduler, vae=bundle.vae, text_encoder=bundle.text_encoder,
                       tokenizer=bundle.tokenizer, action_encoder=bundle.action_encoder, metadata=bundle.metadata,
                       text_features=bundle.text_features)
        pipeline.bundle = bundle
        return pipeline

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> "SlowFastVGenPipeline":
        """Load a local model directory, offline and from safetensors only, on the CPU (``.to("cuda")`` after).

        Any layout ``sfvgen --model`` takes: a slowfast_vgen directory (``slowfast_vgen.json``, a text encoder
        from a pip package, an ``action_encoder/``) or a ModelScope text-to-video checkpoint in diffusers layout
        (``unet/ vae/ text_encoder/ tokenizer/ scheduler/``). Keyword arguments: ``torch_dtype`` (or ``dtype``),
        ``text_features`` (a :class:`~slowfast_vgen.text_features.TextFeatureCache` or its file: a model with an
        action encoder then loads without its text encoder); ``local_files_only``, ``low_cpu_mem_usage`` and
        ``use_safetensors=True`` are accepted and change nothing; anything else is refused.
        """
        dtype = kwargs.pop("torch_dtype", None)
        dtype = kwargs.pop("dtype", None) or dtype
        if isinstance(dtype, str):  # "float16" as transformers takes it
            dtype = getattr(torch, dtype, None) if dtype in _DTYPE_NAMES else dtype
        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise ValueError(f"torch_dtype must be a torch.dtype or one of {', '.join(_DTYPE_NAMES)}, got {dtype!r}")
        text_features = kwargs.pop("text_features", None)
        if kwargs.get("use_safetensors", True) is False:
            raise ValueError("SlowFastVGenPipeline loads safetensors weights only (use_safetensors=False was given)")
        for name in _LOAD_KWARGS_WITHOUT_EFFECT:
            kwargs.pop(name, None)
        if kwargs:
            raise ValueError(f"SlowFastVGenPipeline.from_pretrained does not take {', '.join(sorted(kwargs))} "
                             "(it loads a local model directory; move the pipeline with .to(device) afterwards)")
        if isinstance(text_features, (str, os.PathLike)):
            from .text_features import TextFeatureCache

            text_features = TextFeatureCache.load(text_features)
        bundle = load_model(pretrained_model_name_or_path, device="cpu", dtype=dtype, text_features=text_features)
        pipeline = cls.from_bundle(bundle)
        pipeline.register_to_config(_name_or_path=str(pretrained_model_name_or_path))
        return pipeline

    def save_pretrained(self, save_directory: str | os.PathLike, safe_serialization: bool = True,
                        **kwargs: Any) -> None:
        """Write the model directory (atomically, safetensors) that :meth:`from_pretrained` and ``sfvgen`` load."""
        if not safe_serialization or kwargs:
            raise ValueError("SlowFastVGenPipeline.save_pretrained writes safetensors to a local directory and takes "
                             f"no other options (got safe_serialization={safe_serialization}, {sorted(kwargs)})")
        self.bundle.save_pretrained(save_directory)

    # ------------------------------------------------------------------ geometry
    @property
    def height(self) -> int:
        return self.bundle.height

    @property
    def width(self) -> int:
        return self.bundle.width

    @property
    def fps(self) -> float:
        return self.bundle.fps

    # ------------------------------------------------------------------ generation
    def generation_config(self, fast: str | None = None, num_inference_steps: int | None = None,
                          guidance_scale: float | None = None, seed: int | None = None,
                          overrides: Sequence[str] = ()) -> "GenerationConfig":
        """The :class:`~slowfast_vgen.session.GenerationConfig` ``sfvgen generate`` builds: the config defaults,
        the model's recommended settings, ``overrides`` (``"key=value"``, e.g. ``"frames_per_chunk=4"``), then the
        named arguments (``--fast``, ``--steps``, ``--guidance``, ``--seed``). Bad values: :class:`UserInputError`."""
        from .config import load_config
        from .session import GenerationConfig

        named = {"fast.mode": fast, "seed": seed, "sampler.num_inference_steps": num_inference_steps,
                 "sampler.guidance_scale": guidance_scale}
        if isinstance(overrides, str):  # one "key=value": list() would split it into characters
            overrides = [overrides]
        dotlist = list(overrides) + [f"{key}={value}" for key, value in named.items() if value is not None]
        return load_config(GenerationConfig, None, dotlist, defaults=self.bundle.metadata.get("generation", {}))

    def session(self, image: ImageInput = None, *, fast: str | None = None, num_inference_steps: int | None = None,
                guidance_scale: float | None = None, generator: torch.Generator | None = None,
                overrides: Sequence[str] = ()) -> "GenerationSession":
        """A started :class:`~slowfast_vgen.session.GenerationSession` for streamed generation.

        ``session.generate(actions, callback=...)`` returns each call's new frames ``(n, H, W, 3) uint8``;
        ``session.video()``, ``session.records``, ``session.save(dir)`` as usual. The session owns its Temp-LoRA
        (an adapter of its own on the shared UNet): several sessions may run on one pipeline. ``close()`` it (or
        use ``with``) to free its memory at once. ``generator`` (a CPU ``torch.Generator``) draws the sampling
        noise; its seed also seeds the memory updates, as ``--seed`` does. Without it: the config's seed.
        """
        from .session import GenerationSession

        seed = None
        if generator is not None:
            if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
                raise ValueError(f"generator must be one CPU torch.Generator (noise is drawn on the CPU so that every "
                                 f"device gives the same video), got {generator!r}")
            seed = generator.initial_seed()
        config = self.generation_config(fast, num_inference_steps, guidance_scale, seed, overrides)
        first = self.prepare_image(image)
        session = GenerationSession(self.bundle, config)
        if generator is not None:
            session.sample_generator = generator  # in its current state: a fresh manual_seed(s) equals --seed s
        session.start(first)
        return session

    def __call__(self, image: ImageInput = None, actions: str | Sequence[str] | None = None, *,
                 fast: str | None = None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, generator: torch.Generator | None = None,
                 output_type: str = "np", overrides: Sequence[str] = (),
                 callback: Callable[["ChunkRecord", np.ndarray], None] | None = None,
                 return_dict: bool = True) -> SlowFastVGenPipelineOutput | tuple:
        """Generate one chunk per action after the first frame ``image``; returns the whole video.

        Args:
            image: the first frame, resized to the model's size: a path, a PIL image, an ``(H, W, 3)`` array or a
                ``(3, H, W)`` tensor (integers 0-255, floats in ``[0, 1]``), or a list of frames (a history whose
                last frames are the first chunk's context). ``None``: a frame of the procedural navigation
                world (seed 0), as ``sfvgen generate`` without ``--image``.
            actions: one free-text action per chunk (a single string is one chunk).
            fast: Temp-LoRA rule ``paper`` | ``off`` | ``text`` | ``full-sequence`` (default: the config's).
            num_inference_steps, guidance_scale: denoising steps per chunk and classifier-free guidance.
            generator: a CPU ``torch.Generator``; ``torch.Generator().manual_seed(s)`` gives the frames of
                ``sfvgen generate --seed s``.
            output_type: ``np`` | ``pil`` | ``pt`` | ``latent`` (see :class:`SlowFastVGenPipelineOutput`).
            overrides: more ``GenerationConfig`` settings as ``"key=value"`` (``"frames_per_chunk=4"``, ...).
            callback: ``callback(record, new_frames)`` after every chunk (new_frames ``(f_g, H, W, 3)`` uint8).
            return_dict: ``False`` returns ``(frames, records)``.
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        if actions is None or isinstance(actions, str):
            actions = [] if actions is None else [actions]
        if not actions:
            raise UserInputError("no actions: give one action per chunk")
        progress = not getattr(self, "_progress_bar_config", {}).get("disable", False)
        # 1. a session configured as `sfvgen generate`, started from the first frame
        with self.session(image, fast=fast, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                          generator=generator, overrides=overrides) as session:
            # 2. one chunk per action: denoise, append, update the session's Temp-LoRA (Algorithm 1a)
            session.generate(list(actions), callback=callback, progress=progress)
            # 3. the whole video in the requested format; the session's memory goes with it
            frames = self._postprocess(session, output_type)
            records = [asdict(record) for record in session.records]
        if not return_dict:
            return frames, records
        return SlowFastVGenPipelineOutput(frames=frames, records=records)

    # ------------------------------------------------------------------ pre- and post-processing
    def prepare_image(self, image: ImageInput) -> np.ndarray:
        """A first frame ``(H, W, 3)`` (or frames ``(N, H, W, 3)``) uint8 at the model's size, from any input."""
        size = (self.bundle.height, self.bundle.width)
        if image is None:
            from .cli import world_first_frame

            return world_first_frame("navigation", 0, *size)
        if isinstance(image, (str, os.PathLike)):
            from .video_io import read_image

            return read_image(image, size=size)
        if isinstance(image, (list, tuple)):
            if not image:
                raise UserInputError("image is an empty list")
            return np.stack([self._one_frame(frame, size) for frame in image])
        if isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim == 4:
            if len(image) == 0:
                raise UserInputError(f"image holds no frames (shape {tuple(image.shape)})")
            return np.stack([self._one_frame(frame, size) for frame in image])
        return self._one_frame(image, size)

    @staticmethod
    def _one_frame(image: Any, size: tuple[int, int]) -> np.ndarray:
        if isinstance(image, torch.Tensor):
            if image.ndim != 3 or image.shape[0] != 3:
                raise UserInputError(f"an image tensor must be (3, H, W), got shape {tuple(image.shape)}")
            image = image.detach().cpu().permute(1, 2, 0)  # (3, H, W) -> (H, W, 3)
            image = (image.float() if image.is_floating_point() else image).numpy()
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[-1] != 3:
                raise UserInputError(f"an image array must be (H, W, 3), got shape {image.shape}")
            image = PIL.Image.fromarray(_image_as_uint8(image))
        if not isinstance(image, PIL.Image.Image):
            raise UserInputError(f"unsupported image type {type(image).__name__}: give a path, a PIL image, an "
                                 "(H, W, 3) array or a (3, H, W) tensor")
        image = as_shown_rgb(image)  # as read_image (`sfvgen --image`): EXIF orientation, 16-bit grey scaled
        if (image.height, image.width) != tuple(size):  # as read_image resizes
            image = image.resize((size[1], size[0]), PIL.Image.BICUBIC)
        return np.asarray(image, dtype=np.uint8).copy()

    @staticmethod
    def _postprocess(session: "GenerationSession", output_type: str):
        if output_type == "latent":
            return session.latents
        video = session.video()  # (N, H, W, 3) uint8
        if output_type == "pil":
            return [[PIL.Image.fromarray(frame) for frame in video]]
        frames = video.astype(np.float32) / 255.0  # exact: (k / 255) * 255 == k in float32 for every k
        if output_type == "pt":
            return torch.from_numpy(frames).permute(0, 3, 1, 2)[None]  # (N, H, W, 3) -> (1, N, 3, H, W)
        return frames[None]  # (1, N, H, W, 3)


def _image_as_uint8(image: np.ndarray) -> np.ndarray:
    """An ``(H, W, 3)`` image array as uint8: integers are 0-255 values (as image files and
    ``torchvision.io.read_image`` give them), floats ``[0, 1]`` values (as diffusers pipelines take them).
    Anything else (booleans, values outside those ranges, NaN, an empty image) is a :class:`UserInputError`."""
    if image.size == 0:
        raise UserInputError(f"the image is empty (shape {image.shape})")
    if image.dtype == np.uint8:
        return image
    if np.issubdtype(image.dtype, np.integer):
        low, high = int(image.min()), int(image.max())
        if low < 0 or high > 255:
            raise UserInputError(f"integer image values must be 0-255, got {low}..{high}")
        return image.astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        low, high = float(np.min(image)), float(np.max(image))
        if not (0.0 <= low and high <= 1.0):  # NaN fails too
            raise UserInputError(f"float image values must be in [0, 1], got {low:g}..{high:g} (divide 0-255 values by "
                                 "255, or give uint8)")
        return np.round(image.astype(np.float64) * 255).astype(np.uint8)
    raise UserInputError(f"unsupported image array dtype {image.dtype}: give uint8 (0-255) or floats in [0, 1]")


def register_with_diffusers() -> None:
    """Make diffusers know the pipeline by name: ``from diffusers import SlowFastVGenPipeline``, the class
    ``_class_name`` of a model index resolves to, and ``DiffusionPipeline.from_pretrained`` routed here
    (idempotent; ``import slowfast_vgen`` already arranges the routing)."""
    import diffusers

    from . import _route_diffusion_pipeline_loading

    setattr(diffusers, PIPELINE_NAME, SlowFastVGenPipeline)
    _route_diffusion_pipeline_loading(DiffusionPipeline)


register_with_diffusers()

__all__ = ["SlowFastVGenPipeline", "SlowFastVGenPipelineOutput", "register_with_diffusers"]
