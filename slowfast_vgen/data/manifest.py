"""The on-disk dataset format: ``manifest.jsonl`` rows (:class:`Segment`) over H.264 mp4 files.

A dataset root holds ``manifest.jsonl`` (one JSON object per line, one line per action
segment), the videos it names, and optionally ``meta/<episode>.json`` ground-truth side files.
Every path in the manifest is relative to the root and may not leave it: absolute paths,
``..`` components and symlinks that resolve outside the root are rejected. See
``slowfast_vgen/data/README.md`` for the full format.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Iterable, Iterator

from ..errors import UserInputError, fps_problem, unicode_problem
from ..io_utils import atomic_write_json, atomic_write_text, check_output_directory

MANIFEST_NAME = "manifest.jsonl"
META_DIR = "meta"
FIELDS: tuple[str, ...] = ("video", "start_frame", "end_frame", "fps", "action", "episode", "split")


def check_relative_path(path: Any) -> str | None:
    """Why ``path`` is not a safe path relative to a dataset root, or ``None`` when it is.

    Rejected: non-strings, empty strings, absolute paths (POSIX or Windows, drive letters and
    UNC included), backslashes and any ``..`` component.
    """
    if not isinstance(path, str) or not path.strip():
        return f"path must be a non-empty string, got {path!r}"
    if "\\" in path:
        return f"path {path!r} uses backslashes; use '/'"
    if "\x00" in path:
        return f"path {path!r} holds a NUL character"
    if problem := unicode_problem(path):
        return f"path {path!r} {problem}"
    posix, windows = PurePosixPath(path), PureWindowsPath(path)
    if posix.is_absolute() or windows.is_absolute() or windows.drive:
        return f"path {path!r} is absolute; paths must be relative to the dataset root"
    if ".." in posix.parts:
        return f"path {path!r} escapes the dataset root ('..')"
    return None


def check_resolved_path(root: str | os.PathLike, relative: str) -> str | None:
    """Why ``root / relative`` leaves ``root`` once symlinks are followed, or ``None`` when it stays inside.

    The text of ``relative`` may be harmless (:func:`check_relative_path`) while a symlink on the
    way (the file itself or a folder above it) points outside the root; this resolves both with
    ``os.path.realpath``. A path that does not exist yet resolves as far as it exists.
    """
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, relative))
    if os.path.commonpath([real_root, real]) != real_root:
        return f"path {relative!r} resolves to {real}, outside the dataset root (a symlink leaves it)"
    return None


def resolve_in_root(root: str | os.PathLike, relative: str) -> Path:
    """``root / relative`` after checking that ``relative`` stays inside ``root``, symlinks followed
    (UserInputError if not)."""
    problem = check_relative_path(relative) or check_resolved_path(root, relative)
    if problem:
        raise UserInputError(problem)
    return Path(root) / relative


def segment_problems(row: Any) -> list[str]:
    """Everything wrong with one manifest row (a parsed JSON value); empty when the row is valid."""
    if not isinstance(row, dict):
        return [f"row must be a JSON object, got {type(row).__name__}"]
    problems = [f"missing field {name!r}" for name in FIELDS if name not in row]
    if "video" in row and (problem := check_relative_path(row["video"])):
        problems.append(problem)
    start, end = row.get("start_frame"), row.get("end_frame")
    for name, value in (("start_frame", start), ("end_frame", end)):
        if name in row and (not isinstance(value, int) or isinstance(value, bool)):
            problems.append(f"{name} must be an integer, got {value!r}")
    if _is_int(start) and start < 0:
        problems.append(f"start_frame must be >= 0, got {start}")
    if _is_int(start) and _is_int(end) and end <= start:
        problems.append(f"empty segment: end_frame {end} <= start_frame {start} (end is exclusive)")
    if "fps" in row and (problem := fps_problem(row["fps"])):
        problems.append(f"fps {problem}")
    for name in ("action", "episode", "split"):
        if name in row and (not isinstance(row[name], str) or not row[name].strip()):
            problems.append(
                f"empty {name}" if isinstance(row[name], str) else f"{name} must be a string, got {row[name]!r}"
            )
        elif name in row and (problem := unicode_problem(row[name])):
            problems.append(f"{name} {row[name]!r} {problem}")
    return problems


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclasses.dataclass
class Segment:
    """One manifest row: frames ``[start_frame, end_frame)`` of ``video`` show ``action``.

    ``extra`` keeps any additional keys of the row so that read -> write round-trips them.
    """

    video: str
    start_frame: int
    end_frame: int
    fps: float
    action: str
    episode: str
    split: str
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = segment_problems(self._fields())
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def num_frames(self) -> int:
        return self.end_frame - self.start_frame

    def _fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FIELDS}

    def to_json(self) -> dict[str, Any]:
        """The manifest row as a JSON-able dict (required fields first, then ``extra``)."""
        return {**self._fields(), **self.extra}

    @classmethod
    def from_json(cls, row: Any) -> "Segment":
        """Parse one row; ``ValueError`` listing every problem when it is invalid."""
        problems = segment_problems(row)
        if problems:
            raise ValueError("; ".join(problems))
        extra = {k: v for k, v in row.items() if k not in FIELDS}
        return cls(**{name: row[name] for name in FIELDS}, extra=extra)


@dataclasses.dataclass
class ManifestRow:
    """A line of a manifest as read leniently: the segment, or why it could not be parsed."""

    line: int
    raw: Any
    segment: Segment | None
    problems: list[str]


def manifest_path(root_or_file: str | os.PathLike) -> Path:
    """``root/manifest.jsonl`` for a dataset root, or the path itself when it names a file."""
    path = Path(root_or_file)
    return path / MANIFEST_NAME if path.is_dir() else path


def iter_manifest(path: str | os.PathLike) -> Iterator[ManifestRow]:
    """Every non-blank line of a manifest file, parsed leniently (problems reported, not raised).

    Each line is decoded on its own, so a line that is not UTF-8 (a binary file) is one bad row.
    A row whose video resolves outside the manifest's folder (the dataset root) through a symlink
    is bad too.
    """
    path = manifest_path(path)
    if not path.is_file():
        raise UserInputError(f"manifest not found: {path}")
    root = path.parent
    escapes: dict[str, str | None] = {}  # video -> problem, each path resolved once
    with open(path, "rb") as handle:
        for number, data in enumerate(handle, start=1):
            if not data.strip():
                continue
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as err:
                yield ManifestRow(number, None, None, [
                    f"not UTF-8 text (byte 0x{data[err.start]:02x} at column {err.start + 1}), so not a JSON row"
                ])
                continue
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as err:
                yield ManifestRow(number, text.rstrip("\r\n"), None, [f"not valid JSON: {err.msg}"])
                continue
            try:
                segment = Segment.from_json(raw)
            except ValueError as err:
                yield ManifestRow(number, raw, None, str(err).split("; "))
                continue
            if segment.video not in escapes:
                escapes[segment.video] = check_resolved_path(root, segment.video)
            if escapes[segment.video]:
                yield ManifestRow(number, raw, None, [escapes[segment.video]])
                continue
            yield ManifestRow(number, raw, segment, [])


def read_manifest(path: str | os.PathLike) -> list[Segment]:
    """All segments of a manifest (a file, or a dataset root holding ``manifest.jsonl``).

    Strict: the first bad row raises :class:`UserInputError` naming the file, line and problem
    (``data_tools/validate.py`` lists all of them).
    """
    file = manifest_path(path)
    segments = []
    for row in iter_manifest(file):
        if row.segment is None:
            raise UserInputError(
                f"{file}:{row.line}: {'; '.join(row.problems)} (run data_tools/validate.py for a full report)"
            )
        segments.append(row.segment)
    return segments


def write_manifest(path: str | os.PathLike, segments: Iterable[Segment]) -> Path:
    """Write ``segments`` as JSON lines, atomically (a dataset root gets ``root/manifest.jsonl``)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    text = "".join(json.dumps(s.to_json(), ensure_ascii=False) + "\n" for s in segments)
    atomic_write_text(path, text)
    return path


def episode_meta_path(root: str | os.PathLike, episode: str) -> Path:
    """``root/meta/<episode>.json``; the episode name must be a plain file name."""
    if not episode or "/" in episode or "\\" in episode or episode in (".", ".."):
        raise UserInputError(f"episode name {episode!r} cannot be used as a file name")
    return Path(root) / META_DIR / f"{episode}.json"


def write_episode_meta(root: str | os.PathLike, episode: str, meta: dict[str, Any]) -> Path:
    """Write an episode's ground-truth side file atomically."""
    path = episode_meta_path(root, episode)
    atomic_write_json(path, meta)
    return path


def read_episode_meta(root: str | os.PathLike, episode: str) -> dict[str, Any] | None:
    """An episode's ground-truth side file, or ``None`` when the dataset has none for it."""
    path = episode_meta_path(root, episode)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserInputError(f"{path}: not valid JSON: {err}") from None


def merge_manifests(root: str | os.PathLike, subdirs: Iterable[str]) -> Path:
    """Write ``root/manifest.jsonl`` joining the datasets in ``root/<subdir>`` (e.g. two worlds).

    Video paths get the ``<subdir>/`` prefix and episodes the ``<subdir>-`` prefix, so rows stay
    unique and paths stay relative to (and inside) ``root``.
    """
    root = check_output_directory(root, "root")
    subdirs = list(subdirs)
    real_root = os.path.realpath(root)
    seen: dict[str, str] = {}  # real path -> the name it was given first
    for subdir in subdirs:
        if problem := check_relative_path(subdir):
            raise UserInputError(f"dataset {subdir!r}: {problem}")
        real = os.path.realpath(resolve_in_root(root, subdir))
        if real == real_root:
            raise UserInputError(f"dataset {subdir!r} is the root {root} itself, where the merged manifest is "
                                 "written; give the datasets' sub-directories of the root")
        if not os.path.isdir(real):
            raise UserInputError(f"dataset {subdir!r}: not a directory under {root} (give the dataset's directory, "
                                 f"which holds its {MANIFEST_NAME})")
        if real in seen:
            raise UserInputError(f"dataset {subdir!r} is given twice (also as {seen[real]!r}); every segment "
                                 "would be merged twice")
        seen[real] = subdir
    if (root / MANIFEST_NAME).exists() and not _written_by_merge(root):
        raise UserInputError(
            f"root {root} already holds a dataset of its own ({root / MANIFEST_NAME}); merging would replace its "
            "manifest: give a new directory above the datasets (move them into it), not a dataset"
        )
    merged, episode_source = [], {}
    for subdir in subdirs:
        name = PurePosixPath(subdir).as_posix()  # `./nav`, `nav/` -> `nav`: the prefix _written_by_merge reads back
        for segment in read_manifest(resolve_in_root(root, subdir)):
            episode = f"{name.replace('/', '-')}-{segment.episode}"
            other = episode_source.setdefault(episode, subdir)
            if other != subdir:  # `a/b` + `x` and `a-b` + `x`: two recordings would be trained as one episode
                raise UserInputError(f"datasets {other!r} and {subdir!r} both give the merged episode name {episode!r}; "
                                     "rename one of their folders")
            merged.append(dataclasses.replace(segment, video=f"{name}/{segment.video}", episode=episode))
    if not merged:
        raise UserInputError(f"no segments to merge under {root}")
    return write_manifest(root, merged)


def _written_by_merge(root: Path) -> bool:
    """Whether ``root/manifest.jsonl`` is a merged manifest (:func:`merge_manifests`), which a new
    merge may replace: every row's video lies in a sub-directory holding its own manifest, and its
    episode carries that sub-directory's prefix. Anything else is a dataset of its own."""
    try:
        segments = read_manifest(root)
    except UserInputError:
        return False
    datasets: dict[str, bool] = {}
    for segment in segments:
        parts = PurePosixPath(segment.video).parts
        found = False
        for k in range(1, len(parts)):
            prefix = "/".join(parts[:k])
            if prefix not in datasets:
                datasets[prefix] = (root / prefix / MANIFEST_NAME).is_file()
            if datasets[prefix] and segment.episode.startswith(prefix.replace("/", "-") + "-"):
                found = True
                break
        if not found:
            return False
    return bool(segments)
