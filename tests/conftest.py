"""Test setup: two forced CPU devices (before JAX is imported) and small shared fixtures."""

import os

# Two forced CPU devices; and XLA's backend optimisation off: the tests' tiny models spend
# their time compiling, not running (the U-Net's vmapped step compiles 30% faster).
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    " --xla_backend_optimization_level=0"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    # One compilation cache for the whole run, shared by the xdist workers (they inherit this
    # environment) and the command-line tests' subprocesses: many tests compile the same tiny
    # models, and the U-Net's compilation is most of a segmentation test's time (a test that
    # counts compilations counts traces, which the cache does not skip).
    import atexit
    import shutil
    import tempfile

    _cache = tempfile.mkdtemp(prefix="molml-jax-test-compile-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)

import types  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def motif_sequences(n: int, length: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Random DNA where label 1 sequences carry the motif GATTACA: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    seqs, labels = [], []
    for i in range(n):
        s = list(rng.choice(list("ACGT"), size=length))
        label = i % 2
        if label:
            at = rng.integers(0, length - 7)
            s[at : at + 7] = list("GATTACA")
        seqs.append("".join(s))
        labels.append(label)
    return seqs, np.array(labels)


def write_tiny_dna_csv(folder: Path) -> Path:
    """240 labeled 24-bp sequences (motif_sequences) as folder/tiny.csv."""
    seqs, labels = motif_sequences(240, 24, seed=0)
    path = folder / "tiny.csv"
    pd.DataFrame({"seq": seqs, "bind": labels}).to_csv(path)
    return path


@pytest.fixture
def tiny_dna_csv(tmp_path) -> Path:
    return write_tiny_dna_csv(tmp_path)


@pytest.fixture
def pairs_dir(tmp_path):
    return write_pairs(tmp_path)


def write_pairs(parent: Path) -> Path:
    """20 pairs of 32x32 grey discs: parent/pairs/s{i}_raw.png + s{i}_label.png."""
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = parent / "pairs"
    folder.mkdir()
    yy, xx = np.mgrid[:32, :32]
    for i in range(20):
        cy, cx, r = rng.integers(8, 24), rng.integers(8, 24), rng.integers(4, 8)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.uint8) * 255
        image = np.clip(mask * 0.7 + rng.normal(40, 15, mask.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(folder / f"s{i}_raw.png")
        Image.fromarray(mask).save(folder / f"s{i}_label.png")
    return folder


def run_launcher(name: str, *args, capsys) -> types.SimpleNamespace:
    """`python -m experiments.<name> ARGS` in this process (no interpreter and JAX start-up):
    .returncode, .stdout, .stderr, as subprocess.run gives them."""
    import importlib

    capsys.readouterr()
    try:
        importlib.import_module(f"experiments.{name}").main([str(a) for a in args])
        status = 0
    except SystemExit as exit:
        status = exit.code or 0
    out, err = capsys.readouterr()
    return types.SimpleNamespace(returncode=status, stdout=out, stderr=err)
