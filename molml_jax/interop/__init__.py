"""PyTorch state_dict -> Flax params (parity tests, and for users with trained torch models).

One converter per model (torch_lstm.py, torch_cnn.py, torch_unet.py); state_dict.py reads
.pt files and checks names, shapes and values for all three. torch is imported lazily (only
when a .pt file is loaded); molml_jax works without it.
"""

from molml_jax.interop.torch_lstm import load_torch_lstm_checkpoint, lstm_params_from_torch
from molml_jax.interop.torch_cnn import cnn_config_from_params, cnn_params_from_torch, load_torch_cnn_checkpoint
from molml_jax.interop.torch_unet import load_torch_unet_checkpoint, unet_config_from_variables, unet_variables_from_torch

__all__ = [
    "load_torch_lstm_checkpoint",
    "lstm_params_from_torch",
    "cnn_config_from_params",
    "cnn_params_from_torch",
    "load_torch_cnn_checkpoint",
    "load_torch_unet_checkpoint",
    "unet_config_from_variables",
    "unet_variables_from_torch",
]
