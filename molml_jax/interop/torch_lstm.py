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
import re
from pathlib import Path
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from molml_jax.errors import InputError

INPUT_DIM = 4  # one-hot A, C, G, T
_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DistributedDataParallel, torch.compile
# where trainers often nest the model's state_dict inside a saved dict
_NESTED_KEYS = ("state_dict", "model_state_dict", "model")


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


def _strip_prefix(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def _to_numpy(value: Any, key: str, source: str) -> np.ndarray:
    """A torch tensor or array-like -> float32 numpy array (copied, on the host)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch.Tensor, without importing torch
        value = value.detach().cpu()
        if not value.is_floating_point():
            raise InputError(f"{source}: {key} has dtype {value.dtype}, expected floating-point weights")
        value = value.float().numpy()
    try:
        array = np.asarray(value)
    except Exception as err:  # noqa: BLE001 - anything that is not array-like
        raise InputError(f"{source}: {key} is not an array ({type(value).__name__}: {err})") from None
    if not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"{source}: {key} has dtype {array.dtype}, expected floating-point weights")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise InputError(f"{source}: {key} contains NaN or infinite values")
    return array


def _shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


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
    weights = _named_weights(state_dict, source)

    if "lstm.weight_hh_l0" not in weights:
        lstm_keys = [k for k in weights if k.startswith(("lstm.", "mlp."))]
        if not lstm_keys:
            sample = ", ".join(sorted(weights)[:4]) or "no keys at all"
            raise InputError(
                f"{source}: not a state_dict of the course's LSTMseq (no lstm.* / mlp.* weights; "
                f"it has {sample}{', ...' if len(weights) > 4 else ''})"
            )
        raise InputError(f"{source}: missing key lstm.weight_hh_l0")
    hh = _to_numpy(weights["lstm.weight_hh_l0"], "lstm.weight_hh_l0", source)
    if hh.ndim != 2 or hh.shape[0] != 4 * hh.shape[1]:
        raise InputError(
            f"{source}: lstm.weight_hh_l0 has shape {_shape_text(hh.shape)}, expected (4H, H) "
            f"for an LSTM of hidden size H"
        )
    hidden = hh.shape[1]
    if hidden_dim is not None and hidden != hidden_dim:
        raise InputError(f"{source}: LSTM hidden size is {hidden}, expected hidden_dim {hidden_dim}")

    shapes = _expected_shapes(hidden)
    missing = [k for k in shapes if k not in weights]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(f"{source}: missing key {missing[0]}{more}")
    unexpected = sorted(k for k in weights if k not in shapes)
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        hint = ""
        if any(k.startswith("lstm.") and "_l1" in k for k in unexpected):
            hint = "; this model has one bidirectional LSTM layer"
        elif any(k.startswith("mlp.") for k in unexpected):
            hint = "; this model's MLP is Linear-Tanh-Linear-Tanh-Linear (mlp.0, mlp.2, mlp.4)"
        raise InputError(f"{source}: unexpected key {unexpected[0]}{more}{hint}")

    arrays = _checked_arrays(weights, shapes, source, f"hidden size {hidden}, {INPUT_DIM} input channels")

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


def _unwrap(obj: Any) -> Any:
    """The model's state_dict inside a training checkpoint such as {'model_state_dict': ...}
    (a state_dict's own values are tensors, never mappings, so any model's works)."""
    if isinstance(obj, Mapping):
        for name in _NESTED_KEYS:
            if isinstance(obj.get(name), Mapping):
                return obj[name]
    return obj


def _first_line(text: str, err: BaseException | None = None) -> str:
    """The first sentence of an error message (torch's run to several lines)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    first = lines[0] if lines else type(err).__name__ if err else "unknown error"
    return first.split(". ")[0].rstrip(".")[:200]


def _unpickling_problem(message: str) -> str:
    """torch's multi-line weights_only refusal -> the one fact a user needs."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
    if found:
        return (f"holds a pickled {found.group(1)}, not only tensors (torch.load with weights_only=True "
                f"refuses it); save model.state_dict() instead of the model")
    found = re.search(r"WeightsUnpickler error:\s*(.+)", message, flags=re.DOTALL)
    detail = _first_line(found.group(1)) if found else _first_line(message)
    return f"not a readable PyTorch checkpoint ({detail})"


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


def read_state_dict(path: str | os.PathLike) -> Mapping[str, Any]:
    """The state_dict in a .pt file, read with torch.load(weights_only=True) (plain tensors
    only, never pickled code); also found under 'state_dict', 'model_state_dict' or 'model'.
    Every problem is an InputError naming the file."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a .pt file")
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty")
    try:
        import torch
    except ImportError:
        raise InputError(f"{path}: reading PyTorch checkpoints needs torch (pip install 'molml-jax[torch]')") from None
    import pickle

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise InputError(f"{path}: {_unpickling_problem(str(err))}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable PyTorch checkpoint ({_first_line(str(err), err)})") from None
    return _unwrap(obj)


def _named_weights(state_dict, source: str, *, skip_suffix: str | None = None) -> dict[str, Any]:
    """A state_dict as {name without 'module.' / '_orig_mod.' prefix: value}; one-line
    InputError if it is not a mapping of string keys. Keys ending in skip_suffix are dropped."""
    if not isinstance(state_dict, Mapping):
        raise InputError(
            f"{source}: expected a state_dict (a mapping of parameter names to tensors), "
            f"got {type(state_dict).__name__}"
        )
    weights: dict[str, Any] = {}
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise InputError(f"{source}: state_dict key {key!r} is not a string")
        if skip_suffix is not None and key.endswith(skip_suffix):
            continue
        weights[_strip_prefix(key)] = value
    return weights


def _checked_arrays(weights: Mapping[str, Any], shapes: Mapping[str, tuple], source: str,
                    context: str) -> dict[str, np.ndarray]:
    """{key: float array} for every expected key, or a one-line InputError naming a key
    whose shape differs (`context` says what the expected shapes were derived from)."""
    arrays = {}
    for key, shape in shapes.items():
        array = _to_numpy(weights[key], key, source)
        if array.shape != shape:
            raise InputError(
                f"{source}: {key} has shape {_shape_text(array.shape)}, expected {_shape_text(shape)} "
                f"({context})"
            )
        arrays[key] = array
    return arrays
