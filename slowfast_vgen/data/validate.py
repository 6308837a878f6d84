"""Check a dataset against its manifest by decoding every video it names.

Container metadata is not trusted: frame counts come from decoding every frame with the
chosen reader (decord by default), so a truncated or partly corrupt file whose header still
claims the full length is caught. When the reader stops early, the number reported is the
deterministic count of :func:`ffmpeg_decodable_frames` (decord's varies between runs on damaged
files), so the report is the same on every run. Decoders are not trusted either: where decord is
installed, a few frames sampled across every clean video are decoded by decord and by imageio,
and a video on which they differ ("decoders disagree", e.g. decord on MPEG-1 ``.mpg`` files) is
reported. Problems are reported per manifest row, all of them at once, so one run lists
everything to fix.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import UserInputError
from .manifest import MANIFEST_NAME, iter_manifest, resolve_in_root
from .readers import (
    DecordVideoReader,
    ImageioVideoReader,
    VideoReadError,
    VideoReaderBackend,
    decord_available,
    ffmpeg_decodable_frames,
    open_video,
)

AGREEMENT_SAMPLES = 5
"""Frames per video, spread evenly from first to last, that decord and imageio must agree on."""
AGREEMENT_TOLERANCE = 2.0
"""Largest mean absolute difference (0-255 levels) between the two decoders' frames; the two agree
exactly on H.264 and differ by tens of levels when decord returns another frame."""


@dataclasses.dataclass
class VideoCheck:
    """What decoding one video found: container frame count, decodable frames, or why it failed."""

    reported: int
    decodable: int
    error: str | None = None

    def problems(self) -> list[str]:
        if self.error:
            return [self.error]
        if self.decodable == 0:
            return ["video has no decodable frames"]
        if self.decodable < self.reported:
            return [
                f"video truncated or corrupt: container reports {self.reported} frames, only {self.decodable} decode"
            ]
        return []


@dataclasses.dataclass
class RowProblem:
    """One bad manifest row: its line number, the video it names (if any) and every reason."""

    line: int
    video: str | None
    reasons: list[str]

    def format(self, manifest: str = MANIFEST_NAME) -> str:
        shown = self.video if self.video is None or self.video.isprintable() else repr(self.video)  # NUL, surrogates
        video = f" {shown}:" if shown else ""
        return f"{manifest}:{self.line}:{video} {'; '.join(self.reasons)}"


@dataclasses.dataclass
class ValidationReport:
    """Result of :func:`validate_dataset`; ``ok`` when no row has a problem."""

    root: str
    num_rows: int
    num_videos: int
    problems: list[RowProblem]
    videos: dict[str, VideoCheck]

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        """One line per bad row (the format ``data_tools/validate.py`` prints)."""
        return [p.format() for p in self.problems]

    def summary(self) -> str:
        state = "OK" if self.ok else f"{len(self.problems)} bad row(s)"
        return f"{self.root}: {self.num_rows} rows, {self.num_videos} videos: {state}"


def check_video(path: str | os.PathLike, backend: str = "auto") -> VideoCheck:
    """Open ``path`` and decode every frame; never raises for a bad file."""
    if not Path(path).is_file():
        return VideoCheck(0, 0, "video file missing")
    if Path(path).stat().st_size == 0:
        return VideoCheck(0, 0, "video file is empty (0 bytes)")
    try:
        reader = open_video(path, backend)
    except VideoReadError as err:
        return VideoCheck(0, 0, f"cannot decode video: {err.reason}")
    reported = reader.num_frames
    if reported == 0:
        return VideoCheck(0, 0, "video has zero frames")
    decodable = count_decodable_frames(reader)
    if decodable < reported:
        # the reader's count on a corrupt file can vary between runs; report ffmpeg's strict,
        # deterministic count instead (only damaged files pay for the extra decode)
        strict = ffmpeg_decodable_frames(path)
        if strict >= reported:
            return VideoCheck(reported, decodable, "the video reader fails on frames that ffmpeg decodes")
        decodable = strict
    elif disagreement := decoder_disagreement(path, reader):
        return VideoCheck(reported, decodable, disagreement)
    return VideoCheck(reported, decodable)


def decoder_disagreement(
    path: str | os.PathLike,
    reader: VideoReaderBackend | None = None,
    samples: int = AGREEMENT_SAMPLES,
    tolerance: float = AGREEMENT_TOLERANCE,
) -> str | None:
    """Why decord and imageio return different frames for ``path``, or ``None`` when they agree.

    Compares the frame counts and ``samples`` frames spread over the video (decord by random
    access, as the chunk dataset reads). ``reader`` is an already open reader of either kind,
    reused for its side. ``None`` as well when decord is not installed or cannot open the file
    (a reader that fails loudly is reported by the other checks; this one looks for silent errors).
    """
    if not decord_available():
        return None
    readers: dict[str, VideoReaderBackend] = {}
    for name, kind in (("decord", DecordVideoReader), ("imageio", ImageioVideoReader)):
        if isinstance(reader, kind):
            readers[name] = reader
            continue
        try:
            readers[name] = kind(path)
        except VideoReadError:  # includes decord's known width bug, which auto works around
            return None
    counts = {name: r.num_frames for name, r in readers.items()}
    if counts["decord"] != counts["imageio"]:
        return f"decoders disagree: decord counts {counts['decord']} frames, imageio decodes {counts['imageio']}"
    indices = sorted({int(round(i)) for i in np.linspace(0, counts["decord"] - 1, samples)})
    try:
        frames = {name: r.get_frames(indices).astype(np.float32) for name, r in readers.items()}
    except VideoReadError:
        return None
    if frames["decord"].shape != frames["imageio"].shape:
        sizes = {name: tuple(f.shape[1:3]) for name, f in frames.items()}
        return f"decoders disagree: decord frames are {sizes['decord']}, imageio's {sizes['imageio']}"
    differences = np.abs(frames["decord"] - frames["imageio"]).mean(axis=(1, 2, 3))
    bad = [(index, float(d)) for index, d in zip(indices, differences) if d > tolerance]
    if not bad:
        return None
    index, difference = bad[0]
    return (
        f"decoders disagree: decord and imageio return different frames at {len(bad)} of {len(indices)} sampled "
        f"indices (frame {index}: mean absolute difference {difference:.1f} > {tolerance}); "
        "re-encode the video as H.264 .mp4"
    )


def count_decodable_frames(reader: VideoReaderBackend, chunk: int = 64) -> int:
    """Frames that really decode, from the start up to the first failure.

    Uses the backend's own sequential ``count_decodable()`` when it has one, else reads
    ``chunk`` frames at a time with ``get_frames`` (then frame by frame inside a failing chunk).
    """
    own = getattr(reader, "count_decodable", None)
    if callable(own):
        return int(own())
    count = 0
    while count < reader.num_frames:
        stop = min(count + chunk, reader.num_frames)
        try:
            reader.get_frames(range(count, stop))
            count = stop
        except VideoReadError:
            for index in range(count, stop):
                try:
                    reader.get_frames([index])
                except VideoReadError:
                    return count
                count += 1
            return count
    return count


def validate_dataset(
    root: str | os.PathLike,
    backend: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> ValidationReport:
    """Validate the dataset at ``root``: every row, every video it names, every segment's bounds.

    Row checks: JSON, required fields and types, empty action/episode/split, paths escaping the
    root, empty segments. Video checks (each file once): missing, empty, undecodable, zero
    frames, truncated (fewer decodable frames than the container reports). Bound checks: a
    segment's ``end_frame`` may not exceed the number of frames that actually decode.
    ``progress(done, total)`` is called after each video. Raises :class:`UserInputError` only
    when ``root`` is not a dataset at all: not a directory, or no ``manifest.jsonl`` file in it.
    """
    root = Path(root)
    if root.is_file():  # the manifest itself, say
        raise UserInputError(
            f"{root} is a file, not a dataset directory; give the directory that holds {MANIFEST_NAME}"
        )
    if not root.is_dir():
        raise UserInputError(f"dataset directory not found: {root}")
    manifest = root / MANIFEST_NAME
    if not manifest.is_file():
        what = "is not a file" if manifest.exists() else "is missing"
        raise UserInputError(f"{root} is not a dataset: its {MANIFEST_NAME} {what}; give the directory that holds "
                             f"the dataset's {MANIFEST_NAME}")
    rows = list(iter_manifest(manifest))
    # 1. decode each referenced video once
    videos = sorted({r.segment.video for r in rows if r.segment is not None})
    checks: dict[str, VideoCheck] = {}
    for done, video in enumerate(videos, start=1):
        checks[video] = check_video(resolve_in_root(root, video), backend)
        if progress is not None:
            progress(done, len(videos))
    # 2. per-row problems: parse errors, video problems, bounds against decoded length
    problems: list[RowProblem] = []
    for row in rows:
        if row.segment is None:
            video = (
                row.raw.get("video") if isinstance(row.raw, dict) and isinstance(row.raw.get("video"), str) else None
            )
            problems.append(RowProblem(row.line, video, row.problems))
            continue
        seg = row.segment
        check = checks[seg.video]
        reasons = check.problems()
        if check.error is None and check.decodable > 0 and seg.end_frame > check.decodable:
            reasons.append(f"segment [{seg.start_frame}, {seg.end_frame}) beyond decoded length {check.decodable}")
        if reasons:
            problems.append(RowProblem(row.line, seg.video, reasons))
    if not rows:
        problems.append(RowProblem(0, None, [f"{MANIFEST_NAME} has no rows"]))
    return ValidationReport(str(root), len(rows), len(videos), problems, checks)
