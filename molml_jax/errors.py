"""Errors that reach a user as one clear line instead of a traceback."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator


class InputError(ValueError):
    """Bad input from the user: a file, a column, a character, a run folder.

    The message is one line that names the file (or item) and the problem. Command-line
    entry points print it and exit with status 2; library callers can catch it.
    """


class TrainingDiverged(RuntimeError):
    """The loss became non-finite; the last good checkpoint was kept."""


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Turn `InputError` into 'error: ...' on stderr and exit code 2 (1 for divergence)."""
    try:
        yield
    except InputError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)  # always one line
        raise SystemExit(2) from None
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
