"""The residual 1-D CNN of the TF-binding study: a binding score for every base of a window.

The study's PyTorch BindingPredictorCNN (`benchmarks.torch_models.BindingPredictorCNN`),
channels-last:

    x (B, L, 4) one-hot
    initial_conv   conv 4 -> C, kernel k, padding k // 2, no bias
    initial_norm   LayerNorm over (length, channels), eps 1e-5   (torch LayerNorm([C, L]))
    ReLU
    block_0 .. block_{n-1}   ResidualBlock: conv1, norm1, ReLU, dropout, conv2, norm2,
                             + identity, ReLU
    final_conv     1x1 conv C -> 1, with bias
    -> scores (B, L)

The convolutions are `ops.conv.conv1d` (oneDNN on CPU, XLA's elsewhere), the LayerNorms
`ops.layer_norm.layer_norm_lc` (hand-written backward pass) and the dropout
`ops.dropout.dropout16` (16-bit draws): each faster on XLA:CPU than flax's nn.Conv,
nn.LayerNorm and nn.Dropout, with the same parameters (docs/performance.md).

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
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp

from molml_jax.ops.conv import conv1d
from molml_jax.ops.dropout import dropout16
from molml_jax.ops.layer_norm import LAYER_NORM_EPS, layer_norm_lc

INPUT_CHANNELS = 4  # one-hot A, C, G, T

kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
xavier_uniform = nn.initializers.xavier_uniform()


# ----- LayerNorm over (length, channels) -------------------------------------------------

class LayerNormLC(nn.Module):
    """LayerNorm over (length, channels) with a learned (L, C) scale and bias.

    x (B, L, C) -> (B, L, C). The parameters' length is the input's at init: applying
    the module to another length raises ValueError (torch's LayerNorm([C, L]) is as rigid).
    Parameter names and shapes are those of the equivalent flax nn.LayerNorm (see
    `ops.layer_norm.layer_norm_lc`, which computes it), so the two are interchangeable.
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
    'dropout' RNG collection by `ops.dropout.dropout16` (two 16-bit draws per 32-bit
    random word, keep probability exact to 1/65536); the identity when `deterministic` or
    rate == 0.
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
        return dropout16(self.make_rng(self.rng_collection), x, self.rate, example_ids)


# ----- the model ------------------------------------------------------------------------

class Conv1D(nn.Module):
    """torch Conv1d(c_in, features, k, padding=k // 2, stride 1) in NWC through
    `ops.conv.conv1d` (oneDNN on CPU): (B, L, c_in) -> (B, L, features). Parameters as flax
    nn.Conv's: kernel (k, c_in, features), and bias (features,) with use_bias."""

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
