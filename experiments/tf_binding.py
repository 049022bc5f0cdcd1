"""TF-binding profiles with a residual 1-D CNN, and learning-rate sweeps (the TF-binding study).

    python -m experiments.tf_binding simulate --out data/sim --windows 5000 --length 300 --seed 0
    python -m experiments.tf_binding                         # train on simulated windows
    python -m experiments.tf_binding --sequences S.tsv.gz --scores C.tsv.gz --out runs/tf
    python -m experiments.tf_binding sweep --lrs 1e-2,1e-3,1e-4 --epochs 5 --seeds 3
    python -m experiments.tf_binding predict --checkpoint runs/tf --input S.tsv.gz --output P.tsv.gz
    python -m experiments.tf_binding evaluate --checkpoint runs/tf --input S.tsv.gz --scores C.tsv.gz
    python -m experiments.tf_binding evaluate --checkpoint pretrained:tf-cnn-ctcf --split val   # its model card's R
    python -m experiments.tf_binding prepare --out data/tf --simulate-windows 5000
    python -m experiments.tf_binding train --data data/tf
    python -m experiments.tf_binding attribute --checkpoint runs/tf --input S.tsv.gz --output ig.npz --plot 3
    python -m experiments.tf_binding variants --checkpoint runs/tf --variants snvs.vcf --reference hg38.fa --output e.tsv

Expected with the simulated default (5,000 windows, seed 0): see the README results.
`python -m experiments.tf_binding train --help` lists every setting with its default.
"""

from __future__ import annotations

from experiments import _cli


def build_parser():
    from molml_jax.pipelines import tf_binding

    parser, sub = _cli.build_parser("python -m experiments.tf_binding", __doc__)
    _cli.add_train_command(sub, tf_binding)
    _cli.add_sweep_command(sub, tf_binding)
    windows = "sequences TSV(.gz) (window_name, sequence) or FASTA"
    pred = _cli.add_run_command(sub, "predict", "write predicted scores per base in the study's scores format "
                                "(or a summary per BED interval)", windows, sequences=True)
    ev = _cli.add_run_command(sub, "evaluate", "print Pearson R and MSE against a scores file", windows, sequences=True)
    pred.add_argument("--output", required=True, help="scores TSV to write (.gz: gzip); one column per window; "
                                                      "with --bed a TSV (the intervals' fields + score sum and maximum)")
    ev.add_argument("--scores", help="scores TSV(.gz) of the --input windows")
    sim = _cli.add_command(sub, "simulate", "write simulated windows in the study's two-file format")
    sim.add_argument("--out", required=True, help="folder for sequences.tsv.gz and scores.tsv.gz")
    sim.add_argument("--windows", type=_cli.positive_int, default=5000, help="number of windows (default: 5000)")
    sim.add_argument("--length", type=_cli.positive_int, default=300, help="bases per window (default: 300)")
    sim.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    sim.add_argument("--motifs", default="CTCF", help="bundled JASPAR motifs to plant (IDs/names), or 'all' (default: CTCF)")
    _cli.add_prepare_command(sub, tf_binding)  # after the older commands: their list keeps its order
    _cli.add_interpretation_commands(sub, tf_binding, windows)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _cli.parse(build_parser(), argv)
    from molml_jax.distributed import leave_at_once_on_error
    from molml_jax.errors import InputError, exit_on_user_error
    from molml_jax.process import prepare_process

    with exit_on_user_error():  # bad multi-process flags, an unreachable coordinator: one line
        prepare_process(_cli.devices_of(args), distributed=_cli.distributed_of(args))
    from molml_jax.pipelines import tf_binding

    # a failing process of a multi-process job exits at once (its peers' launcher sees it)
    with leave_at_once_on_error(), exit_on_user_error():
        if _cli.run_training_command(tf_binding, args) or _cli.run_interpretation_command(tf_binding, args, {}):
            return
        if args.command == "simulate":
            from pathlib import Path

            import numpy as np

            from molml_jax.data.tf_binding import iter_simulated_tf_binding, write_tf_binding_chunks

            # chunk by chunk, so large sets never sit in memory; the summary is tallied on the way
            chunks = iter_simulated_tf_binding(
                args.windows, args.length, seed=args.seed, motifs=tf_binding.motif_list(args.motifs))
            tally = {"planted": 0, "scored": 0, "bases": 0}

            def counted():
                for names, sequences, scores, planted in chunks:
                    tally["planted"] += len(planted)
                    tally["scored"] += int(np.count_nonzero(scores > 0))
                    tally["bases"] += scores.size
                    yield names, sequences, scores

            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            n = write_tf_binding_chunks(out / "sequences.tsv.gz", out / "scores.tsv.gz", counted())
            print(f"wrote {n} windows of {args.length} bp ({tally['planted']} planted motif instances, "
                  f"{tally['scored'] / tally['bases']:.1%} of bases scored) to {out}/sequences.tsv.gz and scores.tsv.gz")
        elif args.command == "predict":
            result = tf_binding.predict(args.checkpoint, args.input, args.output, rc_average=args.rc_average)
            print(f"wrote scores of {result['n']} windows of {result['length']} bp to {result['output']}")
        elif not _cli.run_split_evaluation(tf_binding, args):
            if args.scores is None:
                raise InputError("evaluate --input: give the windows' --scores too")
            result = tf_binding.evaluate(args.checkpoint, args.input, args.scores, rc_average=args.rc_average)
            print(f"Pearson R {result['pearson']:.4f}, MSE {result['mse']:.4f} on {result['n']} windows of {args.input}")


if __name__ == "__main__":
    main()
