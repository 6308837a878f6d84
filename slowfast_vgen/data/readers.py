"""Video reading behind a small interface, so another decoder can slot in.

:class:`VideoReaderBackend` is all the dataset and the data tools need: a frame count and
random access to ``(N, H, W, 3) uint8`` frames. Two implementations:

* ``decord`` (default): fast random access. Known problems: it takes frame counts from the
  container (which can over-report) and can fail mid-file on corrupt data, so every decoder
  error is turned into :class:`VideoReadError` naming the file, and ``count_decodable()``
  counts what really decodes. decord 0.6 also returns mis-strided frames for some frame widths
  (measured: 8, 16, 24, 48 fail; 20, 32, 40, 64, 96 work); this is detected on open and
  ``auto`` then reads that file with imageio. On MPEG program streams (``.mpg``/``.mpeg``) decord
  returns wrong frames without any error: on a 64x48 MPEG-1 file, frames fetched by index are
  other (partly decoded) frames (``tests/test_data_tools.py`` checks this), and a 720x405 MPEG-1
  file came back shifted by 12 frames with the last frame repeated, while imageio decoded both
  exactly and decord read the same stream exactly once remuxed to ``.mkv`` or re-encoded to
  H.264. ``auto`` therefore reads the containers in :data:`DECORD_UNRELIABLE_EXTENSIONS` with
  imageio, and ``data_tools/validate.py`` compares the two decoders on sampled frames.
* ``imageio`` (fallback, e.g. where decord has no wheel): decodes with the ffmpeg binary of
  imageio-ffmpeg. Files up to :data:`IMAGEIO_MEMORY_BUDGET` bytes of decoded frames are held in
  memory (the short clips we store); longer ones (source videos for ingest) are streamed:
  each request decodes forward from the last position, restarting only to go back. Each frame
  of the file comes once (``-fps_mode passthrough``), and its presentation time comes from a
  listing of the packets (:func:`packet_times`), so variable-frame-rate videos read right.

Readers are cheap to open and hold OS resources, so callers open them lazily (per DataLoader
worker), never when a dataset is constructed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

BACKENDS: tuple[str, ...] = ("auto", "decord", "imageio")
DECORD_UNRELIABLE_EXTENSIONS: tuple[str, ...] = (".mpg", ".mpeg", ".mpe", ".m1v", ".m2v", ".vob", ".avi")
"""Containers the ``auto`` backend reads with imageio: decord 0.6 returns wrong frames on MPEG
program streams (see the module docstring). The MPEG elementary streams and DVD ``.vob`` files
carry the same video, and ``.avi`` is a precaution (decord seeks by timestamps, which AVI stores
poorly; the H.264 and MPEG-4 ``.avi`` files tested here decoded exactly)."""
EDIT_LIST_EXTENSIONS: tuple[str, ...] = (".mp4", ".m4v", ".mov", ".3gp", ".3g2")
"""ISO base media containers, whose edit lists can hide frames (see :class:`DecordEditListError`)."""
IMAGEIO_MEMORY_BUDGET = 1 << 30
"""Decoded bytes an :class:`ImageioVideoReader` keeps in memory before it switches to streaming."""


def add_reader_arguments(parser) -> None:
    """The ``--backend`` and ``--no-progress`` options shared by the data tools that decode videos."""
    parser.add_argument("--backend", default="auto", choices=BACKENDS,
                        help="video decoder (default auto: decord if installed)")
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")


class VideoReadError(Exception):
    """A video could not be opened or decoded; ``path`` names it, ``reason`` says why."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class DecordGeometryError(VideoReadError):
    """decord decodes the file but returns wrongly strided frames (a decord 0.6 bug for some widths)."""


class DecordEditListError(VideoReadError):
    """decord counts (and shifts in) the frames an edit list hides: an mp4 cut with ``ffmpeg -ss ... -c copy``."""


class VideoReaderBackend(Protocol):
    """Random access to the frames of one video file."""

    @property
    def num_frames(self) -> int:
        """Frame count as reported by the container (may over-report for damaged files)."""
        ...

    def get_frames(self, indices: Sequence[int]) -> np.ndarray:
        """Frames at ``indices`` as ``(len(indices), H, W, 3) uint8``; :class:`VideoReadError` on failure."""
        ...

    def frame_times(self) -> np.ndarray:
        """When each frame is shown, in seconds from the first frame (``(num_frames,)``, non-decreasing): a
        phone's variable-frame-rate video is not ``k / fps``."""
        ...


def short_decoder_error(err: BaseException) -> str:
    """A one-line reason from a (often multi-line, log-prefixed) decoder exception."""
    text = " ".join(str(err).split())
    for marker in ("Error: ", "ERROR ", "Check failed: "):
        if marker in text:
            text = text[text.rindex(marker) + len(marker) :]
            break
    text = text or type(err).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _check_indices(path: str, indices: Sequence[int], num_frames: int) -> list[int]:
    out = [int(i) for i in indices]
    bad = [i for i in out if not 0 <= i < num_frames]
    if bad:
        raise VideoReadError(path, f"frame {bad[0]} requested but the video has {num_frames} frames")
    return out


class DecordVideoReader:
    """:class:`VideoReaderBackend` on ``decord.VideoReader`` (one codec thread: DataLoader workers parallelise)."""

    def __init__(self, path: str | os.PathLike, num_threads: int = 1) -> None:
        import decord

        self.path = str(path)
        if not Path(self.path).is_file():
            raise VideoReadError(self.path, "file not found")
        try:
            self._reader = decord.VideoReader(self.path, num_threads=num_threads)
            self._num_frames = len(self._reader)
        except Exception as err:  # decord raises RuntimeError / DECORDError for bad files
            reason = short_decoder_error(err)
            if "cannot find video stream" in reason:  # e.g. an encoder that wrote zero frames
                raise VideoReadError(self.path, "no video stream (zero frames)") from None
            raise VideoReadError(self.path, f"cannot open: {reason}") from None
        self._check_geometry()
        self._check_edit_list()

    def _check_edit_list(self) -> None:
        """A first frame shown before 0 s is an edit list's pre-roll, which players skip: decord 0.6 counts it,
        returns the shown frames from index 0 and times them as the pre-roll (a cut file read 13 frames long
        and up to 0.7 s off). imageio reads such files right."""
        if self._num_frames == 0 or Path(self.path).suffix.lower() not in EDIT_LIST_EXTENSIONS:
            return  # MPEG program streams start before 0 as well, with nothing hidden
        try:
            first = float(self._reader.get_frame_timestamp([0])[0][0])
        except Exception:  # no index: frame_times falls back to k / fps
            return
        if first < 0:
            raise DecordEditListError(self.path, "decord misreads the frames an edit list hides (a file cut without "
                                                 "re-encoding); use the imageio backend")

    def _check_geometry(self) -> None:
        """Decode frame 0 once: decord 0.6 returns mis-strided frames for some widths (8, 16, 24, 48, ...)."""
        if self._num_frames == 0:
            return
        try:
            shape = self._reader[0].shape
            self._reader.seek(0)
        except Exception:  # a damaged file: left to get_frames / count_decodable to report
            return
        if len(shape) != 3 or shape[-1] != 3:
            raise DecordGeometryError(
                self.path,
                f"decord cannot return frames of this width (got a frame of shape {tuple(shape)}); use the imageio backend",
            )

    @property
    def num_frames(self) -> int:
        return self._num_frames

    @property
    def fps(self) -> float:
        return float(self._reader.get_avg_fps())

    def get_frames(self, indices: Sequence[int]) -> np.ndarray:
        idx = _check_indices(self.path, indices, self._num_frames)
        try:
            frames = self._reader.get_batch(idx).asnumpy()
        except Exception as err:
            raise VideoReadError(
                self.path, f"cannot decode frames {idx[0]}..{idx[-1]}: {short_decoder_error(err)}"
            ) from None
        if frames.shape[0] != len(idx):
            raise VideoReadError(self.path, f"decoder returned {frames.shape[0]} frames for {len(idx)} indices")
        return frames

    def frame_times(self) -> np.ndarray:
        """The container's presentation times (``k / fps`` where it has none that make sense)."""
        if self._num_frames == 0:
            return np.zeros(0)
        try:
            starts = np.asarray(self._reader.get_frame_timestamp(list(range(self._num_frames))), dtype=np.float64)[:, 0]
        except Exception:  # no index to read them from
            starts = np.full(self._num_frames, np.nan)
        times = starts - starts[0]
        if not (np.isfinite(times).all() and (np.diff(times) >= 0).all()):
            times = np.arange(self._num_frames) / self.fps
        return times

    def count_decodable(self) -> int:
        """Decode sequentially from the start and count frames until the first failure."""
        count = 0
        try:
            self._reader.seek(0)
            for _ in range(self._num_frames):
                self._reader.next()
                count += 1
        except StopIteration:
            pass
        except Exception:  # a corrupt packet: frames after it do not count
            pass
        return count


class ImageioVideoReader:
    """:class:`VideoReaderBackend` on the ffmpeg binary of imageio-ffmpeg (any container ffmpeg reads).

    Opening decodes the file once to count its frames; when the decoded frames fit in
    ``memory_budget`` bytes they are kept and served from memory, otherwise they are streamed:
    ``get_frames`` decodes forward from the current position (restarting from the start only to
    go back), so memory stays at the requested frames however long the video is.
    """

    def __init__(self, path: str | os.PathLike, memory_budget: int = IMAGEIO_MEMORY_BUDGET) -> None:
        self.path = str(path)
        if not Path(self.path).is_file():
            raise VideoReadError(self.path, "file not found")
        self._frames: np.ndarray | None = None  # (F, H, W, 3) when held in memory
        self._stream = None  # streaming mode: an open frame generator and its position
        self._position = 0
        frames, count, kept_bytes = [], 0, 0
        stream, meta = self._open_stream()
        try:
            for frame in stream:
                count += 1
                if frames is not None:
                    frames.append(frame)
                    kept_bytes += frame.nbytes
                    if kept_bytes > memory_budget:
                        frames = None  # too long to hold: count the rest, stream on request
        except VideoReadError:
            if count == 0:
                raise
        if count == 0:
            raise VideoReadError(self.path, "no decodable frames")
        self._num_frames = count
        self._fps = float(meta.get("fps") or 0.0)
        self._times: np.ndarray | None = None  # frame_times(), read on first use
        if frames is not None:
            self._frames = np.stack(frames)

    def _open_stream(self):
        """A generator of ``(H, W, 3) uint8`` frames from the start of the file, and the file's metadata."""
        import imageio_ffmpeg

        # passthrough: each frame of the file once, as decoded (ffmpeg's default output to raw frames repeats
        # and drops frames to hold the stream's nominal rate, so a phone's video gained frames it does not have)
        generator = imageio_ffmpeg.read_frames(self.path, pix_fmt="rgb24", output_params=["-fps_mode", "passthrough"])
        try:
            meta = next(generator)
        except Exception as err:
            raise VideoReadError(self.path, f"cannot open: {short_decoder_error(err)}") from None
        width, height = meta["size"]

        def frames():
            try:
                for data in generator:
                    yield np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3)
            except Exception as err:  # ffmpeg stopped mid-file: a damaged or truncated stream
                raise VideoReadError(self.path, f"cannot decode: {short_decoder_error(err)}") from None
            finally:
                generator.close()

        return frames(), meta

    @property
    def fps(self) -> float:
        return self._fps

    @property
    def num_frames(self) -> int:
        return self._num_frames

    @property
    def streaming(self) -> bool:
        """True when frames are decoded on request instead of held in memory."""
        return self._frames is None

    def get_frames(self, indices: Sequence[int]) -> np.ndarray:
        idx = _check_indices(self.path, indices, self._num_frames)
        if self._frames is not None:
            return self._frames[idx]
        if not idx:
            raise VideoReadError(self.path, "no frame indices requested")
        wanted = set(idx)
        if self._stream is None or min(wanted) < self._position:
            if self._stream is not None:
                self._stream.close()
            self._stream, _ = self._open_stream()
            self._position = 0
        found: dict[int, np.ndarray] = {}
        for frame in self._stream:
            if self._position in wanted:
                found[self._position] = frame
            self._position += 1
            if len(found) == len(wanted):
                break
        if len(found) < len(wanted):
            missing = min(wanted - set(found))
            raise VideoReadError(self.path, f"frame {missing} did not decode")
        return np.stack([found[i] for i in idx])

    def frame_times(self) -> np.ndarray:
        """The container's presentation times of the video packets (:func:`packet_times`), one per decoded
        frame; ``k / fps`` where a packet has no time or their count differs from the decoded frames'."""
        if self._times is None:
            times = packet_times(self.path)
            if times is not None and len(times) > self._num_frames:  # an edit list's pre-roll (a file cut with
                times = times[times >= 0]                            # -c copy): listed, before 0, never shown
            if (times is None or len(times) != self._num_frames or not np.isfinite(times).all()
                    or not (np.diff(times) >= 0).all()):
                times = np.arange(self._num_frames) / self._fps
            self._times = times - times[0] if len(times) else times
        return self._times

    def count_decodable(self) -> int:
        return self.num_frames


_NO_TIME = -(2**63)  # AV_NOPTS_VALUE: ffmpeg's "this packet has no time"


def packet_times(path: str | os.PathLike) -> np.ndarray | None:
    """Presentation times in seconds of the video packets of ``path`` (first video stream that is not a cover
    picture), in presentation order, from ffmpeg's ``framecrc`` listing of a stream copy (no decoding).
    ``None`` where ffmpeg cannot list them or a packet has no time (MPEG program streams time only some)."""
    import subprocess

    import imageio_ffmpeg

    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-nostdin", "-i", str(path), "-map", "0:V:0",
               "-c", "copy", "-f", "framecrc", "-"]
    try:
        listing = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    base = re.search(r"^#tb 0: (\d+)/(\d+)$", listing, re.MULTILINE)
    try:
        stamps = [int(line.split(",")[2]) for line in listing.splitlines() if line and not line.startswith("#")]
    except (IndexError, ValueError):
        return None
    if base is None or int(base.group(2)) == 0 or _NO_TIME in stamps:
        return None
    return np.sort(np.asarray(stamps, dtype=np.float64)) * int(base.group(1)) / int(base.group(2))


def decord_available() -> bool:
    """True when decord can be imported."""
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


def reader_factory(backend: str = "auto") -> Callable[[str], VideoReaderBackend]:
    """A function ``path -> reader`` for ``backend``.

    ``"auto"`` = decord when installed, except for the containers decord decodes wrongly
    (:data:`DECORD_UNRELIABLE_EXTENSIONS`) and the files whose width or edit list it gets wrong (see
    :class:`DecordGeometryError`, :class:`DecordEditListError`), which imageio reads; imageio everywhere
    without decord.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; expected one of {BACKENDS}")
    if backend == "auto":
        return _open_auto if decord_available() else ImageioVideoReader
    return DecordVideoReader if backend == "decord" else ImageioVideoReader


def decord_is_reliable_for(path: str | os.PathLike) -> bool:
    """False for the containers decord 0.6 is known to decode wrongly (:data:`DECORD_UNRELIABLE_EXTENSIONS`)."""
    return Path(path).suffix.lower() not in DECORD_UNRELIABLE_EXTENSIONS


def _open_auto(path: str) -> VideoReaderBackend:
    """decord, or imageio for the containers, frame widths and edit lists decord 0.6 gets wrong."""
    if not decord_is_reliable_for(path):
        return ImageioVideoReader(path)
    try:
        return DecordVideoReader(path)
    except (DecordGeometryError, DecordEditListError):
        return ImageioVideoReader(path)


def open_video(path: str | os.PathLike, backend: str = "auto") -> VideoReaderBackend:
    """Open ``path`` with ``backend``; :class:`VideoReadError` when it is missing or unreadable."""
    return reader_factory(backend)(str(path))


def ffmpeg_decodable_frames(path: str | os.PathLike, timeout: float = 600.0) -> int:
    """Frames the ffmpeg CLI decodes before the first decoding error; deterministic.

    decord decodes in a background thread, so on a corrupt file the frame at which its error
    surfaces varies from run to run (measured: 0 or 29 for the same file). ffmpeg with a single
    decoder thread and errors made fatal (``-threads 1 -xerror -err_detect explode``) stops at
    the same frame every time. Uses the ffmpeg binary shipped with imageio-ffmpeg.
    """
    import subprocess

    import imageio_ffmpeg

    command = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-nostdin",
        "-hide_banner",
        "-v",
        "error",
        "-stats",
        "-threads",
        "1",
        "-xerror",
        "-err_detect",
        "explode",
        "-i",
        str(path),
        "-map",
        "0:v:0",
        "-f",
        "null",
        "-",
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 0
    counts = re.findall(r"frame=\s*(\d+)", result.stderr)
    return int(counts[-1]) if counts else 0


def quiet_decoder_logs() -> None:
    """Silence FFmpeg's per-packet log lines printed by decord (call from entry points only)."""
    if decord_available():
        import decord

        decord.logging.set_level(decord.logging.QUIET)


def resize_center_crop(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(N, h, w, 3) uint8`` -> ``(N, height, width, 3) uint8``: scale to cover, then centre-crop.

    The aspect ratio is kept (the shorter side is fitted, the excess cropped); PIL's bilinear
    filter, which widens its support when shrinking (antialiased). A no-op when the size
    already matches. Pure numpy/PIL on purpose: no torch thread pool in data workers.
    """
    from PIL import Image

    n, h, w, _ = frames.shape
    if (h, w) == (height, width):
        return frames
    scale = max(height / h, width / w)
    crop_w, crop_h = width / scale, height / scale  # the source region that ends up in the output
    box = ((w - crop_w) / 2, (h - crop_h) / 2, (w + crop_w) / 2, (h + crop_h) / 2)
    out = np.empty((n, height, width, 3), dtype=np.uint8)
    for i in range(n):
        out[i] = np.asarray(
            Image.fromarray(np.ascontiguousarray(frames[i])).resize((width, height), Image.BILINEAR, box=box)
        )
    return out
