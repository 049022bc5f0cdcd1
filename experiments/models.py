"""Trained models shipped with molml-jax, ready to use without training.

    python -m experiments.models                      # list them: name, pipeline, metrics, size
    python -m experiments.models show unet-nuclei     # print a model card
    python -m experiments.models check                # verify every model's SHA-256 and that it loads
    python -m experiments.segmentation predict --checkpoint pretrained:unet-nuclei --input img.tif --output masks/

`--checkpoint pretrained:NAME` works wherever `--checkpoint RUN` does (predict, evaluate,
attribute, variants); `evaluate --checkpoint pretrained:NAME --split test` (val for the TF
CNN) reproduces the metrics of its card.
"""

from __future__ import annotations

from experiments import _cli


def build_parser():
    parser, sub = _cli.build_parser("python -m experiments.models", __doc__)
    _cli.add_command(sub, "list", "list the shipped models (the default command)")
    show = _cli.add_command(sub, "show", "print a model's card (data, split, training command, metrics, licence)")
    show.add_argument("name", help="a model name from the list")
    _cli.add_command(sub, "check", "verify every shipped model's SHA-256 and load it")
    export = _cli.add_command(sub, "export", "for maintainers: ship a trained run's best weights as a pretrained "
                                             "model (write MODEL_CARD.md beside them by hand)")
    export.add_argument("--pipeline", required=True, choices=("dna", "segmentation", "tf_binding"))
    export.add_argument("--run", required=True, help="the trained run folder")
    export.add_argument("--name", required=True, help="the model's name (pretrained:NAME)")
    export.add_argument("--summary", required=True, help="one line: what the model predicts, from what")
    export.add_argument("--version", default="1.0.0", help="the model's version (default: 1.0.0)")
    return parser


def _describe(metrics: dict) -> str:
    split = metrics.get("split", "")
    return f"{split}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float))


def main(argv: list[str] | None = None) -> None:
    args = _cli.parse(build_parser(), argv, default="list")
    from molml_jax import pretrained
    from molml_jax.errors import exit_on_user_error

    with exit_on_user_error():
        models = pretrained.catalogue()
        if args.command == "show":
            pretrained.entry(args.name)  # an unknown name: one line listing the names
            print((pretrained.root() / args.name / "MODEL_CARD.md").read_text())
        elif args.command == "export":
            _export(args)
        elif args.command == "check":
            import importlib

            for name, info in models.items():
                pipeline = importlib.import_module(f"molml_jax.pipelines.{info['pipeline']}")
                pipeline.load_run(f"{pretrained.PREFIX}{name}")
                print(f"{name}: SHA-256 of {', '.join(pretrained.CHECKED_FILES)} match; loads as a {info['pipeline']} model")
        else:
            width = max(map(len, models), default=4)
            for name, info in models.items():
                size = (pretrained.root() / name / "weights.npz").stat().st_size / 1e6
                print(f"{name:<{width}}  {info['pipeline']:<12}  v{info['version']}  {size:5.2f} MB  "
                      f"{_describe(info['metrics'])}")
                print(f"{'':<{width}}  {info['summary']}")
            print("use: --checkpoint pretrained:NAME; cards: python -m experiments.models show NAME")


def _export(args) -> None:
    """The card's metrics: evaluate --split on the run's test split (validation where the
    data has none); and a small sample's for the quick test."""
    import importlib

    from molml_jax import pretrained
    from molml_jax.pipelines.common import evaluate_split

    pipeline = importlib.import_module(f"molml_jax.pipelines.{args.pipeline}")
    run = pipeline.load_run(args.run)
    split = "test" if "test" in pipeline.load_data(run[0]).split else "val"
    metrics, _, _ = evaluate_split(pipeline, run, split)
    card = {"split": split, **{k: (int(v) if k == "n" else float(v)) for k, v in metrics.items()}}
    if args.pipeline == "segmentation":  # objects too: evaluate's instance metrics at IoU 0.5
        record = pipeline.evaluate(args.run, split=split)
        card.update({k: float(record[k]) for k in ("ap_50", "f1_50", "pq_50")})
    folder = pretrained.export(pipeline, run, args.name, summary=args.summary, metrics=card,
                               sample=pretrained.sample_metric(pipeline, run, split), version=args.version)
    print(f"wrote {folder} ({_describe(card)}); now write {folder / 'MODEL_CARD.md'}")


if __name__ == "__main__":
    main()
