"""One contract for the three pipelines: the same names and signatures, the same summary
keys, load_run / predict_arrays on a run folder or on what load_run returned, a sweep for
every pipeline, `train --help` made from the Config, `--config` reruns, and the bad-input
paths shared by all three."""

import dataclasses
import inspect
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from molml_jax.errors import InputError
from molml_jax.pipelines import dna, segmentation, tf_binding

from conftest import REPO, motif_sequences, run_launcher

PIPELINES = {"dna": dna, "tf_binding": tf_binding, "segmentation": segmentation}
# name -> positional parameters every pipeline's function takes, in order
CONTRACT = {
    "load_data": ["config"],
    "build_model": ["config"],
    "make_task": ["config", "model"],
    "make_optimizer": ["config"],
    "train_and_evaluate": ["config"],
    "sweep": ["config", "lrs"],
    "load_run": ["run_dir", "checkpoint"],
    "predict": ["run_dir", "input", "output"],
    "predict_arrays": ["run", "inputs"],
}
KEYWORDS = {"train_and_evaluate": {"progress": True}, "load_run": {"checkpoint": "best"},
            "sweep": {"seeds": 1, "parallel": "auto", "progress": True, "wandb": False}}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The tiny DNA file and image pairs of conftest, made once for this module."""
    from conftest import write_pairs, write_tiny_dna_csv

    folder = tmp_path_factory.mktemp("data")
    return {"dna": write_tiny_dna_csv(folder), "pairs": write_pairs(folder)}


def _tiny(name, data_dir):
    """(pipeline module, function: out folder -> tiny Config, inputs for predict_arrays)."""
    if name == "dna":
        from molml_jax.data import one_hot

        inputs = one_hot(motif_sequences(6, 24, seed=3)[0])[0]
        return dna, lambda out, **kw: dna.Config(**{**dict(data=str(data_dir["dna"]), out=str(out), epochs=2,
                                                           batch_size=32, hidden_dim=4), **kw}), inputs
    if name == "tf_binding":
        inputs = np.eye(4, dtype=np.float32)[np.random.default_rng(0).integers(0, 4, (5, 40))]
        return tf_binding, lambda out, **kw: tf_binding.Config(**{**dict(
            simulate_windows=96, simulate_length=40, batch_size=16, num_channels=8, num_blocks=1, epochs=2,
            out=str(out)), **kw}), inputs
    inputs = np.random.default_rng(0).random((3, 37, 50)).astype(np.float32)
    return segmentation, lambda out, **kw: segmentation.Config(**{**dict(
        data=str(data_dir["pairs"]), image_tag="raw", mask_tag="label", out=str(out), epochs=2, batch_size=4,
        num_kernel=2), **kw}), inputs


@pytest.fixture(scope="module", params=list(PIPELINES))
def tiny(request, data_dir):
    return _tiny(request.param, data_dir)


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """A tiny run of the pipeline, trained once: (module, config function, inputs, run folder, summary)."""
    module, config_for, inputs = tiny
    run = tmp_path_factory.mktemp(module.HOOKS.name) / "run"
    summary = module.train_and_evaluate(config_for(run), progress=False)
    return module, config_for, inputs, run, summary


@pytest.mark.parametrize("name", PIPELINES)
def test_every_pipeline_has_the_same_names_and_signatures(name):
    module = PIPELINES[name]
    assert dataclasses.is_dataclass(module.Config)
    for field in dataclasses.fields(module.Config):
        assert field.metadata.get("help"), f"{name}.Config.{field.name} has no help text"
    for field in ("epochs", "batch_size", "lr", "seed", "early_stopping_patience", "devices", "driver",
                  "checkpoint_every", "out"):
        assert field in {f.name for f in dataclasses.fields(module.Config)}, field
    for function, positional in CONTRACT.items():
        parameters = inspect.signature(getattr(module, function)).parameters
        assert [p for p in parameters if parameters[p].kind == inspect.Parameter.POSITIONAL_OR_KEYWORD] == positional, function
        for keyword, default in KEYWORDS.get(function, {}).items():
            assert parameters[keyword].default == default, (function, keyword)
    assert module.HOOKS.name == name


def test_train_then_load_run_and_predict_arrays(trained):
    module, config_for, inputs, run, summary = trained
    history = pd.read_csv(run / "history.csv")
    assert summary["best_epoch"] == int(history.val_loss.idxmin()) + 1
    assert summary["best_val_loss"] == pytest.approx(history.val_loss.min(), rel=1e-5)
    assert "last_val_loss" in summary and summary["epochs_run"] == 2
    if module is not tf_binding:  # the study's split has no test part
        assert "test_loss" in summary and "last_test_loss" in summary

    config, model, variables = module.load_run(run)
    stored = json.loads((run / "config.json").read_text())
    assert dataclasses.asdict(config).keys() <= stored.keys() and stored["pipeline"] == module.HOOKS.name
    from_folder = module.predict_arrays(run, inputs)
    from_loaded = module.predict_arrays((config, model, variables), inputs)
    np.testing.assert_array_equal(from_folder, from_loaded)
    expected_shape = {"dna": (len(inputs),), "tf_binding": inputs.shape[:2], "segmentation": inputs.shape}
    assert from_folder.shape == expected_shape[module.HOOKS.name]
    one = module.predict_arrays(run, inputs[0])  # a single example without the batch axis
    np.testing.assert_allclose(one, from_folder[0], rtol=1e-5, atol=1e-6)
    if module is not tf_binding:  # probabilities
        assert np.all((from_folder >= 0) & (from_folder <= 1))

    # wrong shape or channel count: one clear InputError
    bad = {"dna": np.zeros((2, 10, 5)), "tf_binding": np.zeros((2, 40, 3)), "segmentation": np.zeros((2, 8, 8, 3))}
    with pytest.raises(InputError, match=r"inputs: expected .* got an array of shape"):
        module.predict_arrays(run, bad[module.HOOKS.name])
    # a run folder of another pipeline
    other = next(m for m in PIPELINES.values() if m is not module)
    with pytest.raises(InputError, match=f"is a {module.HOOKS.name} run, not a {other.HOOKS.name} run"):
        other.load_run(run)
    with pytest.raises(InputError, match="checkpoint must be 'best' or 'latest'"):
        module.load_run(run, checkpoint="first")


def test_sweep_vmapped_equals_sequential_for_every_pipeline(tiny, tmp_path):
    module, config_for, _ = tiny
    epochs = 1 if module is segmentation else 2  # the U-Net's compilation is most of its time
    results = {mode: module.sweep(config_for(tmp_path / mode, epochs=epochs), [1e-2, 1e-3], parallel=mode,
                                  progress=False) for mode in ("vmap", "sequential")}
    vmap, sequential = results["vmap"], results["sequential"]
    assert vmap["parallel"] == "vmap" and sequential["parallel"] == "sequential"
    for a, b in zip(vmap["rows"], sequential["rows"]):
        assert (a["lr"], a["seed"], a["best_epoch"], a["epochs_run"]) == (b["lr"], b["seed"], b["best_epoch"], b["epochs_run"])
        assert a["best_val_loss"] == pytest.approx(b["best_val_loss"], rel=1e-4)
    # every configuration's final state is evaluated again: on validation it must give the
    # loss its last epoch logged, and on the test split (where there is one) test metrics
    for row, history in zip(vmap["rows"], vmap["histories"]):
        assert row["last_val_loss"] == pytest.approx(history[-1]["val_loss"], rel=1e-5)
        has_test = module is not tf_binding
        assert any(k.startswith("last_test_") and k != "last_test_loss" for k in row) == has_test, row
    if module is not tf_binding:
        assert "last-epoch test" in (tmp_path / "vmap" / "sweep.md").read_text()
    for name in ("sweep.csv", "sweep.md", "sweep.json", "sweep_curves.png"):
        assert (tmp_path / "vmap" / name).is_file(), name
    assert "| 0.01 |" in (tmp_path / "vmap" / "sweep.md").read_text()
    from molml_jax.train.sweep import resolve_parallel

    assert resolve_parallel("auto", module.SWEEP_PARALLEL) == module.SWEEP_PARALLEL["cpu"]  # jax's CPU backend here


@pytest.mark.parametrize("lrs", [[], [1e-2, 0.0], [-1e-3]])
def test_sweep_refuses_empty_or_non_positive_rates_before_writing(lrs, tmp_path):
    with pytest.raises(InputError, match="learning rates must be a non-empty list of positive numbers"):
        tf_binding.sweep(tf_binding.Config(out=str(tmp_path / "never")), lrs, progress=False)
    assert not (tmp_path / "never").exists()


def _cli(name, *args):
    return subprocess.run([sys.executable, "-m", f"experiments.{name}", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True)


def _one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("name", PIPELINES)
def test_train_help_lists_every_config_field_with_its_default(name):
    import importlib

    module = PIPELINES[name]
    parser = importlib.import_module(f"experiments.{name}").build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for command in ("train", "sweep"):
        text = " ".join(sub.choices[command].format_help().split())
        for field in dataclasses.fields(module.Config):
            flag = "--" + field.name.replace("_", "-")
            # fields the data fills in (cli=False, e.g. segmentation's pixel_kind) are no flags
            assert (flag in text) == field.metadata.get("cli", True), (command, flag)
        assert f"(default: {module.Config().epochs})" in text
    # the defaults a parsed command line gives are the Config's
    args = parser.parse_args(["train"])
    from experiments._cli import config_from_args

    assert config_from_args(module, args) == module.Config()


def test_help_and_unknown_commands_from_the_command_line():
    proc = _cli("tf_binding", "train", "--help")
    assert proc.returncode == 0 and "--early-stopping-patience" in proc.stdout and "--window-length" in proc.stdout
    _one_line_error(_cli("dna", "predcit", "--input", "x.csv"), "unknown command 'predcit'",
                    "commands: train, sweep, predict, evaluate")
    # no abbreviations: a prefix of --checkpoint-every is not taken for it
    _one_line_error(_cli("dna", "train", "--checkpoint", "RUN"), "unrecognized arguments: --checkpoint RUN")
    _one_line_error(_cli("tf_binding", "sweep", "--lrs", "0,1e-3"), "learning rates must be a non-empty list")


def test_config_reruns_a_stored_run_exactly_and_foreign_configs_are_refused(trained, tmp_path, capsys):
    module, config_for, _, first, _ = trained
    name = module.HOOKS.name
    again = tmp_path / "again"
    proc = run_launcher(name, "train", "--config", first / "config.json", "--out", again, "--quiet", capsys=capsys)
    assert proc.returncode == 0, proc.stderr
    columns = ["epoch", "train_loss", "val_loss", "lr"]
    pd.testing.assert_frame_equal(pd.read_csv(first / "history.csv")[columns], pd.read_csv(again / "history.csv")[columns])
    stored, rerun = (json.loads((d / "config.json").read_text()) for d in (first, again))
    assert {k: v for k, v in stored.items() if k != "out"} == {k: v for k, v in rerun.items() if k != "out"}

    # flags given override the stored settings; a run folder works as well as its config.json
    from experiments._cli import config_from_args

    args = _parser(name).parse_args(["train", "--config", str(first), "--seed", "7"])
    config = config_from_args(module, args)
    assert config.seed == 7 and config.epochs == json.loads((first / "config.json").read_text())["epochs"]

    other = next(n for n in PIPELINES if n != name)
    for args, fragment in [
        (("train", "--config", first / "config.json"), f"is a {name} run, not a {other} run"),
        (("train", "--config", tmp_path / "missing" / "config.json"), "no such config file"),
        (("predict", "--checkpoint", first, "--input", first / "config.json", "--output", tmp_path / "never" / "o"),
         f"is a {name} run, not a {other} run"),
    ]:
        if args[0] == "train":
            args = args + ("--out", tmp_path / "never")
        proc = run_launcher(other, *args, capsys=capsys)
        status, err = proc.returncode, proc.stderr
        lines = err.strip().splitlines()
        assert status == 2 and len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
    assert not (tmp_path / "never").exists()


def _parser(name):
    import importlib

    return importlib.import_module(f"experiments.{name}").build_parser()
