"""Shared launcher plumbing for `python -m experiments.<pipeline>` (no JAX imported here,
so that --devices can still set up forced CPU devices before JAX starts)."""

from __future__ import annotations

import argparse
import os
import sys


def parse_with_default_command(parser: argparse.ArgumentParser, commands: set[str], default: str,
                               argv: list[str] | None = None) -> argparse.Namespace:
    """`python -m experiments.dna --epochs 5` means `... train --epochs 5`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in commands and argv[0] not in ("-h", "--help")):
        argv.insert(0, default)
    return parser.parse_args(argv)


def use_cpu_devices(n: int) -> None:
    """Let JAX see n CPU devices (for --devices n on a machine without accelerators).

    Must run before JAX is imported; only CPU device count changes, so it is harmless on
    a GPU machine. Does nothing if XLA_FLAGS already sets a count.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if n > 1 and "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value
