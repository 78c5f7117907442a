"""How ``ihas`` reports a failure it expects (bad input, a file it cannot read or write, a busy or mismatched
run folder, Ctrl+C): one line ``ihas CMD: error: ...`` naming the file and the fix, instead of a traceback."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..callbacks.stateful import MissingCallbackStateError
from ..modules.base import NonFiniteLossError
from ..pipeline.run_directory import RunLockedError

__all__ = ["EXPECTED_ERRORS", "INTERRUPTED_EXIT_CODE", "describe", "interrupt_flag"]

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, OSError, RunLockedError, NonFiniteLossError, MissingCallbackStateError)
"""Failures that are the input's or the environment's, not a bug: reported in one line (exit code 2).
``OSError`` covers FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, a full disk;
``ValueError`` covers json.JSONDecodeError and the data's ``DataFormatError``."""

INTERRUPTED_EXIT_CODE = 130
"""Exit code after Ctrl+C (SIGINT), as a shell reports a process it interrupted: 128 + 2."""

_OS_FIXES = {
    PermissionError: "choose a folder you may write (--out, --cache-dir) and files you may read",
    IsADirectoryError: "give a file's path here, not a folder's",
    NotADirectoryError: "a part of the path is a file, not a folder: check the path",
    FileNotFoundError: "check the path",
}


def describe(error: BaseException) -> str:
    """The one-line message of an expected error: its own text, or for an OSError with a path, what
    happened to which path and what to do."""
    if isinstance(error, OSError) and error.filename is not None:
        fix = next((text for kind, text in _OS_FIXES.items() if isinstance(error, kind)), "check the path")
        return f"{error.strerror or type(error).__name__}: '{error.filename}'; {fix}"
    if isinstance(error, KeyError) and error.args:
        return str(error.args[0])
    return str(error) or type(error).__name__


@contextmanager
def interrupt_flag() -> Iterator[Callable[[], bool]]:
    """Record a SIGINT during the block; yields a function that says whether one came.

    Lightning catches the KeyboardInterrupt inside ``Trainer.fit`` and exits with ``SystemExit(1)``, so the
    CLI cannot tell an interrupt from the exception alone. Outside the main thread (where no signal handler
    can be set) nothing is recorded.
    """
    state = {"interrupted": False}
    if threading.current_thread() is not threading.main_thread():
        yield lambda: state["interrupted"]
        return

    def on_sigint(signum: int, frame: object) -> None:
        state["interrupted"] = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield lambda: state["interrupted"]
    finally:
        signal.signal(signal.SIGINT, previous)
