"""Trained runs as one predictor: ensembles of run folders and the average of both strands.

Wherever a run is taken (`--checkpoint RUN`, `predict_arrays(run, ...)`), several runs can
be given: comma-separated run folders (e.g. the seeds of one setting), a list, or a sweep
folder (its configurations' final weights, OUT/members/lr<rate>_seed<seed>). Their outputs are averaged, and `rc_average` averages
each model's outputs on a sequence and on its reverse complement (per-base outputs turned
back to the forward strand first).

What is averaged is the model's raw output: the DNA classifier's logit (then one sigmoid),
the TF CNN's per-base score. Averaging logits is the geometric mean of the odds: a model
that is confidently right is not pulled to 0.5 by a hesitant one as it is by a mean of
probabilities, and the average stays a smooth function of the input whose gradient is the
average of the members' gradients (attributions of an ensemble or of both strands are the
mean of the members' or strands' attributions).
"""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path
from typing import Callable, Sequence

import jax
import numpy as np

from molml_jax.data.strands import reverse_complement, reverse_profile
from molml_jax.errors import InputError
from molml_jax.pipelines import common


@dataclasses.dataclass(frozen=True, eq=False)
class Ensemble:
    """Trained runs of one pipeline whose outputs are averaged (one run: itself).

    runs: (config, model, variables) per member, as load_run returns them.
    sources: where each member came from (run folders), for messages and output files.
    """

    pipeline: types.ModuleType
    runs: tuple[tuple, ...]
    sources: tuple[str, ...]
    _functions: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def config(self):
        """The first member's config (members agree on what the input must be)."""
        return self.runs[0][0]

    def __len__(self) -> int:
        return len(self.runs)

    def outputs(self, x: np.ndarray, lengths: np.ndarray | None = None, *, rc_average: bool = False,
                batch_size: int = 256) -> np.ndarray:
        """Mean raw output over members (and both strands with rc_average).
        x: (N, L, 4) one-hot; lengths: (N,) or None. Returns (N,) logits or (N, L) scores."""
        total = None
        extra = () if lengths is None else (lengths,)  # the TF CNN takes x alone
        for _, model, variables in self.runs:
            strands = [common.apply_in_batches(model, variables, (x, *extra), batch_size=batch_size)]
            if rc_average:
                other = common.apply_in_batches(model, variables, (reverse_complement(x, lengths), *extra),
                                                batch_size=batch_size)
                strands.append(_to_forward(other, lengths))
            for out in strands:
                total = out.astype(np.float64) if total is None else total + out
        return (total / (len(self.runs) * (2 if rc_average else 1))).astype(np.float32)

    def function(self, *, rc_average: bool = False, window: slice | None = None) -> Callable[[jax.Array], jax.Array]:
        """A jittable x (B, L, 4) -> mean raw output (B,) or (B, L) of equal-length sequences,
        for gradients and batched mutagenesis; with `window`, per-base outputs summed over
        those positions (B,). One function object per setting, so that the programs compiled
        for it are reused."""
        key = (rc_average, None if window is None else (window.start, window.stop))
        if key not in self._functions:
            mean_output = _mean_output_function([(model, variables) for _, model, variables in self.runs], rc_average)
            if window is not None:
                whole = mean_output

                def mean_output(x):
                    return whole(x)[:, window.start:window.stop].sum(axis=-1)

            self._functions[key] = mean_output
        return self._functions[key]


def _to_forward(outputs, lengths):
    """Outputs of reverse-complemented inputs, aligned with the forward strand: per-base
    outputs (B, L) reversed within each length; one value per sequence (B,) as it is."""
    return outputs if outputs.ndim == 1 else reverse_profile(outputs, lengths)


def _mean_output_function(members: Sequence[tuple], rc_average: bool):
    def mean_output(x):
        total = 0.0
        for model, variables in members:
            total = total + model.apply(variables, x, train=False)
            if rc_average:
                total = total + _to_forward(model.apply(variables, reverse_complement(x), train=False), None)
        return total / (len(members) * (2 if rc_average else 1))

    return mean_output


def _run_folders(text: str) -> list[Path]:
    """'RUN' / 'RUN1,RUN2,...' -> the run folders. A folder that holds run folders is not
    taken as an ensemble of everything in it (a user pointing at runs/ by mistake): the
    message names the members to list instead."""
    folders = []
    for part in [p.strip() for p in str(text).split(",") if p.strip()]:
        path = Path(part)
        if path.is_dir() and not (path / "config.json").is_file():
            if (path / "sweep.json").is_file():  # a sweep: its configurations' final weights
                members = sorted(p.parent for p in (path / common.MEMBERS).glob("*/config.json"))
                if not members:
                    raise InputError(f"{path}: this sweep kept no weights (made by an older molml-jax); "
                                     "rerun it, or give run folders RUN1,RUN2,...")
                folders.extend(members)
                continue
            members = sorted(str(p.parent) for p in path.glob("*/config.json"))
            if members:
                listed = ",".join(members[:3]) + (",..." if len(members) > 3 else "")
                raise InputError(f"{path}: not a run folder (no config.json); for an ensemble of the run "
                                 f"folders in it give them with commas: {listed}")
        folders.append(path)
    if not folders:
        raise InputError(f"no run folder in {text!r}")
    return folders


def load_ensemble(pipeline: types.ModuleType, run, checkpoint: str = "best") -> Ensemble:
    """An Ensemble from what `--checkpoint` or predict_arrays' `run` takes: a run folder,
    'RUN1,RUN2,...', a sweep folder, what load_run returned, a list of those, or an Ensemble
    (returned as it is)."""
    if isinstance(run, Ensemble):
        return run
    if isinstance(run, tuple) and len(run) == 3 and isinstance(run[0], pipeline.Config):
        return Ensemble(pipeline, (run,), ("(loaded run)",))
    items = run if isinstance(run, list) else [run]
    runs, sources = [], []
    for item in items:
        if isinstance(item, (str, Path)):
            for folder in _run_folders(str(item)):
                runs.append(common.load_run(pipeline, folder, checkpoint))
                sources.append(str(folder))
        else:
            one = common.resolve_run(pipeline, item)
            runs.append(one)
            sources.append("(loaded run)")
    _check_members(pipeline, runs, sources)
    return Ensemble(pipeline, tuple(runs), tuple(sources))


def _check_members(pipeline, runs: Sequence[tuple], sources: Sequence[str]) -> None:
    """Members must take the same input: the TF CNN's window length is part of the model."""
    lengths = {getattr(config, "window_length", None) for config, _, _ in runs}
    if len(lengths) > 1:
        described = ", ".join(f"{s} ({c.window_length} bp)" for s, (c, _, _) in zip(sources, runs))
        raise InputError(f"the runs of an ensemble must take one window length: {described}")


def describe(ensemble: Ensemble, rc_average: bool) -> str:
    """One line for the user: what is averaged."""
    parts = []
    if len(ensemble) > 1:
        parts.append(f"the mean of {len(ensemble)} models")
    if rc_average:
        parts.append("both strands")
    return " over ".join(parts) if parts else "one model, forward strand"
