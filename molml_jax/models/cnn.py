"""The residual 1-D CNN of the TF-binding study: a binding score for every base of a window.

As the study's PyTorch BindingPredictorCNN (`seeds/tf_binding_lr_sweep.md`), channels-last:

    x (B, L, 4) one-hot
    initial_conv   conv 4 -> C, kernel k, padding k // 2, no bias
    initial_norm   LayerNorm over (length, channels), eps 1e-5   (torch LayerNorm([C, L]))
    ReLU
    block_0 .. block_{n-1}   ResidualBlock: conv1, norm1, ReLU, dropout, conv2, norm2,
                             + identity, ReLU
    final_conv     1x1 conv C -> 1, with bias
    -> scores (B, L)

Initialisation as the study: every conv with C outputs (the initial and block convs) is
kaiming_normal(mode='fan_out', nonlinearity='relu'): N(0, 2 / (C * k)), which is flax's
variance_scaling(2.0, 'fan_out', 'normal') for a (k, in, out) kernel (fan_out = out * k in
both); the final 1x1 conv weight is xavier_uniform, U(+-sqrt(6 / (C + 1))), its bias 0;
LayerNorm scale 1 and bias 0. (The study's condition `m.out_channels == C or m.in_channels
== 4` also catches the final conv when C == 1; that case is kaiming, as there.)

Parameter tree (torch name -> flax, see `molml_jax.interop.cnn_params_from_torch`):

    initial_conv/kernel (k, 4, C)            initial_conv.weight (C, 4, k)
    initial_norm/scale, bias (L, C)          initial_norm.weight, bias (C, L)
    block_i/conv1/kernel (k, C, C)           res_blocks.i.conv1.weight (C, C, k)
    block_i/norm1/scale, bias (L, C)         res_blocks.i.norm1.weight, bias (C, L)
    block_i/conv2, block_i/norm2             res_blocks.i.conv2, norm2
    final_conv/kernel (1, C, 1), bias (1,)   final_conv.weight (1, C, 1), bias (1,)

Speed (XLA:CPU, jax 0.10.2; one train step = value_and_grad + optax.adamw, batch 64, length
300, dropout on; medians of interleaved rounds on the shared 2-core machine while other jobs
ran, so +-10%; `python -m benchmarks.torch_tf_binding --step-times [--keep-freed-memory]`):

                                                  1 core, 1 thread        2 threads
    ms per step                                   malloc    kept (*)      malloc   kept (*)
    flax nn.Conv + nn.LayerNorm + nn.Dropout       98.3      57.1          55.9     34.8
    this model  [chosen]                           79.6      50.7          47.5     31.1
    im2col conv ((B*L, 3C) @ (3C, C) matmul)      102.6      59.0          67.4     36.6
    PyTorch 2.13 (oneDNN)                          71.9      49.1          33.2     33.6

Since then the convolutions run on oneDNN (`Conv1D` -> `models.conv.conv1d`, XLA FFI on
CPU, XLA's on GPU): the same step, measured interleaved with PyTorch in one run, takes
23.9-25.6 ms against PyTorch's 45.5-45.9 (and 52.7 vs 48.6 with MOLML_JAX_CONV=xla, in a
slower hour of this shared machine). One k=3 32->32 conv at batch 64, forward + both
gradients: XLA 8.5 ms, oneDNN 6.0; the 4-channel input conv 7.0 vs 3.3; the 1x1 conv 7.6
vs 3.6.

What was kept and why (measured before oneDNN):
- convolution: nn.Conv (lax.conv_general_dilated, NWC). Expressing the k=3 conv as one
  GEMM over the three shifted copies concatenated on the channel axis was slower in every
  measurement: the GEMM is fast, but the concatenated copies (and the col2im sums of the
  backward pass) cost more memory traffic than the convolution. A custom VJP computing the
  kernel gradient from shifted-slice dot_generals was slower too (48 vs 37 ms).
- LayerNorm: `layer_norm_lc`, with the backward pass written out (one saved activation,
  two fused reductions): ~10% faster than differentiating flax's nn.LayerNorm, and the
  step's temporary buffer shrinks from 68.5 to 52 MiB. Fusing ReLU / dropout / the residual
  add into it gained nothing measurable, so they stay separate.
- dropout: `Dropout16`, two 16-bit draws per 32-bit random word (threefry is most of
  dropout's cost here): ~3-4 ms of the step.
- jax.checkpoint (remat) of the blocks made the step slower and its buffer larger on CPU.

(*) The biggest cost on this CPU was not arithmetic: XLA:CPU mallocs the step's whole
temporary buffer (59 MiB at batch 64 with dropout) on every call; glibc serves blocks over
32 MiB with a fresh mmap, and first touch costs ~15,000 page faults (~25 ms) per step.
Keeping freed memory in the process (`experiments._cli.keep_freed_memory`, which the launchers call: glibc
mallopt M_MMAP_MAX 0, M_TRIM_THRESHOLD 1 GiB, M_TOP_PAD 64 MiB, M_ARENA_MAX 1, before JAX
starts) removes them. A step whose buffer is under 32 MiB (batch 32 here) avoids them
without that, through glibc's adaptive mmap threshold.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from molml_jax.models.conv import conv1d

INPUT_CHANNELS = 4  # one-hot A, C, G, T
LAYER_NORM_EPS = 1e-5  # torch nn.LayerNorm's default (flax's is 1e-6)

kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
xavier_uniform = nn.initializers.xavier_uniform()


# ----- LayerNorm over (length, channels) -------------------------------------------------

def _normalise(x, epsilon):
    """x (B, L, C) -> (x - mean) * rsqrt(var + eps) (B, L, C), rsqrt (B, 1, 1); two-pass variance."""
    mean = jnp.mean(x, axis=(-2, -1), keepdims=True)
    centred = x - mean
    rstd = lax.rsqrt(jnp.mean(jnp.square(centred), axis=(-2, -1), keepdims=True) + epsilon)
    return centred * rstd, rstd


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm_lc(x, scale, bias, epsilon=LAYER_NORM_EPS):
    """LayerNorm of each example over its last two axes: x (B, L, C), scale and bias (L, C).

    Equals flax nn.LayerNorm(epsilon, reduction_axes=(-2, -1), feature_axes=(-2, -1),
    use_fast_variance=False) and torch nn.LayerNorm([C, L]) on the channels-first input.
    The backward pass is written out (one saved activation, two fused reductions), which is
    faster on XLA:CPU than differentiating the forward pass.
    """
    normalised, _ = _normalise(x, epsilon)
    return normalised * scale + bias


def _layer_norm_fwd(x, scale, bias, epsilon):
    normalised, rstd = _normalise(x, epsilon)
    return normalised * scale + bias, (normalised, rstd, scale)


def _layer_norm_bwd(epsilon, residuals, g):
    normalised, rstd, scale = residuals
    gs = g * scale
    mean_gs = jnp.mean(gs, axis=(-2, -1), keepdims=True)
    mean_gs_n = jnp.mean(gs * normalised, axis=(-2, -1), keepdims=True)
    dx = rstd * (gs - mean_gs - normalised * mean_gs_n)
    return dx, jnp.sum(g * normalised, axis=0), jnp.sum(g, axis=0)


layer_norm_lc.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNormLC(nn.Module):
    """LayerNorm over (length, channels) with a learned (L, C) scale and bias.

    x (B, L, C) -> (B, L, C). The parameters' length is the input's at init: applying
    the module to another length raises ValueError (torch's LayerNorm([C, L]) is as rigid).
    Parameter names and shapes are those of the equivalent flax nn.LayerNorm (see
    `layer_norm_lc`), so the two are interchangeable.
    """

    epsilon: float = LAYER_NORM_EPS

    @nn.compact
    def __call__(self, x):
        shape = tuple(x.shape[-2:])
        if self.has_variable("params", "scale"):
            built = tuple(self.get_variable("params", "scale").shape)
            if built != shape:
                raise ValueError(
                    f"{self.name}: LayerNorm was built for (length, channels) {built}, got input "
                    f"with {shape}; build the model for length {shape[0]}")
        scale = self.param("scale", nn.initializers.ones, shape, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, shape, jnp.float32)
        return layer_norm_lc(x, scale, bias, self.epsilon)


# ----- dropout --------------------------------------------------------------------------

class Dropout16(nn.Module):
    """Inverted dropout as torch nn.Dropout / flax nn.Dropout, with half the random bits.

    x (any shape) -> x * keep / (1 - rate), keep ~ Bernoulli(1 - rate) drawn from the
    'dropout' RNG collection; the identity when `deterministic` or rate == 0. Each 32-bit
    random word gives two 16-bit draws (keep = draw < round((1 - rate) * 65536)), where
    flax's nn.Dropout spends one word per element: the generator (threefry) is most of
    dropout's cost on XLA:CPU, and this saves ~3-4 ms of a ~48 ms train step here. The keep
    probability is exact to 1/65536 (rate 0.2: 0.8000031).
    """

    rate: float
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, x, deterministic: bool, example_ids=None):
        """example_ids (B,) int: draw example b's mask from fold_in(key, example_ids[b]), so
        that an example's mask does not depend on the batch it shares (or on devices)."""
        if deterministic or self.rate == 0.0:
            return x
        if self.rate >= 1.0:
            return jnp.zeros_like(x)
        key = self.make_rng(self.rng_collection)
        if example_ids is None:
            size = x.size
            words = jax.random.bits(key, ((size + 1) // 2,), jnp.uint32)
            draws = jnp.concatenate([words & 0xFFFF, words >> 16])[:size].reshape(x.shape)
        else:
            size = x[0].size
            keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, example_ids)
            words = jax.vmap(lambda k: jax.random.bits(k, ((size + 1) // 2,), jnp.uint32))(keys)
            draws = jnp.concatenate([words & 0xFFFF, words >> 16], axis=1)[:, :size].reshape(x.shape)
        keep = draws < jnp.uint32(round((1.0 - self.rate) * 65536))
        return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros((), x.dtype))


# ----- the model ------------------------------------------------------------------------

class Conv1D(nn.Module):
    """torch Conv1d(c_in, features, k, padding=k // 2, stride 1) in NWC through `conv1d`
    (oneDNN on CPU): (B, L, c_in) -> (B, L, features). Parameters as flax nn.Conv's: kernel
    (k, c_in, features), and bias (features,) with use_bias."""

    features: int
    kernel_size: int
    kernel_init: Callable = kaiming_normal_fan_out
    use_bias: bool = False

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (self.kernel_size, x.shape[-1], self.features), jnp.float32)
        pad = self.kernel_size // 2
        y = conv1d(x, kernel, (pad, pad))
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        return y


class ResidualBlock(nn.Module):
    """conv1, norm1, ReLU, dropout, conv2, norm2, + identity, ReLU: (B, L, C) -> (B, L, C).

    Convolutions without bias, 'same' length (odd kernel_size), kaiming-normal fan-out init.
    Dropout (`Dropout16`) draws from the 'dropout' RNG collection, only with train=True.
    """

    num_channels: int = 32
    kernel_size: int = 3
    dropout_rate: float = 0.2

    def setup(self):
        self.conv1 = Conv1D(self.num_channels, self.kernel_size, name="conv1")
        self.norm1 = LayerNormLC(name="norm1")
        self.dropout = Dropout16(self.dropout_rate, name="dropout")
        self.conv2 = Conv1D(self.num_channels, self.kernel_size, name="conv2")
        self.norm2 = LayerNormLC(name="norm2")

    def __call__(self, x, train: bool = False, example_ids=None):
        out = nn.relu(self.norm1(self.conv1(x)))
        out = self.dropout(out, deterministic=not train, example_ids=example_ids)
        out = self.norm2(self.conv2(out))
        return nn.relu(out + x)


class BindingPredictorCNN(nn.Module):
    """Per-base binding scores of one-hot windows: x (B, L, 4) -> (B, L).

    Attributes:
      num_channels: C, channels of every hidden layer (the study: 32).
      num_blocks: residual blocks (3).
      kernel_size: k, odd; convolutions keep the length (3).
      dropout_rate: dropout inside each block, only with train=True (0.2).
      length: the window length L the LayerNorms are built for (300, as the study's
        hard-coded LayerNorm([C, 300])). None takes it from the input at init. Either way
        the parameters fix L, and an input of another length raises ValueError.

    Call: model.apply(variables, x, train=False, rngs={'dropout': key} when training).
    """

    num_channels: int = 32
    num_blocks: int = 3
    kernel_size: int = 3
    dropout_rate: float = 0.2
    length: int | None = 300

    def setup(self):
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (padding k // 2 keeps the length), got {self.kernel_size}")
        if self.num_channels < 1 or self.num_blocks < 0:
            raise ValueError(f"need num_channels >= 1 and num_blocks >= 0, got {self.num_channels}, {self.num_blocks}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")
        self.initial_conv = Conv1D(self.num_channels, self.kernel_size, name="initial_conv")
        self.initial_norm = LayerNormLC(name="initial_norm")
        self.blocks = [
            ResidualBlock(self.num_channels, self.kernel_size, self.dropout_rate, name=f"block_{i}")
            for i in range(self.num_blocks)
        ]
        # the study: kaiming if out_channels == C (so when C == 1), else xavier_uniform
        final_init = kaiming_normal_fan_out if self.num_channels == 1 else xavier_uniform
        self.final_conv = Conv1D(1, 1, kernel_init=final_init, use_bias=True, name="final_conv")

    def __call__(self, x, train: bool = False, example_ids=None):
        """x (B, L, 4) -> (B, L). example_ids (B,): per-example dropout masks (Dropout16)."""
        if x.ndim != 3 or x.shape[-1] != INPUT_CHANNELS:
            raise ValueError(f"expected one-hot input (batch, length, {INPUT_CHANNELS}), got shape {tuple(x.shape)}")
        if self.length is not None and x.shape[1] != self.length:
            raise ValueError(
                f"BindingPredictorCNN was built for length {self.length} (its LayerNorm shape), got "
                f"input of length {x.shape[1]}; use length={x.shape[1]} (or None: from the input at init)")
        h = nn.relu(self.initial_norm(self.initial_conv(x)))
        for block in self.blocks:
            h = block(h, train=train, example_ids=example_ids)
        return self.final_conv(h)[..., 0]
