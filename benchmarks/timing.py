"""Interleaved step timing: every variant is timed in each round, so a noisy machine slows
them alike and the ratios stay meaningful. And torch's thread count for one reference run."""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Callable, Iterator


@contextlib.contextmanager
def torch_num_threads(threads: int | None) -> Iterator[None]:
    """torch.set_num_threads(threads) inside the block (None: torch's own), restored after."""
    import torch

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def interleaved_step_ms(runners: dict[str, Callable[[], None]], *, rounds: int, steps: int,
                        warmup: int = 2) -> dict[str, dict[str, float]]:
    """{'step_ms': median over rounds of each round's median step, 'step_ms_min_round': best
    round} per runner, in milliseconds. Each runner does one (synchronised) step."""
    for run in runners.values():  # compile and warm up
        for _ in range(warmup):
            run()
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            times = []
            for _ in range(steps):
                began = time.perf_counter()
                run()
                times.append(time.perf_counter() - began)
            samples[name].append(statistics.median(times))
    return {"step_ms": {name: 1e3 * statistics.median(v) for name, v in samples.items()},
            "step_ms_min_round": {name: 1e3 * min(v) for name, v in samples.items()}}
