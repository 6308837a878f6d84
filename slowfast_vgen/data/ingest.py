"""Convert real videos with action annotations into our dataset format (``data_tools/ingest_videos.py``).

Annotations come as an EPIC-KITCHENS-style CSV (columns ``video_id, start_timestamp,
stop_timestamp, narration``; timestamps ``HH:MM:SS.ff`` or seconds; other columns ignored) or as
JSONL rows ``{"video", "start_sec", "end_sec", "action"}`` (times are JSON numbers, not strings).
A time that is negative, NaN or infinite is refused with the file, line and field.

Every annotated segment becomes its own clip ``videos/<video-stem>/<row>.mp4``, resampled to
the target fps (nearest source frame at each output time) and resized to cover then
centre-cropped to ``height x width``. The clip starts up to ``context_sec`` before the segment
so the chunk dataset has real preceding frames as context: in the manifest the segment is
``[start_frame, end_frame)`` of its clip, ``start_frame`` being the number of lead-in frames.
An annotation's ``video`` names its source file by path relative to the videos folder, with or
without the extension, or by file name stem alone when that stem is unique (``P01_01`` finds
``P01/P01_01.MP4``; a stem shared by ``a/x.mp4`` and ``b/x.mp4`` is ambiguous and skipped by name).
The ``episode`` of a row is the source file's stem, or its relative path without the extension
where two ingested files share the stem (``a/x.mp4`` -> ``a_x``): all segments of one recording
form one episode, and two recordings never share one.
Missing and undecodable videos are reported by name and skipped; so are segments that are empty,
start after the end of their video, or fail to decode (the video's other segments are still
ingested).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from ..config import help_field
from ..errors import UserInputError, first_line, read_json_object, unicode_problem
from ..io_utils import atomic_write_json, check_output_directory
from .manifest import MANIFEST_NAME, Segment, write_manifest
from .readers import VideoReadError, VideoReaderBackend, open_video, resize_center_crop

VIDEO_EXTENSIONS: tuple[str, ...] = (
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".mpe", ".m1v", ".m2v", ".vob"
)
"""Source files ``index_videos`` finds (case-insensitive). MPEG and AVI files are read with imageio
by the ``auto`` backend (see ``readers.DECORD_UNRELIABLE_EXTENSIONS``)."""
EPIC_COLUMNS: tuple[str, ...] = ("video_id", "start_timestamp", "stop_timestamp", "narration")
MAX_FPS = 1000.0
"""Highest output frame rate ingest takes (clips are resampled to it; no camera records faster)."""
DECODE_BATCH = 64
"""Source frames decoded at once (at the source's size) before they are shrunk to the output size."""
MAX_CONTEXT_SEC = 3600.0
"""Longest lead-in (``context_sec``) ingest takes: an hour of context before a segment is already a mistake."""
_TIMESTAMP = re.compile(r"^(?:(\d+):)?(\d{1,2}):(\d{1,2}(?:\.\d+)?)$")


@dataclasses.dataclass
class SourceSegment:
    """One annotated segment of a source video (times in seconds); ``line`` is its annotation line."""

    video: str
    start_sec: float
    end_sec: float
    action: str
    line: int


@dataclasses.dataclass
class IngestConfig:
    """Settings of one ingest run."""

    videos: str = help_field(help="folder holding the source videos (searched recursively)")
    annotations: str = help_field(help="EPIC-style .csv or segments .jsonl")
    out: str = help_field(help="output dataset directory")
    fps: float = help_field(8.0, help="output frame rate")
    height: int = help_field(32, help="output frame height")
    width: int = help_field(32, help="output frame width")
    context_sec: float = help_field(1.0, help="seconds of lead-in kept before each segment as context")
    split: str = help_field("train", help="split written for every row")
    backend: str = help_field("auto", help="video reader: auto, decord or imageio")

    def __post_init__(self) -> None:
        if not math.isfinite(self.fps) or not 0 < self.fps <= MAX_FPS:
            raise ValueError(f"fps must be a number in (0, {MAX_FPS:g}], got {self.fps}")
        if self.height < 2 or self.width < 2 or self.height % 2 or self.width % 2:
            raise ValueError(f"height and width must be even and >= 2 (H.264 yuv420p), got {self.height}x{self.width}")
        if not math.isfinite(self.context_sec) or not 0 <= self.context_sec <= MAX_CONTEXT_SEC:
            raise ValueError(f"context_sec must be a number in [0, {MAX_CONTEXT_SEC:g}] (seconds), got {self.context_sec}")
        if not self.split.strip():
            raise ValueError("split must not be empty")


@dataclasses.dataclass
class IngestSummary:
    """What an ingest run wrote and what it skipped (``(name, reason)`` pairs)."""

    segments: int
    videos: int
    skipped: list[tuple[str, str]]
    reused: int = 0  # clips an interrupted run with the same settings had written already


def parse_timestamp(text: str) -> float:
    """``HH:MM:SS.ff`` (or ``MM:SS.ff``, or plain seconds) -> seconds; ``ValueError`` otherwise
    (also for NaN, infinities and negative times)."""
    text = str(text).strip()
    match = _TIMESTAMP.match(text)
    if match:
        hours, minutes, seconds = match.groups()
        if float(seconds) >= 60 or (hours is not None and int(minutes) >= 60):  # "1:75" read as 135 s before
            raise ValueError(f"bad timestamp {text!r}; minutes and seconds must be below 60")
        return int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"bad timestamp {text!r}; expected HH:MM:SS.ff or seconds") from None
    problem = _time_problem(value)
    if problem:
        raise ValueError(f"bad timestamp {text!r}; must be {problem}")
    return value


def _time_problem(seconds: float) -> str | None:
    """Why ``seconds`` cannot be a time in a video (what it must be instead), ``None`` when it can.

    The one check of annotation times, for both formats (:func:`parse_timestamp` for the CSV,
    :func:`_seconds` for JSONL); an empty segment (end <= start) is skipped later, by name.
    """
    if not math.isfinite(seconds):
        return "a finite number of seconds"
    if seconds < 0:
        return "a number of seconds >= 0"
    return None


def read_epic_csv(path: str | os.PathLike) -> list[SourceSegment]:
    """Segments of an EPIC-KITCHENS-style CSV; :class:`UserInputError` naming the line on bad rows."""
    path = Path(path)
    # utf-8-sig: a spreadsheet's byte-order mark is not part of the first column's name
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in EPIC_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise UserInputError(f"{path}: missing column(s) {', '.join(missing)}; need {', '.join(EPIC_COLUMNS)}")
        out = []
        for row in reader:
            line = reader.line_num
            times = []
            for column in ("start_timestamp", "stop_timestamp"):
                try:
                    times.append(parse_timestamp(row[column]))
                except ValueError as err:
                    raise UserInputError(f"{path}:{line}: {column}: {err}") from None
            # a short row has None for the missing narration: an empty action, skipped by name
            out.append(SourceSegment(row["video_id"].strip(), *times, (row["narration"] or "").strip(), line))
    return out


def read_segments_jsonl(path: str | os.PathLike) -> list[SourceSegment]:
    """Segments of a JSONL file with ``video, start_sec, end_sec, action`` per line."""
    path = Path(path)
    out = []
    for line, text in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
            out.append(
                SourceSegment(
                    _text(row, "video").strip(),
                    _seconds(row, "start_sec"),
                    _seconds(row, "end_sec"),
                    _text(row, "action").strip(),
                    line,
                )
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise UserInputError(
                f"{path}:{line}: need a JSON object with video, start_sec, end_sec, action ({err})"
            ) from None
    return out


def _text(row: dict, key: str) -> str:
    """``row[key]``, which must be a JSON string (``null`` or a number is not a video name or an action)."""
    value = row[key]
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string, got {json.dumps(value)}")
    if problem := unicode_problem(value):
        raise ValueError(f"{key} {problem}")
    return value


def _seconds(row: dict, key: str) -> float:
    """``row[key]`` as seconds: a JSON number, finite and >= 0; ``ValueError`` naming ``key`` otherwise.

    A string is refused even when it reads as a number ("3", "00:00:03.50"): JSON times are numbers
    (timestamps are the CSV's format). So are booleans, which Python counts as numbers, and NaN and
    infinities, which ``json.loads`` accepts.
    """
    value = row[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        shown = f"the string {value!r}" if isinstance(value, str) else json.dumps(value)
        raise ValueError(f"{key} must be a number of seconds, got {shown}")
    try:
        seconds = float(value)
    except OverflowError:
        raise ValueError(f"{key} must be a finite number of seconds, got an integer too large for a float") from None
    problem = _time_problem(seconds)
    if problem:
        raise ValueError(f"{key} must be {problem}, got {value!r}")
    return seconds


def read_annotations(path: str | os.PathLike) -> list[SourceSegment]:
    """Dispatch on the extension: ``.csv`` (EPIC style) or ``.jsonl``/``.json`` (segments). Both must
    be UTF-8 (a byte-order mark is fine); other text is a one-line :class:`UserInputError`."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"annotation file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".json"):
        raise UserInputError(f"{path}: unknown annotation format; use an EPIC-style .csv or a segments .jsonl")
    try:
        return read_epic_csv(path) if suffix == ".csv" else read_segments_jsonl(path)
    except UnicodeDecodeError as err:
        raise UserInputError(f"{path}: not UTF-8 text ({first_line(err)}); save the annotations as UTF-8") from None
    except csv.Error as err:
        raise UserInputError(f"{path}: not a readable CSV file ({first_line(err)})") from None


def index_videos(folder: str | os.PathLike) -> dict[str, list[Path]]:
    """Video files under ``folder`` by every name an annotation may use: relative path
    (``P01/P01_01.MP4``), relative path without the extension (``P01/P01_01``) and stem (``P01_01``).

    Each name maps to all the files it fits, in sorted order; :func:`find_video` refuses a name that
    fits several.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(f"video folder not found: {folder}")
    index: dict[str, list[Path]] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS:
            relative = path.relative_to(folder)
            names = {relative.as_posix(), relative.with_suffix("").as_posix(), path.stem}
            for name in names:
                index.setdefault(name, []).append(path)
    return index


def find_video(index: dict[str, list[Path]], video_id: str) -> Path:
    """The one source file an annotation's ``video`` names (see :func:`index_videos`); ``LookupError``
    with the reason when none or several fit."""
    candidates = index.get(video_id.strip("/")) or []
    if len(candidates) > 1:
        shown = ", ".join(str(path) for path in candidates[:3]) + (", ..." if len(candidates) > 3 else "")
        raise LookupError(f"ambiguous name: {len(candidates)} videos fit it ({shown}); "
                          "name it by its path under --videos")
    if not candidates:
        raise LookupError("video not found")
    return candidates[0]


def clip_times(start_sec: float, end_sec: float, fps: float, context_sec: float) -> tuple[np.ndarray, int]:
    """Output frame times of a clip (lead-in + segment) and the number of lead-in frames.

    Times lie on the output frame grid ``k / fps``; lead-in frames are those before
    ``start_sec``, segment frames those in ``[start_sec, end_sec)``.
    """
    first = max(0, math.ceil((start_sec - context_sec) * fps - 1e-9))
    seg_first = max(0, math.ceil(start_sec * fps - 1e-9))
    stop = math.ceil(end_sec * fps - 1e-9)
    frames = np.arange(first, max(stop, first)) / fps
    return frames, seg_first - first


def nearest_frames(frame_times: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Index of the source frame whose presentation time is nearest each of ``times`` (seconds from the first
    frame; a tie takes the earlier frame); ``frame_times`` non-decreasing, as
    :meth:`~slowfast_vgen.data.readers.VideoReaderBackend.frame_times` gives them."""
    last = len(frame_times) - 1
    after = np.clip(np.searchsorted(frame_times, times), 0, last)
    before = np.clip(after - 1, 0, last)
    nearer_before = np.abs(times - frame_times[before]) <= np.abs(frame_times[after] - times)
    return np.where(nearer_before, before, after).astype(np.int64)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "video"


def _episode_names(sources: list[Path], folder: Path) -> dict[Path, str]:
    """Each source video's episode (and clip folder) name, made file-name safe: its stem
    (``P01/P01_01.MP4`` -> ``P01_01``), or its path under ``folder`` without the extension where
    another source shares the stem (``a/x.mp4``, ``b/x.mp4`` -> ``a_x``, ``b_x``); names that still
    collide (``a b.mp4`` and ``a_b.mp4``) are numbered apart (``a_b``, ``a_b-2``), so two recordings
    never share an episode."""
    stems = collections.Counter(source.stem for source in sources)
    names: dict[Path, str] = {}
    taken: set[str] = set()
    for source in sources:
        shared = stems[source.stem] > 1
        base = _safe_name(source.relative_to(folder).with_suffix("").as_posix() if shared else source.stem)
        name, number = base, 1
        while name in taken:
            number += 1
            name = f"{base}-{number}"
        taken.add(name)
        names[source] = name
    return names


def ingest_videos(
    config: IngestConfig,
    progress: Callable[[Iterable], Iterable] | None = None,
    report: Callable[[str], None] | None = None,
) -> IngestSummary:
    """Convert every annotated segment (see module docstring); write the manifest atomically at the end.

    ``report`` receives one line per skipped video or segment as it happens.
    """
    from ..video_io import write_video

    check_ingest_out(config)  # before the annotations are read and any video decoded
    annotations = read_annotations(config.annotations)
    if not annotations:
        raise UserInputError(f"{config.annotations}: no segments")
    index = index_videos(config.videos)
    out = Path(config.out)
    skipped: list[tuple[str, str]] = []

    def skip(name: str, reason: str) -> None:
        skipped.append((name, reason))
        if report is not None:
            report(f"skipped {name}: {reason}")

    by_video: dict[str, list[SourceSegment]] = {}
    for seg in annotations:
        by_video.setdefault(seg.video, []).append(seg)
    by_source: dict[Path, list[SourceSegment]] = {}  # "x", "x.mp4" and "a/x" may all name a/x.mp4
    for video_id, segments in by_video.items():
        try:
            by_source.setdefault(find_video(index, video_id), []).extend(segments)
        except LookupError as err:
            skip(video_id, f"{err} (--videos {config.videos}; {len(segments)} segment(s) skipped)")
    episodes = _episode_names(list(by_source), Path(config.videos))
    reused: list[str] | None = [] if _resume_settings(config, by_source, out) else None

    rows: list[Segment] = []
    written_videos = 0
    items: Iterable = by_source.items()
    for source, segments in progress(items) if progress else items:
        video_id = segments[0].video
        try:
            reader = open_video(source, config.backend)
            src_fps = _source_fps(reader)
        except VideoReadError as err:
            skip(video_id, f"cannot decode {source.name}: {err.reason} ({len(segments)} segment(s) skipped)")
            continue
        episode = episodes[source]
        new_rows = _ingest_one_video(reader, src_fps, segments, episode, config, out, write_video, skip, reused)
        rows += new_rows
        written_videos += 1 if new_rows else 0
    if not rows:
        raise UserInputError(f"no segments ingested: {len(skipped)} skipped (first: {skipped[0][0]}: {skipped[0][1]})")
    write_manifest(out / MANIFEST_NAME, rows)
    return IngestSummary(len(rows), written_videos, skipped, len(reused or []))


INGEST_SETTINGS = ".ingest_settings.json"
"""Written in ``--out`` before the first clip: what the clips there were made from and how."""


def _resume_settings(config: IngestConfig, by_source: dict[Path, list[SourceSegment]], out: Path) -> bool:
    """Record this run's settings in ``out`` (:data:`INGEST_SETTINGS`); whether an interrupted run with the same
    ones left its clips there, to be kept instead of decoded again. Clips of other settings are refused."""
    settings = {
        "output": {key: getattr(config, key) for key in ("fps", "height", "width", "context_sec", "split", "backend")},
        "annotations": hashlib.sha256(Path(config.annotations).read_bytes()).hexdigest(),
        "sources": {os.path.relpath(source, config.videos): source.stat().st_size for source in sorted(by_source)},
    }
    path = out / INGEST_SETTINGS
    if path.is_file():
        try:
            saved = read_json_object(path)
        except (OSError, ValueError):
            saved = None
        if saved != settings:
            changed = sorted(key for key in settings if saved is None or saved.get(key) != settings[key])
            raise UserInputError(f"--out: {out} holds the clips of an interrupted ingest made with other "
                                 f"{', '.join(changed) or 'settings'}; give a new directory, or delete it")
        return True
    atomic_write_json(path, settings)
    return False


def check_ingest_out(config: IngestConfig) -> Path:
    """``config.out`` when the clips and the manifest may be written there; a one-line
    :class:`UserInputError` otherwise: a file (the annotations file, say) or a path under a file,
    the source videos' folder or a folder inside it (the clips would be written among the
    sources), or a directory already holding a dataset (its manifest would be replaced)."""
    out = check_output_directory(config.out)
    real_out, real_videos = Path(os.path.realpath(out)), Path(os.path.realpath(config.videos))
    if real_out == real_videos or real_out.is_relative_to(real_videos) or real_videos.is_relative_to(real_out / "videos"):
        raise UserInputError(f"--out: {out} overlaps the --videos folder {config.videos}; the clips would be written "
                             "among the source videos: give a directory outside it")
    if (out / MANIFEST_NAME).exists():
        raise UserInputError(f"--out: {out} already holds a dataset ({out / MANIFEST_NAME}); ingesting would "
                             "replace its manifest: give a new or empty directory, or delete that dataset first")
    return out


def _source_fps(reader: VideoReaderBackend) -> float:
    fps = float(getattr(reader, "fps", 0.0) or 0.0)
    if not math.isfinite(fps) or fps <= 0:
        raise VideoReadError(getattr(reader, "path", "?"), f"unknown frame rate {fps}")
    return fps


def _ingest_one_video(
    reader: VideoReaderBackend,
    src_fps: float,
    segments: list[SourceSegment],
    episode: str,
    config: IngestConfig,
    out: Path,
    write_video: Callable[..., Any],
    skip: Callable[[str, str], None],
    reused: list[str] | None = None,
) -> list[Segment]:
    """Write one clip per segment of one source video; returns the manifest rows.

    A segment whose frames fail to decode is reported and skipped; no clip is written for it. With
    ``reused`` (a list), a clip that already exists (an interrupted run of the same settings wrote it,
    atomically) is kept, not decoded again, and its name appended to ``reused``.
    """
    rows = []
    frame_times = reader.frame_times()  # not k / src_fps: a phone's video changes its frame rate
    # the last frame is shown for about one frame period; a video of no frames ends at once
    duration = (frame_times[-1] + 1 / src_fps) if len(frame_times) else 0.0
    for seg in segments:
        name = f"{seg.video} (annotation line {seg.line})"
        if not seg.action:
            skip(name, "empty action")
            continue
        if seg.end_sec <= seg.start_sec:
            skip(name, f"empty segment: end {seg.end_sec}s <= start {seg.start_sec}s")
            continue
        if seg.start_sec >= duration:
            skip(name, f"segment starts at {seg.start_sec:.2f}s, after the video ends ({duration:.2f}s)")
            continue
        times, lead_in = clip_times(seg.start_sec, min(seg.end_sec, duration), config.fps, config.context_sec)
        if len(times) - lead_in < 1:
            skip(name, f"segment shorter than one frame at {config.fps} fps")
            continue
        video = f"videos/{episode}/{seg.line:06d}.mp4"
        row = Segment(video, lead_in, len(times), config.fps, seg.action, episode, config.split)
        if reused is not None and (out / video).is_file():
            reused.append(video)
            rows.append(row)
            continue
        source_idx = nearest_frames(frame_times, times)
        try:  # in batches: a long segment decoded whole at the source's size took gigabytes
            frames = np.concatenate([resize_center_crop(reader.get_frames(batch.tolist()), config.height, config.width)
                                     for batch in np.array_split(source_idx, -(-len(source_idx) // DECODE_BATCH))])
        except VideoReadError as err:
            where = f"{Path(err.path).name} at {seg.start_sec:.2f}-{seg.end_sec:.2f}s"
            skip(name, f"decoding failed in {where}: {err.reason}")
            continue
        write_video(out / video, frames, fps=config.fps)
        rows.append(row)
    return rows
