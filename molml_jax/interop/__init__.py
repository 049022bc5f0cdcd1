"""PyTorch state_dict -> Flax params (parity tests, and for users with trained torch models).

torch is imported lazily (only when a .pt file is loaded); molml_jax works without it.
"""

from molml_jax.interop.torch_lstm import load_torch_lstm_checkpoint, lstm_params_from_torch
from molml_jax.interop.torch_cnn import cnn_config_from_params, cnn_params_from_torch, load_torch_cnn_checkpoint

__all__ = [
    "load_torch_lstm_checkpoint",
    "lstm_params_from_torch",
    "cnn_config_from_params",
    "cnn_params_from_torch",
    "load_torch_cnn_checkpoint",
]
