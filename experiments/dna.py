"""DNA binding sites with a bidirectional LSTM (course problem set 2, part 1).

    python -m experiments.dna                      # train on the bundled course data (500 epochs)
    python -m experiments.dna --epochs 50 --out runs/dna50
    python -m experiments.dna predict --checkpoint runs/dna --input seqs.fasta --output probs.csv
    python -m experiments.dna evaluate --checkpoint runs/dna --input labeled.csv

Expected with the defaults (seed 0): test AUC ~0.93 (see README results table).
"""

from __future__ import annotations

import argparse
import json

from experiments._cli import parse_with_default_command, positive_float, positive_int, prepare_process

COMMANDS = {"train", "predict", "evaluate"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.dna", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    train = sub.add_parser("train", help="train and test (the default command)")
    train.add_argument("--data", help="CSV/TSV with sequence and 0/1 label columns (default: bundled course data)")
    train.add_argument("--seq-column", default="seq")
    train.add_argument("--label-column", default="bind")
    train.add_argument("--epochs", type=positive_int, default=500)
    train.add_argument("--batch-size", type=positive_int, default=256)
    train.add_argument("--hidden-dim", type=positive_int, default=16)
    train.add_argument("--lr", type=positive_float, default=1e-2)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--devices", type=positive_int, default=1,
                       help="data-parallel devices (on CPU: forced host devices, one per core)")
    train.add_argument("--driver", choices=["auto", "scan", "loop"], default="auto",
                       help="epoch driver; auto = the measured faster one for this backend")
    train.add_argument("--early-stopping", type=positive_int, default=None, metavar="PATIENCE",
                       help="stop after PATIENCE epochs without a lower validation loss")
    train.add_argument("--checkpoint-every", type=positive_int, default=10, metavar="EPOCHS",
                       help="save the latest and best model every EPOCHS epochs (and at the end)")
    train.add_argument("--out", default="runs/dna", help="run folder; an existing run there is resumed")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    for name, text in (("predict", "write probabilities for a CSV or FASTA file"),
                       ("evaluate", "print the AUC on a labeled CSV file")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--checkpoint", required=True, metavar="RUN", help="run folder of a trained model")
        cmd.add_argument("--input", required=True, help="CSV/TSV (seq column) or FASTA")
        if name == "predict":
            cmd.add_argument("--output", required=True, help="CSV to write (input columns + probability)")
        cmd.add_argument("--seq-column", default="seq")
        cmd.add_argument("--label-column", default="bind")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = parse_with_default_command(build_parser(), COMMANDS, "train", argv)
    prepare_process(args.devices if args.command == "train" else 1)
    from molml_jax.errors import exit_on_user_error
    from molml_jax.pipelines import dna

    with exit_on_user_error():
        if args.command == "train":
            config = dna.DNAConfig(
                data=args.data, seq_column=args.seq_column, label_column=args.label_column,
                epochs=args.epochs, batch_size=args.batch_size, hidden_dim=args.hidden_dim,
                lr=args.lr, seed=args.seed, devices=args.devices, driver=args.driver,
                early_stopping_patience=args.early_stopping, checkpoint_every=args.checkpoint_every,
                out=args.out,
            )
            summary = dna.train_and_evaluate(config, progress=not args.quiet)
            print(json.dumps({k: summary[k] for k in ("test_auc", "best_epoch", "epochs_run",
                                                      "median_epoch_seconds")}, indent=1))
            print(f"run folder: {config.out}")
        elif args.command == "predict":
            result = dna.predict(args.checkpoint, args.input, args.output,
                                 seq_column=args.seq_column, label_column=args.label_column)
            auc = f", AUC {result['auc']:.4f}" if result["auc"] is not None else ""
            print(f"wrote {result['n']} probabilities to {args.output}{auc}")
        else:
            result = dna.evaluate(args.checkpoint, args.input,
                                  seq_column=args.seq_column, label_column=args.label_column)
            print(f"AUC {result['auc']:.4f} on {result['n']} sequences of {args.input}")


if __name__ == "__main__":
    main()
