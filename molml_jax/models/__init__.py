"""Flax linen modules (no training code here)."""

from molml_jax.models.cnn import BindingPredictorCNN
from molml_jax.models.lstm import LSTM, BiLSTMClassifier

__all__ = ["LSTM", "BiLSTMClassifier", "BindingPredictorCNN"]
