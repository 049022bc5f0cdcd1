"""The PyTorch reference of the TF-binding learning-rate study: a residual 1-D CNN that
predicts a binding score for every base of a 300 bp window.

    python -m benchmarks.torch_tf_binding --epochs 2 --n 512 --lr 1e-3

The model is the study's BindingPredictorCNN (`benchmarks.torch_models`), trained as the
study trains it. `--step-times` times one train step of it against Flax variants
(docs/performance.md).

Training as the study: AdamW (weight decay 1e-5), MSE, batch 64, early stopping on the
validation loss (patience 10) with the best weights restored, Pearson R over all validation
bases. The torch model is channels-first: inputs (N, L, 4) are transposed to (N, 4, L).
The real data come from `molml_jax.data.tf_binding`; `__main__` runs on random data.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.timing import interleaved_step_ms, torch_num_threads
from molml_jax.process import keep_freed_memory
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from benchmarks.torch_device import CHOICES, device_label, resolve_torch_device, synchronize
from benchmarks.torch_models import LENGTH, BindingPredictorCNN


class TFBindingDataset(Dataset):
    """One-hot windows x (N, L, 4) and per-base scores y (N, L), float32.

    Items are (x (4, L) channels-first, as the torch model takes them, y (L,)).
    """

    def __init__(self, x: np.ndarray, y: np.ndarray):
        x = np.asarray(x, np.float32)
        y = np.asarray(y, np.float32)
        if x.ndim != 3 or x.shape[-1] != 4:
            raise ValueError(f"x must be (N, L, 4) one-hot, got shape {x.shape}")
        if y.shape != x.shape[:2]:
            raise ValueError(f"y must be (N, L) = {x.shape[:2]}, got shape {y.shape}")
        self.x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 2, 1)))
        self.y = torch.from_numpy(np.ascontiguousarray(y))

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index):
        return self.x[index], self.y[index]


def pearson_r(predictions, targets) -> float:
    """Pearson R over all finite pairs of the flattened arrays (numpy, float64), as the
    study's calculate_pearsonr (scipy.stats.pearsonr): 0.0 for fewer than 2 pairs or an
    undefined (constant-input) correlation."""
    p = np.asarray(predictions, np.float64).ravel()
    t = np.asarray(targets, np.float64).ravel()
    valid = np.isfinite(p) & np.isfinite(t)
    p, t = p[valid], t[valid]
    if p.size < 2:
        return 0.0
    p = p - p.mean()
    t = t - t.mean()
    denominator = np.sqrt(np.dot(p, p) * np.dot(t, t))
    if denominator == 0.0:
        return 0.0
    r = float(np.dot(p, t) / denominator)
    return float(np.clip(r, -1.0, 1.0)) if np.isfinite(r) else 0.0


def train_epoch(model, loader, optimizer, device="cpu") -> float:
    """One epoch of updates; the mean of the batch losses."""
    model.train()
    losses = []
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return float(np.mean(losses))


def validate(model, loader, device="cpu") -> tuple[float, float]:
    """(MSE over all validation bases, Pearson R over all validation bases)."""
    model.eval()
    predictions, targets = [], []
    with torch.no_grad():
        for x, y in loader:
            predictions.append(model(x.to(device, non_blocking=True)).cpu().numpy())
            targets.append(y.numpy())
    p, t = np.concatenate(predictions), np.concatenate(targets)
    val_loss = float(np.mean((p.astype(np.float64) - t) ** 2))
    return val_loss, pearson_r(p, t)


def run_torch_reference(x: np.ndarray, y: np.ndarray, train_idx, val_idx, lr: float, epochs: int,
                        batch_size: int = 64, weight_decay: float = 1e-5, patience: int = 10,
                        seed: int = 0, threads: int | None = None, initial_state_dict=None,
                        num_channels: int = 32, num_blocks: int = 3, kernel_size: int = 3,
                        dropout_rate: float = 0.2, device="cpu") -> dict:
    """Train the study's model on x (N, L, 4) float32 one-hot and y (N, L) float32 scores.

    Training windows x[train_idx] in shuffled batches (torch generator seeded with `seed`),
    validation on x[val_idx] after each epoch; stops after `patience` epochs without a lower
    validation loss, and restores the weights of the best epoch. device: a torch device or
    'auto' / 'cpu' / 'cuda' (`benchmarks.torch_device`).

    Returns {'history': [{'epoch', 'train_loss' (mean of the batch losses), 'val_loss' (MSE
    over all validation bases), 'val_pearson', 'epoch_seconds' (train + validation wall
    time)}, ...], 'best_epoch', 'best_val_loss', 'best_val_pearson', 'stopped_early',
    'median_epoch_seconds' (epochs after the first), 'threads', 'torch_version', 'n_train',
    'n_val', 'model' (the BindingPredictorCNN with the best epoch's weights, eval mode)}.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.float32)
    train_idx, val_idx = np.asarray(train_idx), np.asarray(val_idx)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise ValueError("train_idx and val_idx must both be non-empty")
    device = resolve_torch_device(device, convolutions=True) if isinstance(device, str) else device
    with torch_num_threads(threads):
        train_set = TFBindingDataset(x[train_idx], y[train_idx])
        val_set = TFBindingDataset(x[val_idx], y[val_idx])
        generator = torch.Generator().manual_seed(seed)
        train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=generator)
        val_loader = DataLoader(val_set, batch_size=batch_size)

        torch.manual_seed(seed)
        model = BindingPredictorCNN(num_channels, num_blocks, kernel_size, dropout_rate, length=x.shape[1])
        if initial_state_dict is not None:
            model.load_state_dict(initial_state_dict)
        model.to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

        history, best_val, best_pearson, best_epoch = [], float("inf"), 0.0, 0
        best_weights, stale = copy.deepcopy(model.state_dict()), 0
        for epoch in range(1, epochs + 1):
            synchronize(device)
            began = time.perf_counter()
            train_loss = train_epoch(model, train_loader, optimizer, device)
            val_loss, val_pearson = validate(model, val_loader, device)
            synchronize(device)
            seconds = time.perf_counter() - began
            history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                            "val_pearson": val_pearson, "epoch_seconds": seconds})
            if val_loss < best_val:
                best_val, best_pearson, best_epoch, stale = val_loss, val_pearson, epoch, 0
                best_weights = copy.deepcopy(model.state_dict())
            else:
                stale += 1
                if stale >= patience:
                    break
        model.load_state_dict(best_weights)
        model.eval()
        times = [row["epoch_seconds"] for row in history[1:]] or [history[0]["epoch_seconds"]]
        return {
            "history": history,
            "best_epoch": best_epoch,
            "best_val_loss": best_val,
            "best_val_pearson": best_pearson,
            "stopped_early": len(history) < epochs,
            "median_epoch_seconds": statistics.median(times),
            "threads": torch.get_num_threads(),
            "device": device_label(device),
            "torch_version": torch.__version__,
            "n_train": len(train_set),
            "n_val": len(val_set),
            "model": model,
        }


def random_data(n: int, length: int = LENGTH, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random one-hot windows (n, length, 4) and a learnable per-base score (n, length): the
    count of G/C within 5 bases, scaled, plus a little noise. For smoke runs only."""
    rng = np.random.default_rng(seed)
    x = np.eye(4, dtype=np.float32)[rng.integers(0, 4, size=(n, length))]
    gc = x[:, :, 1] + x[:, :, 2]
    y = np.stack([np.convolve(row, np.ones(11, np.float32), mode="same") for row in gc]) / 5.0
    y = y + 0.05 * rng.standard_normal(y.shape)
    return x, y.astype(np.float32)


def step_times(batch_size: int = 64, length: int = LENGTH, rounds: int = 5, steps: int = 10,
               torch_threads: int | None = 1, seed: int = 0) -> dict:
    """Median time (ms) of one training step (forward, backward, AdamW update, dropout on)
    of the torch model and of Flax variants on the same batch, in interleaved rounds.

    Variants: 'flax_reference' (XLA's convolution as flax nn.Conv computes it, nn.LayerNorm
    and nn.Dropout's Bernoulli draw), 'flax_model' (molml_jax.models.cnn: `ops.conv.conv1d`,
    oneDNN on CPU; `ops.layer_norm.layer_norm_lc`; Dropout16), 'flax_im2col' (each k-wide
    conv as one (B*L, kC) @ (kC, C) matmul over shifted copies, with the model's LayerNorm
    and dropout), 'torch'. JAX's threads are XLA's (set XLA_FLAGS before the run); torch's
    are `torch_threads` (None: torch's default).
    """
    import flax.linen as fnn
    import jax
    import jax.numpy as jnp
    import optax

    from molml_jax.models.cnn import BindingPredictorCNN as FlaxCNN
    from molml_jax.models.cnn import Dropout16
    from molml_jax.ops.layer_norm import layer_norm_lc

    rng = np.random.default_rng(seed)
    x = np.eye(4, dtype=np.float32)[rng.integers(0, 4, size=(batch_size, length))]
    y = rng.standard_normal((batch_size, length)).astype(np.float32)
    flax_model = FlaxCNN(length=length)
    params = flax_model.init(jax.random.key(seed), x[:1])["params"]
    tx = optax.adamw(1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-5)
    flax_ln = fnn.LayerNorm(epsilon=1e-5, reduction_axes=(-2, -1), feature_axes=(-2, -1), use_fast_variance=False)

    def conv_lax(h, kernel):
        pad = kernel.shape[0] // 2
        return jax.lax.conv_general_dilated(h, kernel, (1,), [(pad, pad)], dimension_numbers=("NWC", "WIO", "NWC"))

    def conv_im2col(h, kernel):
        k, pad = kernel.shape[0], kernel.shape[0] // 2
        padded = jnp.pad(h, ((0, 0), (pad, pad), (0, 0)))
        columns = jnp.concatenate([padded[:, j:j + h.shape[1]] for j in range(k)], axis=-1)
        return columns @ kernel.reshape(-1, kernel.shape[-1])

    def norm_flax(h, p):
        return flax_ln.apply({"params": p}, h)

    def norm_custom(h, p):
        return layer_norm_lc(h, p["scale"], p["bias"])

    def dropout_flax(o, key):  # flax nn.Dropout: one 32-bit draw per element
        keep = jax.random.bernoulli(key, 1.0 - flax_model.dropout_rate, o.shape)
        return jnp.where(keep, o / (1.0 - flax_model.dropout_rate), 0.0)

    def dropout_16(o, key):  # the model's Dropout16
        return Dropout16(flax_model.dropout_rate).apply({}, o, False, rngs={"dropout": key})

    def functional(conv, norm, dropout):
        def apply(p, h, key):
            h = jax.nn.relu(norm(conv(h, p["initial_conv"]["kernel"]), p["initial_norm"]))
            for i, k in enumerate(jax.random.split(key, flax_model.num_blocks)):
                q = p[f"block_{i}"]
                o = dropout(jax.nn.relu(norm(conv(h, q["conv1"]["kernel"]), q["norm1"])), k)
                h = jax.nn.relu(norm(conv(o, q["conv2"]["kernel"]), q["norm2"]) + h)
            return conv_lax(h, p["final_conv"]["kernel"])[..., 0] + p["final_conv"]["bias"]
        return apply

    def model_apply(p, h, key):
        return flax_model.apply({"params": p}, h, train=True, rngs={"dropout": key})

    def jitted_step(apply):
        @jax.jit
        def step(p, opt_state, key, xb, yb):
            loss, grads = jax.value_and_grad(lambda q: jnp.mean((apply(q, xb, key) - yb) ** 2))(p)
            updates, opt_state = tx.update(grads, opt_state, p)
            return optax.apply_updates(p, updates), opt_state, loss
        return step

    xj, yj = jnp.asarray(x), jnp.asarray(y)
    runners = {}
    for name, apply in (("flax_reference", functional(conv_lax, norm_flax, dropout_flax)),
                        ("flax_model", model_apply),
                        ("flax_im2col", functional(conv_im2col, norm_custom, dropout_16))):
        step, state = jitted_step(apply), [params, tx.init(params), jax.random.key(seed + 1)]

        def run(step=step, state=state):
            state[2], key = jax.random.split(state[2])
            state[0], state[1], loss = step(state[0], state[1], key, xj, yj)
            loss.block_until_ready()
        runners[name] = run

    torch.manual_seed(seed)
    reference = BindingPredictorCNN(length=length).train()
    optimizer = torch.optim.AdamW(reference.parameters(), lr=1e-3, weight_decay=1e-5)
    xt, yt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 2, 1))), torch.from_numpy(y)

    def torch_step():
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(reference(xt), yt)
        loss.backward()
        optimizer.step()
        loss.item()
    runners["torch"] = torch_step

    with torch_num_threads(torch_threads):  # only the timed steps run with them
        return {"batch_size": batch_size, "length": length, "torch_threads": torch.get_num_threads(),
                **interleaved_step_ms(runners, rounds=rounds, steps=steps, warmup=3)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.torch_tf_binding", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--n", type=int, default=512, help="number of random windows")
    parser.add_argument("--length", type=int, default=LENGTH)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--torch-device", choices=CHOICES, default="auto", help="auto: cuda when available")
    parser.add_argument("--out", help="write the results (without the model) to this JSON file")
    parser.add_argument("--step-times", action="store_true",
                        help="instead of training: time one train step, torch vs Flax variants (batch 64)")
    parser.add_argument("--rounds", type=int, default=5, help="--step-times: interleaved rounds")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="glibc keeps freed memory (no per-step page faults); see keep_freed_memory()")
    args = parser.parse_args(argv)
    if args.keep_freed_memory and not keep_freed_memory():
        print("note: --keep-freed-memory does not apply here (not glibc)")
    if args.step_times:
        result = step_times(length=args.length, rounds=args.rounds, seed=args.seed,
                            torch_threads=1 if args.threads is None else args.threads)
        result["keep_freed_memory"] = args.keep_freed_memory
        for name, ms in result["step_ms"].items():
            print(f"{name:15s} {ms:7.1f} ms/step (best round {result['step_ms_min_round'][name]:.1f})")
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        return
    x, y = random_data(args.n, args.length, args.seed)
    order = np.random.default_rng(args.seed).permutation(args.n)
    n_val = max(1, int(round(0.2 * args.n)))
    from molml_jax.errors import exit_on_user_error

    with exit_on_user_error():
        result = run_torch_reference(x, y, order[n_val:], order[:n_val], lr=args.lr, epochs=args.epochs,
                                     seed=args.seed, threads=args.threads, device=args.torch_device)
    result.pop("model")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for row in result["history"]:
        print(f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}, validation loss "
              f"{row['val_loss']:.4f}, Pearson R {row['val_pearson']:.4f} ({row['epoch_seconds']:.2f} s)")
    print(f"best epoch {result['best_epoch']}: validation loss {result['best_val_loss']:.4f}, Pearson R "
          f"{result['best_val_pearson']:.4f}; median epoch {result['median_epoch_seconds']:.2f} s on "
          f"{result['device']}, {result['threads']} thread(s)")


if __name__ == "__main__":
    main()
