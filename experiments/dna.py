"""DNA binding sites with a bidirectional LSTM (the course's problem set 2, part 1).

    python -m experiments.dna                      # train on the bundled course data (500 epochs)
    python -m experiments.dna --epochs 50 --out runs/dna50
    python -m experiments.dna train --config runs/dna50/config.json --seed 1 --out runs/dna50_s1
    python -m experiments.dna sweep --lrs 1e-2,3e-3 --seeds 4 --epochs 50
    python -m experiments.dna predict --checkpoint runs/dna --input seqs.fasta --output probs.csv
    python -m experiments.dna evaluate --checkpoint runs/dna --input labeled.csv
    python -m experiments.dna evaluate --checkpoint pretrained:dna-bilstm --split test   # its model card's AUC
    python -m experiments.dna predict --checkpoint runs/s0,runs/s1 --rc-average --input seqs.fasta --output p.csv
    python -m experiments.dna attribute --checkpoint runs/dna --input seqs.fasta --method ism --output ism.npz --plot 2
    python -m experiments.dna variants --checkpoint runs/dna --variants snvs.vcf.gz --reference hg38.fa --output effects.tsv
    python -m experiments.dna predict --checkpoint runs/dna --bed peaks.narrowPeak --reference hg38.fa --output peaks.tsv
    python -m experiments.dna prepare --out data/dna       # TFDS dataset of the data and split
    python -m experiments.dna train --data data/dna --epochs 50

Expected with the defaults (seed 0): test AUC ~0.95 (README, Results).
`python -m experiments.dna train --help` lists every setting with its default.
"""

from __future__ import annotations

from experiments import _cli


def build_parser():
    from molml_jax.pipelines import dna

    parser, sub = _cli.build_parser("python -m experiments.dna", __doc__)
    _cli.add_train_command(sub, dna)
    _cli.add_sweep_command(sub, dna)
    for name, text in (("predict", "write probabilities for a CSV/TSV or FASTA file (or BED intervals)"),
                       ("evaluate", "print the AUC on a labeled CSV/TSV file")):
        cmd = _cli.add_run_command(sub, name, text, "CSV/TSV (sequence column) or FASTA", sequences=True)
        if name == "predict":
            cmd.add_argument("--output", required=True, help="CSV to write (input columns + probability); "
                                                             "with --bed a TSV (the intervals' fields + probability)")
            _cli.add_length(cmd, dna)
        _add_columns(cmd)
    _cli.add_prepare_command(sub, dna)  # after the older commands: their list keeps its order
    _add_columns(_cli.add_interpretation_commands(sub, dna, "CSV/TSV (sequence column) or FASTA")["attribute"],
                 labels=False)
    return parser


def _add_columns(cmd, labels: bool = True) -> None:
    cmd.add_argument("--seq-column", default="seq", help="column of the sequences (default: seq)")
    if labels:
        cmd.add_argument("--label-column", default="bind", help="column of the 0/1 labels (default: bind)")


def main(argv: list[str] | None = None) -> None:
    args = _cli.parse(build_parser(), argv)
    from molml_jax.distributed import leave_at_once_on_error
    from molml_jax.errors import exit_on_user_error
    from molml_jax.process import prepare_process

    with exit_on_user_error():  # bad multi-process flags, an unreachable coordinator: one line
        prepare_process(_cli.devices_of(args), distributed=_cli.distributed_of(args))
    from molml_jax.pipelines import dna

    # a failing process of a multi-process job exits at once (its peers' launcher sees it)
    with leave_at_once_on_error(), exit_on_user_error():
        if _cli.run_training_command(dna, args):
            return
        if _cli.run_interpretation_command(dna, args, {"seq_column": getattr(args, "seq_column", "seq")}):
            return
        if args.command == "evaluate" and _cli.run_split_evaluation(dna, args):
            return
        columns = {"seq_column": args.seq_column, "label_column": args.label_column, "rc_average": args.rc_average}
        if args.command == "predict":
            result = dna.predict(args.checkpoint, args.input, args.output, **columns)
            auc = f", AUC {result['auc']:.4f}" if result["auc"] is not None else ""
            print(f"wrote {result['n']} probabilities to {args.output}{auc}")
        else:
            result = dna.evaluate(args.checkpoint, args.input, **columns)
            print(f"AUC {result['auc']:.4f} on {result['n']} sequences of {args.input}")


if __name__ == "__main__":
    main()
