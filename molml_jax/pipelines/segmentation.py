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
import os
import shutil
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
import optax
import pandas as pd

from molml_jax.data import default_cells_tarball, read_image_pairs, read_pairs_table, split_indices, write_mask_png
from molml_jax.data.images import list_images
from molml_jax.data.instances import label_instances, object_table, write_labels
from molml_jax.data.intensity import NORMALIZATIONS, describe_kind, normalization
from molml_jax.data.tiles import check_tiling, iter_tiled_rows, predict_tiled
from molml_jax.data.augment import random_rotation
from molml_jax.errors import InputError
from molml_jax.metrics.classification import sigmoid
from molml_jax.metrics.segmentation import (
    dice_and_iou, dice_loss_jax, instance_metrics, mean_average_precision, thresholded_dice_iou,
)
from molml_jax.models.unet import UNet
from molml_jax.pipelines import common
from molml_jax.pipelines.common import setting
from molml_jax.train import AXIS, Task
from molml_jax.train.run_folder import write_json

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
    image_tag: str = setting("cells", "images are NAME_<tag>.EXT or <tag>_NAME.EXT (separator _, - or .)", data=True)
    mask_tag: str = setting("masks", "masks are NAME_<tag>.EXT or <tag>_NAME.EXT; 0/255 masks, or label images "
                                     "(each object its own integer)", data=True)
    pairs: str | None = setting(None, "CSV table with columns image, mask (paths relative to the table) instead of "
                                      "--data", data=True)
    normalize: str = setting("scale", "pixel values to 0-1: scale divides by the type's maximum (255: the course); "
                                      "percentile maps each image's 1st-99th percentiles to 0-1 (Cellpose; "
                                      "independent of bit depth and gain)", choices=NORMALIZATIONS, data=True)
    channel: int | None = setting(None, "channel of multi-channel images to segment (0-based); none: grey images, "
                                        "RGB converted to grey", data=True)
    pixel_kind: str = setting("uint8", "pixel type of the training images (filled from the data): with "
                                       "--normalize scale, predict takes this type only", cli=False)
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


def true_instances(labels: np.ndarray | None, mask: np.ndarray) -> np.ndarray:
    """The true objects of a pair: its label-image mask's labels, else the connected
    components of its mask (the course's masks are merged: touching nuclei are one object)."""
    return labels if labels is not None else label_instances(np.asarray(mask) > 0.5)


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
    labels: list | None = None  # per pair: int32 (H, W) instance labels of a label-image mask, or None
    normalize: str = "scale"  # how the images were normalised (the run records it for predict)
    channel: int | None = None
    pixel_kind: str = "uint8"

    def true_instances(self, index: int) -> np.ndarray:
        """Instance labels of pair `index` (see `true_instances`)."""
        return true_instances(self.labels[index] if self.labels else None, self.masks[index])


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
    settings = prepared.metadata.get("settings", {})  # how its images were normalised
    return SegmentationData(prepared.provenance(), prepared.column("name"), prepared.column("image"),
                            prepared.column("mask"), prepared.split(), split_seed=prepared.split_seed,
                            prepared=prepared, normalize=settings.get("normalize", "scale"),
                            channel=settings.get("channel"), pixel_kind=prepared.metadata.get("pixel_kind", "uint8"))


def load_data(config: Config) -> SegmentationData:
    """Read the image/mask pairs of config.data (or the bundled course tarball) and split
    them; or, when config.data is a prepared dataset folder, its stored split (lazily)."""
    from molml_jax.datasets import is_prepared

    if is_prepared(config.data):
        return _from_prepared(config)
    reading = dict(resize=config.resize, binarize_masks=config.binarize_masks, normalize=config.normalize,
                   channel=config.channel)
    if config.pairs:
        if config.data:
            raise InputError(f"{config.pairs}: give --data or --pairs, not both")
        source = Path(config.pairs)
        pairs = read_pairs_table(source, **reading)
    else:
        source = Path(config.data) if config.data else default_cells_tarball()
        pairs = read_image_pairs(source, image_tag=config.image_tag, mask_tag=config.mask_tag, **reading)
    h, w = pairs.images.shape[1:]
    if h % MULTIPLE or w % MULTIPLE:
        raise InputError(f"{source}: images are {h}x{w}; the U-Net needs multiples of {MULTIPLE} (use --resize H W)")
    try:
        split = split_indices(len(pairs.images), seed=config.seed, test_fraction=config.test_fraction,
                              val_fraction=config.val_fraction)
    except ValueError as err:
        raise InputError(f"{source}: {err}") from None
    return SegmentationData(str(source), list(pairs.names), pairs.images, pairs.masks, split, split_seed=config.seed,
                            labels=pairs.labels, normalize=config.normalize, channel=config.channel,
                            pixel_kind=pairs.pixel_kind)


def _resolve(config: Config, data: SegmentationData) -> Config:
    """What the data decides: its pixel type and normalisation (a prepared dataset's own)."""
    return dataclasses.replace(config, normalize=data.normalize, channel=data.channel, pixel_kind=data.pixel_kind)


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
                "origin": f"{'tarball' if path.is_file() else 'folder'} {path.name}", "pixel_kind": data.pixel_kind}
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
    resolve=_resolve,
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


TILE = 512  # predict's default tile side: ~20 MB of U-Net activations per tile at num_kernel 8
OVERLAP = 64


def predict_arrays(run, inputs, *, batch_size: int = 8, tile: int | None = None, overlap: int = OVERLAP,
                   tta: bool = False) -> np.ndarray:
    """Foreground probability per pixel of grey images.

    run: a run folder, 'pretrained:NAME', or what load_run returned. inputs: (N, H, W) (or
    one (H, W)) grey images normalised as in training (molml_jax.data.intensity.normalize
    with the run's config.normalize; / 255 for the course's 8-bit images), any H and W:
    zero-padded to multiples of 16 for the network and cropped back. tile: predict images
    larger than tile x tile in overlapping tiles (molml_jax.data.tiles; None: in one piece);
    tta: the mean of the 8 flips and rotations by 90 degrees. Returns (N, H, W) float32
    ((H, W) for one).
    """
    config, model, variables = common.resolve_run(_this, run)
    x = common.check_array(inputs, "inputs", ndim=(2, 3), what="grey images (N, H, W) or (H, W)")
    single = x.ndim == 2
    x = x[None] if single else x
    if tile is None and not tta:
        h, w = x.shape[1:]
        padded = np.pad(x, ((0, 0), (0, -h % MULTIPLE), (0, -w % MULTIPLE)))
        logits = common.apply_in_batches(model, variables, (padded,), batch_size=batch_size)
        probabilities = sigmoid(logits[:, :h, :w]).astype(np.float32)
    else:
        if tile is not None:
            check_tiling(tile, overlap, multiple=MULTIPLE)
        logits_of = _logits_function(model, variables)
        probabilities = np.stack([predict_tiled(logits_of, image, tile=_tile_side(tile, image.shape), overlap=overlap,
                                                batch_size=batch_size, tta=tta, multiple=MULTIPLE) for image in x])
    return probabilities[0] if single else probabilities


def _tile_side(tile: int | None, shape) -> int:
    """tile, or (None) one tile covering the whole padded image."""
    return tile if tile is not None else max(-(-side // MULTIPLE) * MULTIPLE for side in shape)


def _logits_function(model, variables):
    """(B, h, w) float32 tiles -> (B, h, w) logits, compiled once per tile shape."""
    return lambda tiles: common.apply_in_batches(model, variables, (tiles,), batch_size=len(tiles))


def _trained_kind(config: Config) -> str | None:
    """The pixel type new images must have: the training images' under the scale rule."""
    return config.pixel_kind if config.normalize == "scale" else None


def _predict_mask(run, raw: np.ndarray, where: str, *, threshold: float, **tiling) -> np.ndarray:
    """bool (H, W) foreground of one raw image, normalised by the run's rule and assembled
    band by band (peak memory: the image, this mask and one row of tiles)."""
    config, model, variables = run
    scale, offset = normalization(raw, config.normalize, trained_kind=_trained_kind(config), where=where)
    mask = np.zeros(raw.shape, dtype=bool)
    for start, band in iter_tiled_rows(_logits_function(model, variables), raw, scale=scale, offset=offset,
                                       multiple=MULTIPLE, **tiling):
        mask[start:start + len(band)] = band > threshold
    return mask


def predict(run_dir, input, output, *, threshold: float = 0.5, tile: int = TILE, overlap: int = OVERLAP,
            tta: bool = False, instances: bool = False, split_touching: bool = False, batch_size: int = 4) -> dict:
    """Write one 0/255 mask PNG per image of `input` (an image, or a folder or tarball of
    them) into the folder `output`, named by the image's stem. Images of any size and bit
    depth, normalised by the run's rule (config.normalize), predicted in tiles of `tile`
    pixels overlapping by `overlap` (molml_jax.data.tiles), with `tta` the mean of the 8
    flips and rotations by 90 degrees.

    instances: also STEM_labels.tif (uint16 objects: the mask's 8-connected components, or
    with split_touching a watershed on the distance transform) and objects.csv (image,
    label, area, centroid, bounding box, mean raw intensity). Everything is written to a
    temporary folder first: bad input leaves `output` as it was. Returns {'n', 'output',
    'objects' (with instances)}."""
    check_tiling(tile, overlap, multiple=MULTIPLE)
    run = load_run(run_dir)
    files = list_images(input)
    output = Path(output)
    # staged beside the output (same file system), which is only made once all is predicted
    staging = Path(tempfile.mkdtemp(prefix=".predict-", dir=next(p for p in (output, *output.parents) if p.exists())))
    try:
        tables, written = [], []
        for name, file in files:
            raw = file.read_raw(run[0].channel)
            mask = _predict_mask(run, raw, file.where, threshold=threshold, tile=tile, overlap=overlap, tta=tta,
                                 batch_size=batch_size)
            stem = Path(name).stem
            written.append(write_mask_png(staging / f"{stem}.png", mask).name)
            if instances:
                labels = label_instances(mask, split_touching=split_touching)
                del mask
                written.append(write_labels(staging / f"{stem}_labels.tif", labels).name)
                tables.append(object_table(name, labels, raw))
        if instances:
            table = pd.concat(tables, ignore_index=True)
            table.to_csv(staging / "objects.csv", index=False)
            written.append("objects.csv")
        output.mkdir(parents=True, exist_ok=True)
        for file_name in written:
            os.replace(staging / file_name, output / file_name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    result = {"n": len(files), "output": str(output)}
    if instances:
        result["objects"] = int(len(table))
    return result


def evaluate(run_dir, data=None, *, image_tag: str = "cells", mask_tag: str = "masks", pairs=None,
             split: str | None = None, output=None, threshold: float = 0.5, tile: int = TILE,
             overlap: int = OVERLAP, tta: bool = False, split_touching: bool = False, batch_size: int = 4) -> dict:
    """Dice, IoU and instance metrics of a trained run on image/mask pairs: a folder or
    tarball (`data`, with its tags), a `pairs` table, or (`split`) a split of the data the
    run was trained on (a pretrained model's card numbers).

    Per image: Dice and IoU of the mask at `threshold`; predicted objects as predict
    --instances makes them (split_touching: watershed), true objects from label-image masks
    or the mask's connected components. Instance metrics at IoU 0.5, 0.55, ..., 0.95
    (molml_jax.metrics.segmentation, module docstring): precision, recall, F1 and panoptic
    quality pooled over the images, and the Data Science Bowl 2018 AP = TP / (TP + FP + FN)
    per image, averaged. Writes them to `output` (JSON) when given. Returns the record."""
    check_tiling(tile, overlap, multiple=MULTIPLE)
    if sum(x is not None for x in (data, pairs, split)) != 1:
        raise InputError("evaluate: give one of --data DIR_OR_TAR, --pairs TABLE.csv or --split PART")
    run = load_run(run_dir)
    config = run[0]
    if split is not None:
        pairs_data = load_data(dataclasses.replace(config, devices=1))
        if split not in pairs_data.split:
            raise InputError(f"{run_dir}: its data has no '{split}' split")
        index = [int(i) for i in pairs_data.split[split]]
        names = [pairs_data.names[i] for i in index]
        # already normalised as in training: predicted as they are
        items = [(np.asarray(pairs_data.images[i]), np.asarray(pairs_data.masks[i]) > 0.5,
                  pairs_data.true_instances(i)) for i in index]
        source = f"{pairs_data.source} ({split} split, seed {config.seed})"
    else:
        reading = dict(binarize_masks=True, normalize=config.normalize, channel=config.channel)
        read = read_pairs_table(pairs, **reading) if pairs is not None else \
            read_image_pairs(data, image_tag=image_tag, mask_tag=mask_tag, **reading)
        if config.normalize == "scale" and read.pixel_kind != config.pixel_kind:
            raise InputError(f"{read.source}: {describe_kind(read.pixel_kind)} images, but {run_dir} was trained on "
                             f"{describe_kind(config.pixel_kind)} images with --normalize scale; convert them, or use "
                             "a model trained with --normalize percentile (independent of bit depth and gain)")
        names = list(read.names)
        items = [(read.images[i], read.masks[i] > 0.5, true_instances(read.labels[i] if read.labels else None,
                                                                       read.masks[i])) for i in range(len(read))]
        source = read.source
    logits_of = _logits_function(run[1], run[2])
    dice, iou, trues, preds, per_image = [], [], [], [], []
    for name, (image, truth, true_labels) in zip(names, items):
        probability = predict_tiled(logits_of, image, tile=tile, overlap=overlap, batch_size=batch_size, tta=tta,
                                    multiple=MULTIPLE)
        predicted = probability > threshold
        d, j = dice_and_iou(predicted[None], truth[None])
        labels = label_instances(predicted, split_touching=split_touching)
        counts = instance_metrics([true_labels], [labels])
        dice.append(float(d[0]))
        iou.append(float(j[0]))
        trues.append(true_labels)
        preds.append(labels)
        per_image.append({"name": name, "dice": float(d[0]), "iou": float(j[0]), "true_objects": int(counts["n_true"]),
                          "predicted_objects": int(counts["n_pred"]), "ap_50": counts["ap"][0], "f1_50": counts["f1"][0]})
    metrics = instance_metrics(trues, preds)
    record = {"checkpoint": str(run_dir), "data": source, "n_images": len(items), "threshold": threshold,
              "tile": tile, "overlap": overlap, "tta": tta, "split_touching": split_touching,
              "dice": float(np.mean(dice)), "iou": float(np.mean(iou)),
              "ap_50": metrics["ap"][0], "f1_50": metrics["f1"][0], "precision_50": metrics["precision"][0],
              "recall_50": metrics["recall"][0], "pq_50": metrics["pq"][0], "dsb_map": metrics["ap_mean"],
              "true_objects": int(metrics["n_true"]), "predicted_objects": int(metrics["n_pred"]),
              "instances": {k: metrics[k] for k in ("thresholds", "precision", "recall", "f1", "ap", "pq", "tp", "fp", "fn")},
              "per_image": per_image}
    if output is not None:
        write_json(Path(output), record)
    return record
