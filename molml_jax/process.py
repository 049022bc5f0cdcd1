"""Process set-up before JAX starts its backend: forced CPU devices for data parallelism on
a machine without accelerators, their share of the cores, and glibc keeping freed memory.

The launchers (`python -m experiments.*`) and benchmarks call `prepare_process`; in a
notebook, call it in the first cell, before anything runs on JAX:

    from molml_jax.process import prepare_process
    prepare_process(devices=2)      # then Config(devices=2) trains data-parallel on 2 cores

Importing jax is fine before it; running anything on a device is not (the device count is
fixed when the backend starts).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from molml_jax.distributed import DistributedSpec


def use_cpu_devices(n: int) -> None:
    """Let JAX see n CPU devices (for --devices n on a machine without accelerators).

    Must run before JAX starts its backend (the first computation or device query); only CPU device count changes, so it is harmless on
    a GPU machine. Does nothing if XLA_FLAGS already sets a count. With n > 1 it also sets
    OMP_NUM_THREADS (unless set) to the cores / n, the threads of each device's oneDNN calls.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if n > 1 and "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    if n > 1:
        # each device's oneDNN convolutions (molml_jax.ops.native) get their share of the cores:
        # n devices x all-core OpenMP teams oversubscribe them (U-Net epoch with 2 devices on
        # 2 cores: 11.4 s, 6.8 s with one thread each; one device: 7.4 s)
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory in the process instead of returning it to the OS.

    XLA:CPU mallocs each step's whole temporary buffer (59 MiB for this model at batch 64)
    on every call; glibc serves blocks over 32 MiB with a fresh mmap, and first touch of
    every page faults (~13,000 faults, ~25 ms per step here). No mmap, no trimming and
    one arena keep the memory mapped between steps. Process-wide; call it before JAX or
    torch start their threads. Returns False where it does not apply (not glibc).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_max, m_arena_max = -1, -2, -4, -8
    return all([mallopt(m_mmap_max, 0), mallopt(m_trim_threshold, 1 << 30),
                mallopt(m_top_pad, 64 << 20), mallopt(m_arena_max, 1)])


def prepare_process(devices: int = 1, distributed: DistributedSpec | None = None) -> None:
    """What every launcher and benchmark does before JAX starts: `devices` forced CPU
    devices per process (1: none forced), glibc keeping freed memory (see
    keep_freed_memory) and, with a `distributed` spec, joining the multi-process job
    (molml_jax.distributed.initialize; InputError if it cannot)."""
    use_cpu_devices(devices)
    keep_freed_memory()
    if distributed is not None:
        from molml_jax.distributed import initialize

        initialize(distributed)  # after the device flags: the backend starts with them
