"""Nucleus segmentation: the course's U-Net with Dice loss and on-device random rotation
(problem set 2, part 2), and a predictor for one's own microscopy images.

    from molml_jax.pipelines import segmentation as seg
    summary = seg.train_and_evaluate(seg.SegmentationConfig(epochs=20, out="runs/seg"))
    seg.predict("runs/seg", "my_images/", "my_masks/")
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from molml_jax.data import (
    crop_to, default_cells_tarball, pad_to_multiple, read_image_pairs, read_images_for_prediction,
    split_indices, write_mask_png,
)
from molml_jax.data.augment import random_rotation
from molml_jax.errors import InputError
from molml_jax.models.unet import UNet
from molml_jax.pipelines.common import check_resumable, config_record, run_facts, stored_config
from molml_jax.plots import plot_loss_curves, plot_segmentation_examples
from molml_jax.train import AXIS, Checkpoints, Engine, FitConfig, Task, create_train_state, fit
from molml_jax.train.run_folder import write_json
from molml_jax.train.segmentation_metrics import dice_and_iou, dice_loss_jax, mean_average_precision

PIPELINE = "segmentation"
# CPU: loop. XLA's own convolutions are several times slower inside lax.scan (PITFALLS.md);
# with the oneDNN ones (the default) scan and loop measured the same (6.1-6.6 s per epoch).
DRIVERS = {"cpu": "loop", "gpu": "scan", "cuda": "scan", "rocm": "scan"}


@dataclasses.dataclass
class SegmentationConfig:
    """Every setting of a segmentation run; the defaults are the course's. Saved as config.json."""

    data: str | None = None  # folder or .tar.gz of image/mask pairs; None: the bundled course tarball
    image_tag: str = "cells"
    mask_tag: str = "masks"
    resize: tuple[int, int] | None = None
    binarize_masks: bool = False
    rotation: float = 180.0  # degrees; 0 turns augmentation off
    epochs: int = 20
    batch_size: int = 4
    lr: float = 1e-3
    num_kernel: int = 8
    kernel_size: int = 3
    seed: int = 0
    test_fraction: float = 0.2
    val_fraction: float = 0.125  # of the rest: 70 / 10 / 20 overall
    early_stopping_patience: int | None = None
    devices: int = 1
    driver: str = "auto"
    checkpoint_every: int = 1
    out: str = "runs/segmentation"

    def model_id(self) -> str:
        return f"UNet(num_kernel={self.num_kernel}, kernel_size={self.kernel_size})"


@dataclasses.dataclass
class SegmentationData:
    """images, masks: float32 (N, H, W) in [0, 1]; split 'train' / 'val' / 'test' indices."""

    source: str
    names: list[str]
    images: np.ndarray
    masks: np.ndarray
    split: dict[str, np.ndarray]

    def arrays(self, part: str) -> dict[str, np.ndarray]:
        idx = self.split[part]
        return {"x": self.images[idx], "y": self.masks[idx]}


def load_data(config: SegmentationConfig) -> SegmentationData:
    source = Path(config.data) if config.data else default_cells_tarball()
    pairs = read_image_pairs(source, image_tag=config.image_tag, mask_tag=config.mask_tag,
                             resize=config.resize, binarize_masks=config.binarize_masks)
    h, w = pairs.images.shape[1:]
    if h % 16 or w % 16:
        raise InputError(f"{source}: images are {h}x{w}; the U-Net needs multiples of 16 (use --resize H W)")
    try:
        split = split_indices(len(pairs.images), seed=config.seed, test_fraction=config.test_fraction,
                              val_fraction=config.val_fraction)
    except ValueError as err:
        raise InputError(f"{source}: {err}") from None
    return SegmentationData(str(source), list(pairs.names), pairs.images, pairs.masks, split)


def build_model(config: SegmentationConfig, axis_name: str | None = None) -> UNet:
    return UNet(num_kernel=config.num_kernel, kernel_size=config.kernel_size, axis_name=axis_name)


def make_optimizer(lr: float) -> optax.GradientTransformation:
    """Adam (torch defaults) with the rate as a state value."""
    return optax.inject_hyperparams(optax.adam)(learning_rate=lr)


def _metrics(logits, batch):
    """Per-image Dice and IoU at threshold 0.5 (both empty: 1)."""
    pred = logits > 0.0  # sigmoid(logit) > 0.5
    true = batch["y"] > 0.5
    inter = jnp.sum(pred & true, axis=(1, 2)).astype(jnp.float32)
    p, t = jnp.sum(pred, axis=(1, 2)).astype(jnp.float32), jnp.sum(true, axis=(1, 2)).astype(jnp.float32)
    union = p + t - inter
    dice = jnp.where(p + t > 0, 2 * inter / jnp.maximum(p + t, 1), 1.0)
    iou = jnp.where(union > 0, inter / jnp.maximum(union, 1), 1.0)
    return {"dice": dice, "iou": iou}


def make_task(model: UNet, config: SegmentationConfig) -> Task:
    augment = None
    if config.rotation:
        augment = functools.partial(random_rotation, degrees=float(config.rotation),
                                    mask_mode="nearest" if config.binarize_masks else "bilinear")
    return Task(
        model=model,
        # the problem set's Dice loss, 1 - (2 sum(p t) + 1) / (sum p + sum t + 1), per image
        loss=lambda logits, batch: dice_loss_jax(jax.nn.sigmoid(logits), batch["y"]),
        metrics=_metrics,
        augment=augment,
        train_kwargs={"mask": "_weight"},  # BatchNorm statistics without short-batch padding
        drivers=DRIVERS,
    )


def _evaluate_test(engine, state, test, data):
    metrics, logits = engine.evaluate(engine.replicate(state), test, return_outputs=True)
    prob = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    truth = data.masks[data.split["test"]]
    dice, iou = dice_and_iou(prob, truth)
    m_ap = mean_average_precision(list(prob > 0.5), list(truth > 0.5))
    return {"dice": float(dice.mean()), "iou": float(iou.mean()), "map": m_ap, "loss": metrics["loss"]}, prob


def train_and_evaluate(config: SegmentationConfig, *, progress: bool = True) -> dict:
    """Train (resuming if config.out holds a checkpoint), test the best checkpoint, and
    write the run folder. Returns the summary (summary.json)."""
    run_dir = Path(config.out)
    data = load_data(config)  # bad input fails here, before anything is written
    check_resumable(run_dir, config, PIPELINE)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", {**config_record(config, PIPELINE), "data_source": data.source})

    model = build_model(config, axis_name=AXIS)
    task = make_task(model, config)
    tx = make_optimizer(config.lr)
    engine = Engine(task, tx, batch_size=config.batch_size, devices=config.devices, driver=config.driver)
    # parameters are initialised outside pmap, with the same module minus the device axis
    state = create_train_state(build_model(config), tx, (data.images[:1],), config.seed)
    train, val, test = (engine.put(data.arrays(part)) for part in ("train", "val", "test"))
    fit_config = FitConfig(epochs=config.epochs, early_stopping_patience=config.early_stopping_patience,
                           checkpoint_every=config.checkpoint_every, progress=progress)
    result = fit(engine, state, train, val, fit_config, run_dir, model_id=config.model_id())

    last, _ = _evaluate_test(engine, result.state, test, data)
    best_state, _ = Checkpoints(run_dir / "checkpoints").restore("best", result.state, expect_model=config.model_id())
    best, prob = _evaluate_test(engine, best_state, test, data)
    summary = {
        "test_dice": best["dice"], "test_iou": best["iou"], "test_map": best["map"], "test_loss": best["loss"],
        "test_dice_last_epoch": last["dice"], "test_iou_last_epoch": last["iou"], "test_map_last_epoch": last["map"],
        **run_facts(result, engine),
        "n_train": int(len(data.split["train"])), "n_val": int(len(data.split["val"])),
        "n_test": int(len(data.split["test"])), "data": data.source,
    }
    write_json(run_dir / "summary.json", summary)
    plot_loss_curves(result.history, run_dir / "loss_curve.png",
                     title=f"U-Net: test Dice {best['dice']:.3f}, IoU {best['iou']:.3f}")
    test_idx = data.split["test"][:3]
    plot_segmentation_examples(data.images[test_idx], prob[:3] > 0.5, data.masks[test_idx] > 0.5,
                               [data.names[i] for i in test_idx], run_dir / "segmentation_examples.png")
    return summary


def load_run(run_dir: str | Path, *, checkpoint: str = "best"):
    """(config, model, variables) of a trained run, the model without a device axis."""
    run_dir = Path(run_dir)
    config = stored_config(run_dir, PIPELINE, SegmentationConfig)
    model = build_model(config)
    tx = make_optimizer(config.lr)
    template = jax.tree.map(np.asarray, create_train_state(model, tx, (np.zeros((1, 16, 16), np.float32),), 0))
    if not (run_dir / "checkpoints").is_dir():
        raise InputError(f"{run_dir}: no checkpoints folder (did training start?)")
    state, _ = Checkpoints(run_dir / "checkpoints", create=False).restore(
        checkpoint, template, expect_model=config.model_id())
    return config, model, {"params": state.params, "batch_stats": state.batch_stats}


def predict(run_dir, input_path, output_dir, *, threshold: float = 0.5) -> dict:
    """Write one 0/255 mask PNG per input image (same stem) into output_dir.

    Images of any size: zero-padded to a multiple of 16 for the network, cropped back.
    """
    config, model, variables = load_run(run_dir)
    names, images = read_images_for_prediction(input_path)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, image in zip(names, images):
        padded, size = pad_to_multiple(image, 16)
        logits = np.asarray(apply(variables, padded[None]))[0]
        mask = crop_to(logits, size) > np.log(threshold / (1 - threshold))
        written.append(write_mask_png(output_dir / f"{Path(name).stem}.png", mask))
    return {"n": len(written), "output": str(output_dir)}
