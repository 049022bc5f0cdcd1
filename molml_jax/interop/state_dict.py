"""Reading and checking PyTorch state_dicts, shared by the converters (torch_lstm.py,
torch_cnn.py, torch_unet.py).

`read_state_dict(path)` loads a .pt file with torch.load(weights_only=True); `named_weights`
strips DataParallel / torch.compile prefixes; `checked_arrays` turns the expected keys into
float32 numpy arrays of the expected shapes. Every problem is a one-line InputError naming
the source. torch is imported only inside `read_state_dict`, so molml_jax works without it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from molml_jax.errors import InputError

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DistributedDataParallel, torch.compile
# where trainers often nest the model's state_dict inside a saved dict
_NESTED_KEYS = ("state_dict", "model_state_dict", "model")


def _strip_prefix(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def to_numpy(value: Any, key: str, source: str) -> np.ndarray:
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


def shape_text(shape: tuple[int, ...]) -> str:
    """A shape as torch and numpy print it: (4,), (3, 4)."""
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def and_more(items: list[str]) -> str:
    """' (and N more)' after the first of several items named in a message, else ''."""
    return f" (and {len(items) - 1} more)" if len(items) > 1 else ""


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


def named_weights(state_dict, source: str, *, skip_suffix: str | None = None) -> dict[str, Any]:
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


def checked_arrays(weights: Mapping[str, Any], shapes: Mapping[str, tuple], source: str,
                   context: str) -> dict[str, np.ndarray]:
    """{key: float array} for every expected key, or a one-line InputError naming a key
    whose shape differs (`context` says what the expected shapes were derived from)."""
    arrays = {}
    for key, shape in shapes.items():
        array = to_numpy(weights[key], key, source)
        if array.shape != shape:
            raise InputError(
                f"{source}: {key} has shape {shape_text(array.shape)}, expected {shape_text(shape)} "
                f"({context})"
            )
        arrays[key] = array
    return arrays
