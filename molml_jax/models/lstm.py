"""The course's bidirectional-LSTM classifier of DNA binding sites (problem set 2, part 1).

`BiLSTMClassifier`: one-hot DNA x (B, L, 4), lengths (B,) or None -> logits (B,), as the
course's PyTorch LSTMseq (`benchmarks.torch_models.LSTMseq`). `LSTM` is one direction of a
torch-compatible nn.LSTM layer, computed by `ops.lstm.lstm_layer`, a recurrence with a
hand-written gradient that is faster on XLA:CPU than flax's nn.RNN(nn.LSTMCell)
(docs/performance.md).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from molml_jax.ops.lstm import lstm_layer


def torch_uniform(bound: float):
    """U(-bound, bound): the initialisation torch uses for nn.LSTM and nn.Linear."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_dense(features: int, fan_in: int, name: str) -> nn.Dense:
    bound = 1.0 / math.sqrt(fan_in)
    return nn.Dense(features, kernel_init=torch_uniform(bound), bias_init=torch_uniform(bound), name=name)


class LSTM(nn.Module):
    """One direction of a torch-compatible LSTM layer.

    Parameters (gates i, f, g, o as torch): kernel_ih (C, 4H) = W_ih.T, kernel_hh (H, 4H)
    = W_hh.T, bias_ih and bias_hh (4H,). Two biases, as torch, although only their sum
    enters the output: Adam moves each by about the learning rate, so one fused bias would
    learn at half torch's rate.
    """

    features: int
    reverse: bool = False

    @nn.compact
    def __call__(self, x, lengths=None, return_sequences: bool = True):
        """x (B, L, C), lengths (B,) or None -> outputs (B, L, H) or None, (h, c) each (B, H)."""
        hidden = self.features
        bound = 1.0 / math.sqrt(hidden)
        kernel_ih = self.param("kernel_ih", torch_uniform(bound), (x.shape[-1], 4 * hidden))
        kernel_hh = self.param("kernel_hh", torch_uniform(bound), (hidden, 4 * hidden))
        bias_ih = self.param("bias_ih", torch_uniform(bound), (4 * hidden,))
        bias_hh = self.param("bias_hh", torch_uniform(bound), (4 * hidden,))
        return lstm_layer(
            x, kernel_ih, kernel_hh, bias_ih + bias_hh, lengths, reverse=self.reverse,
            return_sequences=return_sequences,
        )


class BiLSTMClassifier(nn.Module):
    """Bidirectional LSTM -> backward direction's final hidden state -> MLP -> logit.

    As the course's LSTMseq: nn.LSTM(4, hidden, batch_first, 1 layer, bidirectional), then
    h_n[-1] (the BACKWARD direction's final state) into Linear-tanh-Linear-tanh-Linear(1).
    The forward direction exists, as in the reference, but h_n[-1] does not depend on it
    (so neither does the output, and its parameters get zero gradient there too).

    Call: x (B, L, 4) one-hot, lengths (B,) or None -> logits (B,); probability =
    sigmoid(logits). `train` is accepted for the engine's uniform interface (no dropout).
    """

    hidden_dim: int = 16

    def setup(self):
        self.lstm_forward = LSTM(self.hidden_dim, reverse=False)
        self.lstm_backward = LSTM(self.hidden_dim, reverse=True)
        self.dense_0 = torch_dense(self.hidden_dim, self.hidden_dim, "dense_0")
        self.dense_1 = torch_dense(self.hidden_dim, self.hidden_dim, "dense_1")
        self.dense_2 = torch_dense(1, self.hidden_dim, "dense_2")

    def __call__(self, x, lengths=None, train: bool = False):
        if self.is_initializing():  # create the forward direction's parameters; unused here
            self.lstm_forward(x, lengths, return_sequences=False)
        _, (h_backward, _) = self.lstm_backward(x, lengths, return_sequences=False)
        h = jnp.tanh(self.dense_0(h_backward))
        h = jnp.tanh(self.dense_1(h))
        return self.dense_2(h)[:, 0]
