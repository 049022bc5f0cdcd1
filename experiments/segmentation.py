"""Nucleus segmentation with the course's U-Net (problem set 2, part 2).

    python -m experiments.segmentation                       # train on the bundled course images (20 epochs)
    python -m experiments.segmentation --data my_pairs/ --image-tag raw --mask-tag label --out runs/mine
    python -m experiments.segmentation sweep --lrs 1e-3,3e-4 --epochs 10
    python -m experiments.segmentation predict --checkpoint runs/segmentation --input images/ --output masks/
    python -m experiments.segmentation predict --checkpoint pretrained:unet-nuclei --input slide.tif --output out/ --instances
    python -m experiments.segmentation evaluate --checkpoint runs/segmentation --data pairs/ --output metrics.json
    python -m experiments.segmentation --data my_tiffs/ --image-tag img --mask-tag label --normalize percentile
    python -m experiments.segmentation simulate --out data/synthetic_nuclei --n 200 --size 128
    python -m experiments.segmentation prepare --out data/seg   # TFDS dataset of the pairs and split
    python -m experiments.segmentation train --data data/seg

`python -m experiments.segmentation train --help` lists every setting with its default.
"""

from __future__ import annotations

from experiments import _cli


def build_parser():
    from molml_jax.pipelines import segmentation

    parser, sub = _cli.build_parser("python -m experiments.segmentation", __doc__)
    _cli.add_train_command(sub, segmentation)
    _cli.add_sweep_command(sub, segmentation)
    pred = _cli.add_run_command(sub, "predict", "write a 0/255 mask PNG for every input image (any size and bit depth)",
                                "an image file, or a folder or tarball of images")
    pred.add_argument("--output", required=True, help="folder for the mask PNGs (same stems)")
    pred.add_argument("--instances", action="store_true",
                      help="also write STEM_labels.tif (uint16 objects) per image and objects.csv (area, centroid, "
                           "bounding box, mean intensity per object)")
    ev = _cli.add_command(sub, "evaluate", "print and write Dice, IoU and instance metrics (precision, recall, F1, "
                                           "DSB AP, PQ at IoU 0.5-0.95) on image/mask pairs")
    ev.add_argument("--checkpoint", required=True, metavar="RUN", help=_cli.RUN_HELP)
    ev.add_argument("--data", metavar="DIR_OR_TAR", help="folder or tarball of image/mask pairs")
    ev.add_argument("--image-tag", default="cells", help="images are NAME_<tag>.EXT or <tag>_NAME.EXT (default: cells)")
    ev.add_argument("--mask-tag", default="masks", help="masks (0/255 or label images) are NAME_<tag>.EXT or "
                                                        "<tag>_NAME.EXT (default: masks)")
    ev.add_argument("--pairs", metavar="TABLE.csv", help="instead of --data: a table with columns image, mask")
    _cli.add_split(ev, instead_of="--data or --pairs")
    ev.add_argument("--output", required=True, metavar="METRICS.json", help="the metrics, overall and per image")
    for cmd in (pred, ev):
        cmd.add_argument("--tile", type=_cli.positive_int, default=segmentation.TILE,
                         help=f"predict images larger than this in overlapping square tiles of this side, a multiple "
                              f"of 16 (default: {segmentation.TILE}); peak memory follows the tile, not the image")
        cmd.add_argument("--overlap", type=_cli.non_negative_int, default=segmentation.OVERLAP,
                         help=f"pixels shared by neighbouring tiles, blended smoothly (default: {segmentation.OVERLAP})")
        cmd.add_argument("--tta", action="store_true", help="average the 8 flips and rotations by 90 degrees")
        cmd.add_argument("--split-touching", action="store_true",
                         help="separate touching nuclei by a watershed on the distance transform (scikit-image)")
    sim = _cli.add_command(sub, "simulate", "write synthetic nucleus image/mask PNG pairs (a second dataset)")
    sim.add_argument("--out", required=True, help="folder to write the pairs into")
    sim.add_argument("--n", type=_cli.positive_int, default=200, help="number of pairs (default: 200)")
    sim.add_argument("--size", type=_cli.positive_int, default=128, help="height = width in pixels (default: 128)")
    sim.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    sim.add_argument("--image-tag", default="img", help="images are NAME_<tag>.png (default: img)")
    sim.add_argument("--mask-tag", default="label", help="masks are NAME_<tag>.png (default: label)")
    _cli.add_prepare_command(sub, segmentation)  # after the older commands: their list keeps its order
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _cli.parse(build_parser(), argv)
    from molml_jax.distributed import leave_at_once_on_error
    from molml_jax.errors import InputError, exit_on_user_error
    from molml_jax.process import prepare_process

    with exit_on_user_error():  # bad multi-process flags, an unreachable coordinator: one line
        prepare_process(_cli.devices_of(args), distributed=_cli.distributed_of(args))
    from molml_jax.pipelines import segmentation

    # a failing process of a multi-process job exits at once (its peers' launcher sees it)
    with leave_at_once_on_error(), exit_on_user_error():
        if _cli.run_training_command(segmentation, args):
            return
        if args.command == "simulate":
            from molml_jax.data.synthetic_nuclei import write_synthetic_nuclei

            try:
                folder = write_synthetic_nuclei(args.out, args.n, args.size, args.seed,
                                                image_tag=args.image_tag, mask_tag=args.mask_tag)
            except (ValueError, OSError) as err:  # bad settings, or an unwritable --out
                raise InputError(f"{args.out}: cannot simulate: {err}") from None
            print(f"wrote {args.n} pairs *_{args.image_tag}.png + *_{args.mask_tag}.png to {folder}")
        elif args.command == "evaluate":
            record = segmentation.evaluate(
                args.checkpoint, args.data, image_tag=args.image_tag, mask_tag=args.mask_tag, pairs=args.pairs,
                split=args.split, output=args.output, tile=args.tile, overlap=args.overlap, tta=args.tta,
                split_touching=args.split_touching)
            print(f"Dice {record['dice']:.4f}, IoU {record['iou']:.4f} (means over {record['n_images']} images); "
                  f"{record['predicted_objects']} objects predicted, {record['true_objects']} true")
            print(f"at IoU 0.5: precision {record['precision_50']:.4f}, recall {record['recall_50']:.4f}, "
                  f"F1 {record['f1_50']:.4f}, PQ {record['pq_50']:.4f}, DSB AP {record['ap_50']:.4f}; "
                  f"DSB mAP (0.5-0.95) {record['dsb_map']:.4f}")
            print(f"wrote {args.output}")
        else:
            result = segmentation.predict(args.checkpoint, args.input, args.output, tile=args.tile,
                                          overlap=args.overlap, tta=args.tta, instances=args.instances,
                                          split_touching=args.split_touching)
            objects = f", {result['objects']} objects in objects.csv" if args.instances else ""
            print(f"wrote {result['n']} masks to {result['output']}{objects}")


if __name__ == "__main__":
    main()
