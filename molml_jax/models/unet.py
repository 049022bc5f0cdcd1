"""The course's U-Net for nucleus segmentation (problem set 2, part 2), channels-last.

The layer sequence (nk = num_kernel = 8, k = kernel_size = 3), as the PyTorch twin
`benchmarks.torch_models.UNet` written from the problem set's description:

    x (B, H, W) grey image, H and W multiples of 16        -> (B, H, W, 1)
    ConvBlock(c_in, c_out) = Conv(c_in, c_out, k, padding k // 2, bias), ReLU, BatchNorm,
                             Conv(c_out, c_out, k, padding k // 2, bias), ReLU, BatchNorm
    down_1  ConvBlock(1, nk)        skip_1 (H, W, nk)          then 2x2 max-pool
    down_2  ConvBlock(nk, 2nk)      skip_2 (H/2, W/2, 2nk)     then 2x2 max-pool
    down_3  ConvBlock(2nk, 4nk)     skip_3 (H/4, W/4, 4nk)     then 2x2 max-pool
    down_4  ConvBlock(4nk, 8nk)     skip_4 (H/8, W/8, 8nk)     then 2x2 max-pool -> H/16
    bridge  Conv(8nk, 16nk, k, padding k // 2, bias)   a single conv, NO activation
    up_1    ConvBlock(16nk, 8nk), ConvTranspose(8nk, 8nk) H/16 -> H/8, + skip_4
    up_2    ConvBlock(8nk, 4nk),  ConvTranspose(4nk, 4nk) H/8 -> H/4,  + skip_3
    up_3    ConvBlock(4nk, 2nk),  ConvTranspose(2nk, 2nk) H/4 -> H/2,  + skip_2
    up_4    ConvBlock(2nk, nk),   ConvTranspose(nk, nk)   H/2 -> H,    + skip_1
    final_conv  1x1 Conv(nk, 1, bias)
    -> logits (B, H, W)

ConvTranspose is torch's ConvTranspose2d(c, c, 3, stride 2, padding 1, output_padding 1)
(with bias). The skips are ADDED (not concatenated), as the course's U-Net. The model
returns LOGITS: the course's model ends in a sigmoid, which the pipeline applies
(`jax.nn.sigmoid`) before the Dice loss and for predictions.

Why not flax's layers: the kernels in `molml_jax.ops` are faster to differentiate on
XLA:CPU, with the same parameters and values (docs/performance.md). The convolutions are
`ops.conv.conv2d` (oneDNN on CPU, XLA's elsewhere); the max-pool is
`ops.pooling.max_pool_2x2` (select-based gradient); the transposed convolutions are
`ops.conv_transpose.conv_transpose_subpixel` (four ordinary convolutions), or flax's
nn.ConvTranspose with `UNet(subpixel=False)`.

BatchNorm (`MaskedBatchNorm`) is torch's BatchNorm2d: eps 1e-5, running statistics with
flax momentum 0.9 (= torch momentum 0.1), statistics over (batch, H, W) per channel in
train mode, running statistics in eval mode. Two differences from torch, both in what is
STORED, not in the train-mode output: the running variance is the biased batch variance
(torch stores the unbiased n/(n-1) one), so running statistics drift slightly apart in
training; eval with ported torch statistics matches torch.

Initialisation as torch's defaults (the course sets none): conv and transposed-conv weights
U(+-1/sqrt(fan_in)) (kaiming_uniform(a=sqrt(5))), biases U(+-1/sqrt(fan_in)), BatchNorm scale 1
and bias 0 (torch's fan_in of ConvTranspose2d is out_channels * k * k).

Parameter tree (flax name -> torch name, see `molml_jax.interop.unet_variables_from_torch`):

    down_i/block/conv_1/kernel (k, k, in, out), bias   down{i}.conv_block.conv1.weight (out, in, k, k), bias
    down_i/block/norm_1/scale, bias (out,)              down{i}.conv_block.bn1.weight, bias
      batch_stats: down_i/block/norm_1/mean, var        down{i}.conv_block.bn1.running_mean, running_var
    down_i/block/conv_2, norm_2                         down{i}.conv_block.conv2, bn2
    bridge/kernel (k, k, 8nk, 16nk), bias               bridge.weight, bias
    up_i/block/...                                      up{i}.conv_block....
    up_i/upsample/kernel (3, 3, c, c), bias (c,)        up{i}.up.weight (c, c, 3, 3) .transpose(2, 3, 1, 0), bias
    final_conv/kernel (1, 1, nk, 1), bias (1,)          final_conv.weight (1, nk, 1, 1), bias

The upsample kernel has flax nn.ConvTranspose(transpose_kernel=True)'s layout (kh, kw, out,
in), in both forms.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from molml_jax.ops.conv import conv2d
from molml_jax.ops.conv_transpose import conv_transpose_subpixel
from molml_jax.ops.pooling import max_pool_2x2

BN_MOMENTUM = 0.9  # flax convention: running = momentum * running + (1 - momentum) * batch
BN_EPSILON = 1e-5  # torch BatchNorm2d's default
DOWNSAMPLING = 16  # four 2x2 max-pools

torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int):
    """torch's default bias init for a layer with `fan_in` inputs: U(+-1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


# ----- transposed convolution: torch ConvTranspose2d(k3, s2, p1, output_padding 1) -------

class ConvTransposeSubPixel(nn.Module):
    """torch ConvTranspose2d(c_in, features, 3, stride 2, padding 1, output_padding 1, bias):
    (B, H, W, c_in) -> (B, 2H, 2W, features). Parameters: kernel (3, 3, features, c_in) (as
    flax nn.ConvTranspose(transpose_kernel=True)), bias (features,)."""

    features: int

    @nn.compact
    def __call__(self, x):
        fan_in = self.features * 9  # torch's fan_in of a ConvTranspose2d weight (in, out, k, k)
        kernel = self.param("kernel", torch_kernel_init, (3, 3, self.features, x.shape[-1]), jnp.float32)
        bias = self.param("bias", torch_bias_init(fan_in), (self.features,), jnp.float32)
        return conv_transpose_subpixel(x, kernel, bias)


def flax_conv_transpose(features: int, name: str | None = None) -> nn.ConvTranspose:
    """The same layer as flax's own nn.ConvTranspose (same parameters as ConvTransposeSubPixel)."""
    return nn.ConvTranspose(features, (3, 3), strides=(2, 2), padding=((1, 2), (1, 2)),
                            transpose_kernel=True, kernel_init=torch_kernel_init,
                            bias_init=torch_bias_init(features * 9), name=name)


# ----- BatchNorm with a mask of real examples --------------------------------------------

class MaskedBatchNorm(nn.Module):
    """torch BatchNorm2d (affine, running statistics) over (B, H, W, C) -> (B, H, W, C).

    Train mode (use_running_average=False): each channel is normalised with the mean and
    (biased) variance over batch and space of the examples where `mask` (B,) is true (all
    when None), summed over the devices of `axis_name` with psum of counts and sums, so a
    device holding only padding contributes nothing (flax nn.BatchNorm(mask=...) averages
    per-device masked means instead: equal weights, and NaN for a device without a real
    example). The running mean and variance are updated as momentum * running + (1 -
    momentum) * batch (flax's convention; torch momentum 0.1). Eval mode uses the running
    statistics. Variables: params scale, bias (C,); batch_stats mean, var (C,), as flax
    nn.BatchNorm, which gives the same values without a mask (two-pass variance here).
    """

    use_running_average: bool = False
    momentum: float = BN_MOMENTUM
    epsilon: float = BN_EPSILON
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, mask=None):
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        if self.use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            axes = tuple(range(x.ndim - 1))
            if mask is None:
                weight = None
                count = jnp.asarray(math.prod(x.shape[:-1]), jnp.float32)
            else:
                weight = jnp.asarray(mask, jnp.float32).reshape((-1,) + (1,) * (x.ndim - 1))
                count = jnp.sum(weight) * math.prod(x.shape[1:-1])
            total = jnp.sum(x if weight is None else x * weight, axis=axes)
            if self.axis_name is not None:
                count, total = lax.psum((count, total), self.axis_name)
            count = jnp.maximum(count, 1.0)
            mean = total / count
            centred = jnp.square(x - mean)
            squares = jnp.sum(centred if weight is None else centred * weight, axis=axes)
            if self.axis_name is not None:
                squares = lax.psum(squares, self.axis_name)
            var = squares / count
            if not self.is_initializing():
                ra_mean.value = self.momentum * ra_mean.value + (1.0 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1.0 - self.momentum) * var
        return (x - mean) * (lax.rsqrt(var + self.epsilon) * scale) + bias


# ----- the model ------------------------------------------------------------------------

class Conv(nn.Module):
    """torch Conv2d(c_in, features, k, padding=k // 2, bias) in NHWC, through
    `ops.conv.conv2d` (oneDNN on CPU): (B, H, W, c_in) -> (B, H, W, features). Parameters as
    flax nn.Conv's: kernel (k, k, c_in, features), bias (features,)."""

    features: int
    kernel_size: int = 3

    @nn.compact
    def __call__(self, x):
        k, c_in = self.kernel_size, x.shape[-1]
        kernel = self.param("kernel", torch_kernel_init, (k, k, c_in, self.features), jnp.float32)
        bias = self.param("bias", torch_bias_init(c_in * k * k), (self.features,), jnp.float32)
        pad = k // 2
        return conv2d(x, kernel, ((pad, pad), (pad, pad))) + bias


class ConvBlock(nn.Module):
    """conv_1, ReLU, norm_1, conv_2, ReLU, norm_2: (B, H, W, c_in) -> (B, H, W, features)."""

    features: int
    kernel_size: int = 3
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None):
        for i in (1, 2):
            x = Conv(self.features, self.kernel_size, name=f"conv_{i}")(x)
            x = nn.relu(x)
            x = MaskedBatchNorm(use_running_average=not train, axis_name=self.axis_name,
                                name=f"norm_{i}")(x, mask)
        return x


class Down(nn.Module):
    """block (ConvBlock) then 2x2 max-pool: (B, H, W, c_in) -> (pooled (B, H/2, W/2, features),
    skip (B, H, W, features))."""

    features: int
    kernel_size: int = 3
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None):
        skip = ConvBlock(self.features, self.kernel_size, self.axis_name, name="block")(x, train, mask)
        return max_pool_2x2(skip), skip


class Up(nn.Module):
    """block (ConvBlock c_in -> features), upsample (stride-2 transposed conv features ->
    features), + skip: (B, H, W, c_in), skip (B, 2H, 2W, features) -> (B, 2H, 2W, features)."""

    features: int
    kernel_size: int = 3
    axis_name: str | None = None
    subpixel: bool = True

    @nn.compact
    def __call__(self, x, skip, train: bool = False, mask=None):
        x = ConvBlock(self.features, self.kernel_size, self.axis_name, name="block")(x, train, mask)
        if self.subpixel:
            x = ConvTransposeSubPixel(self.features, name="upsample")(x)
        else:
            x = flax_conv_transpose(self.features, name="upsample")(x)
        return x + skip


class UNet(nn.Module):
    """Segmentation logits of grey images: x (B, H, W) -> logits (B, H, W), no sigmoid.

    Attributes:
      num_kernel: nk, channels of the first level (the course: 8); levels nk, 2nk, 4nk, 8nk,
        bridge 16nk.
      kernel_size: k, odd (3); convolutions keep the size (padding k // 2).
      axis_name: the pmap axis BatchNorm sums its statistics over in training ('devices'
        in the engine); None outside pmap (e.g. predict).
      subpixel: compute the transposed convolutions in the sub-pixel form (True, faster to
        differentiate on XLA:CPU) or with flax's nn.ConvTranspose (False); same parameters,
        same values.

    Call: model.apply(variables, x, train=False) in eval mode (running statistics);
    model.apply(variables, x, train=True, mask=m, mutable=['batch_stats']) in training,
    which returns (logits, {'batch_stats': ...}). mask (B,) bool/float: real examples;
    padded examples of a short last batch (mask false) do not enter the batch statistics
    (their outputs are still computed, and must be masked out of the loss).
    Layer sequence: see the module docstring.
    """

    num_kernel: int = 8
    kernel_size: int = 3
    axis_name: str | None = None
    subpixel: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None):
        if x.ndim != 3:
            raise ValueError(f"UNet expects grey images (batch, height, width), got shape {tuple(x.shape)}")
        if x.shape[1] % DOWNSAMPLING or x.shape[2] % DOWNSAMPLING:
            raise ValueError(
                f"UNet needs height and width that are multiples of {DOWNSAMPLING} (four 2x2 "
                f"max-pools, then four 2x upsamplings added to the skips); got {x.shape[1]}x{x.shape[2]}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (padding k // 2 keeps the size), got {self.kernel_size}")
        if mask is not None and jnp.shape(mask) != (x.shape[0],):
            raise ValueError(f"mask must have shape (batch,) = ({x.shape[0]},), got {jnp.shape(mask)}")
        nk, k, axis = self.num_kernel, self.kernel_size, self.axis_name
        h = x[..., None].astype(jnp.float32)
        skips = []
        for i, features in enumerate((nk, 2 * nk, 4 * nk, 8 * nk), start=1):
            h, skip = Down(features, k, axis, name=f"down_{i}")(h, train, mask)
            skips.append(skip)
        h = Conv(16 * nk, k, name="bridge")(h)
        for i, features in enumerate((8 * nk, 4 * nk, 2 * nk, nk), start=1):
            h = Up(features, k, axis, self.subpixel, name=f"up_{i}")(h, skips[-i], train, mask)
        return Conv(1, 1, name="final_conv")(h)[..., 0]
