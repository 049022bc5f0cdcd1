"""The PyTorch reference of the segmentation pipeline (problem set 2, part 2): the course's
U-Net, Dice loss, random-rotation augmentation and training loop, and a train-step speed
comparison with the Flax model.

    python -m benchmarks.torch_segmentation --epochs 2                   # train on the course data
    python -m benchmarks.torch_segmentation --step-times --keep-freed-memory

The model is the course's U-Net as the problem set describes it
(`benchmarks.torch_models.UNet`, default torch initialisation); `molml_jax.models.unet.UNet`
is the same network channels-last, returning logits (the pipeline applies the sigmoid), and
`molml_jax.interop.unet_variables_from_torch` ports this model's state_dict. The step-time
numbers are in docs/performance.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.timing import interleaved_step_ms, torch_num_threads
from molml_jax.process import keep_freed_memory  # call before importing torch / jax when timing
import torch

from benchmarks.torch_device import CHOICES, device_label, resolve_torch_device, synchronize
from benchmarks.torch_models import UNet


def dice_loss(pred, target):
    """1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1), problem set 2 eq. (4), per image, then
    the mean over the batch: pred, target (B, 1, H, W) -> scalar.

    Per image because the problem set adds the 1s "to deal with edge cases when there are no
    predicted mask in an image"; the JAX pipeline's loss (`dice_loss_jax`) is the same. (Sums
    over the whole batch tensor, a literal reading, weight images by their nucleus area;
    the course's own solution is not available to confirm either.)
    """
    return dice_loss_per_image(pred, target).mean()


def dice_loss_per_image(pred, target):
    """pred, target (B, ...) -> (B,): eq. (4) with the sums over each image's pixels."""
    dims = tuple(range(1, pred.ndim))
    intersection = (pred * target).sum(dims)
    return 1.0 - (2.0 * intersection + 1.0) / (pred.sum(dims) + target.sum(dims) + 1.0)


def rotate(x, angles_deg, mode: str = "bilinear"):
    """torchvision.transforms.functional.rotate(x, angle) for each example's own angle:
    x (B, C, H, W), angles_deg (B,) -> (B, C, H, W); counter-clockwise, about the image
    centre, zero outside (fill=None), with grid_sample(align_corners=False) on torchvision's
    grid (`molml_jax.data.augment.rotate` is tested equal to this construction)."""
    b, _, h, w = x.shape
    rot = torch.deg2rad(-angles_deg.to(torch.float32))
    cos, sin = torch.cos(rot), torch.sin(rot)
    theta = torch.stack([torch.stack([cos, sin, torch.zeros_like(cos)], -1),
                         torch.stack([-sin, cos, torch.zeros_like(cos)], -1)], 1)  # (B, 2, 3)
    base = torch.ones(h, w, 3, device=x.device)
    base[..., 0] = torch.linspace(-w * 0.5 + 0.5, w * 0.5 - 0.5, w, device=x.device)
    base[..., 1] = torch.linspace(-h * 0.5 + 0.5, h * 0.5 - 0.5, h, device=x.device)[:, None]
    grid = base.view(1, h * w, 3) @ (theta.transpose(1, 2) / torch.tensor([0.5 * w, 0.5 * h], device=x.device))
    return torch.nn.functional.grid_sample(x, grid.view(b, h, w, 2), mode=mode, padding_mode="zeros",
                                           align_corners=False)


@torch.no_grad()
def _evaluate(model, images, masks, batch_size: int, device="cpu"):
    """Eval mode over (N, H, W) arrays: mean per-image Dice loss, Dice and IoU at 0.5 (the
    project's `dice_and_iou`, as the JAX pipeline's test metrics), and the probabilities (N, H, W)."""
    from molml_jax.metrics.segmentation import dice_and_iou

    model.eval()
    losses, probs = [], []
    for start in range(0, len(images), batch_size):
        xb = torch.from_numpy(images[start:start + batch_size, None]).to(device)
        yb = torch.from_numpy(masks[start:start + batch_size, None]).to(device)
        prob = model(xb)
        losses.append(dice_loss_per_image(prob, yb))
        probs.append(prob[:, 0])
    prob = torch.cat(probs).cpu().numpy()
    dice, iou = dice_and_iou(prob, masks)
    return float(torch.cat(losses).double().mean().cpu()), float(dice.mean()), float(iou.mean()), prob


def run_torch_reference(images: np.ndarray, masks: np.ndarray, split: dict, *, epochs: int = 20,
                        lr: float = 1e-3, batch_size: int = 4, rotation: float = 180.0,
                        mask_mode: str = "bilinear", seed: int = 0, threads: int | None = None,
                        device="cpu") -> dict:
    """Train the course's U-Net as the problem set does, on the given split.

    images, masks: float32 (N, H, W) in [0, 1]; split: 'train' / 'val' / 'test' index arrays
    (the JAX pipeline's `load_data(config).split`, so both train on the same images).
    Each epoch: shuffled batches of `batch_size` (the last one short), every pair rotated by
    its own angle uniform in [-rotation, rotation] (image bilinear, mask `mask_mode`), Adam,
    per-image Dice loss on the sigmoid output; then validation in eval mode. The weights of
    the epoch with the lowest validation loss are tested, as the JAX pipeline's `best`.
    device: a torch device or 'auto' / 'cpu' / 'cuda' (`benchmarks.torch_device`); the order
    and the angles are drawn on the host either way, so every device sees the same batches.

    Returns {'history': [{'epoch', 'train_loss' (mean of batch losses), 'val_loss' (mean
    per-image Dice loss), 'val_dice', 'val_iou', 'epoch_seconds' (train + validation)}],
    'best_epoch', 'best_val_loss', 'test_dice', 'test_iou', 'test_map', 'test_probabilities'
    (N_test, H, W), 'median_epoch_seconds' (epochs after the first), 'threads', 'model'}.
    """
    from molml_jax.metrics.segmentation import mean_average_precision

    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    device = resolve_torch_device(device, convolutions=True) if isinstance(device, str) else device
    with torch_num_threads(threads):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        model = UNet().to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        train_x = torch.from_numpy(np.ascontiguousarray(images[split["train"]][:, None]))
        train_y = torch.from_numpy(np.ascontiguousarray(masks[split["train"]][:, None]))
        val_x, val_y = images[split["val"]], masks[split["val"]]
        history, best_val, best_epoch, best_weights = [], math.inf, 0, None
        for epoch in range(1, epochs + 1):
            synchronize(device)
            began = time.perf_counter()
            model.train()
            order = torch.randperm(len(train_x), generator=generator)
            batch_losses = []
            for start in range(0, len(order), batch_size):
                index = order[start:start + batch_size]
                xb, yb = train_x[index], train_y[index]
                if rotation:
                    angles = (torch.rand(len(index), generator=generator) * 2 - 1) * rotation
                xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
                if rotation:
                    angles = angles.to(device)
                    xb, yb = rotate(xb, angles, "bilinear"), rotate(yb, angles, mask_mode)
                optimizer.zero_grad()
                loss = dice_loss(model(xb), yb)
                loss.backward()
                optimizer.step()
                batch_losses.append(loss.item())
            val_loss, val_dice, val_iou, _ = _evaluate(model, val_x, val_y, batch_size, device)
            synchronize(device)
            seconds = time.perf_counter() - began
            history.append({"epoch": epoch, "train_loss": float(np.mean(batch_losses)), "val_loss": val_loss,
                            "val_dice": val_dice, "val_iou": val_iou, "epoch_seconds": seconds})
            if val_loss < best_val:
                best_val, best_epoch, best_weights = val_loss, epoch, copy.deepcopy(model.state_dict())
        model.load_state_dict(best_weights)
        test_x, test_y = images[split["test"]], masks[split["test"]]
        _, test_dice, test_iou, prob = _evaluate(model, test_x, test_y, batch_size, device)
        test_map = mean_average_precision(list(prob > 0.5), list(test_y > 0.5))
        times = [row["epoch_seconds"] for row in history[1:]] or [history[0]["epoch_seconds"]]
        return {"history": history, "best_epoch": best_epoch, "best_val_loss": best_val,
                "test_dice": test_dice, "test_iou": test_iou, "test_map": test_map,
                "test_probabilities": prob, "median_epoch_seconds": statistics.median(times),
                "threads": torch.get_num_threads(), "device": device_label(device), "model": model}


def step_times(batch_size: int = 4, size: int = 256, rounds: int = 3, steps: int = 5,
               torch_threads: int | None = None, seed: int = 0) -> dict:
    """Median time (ms) of one train step (forward, Dice loss on the sigmoid output, backward,
    Adam lr 1e-3, BatchNorm statistics updated) on one random batch, in interleaved rounds.

    Variants: 'flax_subpixel' (molml_jax.models.unet.UNet: transposed convs in sub-pixel
    form), 'flax_conv_transpose' (the same model with flax's nn.ConvTranspose), 'torch'.
    JAX's threads are XLA's; torch's are `torch_threads` (None: torch's default).
    """
    import jax
    import jax.numpy as jnp
    import optax

    from molml_jax.models.unet import UNet as FlaxUNet
    from molml_jax.metrics.segmentation import dice_loss_jax

    rng = np.random.default_rng(seed)
    x = rng.random((batch_size, size, size), dtype=np.float32)
    y = (rng.random((batch_size, size, size)) > 0.7).astype(np.float32)
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    tx = optax.adam(1e-3)

    def flax_runner(model):
        variables = model.init(jax.random.key(seed), xj[:1])

        @jax.jit
        def step(params, batch_stats, opt_state, xb, yb):
            def loss_fn(p):
                logits, updates = model.apply({"params": p, "batch_stats": batch_stats}, xb, train=True,
                                              mutable=["batch_stats"])
                loss = jnp.mean(dice_loss_jax(jax.nn.sigmoid(logits), yb))
                return loss, updates["batch_stats"]
            (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), new_stats, opt_state, loss

        state = [variables["params"], variables["batch_stats"], tx.init(variables["params"])]

        def run():
            state[0], state[1], state[2], loss = step(state[0], state[1], state[2], xj, yj)
            loss.block_until_ready()
        return run

    runners = {"flax_subpixel": flax_runner(FlaxUNet(subpixel=True)),
               "flax_conv_transpose": flax_runner(FlaxUNet(subpixel=False))}

    torch.manual_seed(seed)
    reference = UNet().train()
    optimizer = torch.optim.Adam(reference.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x[:, None]), torch.from_numpy(y[:, None])

    def torch_step():
        optimizer.zero_grad()
        loss = dice_loss(reference(xt), yt)
        loss.backward()
        optimizer.step()
        loss.item()
    runners["torch"] = torch_step

    with torch_num_threads(torch_threads):  # only the timed steps run with them
        return {"batch_size": batch_size, "size": size, "torch_threads": torch.get_num_threads(),
                **interleaved_step_ms(runners, rounds=rounds, steps=steps, warmup=2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.torch_segmentation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--step-times", action="store_true",
                        help="instead of training: time one train step (batch 4, 256x256), torch vs the Flax U-Net variants")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs on the course data (default 20)")
    parser.add_argument("--rotation", type=float, default=180.0, help="augmentation degrees (0: off)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--size", type=int, default=256, help="image height and width (multiple of 16)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--torch-device", choices=CHOICES, default="auto",
                        help="training: auto (cuda when available), cpu or cuda")
    parser.add_argument("--out", help="write the timings to this JSON file")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="glibc keeps freed memory (no per-step page faults); see keep_freed_memory()")
    args = parser.parse_args(argv)
    if args.keep_freed_memory and not keep_freed_memory():
        print("note: --keep-freed-memory does not apply here (not glibc)")
    if not args.step_times:
        from molml_jax.pipelines.segmentation import Config, load_data

        from molml_jax.errors import exit_on_user_error

        with exit_on_user_error():
            data = load_data(Config(seed=args.seed))  # the JAX pipeline's split
            out = run_torch_reference(data.images, data.masks, data.split, epochs=args.epochs,
                                      batch_size=args.batch_size, rotation=args.rotation, seed=args.seed,
                                      threads=args.threads, device=args.torch_device)
        for row in out["history"]:
            print(f"epoch {row['epoch']:3d}  train {row['train_loss']:.4f}  val {row['val_loss']:.4f}  "
                  f"val Dice {row['val_dice']:.4f}  {row['epoch_seconds']:.1f} s")
        print(f"best epoch {out['best_epoch']}: test Dice {out['test_dice']:.4f}, IoU {out['test_iou']:.4f}, "
              f"mAP {out['test_map']:.4f}")
        return
    result = step_times(args.batch_size, args.size, rounds=args.rounds, torch_threads=args.threads,
                        seed=args.seed)
    result["keep_freed_memory"] = args.keep_freed_memory
    for name, ms in result["step_ms"].items():
        print(f"{name:20s} {ms:7.1f} ms/step (best round {result['step_ms_min_round'][name]:.1f})")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
