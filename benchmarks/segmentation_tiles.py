"""Large images: peak memory and time of `segmentation predict` on one 2,048 x 2,048 and one
8,192 x 8,192 image, tiled, against predicting the whole image in one piece.

    python -m benchmarks.segmentation_tiles                     # the shipped U-Net, 2048 and 8192
    python -m benchmarks.segmentation_tiles --sizes 1024,4096 --checkpoint runs/segmentation

The images are mosaics of the bundled course nuclei (8-bit, 256 x 256 each, flipped at
random), written once as PNG (8-bit) and as 16-bit TIFF x16 (a 12-bit camera's range); the
shipped model normalises both by its rule, the per-image percentiles (Cellpose's), and the
two give the same mask. Each measurement is a fresh
process running `python -m experiments.segmentation predict` (or, for "whole", one call of
predict_arrays without tiles on the image, what predict did before tiling); the peak
resident memory is the kernel's (wait4's ru_maxrss: the whole process, JAX, the image, the
mask and the PNG encoding). Tiles per second count the 512 x 512 tiles of one image over
the prediction's seconds (from the process's own clock, JAX start-up excluded).

Goal (issue "Segmentation on real microscopy"): the 8,192 image's peak within 2x the
2,048 image's. Writes benchmarks/results/segmentation_tiles.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.report import machine_facts, machine_line, write_report
from benchmarks.streaming import run_measured

RESULTS = Path(__file__).resolve().parent / "results"
MEMORY_GOAL = 2.0


def mosaic(size: int, seed: int = 0) -> np.ndarray:
    """(size, size) uint8: course nucleus images tiled at random, each flipped at random."""
    from molml_jax.data import default_cells_tarball, read_image_pairs

    images = np.round(read_image_pairs(default_cells_tarball()).images * 255).astype(np.uint8)
    rng = np.random.default_rng(seed)
    side = images.shape[1]
    out = np.empty((size, size), np.uint8)
    for top in range(0, size, side):
        for left in range(0, size, side):
            tile = images[rng.integers(len(images))]
            tile = tile[:, ::-1] if rng.random() < 0.5 else tile
            out[top:top + side, left:left + side] = tile[: size - top, : size - left]
    return out


def write_images(work: Path, size: int) -> dict[str, Path]:
    from PIL import Image
    import tifffile

    paths = {"8-bit PNG": work / f"mosaic_{size}.png", "16-bit TIFF x16": work / f"mosaic_{size}_16bit.tif"}
    if not all(p.exists() for p in paths.values()):
        image = mosaic(size)
        Image.fromarray(image).save(paths["8-bit PNG"])
        tifffile.imwrite(paths["16-bit TIFF x16"], image.astype(np.uint16) * 16)
    return paths


def one(args) -> None:
    """In the measured process: predict one image, write {'seconds'} to --record as JSON."""
    from molml_jax.process import prepare_process

    prepare_process(1)
    from molml_jax.pipelines import segmentation

    if args.mode == "whole":
        from molml_jax.data.images import list_images
        from molml_jax.data.intensity import normalize

        run = segmentation.load_run(args.checkpoint)
        (_, file), = list_images(args.image)
        start = time.perf_counter()
        image = normalize(file.read_raw(run[0].channel), run[0].normalize)
        segmentation.predict_arrays(run, image)
    else:
        start = time.perf_counter()
        segmentation.predict(args.checkpoint, args.image, args.output, tile=args.tile, overlap=args.overlap,
                             instances=args.instances)
    Path(args.record).write_text(json.dumps({"seconds": time.perf_counter() - start}))


def measure(checkpoint: str, image: Path, mode: str, out: Path, tile: int, overlap: int, instances: bool) -> dict:
    record = out.with_suffix(".json")
    argv = ["-m", "benchmarks.segmentation_tiles", "--one", "--mode", mode, "--image", str(image), "--checkpoint",
            checkpoint, "--output", str(out), "--tile", str(tile), "--overlap", str(overlap), "--record", str(record)]
    rss, wall, _ = run_measured(argv + (["--instances"] if instances else []))
    return {"peak_rss_bytes": rss, "wall_seconds": wall, **json.loads(record.read_text())}


def same_masks(out: Path, size: int) -> bool:
    """Whether the 8-bit image and its x16 16-bit copy got the identical mask."""
    from PIL import Image

    masks = [np.asarray(Image.open(out / f"mosaic_{size}{suffix}.png")) for suffix in ("", "_16bit")]
    return bool(np.array_equal(*masks))


def normalisation_seconds(work: Path, size: int) -> list[dict]:
    """Seconds to find each rule's (scale, offset) for the largest image, 8- and 16-bit (the
    percentile rule counts a histogram of the pixels; best of 3)."""
    from molml_jax.data.images import list_images
    from molml_jax.data.intensity import normalization

    rows = []
    for kind, path in write_images(work, size).items():
        (_, file), = list_images(path)
        raw = file.read_raw()
        for rule in ("scale", "percentile"):
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                normalization(raw, rule)
                best = min(best, time.perf_counter() - start)
            rows.append({"image": kind, "size": size, "rule": rule, "seconds": best})
    return rows


def tiles_of(size: int, tile: int, overlap: int) -> int:
    from molml_jax.data.tiles import tile_starts

    return len(tile_starts(size, tile, overlap)) ** 2


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2048,8192", help="image sides, comma-separated (default: 2048,8192)")
    parser.add_argument("--checkpoint", default="pretrained:unet-nuclei", help="the model (default: the shipped U-Net)")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--whole-up-to", type=int, default=4096, help="also predict images up to this side in one "
                        "piece, for comparison (default: 4096)")
    parser.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--results", default=str(RESULTS))
    # the measured process
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="tiled", help=argparse.SUPPRESS)
    parser.add_argument("--image", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--instances", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--record", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        return one(args)
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(args.out or tempfile.mkdtemp(prefix="seg-tiles-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in sizes:
        for kind, image in write_images(work, size).items():
            modes = [("tiled", False), ("tiled", True)] if kind == "8-bit PNG" else [("tiled", False)]
            if kind == "8-bit PNG" and size <= args.whole_up_to:
                modes.append(("whole", False))
            for mode, instances in modes:
                record = measure(args.checkpoint, image, mode, work / f"out_{size}_{mode}", args.tile, args.overlap,
                                 instances)
                record.update(size=size, image=kind, mode=mode + (" + instances" if instances else ""),
                              tiles=tiles_of(size, args.tile, args.overlap) if mode == "tiled" else 1)
                record["tiles_per_second"] = record["tiles"] / record["seconds"] if mode == "tiled" else None
                rows.append(record)
                print(f"{size}: {kind}, {record['mode']}: {record['peak_rss_bytes'] / 2**30:.2f} GiB peak, "
                      f"{record['seconds']:.1f} s", file=sys.stderr)
    rules = normalisation_seconds(work, max(sizes))
    same = {size: same_masks(work / f"out_{size}_tiled", size) for size in sizes}
    tiled = {r["size"]: r["peak_rss_bytes"] for r in rows if r["mode"] == "tiled" and r["image"] == "8-bit PNG"}
    result = {"machine": machine_facts(), "checkpoint": args.checkpoint, "tile": args.tile, "overlap": args.overlap,
              "rows": rows, "normalisation": rules, "same_mask_8_and_16_bit": same,
              "memory_ratio": tiled[max(tiled)] / tiled[min(tiled)], "memory_goal": MEMORY_GOAL}
    print(write_report(Path(args.results), "segmentation_tiles", result, markdown))


def markdown(result: dict) -> str:
    lines = [f"# Large images: tiled prediction (tile {result['tile']}, overlap {result['overlap']})", "",
             f"`python -m benchmarks.segmentation_tiles` with `{result['checkpoint']}`; {machine_line(result['machine'])}",
             "", "| image | pixels | mode | peak RSS (GiB) | seconds | tiles/s |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        rate = f"{r['tiles_per_second']:.2f}" if r["tiles_per_second"] else "-"
        lines.append(f"| {r['image']} | {r['size']} x {r['size']} | {r['mode']} | "
                     f"{r['peak_rss_bytes'] / 2**30:.2f} | {r['seconds']:.1f} | {rate} |")
    lines += ["", "Finding the normalisation of the largest image (then applied tile by tile):", "",
              "| image | rule | seconds |", "|---|---|---|"]
    lines += [f"| {r['image']}, {r['size']} x {r['size']} | {r['rule']} | {r['seconds']:.3f} |"
              for r in result.get("normalisation", [])]
    same = ", ".join(f"{size}: {'yes' if v else 'NO'}" for size, v in result.get("same_mask_8_and_16_bit", {}).items())
    lines += ["", f"The 8-bit image and its x16 16-bit copy got the identical mask: {same}."]
    ok = "within" if result["memory_ratio"] <= result["memory_goal"] else "NOT within"
    lines += ["", f"Tiled peak memory, largest / smallest image: **{result['memory_ratio']:.2f}x** ({ok} the goal of "
              f"{result['memory_goal']:.0f}x) for {max(r['size'] for r in result['rows']) ** 2 / min(r['size'] for r in result['rows']) ** 2:.0f}x the pixels.",
              "", "Peak RSS is the whole process (Python, JAX, the model, the image, the mask, PNG encoding);",
              "seconds are the prediction's own (start-up and compilation of the first tile shape included)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
