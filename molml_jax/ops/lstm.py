"""One LSTM direction for XLA:CPU, with a hand-written gradient.

What: `lstm_layer(x (B, L, C), kernel_ih (C, 4H), kernel_hh (H, 4H), bias (4H,), lengths
(B,) or None, reverse=...)` -> outputs (B, L, H) or None, (h, c) each (B, H), with torch
nn.LSTM semantics (gates i, f, g, o; variable lengths as a packed sequence).
`lstm_recurrence` is the time loop underneath, time- and hidden-major, with a custom VJP.

Why not `nn.RNN(nn.LSTMCell)`: on XLA:CPU a loop iteration costs in proportion to its ops
and memory traffic, not the tiny matmul, and three changes halve a train step
(docs/performance.md):
  - the four gates come from ONE tanh over the (4H, B) pre-activations, because
    sigmoid(z) = 0.5 * tanh(z / 2) + 0.5 (the /2 is folded into the weights outside the loop;
    XLA:CPU's logistic and per-gate slices before a transcendental vectorise badly);
  - hidden-major layout (4H, B): gates are contiguous row blocks and elementwise work
    vectorises along the batch;
  - a custom VJP: the forward loop writes one residual block per step and the backward
    loop accumulates the weight gradients as it goes, instead of autodiff's stacked
    intermediates.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp


def gate_scale(hidden: int, dtype=jnp.float32) -> jnp.ndarray:
    """(4H,) factors: 0.5 for the sigmoid gates i, f, o and 1 for the tanh gate g."""
    half = jnp.full((hidden,), 0.5, dtype)
    return jnp.concatenate([half, half, jnp.ones((hidden,), dtype), half])


def _gates(t: jnp.ndarray, hidden: int):
    """Gate activations from t = tanh(scaled pre-activations), t (4H, B)."""
    i = 0.5 * t[:hidden] + 0.5
    f = 0.5 * t[hidden : 2 * hidden] + 0.5
    g = t[2 * hidden : 3 * hidden]
    o = 0.5 * t[3 * hidden :] + 0.5
    return i, f, g, o


def _forward(x, w_ih, bias, w_hh, mask, return_sequences):
    """x (L, C, B); w_ih (4H, C), bias (4H,), w_hh (4H, H) scaled; mask (L, 1, B) or None."""
    steps, _, batch = x.shape
    hidden = w_hh.shape[1]
    z = jnp.einsum("gc,lcb->lgb", w_ih, x) + bias[None, :, None]  # all steps at once
    zeros = jnp.zeros((hidden, batch), x.dtype)

    def body(carry, inputs):
        h, c = carry
        z_t, m_t = inputs
        t = jnp.tanh(z_t + w_hh @ h)
        i, f, g, o = _gates(t, hidden)
        c_new = f * c + i * g
        tc = jnp.tanh(c_new)
        h_new = o * tc
        if m_t is not None:  # past a sequence's end the state is carried unchanged
            h_new = jnp.where(m_t, h_new, h)
            c_new = jnp.where(m_t, c_new, c)
        # one (7H, B) block per step: one write here, one read in the backward loop
        residuals = jnp.concatenate([h, c, t, tc], axis=0)
        return (h_new, c_new), (h_new if return_sequences else None, residuals)

    (h, c), (hs, residuals) = jax.lax.scan(body, (zeros, zeros), (z, mask))
    return (hs, h, c), residuals


@partial(jax.custom_vjp, nondiff_argnums=(5,))
def lstm_recurrence(x, w_ih, bias, w_hh, mask, return_sequences: bool):
    """Run the LSTM over time.

    Args:
      x: (L, C, B) inputs, time-major and feature-major.
      w_ih: (4H, C) input kernel (torch W_ih layout), bias: (4H,) (b_ih + b_hh), w_hh:
        (4H, H) recurrent kernel (torch W_hh layout), each times `gate_scale` per gate row.
      mask: (L, 1, B) bool, True where step t is inside sequence b; None when all are full.
      return_sequences: also return every step's hidden state.
    Returns:
      hs: (L, H, B) hidden states (None unless return_sequences), h_final, c_final: (H, B).
    """
    return _forward(x, w_ih, bias, w_hh, mask, return_sequences)[0]


def _fwd(x, w_ih, bias, w_hh, mask, return_sequences):
    outputs, residuals = _forward(x, w_ih, bias, w_hh, mask, return_sequences)
    return outputs, (residuals, x, w_ih, w_hh, mask)


def _bwd(return_sequences, saved, cotangents):
    residuals, x, w_ih, w_hh, mask = saved
    d_hs, d_h, d_c = cotangents
    hidden = w_hh.shape[1]
    scale = gate_scale(hidden, residuals.dtype)[:, None]
    w_hh_t = w_hh.T
    w_ih_t = w_ih.T

    # Weight gradients accumulate inside the loop: no (L, 4H, B) array of gate gradients
    # is written and read back (memory traffic, not arithmetic, bounds this loop).
    def body(carry, inputs):
        dh, dc, d_w_hh, d_w_ih, d_b = carry
        d_out, r_s, x_s, m_t = inputs
        h_p, c_p = r_s[:hidden], r_s[hidden : 2 * hidden]
        t_s, tc_s = r_s[2 * hidden : 6 * hidden], r_s[6 * hidden :]
        if d_out is not None:
            dh = dh + d_out
        i, f, g, o = _gates(t_s, hidden)
        dcc = dc + dh * o * (1 - tc_s * tc_s)
        d_gates = jnp.concatenate([dcc * g, dcc * c_p, dcc * i, dh * tc_s], axis=0)
        dz = d_gates * scale * (1 - t_s * t_s)
        if m_t is not None:
            dz = jnp.where(m_t, dz, 0.0)
        dh_prev = w_hh_t @ dz
        dc_prev = dcc * f
        if m_t is not None:
            dh_prev = jnp.where(m_t, dh_prev, dh)
            dc_prev = jnp.where(m_t, dc_prev, dc)
        d_w_hh = d_w_hh + dz @ h_p.T
        d_w_ih = d_w_ih + dz @ x_s.T
        d_b = d_b + dz.sum(1)
        return (dh_prev, dc_prev, d_w_hh, d_w_ih, d_b), w_ih_t @ dz  # d_x: dropped by jit if unused

    d_out = d_hs if return_sequences else None
    init = (d_h, d_c, jnp.zeros_like(w_hh), jnp.zeros_like(w_ih), jnp.zeros(w_hh.shape[0], w_hh.dtype))
    (_, _, d_w_hh, d_w_ih, d_bias), d_x = jax.lax.scan(
        body, init, (d_out, residuals, x, mask), reverse=True)
    return d_x, d_w_ih, d_bias, d_w_hh, None


lstm_recurrence.defvjp(_fwd, _bwd)


def lstm_layer(
    x: jnp.ndarray,
    kernel_ih: jnp.ndarray,
    kernel_hh: jnp.ndarray,
    bias: jnp.ndarray,
    lengths: jnp.ndarray | None = None,
    *,
    reverse: bool = False,
    return_sequences: bool = True,
):
    """One LSTM direction over a batch-first, zero-padded batch (torch nn.LSTM semantics).

    Args:
      x: (B, L, C) inputs.
      kernel_ih: (C, 4H), kernel_hh: (H, 4H), bias: (4H,) (torch b_ih + b_hh); gates i, f, g, o.
      lengths: (B,) real lengths, or None if every sequence fills L. The reverse direction
        starts at each sequence's own last element, as with torch pack_padded_sequence.
      reverse: run from the end of each sequence to its start.
    Returns:
      outputs: (B, L, H) hidden state at each position (zeros-free: positions past a
        sequence's end hold its final state), or None if not return_sequences.
      (h, c): (B, H) final hidden and cell state of this direction.
    """
    batch, steps, _ = x.shape
    hidden = kernel_hh.shape[0]
    scale = gate_scale(hidden, x.dtype)
    if lengths is None:
        mask = None
        order = jnp.arange(steps)[::-1] if reverse else None
        x_seq = x[:, ::-1] if reverse else x
    else:
        t = jnp.arange(steps)[None, :]
        valid = t < lengths[:, None]  # (B, L)
        mask = valid.T[:, None, :]  # (L, 1, B)
        # reversed within each sequence's length; padding stays where it is
        order = jnp.where(valid, lengths[:, None] - 1 - t, t) if reverse else None
        x_seq = jnp.take_along_axis(x, order[..., None], axis=1) if reverse else x
    hs, h, c = lstm_recurrence(
        jnp.transpose(x_seq, (1, 2, 0)),
        (kernel_ih * scale[None, :]).T,
        bias * scale,
        (kernel_hh * scale[None, :]).T,
        mask,
        return_sequences,
    )
    outputs = None
    if return_sequences:
        outputs = jnp.transpose(hs, (2, 0, 1))  # (B, L, H) in processing order
        if reverse:
            idx = order if order.ndim == 2 else jnp.broadcast_to(order, (batch, steps))
            outputs = jnp.take_along_axis(outputs, idx[..., None], axis=1)
    return outputs, (h.T, c.T)
