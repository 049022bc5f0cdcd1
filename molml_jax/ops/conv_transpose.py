"""torch ConvTranspose2d(k 3, stride 2, padding 1, output_padding 1) in sub-pixel form.

What: `conv_transpose_subpixel(x (B, H, W, c_in), kernel (3, 3, c_out, c_in), bias (c_out,)
or None)` -> (B, 2H, 2W, c_out), channels-last. The kernel is torch's weight (c_in, c_out,
3, 3).transpose(2, 3, 1, 0), the layout of flax nn.ConvTranspose(transpose_kernel=True).

Why: each of the four output phases (even/odd row x even/odd column) is an ordinary
stride-1 convolution (`ops.conv.conv2d`, oneDNN on CPU) of x with the kernel taps that
reach it, so the gradients are ordinary convolutions too, instead of the lhs-dilated
convolution of `lax.conv_transpose`'s gradient, which is slow on XLA:CPU
(docs/performance.md). The products are exactly the transposed convolution's, summed in a
different order. The flax module is `models.unet.ConvTransposeSubPixel`.
"""

from __future__ import annotations

import jax.numpy as jnp

from molml_jax.ops.conv import conv2d

# Per output phase p (0: even output rows, 1: odd), the kernel taps that reach it, in the
# order of the input offsets 0, 1: out[2m] = x[m] W[1]; out[2m+1] = x[m] W[2] + x[m+1] W[0].
_PHASE_TAPS = ((1,), (2, 0))


def conv_transpose_subpixel(x, kernel, bias=None):
    """torch ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1), channels-last.

    x (B, H, W, c_in), kernel (3, 3, c_out, c_in), bias (c_out,) or None -> (B, 2H, 2W, c_out).
    Each phase convolves x with its 1x1, 1x2, 2x1 or 2x2 taps (the missing x[H] / x[W]
    neighbour is zero, i.e. padding (0, 1)); the phases are interleaved into the output.
    """
    if kernel.shape[:2] != (3, 3):
        raise ValueError(f"conv_transpose_subpixel needs a 3x3 kernel, got kernel shape {kernel.shape}")
    forward = jnp.swapaxes(kernel, 2, 3)  # (3, 3, c_in, c_out): HWIO
    rows = []
    for taps_y in _PHASE_TAPS:
        cols = []
        for taps_x in _PHASE_TAPS:
            k = jnp.stack([jnp.stack([forward[ty, tx] for tx in taps_x]) for ty in taps_y])  # (ly, lx, c_in, c_out)
            cols.append(conv2d(x, k, ((0, len(taps_y) - 1), (0, len(taps_x) - 1))))
        rows.append(jnp.stack(cols, axis=3))  # (B, H, W, 2 [px], c_out)
    out = jnp.stack(rows, axis=2)  # (B, H, 2 [py], W, 2 [px], c_out)
    b, h, _, w, _, c = out.shape
    out = out.reshape(b, 2 * h, 2 * w, c)
    return out if bias is None else out + bias
