"""PyTorch BindingPredictorCNN state_dict -> parameters of `molml_jax.models.cnn.BindingPredictorCNN`.

The TF-binding study's model (reproduced as `benchmarks.torch_models.BindingPredictorCNN`)
is channels-first: Conv1d weights (out, in, k) and LayerNorm([C, L]) weights (C, L). The
Flax model is channels-last. Its state_dict and the Flax parameter tree it maps to (C
channels, kernel k, window length L, n blocks)::

    initial_conv.weight            (C, 4, k) -> initial_conv.kernel    (k, 4, C) = W.transpose(2, 1, 0)
    initial_norm.weight, .bias     (C, L)    -> initial_norm.scale, .bias (L, C) = w.T
    res_blocks.{i}.conv1.weight    (C, C, k) -> block_{i}.conv1.kernel (k, C, C)
    res_blocks.{i}.norm1.weight, .bias (C, L) -> block_{i}.norm1.scale, .bias (L, C)
    res_blocks.{i}.conv2.*, norm2.*          -> block_{i}.conv2.*, norm2.*
    final_conv.weight              (1, C, 1) -> final_conv.kernel      (1, C, 1)
    final_conv.bias                (1,)      -> final_conv.bias        (1,)

The ported model gives the torch model's outputs in eval mode (B, L), to float32 rounding.
torch is imported only inside `load_torch_cnn_checkpoint`, so molml_jax works without it.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from molml_jax.errors import InputError
from molml_jax.interop.state_dict import (
    and_more, checked_arrays, named_weights, read_state_dict, shape_text, to_numpy,
)

INPUT_DIM = 4  # one-hot A, C, G, T
_PREFIXES = ("initial_conv.", "initial_norm.", "res_blocks.", "final_conv.")
_BLOCK_KEY = re.compile(r"res_blocks\.(\d+)\.")


def _expected_shapes(channels: int, kernel: int, length: int, blocks: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {
        "initial_conv.weight": (channels, INPUT_DIM, kernel),
        "initial_norm.weight": (channels, length),
        "initial_norm.bias": (channels, length),
    }
    for i in range(blocks):
        for conv, norm in (("conv1", "norm1"), ("conv2", "norm2")):
            shapes[f"res_blocks.{i}.{conv}.weight"] = (channels, channels, kernel)
            shapes[f"res_blocks.{i}.{norm}.weight"] = (channels, length)
            shapes[f"res_blocks.{i}.{norm}.bias"] = (channels, length)
    shapes["final_conv.weight"] = (1, channels, 1)
    shapes["final_conv.bias"] = (1,)
    return shapes


def cnn_params_from_torch(state_dict: Mapping[str, Any], *, num_blocks: int | None = None,
                          length: int | None = None, source: str = "state_dict") -> dict:
    """Convert a torch BindingPredictorCNN state_dict into Flax `BindingPredictorCNN` parameters.

    Args:
      state_dict: mapping of names to torch tensors or numpy arrays, as `model.state_dict()`
        of the study's BindingPredictorCNN ('module.' / '_orig_mod.' prefixes are ignored).
        C, k, L and the number of blocks are read from it: initial_conv.weight (C, 4, k),
        initial_norm.weight (C, L), res_blocks.{i}.* for i = 0 .. n-1.
      num_blocks, length: the expected number of residual blocks and window length, or
        None to accept what the state_dict holds.
      source: how messages name the input (a file path, or 'state_dict').

    Returns:
      The 'params' collection of `BindingPredictorCNN(num_channels=C, num_blocks=n,
      kernel_size=k, length=L)` (float32 jax arrays; tree in the module docstring).

    Raises:
      InputError (one line naming `source`): not a mapping, another model's state_dict,
      missing or unexpected keys, wrong shapes, non-float or non-finite values.
    """
    weights = named_weights(state_dict, source)

    if not any(k.startswith(_PREFIXES) for k in weights):
        sample = ", ".join(sorted(weights)[:4]) or "no keys at all"
        raise InputError(
            f"{source}: not a state_dict of the TF-binding BindingPredictorCNN (no initial_conv.* / "
            f"res_blocks.* / final_conv.* weights; it has {sample}{', ...' if len(weights) > 4 else ''})")
    for key in ("initial_conv.weight", "initial_norm.weight"):
        if key not in weights:
            raise InputError(f"{source}: missing key {key}")
    conv0 = to_numpy(weights["initial_conv.weight"], "initial_conv.weight", source)
    if conv0.ndim != 3 or conv0.shape[1] != INPUT_DIM:
        raise InputError(
            f"{source}: initial_conv.weight has shape {shape_text(conv0.shape)}, expected "
            f"(C, {INPUT_DIM}, k) for a Conv1d from one-hot DNA")
    channels, kernel = conv0.shape[0], conv0.shape[2]
    if kernel % 2 == 0:
        raise InputError(f"{source}: initial_conv.weight has an even kernel size {kernel}; the model needs an odd one")
    norm0 = to_numpy(weights["initial_norm.weight"], "initial_norm.weight", source)
    if norm0.ndim != 2 or norm0.shape[0] != channels:
        raise InputError(
            f"{source}: initial_norm.weight has shape {shape_text(norm0.shape)}, expected "
            f"({channels}, L) for LayerNorm([C, L])")
    found_length = norm0.shape[1]
    if length is not None and found_length != length:
        raise InputError(f"{source}: the LayerNorms are built for length {found_length}, expected length {length}")

    indices = {int(m.group(1)) for k in weights if (m := _BLOCK_KEY.match(k))}
    blocks = max(indices) + 1 if indices else 0
    if num_blocks is not None and blocks != num_blocks:
        raise InputError(f"{source}: the state_dict has {blocks} residual blocks, expected num_blocks {num_blocks}")

    shapes = _expected_shapes(channels, kernel, found_length, blocks)
    missing = [k for k in shapes if k not in weights]
    if missing:
        raise InputError(f"{source}: missing key {missing[0]}{and_more(missing)}")
    unexpected = sorted(k for k in weights if k not in shapes)
    if unexpected:
        hint = ""
        if any(k.endswith(".bias") and ("conv" in k and not k.startswith("final_conv")) for k in unexpected):
            hint = "; the model's initial and block convolutions have no bias"
        raise InputError(f"{source}: unexpected key {unexpected[0]}{and_more(unexpected)}{hint}")

    arrays = checked_arrays(weights, shapes, source,
                             f"{channels} channels, kernel {kernel}, length {found_length}")

    def conv(key: str) -> dict:
        return {"kernel": jnp.asarray(arrays[key].transpose(2, 1, 0))}

    def norm(prefix: str) -> dict:
        return {"scale": jnp.asarray(arrays[f"{prefix}.weight"].T), "bias": jnp.asarray(arrays[f"{prefix}.bias"].T)}

    params: dict = {"initial_conv": conv("initial_conv.weight"), "initial_norm": norm("initial_norm")}
    for i in range(blocks):
        params[f"block_{i}"] = {
            "conv1": conv(f"res_blocks.{i}.conv1.weight"),
            "norm1": norm(f"res_blocks.{i}.norm1"),
            "conv2": conv(f"res_blocks.{i}.conv2.weight"),
            "norm2": norm(f"res_blocks.{i}.norm2"),
        }
    params["final_conv"] = {"kernel": conv("final_conv.weight")["kernel"],
                            "bias": jnp.asarray(arrays["final_conv.bias"])}
    return params


def cnn_config_from_params(params: Mapping[str, Any]) -> dict:
    """{'num_channels', 'num_blocks', 'kernel_size', 'length'} of a ported parameter tree:
    `BindingPredictorCNN(**cnn_config_from_params(params))` is the model it belongs to."""
    kernel = np.shape(params["initial_conv"]["kernel"])
    return {"num_channels": kernel[2], "kernel_size": kernel[0],
            "num_blocks": sum(1 for k in params if k.startswith("block_")),
            "length": np.shape(params["initial_norm"]["scale"])[0]}


def load_torch_cnn_checkpoint(path: str | os.PathLike, *, num_blocks: int | None = None,
                              length: int | None = None) -> dict:
    """Load a .pt file holding a BindingPredictorCNN state_dict and convert it (see
    `cnn_params_from_torch`).

    The file is read with `torch.load(path, map_location='cpu', weights_only=True)`: plain
    tensors only, never arbitrary pickled code. It may hold the state_dict itself or a dict
    with it under 'state_dict', 'model_state_dict' or 'model'.

    Returns the 'params' collection of the Flax `BindingPredictorCNN`
    (`cnn_config_from_params` gives its attributes).
    Raises InputError (one line naming the file) for a missing or unreadable file, a file
    that is not weights-only (e.g. a whole pickled nn.Module), or another model's weights.
    """
    return cnn_params_from_torch(read_state_dict(path), num_blocks=num_blocks, length=length, source=str(path))
