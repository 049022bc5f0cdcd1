"""Kernels: plain functions of arrays (no parameters, no flax) that exist because they have
a hand-written gradient or native code (or, for dropout, a cheaper random draw), each
faster on XLA:CPU than what JAX derives or flax provides for the same computation
(docs/performance.md). The flax modules in `molml_jax.models` call them.

- conv.py: stride-1 `conv2d` / `conv1d`, channels-last; oneDNN on CPU (forward and both
  gradients under a custom VJP), XLA's convolution elsewhere.
- native.py, onednn_conv.cc: native code; compiles the oneDNN convolutions on first use
  and registers them as XLA FFI targets (where it cannot, conv.py uses XLA's).
- conv_transpose.py: torch's stride-2 ConvTranspose2d in sub-pixel form, whose gradients
  are ordinary convolutions.
- pooling.py: 2x2 max-pool with a select-based gradient (no select-and-scatter).
- layer_norm.py: LayerNorm over (length, channels) with a written-out backward pass.
- dropout.py: inverted dropout with two 16-bit draws per 32-bit random word.
- lstm.py: one LSTM direction, hidden-major, one tanh for all gates, custom VJP.
"""
