"""Nucleus segmentation: the course's U-Net with Dice loss and on-device random rotation
(problem set 2, part 2), and a predictor for one's own microscopy images.

    from molml_jax.pipelines import segmentation as seg
    summary = seg.train_and_evaluate(seg.Config(epochs=20, out="runs/seg"))
    seg.predict("runs/seg", "my_images/", "my_masks/")
    probabilities = seg.predict_arrays("runs/seg", images)        # (N, H, W) -> (N, H, W)
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path

import jax
import numpy as np
import optax

from molml_jax.data import (
    default_cells_tarball, read_image_pairs, read_images_for_prediction, split_indices, write_mask_png,
)
from molml_jax.data.augment import random_rotation
from molml_jax.errors import InputError
from molml_jax.metrics.classification import sigmoid
from molml_jax.metrics.segmentation import dice_and_iou, dice_loss_jax, mean_average_precision, thresholded_dice_iou
from molml_jax.models.unet import UNet
from molml_jax.pipelines import common
from molml_jax.pipelines.common import setting
from molml_jax.train import AXIS, Task

_this = sys.modules[__name__]  # what the shared verbs in `common` are given
# CPU: loop. XLA's own convolutions are several times slower inside lax.scan; with the
# oneDNN ones (the default) scan and loop measured the same (6.1-6.6 s per epoch).
DRIVERS = {"cpu": "loop", "gpu": "scan", "tpu": "scan"}
# Measured (README, "Sweeps"): sequential on CPU, where vmapped convolutions run one
# configuration after another anyway; vmap on accelerators.
SWEEP_PARALLEL = {"cpu": "sequential", "gpu": "vmap", "tpu": "vmap"}
MULTIPLE = 16  # the U-Net halves the size four times


@dataclasses.dataclass
class Config:
    """Every setting of a segmentation run; the defaults are the course's. Saved as config.json."""

    data: str | None = setting(None, "folder or .tar.gz of image/mask pairs, or a prepared dataset folder (from "
                                     "`prepare`; its split is used); none: the bundled course tarball", data=True)
    image_tag: str = setting("cells", "images are NAME_<tag>.EXT", data=True)
    mask_tag: str = setting("masks", "masks are NAME_<tag>.EXT", data=True)
    resize: tuple[int, int] | None = setting(None, "resize every pair to H W pixels (multiples of 16)", positive=True,
                                             metavar=("H", "W"), data=True)
    binarize_masks: bool = setting(False, "threshold masks at 0.5 (and rotate them nearest-neighbour)", data=True)
    rotation: float = setting(180.0, "random rotation of training pairs in [-DEGREES, DEGREES]; 0 turns it off")
    epochs: int = setting(20, "epochs to train (a resumed run trains up to this number)", positive=True)
    batch_size: int = setting(4, "images per batch", positive=True)
    lr: float = setting(1e-3, "Adam learning rate", positive=True)
    num_kernel: int = setting(8, "channels of the first U-Net level", positive=True)
    kernel_size: int = setting(3, "convolution kernel size (odd)", positive=True)
    seed: int = setting(0, "seed of the split (not of a prepared dataset's), the initial weights, the rotations and the batch order")
    test_fraction: float = setting(0.2, "fraction of the pairs held out for testing", data=True)
    val_fraction: float = setting(0.125, "fraction of the rest used for validation (70/10/20 overall)", data=True)
    early_stopping_patience: int | None = setting(None, "stop after this many epochs without a lower validation loss; none: never", positive=True)
    devices: int = setting(1, "data-parallel devices (on CPU: forced host devices, one per core)", positive=True)
    driver: str = setting("auto", "epoch driver; auto: the one measured faster on this backend", choices=("auto", "scan", "loop"))
    stream: bool | None = setting(None, "read batches from the host (grain) instead of keeping the splits on the devices; none: when they exceed half a device's memory")
    checkpoint_every: int = setting(1, "save the resumable `latest` checkpoint every N epochs (and at the end)", positive=True)
    out: str = setting("runs/segmentation", "run folder; a run already there is resumed")

    def model_id(self) -> str:
        return f"UNet(num_kernel={self.num_kernel}, kernel_size={self.kernel_size})"


@dataclasses.dataclass
class SegmentationData:
    """images, masks: float32 (N, H, W) in [0, 1], names (N,); split 'train' / 'val' / 'test'
    indices.

    From a prepared dataset (`prepared` set), names, images and masks are LazyColumns over
    its records (train, val, test in order; split = consecutive ranges), read when indexed."""

    source: str
    names: list[str]
    images: np.ndarray
    masks: np.ndarray
    split: dict[str, np.ndarray]
    split_seed: int | None = None
    prepared: object = None  # molml_jax.datasets.Prepared

    def arrays(self, part: str) -> dict[str, np.ndarray]:
        if self.prepared is not None:
            return self.reader(part).read(np.arange(len(self.split[part])))
        idx = self.split[part]
        return {"x": self.images[idx], "y": self.masks[idx]}

    def reader(self, part: str):
        """Random access to a part: .n, .read(indices) == arrays(part) at those indices."""
        from molml_jax.datasets import ArrayReader

        if self.prepared is None:
            return ArrayReader(self.arrays(part))
        from molml_jax.datasets import PreparedReader  # tensorflow_datasets: only for prepared data

        return PreparedReader(self.prepared, part, lambda r: {"x": r["image"], "y": r["mask"]})


def _from_prepared(config: Config) -> SegmentationData:
    from molml_jax.datasets import open_for_config

    prepared = open_for_config(config, "segmentation")
    return SegmentationData(prepared.provenance(), prepared.column("name"), prepared.column("image"),
                            prepared.column("mask"), prepared.split(), split_seed=prepared.split_seed,
                            prepared=prepared)


def load_data(config: Config) -> SegmentationData:
    """Read the image/mask pairs of config.data (or the bundled course tarball) and split
    them; or, when config.data is a prepared dataset folder, its stored split (lazily)."""
    from molml_jax.datasets import is_prepared

    if is_prepared(config.data):
        return _from_prepared(config)
    source = Path(config.data) if config.data else default_cells_tarball()
    pairs = read_image_pairs(source, image_tag=config.image_tag, mask_tag=config.mask_tag,
                             resize=config.resize, binarize_masks=config.binarize_masks)
    h, w = pairs.images.shape[1:]
    if h % MULTIPLE or w % MULTIPLE:
        raise InputError(f"{source}: images are {h}x{w}; the U-Net needs multiples of {MULTIPLE} (use --resize H W)")
    try:
        split = split_indices(len(pairs.images), seed=config.seed, test_fraction=config.test_fraction,
                              val_fraction=config.val_fraction)
    except ValueError as err:
        raise InputError(f"{source}: {err}") from None
    return SegmentationData(str(source), list(pairs.names), pairs.images, pairs.masks, split, split_seed=config.seed)


def prepare(config: Config, out):
    """Write the pairs and split that load_data(config) gives as a prepared dataset in the
    folder `out` (molml_segmentation/1.0.0/...). Returns the opened molml_jax.datasets.Prepared."""
    from molml_jax.datasets import check_target, data_settings, is_prepared, source_checksums, write_prepared

    if is_prepared(config.data):
        raise InputError(f"{config.data}: is already a prepared dataset; give the original images")
    check_target(out, "segmentation")  # before the data is read
    data = load_data(config)
    path = Path(data.source)
    columns = {"image": data.images, "mask": data.masks, "name": np.array(data.names, dtype=object)}
    metadata = {"settings": data_settings(config), "sources": source_checksums(path),
                "origin": f"{'tarball' if path.is_file() else 'folder'} {path.name}"}
    return write_prepared(out, "segmentation", columns, data.split, metadata=metadata)


def build_model(config: Config) -> UNet:
    """The U-Net for one device (BatchNorm over its own batch); make_task's copy averages
    BatchNorm statistics over the devices of a data-parallel step."""
    return UNet(num_kernel=config.num_kernel, kernel_size=config.kernel_size)


def make_optimizer(config: Config) -> optax.GradientTransformation:
    """Adam (torch defaults) with the rate as a state value."""
    return optax.inject_hyperparams(optax.adam)(learning_rate=config.lr)


def make_task(config: Config, model: UNet) -> Task:
    """Dice loss per image on sigmoid(logits); rotation of training pairs on the device."""
    augment = None
    if config.rotation:
        augment = functools.partial(random_rotation, degrees=float(config.rotation),
                                    mask_mode="nearest" if config.binarize_masks else "bilinear")
    return Task(
        model=model.clone(axis_name=AXIS),  # BatchNorm statistics over every device's examples
        # the problem set's Dice loss, 1 - (2 sum(p t) + 1) / (sum p + sum t + 1), per image
        loss=lambda logits, batch: dice_loss_jax(jax.nn.sigmoid(logits), batch["y"]),
        metrics=lambda logits, batch: thresholded_dice_iou(logits > 0.0, batch["y"] > 0.5),
        augment=augment,
        train_kwargs={"mask": "_weight"},  # BatchNorm statistics without short-batch padding
        drivers=DRIVERS,
        sweep_parallel=SWEEP_PARALLEL,
    )


def _split_metrics(data: SegmentationData, part: str, logits: np.ndarray) -> dict:
    """Dice and IoU per image at 0.5 (means), and the Data Science Bowl 2018 mAP."""
    probability = sigmoid(logits)
    truth = data.masks[data.split[part]]
    dice, iou = dice_and_iou(probability, truth)
    return {"dice": float(dice.mean()), "iou": float(iou.mean()),
            "map": mean_average_precision(list(probability > 0.5), list(truth > 0.5))}


def _figures(run_dir: Path, config: Config, data: SegmentationData, outputs: dict) -> None:
    from molml_jax.plots import plot_segmentation_examples

    test_idx = data.split["test"][:3]
    plot_segmentation_examples(data.images[test_idx], outputs["test"][:3] > 0.0, data.masks[test_idx] > 0.5,
                               [data.names[i] for i in test_idx], run_dir / "segmentation_examples.png")


HOOKS = common.Hooks(
    name="segmentation",
    title="U-Net",
    example_inputs=lambda config: (np.zeros((1, MULTIPLE, MULTIPLE), np.float32),),
    split_metrics=_split_metrics,
    figures=_figures,
)


def train_and_evaluate(config: Config, *, progress: bool = True) -> dict:
    """Train (resuming if config.out holds a checkpoint), test the best checkpoint, and
    write the run folder. Returns the summary (summary.json): test_dice, test_iou, test_map,
    last_test_..., best_val_..., best_epoch, ..."""
    return common.train_and_evaluate(_this, config, progress=progress)


def sweep(config: Config, lrs, *, seeds: int = 1, parallel: str = "auto", progress: bool = True,
          wandb: bool = False) -> dict:
    """Learning rates x seeds on the same split and batches (see common.sweep)."""
    return common.sweep(_this, config, lrs, seeds=seeds, parallel=parallel, progress=progress, wandb=wandb)


def load_run(run_dir, checkpoint: str = "best"):
    """(config, model, variables) of a trained run, the model without a device axis."""
    return common.load_run(_this, run_dir, checkpoint)


def predict_arrays(run, inputs, *, batch_size: int = 8) -> np.ndarray:
    """Foreground probability per pixel of grey images.

    run: a run folder, or what load_run returned. inputs: (N, H, W) (or one (H, W)) grey
    images scaled as in training (values / 255 for 8-bit images), any H and W: zero-padded
    to multiples of 16 for the network and cropped back. Returns (N, H, W) float64 ((H, W) for one).
    """
    config, model, variables = common.resolve_run(_this, run)
    x = common.check_array(inputs, "inputs", ndim=(2, 3), what="grey images (N, H, W) or (H, W)")
    single = x.ndim == 2
    x = x[None] if single else x
    h, w = x.shape[1:]
    padded = np.pad(x, ((0, 0), (0, -h % MULTIPLE), (0, -w % MULTIPLE)))
    logits = common.apply_in_batches(model, variables, (padded,), batch_size=batch_size)
    probabilities = sigmoid(logits[:, :h, :w])
    return probabilities[0] if single else probabilities


def predict(run_dir, input, output, *, threshold: float = 0.5) -> dict:
    """Write one 0/255 mask PNG per image of `input` (an image, or a folder or tarball of
    them) into the folder `output`, with the image's stem. Images of any size."""
    run = load_run(run_dir)
    names, images = read_images_for_prediction(input)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    for name, image in zip(names, images):
        write_mask_png(output / f"{Path(name).stem}.png", predict_arrays(run, image) > threshold)
    return {"n": len(names), "output": str(output)}
