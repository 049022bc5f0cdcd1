"""The command line shared by `python -m experiments.<pipeline>`: `train` and `sweep` flags
generated from the pipeline's Config (names, types, defaults and help in one place), the
`--config RUN/config.json` rerun, verbs without abbreviations, one-line errors.

JAX may be imported while the parser is built, but no device is touched before
`prepare_process(--devices, distributed=...)` has run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from pathlib import Path
from typing import Callable


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def rates(text: str) -> list[float]:
    """'1e-2,1e-3' -> [0.01, 0.001]: a non-empty list of positive numbers."""
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"learning rates must be a non-empty list of positive numbers: {text!r}")
    return values


def _none_or(parse: Callable[[str], object]) -> Callable[[str], object]:
    def parse_optional(text: str):
        return None if text.strip().lower() == "none" else parse(text)
    parse_optional.__name__ = getattr(parse, "__name__", "value")
    return parse_optional


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser, config_class, *, defaults: dict | None = None,
                     include: Callable[[dataclasses.Field], bool] | None = None) -> None:
    """One flag per Config field: --field-name, typed from its annotation, its help from the
    field's `setting(..., help)`, its default shown. Flags not given stay out of the parsed
    namespace, so that --config's stored values can fill them. include: which fields (all)."""
    from molml_jax.pipelines.common import config_fields

    defaults = defaults or {}
    group = parser.add_argument_group("settings (Config fields; defaults as shown)")
    for field, kind in config_fields(config_class):
        meta = field.metadata
        if meta.get("cli", True) is False or (include is not None and not include(field)):
            continue
        default = defaults.get(field.name, field.default)
        optional = type(None) in typing.get_args(kind)
        base = next((a for a in typing.get_args(kind) if a is not type(None)), kind) if optional else kind
        shown = "none" if default is None else (" ".join(map(str, default)) if isinstance(default, tuple) else default)
        text = (meta.get("help", "") + f" (default: {shown})").replace("%", "%%")
        kwargs: dict = {"help": text, "default": argparse.SUPPRESS, "dest": field.name}
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(base) is tuple:
            item = typing.get_args(base)[0]
            kwargs.update(nargs=len(typing.get_args(base)), metavar=meta.get("metavar"),
                          type=positive_int if meta.get("positive") and item is int else item)
        else:
            parse = {int: positive_int, float: positive_float}.get(base) if meta.get("positive") else base
            kwargs["type"] = _none_or(parse) if optional else parse
            if "choices" in meta:
                kwargs["choices"] = meta["choices"]
            kwargs["metavar"] = field.name.upper() if "choices" not in meta else None
        group.add_argument(_flag(field.name), **{k: v for k, v in kwargs.items() if v is not None})


def config_from_args(pipeline: types.ModuleType, args: argparse.Namespace, *, defaults: dict | None = None):
    """The Config of a train or sweep command: defaults, then --config's stored settings,
    then the flags given (InputError for a missing or foreign config.json)."""
    from molml_jax.pipelines.common import config_from_record
    from molml_jax.train.run_folder import read_config_file

    values = dict(defaults or {})
    if getattr(args, "config", None):
        path = Path(args.config)
        values.update(read_config_file(path / "config.json" if path.is_dir() else path, pipeline.HOOKS.name))
    names = {f.name for f in dataclasses.fields(pipeline.Config)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    return config_from_record(values, pipeline.Config, str(getattr(args, "config", None) or "the command line"))


class Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (exit 2), as every other bad input."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def build_parser(prog: str, description: str) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = Parser(prog=prog, description=description, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser, parser.add_subparsers(dest="command", metavar="COMMAND")


def add_command(sub, name: str, help: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help, allow_abbrev=False)


RUN_HELP = "run folder of a trained model, or pretrained:NAME (python -m experiments.models lists them)"
ENSEMBLE_HELP = RUN_HELP + "; RUN1,RUN2,...: an ensemble (the mean of the members' logits / scores)"


def add_run_command(sub, name: str, help: str, input_help: str, *, sequences: bool = False) -> argparse.ArgumentParser:
    """predict / evaluate: a trained run folder (--checkpoint) and an --input file.
    sequences: a DNA model's command (ensembles and --rc-average; predict also takes --bed)."""
    cmd = add_command(sub, name, help)
    cmd.add_argument("--checkpoint", required=True, metavar="RUN", help=ENSEMBLE_HELP if sequences else
                     RUN_HELP)
    if sequences and name == "predict":
        cmd.add_argument("--input", help=input_help + " (or --bed with --reference)")
        cmd.add_argument("--bed", metavar="PEAKS.bed", help="BED or narrowPeak intervals: each one's window "
                         "(centred on the summit or the middle) of --reference is predicted")
        cmd.add_argument("--reference", metavar="GENOME.fa", help="reference FASTA (plain or bgzip with .fai/.gzi) for --bed")
    elif name == "evaluate":
        cmd.add_argument("--input", help=input_help + " (or --split)")
        add_split(cmd)
    else:
        cmd.add_argument("--input", required=True, help=input_help)
    if sequences:
        add_rc_average(cmd)
    return cmd


SPLITS = ("train", "val", "test")


def add_split(cmd: argparse.ArgumentParser, instead_of: str = "--input") -> None:
    cmd.add_argument("--split", choices=SPLITS, help=f"instead of {instead_of}: this split of the data the model was "
                     "trained on (its config's data and seed; a pretrained model's bundled or simulated data), "
                     "evaluated as training does (the numbers of summary.json or the model card)")


def run_split_evaluation(pipeline: types.ModuleType, args: argparse.Namespace) -> bool:
    """evaluate --split PART: print the metrics of summary.json for that split. False when
    --input is given instead; InputError when both or neither are."""
    from molml_jax.errors import InputError

    if (args.input is None) == (args.split is None):
        raise InputError("evaluate: give --input FILE or --split PART (one of them)")
    if args.split is None:
        return False
    if getattr(args, "rc_average", False) or "," in str(args.checkpoint):
        raise InputError("evaluate --split: one model as trained (no --rc-average, no ensemble); use --input for those")
    from molml_jax.pipelines.common import evaluate_split

    metrics, _, _ = evaluate_split(pipeline, args.checkpoint, args.split)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "n")
    print(f"{shown} on the {metrics['n']} {args.split} examples of {args.checkpoint}")
    return True


def add_rc_average(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--rc-average", action="store_true",
                     help="average each sequence's output with its reverse complement's (per-base outputs turned back)")


def add_length(cmd: argparse.ArgumentParser, pipeline: types.ModuleType) -> None:
    if pipeline.HOOKS.name == "dna":
        cmd.add_argument("--length", type=positive_int, default=None,
                         help="bases per genomic window given to the model (default: 101, the course's sequences)")


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def add_interpretation_commands(sub, pipeline: types.ModuleType, input_help: str) -> dict[str, argparse.ArgumentParser]:
    """attribute and variants, for the sequence pipelines (dna, tf_binding)."""
    from molml_jax.interpret import BASELINES, METHODS

    attribute = add_command(sub, "attribute", "write attributions of each input sequence to the model's output (.npz)")
    attribute.add_argument("--checkpoint", required=True, metavar="RUN", help=ENSEMBLE_HELP)
    attribute.add_argument("--input", required=True, help=input_help)
    attribute.add_argument("--method", choices=METHODS, default="integrated-gradients",
                           help="ism: every substitution's change of the output (default: integrated-gradients)")
    attribute.add_argument("--baseline", choices=BASELINES, default="uniform",
                           help="integrated gradients' reference: 0.25 per base (default), all zero, or the "
                                "sequence's bases shuffled")
    attribute.add_argument("--steps", type=positive_int, default=50, help="integrated gradients' steps (default: 50)")
    attribute.add_argument("--seed", type=int, default=0, help="seed of the shuffled baseline (default: 0)")
    if pipeline.HOOKS.name == "tf_binding":
        attribute.add_argument("--positions", metavar="START:END",
                               help="explain the sum of the predicted scores over these bases (0-based, END "
                                    "exclusive; default: the whole window)")
    attribute.add_argument("--output", required=True, metavar="OUT.npz", help="attributions, sequences, names (.npz)")
    attribute.add_argument("--plot", type=non_negative_int, default=0, metavar="N",
                           help="sequence logos (and ism heat maps) of the first N sequences beside OUT.npz")
    add_rc_average(attribute)
    variants = add_command(sub, "variants", "score the effect of each SNV of a VCF/TSV against a reference genome")
    variants.add_argument("--checkpoint", required=True, metavar="RUN", help=ENSEMBLE_HELP)
    variants.add_argument("--variants", required=True, metavar="FILE",
                          help="VCF (plain or .gz) or TSV with columns chrom, pos (1-based), ref, alt [, id]")
    variants.add_argument("--reference", required=True, metavar="GENOME.fa",
                          help="reference FASTA (plain or bgzip with .fai/.gzi)")
    variants.add_argument("--output", required=True, metavar="EFFECTS.tsv", help="one row per allele, in input order")
    add_rc_average(variants)
    for cmd in (variants,):
        add_length(cmd, pipeline)
    return {"attribute": attribute, "variants": variants}


def run_interpretation_command(pipeline: types.ModuleType, args: argparse.Namespace, read_kw: dict) -> bool:
    """attribute / variants / predict --bed of a sequence pipeline. False for other commands."""
    from molml_jax.errors import InputError
    from molml_jax.pipelines import interpretation

    if args.command == "attribute":
        result = interpretation.attribute(
            pipeline, args.checkpoint, args.input, args.output, method=args.method, baseline=args.baseline,
            steps=args.steps, seed=args.seed, rc_average=args.rc_average, positions=getattr(args, "positions", None),
            plot=args.plot, **read_kw)
        extra = (f"; integrated gradients' median completeness error {result['median_completeness']:.2g}"
                 if "median_completeness" in result else "")
        print(f"wrote {args.method} attributions of {result['n']} sequences to {result['output']}{extra}")
        for figure in result["figures"]:
            print(f"wrote {figure}")
        return True
    if args.command == "variants":
        result = interpretation.variants(pipeline, args.checkpoint, args.variants, args.reference, args.output,
                                         rc_average=args.rc_average, length=getattr(args, "length", None))
        _report_rows(result, "alleles", args.output)
        return True
    if args.command == "predict" and (args.bed is not None or args.input is None):
        if args.input is not None or args.bed is None or args.reference is None:
            raise InputError("predict: give --input FILE, or --bed PEAKS.bed with --reference GENOME.fa")
        result = interpretation.predict_intervals(pipeline, args.checkpoint, args.bed, args.reference, args.output,
                                                  rc_average=args.rc_average, length=getattr(args, "length", None))
        _report_rows(result, "intervals", args.output)
        return True
    return False


def _report_rows(result: dict, what: str, output) -> None:
    """One line on contig names matched across a 'chr' prefix (once), one on what was written."""
    if result.get("chr_prefix_matched"):
        pairs = ", ".join(f"{a} -> {b}" for a, b in list(result.get("renamed", {}).items())[:4])
        print(f"note: contig names matched across a 'chr' prefix ({pairs})")
    counts = ", ".join(f"{n} {status}" for status, n in result["status"].items() if n)
    print(f"wrote {result['rows']} {what} to {output} ({counts})")


def add_train_command(sub, pipeline: types.ModuleType) -> argparse.ArgumentParser:
    cmd = add_command(sub, "train", "train and evaluate, writing a run folder (the default command)")
    cmd.add_argument("--config", metavar="RUN/config.json",
                     help="start from a stored run's settings (flags given here override them)")
    cmd.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(cmd, pipeline.Config)
    add_distributed_flags(cmd)
    cmd.set_defaults(pipeline=pipeline.HOOKS.name)
    return cmd


def add_distributed_flags(cmd: argparse.ArgumentParser) -> None:
    """--coordinator / --num-processes / --process-id: process settings, not Config
    fields, so they never reach config.json (a run trained on several processes resumes
    and predicts in one)."""
    group = cmd.add_argument_group(
        "multi-process (all three, or none: one process, or auto-detected under Slurm, Open MPI "
        "and Cloud TPU; `python -m experiments.launch` sets them on one machine)")
    group.add_argument("--coordinator", metavar="HOST:PORT",
                       help="address of process 0's coordination service (process 0 listens there)")
    group.add_argument("--num-processes", type=int, metavar="N", help="processes in the job")
    group.add_argument("--process-id", type=int, metavar="I", help="this process, 0..N-1 (0 writes the run folder)")


def distributed_of(args: argparse.Namespace):
    """The DistributedSpec of a train/sweep command (None: one process; other commands
    always run in one); InputError for incomplete or inconsistent flags. Touches no JAX."""
    if args.command not in ("train", "sweep"):
        return None
    from molml_jax.distributed import spec_from_args

    return spec_from_args(args.coordinator, args.num_processes, args.process_id)


def sweep_defaults(pipeline: types.ModuleType) -> dict:
    return {"out": f"{pipeline.Config.out}_sweep"}


def add_sweep_command(sub, pipeline: types.ModuleType) -> argparse.ArgumentParser:
    cmd = add_command(sub, "sweep", "train a grid of learning rates x seeds on the same split and batches")
    cmd.add_argument("--lrs", type=rates, default=[1e-2, 1e-3, 1e-4], help="comma-separated learning rates (default: 1e-2,1e-3,1e-4)")
    cmd.add_argument("--seeds", type=positive_int, default=1, help="seeds per rate: --seed .. --seed + K - 1 (default: 1)")
    cmd.add_argument("--parallel", choices=["auto", "vmap", "sequential"], default="auto",
                     help="vmap: one compiled program; auto: the faster one measured for this pipeline and backend")
    cmd.add_argument("--wandb", action="store_true", help="log each configuration to Weights & Biases (offline by default)")
    cmd.add_argument("--config", metavar="RUN/config.json", help="start from a stored run's settings")
    cmd.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(cmd, pipeline.Config, defaults=sweep_defaults(pipeline))
    add_distributed_flags(cmd)
    cmd.set_defaults(pipeline=pipeline.HOOKS.name)
    return cmd


def is_data_setting(field: dataclasses.Field) -> bool:
    """The settings that decide a prepared dataset: fields marked data=True, and the seed."""
    return bool(field.metadata.get("data")) or field.name == "seed"


def add_prepare_command(sub, pipeline: types.ModuleType) -> argparse.ArgumentParser:
    """prepare: the train command's data flags and --seed (of the split), and --out DATA_DIR."""
    cmd = add_command(sub, "prepare", "write the data and its split as a TFDS (ArrayRecord) dataset for "
                                      "`train --data DATA_DIR` and notebooks")
    cmd.add_argument("--out", required=True, dest="data_dir", metavar="DATA_DIR",
                     help="folder to write (DATA_DIR/molml_<pipeline>/1.0.0/...)")
    add_config_flags(cmd, pipeline.Config, include=is_data_setting)
    cmd.set_defaults(pipeline=pipeline.HOOKS.name)
    return cmd


def parse(parser: argparse.ArgumentParser, argv: list[str] | None, default: str = "train") -> argparse.Namespace:
    """`python -m experiments.dna --epochs 5` means `... train --epochs 5`; an unknown
    command is named with the list of commands (exit 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = list(_subparsers(parser).choices)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv.insert(0, default)
    elif argv[0] not in commands and argv[0] not in ("-h", "--help"):
        parser.exit(2, f"error: unknown command '{argv[0]}'; commands: {', '.join(commands)}\n")
    return parser.parse_args(argv)


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def headline(summary: dict) -> dict:
    """The summary keys a train command prints."""
    keys = [k for k in summary if k.startswith("test_") or k.startswith("best_val_")]
    keys += ["best_epoch", "epochs_run", "median_epoch_seconds"]
    return {k: summary[k] for k in keys if k in summary}


def run_training_command(pipeline: types.ModuleType, args: argparse.Namespace) -> bool:
    """train / sweep / prepare, shared by every pipeline. Returns False for other commands."""
    from molml_jax.distributed import is_primary

    if args.command == "prepare":
        import time

        from molml_jax.datasets import describe

        start = time.perf_counter()
        prepared = pipeline.prepare(config_from_args(pipeline, args), args.data_dir)
        verb = "kept (already prepared with these settings)" if prepared.reused else "wrote"
        print(f"{verb} {describe(prepared)} in {time.perf_counter() - start:.1f} s")
        return True
    # in a multi-process job only process 0 reports (and only it may have written the files)
    if args.command == "train":
        config = config_from_args(pipeline, args)
        summary = pipeline.train_and_evaluate(config, progress=not args.quiet)
        if is_primary():
            print(json.dumps(headline(summary), indent=1))
            print(f"run folder: {config.out}")
        return True
    if args.command == "sweep":
        config = config_from_args(pipeline, args, defaults=sweep_defaults(pipeline))
        pipeline.sweep(config, args.lrs, seeds=args.seeds, parallel=args.parallel, progress=not args.quiet,
                       wandb=args.wandb)
        if is_primary():
            print((Path(config.out) / "sweep.md").read_text())
        return True
    return False


def devices_of(args: argparse.Namespace) -> int:
    """--devices of a train/sweep command, before any Config exists (a stored --config's
    value counts when the flag is not given); 1 for other commands."""
    if args.command not in ("train", "sweep"):
        return 1
    if hasattr(args, "devices"):
        return args.devices
    if getattr(args, "config", None):
        from molml_jax.errors import InputError
        from molml_jax.train.run_folder import read_config_file  # imports jax, touches no device

        path = Path(args.config)
        try:
            stored = read_config_file(path / "config.json" if path.is_dir() else path, args.pipeline)
        except InputError:
            return 1  # said in one line by config_from_args
        return int(stored.get("devices", 1))
    return 1
