"""TF-binding profiles with a residual 1-D CNN, and learning-rate sweeps (the study).

    python -m experiments.tf_binding simulate --out data/sim --windows 5000 --length 300 --seed 0
    python -m experiments.tf_binding                         # train on simulated windows
    python -m experiments.tf_binding --sequences S.tsv.gz --scores C.tsv.gz --out runs/tf
    python -m experiments.tf_binding sweep --lrs 1e-2,1e-3,1e-4 --epochs 5 --parallel vmap

Expected with the simulated default (5,000 windows, seed 0): see the README results.
"""

from __future__ import annotations

import argparse
import json

from experiments._cli import parse_with_default_command, positive_float, positive_int, prepare_process

COMMANDS = {"train", "sweep", "simulate"}


def _rates(text: str) -> list[float]:
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
    if not rates or any(not r > 0 for r in rates):
        raise argparse.ArgumentTypeError(f"learning rates must be positive: {text!r}")
    return rates


def _training_arguments(cmd: argparse.ArgumentParser, *, epochs: int, out: str) -> None:
    cmd.add_argument("--sequences", help="sequences TSV(.gz) with window_name, sequence")
    cmd.add_argument("--scores", help="scores TSV(.gz): one column per window, one row per base")
    cmd.add_argument("--windows", type=positive_int, default=5000, help="simulated windows (no files given)")
    cmd.add_argument("--length", type=positive_int, default=300, help="simulated window length")
    cmd.add_argument("--data-seed", type=int, default=0, help="seed of the simulated windows")
    cmd.add_argument("--motifs", default="CTCF", help="motifs planted in simulated windows: IDs/names, or 'all'")
    cmd.add_argument("--epochs", type=positive_int, default=epochs)
    cmd.add_argument("--batch-size", type=positive_int, default=64)
    cmd.add_argument("--weight-decay", type=float, default=1e-5)
    cmd.add_argument("--patience", type=positive_int, default=10, help="early stopping patience (epochs)")
    cmd.add_argument("--seed", type=int, default=0)
    cmd.add_argument("--devices", type=positive_int, default=1)
    cmd.add_argument("--driver", choices=["auto", "scan", "loop"], default="auto")
    cmd.add_argument("--out", default=out)
    cmd.add_argument("--quiet", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.tf_binding", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    train = sub.add_parser("train", help="train one model (the default command)")
    _training_arguments(train, epochs=100, out="runs/tf_binding")
    train.add_argument("--lr", type=positive_float, default=1e-2)
    train.add_argument("--checkpoint-every", type=positive_int, default=1, metavar="EPOCHS")
    sweep = sub.add_parser("sweep", help="learning-rate grid search in one program")
    _training_arguments(sweep, epochs=5, out="runs/tf_binding_sweep")
    sweep.add_argument("--lrs", type=_rates, default=[1e-2, 1e-3, 1e-4], help="comma-separated rates")
    sweep.add_argument("--seeds", type=positive_int, default=1, help="repeat each rate over K seeds")
    sweep.add_argument("--parallel", choices=["auto", "vmap", "sequential"], default="auto")
    sweep.add_argument("--wandb", action="store_true", help="log each configuration to Weights & Biases")
    sim = sub.add_parser("simulate", help="write simulated windows in the study's two-file format")
    sim.add_argument("--out", required=True, help="folder for sequences.tsv.gz and scores.tsv.gz")
    sim.add_argument("--windows", type=positive_int, default=5000)
    sim.add_argument("--length", type=positive_int, default=300)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--motifs", default="CTCF", help="bundled JASPAR motifs to plant (IDs/names), or 'all'")
    return parser


def _config(args, **extra):
    from molml_jax.pipelines.tf_binding import TFBindingConfig

    return TFBindingConfig(
        sequences=args.sequences, scores=args.scores, simulate_windows=args.windows,
        simulate_length=args.length, simulate_seed=args.data_seed, simulate_motifs=args.motifs, epochs=args.epochs,
        batch_size=args.batch_size, weight_decay=args.weight_decay,
        early_stopping_patience=args.patience, seed=args.seed, devices=args.devices,
        driver=args.driver, out=args.out, **extra)


def main(argv: list[str] | None = None) -> None:
    args = parse_with_default_command(build_parser(), COMMANDS, "train", argv)
    prepare_process(args.devices if args.command != "simulate" else 1)
    from molml_jax.errors import exit_on_user_error

    with exit_on_user_error():
        if args.command == "simulate":
            from pathlib import Path

            from molml_jax.data.tf_binding import simulate_tf_binding, write_tf_binding

            from molml_jax.pipelines.tf_binding import motif_list

            names, sequences, scores, planted = simulate_tf_binding(args.windows, args.length, seed=args.seed,
                                                                    motifs=motif_list(args.motifs))
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            write_tf_binding(out / "sequences.tsv.gz", out / "scores.tsv.gz", names, sequences, scores)
            print(f"wrote {len(names)} windows of {args.length} bp ({len(planted)} planted motif instances, "
                  f"{(scores > 0).mean():.1%} of bases scored) to {out}/sequences.tsv.gz and scores.tsv.gz")
        elif args.command == "train":
            from molml_jax.pipelines import tf_binding

            config = _config(args, lr=args.lr, checkpoint_every=args.checkpoint_every)
            summary = tf_binding.train_and_evaluate(config, progress=not args.quiet)
            print(json.dumps({k: summary[k] for k in ("best_val_loss", "best_val_pearson", "best_epoch",
                                                      "epochs_run", "median_epoch_seconds")}, indent=1))
            print(f"run folder: {config.out}")
        else:
            from molml_jax.pipelines import tf_binding

            tf_binding.sweep(_config(args), args.lrs, seeds=args.seeds, parallel=args.parallel,
                                      progress=not args.quiet, wandb=args.wandb)
            print((__import__("pathlib").Path(args.out) / "sweep.md").read_text())


if __name__ == "__main__":
    main()
