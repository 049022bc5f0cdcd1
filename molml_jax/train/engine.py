"""The one training engine: a pmapped step, two epoch drivers, evaluation and prediction.

Data lives on the devices for the whole run: each split is copied once to every device
(D, N, ...). A batch is a set of indices into it. Epoch plans (shuffle, padding, which
device takes which examples) are computed on device from a JAX key, so both drivers see
exactly the same batches:

  scan: the whole epoch is one pmapped program; batches run under lax.scan.
  loop: a Python loop calls the pmapped step once per batch.

The global batch is split over D devices; gradients are summed with lax.psum and divided
by the global count of real examples, so D devices compute the same update as one. The
last batch is padded to full size with weight-0 examples: the update equals PyTorch's
short last batch.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from molml_jax.train.state import TrainState
from molml_jax.train.task import Task

AXIS = "devices"
_SHUFFLE = 0x5EED  # salt: the shuffle key never equals a step key


class DeviceData:
    """A split on every device: arrays (D, N, ...) and the number of examples N."""

    def __init__(self, arrays: Mapping[str, jax.Array], n: int):
        self.arrays = dict(arrays)
        self.n = n


def shuffle_key(run_rng, epoch: int) -> jax.Array:
    """The epoch's shuffle key (raw key data) from the run's key (TrainState.rng) and epoch."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(run_rng), _SHUFFLE), epoch)
    return jax.random.key_data(key)


def epoch_order(run_rng, epoch: int, n: int) -> np.ndarray:
    """The order in which an epoch visits n training examples (what both drivers use):
    lets another framework replay exactly the same batches."""
    return np.asarray(jax.random.permutation(jax.random.wrap_key_data(shuffle_key(run_rng, epoch)), n))


def batch_plan(key, n: int, batch_size: int, n_devices: int, shuffle: bool):
    """Indices, weights and global positions of every batch of an epoch.

    Returns (index, weight, position), each (num_batches, D, batch_size // D); padding
    repeats index 0 with weight 0.
    """
    num_batches = math.ceil(n / batch_size)
    total = num_batches * batch_size
    order = jax.random.permutation(key, n) if shuffle else jnp.arange(n)
    index = jnp.concatenate([order, jnp.zeros(total - n, order.dtype)])
    weight = (jnp.arange(total) < n).astype(jnp.float32)
    position = jnp.tile(jnp.arange(batch_size), num_batches)
    shape = (num_batches, n_devices, batch_size // n_devices)
    return index.reshape(shape), weight.reshape(shape), position.reshape(shape)


class Engine:
    """Compiled train/eval functions for one task, optimizer, batch size and device count.

    configs=K trains K configurations at once (a sweep): every leaf of the state has a
    leading axis K (after the device axis), the step is vmapped over it, and all K see the
    same batches. `active` (K,) bool freezes configurations that stopped early.

    The scan driver donates the state it is given (`donates_state`): XLA writes the new
    state over the old one's buffers, so an epoch holds one copy of the parameters and
    optimizer moments, not two. The previous state is then gone, so the divergence guard runs
    inside the compiled epoch: a configuration whose train loss or parameters became
    non-finite leaves the epoch with the state it entered with.
    """

    def __init__(self, task: Task, tx: optax.GradientTransformation, *, batch_size: int,
                 devices: int = 1, driver: str = "auto", eval_batch_size: int | None = None,
                 configs: int | None = None):
        available = jax.local_device_count()
        if devices < 1 or devices > available:
            raise ValueError(
                f"--devices {devices}: this machine has {available} {jax.default_backend()} device(s)"
                + (" (on CPU, set XLA_FLAGS=--xla_force_host_platform_device_count=N)" if jax.default_backend() == "cpu" else "")
            )
        for name, size in (("batch size", batch_size), ("eval batch size", eval_batch_size or batch_size)):
            if size % devices:
                raise ValueError(f"{name} {size} is not divisible by {devices} devices")
        self.task, self.tx = task, tx
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.n_devices = devices
        self.configs = configs
        self.devices = jax.local_devices()[:devices]
        backend = jax.default_backend()
        self.driver = task.driver_for(backend) if driver == "auto" else driver
        if self.driver not in ("scan", "loop"):
            raise ValueError(f"driver must be 'scan', 'loop' or 'auto', not {driver!r}")
        pmap = lambda f, in_axes, donate=(): jax.pmap(f, axis_name=AXIS, in_axes=in_axes, devices=self.devices,
                                                      donate_argnums=donate)
        self.donates_state = self.driver == "scan"
        self._epoch = pmap(self._scan_epoch, (0, 0, None, None), donate=(0,))
        self._step = pmap(self._batch_step, (0, 0, 0, 0, 0, None))
        self._eval = pmap(self._eval_step, (0, 0, 0, 0))
        self._plan = jax.jit(batch_plan, static_argnums=(1, 2, 3, 4))
        self._identity = jax.pmap(lambda tree: tree, axis_name=AXIS, devices=self.devices)

    # ----- placement -------------------------------------------------------------------
    def put(self, arrays: Mapping[str, np.ndarray]) -> DeviceData:
        """Copy a split (dict of equal-length arrays) to every device, once."""
        lengths = {len(v) for v in arrays.values()}
        if len(lengths) != 1:
            raise ValueError(f"arrays of one split differ in length: { {k: len(v) for k, v in arrays.items()} }")
        return DeviceData(self._replicate(dict(arrays)), lengths.pop())

    def replicate(self, state: TrainState) -> TrainState:
        """Copy a host state to every device."""
        return self._replicate(state)

    def _replicate(self, tree):
        # Through a pmapped identity, from numpy: arrays then carry exactly the sharding and
        # types of the step's outputs, and the epoch compiles once, not twice.
        stacked = jax.tree.map(lambda x: np.stack([np.asarray(x)] * self.n_devices), tree)
        return self._identity(stacked)

    def stack(self, states: list[TrainState]) -> TrainState:
        """K host states -> one host state with a leading config axis (for configs=K)."""
        return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *states)

    @staticmethod
    def unreplicate(state: TrainState) -> TrainState:
        """One host copy (numpy) of a replicated state, for checkpoints and export."""
        return jax.tree.map(lambda x: np.asarray(x[0]), state)

    # ----- per-device functions (run under pmap) -----------------------------------------
    def _apply(self, params, batch_stats, batch, *, train: bool, rng=None):
        variables = {"params": params}
        if batch_stats:
            variables["batch_stats"] = batch_stats
        inputs = [batch.get(k) for k in self.task.input_keys]
        kwargs = {name: batch[key] for name, key in self.task.train_kwargs.items()} if train else {}
        if train and batch_stats:
            out, updates = self.task.model.apply(
                variables, *inputs, train=True, rngs={"dropout": rng}, mutable=["batch_stats"], **kwargs)
            return out, updates["batch_stats"]
        rngs = {"dropout": rng} if train else None
        return self.task.model.apply(variables, *inputs, train=train, rngs=rngs, **kwargs), batch_stats

    def _metric_sums(self, outputs, batch, loss):
        weight = batch["_weight"]
        sums = {"loss": jnp.sum(loss * weight), "count": jnp.sum(weight)}
        if self.task.metrics is not None:
            for name, values in self.task.metrics(outputs, batch).items():
                sums[name] = jnp.sum(values * weight)
        return jax.lax.psum(sums, AXIS)

    def _train_step(self, state: TrainState, batch) -> tuple[TrainState, dict]:
        """One optimizer step on this device's share of the global batch: augment, forward,
        weighted loss, gradients summed over devices / global count of real examples,
        batch statistics averaged over devices, optax update. Returns metric sums."""
        step_key = jax.random.fold_in(state.key, state.step)
        if self.task.augment is not None:
            batch = self.task.augment(jax.random.fold_in(step_key, 0), batch)
        weight = batch["_weight"]

        def weighted_loss(params):
            out, new_stats = self._apply(params, state.batch_stats, batch, train=True,
                                         rng=jax.random.fold_in(step_key, 1))
            loss = self.task.loss(out, batch)
            return jnp.sum(loss * weight), (out, loss, new_stats)

        grads, (out, loss, new_stats) = jax.grad(weighted_loss, has_aux=True)(state.params)
        count = jax.lax.psum(jnp.sum(weight), AXIS)
        grads = jax.tree.map(lambda g: jax.lax.psum(g, AXIS) / count, grads)
        new_stats = jax.lax.pmean(new_stats, AXIS)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            batch_stats=new_stats,
            opt_state=opt_state,
        )
        return new_state, self._metric_sums(out, batch, loss)

    @staticmethod
    def _gather(data, index, weight, position):
        batch = {k: v[index] for k, v in data.items()}
        batch["_weight"], batch["_position"] = weight, position
        return batch

    def _batch_step(self, state, data, index, weight, position, active):
        """Gather one batch from the device-resident split and take the train step: for one
        configuration, or vmapped over K of them (those not `active` keep their state)."""
        batch = self._gather(data, index, weight, position)
        if self.configs is None:
            return self._train_step(state, batch)
        new, sums = jax.vmap(self._train_step, in_axes=(0, None))(state, batch)
        return where_configs(active, new, state), sums

    def _scan_epoch(self, state, data, key_data, active):
        n = next(iter(data.values())).shape[0]
        index, weight, position = batch_plan(
            jax.random.wrap_key_data(key_data), n, self.batch_size, self.n_devices, True)
        me = jax.lax.axis_index(AXIS)
        plan = (index[:, me], weight[:, me], position[:, me])

        def body(state, plan_row):
            return self._batch_step(state, data, *plan_row, active)

        new, sums = jax.lax.scan(body, state, plan)
        sums = jax.tree.map(lambda s: s.sum(0), sums)
        return _unless_non_finite(new, state, sums, stacked=self.configs is not None)

    def _eval_step(self, state, data, index, weight):
        batch = self._gather(data, index, weight, index)

        def one(state):
            out, _ = self._apply(state.params, state.batch_stats, batch, train=False)
            return self._metric_sums(out, batch, self.task.loss(out, batch)), out

        return one(state) if self.configs is None else jax.vmap(one)(state)

    # ----- epochs ----------------------------------------------------------------------
    def train_epoch(self, state: TrainState, data: DeviceData, epoch: int, *, order_rng=None,
                    active=None) -> tuple[TrainState, dict]:
        """One pass over `data` in a fresh order; returns the state and mean metrics.

        The order comes from (order_rng or the state's rng, epoch). With configs=K, metrics
        are (K,) arrays and `active` (K,) bool (default all) selects who trains.
        """
        if order_rng is None:
            order_rng = np.asarray(state.rng[0] if self.configs is None else state.rng[0, 0])
        key_data = shuffle_key(np.asarray(order_rng), epoch)
        if self.configs is not None:
            active = np.ones(self.configs, bool) if active is None else np.asarray(active, bool)
        if self.driver == "scan":
            state, sums = self._epoch(state, data.arrays, key_data, active)
        else:
            plan = self._plan(jax.random.wrap_key_data(key_data), data.n, self.batch_size,
                              self.n_devices, True)
            index, weight, position = (np.asarray(p) for p in plan)
            sums = []
            for b in range(index.shape[0]):
                state, batch_sums = self._step(state, data.arrays, index[b], weight[b], position[b], active)
                sums.append(batch_sums)
        return state, _means(sums, self.task.summarize)

    def evaluate(self, state: TrainState, data: DeviceData, *, return_outputs: bool = False):
        """Mean loss (and task metrics) over `data` in eval mode; optionally the outputs (N, ...)."""
        index, weight, _ = (np.asarray(p) for p in self._plan(
            jax.random.key(0), data.n, self.eval_batch_size, self.n_devices, False))
        sums, outputs = [], []
        for b in range(index.shape[0]):
            batch_sums, out = self._eval(state, data.arrays, index[b], weight[b])
            sums.append(batch_sums)
            if return_outputs:
                outputs.append(out)
        metrics = _means(sums, self.task.summarize)
        if not return_outputs:
            return metrics
        # (batches, D, b, ...) -> (batches * D * b, ...) in data order, then drop padding;
        # with configs: (D, K, b, ...) per batch -> (K, N, ...)
        if self.configs is None:
            stacked = np.concatenate([np.asarray(o).reshape((-1,) + o.shape[2:]) for o in outputs])
            return metrics, stacked[: data.n]
        per_batch = [np.moveaxis(np.asarray(o), 1, 0) for o in outputs]
        stacked = np.concatenate([o.reshape((o.shape[0], -1) + o.shape[3:]) for o in per_batch], axis=1)
        return metrics, stacked[:, : data.n]


def where_configs(take_new, new, old, *, axis: int = 0):
    """Per configuration, `new` where take_new else `old`, leaf by leaf. take_new: () for
    one configuration, (K,) for K stacked on `axis` of every leaf (1 on a replicated state,
    whose axis 0 is the devices)."""
    take_new = jnp.asarray(take_new)
    if take_new.ndim == 0:
        return jax.tree.map(lambda n, o: jnp.where(take_new, n, o), new, old)
    shape = lambda leaf: (1,) * axis + (-1,) + (1,) * (leaf.ndim - axis - 1)
    return jax.tree.map(lambda n, o: jnp.where(take_new.reshape(shape(n)), n, o), new, old)


def _unless_non_finite(new: TrainState, old: TrainState, sums: dict, *, stacked: bool) -> tuple[TrainState, dict]:
    """(state, sums) of an epoch: `new`, except for configurations whose loss sum or
    parameters are not finite, which keep `old` (their state before the epoch) and report a
    NaN loss, so the loop stops them as diverged. sums['loss']: () or (K,) when stacked."""
    def finite(tree):
        per_leaf = [jnp.isfinite(x).reshape((x.shape[0], -1) if stacked else (-1,)).all(-1)
                    for x in jax.tree.leaves(tree)]
        return jnp.stack(per_leaf).all(0)

    ok = jnp.isfinite(sums["loss"]) & finite(new.params)
    return where_configs(ok, new, old), {**sums, "loss": jnp.where(ok, sums["loss"], jnp.nan)}


def _means(sums: Any, summarize=None) -> dict:
    """Per-batch (or per-epoch) device sums -> means over real examples: host floats, or
    (K,) float64 arrays when training K configurations."""
    batches = sums if isinstance(sums, list) else [sums]
    host = {k: np.sum([np.asarray(b[k], np.float64)[0] for b in batches], axis=0) for k in batches[0]}
    count = host.pop("count")
    means = {k: v / count for k, v in host.items()}
    if summarize is not None:
        means = {"loss": means["loss"], **summarize(means)}
    return {k: float(v) if np.ndim(v) == 0 else v for k, v in means.items()}
