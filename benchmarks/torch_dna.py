"""The PyTorch reference of problem set 2, part 1: DNA binding sites with a bidirectional LSTM.

    python -m benchmarks.torch_dna --epochs 5 --seed 0 --out torch_dna.json

Written from the problem set: a torch Dataset whose __getitem__ returns (x, y), DataLoaders
of batch 256 (training shuffled), the LSTMseq model (`benchmarks.torch_models.LSTMseq`:
a bidirectional nn.LSTM whose backward direction's final hidden state goes through
Linear-Tanh-Linear-Tanh-Linear(1) and a sigmoid), Adam lr 1e-2, ReduceLROnPlateau
(mode 'min', factor 0.5, patience 10) stepped with the validation loss each epoch, binary
cross entropy, and the test ROC AUC of the model after the last epoch (as the course
reports it; the AUC of the best-validation epoch is reported too).

The data and its train / validation / test split are exactly the JAX pipeline's
(`molml_jax.pipelines.dna.load_data`), so the two can be compared epoch by epoch.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.timing import torch_num_threads
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, Dataset

from benchmarks.torch_device import CHOICES, device_label, resolve_torch_device, synchronize
from benchmarks.torch_models import LSTMseq


class DNADataset(Dataset):
    """One-hot sequences x (N, L, 4) float32 and labels y (N,) float32."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x = torch.as_tensor(np.asarray(x, np.float32))
        self.y = torch.as_tensor(np.asarray(y, np.float32))

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index):
        return self.x[index], self.y[index]


def train(model, loader, optimizer, device="cpu") -> float:
    """One epoch of updates; the mean of the batch losses."""
    model.train()
    losses = []
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        optimizer.zero_grad()
        loss = nn.functional.binary_cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return float(np.mean(losses))


def validate(model, loader, device="cpu") -> float:
    """The mean of the batch losses, without updates."""
    model.eval()
    losses = []
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            losses.append(nn.functional.binary_cross_entropy(model(x), y).item())
    return float(np.mean(losses))


def evaluate(model, loader, device="cpu") -> tuple[np.ndarray, np.ndarray]:
    """(predicted probabilities, true labels) over the loader, as numpy arrays."""
    model.eval()
    predictions, labels = [], []
    with torch.no_grad():
        for x, y in loader:
            predictions.append(model(x.to(device)).cpu().numpy())
            labels.append(y.numpy())
    return np.concatenate(predictions), np.concatenate(labels)


class EpochOrderSampler(torch.utils.data.Sampler):
    """Visits the training set in a given order per epoch: order(epoch) -> index array.
    With `molml_jax.train.engine.epoch_order` torch sees exactly the JAX run's batches."""

    def __init__(self, n: int, order):
        self.n, self.order, self.epoch = n, order, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        self.epoch += 1
        return iter(np.asarray(self.order(self.epoch)).tolist())


def run_torch_reference(epochs: int, seed: int, hidden_dim: int = 16, batch_size: int = 256,
                        lr: float = 1e-2, threads: int | None = None, initial_state_dict=None,
                        batch_order=None, init_seed: int | None = None, device="cpu",
                        data: str | None = None) -> dict:
    """Train and test the reference on the JAX pipeline's data and split (Config(seed)).

    The initial weights come from torch.manual_seed(init_seed, default `seed`) and the batch
    order from a generator seeded with `seed`, or from batch_order(epoch) -> indices.
    device: a torch device or 'auto' / 'cpu' / 'cuda' (`benchmarks.torch_device`); data: a
    labeled sequences file instead of the bundled course data.

    Returns {'history': [{'epoch', 'train_loss', 'val_loss', 'lr', 'epoch_seconds'}, ...],
    'test_auc' (after the last epoch, as the course), 'test_auc_best_val' (the weights of
    the epoch with the lowest validation loss), 'best_epoch', 'median_epoch_seconds' (epochs
    after the first), 'threads', 'torch_version', split sizes, and 'model' (the trained
    LSTMseq). epoch_seconds is the wall time of that epoch's train() plus validate().
    """
    from molml_jax.pipelines.dna import Config, load_data

    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    device = resolve_torch_device(device) if isinstance(device, str) else device
    with torch_num_threads(threads):
        data = load_data(Config(seed=seed, hidden_dim=hidden_dim, batch_size=batch_size, lr=lr, data=data))
        if data.variable_length:
            raise ValueError("the torch reference handles one sequence length only (the course data)")
        parts = {name: DNADataset(data.x[idx], data.y[idx]) for name, idx in data.split.items()}
        if batch_order is None:
            generator = torch.Generator().manual_seed(seed)
            train_loader = DataLoader(parts["train"], batch_size=batch_size, shuffle=True, generator=generator)
        else:
            sampler = EpochOrderSampler(len(parts["train"]), batch_order)
            train_loader = DataLoader(parts["train"], batch_size=batch_size, sampler=sampler)
        val_loader = DataLoader(parts["val"], batch_size=batch_size)
        test_loader = DataLoader(parts["test"], batch_size=batch_size)

        torch.manual_seed(seed if init_seed is None else init_seed)
        model = LSTMseq(hidden_dim)
        if initial_state_dict is not None:
            model.load_state_dict(initial_state_dict)
        model.to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=10)

        history, best_val, best_epoch, best_weights = [], float("inf"), 0, None
        for epoch in range(1, epochs + 1):
            current_lr = optimizer.param_groups[0]["lr"]
            synchronize(device)
            began = time.perf_counter()
            train_loss = train(model, train_loader, optimizer, device)
            val_loss = validate(model, val_loader, device)
            synchronize(device)
            seconds = time.perf_counter() - began
            scheduler.step(val_loss)
            history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                            "lr": current_lr, "epoch_seconds": seconds})
            if val_loss < best_val:
                best_val, best_epoch = val_loss, epoch
                best_weights = copy.deepcopy(model.state_dict())

        probabilities, labels = evaluate(model, test_loader, device)
        test_auc = float(roc_auc_score(labels, probabilities))
        best_model = LSTMseq(hidden_dim).to(device)
        best_model.load_state_dict(best_weights)
        best_probabilities, _ = evaluate(best_model, test_loader, device)
        times = [row["epoch_seconds"] for row in history[1:]] or [history[0]["epoch_seconds"]]
        return {
            "history": history,
            "test_auc": test_auc,
            "test_auc_best_val": float(roc_auc_score(labels, best_probabilities)),
            "best_epoch": best_epoch,
            "best_val_loss": best_val,
            "median_epoch_seconds": statistics.median(times),
            "threads": torch.get_num_threads(),
            "device": device_label(device),
            "torch_version": torch.__version__,
            "n_train": len(parts["train"]),
            "n_val": len(parts["val"]),
            "n_test": len(parts["test"]),
            "model": model,
        }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.torch_dna", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden-dim", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--torch-device", choices=CHOICES, default="auto", help="auto: cuda when available")
    parser.add_argument("--out", help="write the results (without the model) to this JSON file")
    parser.add_argument("--save-state-dict", metavar="PT",
                        help="save the trained model's state_dict here (load it in JAX with "
                             "molml_jax.interop.load_torch_lstm_checkpoint)")
    args = parser.parse_args(argv)
    from molml_jax.errors import exit_on_user_error

    with exit_on_user_error():
        result = run_torch_reference(args.epochs, args.seed, hidden_dim=args.hidden_dim, threads=args.threads,
                                     device=args.torch_device)
    model = result.pop("model")
    if args.save_state_dict:
        Path(args.save_state_dict).parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), args.save_state_dict)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    last = result["history"][-1]
    print(f"epochs {len(result['history'])}: train loss {last['train_loss']:.4f}, validation loss "
          f"{last['val_loss']:.4f}; test AUC {result['test_auc']:.4f} (best validation epoch "
          f"{result['best_epoch']}: {result['test_auc_best_val']:.4f}); median epoch "
          f"{result['median_epoch_seconds']:.2f} s on {result['device']}, {result['threads']} thread(s)")


if __name__ == "__main__":
    main()
