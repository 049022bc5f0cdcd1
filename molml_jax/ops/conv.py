"""Stride-1 convolutions, channels-last: oneDNN on CPU, XLA elsewhere.

What: `conv2d(x (N, H, W, C_in), kernel (KH, KW, C_in, C_out), padding ((top, bottom),
(left, right)))` -> (N, OH, OW, C_out), the value of `lax.conv_general_dilated(x, kernel,
(1, 1), padding, ("NHWC", "HWIO", "NHWC"))`; `conv1d(x (N, L, C_in), kernel (K, C_in, C_out),
(left, right))` is the same on a height-1 image. float32 on CPU runs the forward pass and
both gradients through oneDNN (`molml_jax.ops.native`: XLA FFI calls under a custom VJP);
on GPU/TPU, for other dtypes, or where the native library is unavailable, it is XLA's
convolution. The two agree to float32 rounding (tests/test_conv.py).

Why: XLA:CPU's convolutions with few channels on large inputs, and above all their
gradients, are 2-3x slower than oneDNN's JIT kernels, and they are most of a U-Net or CNN
train step (numbers in docs/performance.md).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from molml_jax.ops.native import conv_targets

Padding = tuple[tuple[int, int], tuple[int, int]]
_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def xla_conv2d(x, kernel, padding: Padding):
    """XLA's convolution: x (N, H, W, C_in), kernel (KH, KW, C_in, C_out) -> (N, OH, OW, C_out)."""
    return lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=_DIMENSIONS)


def _padding_attrs(padding: Padding) -> dict[str, np.int64]:
    (top, bottom), (left, right) = padding
    return {"pad_top": np.int64(top), "pad_bottom": np.int64(bottom),
            "pad_left": np.int64(left), "pad_right": np.int64(right)}


def _native_call(role: str, shape, *operands, padding: Padding):
    out = jax.ShapeDtypeStruct(shape, jnp.float32)
    return jax.ffi.ffi_call(conv_targets()[role], out, vmap_method="sequential")(
        *operands, **_padding_attrs(padding))


def _output_shape(x_shape, kernel_shape, padding: Padding):
    (top, bottom), (left, right) = padding
    n, h, w, _ = x_shape
    kh, kw, _, c_out = kernel_shape
    return (n, h + top + bottom - kh + 1, w + left + right - kw + 1, c_out)


def _native_forward(x, kernel, padding: Padding):
    shape = _output_shape(x.shape, kernel.shape, padding)
    return _native_call("forward", shape, x, kernel, padding=padding)


def _native_backward(x, kernel, dy, padding: Padding):
    dx = _native_call("backward_data", x.shape, dy, kernel, padding=padding)
    dkernel = _native_call("backward_weights", kernel.shape, x, dy, padding=padding)
    return dx, dkernel


def _xla_backward(x, kernel, dy, padding: Padding):
    _, vjp = jax.vjp(functools.partial(xla_conv2d, padding=padding), x, kernel)
    return vjp(dy)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _onednn_conv2d(x, kernel, padding: Padding):
    # the native branch is lowered only when compiling for CPU
    return lax.platform_dependent(x, kernel, cpu=functools.partial(_native_forward, padding=padding),
                                  default=functools.partial(xla_conv2d, padding=padding))


def _onednn_conv2d_fwd(x, kernel, padding: Padding):
    return _onednn_conv2d(x, kernel, padding), (x, kernel)


def _onednn_conv2d_bwd(padding: Padding, residuals, dy):
    x, kernel = residuals
    return lax.platform_dependent(x, kernel, dy, cpu=functools.partial(_native_backward, padding=padding),
                                  default=functools.partial(_xla_backward, padding=padding))


_onednn_conv2d.defvjp(_onednn_conv2d_fwd, _onednn_conv2d_bwd)


def conv2d(x, kernel, padding: Padding):
    """Stride-1 convolution: x (N, H, W, C_in), kernel (KH, KW, C_in, C_out), padding ((top,
    bottom), (left, right)) -> (N, H + top + bottom - KH + 1, W + left + right - KW + 1, C_out).

    float32 on CPU goes through oneDNN (forward and both gradients); anything else is XLA's.
    """
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    if (x.ndim != 4 or kernel.ndim != 4 or x.shape[-1] != kernel.shape[2]
            or any(p < 0 for pair in padding for p in pair)):
        raise ValueError(f"conv2d needs x (N, H, W, C), kernel (KH, KW, C, C_out) and padding >= 0; "
                         f"got x {tuple(x.shape)}, kernel {tuple(kernel.shape)}, padding {padding}")
    if min(_output_shape(x.shape, kernel.shape, padding)[1:3]) < 1:
        raise ValueError(f"conv2d: kernel {tuple(kernel.shape[:2])} is larger than the padded input "
                         f"{tuple(x.shape[1:3])} with padding {padding}")
    if x.dtype != jnp.float32 or kernel.dtype != jnp.float32 or conv_targets() is None:
        return xla_conv2d(x, kernel, padding)
    return _onednn_conv2d(x, kernel, padding)


def conv1d(x, kernel, padding: tuple[int, int]):
    """Stride-1 1-D convolution through `conv2d` (a height-1 image): x (N, L, C_in), kernel
    (K, C_in, C_out), padding (left, right) -> (N, L + left + right - K + 1, C_out)."""
    if x.ndim != 3 or kernel.ndim != 3:
        raise ValueError(f"conv1d needs x (N, L, C) and kernel (K, C, C_out); got x {tuple(x.shape)}, "
                         f"kernel {tuple(kernel.shape)}")
    return conv2d(x[:, None], kernel[None], ((0, 0), tuple(padding)))[:, 0]

