"""The fast LSTM recurrence against flax's own LSTM cell and plain autodiff."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from molml_jax.models import LSTM, BiLSTMClassifier
from molml_jax.ops.lstm import lstm_layer

B, L, C, H = 5, 9, 4, 6


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, L, C)).astype(np.float32)
    lengths = np.array([9, 4, 7, 1, 9], np.int32)
    k = lambda *s: (rng.normal(size=s) * 0.4).astype(np.float32)
    return x, lengths, k(C, 4 * H), k(H, 4 * H), k(4 * H)


def flax_reference(x, lengths, kernel_ih, kernel_hh, bias, reverse):
    """flax nn.RNN(nn.LSTMCell) with our weights (flax gates i, f, g, o; bias on h-dense)."""
    cell = nn.LSTMCell(H)
    rnn = nn.RNN(cell, return_carry=True, reverse=reverse, keep_order=True)
    params = {"cell": {}}
    for gi, gate in enumerate("ifgo"):
        cols = slice(gi * H, (gi + 1) * H)
        params["cell"][f"i{gate}"] = {"kernel": kernel_ih[:, cols]}
        params["cell"][f"h{gate}"] = {"kernel": kernel_hh[:, cols], "bias": bias[cols]}
    (c, h), out = rnn.apply({"params": params}, x, seq_lengths=lengths)
    return out, h, c


@pytest.mark.parametrize("reverse", [False, True])
def test_matches_flax_lstm_cell_with_lengths(reverse):
    x, lengths, wi, wh, b = _inputs()
    out, (h, c) = lstm_layer(jnp.asarray(x), wi, wh, b, jnp.asarray(lengths), reverse=reverse)
    ref_out, ref_h, ref_c = flax_reference(x, lengths, wi, wh, b, reverse)
    valid = (np.arange(L)[None] < lengths[:, None])[..., None]
    np.testing.assert_allclose(np.asarray(out) * valid, np.asarray(ref_out) * valid, atol=1e-6)
    np.testing.assert_allclose(h, ref_h, atol=1e-6)
    np.testing.assert_allclose(c, ref_c, atol=1e-6)


def test_full_length_path_equals_masked_path():
    x, _, wi, wh, b = _inputs(1)
    full = np.full(B, L, np.int32)
    a = lstm_layer(jnp.asarray(x), wi, wh, b, None, reverse=True)
    m = lstm_layer(jnp.asarray(x), wi, wh, b, jnp.asarray(full), reverse=True)
    np.testing.assert_allclose(a[0], m[0], atol=1e-6)
    np.testing.assert_allclose(a[1][0], m[1][0], atol=1e-6)


@pytest.mark.parametrize("reverse", [False, True])
def test_custom_gradient_matches_autodiff_of_flax_cell(reverse):
    x, lengths, wi, wh, b = _inputs(2)
    rng = np.random.default_rng(3)
    w_out = rng.normal(size=(B, L, H)).astype(np.float32)
    w_h, w_c = rng.normal(size=(2, B, H)).astype(np.float32)
    valid = (np.arange(L)[None] < lengths[:, None])[..., None]

    def objective(fn):
        def f(x, wi, wh, b):
            out, h, c = fn(x, wi, wh, b)
            return jnp.sum(out * valid * w_out) + jnp.sum(h * w_h) + jnp.sum(c * w_c)
        return f

    ours = objective(lambda *a: (lambda o, hc: (o, *hc))(*lstm_layer(*a, jnp.asarray(lengths), reverse=reverse)))
    ref = objective(lambda *a: flax_reference(a[0], lengths, *a[1:], reverse))
    g_ours = jax.grad(ours, argnums=(0, 1, 2, 3))(x, wi, wh, b)
    g_ref = jax.grad(ref, argnums=(0, 1, 2, 3))(x, wi, wh, b)
    for a, r in zip(g_ours, g_ref):
        np.testing.assert_allclose(a, r, atol=2e-5)


def test_classifier_shapes_parameter_count_and_forward_independence():
    model = BiLSTMClassifier(hidden_dim=16)
    x = jnp.zeros((3, 101, 4))
    params = model.init(jax.random.key(0), x)["params"]
    count = sum(p.size for p in jax.tree.leaves(params))
    # as torch LSTMseq(16): 2 * (64*4 + 64*16 + 2*64) + 2 * (16*16 + 16) + (16 + 1)
    assert count == 3377
    logits = model.apply({"params": params}, x)
    assert logits.shape == (3,)
    # the output only depends on the backward direction, as torch h_n[-1]
    changed = jax.tree.map(lambda p: p, params)
    changed["lstm_forward"] = jax.tree.map(lambda p: p + 1.0, params["lstm_forward"])
    np.testing.assert_array_equal(logits, model.apply({"params": changed}, x))
    # torch nn.LSTM's outputs (B, L, 2H) [forward, backward] and h_n (2, B, H) from the two
    # LSTM submodules with the classifier's parameters
    out_f, (h_f, _) = LSTM(16).apply({"params": params["lstm_forward"]}, x)
    out_b, (h_b, _) = LSTM(16, reverse=True).apply({"params": params["lstm_backward"]}, x)
    outputs, h_n = jnp.concatenate([out_f, out_b], axis=-1), jnp.stack([h_f, h_b])
    assert outputs.shape == (3, 101, 32) and h_n.shape == (2, 3, 16)
    np.testing.assert_allclose(outputs[:, 0, 16:], h_n[1], atol=1e-6)  # torch: h_n[-1] = out[:, 0, H:]
