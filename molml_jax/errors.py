"""Errors that reach a user as one clear line instead of a traceback."""

from __future__ import annotations

import contextlib
import importlib
import sys
from typing import Iterator


class InputError(ValueError):
    """Bad input from the user: a file, a column, a character, a run folder.

    The message is one line that names the file (or item) and the problem. Command-line
    entry points print it and exit with status 2; library callers can catch it.
    """


def require(module: str, extra: str, purpose: str):
    """import_module(module), or an InputError naming the extra that installs it: the
    packages only some commands use (prepared datasets, streaming, genomes, logos) stay out
    of the base install, which the main job needs alone."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        raise InputError(f"{purpose} needs {err.name}, which is not installed: "
                         f"pip install 'molml-jax[{extra}]'") from None


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
