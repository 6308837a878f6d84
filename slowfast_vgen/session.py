"""Streaming long-video generation (paper §3.2, Algorithm 1a): chunks -> denoising -> memory update.

A :class:`GenerationSession` starts from a first frame and turns a stream of free-text actions
into a video, one chunk per action. Generation stays in latent space: the clean latents of the
last chunk are the next chunk's context; each chunk is decoded once for output. With a fast
learner (Temp-LoRA) the LoRA is trained after every chunk on (previous ⊕ new), so the model
keeps an episodic memory of fixed size.

``save(dir)`` / ``load(dir)`` hold everything needed to continue exactly: latents and frames so
far, the LoRA memory, its optimizer state and both random generators. A saved session records
the fingerprint of its model (:attr:`ModelBundle.model_fingerprint`) and resumes on that model only.
The video is saved one file per chunk (``video/000123.safetensors``) with its SHA-256 in
``session.json``: a save writes the chunks that are new and hard-links the others from the session
it replaces, so saving after every chunk no longer rewrites the whole video, and a damaged chunk
file is found when the session loads (so is any other file: their SHA-256 are recorded too).

A session owns its memory: its Temp-LoRA is a peft adapter of its own name on the shared UNet,
active only while the session generates (a session with ``fast.mode=off`` runs with no adapter
active). Several sessions can therefore run interleaved on one model, each producing exactly
what it would alone. The adapter is deleted by :meth:`GenerationSession.close` or when the
session is garbage-collected.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from omegaconf import OmegaConf
from safetensors.torch import load as load_bytes
from safetensors.torch import load_file, save_file
from safetensors.torch import save as save_bytes
from tqdm.auto import tqdm

from .config import check_seed, help_field
from .errors import UserInputError, first_line, read_json_object, unicode_problem
from .fast_learner import (
    ADAPTER_NAME, FastLearnerConfig, TempLoRA, check_target_modules_finish, check_timestep_band, merged_adapter,
    read_memory, remove_adapter, restored_adapters, use_adapter,
)
from .io_utils import (
    CONTENT_CHANGED, atomic_output_dir, atomic_write_json, blocking_parent, check_writable_beside, digest_problem, file_digests,
    has_own_name, holds_other_files,
)
from .model import ModelBundle
from .profiling import Stopwatch, peak_memory_mb, release_freed_memory, reset_peak_memory
from .sampler import SamplerConfig, check_inference_steps, make_scheduler, sample_chunk
from .video_io import frames_to_tensor, tensor_to_frames

SESSION_FORMAT = 2
"""1: the whole video in ``state.safetensors`` (rewritten by every save; still loaded). 2: one file per chunk
under ``video/``, listed in ``session.json`` by SHA-256."""
READABLE_FORMATS = (1, 2)
VIDEO_FOLDER = "video"


def chunk_file(index: int) -> str:
    """Where a saved session keeps its chunk ``index`` (0: the first frame or frames)."""
    return f"{VIDEO_FOLDER}/{index:06d}.safetensors"


RELEASE_EVERY = 16
"""Chunks between two returns of freed heap memory to the OS (:func:`release_freed_memory`) on the
CPU. Embedded model, 2-core CPU: returning it after every chunk held the peak flat but cost
0.08 s per chunk (the next backward pass faults the pages back in); without it the peak grew
5.4 % over 125 chunks."""


@dataclass
class GenerationConfig:
    """A long generation: chunk geometry, sampler, fast learner, seed."""

    frames_per_chunk: int = help_field(8, "f_g: new frames generated per action")
    context_frames: int = help_field(8, "f_p: frames of the previous chunk used as context (the first chunk uses 1)")
    window: int = help_field(16, "the model's context window: f_p + f_g must fit in it")
    seed: int = help_field(0, "random seed: same seed, same model, same actions -> identical frames")
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    fast: FastLearnerConfig = field(default_factory=FastLearnerConfig)

    def __post_init__(self) -> None:
        check_seed(self.seed)
        if self.frames_per_chunk < 1 or self.context_frames < 1:
            raise ValueError(
                f"frames_per_chunk and context_frames must be >= 1, got {self.frames_per_chunk} and {self.context_frames}"
            )
        if self.context_frames + self.frames_per_chunk > self.window:
            raise ValueError(
                f"context_frames + frames_per_chunk = {self.context_frames} + {self.frames_per_chunk} "
                f"= {self.context_frames + self.frames_per_chunk} exceeds the window of {self.window} frames"
            )


@dataclass
class ChunkRecord:
    """What one chunk cost and produced (written to the sidecar JSON)."""

    index: int
    action: str
    start_frame: int
    end_frame: int
    context_frames: int
    seconds: float
    memory_seconds: float
    temp_lora_loss: float | None
    peak_memory_mb: float | None


_RECORD_TYPES = {"index": int, "action": str, "start_frame": int, "end_frame": int, "context_frames": int,
                 "seconds": (int, float), "memory_seconds": (int, float), "temp_lora_loss": (int, float, type(None)),
                 "peak_memory_mb": (int, float, type(None))}
"""The JSON types of a saved :class:`ChunkRecord`'s fields."""


def _read_record(raw: Any, num_frames: int) -> ChunkRecord:
    """A :class:`ChunkRecord` from a saved session's JSON; ``TypeError`` naming the field when one is
    missing, unknown or of another type, or when the chunk ends past the session's ``num_frames``."""
    if not isinstance(raw, dict):
        raise TypeError(f"a record is {type(raw).__name__}, expected an object")
    record = ChunkRecord(**raw)  # TypeError for missing and unknown fields
    for name, kinds in _RECORD_TYPES.items():
        value = getattr(record, name)
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise TypeError(f"record {raw.get('index')!r}: {name} is {value!r}")
    if not 0 <= record.start_frame < record.end_frame <= num_frames:
        raise TypeError(f"record {record.index}: frames {record.start_frame}-{record.end_frame} do not lie in the "
                        f"session's {num_frames} frames")
    return record


ChunkCallback = Callable[[ChunkRecord, np.ndarray], None]
"""``callback(record, new_frames)`` after every chunk (new_frames: ``(f_g, H, W, 3) uint8``)."""


class GenerationSession:
    """A long, action-driven generation that can be stepped, saved and resumed.

    Its Temp-LoRA is the UNet adapter ``adapter_name`` (unique per session), active only inside
    :meth:`generate`; other sessions on the same model are not affected by it.
    """

    def __init__(self, bundle: ModelBundle, config: GenerationConfig) -> None:
        # whatever the mode: a session made with fast.mode=off may switch a learning rule on later (web app)
        check_timestep_band(config.fast, bundle.noise_scheduler)
        check_inference_steps(config.sampler, bundle.noise_scheduler)
        self.bundle = bundle
        self.config = config
        self.device = bundle.device
        self.fast_learner = None
        self.adapter_name = None
        if config.fast.mode != "off":
            self.adapter_name = free_adapter_name(bundle.unet)
            with restored_adapters(bundle.unet):  # creating a memory changes nothing for the model's other users
                self.fast_learner = TempLoRA(bundle.unet, bundle.noise_scheduler, config.fast, self.adapter_name)
            # the adapter goes with the session (close() or garbage collection), never with another session
            owned = next(iter(self.fast_learner.parameters.values()))
            self._release = weakref.finalize(self, _release_adapter, bundle.unet, self.adapter_name, owned)
            self._release.atexit = False
        self.closed = False
        bundle.unet.eval()
        self.sample_generator = torch.Generator().manual_seed(config.seed)
        self.memory_generator = torch.Generator().manual_seed((config.seed + 1) % 2**64)  # = seed + 1 below 2**64 - 1
        self.unconditional = bundle.encode_text([""])  # (1, L, D): CFG's and Temp-LoRA's "no text"
        # every frame so far as clean latents, kept as a list of chunks (1, C, n, h, w): appending
        # never copies the history, so the per-chunk cost does not grow with the video
        self.latent_chunks: list[torch.Tensor] = []
        self.frames: list[np.ndarray] = []  # N decoded frames (H, W, 3) uint8
        self.records: list[ChunkRecord] = []
        # id(latent chunk) -> (the chunk, SHA-256 of its saved file): a chunk is serialized and hashed by
        # the first save that holds it; later saves link its file instead of writing it again
        self._saved_digests: dict[int, tuple[weakref.ref, str]] = {}
        # diagnostics only (``sfvgen eval memory_source=truth``): (chunk index, context, new) ->
        # the (previous, new) latents the memory learns instead of the generated pair
        self.memory_source: Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None

    # ------------------------------------------------------------------ start
    def start(self, image: np.ndarray) -> None:
        """Begin an episode from a first frame ``(H, W, 3) uint8`` at the model's size, or from
        several frames ``(N, H, W, 3)`` (e.g. ground-truth history: the next chunk's context)."""
        frames = image[None] if image.ndim == 3 else image
        expected = (self.bundle.height, self.bundle.width, 3)
        if frames.shape[1:] != expected or len(frames) == 0:
            raise UserInputError(f"first frame is {frames.shape[2]}x{frames.shape[1]}, the model needs {expected[1]}x{expected[0]}")
        pixels = frames_to_tensor(frames)  # (1, 3, N, H, W)
        self.latent_chunks = [self.bundle.encode_frames(pixels)]
        self.frames = [frame.copy() for frame in frames]
        self.records = []

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def fps(self) -> float:
        """Frame rate of the generated video (the model's)."""
        return self.bundle.fps

    @property
    def latents(self) -> torch.Tensor:
        """All clean latents so far, ``(1, C, N, h, w)`` (concatenated on demand)."""
        return torch.cat(self.latent_chunks, dim=2)

    def last_latents(self, count: int) -> torch.Tensor:
        """The last ``count`` latent frames (fewer if the video is shorter), ``(1, C, n, h, w)``."""
        tail, have = [], 0
        for chunk in reversed(self.latent_chunks):
            tail.insert(0, chunk[:, :, -(count - have):])
            have += tail[0].shape[2]
            if have >= count:
                break
        return tail[0] if len(tail) == 1 else torch.cat(tail, dim=2)

    @property
    def num_chunks_done(self) -> int:
        return len(self.records)

    @property
    def actions(self) -> list[str]:
        return [record.action for record in self.records]

    # ------------------------------------------------------------------ the generation loop
    def generate(self, actions: list[str], callback: ChunkCallback | None = None, progress: bool = False) -> np.ndarray:
        """Generate one chunk per action; returns the new frames ``(len(actions) * f_g, H, W, 3)``."""
        if self.closed:
            raise RuntimeError("this session is closed")
        if not self.latent_chunks:
            raise RuntimeError("call start(first_frame) before generating")
        actions = [validate_action(action, position) for position, action in enumerate(actions, 1)]
        config, bundle = self.config, self.bundle
        produced = []
        # 0. this session's memory is the only active adapter of the shared UNet (none with fast.mode=off)
        with use_adapter(bundle.unet, self.adapter_name):
            for action in tqdm(actions, desc="chunks", disable=not progress):  # one chunk per action (Algorithm 1a)
                reset_peak_memory(self.device)
                # a chunk that fails (e.g. out of memory) leaves the session as it was before it
                with self._undone_on_failure():
                    with Stopwatch(self.device) as generation_time:
                        # 1. encode the action C_i (cross-attention conditioning)
                        text = bundle.encode_text([action])
                        # 2. context X_i: the previous chunk's clean latents (the first frame for chunk 0)
                        context = self.last_latents(config.context_frames)  # (1, C, f_p, h, w)
                        num_context = context.shape[2]
                        # 3. Y_i = (Phi + Theta_i)(X_i, C_i): denoise the new frames from noise (inner loop)
                        scheduler = make_scheduler(config.sampler.scheduler, bundle.noise_scheduler.config,
                                                   config.sampler.timestep_spacing)
                        # Theta_i folded into Phi while sampling
                        with merged_adapter(bundle.unet, self.adapter_name, config.fast.read_scale):
                            new = sample_chunk(
                                bundle.unet, scheduler, context, text, self.unconditional,
                                num_frames=config.frames_per_chunk,
                                num_inference_steps=config.sampler.num_inference_steps,
                                guidance_scale=config.sampler.guidance_scale,
                                eta=config.sampler.eta,
                                generator=self.sample_generator,
                                progress=progress,
                            )  # (1, C, f_g, h, w)
                        if not torch.isfinite(new).all():  # the chunk is not appended: the session stays as it was
                            raise UserInputError(f"chunk {len(self.records) + 1} ({action!r}) came out not finite (NaN "
                                                 "or inf latents): the model or its sampler settings overflow")
                        # 4. decode Y_i once for output (latents stay latents for the next context)
                        new_frames = tensor_to_frames(bundle.decode_latents(new))  # (f_g, H, W, 3)
                    # 5. memory update, Eq. 3: Theta_{i+1} = Theta_i - alpha * grad on (X_i ⊕ Y_i)
                    loss = None
                    with Stopwatch(self.device) as memory_time:
                        if self.fast_learner is not None:
                            learned = (context, new) if self.memory_source is None else \
                                self.memory_source(len(self.records), context, new)
                            history = torch.cat([*self.latent_chunks, new], dim=2) if config.fast.needs_history else None
                            loss = self.fast_learner.update(
                                *learned, self.memory_generator, self.unconditional,
                                text_embeddings=text, history=history,
                            )
                            if (len(self.records) + 1) % RELEASE_EVERY == 0:  # keeps the peak flat over long videos
                                release_freed_memory(self.device)
                # 6. the chunk succeeded: append Y_i to the video (latents, frames and record together)
                start = len(self.frames)
                self.latent_chunks.append(new)
                self.frames.extend(new_frames)
                record = ChunkRecord(
                    index=len(self.records), action=action, start_frame=start, end_frame=len(self.frames),
                    context_frames=num_context, seconds=round(generation_time.seconds, 4),
                    memory_seconds=round(memory_time.seconds, 4), temp_lora_loss=loss,
                    peak_memory_mb=peak_memory_mb(self.device),
                )
                self.records.append(record)
                produced.append(new_frames)
                if callback is not None:
                    callback(record, new_frames)
        return np.concatenate(produced) if produced else np.zeros((0, *self.frames[0].shape), np.uint8)

    @contextlib.contextmanager
    def _undone_on_failure(self) -> Iterator[None]:
        """Inside, a failure (an exception, e.g. CUDA out of memory) restores both random generators,
        the LoRA weights and the optimizer state to their values on entry, then propagates.

        Latents, frames and records are only appended after the block, so with this a failed chunk
        leaves no trace: retrying it gives what an uninterrupted run would have given.
        """
        generators = self.sample_generator.get_state(), self.memory_generator.get_state()
        learner = self.fast_learner
        if learner is not None:  # the LoRA is small: a copy per chunk costs little next to its update
            weights = {name: p.detach().clone() for name, p in learner.parameters.items()}
            optimizer_state = copy.deepcopy(learner.optimizer.state_dict())
        try:
            yield
        except BaseException:
            self.sample_generator.set_state(generators[0])
            self.memory_generator.set_state(generators[1])
            if learner is not None:
                with torch.no_grad():
                    for name, parameter in learner.parameters.items():
                        parameter.copy_(weights[name])
                learner.optimizer.load_state_dict(optimizer_state)
                learner.optimizer.zero_grad(set_to_none=True)
            raise

    def step(self, action: str) -> np.ndarray:
        """Generate one chunk for one action (streamed use)."""
        return self.generate([action])

    def reset_memory(self) -> None:
        """Forget the episodic memory (the LoRA returns to its initial state); frames stay."""
        if self.fast_learner is not None:
            self.fast_learner.reset()

    def video(self) -> np.ndarray:
        """All frames so far, ``(N, H, W, 3) uint8``."""
        return np.stack(self.frames)

    def close(self) -> None:
        """Delete this session's memory adapter from the model now (garbage collection does it otherwise).

        Frames, latents and records stay readable; :meth:`generate` and :meth:`save` are refused.
        """
        if self.fast_learner is not None:
            self._release()  # remove_adapter(unet, adapter_name), once
        self.closed = True

    def __enter__(self) -> "GenerationSession":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ------------------------------------------------------------------ save / load
    def save(self, directory: str | os.PathLike) -> Path:
        """Write the session atomically: config, records, latents, frames, RNG, memory, optimizer, and
        the model's fingerprint and dtype (:meth:`load` refuses another model)."""
        if self.closed:
            raise RuntimeError("this session is closed: its memory is gone")
        if not self.latent_chunks:
            raise RuntimeError("nothing to save: the session has not started")
        directory = check_session_dir(directory)  # never replaces a folder of other files
        fingerprint = self.bundle.model_fingerprint  # cached after the first save; no memory is merged here
        with atomic_output_dir(directory, "session.json") as tmp:
            video = self._save_video(tmp, directory)
            save_file({"sample_generator": self.sample_generator.get_state(),
                       "memory_generator": self.memory_generator.get_state()}, str(tmp / "state.safetensors"))
            if self.fast_learner is not None:
                self.fast_learner.save(tmp / "memory")
                self.fast_learner.save_optimizer(tmp / "optimizer.safetensors")
            atomic_write_json(tmp / "session.json", {
                "format": SESSION_FORMAT,
                "model_fingerprint": fingerprint,
                "model_dtype": _dtype_name(self.bundle.dtype),
                "config": OmegaConf.to_container(OmegaConf.structured(self.config)),
                "records": [vars(record).copy() for record in self.records],  # asdict deep-copies: 24 ms at 1,000
                "video": video,
                # the state, memory and optimizer (the video's digests are "video")
                "files": file_digests(tmp, skip=lambda path: path.as_posix() in ("session.json", VIDEO_FOLDER)),
            })
        return directory

    def _save_video(self, folder: Path, replaced: Path) -> list[str]:
        """Write chunk ``i`` (latents and frames) to ``folder/video/{i}``, or hard-link it from the session
        saved in ``replaced`` when that one holds the same chunk (the same SHA-256 in its ``session.json``);
        the SHA-256 of every chunk's file, in order."""
        previous = _saved_video_digests(replaced)
        (folder / VIDEO_FOLDER).mkdir()
        digests, start = [], 0
        for index, latents in enumerate(self.latent_chunks):
            end = start + latents.shape[2]  # one latent frame per frame
            name = chunk_file(index)
            target = os.path.join(folder, name)  # strings: Path objects cost more than the link at 1,000 chunks
            digest = self._saved_digest(latents)
            if digest is None or previous.get(index) != digest or not _linked(os.path.join(replaced, name), target):
                data = save_bytes({"latents": latents.detach().float().cpu().contiguous(),
                                   "frames": torch.from_numpy(np.ascontiguousarray(np.stack(self.frames[start:end])))})
                digest = hashlib.sha256(data).hexdigest()
                with open(target, "wb") as handle:
                    handle.write(data)
            digests.append(digest)
            start = end
        self._remember_saved_digests(digests)
        return digests

    def _remember_saved_digests(self, digests: list[str | None]) -> None:
        """Remember the SHA-256 of the file each chunk of ``latent_chunks`` was saved to or loaded from
        (None: not from a file), by tensor identity: a later save links the chunks that did not change."""
        self._saved_digests = {id(latents): (weakref.ref(latents), digest)
                               for latents, digest in zip(self.latent_chunks, digests, strict=True) if digest is not None}

    def _saved_digest(self, latents: torch.Tensor) -> str | None:
        """The SHA-256 of the file a save or load made of this chunk, if one did."""
        known = self._saved_digests.get(id(latents))
        return known[1] if known is not None and known[0]() is latents else None

    @classmethod
    def load(cls, directory: str | os.PathLike, bundle: ModelBundle) -> "GenerationSession":
        """Resume a saved session on ``bundle`` (the model it was generated with).

        Every file is read and checked before ``bundle`` is touched, so a damaged session is a
        :class:`UserInputError` naming the file and leaves a session running on ``bundle`` intact.
        So is a session saved with another model (or dtype): its ``model_fingerprint`` differs from
        ``bundle``'s. A session saved before fingerprints were recorded is not checked.
        """
        from .config import config_from_dict

        directory = Path(directory)
        meta_file, state_file = directory / "session.json", directory / "state.safetensors"
        if not meta_file.is_file() or not state_file.is_file():
            raise UserInputError(f"{directory} is not a saved session (needs session.json and state.safetensors)")

        def corrupt(file: Path, err: BaseException) -> UserInputError:
            return UserInputError(f"saved session {directory} is corrupt: {file.relative_to(directory)}: {first_line(err)}")

        # 1. read and check every file, before the model is touched
        try:
            meta = read_json_object(meta_file)
        except (OSError, ValueError) as err:
            raise corrupt(meta_file, err) from None
        problem = digest_problem(directory, meta.get("files", {}), "session.json")  # no files: saved before
        if problem:
            raise corrupt(directory / problem[0], ValueError(problem[1]))
        try:
            state = load_file(str(state_file))
            for name in ("sample_generator", "memory_generator"):
                torch.Generator().set_state(state[name])  # a damaged RNG state fails here
        except Exception as err:  # safetensors raises its own error types
            raise corrupt(state_file, err) from None
        if meta.get("format") not in READABLE_FORMATS:
            raise UserInputError(f"saved session {directory} has format {meta.get('format')}, expected one of "
                                 f"{', '.join(map(str, READABLE_FORMATS))}")
        if meta["format"] == 1:  # the whole video in the state file
            try:
                chunks, digests = [(state["latents"], state["frames"].numpy())], [None]
            except KeyError as err:
                raise corrupt(state_file, err) from None
        else:
            chunks, digests = _read_video(directory, meta, corrupt)
        latents = chunks[0][0]  # the whole video in format 1; the other chunks have its shape but length (_read_video)
        num_latent_frames = sum(chunk_latents.shape[2] for chunk_latents, _ in chunks)
        frames = np.concatenate([chunk_frames for _, chunk_frames in chunks]) if len(chunks) > 1 else chunks[0][1]
        try:
            saved = meta["config"]
            if not isinstance(saved, dict):
                raise TypeError(f"config is {type(saved).__name__}, expected an object")
            if isinstance(saved.get("sampler"), dict) and "timestep_spacing" not in saved["sampler"]:
                # saved before the spacing was a setting: it was sampled at the schedulers' `leading`
                saved = {**saved, "sampler": {**saved["sampler"], "timestep_spacing": "leading"}}
            config = config_from_dict(GenerationConfig, saved)
            records = [_read_record(record, len(frames)) for record in meta["records"]]
            for key in ("model_fingerprint", "model_dtype"):  # absent in sessions saved before they were recorded
                if not isinstance(meta.get(key, ""), str):
                    raise TypeError(f"{key} is {type(meta[key]).__name__}, expected a string")
        except (KeyError, TypeError, UserInputError) as err:
            raise corrupt(meta_file, err) from None
        if latents.ndim != 5 or latents.shape[1] != bundle.unet.config.in_channels:
            raise UserInputError(f"saved session {directory} does not fit this model (latent channels differ)")
        if frames.ndim != 4 or frames.shape[1:] != (bundle.height, bundle.width, 3):
            raise UserInputError(
                f"saved session {directory} has {tuple(frames.shape[1:3])} frames, this model makes "
                f"{(bundle.height, bundle.width)}"
            )
        if num_latent_frames != len(frames):  # every latent frame has its decoded frame, and only those
            raise corrupt(state_file, ValueError(f"{num_latent_frames} latent frames but {len(frames)} frames"))
        starts = [0] + [record.start_frame for record in records]
        ends = [records[0].start_frame if records else len(frames)] + [record.end_frame for record in records]
        tiled = starts[1:] == ends[:-1] and ends[-1] == len(frames)  # the records cover the video, chunk by chunk
        if meta["format"] != 1 and (len(chunks) != len(records) + 1 or not tiled or
                                [len(chunk_frames) for _, chunk_frames in chunks] != [b - a for a, b in zip(starts, ends)]):
            raise corrupt(meta_file, ValueError(f"its {len(records)} records do not match the {len(chunks)} chunk "
                                                f"files of {len(frames)} frames in {VIDEO_FOLDER}/"))
        try:  # a session from elsewhere (a web upload) must not hang this process when the LoRA is placed
            check_target_modules_finish(config.fast.target_modules, [name for name, _ in bundle.unet.named_modules()])
        except UserInputError as err:
            raise corrupt(meta_file, err) from None
        memory, optimizer_file = None, directory / "optimizer.safetensors"
        if config.fast.mode != "off":
            memory = read_memory(directory / "memory", config.fast)  # UserInputError naming the file
            if optimizer_file.is_file():
                try:
                    check_optimizer_file(optimizer_file)
                except Exception as err:
                    raise corrupt(optimizer_file, err) from None
        check_model_fingerprint(directory, meta, bundle)  # last: the bundle's first fingerprint reads all its weights

        # 2. build the session on the model and restore its state
        session = cls(bundle, config)
        if meta["format"] == 1 and tiled:  # split as generated, so that later saves link what they hold
            chunks = [(latents[:, :, a:b], None) for a, b in zip(starts, ends)]
            digests = [None] * len(chunks)
        session.latent_chunks = [chunk_latents.to(bundle.device, bundle.dtype) for chunk_latents, _ in chunks]
        session._remember_saved_digests(digests)
        session.frames = list(frames)
        session.sample_generator.set_state(state["sample_generator"])
        session.memory_generator.set_state(state["memory_generator"])
        session.records = records
        if session.fast_learner is not None:
            try:
                session.fast_learner.load_state_dict(memory)
            except UserInputError as err:  # weights of other layers or shapes (checked before any is loaded)
                raise UserInputError(f"saved session {directory}: {err}") from None
            if optimizer_file.is_file():
                try:
                    session.fast_learner.load_optimizer(optimizer_file)
                except (ValueError, KeyError, RuntimeError) as err:
                    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                    raise UserInputError(
                        f"saved session {directory}: optimizer.safetensors does not fit this model: {reason}"
                    ) from None
        return session


def _read_video(directory: Path, meta: dict,
                corrupt: Callable[[Path, BaseException], UserInputError]) -> tuple[list, list[str]]:
    """The chunks ``[(latents (1, C, n, h, w), frames (n, H, W, 3) uint8)]`` of a session saved in format 2
    and the SHA-256 of their files; a file missing, damaged (its SHA-256 differs from ``session.json``'s) or
    of another shape than the first chunk's is an error naming it."""
    digests = meta.get("video")
    if not isinstance(digests, list) or not digests or not all(isinstance(digest, str) for digest in digests):
        raise corrupt(directory / "session.json", TypeError("video must be a list of SHA-256 digests, one per chunk"))
    chunks = []
    for index, digest in enumerate(digests):
        file = directory / chunk_file(index)
        try:
            data = file.read_bytes()
            if hashlib.sha256(data).hexdigest() != digest:
                raise ValueError(CONTENT_CHANGED.format(record="session.json"))
            tensors = load_bytes(data)
            latents, frames = tensors["latents"], tensors["frames"].numpy()
            if latents.ndim != 5 or frames.ndim != 4 or frames.dtype != np.uint8 or latents.shape[2] != len(frames):
                raise ValueError(f"latents {tuple(latents.shape)} and {frames.dtype} frames {frames.shape} are not a chunk")
            if chunks and (latents.shape[:2] != chunks[0][0].shape[:2] or latents.shape[3:] != chunks[0][0].shape[3:]
                           or frames.shape[1:] != chunks[0][1].shape[1:]):
                raise ValueError(f"its shapes differ from {chunk_file(0)}'s")
        except Exception as err:  # OSError, safetensors' own errors, a missing tensor
            raise corrupt(file, err) from None
        chunks.append((latents, frames))
    return chunks, digests


def _saved_video_digests(directory: Path) -> dict[int, str]:
    """Chunk index -> SHA-256 of its file, for the session saved in ``directory`` (empty for none, for
    one of format 1, or for a ``session.json`` that cannot be read: its chunks are then written anew)."""
    try:
        digests = read_json_object(directory / "session.json").get("video")
    except (OSError, ValueError):
        return {}
    if not isinstance(digests, list):
        return {}
    return {index: digest for index, digest in enumerate(digests) if isinstance(digest, str)}


def _linked(source: str, target: str) -> bool:
    """Hard-link ``source`` as ``target`` (no bytes copied); False where that fails (no such file, a
    file system without hard links): the caller writes the file instead."""
    try:
        os.link(source, target)
    except OSError:
        return False
    return True


def check_session_dir(directory: str | os.PathLike, outputs: Sequence[str | os.PathLike] = (),
                      label: str = "cannot save the session",
                      inputs: Sequence[tuple[str, str | os.PathLike]] = ()) -> Path:
    """``directory`` as a :class:`Path` when a session may be saved there; a one-line
    :class:`UserInputError` starting with ``label`` otherwise.

    :meth:`GenerationSession.save` replaces the directory as a whole, so it must be new, empty or
    a saved session (it has ``session.json``): not a file, not a folder of other files, not a
    path without a name of its own (``.``), and none of ``outputs`` (files written beside the
    session, e.g. the video) nor of ``inputs`` (``(flag, path)`` pairs: the files and the model
    directory the command reads) may lie in it.
    """
    directory = Path(directory)
    if not has_own_name(directory):
        raise UserInputError(f"{label}: {str(directory)!r} names no directory of its own; give one such as session1")
    resolved = directory.resolve()
    kept = [(output, f"would hold {output}") for output in outputs]
    kept += [(path, f"holds the {flag} {path}") for flag, path in inputs]
    for path, holding in kept:
        if Path(path).resolve().is_relative_to(resolved):
            raise UserInputError(f"{label}: the session directory {directory} {holding}, and every save replaces "
                                 "the whole directory; give them separate paths")
    if directory.is_file():
        raise UserInputError(f"{label}: {directory} is a file, not a session directory")
    if os.path.lexists(directory) and not directory.is_dir():
        raise UserInputError(f"{label}: {directory} is not a directory")
    blocking = blocking_parent(directory)
    if blocking is not None:  # was a FileExistsError at the first save, after the first chunk
        raise UserInputError(f"{label}: {blocking} is a file, so {directory} cannot be a session directory")
    try:
        other_files = holds_other_files(directory, "session.json")
    except OSError as err:
        raise UserInputError(f"{label}: cannot read {directory}: {err.strerror or err}") from None
    if other_files:
        raise UserInputError(
            f"{label}: {directory} is a folder of other files, not a saved session (no session.json); "
            "saving would replace it: give a new or empty directory"
        )
    check_writable_beside(directory, label)  # was an OSError traceback at the first save, after the first chunk
    return directory


def check_model_fingerprint(directory: Path, meta: dict, bundle: ModelBundle) -> None:
    """A one-line :class:`UserInputError` when the session ``meta`` (its ``session.json``) was saved with
    another model than ``bundle``: its ``model_fingerprint`` differs. Nothing to check without one."""
    saved = meta.get("model_fingerprint")
    if not saved or saved == bundle.model_fingerprint:
        return
    fingerprints = f"model fingerprint {saved} != {bundle.model_fingerprint}"
    saved_dtype, dtype = meta.get("model_dtype"), _dtype_name(bundle.dtype)
    if saved_dtype and saved_dtype != dtype:  # perhaps the same model at another dtype: say so
        raise UserInputError(
            f"saved session {directory} was made with another model or dtype ({fingerprints}; its weights were "
            f"{saved_dtype}, this model's are {dtype}); resume it with the model and dtype it was generated with"
        )
    raise UserInputError(f"saved session {directory} was made with another model ({fingerprints}); "
                         "resume it with the model it was generated with")


def _dtype_name(dtype: torch.dtype) -> str:
    """``float16`` for ``torch.float16``."""
    return str(dtype).removeprefix("torch.")


def check_optimizer_file(path: str | os.PathLike) -> None:
    """Read an optimizer file written by ``save_optimizer`` completely; raises on a damaged one."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        for key in handle.keys():
            handle.get_tensor(key)
    json.loads(metadata["param_groups"])
    json.loads(metadata.get("scalars", "{}"))


def free_adapter_name(unet: torch.nn.Module) -> str:
    """``temp_lora_1``, ``temp_lora_2``, ...: the first name no adapter of ``unet`` has (a session's memory)."""
    taken = set(getattr(unet, "peft_config", None) or {})
    taken |= {name for module in unet.modules() for name in getattr(module, "lora_A", {})}
    number = 1
    while f"{ADAPTER_NAME}_{number}" in taken:
        number += 1
    return f"{ADAPTER_NAME}_{number}"


def _release_adapter(unet: torch.nn.Module, adapter_name: str, owned: torch.nn.Parameter) -> None:
    """Delete a closed or collected session's adapter, unless the name now belongs to another memory."""
    if any(parameter is owned for parameter in unet.parameters()):
        remove_adapter(unet, adapter_name)


def validate_action(action: str, position: int = 1) -> str:
    """Strip an action (and any byte-order mark); an empty one, one that is not text, or text the
    tokenizer cannot take (a lone surrogate from undecodable input) is a user error naming its position."""
    if not isinstance(action, str):
        raise UserInputError(f"action {position} must be text, got {type(action).__name__}")
    text = action.replace("\ufeff", "").strip()
    if not text:
        raise UserInputError(f"action {position} is empty")
    if problem := unicode_problem(text):
        raise UserInputError(f"action {position} {problem}")
    return text

