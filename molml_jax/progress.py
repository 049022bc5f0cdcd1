"""Progress bars: tqdm (a dependency of the package), or, where only the ML stack is installed
(an accelerator image set up with `pip install --no-deps -e .`), a plain line per update on
stderr, so that training and the benchmarks run there unchanged."""

from __future__ import annotations

import sys

try:
    from tqdm.auto import tqdm as progress_bar
except ImportError:  # pragma: no cover - exercised by tests/test_benchmarks.py with tqdm hidden
    class progress_bar:  # noqa: N801 - the tqdm calls this project makes, same signature
        def __init__(self, total=None, initial=0, desc="", unit="it", disable=False, **_):
            self.n, self.total, self.desc, self.unit, self.disable = initial, total, desc, unit, disable
            self.postfix = ""

        def set_postfix(self, **values):
            self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

        def update(self, n: int = 1) -> None:
            self.n += n
            if not self.disable:
                print(f"{self.desc}: {self.n}/{self.total} {self.unit}" + (f" ({self.postfix})" if self.postfix else ""),
                      file=sys.stderr, flush=True)

        def close(self) -> None:
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.close()
            return False
