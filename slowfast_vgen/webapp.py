"""``sfvgen serve``: play in the browser — a local gradio app over :class:`GenerationSession`.

Everything the page does is a method of :class:`WebApp` (start an episode from a world or an
uploaded frame, one chunk per action, switch the Temp-LoRA rule, reset / save / load the memory
and the whole session, export the video and its sidecar) or a pure function (:func:`stats_rows`,
:func:`stats_svg`); :func:`build_ui` lays the page out over them and :func:`launch` serves it.
gradio is imported only there, so the rest of the package works without it.

Sharing one model between browser tabs:

* the :class:`~slowfast_vgen.model.ModelBundle` is loaded once; every tab holds its own
  :class:`Tab` (in a ``gr.State``) with its own session, hence its own Temp-LoRA adapter on the
  shared UNet (see :mod:`slowfast_vgen.session`): two tabs never share frames or memory;
* :attr:`WebApp.model_lock` serialises every use of the model (denoising, memory updates, adding
  or deleting an adapter), so two tabs never run the UNet at once, while the page's other events
  (downloads, plots, messages) keep running in the queue's other workers;
* :attr:`Tab.lock` makes one tab's events run one after the other (two quick arrow presses are
  two chunks, in order);
* a tab that goes away (closed or reloaded: gradio's ``unload`` event) has its session closed at
  once by :meth:`WebApp.detach` (its adapter leaves the shared UNet) and its folder removed; the
  ``gr.State``'s ``delete_callback`` does the same for whatever gradio deletes later.

Saved sessions and memories are the directories ``sfvgen play``'s ``:save DIR`` and
``session.fast_learner.save(DIR)`` write, zipped for the browser; a zip of a directory written
by ``sfvgen play`` loads here, and an unzipped download loads with ``:load DIR``.
"""

# no `from __future__ import annotations`: gradio reads the handlers' `request: gr.Request` annotations
# at run time, and `gr` is a name local to build_ui
import contextlib
import gc
import html
import itertools
import logging
import math
import os
import shutil
import tempfile
import threading
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from .config import check_seed
from .errors import UserInputError, first_line
from .fast_learner import FAST_MODES, FastLearnerConfig
from .session import ChunkRecord, GenerationConfig, GenerationSession

if TYPE_CHECKING:
    from .model import ModelBundle

logger = logging.getLogger(__name__)

ARROW_ACTIONS = {"left": "move left", "up": "move up", "down": "move down", "right": "move right"}
"""Arrow buttons (and the keyboard's arrow keys) -> the action they send."""
ARROW_LABELS = {"left": "←", "up": "↑", "down": "↓", "right": "→"}
MAX_UNZIPPED_BYTES = 4 * 2**30
"""Refuse uploaded zips that would unpack to more than this (a zip bomb, not a session)."""
VIDEO_NAME = "video.mp4"


@dataclass
class Tab:
    """One browser tab's episode: its session (with its own Temp-LoRA adapter) and output folder."""

    session: GenerationSession
    folder: Path
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    closed: bool = False
    """True once :meth:`WebApp.close_tab` closed it (the browser tab went away)."""


class WebApp:
    """What the page does, over one shared model; one :class:`Tab` per browser tab.

    Args:
        bundle: the model, shared by every tab.
        model_path: the model directory (recorded in the sidecar JSON).
        config: the generation settings of a new episode (``sfvgen serve`` builds it like
            ``sfvgen play``: the model's recommended settings, ``--config``, ``key=value``, flags);
            the page picks its seed and Temp-LoRA rule.
        upscale: integer enlargement of the written video (default: :func:`~slowfast_vgen.video_io.auto_upscale`).
        world, world_seed: the page's first choice of procedural world for the first frame.
        workdir: where the tabs' videos and saved files are written (default: a temporary folder
            removed by :meth:`close`).
    """

    def __init__(self, bundle: "ModelBundle", model_path: str, config: GenerationConfig, *, upscale: int | None = None,
                 world: str = "navigation", world_seed: int = 0, workdir: str | os.PathLike | None = None) -> None:
        from .worlds import world_spec

        world_spec(world)  # an unknown world is a UserInputError now, not in the page
        self.bundle = bundle
        self.model_path = model_path
        self.config = config
        self.upscale = upscale
        self.world = world
        self.world_seed = world_seed
        self.model_lock = threading.Lock()
        self._tempdir = None if workdir is not None else tempfile.TemporaryDirectory(prefix="sfvgen-serve-")
        self.workdir = Path(workdir if workdir is not None else self._tempdir.name)
        self._tab_numbers = itertools.count(1)
        self._tab_numbers_lock = threading.Lock()
        self._owners: dict[str, Tab] = {}  # browser session (gradio's session hash) -> its tab
        self._owners_lock = threading.Lock()
        self._session_locks: dict[str, threading.Lock] = {}  # browser session -> lock of "its tab, or a new one"
        self._session_locks_lock = threading.Lock()

    def close(self) -> None:
        """Remove the temporary work folder (the tabs' videos and saved files)."""
        if self._tempdir is not None:
            self._tempdir.cleanup()

    # ------------------------------------------------------------------ 1. episodes
    def generation_config(self, fast: str | None = None, seed: int | float | None = None) -> GenerationConfig:
        """The app's settings with the page's Temp-LoRA rule and seed; bad values are :class:`UserInputError`."""
        config = self.config
        if fast is not None and fast != config.fast.mode:
            config = replace(config, fast=with_rule(config.fast, fast))
        if seed is not None:
            seed = _integer(seed, "seed")
            try:
                check_seed(seed)
            except ValueError as err:
                raise UserInputError(str(err)) from None
            config = replace(config, seed=seed)
        return config

    def first_frame(self, world: str | None = None, world_seed: int | float | None = None,
                    image: Any = None) -> np.ndarray:
        """The first frame at the model's size: an uploaded image (a path or an upload) if given,
        else the first frame of the procedural ``world`` number ``world_seed`` (as ``sfvgen play``)."""
        from .cli import world_first_frame
        from .video_io import read_image

        size = (self.bundle.height, self.bundle.width)
        path = upload_path(image)
        if path is not None:
            try:
                return read_image(path, size=size)
            except UserInputError:
                raise UserInputError(f"{path.name} is not an image this app can read (use a PNG or JPEG)") from None
            except Exception as err:  # anything else PIL raises on a strange file: still a bad upload
                raise UserInputError(f"{path.name} cannot be used as the first frame: {first_line(err)}") from None
        world_seed = _integer(self.world_seed if world_seed is None else world_seed, "world seed")
        if world_seed < 0:
            raise UserInputError(f"world seed must be >= 0, got {world_seed}")
        return world_first_frame(world or self.world, world_seed, *size)

    def start(self, world: str | None = None, world_seed: int | float | None = None, seed: int | float | None = None,
              fast: str | None = None, image: Any = None, tab: Tab | None = None) -> Tab:
        """A new episode from a first frame; replaces ``tab``'s episode (and memory) when given.

        Everything is checked before the old episode is closed: a bad upload leaves ``tab`` as it was.
        """
        config = self.generation_config(fast, seed)
        frame = self.first_frame(world, world_seed, image)
        with self.model_lock:
            session = GenerationSession(self.bundle, config)  # adds this episode's adapter to the shared UNet
            try:
                session.start(frame)
            except BaseException:
                session.close()
                raise
        if tab is None:
            return self._new_tab(session)
        self._replace_session(tab, session)
        return tab

    def step(self, tab: Tab, action: str, progress: bool = False) -> ChunkRecord:
        """Generate one chunk for ``action`` (denoising + memory update) and rewrite the tab's video."""
        check_action(action)
        with self.model_lock:
            tab.session.generate([action], progress=progress)  # other UserInputErrors (e.g. unknown text) pass
        self.export(tab)
        return tab.session.records[-1]

    def switch_fast(self, tab: Tab, fast: str) -> bool:
        """Use the Temp-LoRA rule ``fast`` from the next chunk on; the video goes on, the memory starts
        afresh (a new adapter). False when ``fast`` is already the rule."""
        old = tab.session
        if fast == old.config.fast.mode:
            return False
        config = replace(old.config, fast=with_rule(old.config.fast, fast))
        with self.model_lock:
            new = GenerationSession(self.bundle, config)
            # continue the episode exactly where it is: the state GenerationSession.load restores
            new.latent_chunks = list(old.latent_chunks)
            new.frames = list(old.frames)
            new.records = list(old.records)
            new.sample_generator.set_state(old.sample_generator.get_state())
            new.memory_generator.set_state(old.memory_generator.get_state())
        self._replace_session(tab, new)
        return True

    def reset_memory(self, tab: Tab) -> None:
        """Forget the episodic memory (``:reset``); the frames stay."""
        if tab.session.fast_learner is None:
            raise UserInputError("this episode has no memory (Temp-LoRA is off)")
        with self.model_lock:
            tab.session.reset_memory()

    # ------------------------------------------------------------------ 2. save and load (zipped `sfvgen play` directories)
    def save_session(self, tab: Tab) -> Path:
        """The whole session (``:save DIR``'s directory: frames, latents, memory, optimizer, RNG) as a zip."""
        directory = self._scratch(tab, "session")
        with self.model_lock:  # reads the UNet's state dict, which other tabs' adapters come and go in
            tab.session.save(directory)
        return _zip_directory(directory, tab.folder / f"session-{tab.session.num_chunks_done}-chunks.zip")

    def load_session(self, tab: Tab | None, upload: Any) -> Tab:
        """Replace ``tab``'s episode by a saved session (a zip of a ``:save DIR`` directory)."""
        folder = tab.folder if tab is not None else self._tab_folder()
        try:
            directory = _unzip_upload(upload, folder / "upload", marker="session.json")
            with self.model_lock:
                try:
                    session = GenerationSession.load(directory, self.bundle)
                except UserInputError as err:  # a damaged or foreign session
                    failure = _named_by_upload(err, directory, upload)
                else:
                    failure = None
                if failure is not None:
                    gc.collect()  # a half-built session's adapter leaves the UNet now, under the lock
                    raise UserInputError(failure)
        except BaseException:
            if tab is None:  # the new tab's folder goes with the failed upload
                shutil.rmtree(folder, ignore_errors=True)
            raise
        if tab is None:
            tab = Tab(session, folder)
            self.export(tab)
        else:
            self._replace_session(tab, session)
        return tab

    def save_memory(self, tab: Tab) -> Path:
        """The episodic memory alone (a peft adapter directory) as a zip."""
        if tab.session.fast_learner is None:
            raise UserInputError("this episode has no memory to save (Temp-LoRA is off)")
        directory = self._scratch(tab, "memory")
        with self.model_lock:
            tab.session.fast_learner.save(directory)
        return _zip_directory(directory, tab.folder / f"memory-{tab.session.num_chunks_done}-chunks.zip")

    def load_memory(self, tab: Tab, upload: Any) -> list[str]:
        """Replace the episode's memory by a saved one (a zip of a memory directory); the frames stay.
        Returns the settings (``read_scale 0.5 -> 1.0``) in which this episode learns or reads it
        differently from the episode that made it."""
        if tab.session.fast_learner is None:
            raise UserInputError("this episode has no memory to load into (Temp-LoRA is off): choose a rule first")
        directory = _unzip_upload(upload, tab.folder / "upload", marker="adapter_config.json")
        with self.model_lock:
            try:
                return tab.session.fast_learner.load(directory)
            except UserInputError as err:  # damaged, other rank/alpha/layers/model
                raise UserInputError(_named_by_upload(err, directory, upload)) from None

    # ------------------------------------------------------------------ 3. outputs
    def export(self, tab: Tab) -> tuple[Path, Path]:
        """Write the tab's ``video.mp4`` and its sidecar ``video.json`` (and ``video.yaml``) as ``sfvgen play`` does."""
        from .cli import write_outputs

        out = tab.folder / VIDEO_NAME
        write_outputs(tab.session, out, self.model_path, gif=False, upscale=self.upscale)
        return out, out.with_suffix(".json")

    # ------------------------------------------------------------------ 4. tabs that go away
    def tab_for(self, owner: str | None, start: Callable[[], Tab]) -> tuple[Tab, bool]:
        """The tab of the browser session ``owner``, else ``start()``'s, attached to it; True when started.

        Under a per-session lock: two quick first presses in one browser tab start one episode, the second
        press uses it (without it, each saw no tab and started its own, one orphaned with its adapter and
        folder). Without an ``owner`` (no gradio request) it just starts one.
        """
        if not owner:
            return start(), True
        with self._session_lock(owner):
            tab = self.tab_of(owner)
            if tab is not None and not tab.closed:
                return tab, False
            tab = start()
            self.attach(owner, tab)
            return tab, True

    def _session_lock(self, owner: str) -> threading.Lock:
        with self._session_locks_lock:
            return self._session_locks.setdefault(owner, threading.Lock())

    def attach(self, owner: str, tab: Tab) -> None:
        """Record ``tab`` as the episode of the browser session ``owner``, for :meth:`detach`."""
        with self._owners_lock:
            self._owners[owner] = tab

    def detach(self, owner: str) -> bool:
        """The browser session ``owner`` went away (its tab was closed or reloaded): :meth:`close_tab` its
        tab now. False when it had none (it never started an episode) or it is closed already."""
        with self._session_lock(owner):  # after an episode it is starting (tab_for), which then goes too
            with self._owners_lock:
                tab = self._owners.pop(owner, None)
        with self._session_locks_lock:
            self._session_locks.pop(owner, None)
        return tab is not None and self.close_tab(tab)

    def close_tab(self, tab: Tab) -> bool:
        """Close ``tab``'s session (its Temp-LoRA adapter leaves the shared model now) and remove its
        folder; after the tab's running event, if any. False when it was closed already."""
        with tab.lock:
            if tab.closed:
                return False
            with self.model_lock:
                tab.session.close()
            tab.closed = True
        shutil.rmtree(tab.folder, ignore_errors=True)
        with self._owners_lock:
            for owner in [owner for owner, other in self._owners.items() if other is tab]:
                del self._owners[owner]
        logger.info("sfvgen serve: closed the episode of %s (its browser tab went away; %d chunks): its memory "
                    "left the model", tab.folder.name, tab.session.num_chunks_done)
        return True

    def tab_of(self, owner: str) -> Tab | None:
        """The tab attached to the browser session ``owner``, if any."""
        with self._owners_lock:
            return self._owners.get(owner)

    @property
    def open_tabs(self) -> int:
        """How many browser sessions hold an episode (attached and not yet detached)."""
        with self._owners_lock:
            return len(self._owners)

    # ------------------------------------------------------------------ helpers
    def _new_tab(self, session: GenerationSession) -> Tab:
        tab = Tab(session, self._tab_folder())
        self.export(tab)
        return tab

    def _tab_folder(self) -> Path:
        with self._tab_numbers_lock:
            number = next(self._tab_numbers)
        folder = self.workdir / f"tab-{number}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _replace_session(self, tab: Tab, session: GenerationSession) -> None:
        """``session`` becomes ``tab``'s episode once its video is written; until then (and if that
        fails) the old episode stays, so a session that cannot be shown never costs the tab its work."""
        old, tab.session = tab.session, session
        try:
            self.export(tab)
        except BaseException:
            tab.session = old
            with self.model_lock:
                session.close()
            self.export(tab)  # the old episode's video again
            raise
        with self.model_lock:
            old.close()  # its adapter leaves the shared UNet now, not at some later garbage collection

    @staticmethod
    def _scratch(tab: Tab, name: str) -> Path:
        directory = tab.folder / "saved" / name
        shutil.rmtree(directory, ignore_errors=True)
        return directory


def check_action(action: Any) -> str:
    """The stripped action; an empty one is a :class:`UserInputError` worded for the page."""
    if not isinstance(action, str) or not action.strip():
        raise UserInputError('the action is empty: type one (e.g. "move left") or press an arrow')
    return action.strip()


def check_fast(fast: Any) -> str:
    """A Temp-LoRA rule of :data:`~slowfast_vgen.fast_learner.FAST_MODES`; :class:`UserInputError` otherwise."""
    if fast not in FAST_MODES:
        raise UserInputError(f"unknown Temp-LoRA rule {fast!r}; choose one of {', '.join(FAST_MODES)}")
    return fast


def with_rule(fast_config: FastLearnerConfig, fast: Any) -> FastLearnerConfig:
    """``fast_config`` with the Temp-LoRA rule ``fast``; a rule its other settings do not allow (e.g.
    ``fast.replay`` with ``text``) is a :class:`UserInputError`, as an unknown rule is."""
    try:
        return replace(fast_config, mode=check_fast(fast))
    except ValueError as err:
        raise UserInputError(f"Temp-LoRA rule {fast}: {err}") from None


# ---------------------------------------------------------------------------- uploads and zips
def upload_path(upload: Any) -> Path | None:
    """The file of an upload: a path, or gradio's uploaded-file object (its ``.name``); None for no upload."""
    if upload is None or upload == "":
        return None
    name = getattr(upload, "name", upload)
    if not isinstance(name, (str, os.PathLike)):
        raise UserInputError(f"unsupported upload {type(upload).__name__}")
    return Path(name)


def _zip_directory(directory: Path, archive: Path) -> Path:
    """``directory``'s files, relative to it, as the zip ``archive`` (written atomically)."""
    from .io_utils import atomic_output_file

    with atomic_output_file(archive) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as handle:
        for file in sorted(path for path in directory.rglob("*") if path.is_file()):
            handle.write(file, file.relative_to(directory).as_posix())
    return archive


def _unzip_upload(upload: Any, destination: Path, marker: str) -> Path:
    """Unpack an uploaded zip into a fresh ``destination``; the folder in it that holds ``marker``
    (the zip's root or its single top-level folder). Bad zips are :class:`UserInputError`."""
    path = upload_path(upload)
    if path is None:
        raise UserInputError("no file uploaded")
    if not zipfile.is_zipfile(path):
        raise UserInputError(f"{path.name} is not a zip file (upload a zip saved by this app, or a zipped "
                             f"`sfvgen play` :save directory)")
    shutil.rmtree(destination, ignore_errors=True)
    destination.mkdir(parents=True)
    try:
        with zipfile.ZipFile(path) as handle:
            members = handle.infolist()
            if sum(member.file_size for member in members) > MAX_UNZIPPED_BYTES:
                raise UserInputError(f"{path.name} unpacks to more than {MAX_UNZIPPED_BYTES // 2**30} GiB")
            for member in members:
                parts = Path(member.filename).parts
                if member.filename.startswith(("/", "\\")) or ".." in parts or ":" in member.filename:
                    raise UserInputError(f"{path.name} holds a path outside the zip: {member.filename}")
            handle.extractall(destination)
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise UserInputError(f"{path.name} is a damaged zip file: {first_line(err)}") from None
    if (destination / marker).is_file():
        return destination
    folders = [child for child in destination.iterdir()  # not the __MACOSX/ or dot folders archivers add
               if child.is_dir() and child.name != "__MACOSX" and not child.name.startswith(".")]
    if len(folders) == 1 and (folders[0] / marker).is_file():
        return folders[0]
    raise UserInputError(f"{path.name} holds no {marker}: not a saved {'session' if marker == 'session.json' else 'memory'}")


def _named_by_upload(err: UserInputError, directory: Path, upload: Any) -> str:
    """``err``'s message with the server's scratch folder an upload was unpacked into named as the upload
    (``bad.zip/session.json``, not ``/tmp/.../upload/session.json``): the page shows the user's file."""
    return str(err).replace(str(directory), upload_path(upload).name)


def _integer(value: Any, name: str) -> int:
    """An integer from a page field (gradio numbers may arrive as floats, or as text); :class:`UserInputError`
    otherwise. An ``int`` is kept exactly (through a float, seeds above 2**53 changed), a bool is refused."""
    refused = UserInputError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, bool):
        raise refused
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return int(value.strip())
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise refused from None
    if not number.is_integer():  # NaN and infinities are not either
        raise refused
    return int(number)


# ---------------------------------------------------------------------------- the stats plot
STATS_SERIES = (
    ("seconds", "s / chunk", "#2563eb"),
    ("loss", "Temp-LoRA loss", "#dc2626"),
    ("peak_mb", "peak memory (MB)", "#059669"),
)
"""The plot's panels: row key, title, colour."""


def stats_rows(records: Sequence[ChunkRecord]) -> list[dict[str, Any]]:
    """One row per chunk: index, action, seconds (generation + memory update), Temp-LoRA loss, peak MB."""
    return [
        {"chunk": record.index, "action": record.action, "seconds": record.seconds + record.memory_seconds,
         "loss": record.temp_lora_loss, "peak_mb": record.peak_memory_mb}
        for record in records
    ]


def stats_svg(rows: Sequence[dict[str, Any]], width: int = 200, height: int = 90) -> str:
    """The per-chunk stats as small inline SVG line plots, one ``<circle class="sfv-point">`` per chunk
    and series (no script, no external resource). Missing values (loss with Temp-LoRA off) are gaps."""
    panels = []
    pad_x, pad_top, pad_bottom = 8, 22, 8
    for key, title, colour in STATS_SERIES:
        points = [(row["chunk"], float(row[key]), row["action"]) for row in rows
                  if row.get(key) is not None and math.isfinite(row[key])]
        latest = f"{points[-1][1]:.4g}" if points else "—"
        parts = [f'<svg class="sfv-plot" data-series="{key}" data-points="{len(points)}" width="{width}" '
                 f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">',
                 f'<rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" rx="6" fill="none" stroke="#d1d5db"/>',
                 f'<text x="{pad_x}" y="15" font-size="12" fill="#374151">{html.escape(title)}: {latest}</text>']
        if points:
            chunks = [point[0] for point in points]
            values = [point[1] for point in points]
            x_low, x_high = min(chunks), max(chunks)
            y_low, y_high = min(values), max(values)
            if y_high == y_low:
                y_low, y_high = y_low - 1, y_high + 1

            def xy(chunk: float, value: float) -> tuple[float, float]:
                x = pad_x + (width - 2 * pad_x) * (0.5 if x_high == x_low else (chunk - x_low) / (x_high - x_low))
                y = height - pad_bottom - (height - pad_top - pad_bottom) * (value - y_low) / (y_high - y_low)
                return round(x, 1), round(y, 1)

            coords = [xy(chunk, value) for chunk, value, _ in points]
            if len(coords) > 1:
                line = " ".join(f"{x},{y}" for x, y in coords)
                parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
            for (x, y), (chunk, value, action) in zip(coords, points):
                parts.append(f'<circle class="sfv-point" cx="{x}" cy="{y}" r="3" fill="{colour}">'
                             f'<title>chunk {chunk} ({html.escape(str(action))}): {value:.4g}</title></circle>')
        parts.append("</svg>")
        panels.append("".join(parts))
    return f'<div class="sfv-stats" data-chunks="{len(rows)}">{"".join(panels)}</div>'


# ---------------------------------------------------------------------------- the page
KEYBOARD_JS = """
() => {
  if (window.sfvgenKeys) { return []; }
  window.sfvgenKeys = true;
  const buttons = {ArrowLeft: "sfv-left", ArrowUp: "sfv-up", ArrowDown: "sfv-down", ArrowRight: "sfv-right"};
  document.addEventListener("keydown", (event) => {
    const id = buttons[event.key];
    const target = event.target;
    if (!id || event.altKey || event.ctrlKey || event.metaKey) { return; }
    if (target && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName))) { return; }
    const app = document.querySelector("gradio-app");
    const root = app && app.shadowRoot ? app.shadowRoot : document;
    const button = root.getElementById(id);
    if (button) { event.preventDefault(); button.click(); }
  });
  return [];
}
"""
"""Arrow keys press the arrow buttons (except while typing in a field)."""

CSS = """
#sfv-video video { image-rendering: pixelated; object-fit: contain; max-height: 360px; }
.sfv-stats { display: flex; flex-wrap: wrap; gap: 8px; }
.sfv-stats svg { flex: 1 1 0; min-width: 150px; max-width: 200px; height: auto; }
#sfv-arrows button { font-size: 1.4em; }
"""

HELP = (
    "Pick a world and seeds (or upload a first frame) and press **New episode**; then type an action "
    "(`move left`, `head east`, …) or press the arrow buttons or your keyboard's arrow keys: every action "
    "generates the next chunk and the Temp-LoRA memory learns from it. Each browser tab is its own episode."
)


def build_ui(app: WebApp):
    """The gradio ``Blocks`` page over ``app`` (one ``gr.State`` :class:`Tab` per browser tab).

    A tab's episode is closed when the tab goes away: the page's ``unload`` event (the tab's
    connection ends: closed, reloaded, navigated away) runs :meth:`WebApp.detach`, and the state's
    ``delete_callback`` runs :meth:`WebApp.close_tab` on whatever gradio deletes later.
    """
    import gradio as gr

    from .worlds import available_worlds

    def message(text: str) -> str:
        return f"**{html.escape(text)}**" if text else ""

    def failed(err: BaseException) -> str:
        """An error shown in the page (a toast and the status line); the tab's episode goes on."""
        if isinstance(err, UserInputError):
            text = f"error: {err}"
        else:  # a bug or an environment problem: logged with its traceback, reported in one line
            logger.exception("sfvgen serve: unexpected error")
            text = f"error: unexpected {type(err).__name__}: {first_line(err)}"
        gr.Warning(text)
        return text

    def view(tab: Tab | None, text: str = "") -> dict:
        """The page's outputs for ``tab``'s episode."""
        if tab is None:
            return {state: None, video: None, downloads: None, stats: stats_svg([]), status: message(text)}
        video_file, sidecar = tab.folder / VIDEO_NAME, tab.folder / "video.json"
        return {state: tab, video: str(video_file), downloads: [str(video_file), str(sidecar)],
                stats: stats_svg(stats_rows(tab.session.records)), status: message(text),
                fast: gr.update(value=tab.session.config.fast.mode)}

    def unchanged(text: str) -> dict:
        return {status: message(text)}

    def no_change() -> dict:
        return {status: gr.update()}

    def summary(tab: Tab) -> str:
        session = tab.session
        return (f"{session.num_frames} frames, {session.num_chunks_done} chunks, "
                f"Temp-LoRA {session.config.fast.mode}, seed {session.config.seed}")

    def live(tab: Tab | None) -> Tab | None:
        """The state's tab, or None when there is none or it was closed (its page had disconnected)."""
        return None if tab is None or tab.closed else tab

    @contextlib.contextmanager
    def using(tab: Tab):
        """The tab's lock, for one event; a tab closed meanwhile is a message."""
        with tab.lock:
            if tab.closed:
                raise UserInputError("this tab's episode was closed (the page had disconnected): press New episode")
            yield

    def tab_or_start(tab: Tab | None, request: gr.Request | None, start: Callable[[], Tab]) -> tuple[Tab, bool]:
        """The event's tab: the state's, else this browser tab's (a quick second press finds the first's),
        else a new one from ``start()``, attached (closed by on_unload when this browser tab goes away);
        True when started."""
        tab = live(tab)
        if tab is not None:
            return tab, False
        return app.tab_for(request.session_hash if request is not None else None, start)

    # handlers: each runs one WebApp method; a failure is a message, and the tab keeps its episode
    def on_new(tab, world_name, world_number, seed_number, fast_mode, upload, request: gr.Request):
        try:
            tab, started = tab_or_start(
                tab, request, lambda: app.start(world_name, world_number, seed_number, fast_mode, upload))
            if not started:
                with using(tab):
                    app.start(world_name, world_number, seed_number, fast_mode, upload, tab=tab)
        except Exception as err:
            return unchanged(failed(err))
        return view(tab, f"new episode: {summary(tab)}")

    def on_action(tab, text, world_name, world_number, seed_number, fast_mode, upload, request: gr.Request,
                  progress=gr.Progress(track_tqdm=True)):
        tab, started = live(tab), False
        try:
            check_action(text)
            if app.model_lock.locked():
                progress(0, desc="waiting for the model (another tab is generating)")
            # the first action starts an episode from the current choices
            tab, started = tab_or_start(
                tab, request, lambda: app.start(world_name, world_number, seed_number, fast_mode, upload))
            with using(tab):
                record = app.step(tab, text, progress=True)
        except Exception as err:
            return view(tab, failed(err)) if started else unchanged(failed(err))
        loss = "" if record.temp_lora_loss is None else f", Temp-LoRA loss {record.temp_lora_loss:.4f}"
        return view(tab, f"chunk {record.index}: {record.action!r} -> frames {record.start_frame}-"
                         f"{record.end_frame - 1} ({record.seconds + record.memory_seconds:.2f} s{loss})")

    def arrow(direction: str):
        def on_arrow(tab, world_name, world_number, seed_number, fast_mode, upload, request: gr.Request,
                     progress=gr.Progress(track_tqdm=True)):
            return on_action(tab, ARROW_ACTIONS[direction], world_name, world_number, seed_number, fast_mode,
                             upload, request, progress)
        on_arrow.__name__ = f"on_{direction}"
        return on_arrow

    def on_fast(tab, fast_mode):
        tab = live(tab)
        if tab is None or fast_mode == tab.session.config.fast.mode:
            return no_change()  # no episode yet: New episode uses the rule
        try:
            with using(tab):
                app.switch_fast(tab, fast_mode)
        except Exception as err:
            return unchanged(failed(err))
        return view(tab, f"Temp-LoRA is now {fast_mode} (a fresh memory); the video goes on")

    def needs_episode(tab) -> Tab:
        tab = live(tab)
        if tab is None:
            raise UserInputError("no episode yet: press New episode or an arrow first")
        return tab

    def on_reset(tab):
        try:
            tab = needs_episode(tab)
            with using(tab):
                app.reset_memory(tab)
        except Exception as err:
            return unchanged(failed(err))
        return view(tab, "memory reset (Temp-LoRA back to its initial state); the frames stay")

    def saver(method, what: str):
        def on_save(tab):
            try:
                tab = needs_episode(tab)
                with using(tab):
                    archive = method(tab)
            except Exception as err:
                return unchanged(failed(err))
            return {saved: str(archive), status: message(f"{what} saved: download {archive.name} below")}
        on_save.__name__ = f"on_save_{what}"
        return on_save

    def on_load_session(tab, upload, request: gr.Request):
        if upload is None:
            return no_change()
        try:
            tab, started = tab_or_start(tab, request, lambda: app.load_session(None, upload))
            if not started:
                with using(tab):
                    app.load_session(tab, upload)
        except Exception as err:
            return {**unchanged(failed(err)), load_session_file: None}
        return {**view(tab, f"session loaded: {summary(tab)}"), load_session_file: None}

    def on_load_memory(tab, upload):
        if upload is None:
            return no_change()
        try:
            tab = needs_episode(tab)
            with using(tab):
                differences = app.load_memory(tab, upload)
        except Exception as err:
            return {**unchanged(failed(err)), load_memory_file: None}
        made_with = f" (made with other settings: {', '.join(differences)})" if differences else ""
        return {status: message(f"memory loaded{made_with}: the next chunks use it"), load_memory_file: None}

    def on_unload(request: gr.Request):
        """The browser tab went away: its episode (and memory adapter) goes now, not with gradio's state."""
        if request is not None and request.session_hash:
            app.detach(request.session_hash)

    def on_state_deleted(tab) -> None:
        """gradio deleted a tab's state (an hour after it went away): close it if ``unload`` did not.
        Called in the server's event loop, which must not wait for the model: a thread closes it."""
        if isinstance(tab, Tab) and not tab.closed:
            threading.Thread(target=app.close_tab, args=(tab,), name="sfvgen-close-tab", daemon=True).start()

    with gr.Blocks(title="sfvgen: play", analytics_enabled=False) as page:
        state = gr.State(None, delete_callback=on_state_deleted)
        gr.Markdown(f"## SlowFast-VGen: play\n{HELP}")
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                world = gr.Dropdown(available_worlds(), value=app.world, label="world")
                world_seed = gr.Number(value=app.world_seed, precision=0, label="world seed (which map)")
                seed = gr.Number(value=app.config.seed, precision=0, label="seed (noise)")
                fast = gr.Dropdown(list(FAST_MODES), value=app.config.fast.mode,
                                   label="Temp-LoRA rule (memory)", elem_id="sfv-fast")
                image = gr.File(label="or upload a first frame (PNG/JPEG)", file_types=["image"], elem_id="sfv-image")
                new = gr.Button("New episode", variant="primary", elem_id="sfv-new")
            with gr.Column(scale=2, min_width=320):
                video = gr.Video(label="video", autoplay=True, interactive=False, elem_id="sfv-video",
                                 buttons=["download"])
                with gr.Row():
                    action = gr.Textbox(label="action", placeholder="move left", scale=4, elem_id="sfv-action")
                    go = gr.Button("Go", scale=1, elem_id="sfv-go")
                with gr.Row(elem_id="sfv-arrows"):
                    arrows = {direction: gr.Button(label, min_width=48, elem_id=f"sfv-{direction}")
                              for direction, label in ARROW_LABELS.items()}
                status = gr.Markdown(elem_id="sfv-status")
                stats = gr.HTML(stats_svg([]), js_on_load=None, elem_id="sfv-stats")
        downloads = gr.File(label="download: video.mp4 + video.json (per-chunk seconds, loss, memory)",
                            file_count="multiple", interactive=False, elem_id="sfv-downloads")
        with gr.Accordion("memory and session (the formats of sfvgen play :save / :load, zipped)", open=False):
            with gr.Row():
                reset = gr.Button("Reset memory", elem_id="sfv-reset")
                save_memory = gr.Button("Save memory", elem_id="sfv-save-memory")
                save_session = gr.Button("Save session", elem_id="sfv-save-session")
            saved = gr.File(label="saved", interactive=False, elem_id="sfv-saved")
            with gr.Row():
                load_session_file = gr.File(label="load a session (.zip)", file_types=[".zip"], elem_id="sfv-load-session")
                load_memory_file = gr.File(label="load a memory (.zip)", file_types=[".zip"], elem_id="sfv-load-memory")

        def on(event, fn, inputs, outputs) -> None:
            event(fn, inputs, outputs, api_visibility="private")  # the page's events only: no API endpoint

        episode = [state, video, downloads, stats, status, fast]
        choices = [world, world_seed, seed, fast, image]
        on(new.click, on_new, [state, *choices], episode)
        on(go.click, on_action, [state, action, *choices], episode)
        on(action.submit, on_action, [state, action, *choices], episode)
        for direction, button in arrows.items():
            on(button.click, arrow(direction), [state, *choices], episode)
        on(fast.input, on_fast, [state, fast], episode)  # the user's choice only, not the page showing a rule
        on(reset.click, on_reset, [state], episode)
        on(save_memory.click, saver(app.save_memory, "memory"), [state], [saved, status])
        on(save_session.click, saver(app.save_session, "session"), [state], [saved, status])
        on(load_session_file.upload, on_load_session, [state, load_session_file], [*episode, load_session_file])
        on(load_memory_file.upload, on_load_memory, [state, load_memory_file], [status, load_memory_file])
        page.load(None, None, None, js=KEYBOARD_JS)
        page.unload(on_unload)
    return page


MAX_UPLOAD_BYTES = 512 * 2**20
"""Largest file the page accepts (a saved session or memory, an image): larger uploads are refused by the
server, not stored (the page's file-type filters are only the browser's)."""


def launch(app: WebApp, host: str = "127.0.0.1", port: int = 7860, block: bool = True, quiet: bool = True):
    """Serve :func:`build_ui` on ``host:port``: no share link, no analytics, no API page or MCP server,
    no run history, and only this machine's files (gradio's own fonts: no font CDN).

    ``block=True`` serves until Ctrl-C; ``block=False`` returns the running page (``page.close()`` stops it).
    """
    page = build_ui(app)
    # each event listener runs up to 16 tabs' events at once: a tab waiting for the model holds one
    # worker, the other tabs' events (downloads, plots, messages) run beside it
    page.queue(default_concurrency_limit=16, api_open=False)
    page.launch(server_name=host, server_port=port, share=False, quiet=quiet, prevent_thread_lock=True,
                footer_links=["gradio", "settings"], mcp_server=False, ssr_mode=False, pwa=False,
                run_history=False, enable_monitoring=False, css=CSS, max_file_size=MAX_UPLOAD_BYTES)
    if block:
        page.block_thread()  # until Ctrl-C
    return page
