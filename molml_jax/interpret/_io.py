"""What the genome-input readers and scorers share: opening text (gzip by its magic bytes),
calling a user's `score` on one-hot windows, and a TSV written whole or not at all."""

from __future__ import annotations

import contextlib
import gzip
import itertools
import json
import os
import tempfile
import uuid
import zlib
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np

from molml_jax.errors import InputError

READ_ERRORS = (UnicodeDecodeError, gzip.BadGzipFile, EOFError, zlib.error, OSError)
GZIP_MAGIC = b"\x1f\x8b"
WINDOW, PER_BASE = "window", "per_base"

T = TypeVar("T")
Score = Callable[[np.ndarray], np.ndarray]


def check_file(path: Path, what: str) -> None:
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a {what} file")
    if not path.exists():
        raise InputError(f"{path}: no such file ({what})")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty ({what})")


def open_text(path: Path):
    """A text handle on `path`, gunzipped when it starts with gzip's magic bytes (plain
    gzip and bgzip alike, whatever the name)."""
    with open(path, "rb") as probe:
        gz = probe.read(2) == GZIP_MAGIC
    if gz:
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, "rt", encoding="utf-8-sig", newline="")


def batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of up to `size` consecutive items, taken lazily."""
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def few(items, k: int = 4) -> str:
    """"'a', 'b', 'c', ... (12 in all)" for messages."""
    items = list(items)
    shown = ", ".join(f"'{s}'" for s in items[:k])
    return shown + (f", ... ({len(items)} in all)" if len(items) > k else "")


def run_score(score: Score, x: np.ndarray, kind: str | None) -> tuple[np.ndarray, str]:
    """score(x) for one-hot windows x float32 (B, L, 4) -> (float64 (B,) or (B, L), kind).

    kind: WINDOW for one value per window, PER_BASE for a track per window; a trailing
    axis of size 1 is dropped. Every call of one run must give the same kind (`kind` is
    the earlier calls', None before the first).
    """
    out = np.asarray(score(x), dtype=np.float64)
    if out.ndim >= 2 and out.shape[-1] == 1 and out.shape != (len(x), x.shape[1]):
        out = out[..., 0]
    if out.shape == (len(x),):
        got = WINDOW
    elif out.shape == x.shape[:2]:
        got = PER_BASE
    else:
        raise ValueError(f"score returned shape {out.shape} for windows {x.shape}: expected (B,) = "
                         f"({len(x)},) or (B, length) = {x.shape[:2]}")
    if kind is not None and got != kind:
        raise ValueError(f"score returned {got} scores {out.shape} after {kind} scores: one kind per run")
    return out, got


def number(value: float) -> str:
    """A score as text: 8 significant digits round-trips float32."""
    return f"{value:.8g}"


def _temp_path(final: Path) -> Path:
    """An unused name beside `final` (same filesystem, so os.replace is atomic)."""
    return final.with_name(f".{final.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")


class Table:
    """Rows of a TSV whose columns are known only after some rows: a score's kind (one value
    or a track per window) shows at its first call. Rows are {column: text}; a missing
    column is written empty. Rows that come before `header` wait as JSON lines in an
    anonymous temporary file, not in memory, and are written after the header."""

    def __init__(self, handle):
        self._handle = handle
        self._waiting = tempfile.TemporaryFile("w+t", encoding="utf-8", newline="")
        self.columns: list[str] | None = None

    def header(self, columns: list[str]) -> None:
        self.columns = list(columns)
        self._handle.write("\t".join(self.columns) + "\n")
        self._waiting.seek(0)
        for line in self._waiting:
            self._write_now([json.loads(line)])
        self._waiting.close()

    def write(self, rows: list[dict[str, str]]) -> None:
        if self.columns is None:
            self._waiting.writelines(json.dumps(row) + "\n" for row in rows)
        else:
            self._write_now(rows)

    def _write_now(self, rows: list[dict[str, str]]) -> None:
        self._handle.writelines("\t".join(row.get(c, "") for c in self.columns) + "\n" for row in rows)

    def close(self) -> None:
        self._waiting.close()


@contextlib.contextmanager
def atomic_table(path: str | os.PathLike) -> Iterator[Table]:
    """A `Table` written to a temporary file beside `path` (gzip when the name ends in
    .gz), renamed to `path` when the block ends without error; on error nothing is left.
    The block must call `header` before it ends."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_path(final)
    opener = gzip.open if final.name.endswith(".gz") else open
    table = None
    try:
        with opener(temp, "xt", encoding="utf-8", newline="") as handle:
            table = Table(handle)
            yield table
            if table.columns is None:
                raise RuntimeError("atomic_table: no header written")
            table.close()
        os.replace(temp, final)
    finally:
        if table is not None:
            table.close()
        temp.unlink(missing_ok=True)
