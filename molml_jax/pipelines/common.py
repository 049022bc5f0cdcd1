"""The one implementation behind every pipeline's verbs.

A pipeline module (dna, tf_binding, segmentation) defines its `Config`, `load_data`,
`build_model`, `make_task`, `make_optimizer` and a `HOOKS` record (what it computes on the
host, what it draws); the functions here do the rest the same way for all three: the run
folder, training and resume, testing the best checkpoint, sweeps, loading a trained run
and batched prediction.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np

from molml_jax import pretrained
from molml_jax.errors import InputError
from molml_jax.train import (
    Checkpoints, Engine, FitConfig, LoopConfig, PlateauConfig, create_train_state, fit,
)
from molml_jax.train.run_folder import read_run_config, write_json
from molml_jax.train.state import seed_keys, train_state_from_variables, train_state_shapes
from molml_jax.train import sweep as sweeps

# path-valued settings recorded as absolute paths (None: the pipeline's bundled default)
PATH_FIELDS = ("data", "sequences", "scores", "pairs")
# settings a resumed run may change (every other setting must match the stored run)
RESUMABLE = ("epochs", "devices", "driver", "checkpoint_every", "out", "early_stopping_patience", "stream")
# a split streams (stream=None) when the splits would take more than this share of one
# device's memory (on CPU: of the host memory available, shared by the forced devices)
STREAM_BUDGET = 0.5


# ----- settings ---------------------------------------------------------------------------

def setting(default, help: str, **metadata):
    """A Config field with its help text (the command line's --help is made from it).

    metadata: `positive=True` (numbers must be > 0), `choices=(...)`, `cli=False` (not a
    command-line flag)."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def config_fields(config_class) -> list[tuple[dataclasses.Field, Any]]:
    """(field, resolved type) of every setting of a Config class, in order."""
    hints = typing.get_type_hints(config_class)
    return [(f, hints[f.name]) for f in dataclasses.fields(config_class)]


def config_record(config, pipeline: str) -> dict:
    """config.json: every setting, paths made absolute, and the pipeline's name."""
    record = dataclasses.asdict(config)
    for key in PATH_FIELDS:
        if key in record:
            record[key] = str(Path(record[key]).resolve()) if record[key] else None
    record["pipeline"] = pipeline
    return record


def config_from_record(record: dict, config_class, source: str):
    """A Config from a stored config.json record (extra keys such as 'pipeline' ignored)."""
    values = {}
    for field in dataclasses.fields(config_class):
        if field.name in record:
            value = record[field.name]
            if isinstance(value, list):  # JSON has no tuples
                value = tuple(value)
            values[field.name] = value
    try:
        return config_class(**values)
    except (TypeError, ValueError) as err:
        raise InputError(f"{source}: not a valid {config_class.__module__.rsplit('.', 1)[-1]} config ({err})") from None


def check_resumable(run_dir: Path, config, pipeline: str) -> None:
    """Refuse a run folder that holds a run with other settings (those in RESUMABLE may change)."""
    if not (run_dir / "config.json").is_file():
        if (run_dir / "checkpoints").exists():
            raise InputError(f"{run_dir}: has checkpoints but no config.json; use another --out")
        return
    # a setting added after the run was stored counts as its default (a run trained before
    # --rc-augment existed resumes)
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    stored = {**defaults, **read_run_config(run_dir, pipeline)}
    new = config_record(config, pipeline)
    changed = [k for k in new if k not in RESUMABLE and _jsonish(stored.get(k)) != _jsonish(new[k])]
    if changed:
        diffs = ", ".join(f"{k}={stored.get(k)!r} (now {new[k]!r})" for k in changed)
        raise InputError(f"{run_dir}: holds a run with other settings: {diffs}; use another --out")


def _jsonish(value):
    return list(value) if isinstance(value, tuple) else value


def stored_config(run_dir: Path, pipeline: str, config_class):
    """The config a run folder was trained with."""
    return config_from_record(read_run_config(run_dir, pipeline), config_class, str(Path(run_dir) / "config.json"))


# ----- what a pipeline adds ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Hooks:
    """The parts of a pipeline that are not the contract's verbs.

    name: the pipeline's name (config.json's 'pipeline'; run folders of another are refused).
    title: a short model description for figure titles.
    resolve: (config, data) -> config with the settings the data decides filled in (e.g. the
      window length), or an InputError when they contradict it.
    example_inputs: config -> the model's inputs for initialisation (batch of 1).
    split_metrics: (data, part, outputs) -> metrics computed on the host from a split's
      outputs (e.g. AUC), added to the engine's means.
    figures: (run_dir, config, data, outputs) -> None, figures of the evaluated splits
      (outputs: {'val': ..., 'test': ...} of the best checkpoint).
    plateau: config -> the learning-rate plateau schedule, or None.
    """

    name: str
    title: str
    example_inputs: Callable[[Any], tuple]
    resolve: Callable[[Any, Any], Any] = lambda config, data: config
    split_metrics: Callable[[Any, str, np.ndarray], dict] = lambda data, part, outputs: {}
    figures: Callable[[Path, Any, Any, dict], None] = lambda run_dir, config, data, outputs: None
    plateau: Callable[[Any], PlateauConfig | None] = lambda config: None


def _setup(pipeline: types.ModuleType, config):
    model = pipeline.build_model(config)
    task = pipeline.make_task(config, model)
    tx = pipeline.make_optimizer(config)
    return model, task, tx


def _engine(task, tx, config, configs=None, *, stream: bool = False) -> Engine:
    driver = config.driver
    if stream and driver == "scan":
        raise InputError("--stream: the scan driver keeps a whole epoch's data on the devices and cannot "
                         "stream; use --driver loop (or auto)")
    try:
        return Engine(task, tx, batch_size=config.batch_size, devices=config.devices,
                      driver="loop" if stream else driver, configs=configs)
    except ValueError as err:
        raise InputError(str(err)) from None


def device_memory() -> tuple[int, str]:
    """(bytes, what they are) of the memory one local device can hold data in: the
    accelerator's limit, or on CPU the host memory available now shared by its devices."""
    device = jax.local_devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"{device.device_kind} memory"
    try:
        import psutil

        available = int(psutil.virtual_memory().available)
    except ImportError:  # free pages only (psutil's figure adds reclaimable caches)
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return available // jax.local_device_count(), "host memory available per CPU device"


def split_bytes(data) -> dict[str, int]:
    """Bytes each split takes as the arrays the engine would copy to every device
    (from one example read from it, times the examples)."""
    sizes = {}
    for part in data.split:
        reader = data.reader(part)
        one = reader.read(np.zeros(1, np.int64))
        sizes[part] = reader.n * sum(np.asarray(v).nbytes for v in one.values())
    return sizes


def choose_streaming(stream: bool | None, data) -> tuple[bool, str]:
    """(whether to stream the splits, the one line that says why): stream=True/False as
    asked; None: when the splits' bytes exceed STREAM_BUDGET of device_memory()."""
    sizes = split_bytes(data)
    total = sum(sizes.values())
    gb = lambda b: f"{b / 1e9:.2f} GB"
    if stream is None:
        memory, what = device_memory()
        stream = total > STREAM_BUDGET * memory
        why = (f"{gb(total)} of splits {'exceed' if stream else 'fit in'} {STREAM_BUDGET:.0%} of "
               f"{gb(memory)} {what}")
    else:
        why = f"{gb(total)} of splits, --{'stream' if stream else 'no-stream'}"
    return stream, f"data: {why}: " + ("streaming batches from the host" if stream else "kept on the devices")


def run_facts(result, engine: Engine) -> dict:
    """summary.json fields every pipeline reports: progress, timing, where it ran."""
    return {
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "resumed_from_epoch": result.resumed_from,
        "compile_seconds": result.compile_seconds,
        "median_epoch_seconds": result.median_epoch_seconds,
        "devices": engine.n_devices,
        "processes": jax.process_count(),
        "driver": engine.driver,
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "jax_version": jax.__version__,
        "python": platform.python_version(),
    }


# ----- the verbs --------------------------------------------------------------------------

def train_and_evaluate(pipeline: types.ModuleType, config, *, progress: bool = True, initial_params=None) -> dict:
    """Train (resuming if config.out holds a checkpoint), evaluate the best checkpoint and the
    last epoch on the validation split (and the test split where there is one), write the
    run folder, and return the summary (also summary.json).

    Summary keys, the same in every pipeline: best_epoch, best_val_loss and best_val_<metric>
    (the best checkpoint on validation), last_val_<...> (the last epoch), test_loss and
    test_<metric> (the best checkpoint on the test split), last_test_<...>, run facts.
    """
    hooks: Hooks = pipeline.HOOKS
    run_dir = Path(config.out)
    data = pipeline.load_data(config)  # bad input fails here, before anything is written
    config = hooks.resolve(config, data)
    check_resumable(run_dir, config, hooks.name)
    primary = jax.process_index() == 0  # the one process that writes the run folder's files
    streaming, placement = choose_streaming(config.stream, data)
    model, task, tx = _setup(pipeline, config)
    engine = _engine(task, tx, config, stream=streaming)
    if progress and primary:
        print(placement, file=sys.stderr, flush=True)
    # read before anything is written: a damaged record of a prepared dataset leaves no run folder
    splits = {part: engine.stream(data.reader(part)) if streaming else engine.put(data.arrays(part))
              for part in data.split}
    run_dir.mkdir(parents=True, exist_ok=True)
    if primary:
        write_json(run_dir / "config.json", {**config_record(config, hooks.name), "data_source": data.source})

    state = create_train_state(model, tx, hooks.example_inputs(config), config.seed)
    if initial_params is not None:
        params = jax.tree.map(lambda new, old: np.asarray(new, old.dtype), initial_params, state.params)
        state = state.replace(params=params, opt_state=tx.init(params))
    fit_config = FitConfig(epochs=config.epochs, plateau=hooks.plateau(config),
                           early_stopping_patience=config.early_stopping_patience,
                           checkpoint_every=config.checkpoint_every, progress=progress)
    result = fit(engine, state, splits["train"], splits["val"], fit_config, run_dir, model_id=config.model_id())

    best_state, _ = Checkpoints(run_dir / "checkpoints").restore("best", result.state, expect_model=config.model_id())
    summary, best_outputs = {}, {}
    on_devices = {"best": engine.replicate(best_state), "last": engine.replicate(result.state)}
    for part in [p for p in ("val", "test") if p in data.split]:
        for which, replicated in on_devices.items():
            ((metrics, outputs),) = _evaluate_split(engine, replicated, splits[part], hooks, data, part)
            prefix = {("best", "val"): "best_val", ("best", "test"): "test"}.get((which, part), f"last_{part}")
            summary.update({f"{prefix}_{k}": v for k, v in metrics.items()})
            if which == "best":
                best_outputs[part] = outputs
    summary.update(run_facts(result, engine))
    summary.update({f"n_{part}": int(len(index)) for part, index in data.split.items()})
    summary["data"] = data.source
    summary["streamed"] = streaming
    if not primary:
        return summary
    write_json(run_dir / "summary.json", summary)
    headline = next(k for k in summary if k.startswith("test_") and k != "test_loss") if "test" in data.split \
        else next(k for k in summary if k.startswith("best_val_") and k != "best_val_loss")
    from molml_jax.plots import plot_loss_curves  # matplotlib only when a run ends

    plot_loss_curves(result.history, run_dir / "loss_curve.png",
                     title=f"{hooks.title}: {headline.replace('_', ' ')} {summary[headline]:.3f}")
    hooks.figures(run_dir, config, data, best_outputs)
    return summary


def sweep(pipeline: types.ModuleType, config, lrs: Sequence[float], *, seeds: int = 1, parallel: str = "auto",
          progress: bool = True, wandb: bool = False) -> dict:
    """Train every (learning rate, seed) configuration for config.epochs with the config's
    early stopping (and plateau schedule), on the same data, split and batches; write
    sweep.csv, sweep.md, sweep.json and sweep_curves.png to config.out.

    Seeds are config.seed .. config.seed + seeds - 1. parallel: 'vmap' (one compiled
    program), 'sequential', or 'auto' (the one measured faster for this pipeline and backend).
    Returns {'rows': per configuration, 'table': per rate (mean, sd), 'histories', ...}.
    """
    hooks: Hooks = pipeline.HOOKS
    runs = sweeps.configurations(lrs, seeds, config.seed)
    if config.stream:
        raise InputError("sweep: --stream trains one run at a time (train); a sweep keeps its splits on the devices")
    if wandb:
        sweeps.wandb_module()  # fails before training, not after it
    data = pipeline.load_data(config)
    config = hooks.resolve(config, data)
    model, task, tx = _setup(pipeline, config)
    mode = sweeps.resolve_parallel(parallel, task.sweep_parallel)
    loop = LoopConfig(epochs=config.epochs, plateau=hooks.plateau(config),
                      early_stopping_patience=config.early_stopping_patience)
    order_rng = np.asarray(jax.random.key_data(seed_keys(config.seed)[1]))  # the same batches for all
    trained = sweeps.train_configurations(
        lambda k: _engine(task, tx, config, configs=k),
        lambda seed: create_train_state(model, tx, hooks.example_inputs(config), seed),
        runs, data.arrays("train"), data.arrays("val"), loop, parallel=mode, order_rng=order_rng,
        progress=progress)
    rows, table = sweeps.summarize(runs, trained.histories, _last_epoch_metrics(hooks, data, trained))
    record = config_record(config, hooks.name)
    result = {"parallel": mode, "wall_seconds": trained.wall_seconds, "backend": jax.default_backend(),
              "epochs": config.epochs, "rows": rows, "table": table, "histories": trained.histories,
              "data": data.source, "config": record}
    out = Path(config.out)
    _save_members(hooks, config, runs, trained, out)
    if jax.process_index() != 0:  # one process writes the files
        return result
    sweeps.write_sweep(out, result, runs, title=f"{hooks.title}: learning-rate sweep")
    if wandb:
        sweeps.log_wandb(out, f"molml-jax-{hooks.name.replace('_', '-')}", record, runs, trained.histories, rows)
    return result


MEMBERS = "members"  # a sweep's configurations, each a run folder holding its final weights


def member_name(run: sweeps.Configuration) -> str:
    return f"lr{run.lr:g}_seed{run.seed}"


def _save_members(hooks: Hooks, config, runs, trained: sweeps.SweepRun, out: Path) -> None:
    """Each configuration's weights after its last epoch as a run folder OUT/members/NAME
    (config.json with its rate and seed; checkpoints/latest, marked as a sweep's final state):
    what `--checkpoint OUT` averages as an ensemble. Every process saves (orbax coordinates
    them); process 0 writes config.json."""
    engine = trained.engine
    hosts = []
    for final in trained.finals:
        host = engine.unreplicate(final)
        if engine.configs is None:
            hosts.append(host)
        else:  # one state stacked over the configurations
            hosts += [jax.tree.map(lambda a, i=i: np.asarray(a)[i], host) for i in range(engine.configs)]
    for run, host, history in zip(runs, hosts, trained.histories):
        folder = out / MEMBERS / member_name(run)
        member = dataclasses.replace(config, lr=run.lr, seed=run.seed, out=str(folder))
        if jax.process_index() == 0:
            folder.mkdir(parents=True, exist_ok=True)
            write_json(folder / "config.json", {**config_record(member, hooks.name), "sweep_member": True})
        checkpoints = Checkpoints(folder / "checkpoints")
        checkpoints.save("latest", len(history), host, {"model": config.model_id(), "epoch": len(history),
                                                         "sweep_member": True})
        checkpoints.wait()
        checkpoints.close()


def _last_epoch_metrics(hooks: Hooks, data, trained: sweeps.SweepRun) -> list[dict]:
    """Per configuration, last_val_<m> and last_test_<m> (where the data has a test split)
    of its final state: the test numbers a sweep over seeds compares. Evaluated on the
    devices by the engine that trained them (all K at once when vmapped)."""
    engine = trained.engine
    records: list[dict] = []
    for part in [p for p in ("val", "test") if p in data.split]:
        arrays = engine.put(data.arrays(part))  # once per split, for every final state
        results = [r for final in trained.finals for r in _evaluate_split(engine, final, arrays, hooks, data, part)]
        records = records or [{} for _ in results]
        for record, (metrics, _) in zip(records, results):
            record.update({f"last_{part}_{k}": v for k, v in metrics.items()})
    return records


def _evaluate_split(engine: Engine, replicated, arrays, hooks: Hooks, data, part: str) -> list[tuple[dict, np.ndarray]]:
    """[(metrics, outputs)] per configuration (one unless the engine stacks K): the engine's
    means plus the pipeline's host metrics (e.g. AUC) of that configuration's outputs."""
    metrics, outputs = engine.evaluate(replicated, arrays, return_outputs=True)
    if engine.configs is None:
        return [({**metrics, **hooks.split_metrics(data, part, outputs)}, outputs)]
    return [({**{k: float(np.asarray(v)[i]) for k, v in metrics.items()},
              **hooks.split_metrics(data, part, outputs[i])}, outputs[i]) for i in range(engine.configs)]


def load_run(pipeline: types.ModuleType, run_dir, checkpoint: str = "best"):
    """(config, model, variables) of a trained run folder; checkpoint 'best' or 'latest'
    (a sweep's member keeps only its final state, `latest`, which 'best' then loads).
    'pretrained:NAME' loads a model shipped with the package (molml_jax.pretrained)."""
    hooks: Hooks = pipeline.HOOKS
    if pretrained.is_pretrained(run_dir):  # weights shipped in the package (checksum-checked)
        return pretrained.load(pipeline, str(run_dir))
    if checkpoint not in ("best", "latest"):
        raise InputError(f"checkpoint must be 'best' or 'latest', not {checkpoint!r}")
    run_dir = Path(run_dir)
    if read_run_config(run_dir, hooks.name).get("sweep_member"):
        checkpoint = "latest"
    config = stored_config(run_dir, hooks.name, pipeline.Config)
    model, _, tx = _setup(pipeline, config)
    template = train_state_shapes(model, tx, hooks.example_inputs(config))
    if not (run_dir / "checkpoints").is_dir():
        raise InputError(f"{run_dir}: no checkpoints folder (did training start?)")
    state, _ = Checkpoints(run_dir / "checkpoints", create=False).restore(
        checkpoint, template, expect_model=config.model_id())
    variables = {"params": state.params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    return config, model, variables


def evaluate_split(pipeline: types.ModuleType, run, part: str) -> tuple[dict, np.ndarray, Any]:
    """Metrics of a trained run (or 'pretrained:NAME') on one split of the data it was
    trained on: its config's data (a pretrained model's bundled or simulated data) split
    with its seed, evaluated by the engine as training evaluates it, so the numbers are
    those of summary.json (a pretrained model's card). Returns (metrics with 'n', outputs
    (N, ...), data)."""
    config, model, variables = resolve_run(pipeline, run)
    config = dataclasses.replace(config, devices=1, stream=False)
    data = pipeline.load_data(config)
    if part not in data.split:
        raise InputError(f"{run}: its data has no '{part}' split (it has {', '.join(data.split)})")
    config = pipeline.HOOKS.resolve(config, data)
    _, task, tx = _setup(pipeline, config)
    engine = _engine(task, tx, config)
    state = train_state_from_variables(variables, tx, config.seed)
    ((metrics, outputs),) = _evaluate_split(engine, engine.replicate(state), engine.put(data.arrays(part)),
                                            pipeline.HOOKS, data, part)
    return {"n": int(len(data.split[part])), **metrics}, outputs, data


def resolve_run(pipeline: types.ModuleType, run):
    """`run` as predict_arrays takes it (a run folder, or what load_run returned) -> the triple."""
    if isinstance(run, (str, Path)):
        return load_run(pipeline, run)
    if isinstance(run, tuple) and len(run) == 3 and isinstance(run[0], pipeline.Config):
        return run
    raise InputError(f"run must be a {pipeline.HOOKS.name} run folder or what "
                     f"{pipeline.__name__}.load_run returned, not {type(run).__name__}")


def check_array(array, name: str, *, ndim: Sequence[int], last: int | None = None, what: str) -> np.ndarray:
    """A float32 numpy copy of `array`, or an InputError naming what shape was expected."""
    array = np.asarray(array)
    if array.ndim not in ndim or (last is not None and array.shape[-1] != last) or 0 in array.shape:
        raise InputError(f"{name}: expected {what}, got an array of shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) and array.dtype != bool:
        raise InputError(f"{name}: expected numbers, got dtype {array.dtype}")
    return array.astype(np.float32)


@functools.lru_cache(maxsize=16)
def _jitted_apply(model):
    """One compiled inference function per model (modules are hashable), so that predicting
    image after image compiles once per shape."""
    return jax.jit(lambda variables, *inputs: model.apply(variables, *inputs, train=False))


def apply_in_batches(model, variables, inputs: Sequence[np.ndarray | None], *, batch_size: int = 256) -> np.ndarray:
    """model.apply(variables, *inputs, train=False) over the leading axis in batches of
    batch_size (the last one zero-padded, so one compiled shape serves a whole file).
    inputs: arrays of equal length N (None entries passed as None) -> outputs (N, ...)."""
    n = len(next(x for x in inputs if x is not None))
    apply = _jitted_apply(model)
    size = min(batch_size, n)
    outputs = []
    for start in range(0, n, size):
        chunk = [None if x is None else x[start:start + size] for x in inputs]
        real = len(next(c for c in chunk if c is not None))
        if real < size:
            chunk = [None if c is None else np.concatenate([c, np.repeat(c[-1:], size - real, axis=0)]) for c in chunk]
        outputs.append(np.asarray(apply(variables, *chunk))[:real])
    return np.concatenate(outputs)

