"""User-facing errors and the one place that turns them into exit code 2.

Every entry point (``sfvgen``, ``train/``, ``infer/``, ``data_tools/``) wraps its ``main`` with
:func:`run_cli`: a :class:`UserInputError` (bad file, bad config key, empty action, ...) becomes a
single ``error: ...`` line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator, Sequence

EXIT_USER_ERROR = 2


class UserInputError(Exception):
    """Bad input from the user: the message names the problem and is printed as one line."""


class OutputWriteError(OSError):
    """An output could not be written completely (the old file, if any, is kept); printed as one line."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type name when empty): the reason in a one-line error."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def read_json_object(path) -> dict:
    """A JSON file that must hold an object; ``OSError``/``ValueError`` (not UTF-8, not JSON, not an object) otherwise."""
    import json
    from pathlib import Path

    value = json.loads(Path(path).read_text(encoding="utf-8"))  # JSONDecodeError and UnicodeDecodeError are ValueErrors
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


def fps_problem(fps) -> str | None:
    """Why a frame rate read from JSON (a manifest row, a model's metadata) cannot be used (the end of
    a sentence that starts with its name), or ``None``.

    Same rule and words as :class:`~slowfast_vgen.model.ModelConfig`'s check: a finite number > 0
    (JSON ``true`` is not a number here)."""
    import math

    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        return f"must be a finite number > 0, got {fps!r}"
    return None


def unicode_problem(text: str) -> str | None:
    """Why the string ``text`` cannot be written as UTF-8 or passed to a tokenizer (a lone surrogate, e.g. an
    emoji cut in half by an exporter or an undecodable byte read with ``surrogateescape``), or ``None``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return f"is not valid text: {err.reason} at character {err.start}"
    return None


def device_problem(name, choices: str = "cpu, cuda or cuda:N") -> str | None:
    """Why ``name`` is not a torch device this machine has (the end of a sentence that starts with the
    option's name; ``choices`` is what the option accepts), or ``None``: ``cpu``, ``cuda`` or ``cuda:N``,
    the CUDA ones only where CUDA is available."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):  # torch's message lists two dozen backends
        return f"must be {choices}, got {name!r}"
    if device.type == "cuda" and not torch.cuda.is_available():
        return f"is {name}, but CUDA is not available"
    return None


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """Inside, SIGTERM raises ``KeyboardInterrupt`` as Ctrl-C does, so the same cleanup runs (temporary
    files removed, finished chunks kept); main thread only. The trainers install their own handler inside
    (a checkpoint at the next step boundary) and restore this one after."""
    import signal
    import threading

    received = False

    def interrupt(signum, frame):
        nonlocal received
        received = True
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:  # after a SIGTERM the process is on its way out: a repeat (schedulers resend) no longer kills it
        signal.signal(signal.SIGTERM, signal.SIG_IGN if received else previous)  # mid-exit; SIGKILL still does


def print_error(message: str) -> None:
    """Write ``error: message`` to stderr in one ``write``: with ``PYTHONUNBUFFERED`` (containers, batch jobs)
    ``print`` writes the text and its newline separately, and the lines of two processes sharing the stream
    (``torchrun``) ran into each other."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``; map :class:`UserInputError` (and config errors) to one line + exit 2."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        with sigterm_as_ctrl_c():  # what schedulers and `timeout` send: partial outputs are cleaned up or kept
            code = main(argv)
    except UserInputError as err:
        print_error(str(err))
        return EXIT_USER_ERROR
    except OmegaConfBaseException as err:  # unknown key, wrong type, missing value
        from .config import config_error

        print_error(f"bad config: {config_error(err)}")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as err:  # the output could not be written: a full disk, a read-only folder
        message = output_error(err)
        if message is None:
            raise
        print_error(message)
        return EXIT_USER_ERROR
    return int(code or 0)


OUTPUT_ERRNOS = ("ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "ENAMETOOLONG", "EFBIG")
"""Why an output cannot be written, as :mod:`errno` names: reported in one line, not as a traceback."""


def output_error(err: OSError) -> str | None:
    """The one-line message for an ``OSError`` that says an output cannot be written, else None."""
    import errno

    if isinstance(err, OutputWriteError):
        return str(err)
    if err.errno not in {getattr(errno, name) for name in OUTPUT_ERRNOS if hasattr(errno, name)}:
        return None
    where = err.filename if err.filename is not None else "an output"
    return f"cannot write {where}: {err.strerror or err}"
