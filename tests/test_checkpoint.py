"""Checkpoints: `best` written whenever the validation loss improves, `latest` every
checkpoint_every epochs and at the end; each read from its own folder."""

import numpy as np
import pytest

from molml_jax.data import one_hot
from molml_jax.errors import InputError
from molml_jax.models import BiLSTMClassifier
from molml_jax.pipelines import dna
from molml_jax.pipelines.dna import make_optimizer, make_task
from molml_jax.train import Engine, create_train_state
from molml_jax.train.checkpoint import Checkpoints
from molml_jax.train.fit import FitConfig, fit

from conftest import motif_sequences


def _tree(value):
    return {"w": np.full((2, 3), value, np.float32), "step": np.int32(value)}


def test_best_and_latest_are_separate_checkpoints(tmp_path):
    checkpoints = Checkpoints(tmp_path / "checkpoints")
    with pytest.raises(InputError, match="no checkpoint saved"):
        checkpoints.restore("best", _tree(0))
    checkpoints.save("best", 1, _tree(1), {"epoch": 1})
    checkpoints.save("latest", 2, _tree(2), {"epoch": 2})
    checkpoints.wait()
    assert checkpoints.epoch("best") == 1 and checkpoints.epoch("latest") == 2
    state, meta = checkpoints.restore("best", _tree(0))
    assert state["w"][0, 0] == 1 and meta["epoch"] == 1
    state, meta = checkpoints.restore("latest", _tree(0))
    assert state["w"][0, 0] == 2 and meta["epoch"] == 2
    checkpoints.save("best", 3, _tree(3), {"epoch": 3})  # max_to_keep=1: the older best goes
    checkpoints.wait()
    assert checkpoints.epoch("best") == 3 and sorted(p.name for p in (tmp_path / "checkpoints" / "best").iterdir()
                                                      if p.name.isdigit()) == ["3"]
    with pytest.raises(InputError, match="holds m1, not m2"):
        checkpoints.save("latest", 4, _tree(4), {"epoch": 4, "model": "m1"})
        checkpoints.wait()
        checkpoints.restore("latest", _tree(0), expect_model="m2")
    checkpoints.close()


def test_fit_writes_best_on_improvement_and_latest_on_schedule(tmp_path):
    seqs, labels = motif_sequences(48, 16, 0)
    x, _ = one_hot(seqs)
    data = {"x": x, "y": labels.astype(np.float32)}
    model = BiLSTMClassifier(hidden_dim=4)
    tx = make_optimizer(dna.Config(lr=3e-2))
    engine = Engine(make_task(dna.Config(), model), tx, batch_size=16, devices=1, driver="loop")
    fresh = create_train_state(model, tx, (np.zeros((1, 16, 4), np.float32),), seed=0)
    train, val = engine.put(data), engine.put(data)
    run = tmp_path / "run"
    result = fit(engine, fresh, train, val, FitConfig(epochs=5, checkpoint_every=2, progress=False), run, model_id="m")
    checkpoints = Checkpoints(run / "checkpoints")
    assert checkpoints.epoch("latest") == 5  # epochs 2, 4 and the last; max_to_keep=1 keeps 5
    assert checkpoints.epoch("best") == result.best_epoch
    best, meta = checkpoints.restore("best", fresh, expect_model="m")
    assert meta["epoch"] == result.best_epoch
    assert [row["epoch"] for row in meta["history"]] == list(range(1, result.best_epoch + 1))
    assert meta["tracker"]["best_epoch"] == [result.best_epoch]
    # the best checkpoint holds the state that scored the best validation loss
    replicated = engine.replicate(best)
    assert engine.evaluate(replicated, val)["loss"] == pytest.approx(result.best_val_loss, rel=1e-6)
    latest, _ = checkpoints.restore("latest", fresh, expect_model="m")
    np.testing.assert_array_equal(latest.params["dense_2"]["kernel"], result.state.params["dense_2"]["kernel"])
    checkpoints.close()
