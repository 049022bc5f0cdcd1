"""The PyTorch reference of the segmentation pipeline (problem set 2, part 2): the course's
U-Net and Dice loss, and a train-step speed comparison with the Flax model.

    python -m benchmarks.torch_segmentation --step-times --keep-freed-memory

The course provides its U-Net as code that we do not have; this is the model as DESIGN.md
describes it (num_kernel nk = 8, kernel_size k = 3), written out layer by layer:

    ConvBlock(in, out): Conv2d(in, out, k, padding=k // 2), ReLU, BatchNorm2d(out),
                        Conv2d(out, out, k, padding=k // 2), ReLU, BatchNorm2d(out)
    Down(in, out):      ConvBlock(in, out) -> skip; MaxPool2d(2)(skip)
    Up(in, out):        ConvBlock(in, out), ConvTranspose2d(out, out, 3, stride=2, padding=1,
                        output_padding=1), + skip (added, not concatenated)
    UNet: down1 Down(1, nk), down2 Down(nk, 2nk), down3 Down(2nk, 4nk), down4 Down(4nk, 8nk),
          bridge Conv2d(8nk, 16nk, k, padding=k // 2) (no activation),
          up1 Up(16nk, 8nk) + skip of down4, up2 Up(8nk, 4nk) + down3's, up3 Up(4nk, 2nk)
          + down2's, up4 Up(2nk, nk) + down1's, final_conv Conv2d(nk, 1, 1), sigmoid.
    forward(x (B, 1, H, W)) -> probabilities (B, 1, H, W); H, W multiples of 16.

Default torch initialisation everywhere (the course sets none). `molml_jax.models.unet.UNet`
is the same network channels-last, returning logits (the pipeline applies the sigmoid);
`molml_jax.interop.unet_variables_from_torch` ports this model's state_dict.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.timing import interleaved_step_ms
from experiments._cli import keep_freed_memory  # call before importing torch / jax when timing
import torch
from torch import nn


class ConvBlock(nn.Module):
    """conv1, ReLU, bn1, conv2, ReLU, bn2: (B, in, H, W) -> (B, out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.relu1 = nn.ReLU()
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.relu2 = nn.ReLU()
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x):
        x = self.bn1(self.relu1(self.conv1(x)))
        return self.bn2(self.relu2(self.conv2(x)))


class Down(nn.Module):
    """forward(x (B, in, H, W)) -> (pooled (B, out, H/2, W/2), skip (B, out, H, W))."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.conv_block = ConvBlock(in_channels, out_channels, kernel_size)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        skip = self.conv_block(x)
        return self.pool(skip), skip


class Up(nn.Module):
    """forward(x (B, in, H, W), skip (B, out, 2H, 2W)) -> (B, out, 2H, 2W)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.conv_block = ConvBlock(in_channels, out_channels, kernel_size)
        self.up = nn.ConvTranspose2d(out_channels, out_channels, 3, stride=2, padding=1, output_padding=1)

    def forward(self, x, skip):
        return self.up(self.conv_block(x)) + skip


class UNet(nn.Module):
    """forward(x (B, 1, H, W)) -> sigmoid probabilities (B, 1, H, W); layers in the module docstring."""

    def __init__(self, num_kernel: int = 8, kernel_size: int = 3):
        super().__init__()
        nk, k = num_kernel, kernel_size
        self.down1 = Down(1, nk, k)
        self.down2 = Down(nk, 2 * nk, k)
        self.down3 = Down(2 * nk, 4 * nk, k)
        self.down4 = Down(4 * nk, 8 * nk, k)
        self.bridge = nn.Conv2d(8 * nk, 16 * nk, k, padding=k // 2)
        self.up1 = Up(16 * nk, 8 * nk, k)
        self.up2 = Up(8 * nk, 4 * nk, k)
        self.up3 = Up(4 * nk, 2 * nk, k)
        self.up4 = Up(2 * nk, nk, k)
        self.final_conv = nn.Conv2d(nk, 1, 1)

    def forward(self, x):
        x, skip1 = self.down1(x)
        x, skip2 = self.down2(x)
        x, skip3 = self.down3(x)
        x, skip4 = self.down4(x)
        x = self.bridge(x)
        x = self.up1(x, skip4)
        x = self.up2(x, skip3)
        x = self.up3(x, skip2)
        x = self.up4(x, skip1)
        return torch.sigmoid(self.final_conv(x))


def dice_loss(pred, target):
    """1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1), problem set 2 eq. (4).

    The sums run over the WHOLE tensors (every pixel of every image of the batch: one Dice
    score per batch, not a mean of per-image scores), as a student's direct implementation
    of the formula does; the course's own solution is not available to confirm.
    """
    intersection = (pred * target).sum()
    return 1.0 - (2.0 * intersection + 1.0) / (pred.sum() + target.sum() + 1.0)


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

    previous_threads = torch.get_num_threads()
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
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
                p_ = jax.nn.sigmoid(logits)
                loss = 1.0 - (2.0 * jnp.sum(p_ * yb) + 1.0) / (jnp.sum(p_) + jnp.sum(yb) + 1.0)
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

    try:
        return {"batch_size": batch_size, "size": size, "torch_threads": torch.get_num_threads(),
                **interleaved_step_ms(runners, rounds=rounds, steps=steps, warmup=2)}
    finally:
        torch.set_num_threads(previous_threads)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.torch_segmentation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--step-times", action="store_true",
                        help="time one train step (batch 4, 256x256): torch vs the Flax U-Net variants")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--size", type=int, default=256, help="image height and width (multiple of 16)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the timings to this JSON file")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="glibc keeps freed memory (no per-step page faults); see keep_freed_memory()")
    args = parser.parse_args(argv)
    if not args.step_times:
        parser.error("nothing to do: pass --step-times")
    if args.keep_freed_memory and not keep_freed_memory():
        print("note: --keep-freed-memory does not apply here (not glibc)")
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
