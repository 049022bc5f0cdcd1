"""PyTorch U-Net state_dict -> variables of `molml_jax.models.unet.UNet`.

The torch model is `benchmarks.torch_models.UNet` (the course's U-Net as the problem set
describes it), channels-first; the Flax model is channels-last. Its state_dict and the Flax
variables it maps to (nk channels at the first level, kernel k; i = 1 .. 4)::

    down{i}.conv_block.conv{j}.weight (out, in, k, k) -> params down_i/block/conv_j/kernel (k, k, in, out)
                                                         = W.transpose(2, 3, 1, 0)
    down{i}.conv_block.conv{j}.bias   (out,)           -> params down_i/block/conv_j/bias
    down{i}.conv_block.bn{j}.weight, .bias (out,)      -> params down_i/block/norm_j/scale, bias
    down{i}.conv_block.bn{j}.running_mean, _var        -> batch_stats down_i/block/norm_j/mean, var
    down{i}.conv_block.bn{j}.num_batches_tracked       -> ignored
    bridge.weight (16nk, 8nk, k, k), .bias             -> params bridge/kernel, bias
    up{i}.conv_block.*                                 -> up_i/block/* (as the down levels)
    up{i}.up.weight (c, c, 3, 3) [ConvTranspose2d: (in, out, kh, kw)]
                                                       -> params up_i/upsample/kernel (3, 3, out, in)
                                                          = W.transpose(2, 3, 1, 0)
    up{i}.up.bias (c,)                                 -> params up_i/upsample/bias
    final_conv.weight (1, nk, 1, 1), .bias (1,)        -> params final_conv/kernel (1, 1, nk, 1), bias

With the ported running statistics the Flax model in eval mode gives the torch model's
outputs (torch's are sigmoid probabilities; apply jax.nn.sigmoid to the Flax logits).
torch is imported only inside `load_torch_unet_checkpoint`, so molml_jax works without it.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from molml_jax.errors import InputError
from molml_jax.interop.state_dict import (
    and_more, checked_arrays, named_weights, read_state_dict, shape_text, to_numpy,
)

LEVELS = 4
_PREFIXES = tuple(f"{side}{i}." for side in ("down", "up") for i in range(1, LEVELS + 1)) + ("bridge.", "final_conv.")


def _block_shapes(prefix: str, c_in: int, c_out: int, k: int) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for j, inputs in ((1, c_in), (2, c_out)):
        shapes[f"{prefix}.conv_block.conv{j}.weight"] = (c_out, inputs, k, k)
        shapes[f"{prefix}.conv_block.conv{j}.bias"] = (c_out,)
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.conv_block.bn{j}.{name}"] = (c_out,)
    return shapes


def _expected_shapes(nk: int, k: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    widths = [1, nk, 2 * nk, 4 * nk, 8 * nk]
    for i in range(1, LEVELS + 1):
        shapes.update(_block_shapes(f"down{i}", widths[i - 1], widths[i], k))
    shapes["bridge.weight"] = (16 * nk, 8 * nk, k, k)
    shapes["bridge.bias"] = (16 * nk,)
    ups = [16 * nk, 8 * nk, 4 * nk, 2 * nk, nk]
    for i in range(1, LEVELS + 1):
        shapes.update(_block_shapes(f"up{i}", ups[i - 1], ups[i], k))
        shapes[f"up{i}.up.weight"] = (ups[i], ups[i], 3, 3)
        shapes[f"up{i}.up.bias"] = (ups[i],)
    shapes["final_conv.weight"] = (1, nk, 1, 1)
    shapes["final_conv.bias"] = (1,)
    return shapes


def unet_variables_from_torch(state_dict: Mapping[str, Any], *, num_kernel: int | None = None,
                              source: str = "state_dict") -> dict:
    """Convert a torch U-Net state_dict into Flax `UNet` variables.

    Args:
      state_dict: mapping of names to torch tensors or numpy arrays, as `model.state_dict()`
        of `benchmarks.torch_models.UNet` ('module.' / '_orig_mod.' prefixes are
        ignored). nk and k are read from down1.conv_block.conv1.weight (nk, 1, k, k).
      num_kernel: the expected nk, or None to accept what the state_dict holds.
      source: how messages name the input (a file path, or 'state_dict').

    Returns:
      {'params': ..., 'batch_stats': ...} of `UNet(num_kernel=nk, kernel_size=k)` (float32
      jax arrays; tree in the module docstring).

    Raises:
      InputError (one line naming `source`): not a mapping, another model's state_dict,
      missing or unexpected keys, wrong shapes, non-float or non-finite values.
    """
    weights = named_weights(state_dict, source, skip_suffix="num_batches_tracked")

    if not any(k.startswith(_PREFIXES) for k in weights):
        sample = ", ".join(sorted(weights)[:4]) or "no keys at all"
        raise InputError(
            f"{source}: not a state_dict of the segmentation U-Net (no down1.* / bridge.* / up1.* / "
            f"final_conv.* weights; it has {sample}{', ...' if len(weights) > 4 else ''})")
    first = "down1.conv_block.conv1.weight"
    if first not in weights:
        raise InputError(f"{source}: missing key {first}")
    conv0 = to_numpy(weights[first], first, source)
    if conv0.ndim != 4 or conv0.shape[1] != 1 or conv0.shape[2] != conv0.shape[3] or conv0.shape[2] % 2 == 0:
        raise InputError(
            f"{source}: {first} has shape {shape_text(conv0.shape)}, expected (nk, 1, k, k) with odd k "
            f"(a Conv2d from grey images)")
    nk, k = conv0.shape[0], conv0.shape[2]
    if num_kernel is not None and nk != num_kernel:
        raise InputError(f"{source}: the state_dict has num_kernel {nk}, expected {num_kernel}")

    shapes = _expected_shapes(nk, k)
    missing = [key for key in shapes if key not in weights]
    if missing:
        raise InputError(f"{source}: missing key {missing[0]}{and_more(missing)}")
    unexpected = sorted(key for key in weights if key not in shapes)
    if unexpected:
        raise InputError(f"{source}: unexpected key {unexpected[0]}{and_more(unexpected)}")
    arrays = checked_arrays(weights, shapes, source, f"num_kernel {nk}, kernel {k}")

    def conv(prefix: str) -> dict:
        return {"kernel": jnp.asarray(arrays[f"{prefix}.weight"].transpose(2, 3, 1, 0)),
                "bias": jnp.asarray(arrays[f"{prefix}.bias"])}

    def block(prefix: str) -> tuple[dict, dict]:
        params, stats = {}, {}
        for j in (1, 2):
            bn = f"{prefix}.conv_block.bn{j}"
            params[f"conv_{j}"] = conv(f"{prefix}.conv_block.conv{j}")
            params[f"norm_{j}"] = {"scale": jnp.asarray(arrays[f"{bn}.weight"]),
                                   "bias": jnp.asarray(arrays[f"{bn}.bias"])}
            stats[f"norm_{j}"] = {"mean": jnp.asarray(arrays[f"{bn}.running_mean"]),
                                  "var": jnp.asarray(arrays[f"{bn}.running_var"])}
        return params, stats

    params: dict = {}
    batch_stats: dict = {}
    for i in range(1, LEVELS + 1):
        p, s = block(f"down{i}")
        params[f"down_{i}"], batch_stats[f"down_{i}"] = {"block": p}, {"block": s}
    params["bridge"] = conv("bridge")
    for i in range(1, LEVELS + 1):
        p, s = block(f"up{i}")
        # ConvTranspose2d weight (in, out, kh, kw) -> (kh, kw, out, in): the same transpose
        params[f"up_{i}"] = {"block": p, "upsample": conv(f"up{i}.up")}
        batch_stats[f"up_{i}"] = {"block": s}
    params["final_conv"] = conv("final_conv")
    return {"params": params, "batch_stats": batch_stats}


def unet_config_from_variables(variables: Mapping[str, Any]) -> dict:
    """{'num_kernel', 'kernel_size'} of ported variables: `UNet(**unet_config_from_variables(v))`."""
    kernel = np.shape(variables["params"]["down_1"]["block"]["conv_1"]["kernel"])
    return {"num_kernel": kernel[3], "kernel_size": kernel[0]}


def load_torch_unet_checkpoint(path: str | os.PathLike, *, num_kernel: int | None = None) -> dict:
    """Load a .pt file holding a U-Net state_dict and convert it (see `unet_variables_from_torch`).

    Read with torch.load(weights_only=True) via `read_state_dict` (plain tensors only; the
    state_dict itself or under 'state_dict', 'model_state_dict' or 'model').
    Returns {'params', 'batch_stats'} of the Flax `UNet`. Raises InputError (one line naming
    the file) for a missing or unreadable file or another model's weights.
    """
    return unet_variables_from_torch(read_state_dict(path), num_kernel=num_kernel, source=str(path))
