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

from conftest import REPO, motif_sequences

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


@pytest.fixture
def tiny(request, tmp_path, tiny_dna_csv, pairs_dir):
    """(pipeline module, function: out folder -> tiny Config, inputs for predict_arrays)."""
    name = request.param
    if name == "dna":
        seqs, _ = motif_sequences(6, 24, seed=3)
        from molml_jax.data import one_hot

        inputs = one_hot(seqs)[0]
        return dna, lambda out, **kw: dna.Config(**{**dict(data=str(tiny_dna_csv), out=str(out), epochs=2,
                                                           batch_size=32, hidden_dim=4), **kw}), inputs
    if name == "tf_binding":
        inputs = np.eye(4, dtype=np.float32)[np.random.default_rng(0).integers(0, 4, (5, 40))]
        return tf_binding, lambda out, **kw: tf_binding.Config(**{**dict(
            simulate_windows=96, simulate_length=40, batch_size=16, num_channels=8, num_blocks=1, epochs=2,
            out=str(out)), **kw}), inputs
    inputs = np.random.default_rng(0).random((3, 37, 50)).astype(np.float32)
    return segmentation, lambda out, **kw: segmentation.Config(**{**dict(
        data=str(pairs_dir), image_tag="raw", mask_tag="label", out=str(out), epochs=2, batch_size=4,
        num_kernel=2), **kw}), inputs


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


@pytest.mark.parametrize("tiny", list(PIPELINES), indirect=True)
def test_train_then_load_run_and_predict_arrays(tiny, tmp_path):
    module, config_for, inputs = tiny
    run = tmp_path / "run"
    summary = module.train_and_evaluate(config_for(run), progress=False)
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


@pytest.mark.parametrize("tiny", list(PIPELINES), indirect=True)
def test_sweep_vmapped_equals_sequential_for_every_pipeline(tiny, tmp_path):
    module, config_for, _ = tiny
    results = {mode: module.sweep(config_for(tmp_path / mode, epochs=2), [1e-2, 1e-3], parallel=mode, progress=False)
               for mode in ("vmap", "sequential")}
    vmap, sequential = results["vmap"], results["sequential"]
    assert vmap["parallel"] == "vmap" and sequential["parallel"] == "sequential"
    for a, b in zip(vmap["rows"], sequential["rows"]):
        assert (a["lr"], a["seed"], a["best_epoch"], a["epochs_run"]) == (b["lr"], b["seed"], b["best_epoch"], b["epochs_run"])
        assert a["best_val_loss"] == pytest.approx(b["best_val_loss"], rel=1e-4)
    for name in ("sweep.csv", "sweep.md", "sweep.json", "sweep_curves.png"):
        assert (tmp_path / "vmap" / name).is_file(), name
    assert "| 0.01 |" in (tmp_path / "vmap" / "sweep.md").read_text()
    auto = module.sweep(config_for(tmp_path / "auto", epochs=1), [1e-2], progress=False)
    assert auto["parallel"] == module.SWEEP_PARALLEL["cpu"]


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
            assert flag in text, (command, flag)
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


@pytest.mark.parametrize("tiny", list(PIPELINES), indirect=True)
def test_config_reruns_a_stored_run_exactly_and_foreign_configs_are_refused(tiny, tmp_path):
    module, config_for, _ = tiny
    name = module.HOOKS.name
    first = tmp_path / "first"
    config = config_for(first, epochs=2)
    module.train_and_evaluate(config, progress=False)
    again = tmp_path / "again"
    proc = _cli(name, "train", "--config", first / "config.json", "--out", again, "--quiet")
    assert proc.returncode == 0, proc.stderr
    columns = ["epoch", "train_loss", "val_loss", "lr"]
    pd.testing.assert_frame_equal(pd.read_csv(first / "history.csv")[columns], pd.read_csv(again / "history.csv")[columns])
    stored, rerun = (json.loads((d / "config.json").read_text()) for d in (first, again))
    assert {k: v for k, v in stored.items() if k != "out"} == {k: v for k, v in rerun.items() if k != "out"}
    # flags given override the stored settings; a run folder works as well as its config.json
    seed_run = tmp_path / "seed1"
    assert _cli(name, "train", "--config", first, "--seed", 1, "--epochs", 1, "--out", seed_run, "--quiet").returncode == 0
    assert json.loads((seed_run / "config.json").read_text())["seed"] == 1

    other = next(n for n in PIPELINES if n != name)
    _one_line_error(_cli(other, "train", "--config", first / "config.json", "--out", tmp_path / "never"),
                    f"is a {name} run, not a {other} run")
    _one_line_error(_cli(name, "train", "--config", tmp_path / "missing" / "config.json", "--out", tmp_path / "never"),
                    "no such config file")
    _one_line_error(_cli(other, "predict", "--checkpoint", first, "--input", first / "config.json",
                         "--output", tmp_path / "never" / "out"), f"is a {name} run, not a {other} run")
    assert not (tmp_path / "never").exists()
