"""``sfvgen``: the command-line front end (argument parsing only; the work is in the library).

Subcommands:

* ``sfvgen generate``   — a long video from a first frame and a list of actions.
* ``sfvgen play``       — interactive: one action per line, the video grows as you type.
* ``sfvgen serve``      — the same in the browser: a local web app (needs the ``app`` extra: gradio).
* ``sfvgen eval``       — chunk / long / revisit / rollout suites against exact ground truth.
* ``sfvgen make-model`` — write a freshly initialised model directory from a config.
* ``sfvgen plan``       — long-horizon planning: subgoals -> video plan -> inverse dynamics -> the world.

Bad input (no actions, an empty action, an unreadable image, an unknown config key, a broken
model directory, pickle weights, a chunk larger than the window, a ``--session`` directory holding
other files or the video) prints one ``error:`` line and exits with code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .config import ConfigKeysParser
from .errors import UserInputError, first_line, run_cli
from .io_utils import check_output_directory, check_output_spares_inputs

DEFAULT_MODEL_DIR = Path(__file__).parent / "assets" / "default_model"


# ---------------------------------------------------------------------------- shared options
EVAL_SUITES = ("chunk", "long", "revisit", "rollout")  # = evaluation.SUITES (checked by a test; no torch import here)

def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model directory in diffusers layout (default: the embedded model)")
    parser.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto (default: auto)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                        help="weights dtype on the device (default: float32)")
    parser.add_argument("--text-features", help="precomputed text features (data_tools/text_features.py): a model with "
                        "an action encoder then runs without its text encoder package; other texts are refused")


def _add_generation_options(parser: argparse.ArgumentParser, image: bool = True) -> None:
    """Model and generation options; ``image=False`` (``serve``) leaves out ``--image`` and ``--quiet``."""
    _add_model_options(parser)
    if image:
        parser.add_argument("--image", help="first frame (PNG/JPEG); default: a frame of the procedural world")
    # defaults None (navigation, 0 when used): a resumed --session can tell a first frame that was asked for
    parser.add_argument("--world", help="world for the first frame when no --image is given (default: navigation)")
    parser.add_argument("--world-seed", type=int, help="seed of that world (default: 0)")
    parser.add_argument("--fast", choices=["paper", "off", "text", "full-sequence"],
                        help="Temp-LoRA rule (default from config: paper)")
    parser.add_argument("--seed", type=int, help="random seed (same seed -> identical frames; default: seed)")
    parser.add_argument("--steps", type=int, help="denoising steps per chunk (default: sampler.num_inference_steps)")
    parser.add_argument("--guidance", type=float, help="classifier-free guidance scale on the action text "
                                                       "(default: sampler.guidance_scale)")
    parser.add_argument("--scheduler", help="ddim | dpmsolver++ | euler (default: sampler.scheduler)")
    parser.add_argument("--config", help="YAML file with GenerationConfig values")
    if image:
        parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--upscale", type=int, help="integer enlargement of the written video (default: to >= 128 px wide)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. frames_per_chunk=8 fast.rank=16")


FLAG_KEYS = {"fast.mode": "--fast", "seed": "--seed", "sampler.num_inference_steps": "--steps",
             "sampler.guidance_scale": "--guidance", "sampler.scheduler": "--scheduler"}
"""GenerationConfig keys set by a flag, and the flag (named in messages about them)."""


def _check_generation_flags(args: argparse.Namespace) -> None:
    """Refuse flag values the library cannot take, naming the flag (before any model is loaded)."""
    import math

    from .config import check_seed

    if args.seed is not None:
        try:
            check_seed(args.seed, "--seed")
        except ValueError as err:
            raise UserInputError(str(err)) from None
    if args.world_seed is not None and args.world_seed < 0:
        raise UserInputError(f"--world-seed must be >= 0, got {args.world_seed}")
    if args.guidance is not None and (not math.isfinite(args.guidance) or args.guidance < 1):
        raise UserInputError(f"--guidance must be a finite number >= 1 (1 = no guidance), got {args.guidance}")
    if args.upscale is not None and args.upscale < 1:
        raise UserInputError(f"--upscale must be an integer >= 1, got {args.upscale}")


def _explicit_settings(args: argparse.Namespace) -> list[str]:
    """GenerationConfig keys the user set on this command line: flags, ``key=value`` and ``--config`` keys."""
    from .config import keys_set

    keys = [key for key, flag in FLAG_KEYS.items() if getattr(args, flag[2:]) is not None]
    return list(dict.fromkeys(keys + keys_set(args.config, args.overrides)))


def _settings_conflicts(saved, given, keys: Sequence[str]) -> list[str]:
    """``"--seed 5 (saved: 3)"`` for every key in ``keys`` whose value differs between two GenerationConfigs."""
    from omegaconf import OmegaConf

    saved_node, given_node = OmegaConf.structured(saved), OmegaConf.structured(given)
    conflicts = []
    for key in keys:
        old, new = OmegaConf.select(saved_node, key), OmegaConf.select(given_node, key)
        if old != new:
            label = FLAG_KEYS.get(key, f"{key}=")
            conflicts.append(f"{label}{' ' if label.startswith('--') else ''}{new} (saved: {old})")
    return conflicts


def _generation_config(args: argparse.Namespace, bundle):
    from .config import load_config
    from .session import GenerationConfig

    flags = {key: getattr(args, flag[2:]) for key, flag in FLAG_KEYS.items()}  # win over the overrides
    defaults = bundle.metadata.get("generation", {})
    return load_config(GenerationConfig, args.config, args.overrides, defaults=defaults, flags=flags)


def _note_untrained_steps(sampler, bundle) -> None:
    """Say on stderr when sampling steps fall outside the noise levels the model was last trained on."""
    from .sampler import check_inference_steps, untrained_steps_note

    check_inference_steps(sampler, bundle.noise_scheduler)  # a schedule that cannot run is an error, not a note
    note = untrained_steps_note(sampler, bundle.noise_scheduler, bundle.trained_timesteps)
    if note:
        print(note, file=sys.stderr)


def _load_bundle(args: argparse.Namespace):
    import torch

    from .model import load_model

    if args.model is None:
        if not (DEFAULT_MODEL_DIR / "unet").is_dir():
            raise UserInputError(
                "no embedded default model in this install; pass --model DIR (create one with `sfvgen make-model`)"
            )
        path = DEFAULT_MODEL_DIR
    else:
        path = Path(args.model)
    device = resolve_device(args.device)
    dtype = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}[args.dtype]
    cache = None
    if getattr(args, "text_features", None):
        from .text_features import TextFeatureCache

        cache = TextFeatureCache.load(args.text_features)
    return load_model(path, device=device, dtype=dtype, text_features=cache), str(path)


def resolve_device(name: str) -> str:
    """The torch device for ``--device``: ``auto`` = ``cuda`` when available, else ``cpu``;
    a CUDA device without CUDA is a :class:`UserInputError`."""
    import torch

    from .errors import device_problem

    device = ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name
    problem = device_problem(device, choices="auto, cpu, cuda or cuda:N")
    if problem is not None:
        raise UserInputError(f"--device {problem}")
    return device


GENERATION_DEFAULTS_NOTE = ("the defaults below are the library's: a model's own settings (`generation` in its "
                            "slowfast_vgen.json; the embedded model's are the real-time ones) replace them, and "
                            "--config, the flags and key=value replace those; the resolved values are written "
                            "beside the video (.yaml)")
DEFAULT_WORLD = "navigation"  # of --world (its argparse default is None: a resume can tell one that was given)


def _first_frame(args: argparse.Namespace, bundle) -> np.ndarray:
    from .video_io import read_image

    if args.image:
        return read_image(args.image, size=(bundle.height, bundle.width))
    return world_first_frame(args.world or DEFAULT_WORLD, args.world_seed or 0, bundle.height, bundle.width)


def world_first_frame(world: str, seed: int, height: int, width: int) -> np.ndarray:
    """The first frame of an episode of a procedural world, at the model's frame size
    (:func:`slowfast_vgen.worlds.world_first_frame`; imported lazily, so ``--help`` stays fast)."""
    from .worlds import world_first_frame as first_frame

    return first_frame(world, seed, height, width)


def _parse_actions(args: argparse.Namespace) -> list[str]:
    from .session import validate_action

    if args.actions is not None and args.actions_file:  # --actions "" too: which one was meant?
        raise UserInputError("give either --actions or --actions-file, not both")
    if args.actions_file:
        path = Path(args.actions_file)
        if not path.is_file():
            raise UserInputError(f"actions file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8-sig")  # Notepad's byte-order mark made a first-line comment an action
        except UnicodeDecodeError as err:
            raise UserInputError(
                f"actions file {path} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); "
                "give one action per line"
            ) from None
        except OSError as err:
            raise UserInputError(f"cannot read actions file {path}: {err.strerror or err}") from None
        raw = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    elif args.actions is not None:
        raw = args.actions.split(";")
        if len(raw) > 1 and raw[-1].strip() == "":
            raw = raw[:-1]  # allow a trailing ';'
    else:
        raw = []
    if not raw:
        raise UserInputError("no actions given: use --actions \"move right; move left\" or --actions-file FILE")
    return [validate_action(action, position) for position, action in enumerate(raw, 1)]


def _quiet_libraries() -> None:
    import warnings

    import diffusers
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*peft_config.*")


# ---------------------------------------------------------------------------- outputs
def remove_sidecars(out: Path, gif: bool) -> None:
    """Delete the sidecars (json, yaml; gif with ``--gif``) of an earlier video at ``out``, before a new video
    replaces it: a run stopped between the two then leaves a video without sidecars, not one with another
    run's (its frames, actions, seconds and config)."""
    for sidecar in _output_files(out, gif)[1:]:
        sidecar.unlink(missing_ok=True)


def write_outputs(session, out: Path, model_path: str, gif: bool, upscale: int | None = None,
                  mp4_written: bool = False) -> dict:
    """Write the video (mp4, optional gif), the resolved config and the per-chunk sidecar JSON.

    ``upscale`` (default: :func:`auto_upscale`) enlarges small frames by an integer factor so
    the video is watchable and decord-readable; the sidecar records it. ``mp4_written``: the mp4
    was streamed while generating (``sfvgen generate``), only the rest is written here.
    """
    from .config import save_config
    from .io_utils import atomic_write_json
    from .video_io import write_video

    fps = session.fps
    height, width = session.frames[0].shape[:2]
    upscale = resolve_upscale(upscale, width, height)
    if not mp4_written:
        remove_sidecars(out, gif)
    if not mp4_written or gif:  # a streamed mp4 needs the frames stacked only for a gif
        video = session.video()
        if not mp4_written:
            write_video(out, video, fps=fps, upscale=upscale)
        if gif:
            write_video(out.with_suffix(".gif"), video, fps=fps, upscale=upscale)
    save_config(session.config, out.with_suffix(".yaml"))
    records = session.records
    seconds = sum(r.seconds + r.memory_seconds for r in records)
    generated = sum(r.end_frame - r.start_frame for r in records)
    sidecar = {
        "video": out.name,
        "model": model_path,
        "frames": session.num_frames,
        "height": int(height),
        "width": int(width),
        "fps": fps,
        "upscale": upscale,
        "fast_mode": session.config.fast.mode,
        "seed": session.config.seed,
        "seconds_total": round(seconds, 4),
        # speed: generated frames (the first frame is given) per second of generation + memory update
        "generated_frames_per_second": round(generated / seconds, 3) if seconds > 0 else None,
        "chunks": [asdict(record) for record in records],
    }
    atomic_write_json(out.with_suffix(".json"), sidecar)
    return sidecar


def resolve_upscale(upscale: int | None, width: int, height: int | None = None) -> int:
    """``--upscale``: None = :func:`~slowfast_vgen.video_io.auto_upscale`; below 1, or a video larger
    than :data:`~slowfast_vgen.video_io.MAX_VIDEO_SIDE` pixels, is an error."""
    from .video_io import MAX_VIDEO_SIDE, auto_upscale

    if upscale is None:
        return auto_upscale(width)
    if upscale < 1:
        raise UserInputError(f"--upscale must be an integer >= 1, got {upscale}")
    side = max(width, height or width)
    if upscale * side > MAX_VIDEO_SIDE:  # a memory error, or ffmpeg's broken pipe, once the model had loaded
        raise UserInputError(f"--upscale {upscale} makes {upscale * side}-pixel frames; at most {MAX_VIDEO_SIDE} "
                             f"(--upscale <= {MAX_VIDEO_SIDE // side} for {side}-pixel frames)")
    return upscale


OUTPUT_ROLES = {".mp4": "the video", ".json": "the JSON sidecar written beside the video",
                ".yaml": "the config written beside the video", ".gif": "the gif written beside the video"}
"""What each file written for ``--out`` is (named when it would replace an input)."""


def _input_files(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """The files the command reads, as (flag, path): an output must never replace one of them."""
    inputs = []
    for flag in ("--config", "--actions-file", "--image", "--text-features"):
        value = getattr(args, flag[2:].replace("-", "_"), None)
        if value:
            inputs.append((flag, Path(value)))
    return inputs


def _read_paths(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """The input files and the ``--model`` directory, as (flag, path): a session directory, which every
    save replaces as a whole, must not hold any of them."""
    return _input_files(args) + ([("--model", Path(args.model))] if args.model else [])


def _check_outputs_spare_inputs(outputs: Sequence[Path], args: argparse.Namespace) -> None:
    """Refuse (one line, before any model loads) an output that is an input file, or an existing file of
    the model directory: writing it would destroy it (a new file beside the model's own is fine:
    ``--model . --out v.mp4``)."""
    inputs = _input_files(args)
    # as _load_bundle: no --model is the embedded default model
    model = ("--model directory", args.model) if args.model else ("default --model directory", DEFAULT_MODEL_DIR)
    for output in outputs:
        check_output_spares_inputs(output, inputs + ([model] if output.exists() else []), "--out",
                                   OUTPUT_ROLES.get(output.suffix.lower(), "an output"))


@contextlib.contextmanager
def _resolve_out(path: str, gif: bool = False, args: argparse.Namespace | None = None) -> Iterator[Path]:
    """Check the output location before anything is generated: ``--out`` and its sidecars must be
    writable files in a folder that exists (created here) and accepts new files, and none of them
    may be one of the command's input files (``args``: ``--config``, ``--actions-file``, ``--image``...).
    Yields ``--out`` for the command's work; the folders made here go again if it fails while they are empty."""
    import glob
    import os
    import tempfile

    from .io_utils import remove_stale_temporaries

    out = Path(path)
    if out.suffix.lower() != ".mp4":
        raise UserInputError(f"--out must end in .mp4, got {out}")
    for file in _output_files(out, gif):
        try:
            is_dir = file.is_dir()
        except OSError as err:  # a name too long (Errno 36) was a traceback
            raise UserInputError(f"--out: {file}: {err.strerror or err}") from None
        if is_dir:
            raise UserInputError(f"--out: {file} is a directory; give the path of a video file")
    if args is not None:
        _check_outputs_spare_inputs(_output_files(out, gif), args)
    with _made_folder(out.parent, "--out") as folder:
        remove_stale_temporaries(folder, glob.escape(out.stem) + ".*")  # what a killed run left (video, sidecars)
        try:  # the outputs are written atomically: a temporary file in this folder, then renamed
            fd, probe = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=".probe", dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise UserInputError(f"--out: cannot write to the folder {folder}: {err.strerror or err}") from None
        yield out


@contextlib.contextmanager
def _made_folder(folder: Path, what: str) -> Iterator[Path]:
    """``folder``, created with its missing parents, for the block; when the block fails (an error, Ctrl-C)
    the folders created here that are still empty are removed again. A folder that existed before, or
    that holds anything (finished work), stays."""
    import os

    created = [path for path in (folder, *folder.parents) if not os.path.lexists(path)]  # deepest first
    try:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserInputError(f"{what}: cannot create the folder {folder}: {err.strerror or err}") from None
        yield folder
    except BaseException:
        for path in created:
            with contextlib.suppress(OSError):  # not empty (or never made): it stays
                path.rmdir()
        raise


def _output_files(out: Path, gif: bool = False) -> list[Path]:
    """The files written for ``--out``: the video and its sidecars (json, yaml; gif with ``--gif``)."""
    return [out, out.with_suffix(".json"), out.with_suffix(".yaml")] + ([out.with_suffix(".gif")] if gif else [])


# ---------------------------------------------------------------------------- generate
def generate_main(args: argparse.Namespace) -> int:
    from .io_utils import restore_moved_aside
    from .session import GenerationSession, check_session_dir
    from .video_io import video_stream

    _check_generation_flags(args)
    actions = _parse_actions(args)
    with _resolve_out(args.out, args.gif, args) as out:  # a failure leaves no empty folder behind
        # every chunk saves the session by replacing its directory: refuse one holding other files now
        session_dir = (check_session_dir(args.session, _output_files(out, args.gif), "--session", _read_paths(args))
                       if args.session else None)
        _quiet_libraries()
        bundle, model_path = _load_bundle(args)
        config = _generation_config(args, bundle)
        if session_dir is not None:
            restore_moved_aside(session_dir, "session.json")  # a save interrupted between its two renames
        if session_dir is not None and (session_dir / "session.json").is_file():
            session = GenerationSession.load(session_dir, bundle)
            done = session.actions
            if len(done) > len(actions) and done[: len(actions)] == actions:
                raise UserInputError(f"saved session {session_dir} already holds {len(done)} chunks, more than the "
                                     f"{len(actions)} actions given; give all its actions (and more to continue)")
            if done != actions[: len(done)]:
                raise UserInputError(f"saved session {session_dir} was made with other actions; "
                                     "use a new --session dir")
            asked = args.image is not None or args.world is not None or args.world_seed is not None
            if asked and not np.array_equal(_first_frame(args, bundle), session.frames[0]):  # was silently ignored
                raise UserInputError(f"saved session {session_dir} was started from another first frame than "
                                     "--image/--world/--world-seed give; resume without them (its own applies) "
                                     "or use a new --session dir")
            conflicts = _settings_conflicts(session.config, config, _explicit_settings(args))
            if conflicts:
                raise UserInputError(
                    f"saved session {session_dir} was made with other settings: {', '.join(conflicts)}; "
                    "resume without them (the saved settings apply) or use a new --session dir"
                )
            print(f"resuming {session_dir}: {len(done)} of {len(actions)} chunks already done", file=sys.stderr)
        else:
            session = GenerationSession(bundle, config)
            session.start(_first_frame(args, bundle))
        _note_untrained_steps(session.config.sampler, bundle)

        upscale = resolve_upscale(args.upscale, bundle.width, bundle.height)
        try:
            with video_stream(out, session.fps, upscale,  # complete at the end
                              before_publish=lambda: remove_sidecars(out, args.gif)) as append:
                append(session.video())  # the first frame (or every frame of a resumed session)

                def after_chunk(record, frames):
                    append(frames)  # encoded now: the video is not held in memory, upscaled, at the end
                    if session_dir is not None:
                        session.save(session_dir)  # a crash now loses at most the chunk in flight

                session.generate(actions[session.num_chunks_done:], callback=after_chunk, progress=not args.quiet)
        except BaseException:  # Ctrl-C, SIGTERM (exit 130) or a failed chunk: keep the finished chunks first
            _keep_interrupted_work(session, out, session_dir, len(actions), upscale)
            raise
        sidecar = write_outputs(session, out, model_path, args.gif, upscale, mp4_written=True)
        per_chunk = [r["seconds"] + r["memory_seconds"] for r in sidecar["chunks"]]
        print(f"wrote {out} ({sidecar['frames']} frames, {len(per_chunk)} chunks, "
              f"{sum(per_chunk) / max(1, len(per_chunk)):.2f} s/chunk, fast={sidecar['fast_mode']})")
        return 0


def _keep_interrupted_work(session, out: Path, session_dir: Path | None, total: int, upscale: int) -> None:
    """After an interrupted ``generate``: say where the finished chunks are. With ``--session`` they are
    saved there (the same command resumes); without, they go to ``<out>.partial.mp4`` (the video under
    its own name appears only complete). A chunk in flight was rolled back by the session."""
    from .video_io import write_video

    done = session.num_chunks_done
    if session_dir is not None:
        try:  # again: the stop may have hit the last chunk's save (its folder moved aside, not yet replaced)
            if done:
                session.save(session_dir)
        except Exception as err:  # the first error is the one raised; this one is reported
            print(f"stopped after {done} of {total} chunks, which could not be saved to {session_dir}: "
                  f"{first_line(err)}", file=sys.stderr)
            return
        print(f"stopped after {done} of {total} chunks; {session_dir} holds them: run the same command "
              "again to resume", file=sys.stderr)
    elif done:
        partial = out.with_name(f"{out.stem}.partial{out.suffix}")
        try:
            write_video(partial, session.video(), fps=session.fps, upscale=upscale)
        except Exception as err:  # a full disk fails this too: the first error is the one raised
            print(f"stopped after {done} of {total} chunks, which could not be saved to {partial}: {first_line(err)}",
                  file=sys.stderr)
            return
        print(f"stopped after {done} of {total} chunks: they are in {partial} (pass --session DIR to make a "
              "run resumable)", file=sys.stderr)


# ---------------------------------------------------------------------------- play
PLAY_HELP = """type an action per line (e.g. "move left"); commands:
  :save DIR   save the session (frames, latents, memory, RNG)
  :load DIR   load a saved session
  :reset      forget the episodic memory (Temp-LoRA back to its initial state)
  :help       this text
  :quit       write the video and exit"""


@dataclass
class _Play:
    """What the ``play`` commands act on: the session (``:load`` replaces it) and where it is written."""

    session: Any
    bundle: Any
    args: argparse.Namespace
    out: Path
    model_path: str

    def say(self, text: str) -> None:
        print(text, flush=True)

    def write(self) -> dict:
        return write_outputs(self.session, self.out, self.model_path, self.args.gif, self.args.upscale)


def _play_quit(play: _Play, argument: str) -> bool:
    return True


def _play_help(play: _Play, argument: str) -> None:
    play.say(PLAY_HELP)


def _play_reset(play: _Play, argument: str) -> None:
    if play.session.fast_learner is None:
        raise UserInputError("this session has no memory to reset (Temp-LoRA is off)")
    play.session.reset_memory()
    play.say("memory reset")


def _play_save(play: _Play, argument: str) -> None:
    from .session import check_session_dir

    if not argument:
        raise UserInputError(":save needs a directory")
    argument = os.path.expanduser(argument)  # no shell expands it here
    # the save replaces the directory: never a folder of other files, nor the one the video is written in
    play.session.save(check_session_dir(argument, _output_files(play.out, play.args.gif), ":save",
                                        _read_paths(play.args)))
    play.say(f"saved to {argument}")


def _play_load(play: _Play, argument: str) -> None:
    from .io_utils import restore_moved_aside
    from .session import GenerationSession

    if not argument:
        raise UserInputError(":load needs a directory")
    argument = os.path.expanduser(argument)
    restore_moved_aside(argument, "session.json")  # a save interrupted between its two renames
    play.session = GenerationSession.load(argument, play.bundle)
    play.write()
    play.say(f"loaded {argument}: {play.session.num_frames} frames")


PLAY_COMMANDS: dict[str, Callable[[_Play, str], bool | None]] = {
    ":quit": _play_quit, ":help": _play_help, ":reset": _play_reset, ":save": _play_save, ":load": _play_load,
}
"""``play`` commands (listed in :data:`PLAY_HELP`): ``handler(play, argument)``; a true result ends the loop."""


def _play_command(play: _Play, line: str) -> bool:
    """Run one ``:command argument`` line; True when the loop should stop. Errors are reported, not raised."""
    command, _, argument = line.partition(" ")
    argument = argument.strip()
    handler = PLAY_COMMANDS.get(command)
    if handler is None:
        play.say(f"unknown command {command}; :help lists them")
        return False
    try:
        return bool(handler(play, argument))
    except UserInputError as err:
        play.say(f"error: {err}")
    except OSError as err:  # e.g. :save into a folder that cannot be written
        play.say(f"error: {command} {argument}: {err.strerror or err}")
    except Exception as err:  # anything else ends this command, not the session
        play.say(f"error: {command} failed: {type(err).__name__}: {first_line(err)}")
    return False


def _play_action(play: _Play, action: str, progress: bool) -> None:
    """Generate one chunk for ``action``, rewrite the video and report the chunk."""
    try:
        play.session.generate([action], progress=progress)
    except UserInputError as err:
        play.say(f"error: {err}")
        return
    except Exception as err:  # e.g. out of memory: the session rolled the chunk back, so it can be retried or saved
        play.say(f"error: the chunk failed ({type(err).__name__}: {first_line(err)}); the session is as before it: "
                 "retry, or :save it")
        return
    record = play.session.records[-1]
    play.write()
    loss = "" if record.temp_lora_loss is None else f", memory loss {record.temp_lora_loss:.4f}"
    play.say(f"chunk {record.index}: {record.action!r} -> frames {record.start_frame}-{record.end_frame - 1} "
             f"({record.seconds + record.memory_seconds:.2f} s{loss})")


def play_main(args: argparse.Namespace) -> int:
    from .session import GenerationSession

    _check_generation_flags(args)
    with _resolve_out(args.out, args.gif, args) as out:  # a failure leaves no empty folder behind
        _quiet_libraries()
        bundle, model_path = _load_bundle(args)
        config = _generation_config(args, bundle)
        args.upscale = resolve_upscale(args.upscale, bundle.width, bundle.height)  # now, not after the first chunk
        session = GenerationSession(bundle, config)
        session.start(_first_frame(args, bundle))
        play = _Play(session, bundle, args, out, model_path)
        interactive = sys.stdin.isatty()
        if hasattr(sys.stdin, "reconfigure"):  # an undecodable byte: that action's one-line error, not a traceback
            sys.stdin.reconfigure(errors="surrogateescape")
        play.say(f"sfvgen play: {bundle.width}x{bundle.height}, fast={config.fast.mode}, writing {out}. "
                 ":help for commands")
        for line in _lines(interactive):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith(":"):
                if _play_command(play, line):
                    break
                continue
            _play_action(play, line, progress=interactive and not args.quiet)
        play.write()
        play.say(f"wrote {out} ({play.session.num_frames} frames)")
        return 0


def _lines(interactive: bool):
    while True:
        try:
            line = input("action> ") if interactive else sys.stdin.readline()
        except EOFError:
            return
        if not interactive and line == "":
            return
        yield line


# ---------------------------------------------------------------------------- serve
APP_INSTALL = 'pip install "gradio>=6.31,<7" (in a clone: pip install -e ".[app]" -c constraints.txt)'
"""How to install the web app's dependencies (named in the error when gradio is missing)."""


def serve_main(args: argparse.Namespace) -> int:
    import os

    _check_generation_flags(args)
    if not 1 <= args.port <= 65535:
        raise UserInputError(f"--port must be in 1..65535, got {args.port}")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no telemetry
    try:
        import gradio  # noqa: F401  (only `serve` needs it)
    except ImportError as err:
        raise UserInputError(f"sfvgen serve needs gradio ({first_line(err)}): {APP_INSTALL}") from None
    from .webapp import WebApp, launch

    _quiet_libraries()
    bundle, model_path = _load_bundle(args)
    app = WebApp(bundle, model_path, _generation_config(args, bundle), upscale=args.upscale,
                 world=args.world or DEFAULT_WORLD, world_seed=args.world_seed or 0)
    os.environ.setdefault("GRADIO_TEMP_DIR", str(app.workdir / "gradio"))  # gradio's copies go with app.close()
    _log_to_stdout("slowfast_vgen.webapp")  # the page's unexpected errors, and the tabs that went away
    try:
        try:
            page = launch(app, args.host, args.port, block=False)
        except OSError as err:  # the port is taken, the host is not this machine's
            reason = ("the port is in use, or the host is not an address of this machine (pass --port N or "
                      "--host ADDRESS)" if "empty port" in str(err) else first_line(err))
            raise UserInputError(f"cannot serve on {args.host}:{args.port}: {reason}") from None
        print(f"sfvgen serve: {bundle.width}x{bundle.height}, fast={app.config.fast.mode}; "
              f"open http://{args.host}:{args.port} (Ctrl-C stops)", flush=True)
        page.block_thread()  # until Ctrl-C or SIGTERM (run_cli: as Ctrl-C); closes the server
    finally:
        app.close()
    return 0


def _log_to_stdout(name: str) -> None:
    """INFO and above of the logger ``name`` (not the other libraries') on standard output, as plain lines."""
    import logging

    log = logging.getLogger(name)
    log.setLevel(logging.INFO)
    if not any(getattr(handler, "sfvgen_stdout", False) for handler in log.handlers):  # once per process
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.sfvgen_stdout = True
        log.addHandler(handler)


# ---------------------------------------------------------------------------- make-model
def make_model_main(args: argparse.Namespace) -> int:
    from .config import load_config, save_config
    from .io_utils import has_own_name
    from .model import ModelBundle, ModelConfig, model_summary

    _quiet_libraries()
    config = load_config(ModelConfig, args.config, args.overrides)
    out = Path(args.out)
    if not has_own_name(out):
        raise UserInputError(f"--out: {str(out)!r} names no directory of its own (the model replaces it as a whole)")
    check_output_directory(out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise UserInputError(f"{out} exists and is not empty (use --force to replace it)")
    bundle = ModelBundle.from_config(config)
    bundle.save_pretrained(out)
    save_config(config, out / "model_config.yaml")
    summary = model_summary(bundle)
    print(f"wrote {out}: UNet3D {summary['unet_parameters'] / 1e6:.2f} M parameters, "
          f"{summary['width']}x{summary['height']} frames, "
          f"{'latent' if config.use_vae else 'pixel'} space (random weights: train it before expecting video)")
    return 0


# ---------------------------------------------------------------------------- eval
def eval_main(args: argparse.Namespace) -> int:
    from .config import keys_set, load_config
    from .evaluation import EvalConfig, evaluate, markdown_table, save_results

    if args.variants is not None and not args.variants.strip(" \t\n,"):
        raise UserInputError(f"--variants is empty ({args.variants!r}); give comma-separated fast modes, "
                             "e.g. --variants off,paper, or leave it out for the default set")
    given = keys_set(args.config, args.overrides)
    for key, instead in (("generation.seed", "seeds (--seeds)"), ("generation.fast.mode", "variants (--variants)")):
        if key in given:  # each run sets it: the value was ignored, yet recorded
            raise UserInputError(f"{key} is set per run by {instead}; leave {key} out")
    out = check_output_directory(Path(args.out))  # before the model is loaded and anything generated
    _quiet_libraries()
    bundle, model_path = _load_bundle(args)
    flags = {"suite": args.suite, "seeds": _int_list(args.seeds), "routes": args.routes,
             "generation.sampler.num_inference_steps": args.steps,
             "variants": f"[{args.variants}]" if args.variants is not None else None}
    overrides = list(args.overrides) + [f"{key}={value}" for key, value in flags.items() if value is not None]  # flags win
    defaults = {"generation": bundle.metadata.get("generation", {})}
    config = load_config(EvalConfig, args.config, overrides, defaults=defaults)
    _note_untrained_steps(config.generation.sampler, bundle)
    with _made_folder(out, "--out"):  # made now: one that cannot be written fails before the runs, not after
        if not os.access(out, os.W_OK | os.X_OK):
            raise UserInputError(f"--out: cannot write into the folder {out}")
        result = evaluate(bundle, config, progress=None if args.quiet else (lambda line: print(line, flush=True)))
        result["model"] = model_path
        written = save_results(result, out)
    print(markdown_table(result))
    print("wrote " + ", ".join(written.values()))
    return 0


def _int_list(text: str | None) -> str | None:
    if text is None:
        return None
    from .config import check_seed

    try:
        seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserInputError(f"--seeds must be comma-separated integers, got {text!r}") from None
    for seed in seeds:
        try:
            check_seed(seed, "--seeds")
        except ValueError as err:
            raise UserInputError(str(err)) from None
    return "[" + ",".join(str(seed) for seed in seeds) + "]"


# ---------------------------------------------------------------------------- plan
PLAN_TASKS = ("navigate-return", "blocks-return")  # = planning.TASKS (no torch import here)


def plan_main(args: argparse.Namespace) -> int:
    from .config import load_config
    from .planning import PlanConfig, markdown_table, resolve_task, run_plan, save_plan_results

    flags = {"episodes": args.episodes, "seed": args.seed, "policy": args.policy, "loop": args.loop,
             "oracle": "true" if args.oracle else None, "generation.fast.mode": args.fast,
             "generation.sampler.num_inference_steps": args.steps}
    overrides = list(args.overrides) + [f"{key}={value}" for key, value in flags.items() if value is not None]  # flags win

    def plan_config(defaults=None):
        config = load_config(PlanConfig, args.config, overrides, defaults=defaults)
        if args.task is not None:  # a path: set as given (flags win), never parsed as a YAML value
            config.task = args.task
        config.idm = args.idm or config.idm
        return config

    config = plan_config()
    resolve_task(config.task, config.num_blocks)  # a bad task fails here, before any model is loaded
    out = check_output_directory(Path(args.out))
    _quiet_libraries()
    bundle = model_path = None
    if config.uses_video_model:
        bundle, model_path = _load_bundle(args)
        config = plan_config(defaults={"generation": bundle.metadata.get("generation", {})})
    result = run_plan(config, bundle, progress=None if args.quiet else (lambda line: print(line, flush=True)))
    result["model"] = model_path
    written = save_plan_results(result, out, fps=bundle.fps if bundle is not None else 8.0)
    print(markdown_table(result))
    print("wrote " + ", ".join(written.values()))
    return 0


# ---------------------------------------------------------------------------- parser
def package_version() -> str:
    """The installed distribution's version (``unknown`` when the package runs from a bare source tree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("slowfast_vgen")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sfvgen", description="Action-driven long video generation with slow-fast learning.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=ConfigKeysParser)

    generate = sub.add_parser("generate", help="generate a long video from actions",
                              description="Generate a long video, one chunk per action, with Temp-LoRA memory.")
    generate.add_argument("--actions", help='actions separated by ";", e.g. "move right; move right; move left"')
    generate.add_argument("--actions-file", help="text file with one action per line ('#' comments allowed)")
    generate.add_argument("--out", required=True, help="output video (.mp4); video.json and video.yaml are written beside it")
    generate.add_argument("--gif", action="store_true", help="also write a .gif beside the mp4")
    generate.add_argument("--session", help="session directory (new, empty or a saved session): saved after every "
                          "chunk, resumed if it exists")
    _add_generation_options(generate)
    generate.config_class = "session:GenerationConfig"
    generate.keys_note = GENERATION_DEFAULTS_NOTE
    generate.set_defaults(handler=generate_main)

    play = sub.add_parser("play", help="interactive generation, one action per line",
                          description="Interactive generation: type actions; :save/:load/:reset/:quit.",
                          epilog=PLAY_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    play.add_argument("--out", default="play.mp4", help="video kept up to date after every chunk (default: play.mp4)")
    play.add_argument("--gif", action="store_true", help="also keep a .gif up to date")
    _add_generation_options(play)
    play.config_class = "session:GenerationConfig"
    play.keys_note = GENERATION_DEFAULTS_NOTE
    play.set_defaults(handler=play_main)

    serve = sub.add_parser("serve", help="play in the browser: a local web app",
                           description="A local web app (gradio): pick a world or upload a first frame, press arrows "
                                       "or type actions, watch the video grow; switch, reset, save and load the "
                                       "Temp-LoRA memory and the session. Every browser tab is its own episode. "
                                       f"Needs gradio: {APP_INSTALL}")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    _add_generation_options(serve, image=False)
    serve.config_class = "session:GenerationConfig"
    serve.keys_note = GENERATION_DEFAULTS_NOTE
    serve.set_defaults(handler=serve_main)

    evaluate = sub.add_parser("eval", help="evaluate memory and quality against exact ground truth",
                              description="Evaluation suites on held-out navigation worlds: chunk | long | revisit | rollout, "
                                          "for every Temp-LoRA variant and several seeds (mean and 95% CI); world=blocks "
                                          "runs chunk and rollout on held-out block tables.")
    evaluate.add_argument("--suite", choices=EVAL_SUITES, help="suite (default revisit)")
    evaluate.add_argument("--variants", help="comma-separated fast modes (default off,paper,text,full-sequence)")
    evaluate.add_argument("--seeds", help="comma-separated generation seeds (default 0,1,2)")
    evaluate.add_argument("--routes", type=int, help="routes (held-out worlds) per seed (default 3)")
    evaluate.add_argument("--steps", type=int, help="denoising steps per chunk")
    evaluate.add_argument("--out", required=True, help="output directory: results.json, results.md, PNG figures")
    evaluate.add_argument("--config", help="YAML with EvalConfig values (e.g. configs/eval/revisit.yaml)")
    evaluate.add_argument("--quiet", action="store_true", help="no per-run lines")
    evaluate.add_argument("overrides", nargs="*", metavar="key=value",
                          help="EvalConfig overrides, e.g. actions_per_route=10 metrics.resnet18_weights=r18.safetensors")
    _add_model_options(evaluate)
    evaluate.config_class = "evaluation:EvalConfig"
    evaluate.set_defaults(handler=eval_main)

    plan = sub.add_parser("plan", help="long-horizon planning: video plans executed by an inverse dynamics model",
                          description="Each subgoal becomes one generated chunk, an inverse dynamics model reads the "
                                      "action, the procedural world executes it; return tasks on held-out worlds "
                                      "(mean and 95% CI over episodes).")
    plan.add_argument("--task", help=f"{' | '.join(PLAN_TASKS)} | a task file (YAML: world, outward, return); "
                                      "default: the config's task (navigate-return)")
    plan.add_argument("--episodes", type=int, help="episodes, one held-out world each (default 4)")
    plan.add_argument("--seed", type=int, help="generation seed of episode 0 (episode i: seed + i) and random-policy seed (default 0)")
    plan.add_argument("--fast", choices=["paper", "off", "text", "full-sequence"], help="Temp-LoRA rule of the video model (default: paper)")
    plan.add_argument("--oracle", action="store_true", help="world model = the world's own renderer (upper bound)")
    plan.add_argument("--policy", choices=["model", "random"], help="model = world model + IDM (default); random = uniform primitives")
    plan.add_argument("--loop", choices=["closed", "open"], help="closed (default) = re-seed from every real observation; open = plan on generated frames only")
    plan.add_argument("--idm", help="'analytic' (default) or a trained IDM directory (train/train_idm.py)")
    plan.add_argument("--steps", type=int, help="denoising steps per chunk")
    plan.add_argument("--out", required=True, help="output directory: results.json, results.md, episodes/episode-NNN.mp4")
    plan.add_argument("--config", help="YAML with PlanConfig values")
    plan.add_argument("--quiet", action="store_true", help="no per-episode lines")
    plan.add_argument("overrides", nargs="*", metavar="key=value",
                      help="PlanConfig overrides, e.g. outward_actions=3 generation.frames_per_chunk=4")
    _add_model_options(plan)
    plan.config_class = "planning:PlanConfig"
    plan.set_defaults(handler=plan_main)

    make_model = sub.add_parser("make-model", help="write a freshly initialised model directory",
                                description="Write a random-weight model (for tests, demos and as a training start).")
    make_model.add_argument("--out", required=True, help="output model directory")
    make_model.add_argument("--config", help="YAML with ModelConfig values, e.g. configs/model/tiny.yaml")
    make_model.add_argument("--force", action="store_true", help="replace an existing directory")
    make_model.add_argument("overrides", nargs="*", metavar="key=value", help="ModelConfig overrides")
    make_model.config_class = "model:ModelConfig"
    make_model.set_defaults(handler=make_model_main)
    return parser


def _main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also come after a flag (`play fast.rank=4 --out x seed=1`): argparse takes only
    # the first run of positionals, the others arrive here, in order
    stray = [item for item in extra if item.startswith("-") or "=" not in item or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args.handler(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``sfvgen`` (the console script passes the return value to ``sys.exit``)."""
    return run_cli(_main, argv)
