"""Trained models shipped inside the package: `--checkpoint pretrained:NAME` wherever a run
folder is taken (predict, evaluate, attribute, variants), `load_run(pipeline, "pretrained:NAME")`
in code, and `python -m experiments.models` to list them.

Each model is a folder molml_jax/pretrained/NAME/ with
  config.json    the run's settings (data paths cleared: the bundled or simulated default),
  weights.npz    the model variables, one array per '/'-joined path (numpy, no pickle:
                 loading runs no code),
  MODEL_CARD.md  data, split, the exact training command, metrics on the held-out split,
                 version, licence of the data;
and one entry in models.json: pipeline, version, summary, metrics, and the SHA-256 of
config.json and weights.npz, checked every time the model is loaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import io
import json
import types
from pathlib import Path

import jax
import numpy as np
from flax import traverse_util

from molml_jax.errors import InputError

PREFIX = "pretrained:"
CHECKED_FILES = ("config.json", "weights.npz")


def root() -> Path:
    """The folder that holds models.json and one folder per model."""
    return Path(str(importlib.resources.files("molml_jax.pretrained")))


def catalogue(folder: Path | None = None) -> dict[str, dict]:
    """models.json: NAME -> {pipeline, version, summary, metrics, sha256, ...}."""
    path = (folder or root()) / "models.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read the list of pretrained models ({err})") from None


def is_pretrained(run) -> bool:
    return isinstance(run, (str, Path)) and str(run).startswith(PREFIX)


def entry(name: str, folder: Path | None = None) -> dict:
    """The catalogue entry of NAME, or an InputError that lists the names."""
    models = catalogue(folder)
    if name not in models:
        raise InputError(f"unknown pretrained model '{name}'; available: {', '.join(sorted(models)) or 'none'} "
                         "(python -m experiments.models lists them)")
    return models[name]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified_files(name: str, folder: Path | None = None) -> dict[str, bytes]:
    """The bytes of NAME's config.json and weights.npz, each checked against its SHA-256 in
    models.json (a damaged or altered file is refused before it is used)."""
    folder = folder or root()
    expected = entry(name, folder)["sha256"]
    contents = {}
    for file in CHECKED_FILES:
        path = folder / name / file
        try:
            data = path.read_bytes()
        except OSError as err:
            raise InputError(f"{path}: cannot read pretrained model file ({err.strerror or err})") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected.get(file):
            raise InputError(f"{path}: SHA-256 {actual[:12]}... does not match models.json "
                             f"({str(expected.get(file))[:12]}...): the file is damaged or was changed; reinstall molml-jax")
        contents[file] = data
    return contents


def load(pipeline: types.ModuleType, run: str, folder: Path | None = None):
    """(config, model, variables) of 'pretrained:NAME' for `pipeline` (as load_run returns)."""
    from molml_jax.pipelines.common import config_from_record

    name = str(run)[len(PREFIX):]
    info = entry(name, folder)
    if info["pipeline"] != pipeline.HOOKS.name:
        raise InputError(f"{run} is a {info['pipeline']} model, not a {pipeline.HOOKS.name} one")
    files = verified_files(name, folder)
    config = config_from_record(json.loads(files["config.json"]), pipeline.Config, f"{run} config.json")
    model = pipeline.build_model(config)
    with np.load(io.BytesIO(files["weights.npz"]), allow_pickle=False) as arrays:
        flat = {tuple(key.split("/")): np.asarray(arrays[key]) for key in arrays.files}
    variables = traverse_util.unflatten_dict(flat)
    _check_shapes(run, model, pipeline.HOOKS.example_inputs(config), variables)
    return config, model, variables


def _check_shapes(run: str, model, example_inputs, variables) -> None:
    """The stored arrays must be exactly the model's variables (names and shapes)."""
    expected = jax.eval_shape(lambda: model.init(jax.random.key(0), *example_inputs, train=False))
    want = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(expected, sep="/").items()}
    have = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(variables, sep="/").items()}
    if want != have:
        differ = sorted(set(want.items()) ^ set(have.items()))[:3]
        raise InputError(f"{run}: weights do not fit the model its config.json describes (e.g. {differ})")


def export(pipeline: types.ModuleType, run, name: str, *, summary: str, metrics: dict, sample: dict,
           folder: Path | None = None, version: str = "1.0.0") -> Path:
    """Write a trained run's best weights (a run folder, or what load_run returned) as
    pretrained model NAME (config.json with data paths cleared, weights.npz) and record it
    and its checksums in models.json. metrics: the card's (with 'split' and 'n'); sample:
    {'metric', 'n', 'value'} on the first n examples of that split, which the tests
    reproduce quickly. For maintainers; MODEL_CARD.md is written by hand beside them."""
    from molml_jax.pipelines.common import PATH_FIELDS, config_record, resolve_run

    folder = folder or root()
    config, _, variables = resolve_run(pipeline, run)
    cleared = {k: None for k in PATH_FIELDS if hasattr(config, k)}
    config = dataclasses.replace(config, **cleared, out=f"{PREFIX}{name}")
    target = folder / name
    target.mkdir(parents=True, exist_ok=True)
    (target / "config.json").write_text(json.dumps(config_record(config, pipeline.HOOKS.name), indent=2) + "\n")
    flat = traverse_util.flatten_dict(jax.tree.map(np.asarray, variables), sep="/")
    np.savez(target / "weights.npz", **flat)
    models = catalogue(folder) if (folder / "models.json").is_file() else {}
    models[name] = {"pipeline": pipeline.HOOKS.name, "version": version, "summary": summary, "metrics": metrics,
                    "sample": sample, "sha256": {file: sha256(target / file) for file in CHECKED_FILES}}
    (folder / "models.json").write_text(json.dumps(dict(sorted(models.items())), indent=2) + "\n")
    return target


SAMPLE_SIZES = {"dna": ("auc", 256), "tf_binding": ("pearson", 32), "segmentation": ("dice", 4)}


def sample_metric(pipeline: types.ModuleType, run, part: str) -> dict:
    """{'metric', 'n', 'value'}: the pipeline's headline metric of `run` on the first n
    examples of split `part` of its data, through predict_arrays (a quick check that a
    model gives what it gave when it was exported)."""
    from molml_jax.metrics.classification import roc_auc
    from molml_jax.metrics.regression import pearson
    from molml_jax.metrics.segmentation import dice_and_iou

    metric, n = SAMPLE_SIZES[pipeline.HOOKS.name]
    run = pipeline.load_run(run) if isinstance(run, (str, Path)) else run
    data = pipeline.load_data(run[0])
    arrays = {k: np.asarray(v)[:n] for k, v in data.arrays(part).items()}
    predicted = pipeline.predict_arrays(run, arrays["x"])
    if metric == "auc":
        value = roc_auc(arrays["y"], predicted)
    elif metric == "pearson":
        value = pearson(predicted, arrays["y"])
    else:
        value = float(dice_and_iou(predicted, arrays["y"])[0].mean())
    return {"metric": metric, "n": int(len(arrays["x"])), "value": float(value)}
