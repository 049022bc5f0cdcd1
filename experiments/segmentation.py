"""Nucleus segmentation with the course's U-Net (problem set 2, part 2).

    python -m experiments.segmentation                       # train on the bundled course images (20 epochs)
    python -m experiments.segmentation --data my_pairs/ --image-tag raw --mask-tag label --out runs/mine
    python -m experiments.segmentation predict --checkpoint runs/segmentation --input images/ --output masks/
    python -m experiments.segmentation synthesize --out data/synthetic_nuclei --n 200 --size 128
"""

from __future__ import annotations

import argparse
import json

from experiments._cli import (
    parse_with_default_command, positive_float, positive_int, prepare_process,
)

COMMANDS = {"train", "predict", "synthesize"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.segmentation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    train = sub.add_parser("train", help="train and test (the default command)")
    train.add_argument("--data", help="folder or .tar.gz of image/mask pairs (default: bundled course data)")
    train.add_argument("--image-tag", default="cells", help="images are NAME_<tag>.ext")
    train.add_argument("--mask-tag", default="masks", help="masks are NAME_<tag>.ext")
    train.add_argument("--resize", type=positive_int, nargs=2, metavar=("H", "W"))
    train.add_argument("--binarize-masks", action="store_true", help="threshold masks at 0.5")
    train.add_argument("--rotation", type=float, default=180.0, metavar="DEGREES",
                       help="random rotation of training pairs in [-DEGREES, DEGREES]; 0 turns it off")
    train.add_argument("--epochs", type=positive_int, default=20)
    train.add_argument("--batch-size", type=positive_int, default=4)
    train.add_argument("--lr", type=positive_float, default=1e-3)
    train.add_argument("--num-kernel", type=positive_int, default=8)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--devices", type=positive_int, default=1)
    train.add_argument("--driver", choices=["auto", "scan", "loop"], default="auto")
    train.add_argument("--early-stopping", type=positive_int, default=None, metavar="PATIENCE")
    train.add_argument("--out", default="runs/segmentation")
    train.add_argument("--quiet", action="store_true")
    pred = sub.add_parser("predict", help="write a 0/255 mask PNG for every input image")
    pred.add_argument("--checkpoint", required=True, metavar="RUN")
    pred.add_argument("--input", required=True, help="an image file or a folder of images")
    pred.add_argument("--output", required=True, help="folder for the mask PNGs (same stems)")
    synth = sub.add_parser("synthesize", help="write synthetic nucleus image/mask PNG pairs (a second dataset)")
    synth.add_argument("--out", required=True, help="folder to write the pairs into")
    synth.add_argument("--n", type=positive_int, default=200, help="number of pairs (default 200)")
    synth.add_argument("--size", type=positive_int, default=128, help="height = width in pixels (default 128)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--image-tag", default="img")
    synth.add_argument("--mask-tag", default="label")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = parse_with_default_command(build_parser(), COMMANDS, "train", argv)
    prepare_process(args.devices if args.command == "train" else 1)
    from molml_jax.errors import InputError, exit_on_user_error
    from molml_jax.pipelines import segmentation as seg

    with exit_on_user_error():
        if args.command == "synthesize":
            from molml_jax.data.synthetic_nuclei import write_synthetic_nuclei

            try:
                folder = write_synthetic_nuclei(args.out, args.n, args.size, args.seed,
                                                image_tag=args.image_tag, mask_tag=args.mask_tag)
            except (ValueError, OSError) as err:  # bad settings, or an unwritable --out
                raise InputError(f"{args.out}: cannot synthesize: {err}") from None
            print(f"wrote {args.n} pairs *_{args.image_tag}.png + *_{args.mask_tag}.png to {folder}")
        elif args.command == "train":
            config = seg.SegmentationConfig(
                data=args.data, image_tag=args.image_tag, mask_tag=args.mask_tag,
                resize=tuple(args.resize) if args.resize else None, binarize_masks=args.binarize_masks,
                rotation=args.rotation, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                num_kernel=args.num_kernel, seed=args.seed, devices=args.devices, driver=args.driver,
                early_stopping_patience=args.early_stopping, out=args.out)
            summary = seg.train_and_evaluate(config, progress=not args.quiet)
            print(json.dumps({k: summary[k] for k in ("test_dice", "test_iou", "test_map", "best_epoch",
                                                      "epochs_run", "median_epoch_seconds")}, indent=1))
            print(f"run folder: {config.out}")
        else:
            result = seg.predict(args.checkpoint, args.input, args.output)
            print(f"wrote {result['n']} masks to {result['output']}")


if __name__ == "__main__":
    main()
