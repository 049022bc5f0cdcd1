"""The shared engine on a tiny BiLSTM task: steps, drivers, devices, padding, recompiles."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from molml_jax.data import one_hot
from molml_jax.models import BiLSTMClassifier
from molml_jax.pipelines import dna
from molml_jax.pipelines.dna import make_optimizer, make_task
from molml_jax.train import Engine, batch_plan, binary_cross_entropy_with_logits, create_train_state
from molml_jax.train.engine import epoch_order, shuffle_key

from conftest import motif_sequences


def _data(n=72, length=16, seed=0):
    seqs, labels = motif_sequences(n, length, seed)
    x, _ = one_hot(seqs)
    return {"x": x, "y": labels.astype(np.float32)}


def _engine(driver="scan", devices=1, batch_size=32, lr=1e-2, task=None):
    model = BiLSTMClassifier(hidden_dim=4)
    task = task or make_task(dna.Config(), model)
    tx = make_optimizer(dna.Config(lr=lr))
    engine = Engine(task, tx, batch_size=batch_size, devices=devices, driver=driver)
    state = create_train_state(model, tx, (np.zeros((1, 16, 4), np.float32),), seed=0)
    return engine, state


def _train(engine, state, data, epochs):
    train = engine.put(data)
    replicated = engine.replicate(state)
    losses = []
    for epoch in range(1, epochs + 1):
        replicated, metrics = engine.train_epoch(replicated, train, epoch)
        losses.append(metrics["loss"])
    return engine.unreplicate(replicated), losses


def test_one_step_changes_every_trained_parameter():
    engine, state = _engine(batch_size=72)  # one batch = one step
    new, _ = _train(engine, state, _data(), epochs=1)
    assert int(new.step) == 1
    for path, before in jax.tree_util.tree_leaves_with_path(state.params):
        after = jax.tree_util.tree_leaves_with_path(new.params)
        after = dict((jax.tree_util.keystr(p), v) for p, v in after)[jax.tree_util.keystr(path)]
        if "lstm_forward" in jax.tree_util.keystr(path):
            # as in the torch reference: h_n[-1] does not depend on the forward direction
            np.testing.assert_array_equal(before, after)
        else:
            assert np.abs(after - before).min() > 0, jax.tree_util.keystr(path)


def test_short_last_batch_is_the_mean_over_its_real_examples():
    """72 examples, batch 32: the third batch has 8 real examples, as torch's DataLoader."""
    data = _data()
    engine, state = _engine(batch_size=32)
    new, losses = _train(engine, state, data, epochs=1)

    # the same three Adam steps by hand, each on the mean loss of that batch's real examples
    index, weight, _ = batch_plan(jax.random.wrap_key_data(shuffle_key(state.rng, 1)), 72, 32, 1, True)
    index, weight = np.asarray(index)[:, 0], np.asarray(weight)[:, 0]
    np.testing.assert_array_equal(index.ravel()[:72], epoch_order(state.rng, 1, 72))
    model, tx = engine.task.model, engine.tx
    params, opt_state = state.params, tx.init(state.params)
    total = 0.0
    for idx, w in zip(index, weight):
        real = idx[w > 0]
        def mean_loss(p):
            return binary_cross_entropy_with_logits(model.apply({"params": p}, data["x"][real]), data["y"][real]).mean()
        loss, grads = jax.value_and_grad(mean_loss)(params)
        total += float(loss) * len(real)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    assert len(index[-1][weight[-1] > 0]) == 8
    assert losses[0] == pytest.approx(total / 72, rel=1e-5)
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(params)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_scan_and_loop_drivers_give_the_same_training():
    data = _data()
    a, la = _train(*_engine("scan"), data, epochs=3)
    b, lb = _train(*_engine("loop"), data, epochs=3)
    np.testing.assert_allclose(la, lb, rtol=1e-6)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(x, y, atol=1e-6)


@pytest.mark.parametrize("driver", ["scan", "loop"])
def test_two_devices_match_one(driver):
    assert jax.local_device_count() >= 2, "conftest forces two CPU devices"
    data = _data()
    one, l1 = _train(*_engine(driver, devices=1), data, epochs=3)
    two, l2 = _train(*_engine(driver, devices=2), data, epochs=3)
    np.testing.assert_allclose(l1, l2, atol=1e-5)
    for x, y in zip(jax.tree.leaves(one.params), jax.tree.leaves(two.params)):
        np.testing.assert_allclose(x, y, atol=1e-5)


def test_evaluate_outputs_in_data_order_and_metrics_are_weighted_means():
    data = _data(n=50)
    engine, state = _engine(devices=2, batch_size=32)
    replicated = engine.replicate(state)
    metrics, logits = engine.evaluate(replicated, engine.put(data), return_outputs=True)
    direct = np.asarray(engine.task.model.apply({"params": state.params}, data["x"]))
    np.testing.assert_allclose(logits, direct, atol=1e-5)
    expected = np.asarray(binary_cross_entropy_with_logits(jnp.asarray(direct), data["y"])).mean()
    assert metrics["loss"] == pytest.approx(expected, rel=1e-5)
    assert metrics["accuracy"] == pytest.approx(np.mean((direct > 0) == (data["y"] > 0.5)))


@pytest.mark.parametrize("driver", ["scan", "loop"])
def test_epochs_compile_once(driver):
    traces = []
    model = BiLSTMClassifier(hidden_dim=4)
    base = make_task(dna.Config(), model)

    def counting_loss(logits, batch):
        traces.append(1)  # runs at trace time only
        return base.loss(logits, batch)

    task = type(base)(**{**base.__dict__, "loss": counting_loss})
    engine, state = _engine(driver, task=task)
    train = engine.put(_data())
    replicated = engine.replicate(state)
    replicated, _ = engine.train_epoch(replicated, train, 1)
    after_first = len(traces)
    for epoch in (2, 3, 4):
        replicated = engine.with_learning_rate(replicated, 1e-2 / epoch)  # a plateau step: no recompile
        replicated, _ = engine.train_epoch(replicated, train, epoch)
    assert len(traces) == after_first


def test_bad_engine_settings():
    with pytest.raises(ValueError, match="not divisible by 2 devices"):
        _engine(devices=2, batch_size=33)
    with pytest.raises(ValueError, match="device"):
        _engine(devices=64)
    with pytest.raises(ValueError, match="driver"):
        _engine(driver="fast")


@pytest.mark.parametrize("driver", ["scan", "loop"])
def test_vmapped_configurations_match_sequential_runs_and_freeze_when_inactive(driver):
    """Two learning rates in one vmapped program = two separate runs on the same batches."""
    from molml_jax.train.state import with_learning_rate

    data = _data()
    lrs = [1e-2, 3e-3]
    engine, state = _engine(driver)
    singles = []
    for lr in lrs:
        train = engine.put(data)
        replicated = engine.replicate(with_learning_rate(state, lr))
        for epoch in (1, 2):
            replicated, metrics = engine.train_epoch(replicated, train, epoch, order_rng=state.rng)
        singles.append((engine.unreplicate(replicated), metrics["loss"]))

    model = engine.task.model
    sweep = Engine(engine.task, engine.tx, batch_size=32, driver=driver, configs=2)
    stacked = sweep.stack([with_learning_rate(state, lr) for lr in lrs])
    train = sweep.put(data)
    replicated = sweep.replicate(stacked)
    for epoch in (1, 2):
        replicated, metrics = sweep.train_epoch(replicated, train, epoch, order_rng=state.rng)
    both = sweep.unreplicate(replicated)
    assert metrics["loss"].shape == (2,)
    for k, (single, loss) in enumerate(singles):
        assert metrics["loss"][k] == pytest.approx(loss, rel=1e-5)
        for a, b in zip(jax.tree.leaves(both.params), jax.tree.leaves(single.params)):
            np.testing.assert_allclose(a[k], b, atol=2e-6)
    evals, outputs = sweep.evaluate(replicated, train, return_outputs=True)
    assert evals["loss"].shape == (2,) and outputs.shape == (2, 72)
    np.testing.assert_allclose(outputs[1], model.apply({"params": singles[1][0].params}, data["x"]), atol=1e-5)

    # an inactive configuration does not change
    frozen, _ = sweep.train_epoch(replicated, train, 3, order_rng=state.rng, active=[True, False])
    frozen = sweep.unreplicate(frozen)
    for a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves(both)):
        np.testing.assert_array_equal(a[1], b[1])
    assert int(frozen.step[0]) == int(both.step[0]) + 3 and int(frozen.step[1]) == int(both.step[1])


def test_scan_epoch_donates_the_state_and_a_non_finite_epoch_keeps_the_state_it_entered_with():
    """The scanned epoch writes the new state over the one it was given (donated: the input
    is deleted where the backend honours donation), so the divergence guard is inside the
    epoch: a configuration whose parameters become non-finite keeps its entry state and
    reports a NaN loss; the other configuration trains on."""
    from molml_jax.train.state import with_learning_rate

    engine, state = _engine("scan")
    assert engine.donates_state and not _engine("loop")[0].donates_state
    train = engine.put(_data())
    given = engine.replicate(state)
    new, metrics = engine.train_epoch(given, train, 1)
    assert np.isfinite(metrics["loss"])
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(given))  # XLA:CPU honours donation
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(new))

    sweep = Engine(engine.task, engine.tx, batch_size=32, driver="scan", configs=2)
    entry = sweep.stack([with_learning_rate(state, 1e-2), with_learning_rate(state, np.inf)])
    out, metrics = sweep.train_epoch(sweep.replicate(entry), sweep.put(_data()), 1, order_rng=state.rng)
    out = sweep.unreplicate(out)
    assert np.isfinite(metrics["loss"][0]) and np.isnan(metrics["loss"][1])
    for before, after in zip(jax.tree.leaves(entry), jax.tree.leaves(out)):
        np.testing.assert_array_equal(after[1], before[1])  # the diverged one: exactly its entry state
    assert int(out.step[0]) == 3 and int(out.step[1]) == 0
    assert all(np.isfinite(leaf[0]).all() for leaf in jax.tree.leaves(out.params))


class _Reader:
    """A split read on the host, example by example, counting what it was asked for."""

    def __init__(self, arrays):
        self.arrays, self.n, self.reads = arrays, len(next(iter(arrays.values()))), 0

    def read(self, indices):
        self.reads += len(indices)
        return {k: v[indices] for k, v in self.arrays.items()}


@pytest.mark.parametrize("devices", [1, 2])
def test_streamed_split_trains_and_evaluates_as_the_split_on_the_devices(devices):
    data = _data(n=50)
    in_memory, l1 = _train(*_engine("loop", devices=devices), data, epochs=2)
    engine, state = _engine("loop", devices=devices)
    reader = _Reader(data)
    train = engine.stream(reader)
    replicated, losses = engine.replicate(state), []
    for epoch in (1, 2):
        replicated, metrics = engine.train_epoch(replicated, train, epoch)
        losses.append(metrics["loss"])
    assert reader.reads == 2 * 64  # two epochs of two batches of 32 (padding read, weighted 0)
    np.testing.assert_allclose(losses, l1, rtol=1e-6)
    for x, y in zip(jax.tree.leaves(in_memory.params), jax.tree.leaves(engine.unreplicate(replicated).params)):
        np.testing.assert_allclose(x, y, atol=1e-6)
    streamed = engine.evaluate(replicated, train, return_outputs=True)
    on_devices = engine.evaluate(replicated, engine.put(data), return_outputs=True)
    assert streamed[0] == pytest.approx(on_devices[0], rel=1e-6)
    np.testing.assert_allclose(streamed[1], on_devices[1], atol=1e-6)


def test_scan_driver_cannot_stream():
    engine, _ = _engine("scan")
    with pytest.raises(ValueError, match="cannot stream"):
        engine.stream(_Reader(_data()))
