"""Attributions of a DNA model's output to its input bases: saliency, input x gradient,
integrated gradients and in-silico mutagenesis.

Conventions, the same for every function here:

    x   one-hot DNA, float32 (N, L, 4), bases in A, C, G, T order; an all-zero row is an
        unknown base (N).
    f   a JAX-traceable scalar function of a batch, (B, L, 4) float32 -> (B,) float32: one
        number per sequence. Close over the model's variables, e.g.
            f = lambda x: model.apply(variables, x, train=False)          # DNA logit
            f = lambda x: model.apply(variables, x, train=False).sum(-1)  # TF CNN: summed scores
    ->  attributions (N, L, 4) float32, numpy.

Each function compiles one program per (f, batch shape) and caches it keyed on f (pass the
same f object to reuse it; an unhashable f compiles on every call), then runs the N
sequences through it in batches of `batch_size`, the last batch padded by repeating its last
sequence, so one compiled shape serves a whole file (as `pipelines.common.apply_in_batches`).
The many model evaluations of a batch (its path points, its mutants) are batched forward
(and backward) passes inside that one program: `lax.map` over chunks of `rows_per_pass(L)`
inputs (128 on CPU), which keeps memory bounded and the working set in cache.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Hashable

import jax
import jax.numpy as jnp
import numpy as np

from molml_jax.errors import InputError

METHODS = ("saliency", "input-x-gradient", "integrated-gradients", "ism")
BASELINES = ("uniform", "zeros", "shuffle")
BASES = 4  # one-hot A, C, G, T

# Model evaluations per batched pass (a chunk of a batch's path points or mutants): on
# XLA:CPU 128 was as fast as any for both models' forward and backward passes (64 to 1024
# tried; larger passes leave the cache and slow down, the LSTM's by 2x at 1024); accelerators
# want larger passes (2048: not measured). MAX_POSITIONS_PER_PASS (rows x L) caps memory for
# long sequences.
ROWS_PER_PASS = {"cpu": 128}
ROWS_PER_PASS_ACCELERATOR = 2048
MAX_POSITIONS_PER_PASS = 2**22

ScalarFn = Callable[[jax.Array], jax.Array]


# ----- public API ---------------------------------------------------------------------------

def saliency(f: ScalarFn, x, *, batch_size: int = 128) -> np.ndarray:
    """Gradient of each sequence's output with respect to its input, d f(x_i) / d x_i.

    Args:
      f: (B, L, 4) -> (B,), JAX-traceable.
      x: one-hot DNA (N, L, 4).
      batch_size: sequences per compiled batch.

    Returns:
      (N, L, 4) float32. Every base of a position gets a value, the absent ones included.
    """
    x, size = _checked(f, x, batch_size)
    (grads,) = _in_batches(_program(f, "gradient"), (x,), size)
    return grads


def input_x_gradient(f: ScalarFn, x, *, batch_size: int = 128) -> np.ndarray:
    """saliency * x: the gradient at the bases present, 0 elsewhere (and at N rows).

    Args and shapes as `saliency`; returns (N, L, 4) float32.
    """
    return saliency(f, x, batch_size=batch_size) * np.asarray(x, np.float32)


def integrated_gradients(f: ScalarFn, x, *, baseline="uniform", steps: int = 50, seed: int = 0,
                         batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Integrated gradients from a baseline b to x, by the midpoint rule.

    attributions = (x - b) * mean_k grad f(b + alpha_k (x - b)), alpha_k = (k + 0.5) / steps,
    k = 0 .. steps - 1. They sum to about f(x) - f(b); `completeness` is the relative error
    |sum(attributions) - (f(x) - f(b))| / max(|f(x) - f(b)|, 1e-6), small (< 1e-2) when
    `steps` is enough for f.

    Args:
      f: (B, L, 4) -> (B,), JAX-traceable.
      x: one-hot DNA (N, L, 4).
      baseline: 'uniform' (0.25 for every base at real positions, 0 at N rows), 'zeros',
        'shuffle' (each sequence's real positions permuted, seeded by `seed`), or an array
        broadcastable to (N, L, 4); see `make_baseline`. With the uniform and shuffle
        baselines x - b = 0 at N rows, so they get no attribution.
      steps: points on the path (>= 1).
      seed: seed of the shuffle baseline.
      batch_size: sequences per compiled batch; its batch_size * steps path points are
        evaluated in passes of rows_per_pass(L).

    Returns:
      (attributions (N, L, 4) float32, completeness (N,) float32).
    """
    if not _positive_int(steps):
        raise InputError(f"steps must be a positive integer, got {steps!r}")
    x, size = _checked(f, x, batch_size)
    b = make_baseline(x, baseline, seed=seed)
    program = _program(f, "integrated-gradients", steps)
    attributions, completeness = _in_batches(program, (x, b), size)
    return attributions, completeness


def in_silico_mutagenesis(f: ScalarFn, x, *, batch_size: int = 8) -> np.ndarray:
    """The change of f when one position is set to one base: out[i, p, b] = f(x_i with
    position p set to base b) - f(x_i).

    Exactly 0 where base b is already x_i's base at p; at an N (all-zero) row every base is
    a change. When every row of x is one-hot, only the 3L changed sequences of each are
    evaluated, else all 4L; they are built on the device and evaluated as batched forward
    passes of rows_per_pass(L) mutants in one compiled program.

    Args:
      f: (B, L, 4) -> (B,), JAX-traceable.
      x: one-hot DNA (N, L, 4).
      batch_size: sequences per compiled batch (each brings 3L or 4L mutants).

    Returns:
      (N, L, 4) float32.
    """
    x, size = _checked(f, x, batch_size)
    one_hot = bool(np.all((x == 0) | (x == 1)) and np.all(x.sum(-1) == 1))
    (deltas,) = _in_batches(_program(f, "ism", one_hot), (x,), size)
    return deltas


def attribute(f: ScalarFn, x, method: str, *, baseline="uniform", steps: int = 50, seed: int = 0,
              batch_size: int | None = None) -> dict[str, np.ndarray]:
    """One of METHODS by name: {'attributions': (N, L, 4)} and, for integrated gradients,
    'completeness' (N,). baseline, steps and seed apply to integrated gradients only;
    batch_size None takes the method's default."""
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    sized = {} if batch_size is None else {"batch_size": batch_size}
    if method == "integrated-gradients":
        attributions, completeness = integrated_gradients(f, x, baseline=baseline, steps=steps, seed=seed, **sized)
        return {"attributions": attributions, "completeness": completeness}
    function = {"saliency": saliency, "input-x-gradient": input_x_gradient, "ism": in_silico_mutagenesis}[method]
    return {"attributions": function(f, x, **sized)}


def make_baseline(x, baseline="uniform", *, seed: int = 0) -> np.ndarray:
    """The reference input of integrated gradients for one-hot x (N, L, 4) -> (N, L, 4) float32.

    'uniform': 0.25 for every base at the real positions (rows of x that are not all zero),
      0 at N rows.
    'zeros': all zero.
    'shuffle': each sequence's real positions permuted among themselves (its base
      composition kept, N rows where they were), by numpy's Generator seeded with `seed`;
      sequence i's permutation depends only on seed, i and L.
    an array: broadcast to x's shape.
    """
    x = _sequences(x)
    if isinstance(baseline, str):
        if baseline == "uniform":
            return np.where(_real_rows(x)[..., None], np.full_like(x, 1 / BASES), np.float32(0))
        if baseline == "zeros":
            return np.zeros_like(x)
        if baseline == "shuffle":
            if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
                raise InputError(f"seed must be a non-negative integer, got {seed!r}")
            return _shuffled(x, int(seed))
        raise InputError(f"baseline must be one of {', '.join(BASELINES)} or an array broadcastable to "
                         f"{x.shape}, not {baseline!r}")
    try:
        return np.array(np.broadcast_to(np.asarray(baseline, np.float32), x.shape))
    except (ValueError, TypeError):
        shape = getattr(baseline, "shape", None)
        what = f"shape {tuple(shape)}" if shape is not None else repr(baseline)[:40]
        raise InputError(f"baseline of {what} does not broadcast to x's shape {x.shape}; use one of "
                         f"{', '.join(BASELINES)} or an array of shape (L, 4) or (N, L, 4)") from None


# ----- baselines ---------------------------------------------------------------------------

def _real_rows(x: np.ndarray) -> np.ndarray:
    """(N, L) bool: positions whose row is not all zero (not N)."""
    return np.any(x != 0, axis=-1)


def _shuffled(x: np.ndarray, seed: int) -> np.ndarray:
    """x (N, L, 4) with each sequence's real rows permuted among the real positions."""
    n, length, _ = x.shape
    real = _real_rows(x)
    keys = np.random.default_rng(seed).random((n, length))  # row i: the same for any N > i
    positions = np.argsort(~real, axis=1, kind="stable")  # real positions first, in order
    n_real = real.sum(1, keepdims=True)
    first = np.arange(length)[None] < n_real
    # a random order of the first n_real entries; the N positions after them stay in place
    order = np.argsort(np.where(first, keys, np.inf), axis=1, kind="stable")
    sources = np.take_along_axis(positions, order, axis=1)
    rows = np.arange(n)[:, None]
    out = np.empty_like(x)
    out[rows, positions] = x[rows, sources]
    return out


# ----- checks and batching -------------------------------------------------------------------

def _positive_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def _checked(f, x, batch_size) -> tuple[np.ndarray, int]:
    """(x as float32 numpy (N, L, 4), the compiled batch size) or an InputError."""
    if not callable(f):
        raise InputError(f"f must be a function (B, L, 4) -> (B,), got {type(f).__name__}")
    if not _positive_int(batch_size):
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    x = _sequences(x)
    return x, max(1, min(batch_size, len(x)))


def _sequences(x) -> np.ndarray:
    """x as a float32 numpy array (N, L, 4), or an InputError."""
    try:
        x = np.asarray(x, np.float32)
    except (TypeError, ValueError):
        raise InputError(f"x must be a numeric one-hot array (N, L, {BASES}), got {type(x).__name__}") from None
    if x.ndim != 3 or x.shape[-1] != BASES or x.shape[1] < 1:
        raise InputError(f"x must be one-hot DNA of shape (N, L, {BASES}) with L >= 1, got shape {x.shape}")
    return x


def _in_batches(program, arrays: tuple[np.ndarray, ...], size: int) -> tuple[np.ndarray, ...]:
    """program(*batch) over the leading axis in batches of `size`, the last one padded by
    repeating its last row; each output cut back to the real rows and concatenated.
    Every batch is dispatched before any result is read, so host and device overlap."""
    n = len(arrays[0])
    if n == 0:
        return tuple(np.zeros((0, *shape), np.float32) for shape in _output_shapes(program, arrays))
    pending = []
    for start in range(0, n, size):
        chunk = [a[start:start + size] for a in arrays]
        real = len(chunk[0])
        if real < size:
            chunk = [np.concatenate([c, np.repeat(c[-1:], size - real, axis=0)]) for c in chunk]
        pending.append((program(*chunk), real))
    return tuple(np.concatenate([np.asarray(out[i])[:real] for out, real in pending])
                 for i in range(len(pending[0][0])))


def _output_shapes(program, arrays) -> list[tuple[int, ...]]:
    """Per output of program, its shape after the batch axis (for an empty x)."""
    one = [jax.ShapeDtypeStruct((1, *a.shape[1:]), jnp.float32) for a in arrays]
    return [tuple(s.shape[1:]) for s in jax.eval_shape(program, *one)]


# ----- compiled programs ---------------------------------------------------------------------

def _program(f, kind: str, option=None):
    """The jitted program of `kind` for f (and `option`: IG's steps, ISM's one-hot flag),
    cached keyed on f; jax.jit then compiles once per batch shape."""
    if isinstance(f, Hashable):
        return _cached_program(f, kind, option)
    return _build_program(f, kind, option)


def _build_program(f, kind: str, option):
    if kind == "gradient":
        return jax.jit(lambda x: _gradient(f, x))
    if kind == "integrated-gradients":
        return jax.jit(lambda x, b: _integrated(f, x, b, option))
    return jax.jit(lambda x: (_mutagenesis(f, x, option),))


_cached_program = functools.lru_cache(maxsize=32)(_build_program)


def _scalars(f, x) -> jax.Array:
    """f(x) (B,) float32, or an InputError (at trace time) when f returns another shape."""
    y = f(x)
    if getattr(y, "shape", None) != (x.shape[0],):
        raise InputError(f"f must return one number per sequence, shape ({x.shape[0]},) for a batch of "
                         f"{x.shape[0]}; got {getattr(y, 'shape', type(y).__name__)} (reduce it, e.g. .sum(-1))")
    return y.astype(jnp.float32)


def _gradient(f, x) -> tuple[jax.Array]:
    """x (B, L, 4) -> (d f(x_i) / d x_i (B, L, 4),)."""
    return (jax.grad(lambda z: jnp.sum(_scalars(f, z)))(x),)


def rows_per_pass(length: int) -> int:
    """Model evaluations per batched pass for sequences of `length` on this backend."""
    rows = ROWS_PER_PASS.get(jax.default_backend(), ROWS_PER_PASS_ACCELERATOR)
    return max(1, min(rows, MAX_POSITIONS_PER_PASS // length))


def _map_rows(fn, total: int, length: int) -> jax.Array:
    """fn over the row indices 0 .. total - 1, `lax.map` over chunks of at most
    rows_per_pass(length) of them (as even as possible; the last chunk padded with the index
    total - 1, cut off after): fn(indices (chunk,)) -> (chunk, ...); returns (total, ...)."""
    chunk = min(total, rows_per_pass(length))
    count = math.ceil(total / chunk)
    chunk = math.ceil(total / count)
    indices = jnp.minimum(jnp.arange(chunk * count), total - 1).reshape(count, chunk)
    out = jax.lax.map(fn, indices)
    return out.reshape(chunk * count, *out.shape[2:])[:total]


def _integrated(f, x, b, steps: int) -> tuple[jax.Array, jax.Array]:
    """x, b (B, L, 4) -> (attributions (B, L, 4), completeness (B,)).

    The steps * B path points (row s * B + i: step s of sequence i) are evaluated as
    batched forward and backward passes over chunks of rows."""
    batch, length, _ = x.shape
    delta = x - b

    def gradients(rows):
        step, i = rows // batch, rows % batch
        alpha = ((step + 0.5) / steps).astype(jnp.float32)[:, None, None]
        points = b[i] + alpha * delta[i]  # (chunk, L, 4)
        return jax.grad(lambda z: jnp.sum(_scalars(f, z)))(points)

    grads = _map_rows(gradients, steps * batch, length)
    attributions = delta * grads.reshape(steps, batch, length, BASES).mean(0)
    ends = _scalars(f, jnp.concatenate([x, b]))
    change = ends[:batch] - ends[batch:]
    completeness = jnp.abs(attributions.sum((1, 2)) - change) / jnp.maximum(jnp.abs(change), 1e-6)
    return attributions, completeness


def _mutagenesis(f, x, one_hot: bool) -> jax.Array:
    """x (B, L, 4) -> f(mutant) - f(x) (B, L, 4).

    Mutant (i, p, k) sets position p of sequence i to base (r + k) % 4, r its base there
    (0 at an N row); k = 1..3 when every row is one-hot (k = 0 would be x itself), else
    0..3. The B * L * len(k) mutants (row (i * L + p) * len(k) + k) are built from x and
    evaluated as batched forward passes over chunks of rows.
    """
    batch, length, _ = x.shape
    ks = jnp.arange(1 if one_hot else 0, BASES)
    reference = jnp.argmax(x, axis=-1)  # (B, L)

    def mutant_outputs(rows):
        i, p, k = rows // (length * len(ks)), rows // len(ks) % length, ks[rows % len(ks)]
        new_rows = jax.nn.one_hot((reference[i, p] + k) % BASES, BASES)  # (chunk, 4)
        at = jnp.arange(length)[None, :] == p[:, None]  # (chunk, L)
        return _scalars(f, jnp.where(at[..., None], new_rows[:, None, :], x[i]))

    outputs = _map_rows(mutant_outputs, batch * length * len(ks), length)
    deltas = outputs.reshape(batch, length, len(ks)) - _scalars(f, x)[:, None, None]
    if one_hot:  # k = 0, the reference base, is no change
        deltas = jnp.concatenate([jnp.zeros_like(deltas[..., :1]), deltas], axis=-1)
    # out[..., b] is mutant k = (b - r) % 4
    out = jnp.take_along_axis(deltas, (jnp.arange(BASES) - reference[..., None]) % BASES, axis=-1)
    is_reference = (x == 1) & (jnp.sum(x != 0, -1, keepdims=True) == 1)  # the row is exactly this base
    return jnp.where(is_reference, 0.0, out)
