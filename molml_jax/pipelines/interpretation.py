"""The interpretation verbs of the two sequence pipelines (dna, tf_binding): attribute,
variants and predicting genomic intervals, for a run or an ensemble, on one or both strands.

What each model's number is:
- dna: the classifier's logit (attributions, variant deltas); intervals get the probability.
- tf_binding: the per-base score track; attributions explain the sum of the predicted
  scores over `positions` (default: the whole window), a variant's score is the sum over its
  window (plus the largest change at any one base).
"""

from __future__ import annotations

import os
import types
from pathlib import Path

import numpy as np

from molml_jax.errors import InputError
from molml_jax.interpret import BASELINES, METHODS, attribute as attribute_arrays_of
from molml_jax.metrics.classification import sigmoid
from molml_jax.pipelines.ensemble import Ensemble, load_ensemble

# the DNA BiLSTM takes any length; genomic windows need one: the course's sequences are 101 bp
DNA_WINDOW = 101


def check_method(method: str, baseline: str = "uniform", steps: int = 50) -> None:
    """One line for a method, baseline or step count that does not exist (before any work)."""
    if method not in METHODS:
        raise InputError(f"unknown attribution method {method!r}; choose one of {', '.join(METHODS)}")
    if isinstance(baseline, str) and baseline not in BASELINES:
        raise InputError(f"unknown baseline {baseline!r}; choose one of {', '.join(BASELINES)}")
    if int(steps) < 1:
        raise InputError(f"--steps must be at least 1, got {steps}")


def parse_positions(text: str | None, length: int) -> slice:
    """'START:END' (0-based, END exclusive, either side may be empty) -> a slice of a
    length-bp window; None: the whole window."""
    if text is None or text.strip() in ("", ":"):
        return slice(0, length)
    try:
        start_text, end_text = text.split(":")
        start = int(start_text) if start_text.strip() else 0
        end = int(end_text) if end_text.strip() else length
    except ValueError:
        raise InputError(f"--positions {text!r}: expected START:END, e.g. 100:200") from None
    if not 0 <= start < end <= length:
        raise InputError(f"--positions {text!r}: expected 0 <= START < END <= {length} (the window length)")
    return slice(start, end)


def window_length(ensemble: Ensemble, length: int | None) -> int:
    """The length of genomic windows given to the model: the TF CNN's own; the DNA
    classifier's from `length` (default DNA_WINDOW)."""
    own = getattr(ensemble.config, "window_length", None)
    if own is not None:
        if length is not None and length != own:
            raise InputError(f"--length {length}: the model takes {own} bp windows")
        return own
    return DNA_WINDOW if length is None else int(length)


def scalar_function(pipeline: types.ModuleType, ensemble: Ensemble, *, rc_average: bool = False,
                    positions: slice | None = None):
    """The one number per sequence that attributions explain: x (B, L, 4) -> (B,)."""
    if pipeline.HOOKS.name == "dna":
        return ensemble.function(rc_average=rc_average)
    return ensemble.function(rc_average=rc_average, window=positions or slice(0, ensemble.config.window_length))


def read_inputs(pipeline: types.ModuleType, path, **read_kw):
    """(names, sequences, x (N, L, 4), lengths (N,)) of a predict --input file."""
    if pipeline.HOOKS.name == "dna":
        from molml_jax.data import one_hot, read_sequences

        records = read_sequences(path, require_labels=False, **read_kw)
        x, lengths = one_hot(records.sequences, names=records.names, source=records.source, allow_ragged=True)
        return list(records.names), list(records.sequences), x, lengths
    from molml_jax.data.tf_binding import read_windows

    names, sequences, x = read_windows(path)
    return list(names), list(sequences), x, np.full(len(x), x.shape[1], np.int32)


def attribute_arrays(pipeline: types.ModuleType, run, x, lengths=None, *, method: str = "integrated-gradients",
                     baseline="uniform", steps: int = 50, seed: int = 0, rc_average: bool = False,
                     positions: str | None = None) -> dict:
    """Attributions of one-hot sequences x (N, L, 4) (zero-padded to L with their `lengths`
    when they differ; the DNA model) to the run's (or ensemble's) number, see the module
    docstring. Returns {'attributions': (N, L, 4) float32, and for integrated gradients
    'completeness': (N,)}; sequences of each length are explained together."""
    check_method(method, baseline, steps)
    ensemble = load_ensemble(pipeline, run)
    x = np.asarray(x, np.float32)
    lengths = np.full(len(x), x.shape[1]) if lengths is None else np.asarray(lengths)
    own = getattr(ensemble.config, "window_length", None)
    if own is not None and x.shape[1] != own:
        raise InputError(f"windows are {x.shape[1]} bp, but the model takes {own} bp windows")
    window = parse_positions(positions, x.shape[1]) if own is not None else None
    if positions is not None and own is None:
        raise InputError("--positions chooses bases of the TF-binding model's score track; "
                         "the DNA model has one logit per sequence")
    f = scalar_function(pipeline, ensemble, rc_average=rc_average, positions=window)
    result = {"attributions": np.zeros(x.shape, np.float32)}
    if method == "integrated-gradients":
        result["completeness"] = np.zeros(len(x), np.float32)
    for length in np.unique(lengths):
        rows = np.flatnonzero(lengths == length)
        part = attribute_arrays_of(f, x[rows, :length], method, baseline=baseline, steps=steps, seed=seed)
        result["attributions"][rows, :length] = part["attributions"]
        if "completeness" in part:
            result["completeness"][rows] = part["completeness"]
    return result


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def attribute(pipeline: types.ModuleType, run, input, output, *, method: str = "integrated-gradients",
              baseline="uniform", steps: int = 50, seed: int = 0, rc_average: bool = False,
              positions: str | None = None, plot: int = 0, **read_kw) -> dict:
    """Attributions of every sequence of `input` (as `predict --input` takes it), written to
    the .npz `output`: attributions (N, L, 4) float32, sequences (N,) str, names (N,) str,
    and for integrated gradients completeness (N,). plot: sequence logos (and for ism heat
    maps) of the first `plot` sequences as OUTPUT_STEM_logo_K.png (_ism_K.png) beside it.
    Nothing is written when anything fails. Returns {'n', 'output', 'figures', ...}."""
    check_method(method, baseline, steps)
    output = Path(output)
    if output.suffix != ".npz":
        raise InputError(f"--output {output}: expected a .npz file")
    ensemble = load_ensemble(pipeline, run)  # a bad run folder is named before the input is read
    names, sequences, x, lengths = read_inputs(pipeline, input, **read_kw)
    own = getattr(ensemble.config, "window_length", None)
    if own is not None and x.shape[1] != own:
        raise InputError(f"{input}: windows are {x.shape[1]} bp, but the model takes {own} bp windows "
                         "(its LayerNorm is per position)")
    result = attribute_arrays(pipeline, ensemble, x, lengths, method=method, baseline=baseline, steps=steps,
                              seed=seed, rc_average=rc_average, positions=positions)
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary(output)
    with open(temporary, "wb") as handle:  # np.savez would add .npz to a name without it
        np.savez(handle, sequences=np.array(sequences, dtype=str), names=np.array(names, dtype=str), **result)
    os.replace(temporary, output)
    figures = _figures(output, method, result["attributions"], x, names, sequences, int(plot))
    summary = {"n": len(names), "output": str(output), "figures": figures}
    if "completeness" in result:
        summary["median_completeness"] = float(np.median(result["completeness"]))
    return summary


def _figures(output: Path, method: str, attributions, x, names, sequences, count: int) -> list[str]:
    from molml_jax.plots import logo_heights, plot_ism_heatmap, plot_sequence_logo

    written = []
    for k in range(min(count, len(names))):
        length = len(sequences[k])
        logo = output.with_name(f"{output.stem}_logo_{k}.png")
        plot_sequence_logo(logo_heights(attributions[k, :length], x[k, :length], method), logo,
                           title=f"{names[k]}: {method}")
        written.append(str(logo))
        if method == "ism":
            heat = output.with_name(f"{output.stem}_ism_{k}.png")
            plot_ism_heatmap(attributions[k, :length], sequences[k], heat, title=f"{names[k]}: in-silico mutagenesis")
            written.append(str(heat))
    return written


def _window_scorer(ensemble: Ensemble, rc_average: bool, *, probability: bool):
    """windows (B, L, 4) -> (B,) logits (or probabilities) for dna, (B, L) scores for tf_binding."""
    def score(windows):
        out = ensemble.outputs(windows, rc_average=rc_average)
        return sigmoid(out.astype(np.float64)) if probability and out.ndim == 1 else out
    return score


def variants(pipeline: types.ModuleType, run, variants_path, reference, output, *, rc_average: bool = False,
             length: int | None = None) -> dict:
    """Score every allele of a VCF/TSV against a reference FASTA (molml_jax.interpret.variants:
    one row per allele, in input order, with its status) and write the TSV `output`."""
    from molml_jax.interpret.variants import score_variants

    ensemble = load_ensemble(pipeline, run)
    size = window_length(ensemble, length)
    return score_variants(variants_path, reference, _window_scorer(ensemble, rc_average, probability=False),
                          size, output)


def predict_intervals(pipeline: types.ModuleType, run, bed, reference, output, *, rc_average: bool = False,
                      length: int | None = None) -> dict:
    """Predict each BED/narrowPeak interval's window (centred on its summit or middle) of a
    reference FASTA: the probability (dna) or the score track's sum and maximum (tf_binding),
    the interval's fields kept, in input order (molml_jax.interpret.intervals)."""
    from molml_jax.interpret.intervals import score_intervals

    ensemble = load_ensemble(pipeline, run)
    size = window_length(ensemble, length)
    return score_intervals(bed, reference, _window_scorer(ensemble, rc_average, probability=True),
                           size, output)
