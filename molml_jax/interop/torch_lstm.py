"""PyTorch LSTMseq state_dict -> parameters of `molml_jax.models.BiLSTMClassifier`.

The course's model (problem set 2, part 1)::

    class LSTMseq(nn.Module):
        lstm = nn.LSTM(4, H, batch_first=True, num_layers=1, bidirectional=True)
        mlp = nn.Sequential(nn.Linear(H, H), nn.Tanh(), nn.Linear(H, H), nn.Tanh(), nn.Linear(H, 1))
        sigmoid = nn.Sigmoid()

Its state_dict and the Flax parameter tree it maps to (gates i, f, g, o in both)::

    lstm.weight_ih_l0            (4H, 4)  -> lstm_forward.kernel_ih  (4, 4H) = W_ih.T
    lstm.weight_hh_l0            (4H, H)  -> lstm_forward.kernel_hh  (H, 4H) = W_hh.T
    lstm.bias_ih_l0, bias_hh_l0  (4H,)    -> lstm_forward.bias_ih, bias_hh (4H,)
    lstm.*_l0_reverse                     -> lstm_backward.* (the same way)
    mlp.0.weight (H, H), mlp.0.bias (H,)  -> dense_0.kernel (H, H) = W.T, dense_0.bias (H,)
    mlp.2.*                               -> dense_1.*
    mlp.4.weight (1, H), mlp.4.bias (1,)  -> dense_2.kernel (H, 1), dense_2.bias (1,)

The Flax model returns logits; `sigmoid(logits)` equals the torch model's output.
torch is imported only inside `load_torch_lstm_checkpoint`, so molml_jax works without it.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax.numpy as jnp

from molml_jax.errors import InputError
from molml_jax.interop.state_dict import (
    and_more, checked_arrays, named_weights, read_state_dict, shape_text, to_numpy,
)

INPUT_DIM = 4  # one-hot A, C, G, T


def _expected_shapes(hidden: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for suffix in ("", "_reverse"):
        shapes[f"lstm.weight_ih_l0{suffix}"] = (4 * hidden, INPUT_DIM)
        shapes[f"lstm.weight_hh_l0{suffix}"] = (4 * hidden, hidden)
        shapes[f"lstm.bias_ih_l0{suffix}"] = (4 * hidden,)
        shapes[f"lstm.bias_hh_l0{suffix}"] = (4 * hidden,)
    for layer, out in (("0", hidden), ("2", hidden), ("4", 1)):
        shapes[f"mlp.{layer}.weight"] = (out, hidden)
        shapes[f"mlp.{layer}.bias"] = (out,)
    return shapes


def lstm_params_from_torch(
    state_dict: Mapping[str, Any], hidden_dim: int | None = None, *, source: str = "state_dict"
) -> dict:
    """Convert a torch LSTMseq state_dict into `BiLSTMClassifier` parameters.

    Args:
      state_dict: mapping of names to torch tensors or numpy arrays, as `model.state_dict()`
        of the course's LSTMseq (a 'module.' prefix from DataParallel is ignored). Shapes,
        H = hidden size: lstm.weight_ih_l0[_reverse] (4H, 4), lstm.weight_hh_l0[_reverse]
        (4H, H), lstm.bias_ih_l0[_reverse] and lstm.bias_hh_l0[_reverse] (4H,),
        mlp.0.weight and mlp.2.weight (H, H), mlp.0.bias and mlp.2.bias (H,),
        mlp.4.weight (1, H), mlp.4.bias (1,).
      hidden_dim: the expected H; None takes it from lstm.weight_hh_l0.
      source: how messages name the input (a file path, or 'state_dict').

    Returns:
      The 'params' collection of `BiLSTMClassifier(hidden_dim=H)` (float32 jax arrays):
      {'lstm_forward': {'kernel_ih' (4, 4H), 'kernel_hh' (H, 4H), 'bias_ih', 'bias_hh' (4H,)},
       'lstm_backward': {same}, 'dense_0': {'kernel' (H, H), 'bias' (H,)},
       'dense_1': {same}, 'dense_2': {'kernel' (H, 1), 'bias' (1,)}}.
      Use as `BiLSTMClassifier(H).apply({'params': params}, x)` -> logits (B,).

    Raises:
      InputError (one line naming `source`): not a mapping, missing or unexpected keys (a
      state_dict of another model), wrong shapes, non-float or non-finite values.
    """
    weights = named_weights(state_dict, source)

    if "lstm.weight_hh_l0" not in weights:
        lstm_keys = [k for k in weights if k.startswith(("lstm.", "mlp."))]
        if not lstm_keys:
            sample = ", ".join(sorted(weights)[:4]) or "no keys at all"
            raise InputError(
                f"{source}: not a state_dict of the course's LSTMseq (no lstm.* / mlp.* weights; "
                f"it has {sample}{', ...' if len(weights) > 4 else ''})"
            )
        raise InputError(f"{source}: missing key lstm.weight_hh_l0")
    hh = to_numpy(weights["lstm.weight_hh_l0"], "lstm.weight_hh_l0", source)
    if hh.ndim != 2 or hh.shape[0] != 4 * hh.shape[1]:
        raise InputError(
            f"{source}: lstm.weight_hh_l0 has shape {shape_text(hh.shape)}, expected (4H, H) "
            f"for an LSTM of hidden size H"
        )
    hidden = hh.shape[1]
    if hidden_dim is not None and hidden != hidden_dim:
        raise InputError(f"{source}: LSTM hidden size is {hidden}, expected hidden_dim {hidden_dim}")

    shapes = _expected_shapes(hidden)
    missing = [k for k in shapes if k not in weights]
    if missing:
        raise InputError(f"{source}: missing key {missing[0]}{and_more(missing)}")
    unexpected = sorted(k for k in weights if k not in shapes)
    if unexpected:
        hint = ""
        if any(k.startswith("lstm.") and "_l1" in k for k in unexpected):
            hint = "; this model has one bidirectional LSTM layer"
        elif any(k.startswith("mlp.") for k in unexpected):
            hint = "; this model's MLP is Linear-Tanh-Linear-Tanh-Linear (mlp.0, mlp.2, mlp.4)"
        raise InputError(f"{source}: unexpected key {unexpected[0]}{and_more(unexpected)}{hint}")

    arrays = checked_arrays(weights, shapes, source, f"hidden size {hidden}, {INPUT_DIM} input channels")

    def direction(suffix: str) -> dict:
        return {
            "kernel_ih": jnp.asarray(arrays[f"lstm.weight_ih_l0{suffix}"].T),
            "kernel_hh": jnp.asarray(arrays[f"lstm.weight_hh_l0{suffix}"].T),
            "bias_ih": jnp.asarray(arrays[f"lstm.bias_ih_l0{suffix}"]),
            "bias_hh": jnp.asarray(arrays[f"lstm.bias_hh_l0{suffix}"]),
        }

    def dense(layer: str) -> dict:
        return {
            "kernel": jnp.asarray(arrays[f"mlp.{layer}.weight"].T),
            "bias": jnp.asarray(arrays[f"mlp.{layer}.bias"]),
        }

    return {
        "lstm_forward": direction(""),
        "lstm_backward": direction("_reverse"),
        "dense_0": dense("0"),
        "dense_1": dense("2"),
        "dense_2": dense("4"),
    }


def load_torch_lstm_checkpoint(path: str | os.PathLike, hidden_dim: int | None = None) -> dict:
    """Load a .pt file holding an LSTMseq state_dict and convert it (see `lstm_params_from_torch`).

    The file is read with `torch.load(path, map_location='cpu', weights_only=True)`: plain
    tensors only, never arbitrary pickled code. It may hold the state_dict itself or a dict
    with it under 'state_dict', 'model_state_dict' or 'model'.

    Returns the 'params' collection of `BiLSTMClassifier(hidden_dim=H)`.
    Raises InputError (one line naming the file) for a missing or unreadable file, a file
    that is not weights-only (e.g. a whole pickled nn.Module), or another model's weights.
    """
    return lstm_params_from_torch(read_state_dict(path), hidden_dim, source=str(path))
