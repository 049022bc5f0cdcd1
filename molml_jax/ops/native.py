"""Native XLA:CPU kernels: oneDNN convolutions registered as XLA FFI targets, which
`molml_jax.ops.conv` calls on CPU.

`onednn_conv.cc` (next to this file, shipped as package data) is compiled once per
(source, jaxlib, oneDNN) into the user cache (`$MOLML_JAX_CACHE`, else
`$XDG_CACHE_HOME/molml_jax`, else `~/.cache/molml_jax`) with the C++ compiler `$CXX`
(default g++), against jaxlib's FFI headers and the oneDNN CPU build from PyPI
(`onednn-devel-cpu-gomp`, a core dependency on Linux x86-64), then loaded and registered.
Where any ingredient is missing, `conv_targets()` returns None (and says why once, in a
warning, when JAX's default backend is the CPU), and the models use XLA's own convolutions:
same results, slower on CPU.
`MOLML_JAX_CONV=xla` turns the native path off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import jax

SOURCE = Path(__file__).with_name("onednn_conv.cc")  # molml_jax/ops/onednn_conv.cc, package data
ONEDNN_LIBRARY = ("onednn-cpu-gomp", "libdnnl.so.3")
ONEDNN_HEADERS = ("onednn-devel-cpu-gomp", "dnnl.hpp")
# FFI target names (jax.ffi.ffi_call) of the three handlers in onednn_conv.cc
HANDLERS = {"forward": "Conv2dForward", "backward_data": "Conv2dBackwardData",
            "backward_weights": "Conv2dBackwardWeights"}
TARGET_PREFIX = "molml_jax_onednn_"


class NativeBuildError(RuntimeError):
    """The native convolution library could not be found, compiled or loaded."""


def cache_dir() -> Path:
    if os.environ.get("MOLML_JAX_CACHE"):
        return Path(os.environ["MOLML_JAX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "molml_jax"


def _installed_file(distribution: str, name: str) -> Path:
    """The file `name` of an installed distribution (wheel data files live outside site-packages)."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise NativeBuildError(f"{distribution} is not installed (pip install {distribution})") from None
    for entry in dist.files or ():
        if entry.name == name:
            path = Path(dist.locate_file(entry)).resolve()
            if path.exists():
                return path
    raise NativeBuildError(f"{distribution} is installed but has no {name}")


def build_library() -> Path:
    """Compile onednn_conv.cc (once; cached by content) and return the shared library's path."""
    library = _installed_file(*ONEDNN_LIBRARY)
    header = _installed_file(*ONEDNN_HEADERS)
    include = header.parent if (header.parent / "oneapi").is_dir() else header.parent.parent
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise NativeBuildError(f"no C++ compiler {compiler!r} on PATH (set CXX)")
    versions = "|".join([importlib.metadata.version("jaxlib"),
                         importlib.metadata.version(ONEDNN_LIBRARY[0]), compiler, str(library)])
    digest = hashlib.sha256(SOURCE.read_bytes() + versions.encode()).hexdigest()[:16]
    target = cache_dir() / f"onednn_conv-{digest}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        partial = Path(scratch) / target.name
        command = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", str(SOURCE),
                   "-isystem", jax.ffi.include_dir(), "-isystem", str(include),
                   str(library), f"-Wl,-rpath,{library.parent}", "-o", str(partial)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines() or ["(no output)"]
            first_error = next((line for line in lines if "error" in line), lines[-1])
            raise NativeBuildError(f"compiling {SOURCE.name} failed: {first_error.strip()}")
        os.replace(partial, target)  # atomic: a concurrent build leaves one complete file
    return target


@functools.cache
def conv_targets() -> dict[str, str] | None:
    """Registered FFI target names of the oneDNN convolutions {'forward': ..., ...}, or None
    (with one warning saying why) where they are unavailable or MOLML_JAX_CONV=xla."""
    if os.environ.get("MOLML_JAX_CONV", "").lower() == "xla":
        return None
    try:
        library = ctypes.CDLL(str(build_library()))
    except (NativeBuildError, OSError) as error:
        if jax.default_backend() == "cpu":  # on GPU/TPU the native CPU kernels would not run anyway
            warnings.warn(f"oneDNN convolutions unavailable, using XLA's (slower on CPU): {error}",
                          RuntimeWarning, stacklevel=2)
        return None
    targets = {}
    for role, symbol in HANDLERS.items():
        name = TARGET_PREFIX + symbol
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
        targets[role] = name
    return targets
