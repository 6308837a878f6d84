"""Atomic file and directory writes: finished work is never half-written or lost."""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish_mode(path: str | os.PathLike, directory: bool = False) -> None:
    """Give a temporary file or directory the permissions a plain ``open``/``mkdir`` would have
    (``mkstemp``/``mkdtemp`` create them private, 0600/0700)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it and rename it into place."""
    with atomic_output_file(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, +-Infinity; numpy floats included) replaced by
    ``None``, recursively through dicts, lists and tuples (tuples become lists, as in JSON)."""
    if isinstance(obj, float):  # numpy.float64 is a float subclass
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: json_safe(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(value) for value in obj]
    return obj


def has_own_name(path: str | os.PathLike) -> bool:
    """Whether ``path`` ends in a name of its own, so that it can be replaced as a whole: not ``""``,
    ``.`` or ``..`` (which name the current or the parent directory)."""
    return Path(path).name not in ("", ".", "..")


def check_output_directory(path: str | os.PathLike, what: str = "--out") -> Path:
    """``path`` as a :class:`Path`, refused with a one-line :class:`~slowfast_vgen.errors.UserInputError`
    (naming the option ``what``) unless it is an existing directory or can be made one: not an existing
    file (or a dangling link), not under a file, not in a folder that cannot be written. Checked up front, before a model is built or anything
    is generated, instead of a ``FileExistsError`` / ``NotADirectoryError`` when the results are written."""
    from .errors import UserInputError

    path = Path(path)
    if os.path.lexists(path) and not path.is_dir():
        raise UserInputError(f"{what}: {path} is a file; give a directory")
    blocking = blocking_parent(path)
    if blocking is not None:
        raise UserInputError(f"{what}: {blocking} is a file, so {path} cannot be a directory")
    # a read-only folder or a name too long was an OSError traceback at the first write
    check_writable_beside(path / "results" if os.path.isdir(path) else path, what)
    return path


def check_writable_beside(path: str | os.PathLike, label: str) -> None:
    """A one-line :class:`~slowfast_vgen.errors.UserInputError` starting with ``label`` when ``path`` could not
    be written atomically: its folder (or the nearest one that exists, where the rest would be created) is
    read-only, or the temporary name beside it is too long. Checked before the work, not at its first save."""
    from .errors import UserInputError

    given = Path(path)
    path = given.absolute()
    folder = next(p for p in (path.parent, *path.parent.parents) if p.is_dir())
    try:
        os.rmdir(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder))
    except OSError as err:
        raise UserInputError(f"{label}: cannot write {given}: {err.strerror or err} (in {folder})") from None


def result_path(out: str | os.PathLike, name: str) -> Path:
    """``out/name.json``, the file a benchmark writes: ``out`` a directory it can write (checked up front, as
    :func:`check_output_directory`), ``name`` a plain file name (``--name ../../x`` wrote outside ``out``)."""
    from .errors import UserInputError

    if not name or Path(name).name != name or name in (".", ".."):
        raise UserInputError(f"--name must be a plain file name (no folders), got {name!r}")
    return check_output_directory(out) / f"{name}.json"


def check_output_file(out: str | os.PathLike, label: str = "--out",
                      protected: Iterable[tuple[str, str | os.PathLike]] = ()) -> Path:
    """``out`` (a file to write) as a :class:`Path`, refused with one line before any work when it
    is a directory, lies under a file, or is (or lies inside) one of ``protected``: ``(flag, path)``
    pairs naming input files or directories that writing ``out`` must not touch
    (:func:`check_output_spares_inputs`)."""
    from .errors import UserInputError

    out = Path(out)
    if out.is_dir():
        raise UserInputError(f"{label}: {out} is a directory; give a file path")
    blocking = blocking_parent(out)
    if blocking is not None:
        raise UserInputError(f"{label}: {blocking} is a file, so {out} cannot be written")
    check_output_spares_inputs(out, protected, label)
    return out


def check_output_spares_inputs(out: str | os.PathLike, protected: Iterable[tuple[str, str | os.PathLike]],
                               label: str = "--out", role: str = "") -> None:
    """Refuse (one line naming ``label``, ``out`` and the input) an ``out`` that is, or lies inside, one of
    ``protected``: ``(flag, path)`` pairs naming the command's input files and directories. "Is": the same
    real path (another spelling, a symbolic link) or the same file (a hard link); "lies inside": under a
    directory or a path not made yet (under a file nothing can be written at all). ``role`` (e.g. "the
    video") is named in brackets after ``out``. The one such check for output files: the data tools
    (through :func:`check_output_file`) and ``sfvgen generate``/``play`` use it, before any model loads.
    Callers choose what they protect: the data tools a whole ``--model`` directory, generate/play only
    its existing files (``--model . --out v.mp4`` is fine). An output *directory* that overlaps an
    input folder is its command's own check (e.g. ``data.ingest.check_ingest_out``)."""
    from .errors import UserInputError

    out = Path(out)
    real = Path(os.path.realpath(out))
    for flag, path in protected:
        inside = Path(os.path.realpath(path))
        if real == inside or _same_inode(out, path):
            what = "is"
        elif real.is_relative_to(inside) and not os.path.isfile(inside):
            what = "lies inside"
        else:
            continue
        shown = f"{out} ({role})" if role else f"{out}"
        raise UserInputError(f"{label}: {shown} {what} the {flag} {path}, an input that must not be "
                             "overwritten; choose another path")


def _same_inode(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` both exist and are one file (a hard link of the other, included)."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):  # either is missing or unreadable
        return False


def blocking_parent(path: Path) -> Path | None:
    """The nearest existing folder above ``path`` that is not a directory (a file or a dangling link), if any."""
    return next((folder for folder in path.parents if os.path.lexists(folder) and not folder.is_dir()), None)


def trim_log(path: str | os.PathLike, last_step: int) -> None:
    """Drop the lines of a ``train_log.jsonl`` logged after ``last_step`` (a resume from the checkpoint at that
    step logs them again), and a torn last line; written atomically, untouched when nothing is dropped."""
    import json

    path = Path(path)
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
            step = record.get("step") if isinstance(record, dict) else None
        except ValueError:  # torn by a kill mid-write
            continue
        if not isinstance(step, int) or step <= last_step:
            kept.append(line if line.endswith("\n") else line + "\n")
    if kept != lines:
        atomic_write_text(path, "".join(kept))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as strict JSON: NaN and infinities (which ``json.dumps`` would write as the
    non-standard ``NaN``/``Infinity``) are written as ``null``."""
    atomic_write_text(path, json.dumps(json_safe(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


@contextlib.contextmanager
def atomic_output_file(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same extension); rename it over ``path`` on success.

    For writers that want a file name (video encoders, ``safetensors.save_file``). What a killed writer left
    is removed by the commands (:func:`remove_stale_temporaries`), once per run: listing a folder per
    file written would cost quadratic time in a dataset's folder of clips.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix or path.suffix
    fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path), suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _publish_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def holds_other_files(directory: str | os.PathLike, marker: str) -> bool:
    """Whether ``directory`` is an existing folder with files in it but without ``marker``: a folder that
    some writer did not make, which replacing it as a whole would delete. ``OSError`` when unreadable."""
    directory = Path(directory)
    return directory.is_dir() and not (directory / marker).exists() and any(directory.iterdir())


def _temporary_prefix(path: Path) -> str:
    """The start of the name of a temporary beside ``path``: ``.NAME.PID-`` (see :func:`remove_stale_temporaries`)."""
    return f".{path.name}.{os.getpid()}-"


_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[A-Za-z0-9_]+\.tmp(\.[^.]+)?$")
_MOVED_ASIDE = re.compile(r"^\.(?P<name>.+)\.old-(?P<pid>\d+)$")


def _running(pid: int) -> bool:
    """Whether process ``pid`` is running (another user's counts)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # OverflowError: a number no process has
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike, names: str) -> None:
    """Delete what writers killed mid-write (SIGKILL, a power cut) left in ``folder`` for the outputs whose
    names match the glob ``names``: their temporary files and folders (``.NAME.PID-*.tmp*``, whole
    checkpoints among them) and the previous versions saves had moved aside (``.NAME.old-PID``) that
    :func:`restore_moved_aside` would not put back. Only those of processes no longer running: another
    writer's work in progress stays."""
    folder = Path(folder)
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        stale = match is not None
        if match is None:  # a previous version is kept only for restore_moved_aside to put back
            match = _MOVED_ASIDE.match(entry.name)
            stale = match is not None and (os.path.lexists(folder / match["name"]) or not any(
                folder.glob(f".{glob.escape(match['name'])}.{match['pid']}-*.tmp")))
        if not stale or not fnmatch.fnmatchcase(match["name"], names) or _running(int(match["pid"])):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)


def restore_moved_aside(path: str | os.PathLike, marker: str) -> bool:
    """Put back the previous ``path`` when a process died between the two renames of
    :func:`atomic_output_dir` (old moved aside to ``.NAME.old-PID``, its new one complete in
    ``.NAME.PID-*.tmp`` but not yet in place): with ``path`` missing, the newest such folder that holds
    ``marker`` becomes ``path`` again. One whose process left no new one finished its swap and was not
    yet removed when it died: ``path`` missing then means it was deleted since, and it is not brought
    back. Whether one was restored."""
    path = Path(path)
    if path.exists() or path.is_symlink() or not path.parent.is_dir():
        return False
    prefix = f".{glob.escape(path.name)}"
    aside = [old for old in path.parent.glob(f"{prefix}.old-*") if (old / marker).is_file()
             and any(path.parent.glob(f"{prefix}.{old.name.rsplit('-', 1)[1]}-*.tmp"))]
    if not aside:
        return False
    os.replace(max(aside, key=lambda old: old.stat().st_mtime), path)
    return True


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike, marker: str) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it replaces ``path`` as a whole.

    An existing ``path`` is moved aside first and removed only after the rename succeeded, so
    at every instant either the old or the new complete directory exists. ``marker`` is the file
    that marks a directory this writer made (``model_index.json``, ``session.json``, ...): an
    existing non-empty ``path`` without it is refused (:class:`~slowfast_vgen.errors.UserInputError`)
    before anything is written, instead of being deleted with whatever else it held.
    """
    from .errors import UserInputError

    path = Path(path)
    if not has_own_name(path):  # refused before the work is done, not when it is to be renamed
        raise ValueError(f"cannot replace {str(path)!r} as a whole: give a directory with a name of its own")
    if path.is_symlink():  # write through the link: replacing the link itself broke the next save and lost it
        path = Path(os.path.realpath(path))
    restore_moved_aside(path, marker)  # an earlier write died between its two renames
    if holds_other_files(path, marker):
        raise UserInputError(f"cannot write {path}: it is a folder of other files (no {marker}), and writing replaces "
                             "the whole folder; give a new or empty directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, glob.escape(path.name))
    tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(path), suffix=".tmp", dir=path.parent))
    old = None
    try:
        yield tmp
        _publish_mode(tmp, directory=True)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            if old.is_symlink() or old.is_file():
                old.unlink()
            elif old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        if old is not None and old.exists() and not os.path.lexists(path):  # stopped between the renames (Ctrl-C)
            with contextlib.suppress(OSError):
                os.replace(old, path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise


CONTENT_CHANGED = "its content is not what {record} records (damaged or replaced)"
"""Why a file whose SHA-256 differs from the one recorded in the file ``record`` is refused."""


def file_digests(folder: str | os.PathLike, skip: Callable[[Path], bool] = lambda relative: False) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (by path relative to it, ``/``-separated) but those ``skip``
    selects (given a relative path; a folder it selects is not walked); recorded beside the files so
    that a damaged or bit-flipped one is found when they are read. Files are hashed in parallel
    (:func:`sha256_of_files`)."""
    folder, names = Path(folder), []
    for root, directories, files in os.walk(folder):
        here = Path(root).relative_to(folder)
        directories[:] = sorted(name for name in directories if not skip(here / name))  # a skipped folder is not walked
        names += [(here / name).as_posix() for name in sorted(files) if not skip(here / name)]
    digests = dict(zip(names, sha256_of_files([folder / name for name in names])))
    for digest in digests.values():
        if isinstance(digest, OSError):
            raise digest
    return dict(sorted(digests.items()))


def sha256_of_file(path: str | os.PathLike) -> str:
    """The file's SHA-256, read in blocks (a checkpoint of ModelScope size has files of several GB)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def sha256_of_files(paths: list[Path]) -> list[str | OSError]:
    """:func:`sha256_of_file` of each path, in order, an ``OSError`` in place of a file that cannot be read.
    Up to one thread per core: hashlib hashes without the GIL, so a checkpoint's weights and optimizer
    moments are read and hashed at once (``benchmarks/checkpoint_cost.py`` measures the gain)."""
    def digest_or_error(path: Path) -> str | OSError:
        try:
            return sha256_of_file(path)
        except OSError as err:
            return err

    if len(paths) < 2:
        return [digest_or_error(path) for path in paths]
    with ThreadPoolExecutor(max_workers=min(len(paths), os.cpu_count() or 1)) as pool:
        return list(pool.map(digest_or_error, paths))


def digest_problem(folder: str | os.PathLike, digests: Any, record: str,
                   missing_ok: bool = False) -> tuple[str, str] | None:
    """``(file, why)`` for the first file under ``folder`` that does not match ``digests`` (what
    :func:`file_digests` returned when it was written, kept in the file ``record``), or None. ``digests``
    comes from a file that may be damaged or foreign: a malformed one, or a name outside ``folder``, is
    reported as ``record``'s problem. ``missing_ok``: a missing file is left to the caller's own checks."""
    if not isinstance(digests, dict) or not all(isinstance(value, str) for value in digests.values()):
        return record, "files must map file names to SHA-256 digests"
    names = list(digests)
    outside = next((i for i, name in enumerate(names) if Path(name).is_absolute() or ".." in Path(name).parts), None)
    checked = names if outside is None else names[:outside]  # the files before a bad name are checked first, as named
    for name, actual in zip(checked, sha256_of_files([Path(folder) / name for name in checked])):
        if isinstance(actual, FileNotFoundError):
            if not missing_ok:
                return name, actual.strerror or str(actual)
        elif isinstance(actual, OSError):
            return name, actual.strerror or str(actual)
        elif actual != digests[name]:
            return name, CONTENT_CHANGED.format(record=record)
    if outside is not None:
        return record, f"files names {names[outside]!r}, a path outside {Path(folder).name}/"
    return None

