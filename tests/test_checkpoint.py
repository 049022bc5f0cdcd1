"""Checkpoints: `best` read from `latest` while the latest epoch is the best one, and fit
writing the separate `best` copy once `latest` moves on."""

import shutil

import numpy as np
import pytest

from molml_jax.errors import InputError
from molml_jax.models import BiLSTMClassifier
from molml_jax.pipelines.dna import make_optimizer, make_task
from molml_jax.train import Engine, create_train_state
from molml_jax.train.checkpoint import Checkpoints
from molml_jax.train.fit import FitConfig, fit

from conftest import motif_sequences
from molml_jax.data import one_hot


def _tree(value):
    return {"w": np.full((2, 3), value, np.float32), "step": np.int32(value)}


def test_best_comes_from_latest_while_latest_is_the_best(tmp_path):
    checkpoints = Checkpoints(tmp_path / "checkpoints")
    with pytest.raises(InputError, match="no checkpoint saved"):
        checkpoints.restore("best", _tree(0))
    checkpoints.save("latest", 1, _tree(1), {"epoch": 1, "best_epoch": 1})
    checkpoints.wait()
    assert checkpoints.epoch("best") == 1 and checkpoints.stored_epoch("best") is None
    state, meta = checkpoints.restore("best", _tree(0))
    assert state["w"][0, 0] == 1 and meta["epoch"] == 1
    # epoch 2 is worse: fit writes best (epoch 1) before latest moves to 2
    checkpoints.save("best", 1, _tree(1), {"epoch": 1, "best_epoch": 1})
    checkpoints.save("latest", 2, _tree(2), {"epoch": 2, "best_epoch": 1})
    checkpoints.wait()
    state, meta = checkpoints.restore("best", _tree(0))
    assert state["w"][0, 0] == 1 and meta["epoch"] == 1 and checkpoints.epoch("best") == 1
    # epoch 3 is a new best, saved only as latest: best reads it from there
    checkpoints.save("latest", 3, _tree(3), {"epoch": 3, "best_epoch": 3})
    checkpoints.wait()
    state, _ = checkpoints.restore("best", _tree(0))
    assert state["w"][0, 0] == 3 and checkpoints.epoch("best") == 3 and checkpoints.stored_epoch("best") == 1
    checkpoints.close()


def test_resume_with_a_pending_best_writes_it_before_latest_moves_on(tmp_path):
    seqs, labels = motif_sequences(48, 16, 0)
    x, _ = one_hot(seqs)
    data = {"x": x, "y": labels.astype(np.float32)}
    model = BiLSTMClassifier(hidden_dim=4)
    tx = make_optimizer(1e-2)
    engine = Engine(make_task(model, variable_length=False), tx, batch_size=16, devices=1, driver="loop")
    fresh = create_train_state(model, tx, (np.zeros((1, 16, 4), np.float32),), seed=0)
    train, val = engine.put(data), engine.put(data)
    run = tmp_path / "run"
    first = fit(engine, fresh, train, val, FitConfig(epochs=2, progress=False), run, model_id="m")
    # an interruption right after a best epoch was saved as `latest` leaves no separate best copy
    shutil.rmtree(run / "checkpoints" / "best")
    if first.best_epoch != 2:
        pytest.skip("tiny run did not improve in its last epoch")
    result = fit(engine, fresh, train, val, FitConfig(epochs=5, progress=False), run, model_id="m")
    checkpoints = Checkpoints(run / "checkpoints")
    assert checkpoints.stored_epoch("best") == result.best_epoch == checkpoints.epoch("best")
    best, meta = checkpoints.restore("best", fresh, expect_model="m")
    assert meta["epoch"] == result.best_epoch
    assert [row["epoch"] for row in meta["history"]] == list(range(1, result.best_epoch + 1))
    if result.best_epoch == 2:  # restored exactly the state saved as latest at epoch 2
        np.testing.assert_array_equal(best.params["classifier"]["kernel"], first.state.params["classifier"]["kernel"])
    checkpoints.close()
