"""The one training engine: a pmapped step, two epoch drivers, evaluation and prediction.

By default data lives on the devices for the whole run: each split is copied once to every
device (D, N, ...) and a batch is a set of indices into it (`Engine.put`). A split too big
for that streams (`Engine.stream`): each batch is read on the host (grain threads reading
ahead) and sent to the devices while the previous step runs. Epoch plans (shuffle, padding,
which device takes which examples) come from a JAX key, so every driver sees exactly the
same batches:

  scan:   the whole epoch is one pmapped program; batches run under lax.scan.
  loop:   a Python loop calls the pmapped step once per batch, gathering it on the device.
  stream: the loop, with batches read on the host (a streamed split).

More than one process (jax.distributed, molml_jax.distributed): the devices are those of
every process, each process feeds its own devices' share of every batch, and the sums
below run over all of them, so N processes compute what one process with all the devices
computes.

The global batch is split over D devices; gradients are summed with lax.psum and divided
by the global count of real examples, so D devices compute the same update as one. The
last batch is padded to full size with weight-0 examples: the update equals PyTorch's
short last batch.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from molml_jax.errors import require
from molml_jax.train.state import TrainState, learning_rate
from molml_jax.train.task import Task

AXIS = "devices"
_SHUFFLE = 0x5EED  # salt: the shuffle key never equals a step key


# batches read ahead of the step by a streamed split (host memory: this many batches)
STREAM_PREFETCH = 4


class DeviceData:
    """A split on every local device: arrays (D_local, N, ...) and the number of examples N."""

    def __init__(self, arrays: Mapping[str, jax.Array], n: int):
        self.arrays = dict(arrays)
        self.n = n


class HostData:
    """A streamed split: N examples read on the host batch by batch.

    reader: anything with .n and .read(indices (M,) int) -> {name: (M, ...) array}, the
    same names and dtypes as the arrays `Engine.put` would take (molml_jax.datasets
    readers: in-memory arrays or a prepared TFDS dataset).
    """

    def __init__(self, reader):
        self.reader = reader
        self.n = int(reader.n)


def first_local(x) -> np.ndarray:
    """Host copy of what the first local device holds of a pmapped array (a replicated
    state leaf or psum-ed sums: the same on every device); numpy arrays (D, ...) -> x[0]."""
    if isinstance(x, jax.Array):
        # a copy: a zero-copy view of a CPU buffer would keep it alive and stop its donation
        return np.array(x.addressable_data(0))[0]
    return np.asarray(x)[0]


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
        processes = jax.process_count()
        if devices < 1 or devices > available:
            raise ValueError(
                f"--devices {devices}: this machine has {available} {jax.default_backend()} device(s)"
                + (" (on CPU, set XLA_FLAGS=--xla_force_host_platform_device_count=N)" if jax.default_backend() == "cpu" else "")
            )
        for name, size in (("batch size", batch_size), ("eval batch size", eval_batch_size or batch_size)):
            if size % (devices * processes):
                raise ValueError(f"{name} {size} is not divisible by {devices * processes} devices"
                                 + (f" ({devices} in each of {processes} processes)" if processes > 1 else ""))
        self.task, self.tx = task, tx
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        # the global device list, process by process: axis_index i is device i of the plans
        self.n_local = devices
        self.n_devices = devices * processes
        self.configs = configs
        self.devices = [d for p in range(processes)
                        for d in sorted(jax.local_devices(process_index=p), key=lambda d: d.id)[:devices]]
        me = jax.process_index()
        self._rows = slice(me * devices, (me + 1) * devices)  # this process's rows of a plan
        backend = jax.default_backend()
        self.driver = task.driver_for(backend) if driver == "auto" else driver
        if self.driver not in ("scan", "loop"):
            raise ValueError(f"driver must be 'scan', 'loop' or 'auto', not {driver!r}")
        pmap = lambda f, in_axes, donate=(): jax.pmap(f, axis_name=AXIS, in_axes=in_axes, devices=self.devices,
                                                      donate_argnums=donate)
        self.donates_state = self.driver == "scan"
        self._epoch = pmap(self._scan_epoch, (0, 0, None, None), donate=(0,))
        self._step = pmap(self._batch_step, (0, 0, 0, 0, 0, None))
        self._given_step = pmap(self._step_on, (0, 0, None))
        self._eval = {(stream, gather): pmap(functools.partial(self._eval_step, stream=stream, gather=gather),
                                             (0, 0, 0, 0)) for stream in (False, True) for gather in (False, True)}
        self._plan = jax.jit(batch_plan, static_argnums=(1, 2, 3, 4))
        self._identity = jax.pmap(lambda tree: tree, axis_name=AXIS, devices=self.devices)
        self._set_lr = pmap(_set_learning_rate, (0, None), donate=(0,))

    # ----- placement -------------------------------------------------------------------
    def put(self, arrays: Mapping[str, np.ndarray]) -> DeviceData:
        """Copy a split (dict of equal-length arrays) to every device, once."""
        lengths = {len(v) for v in arrays.values()}
        if len(lengths) != 1:
            raise ValueError(f"arrays of one split differ in length: { {k: len(v) for k, v in arrays.items()} }")
        return DeviceData(self._replicate(dict(arrays)), lengths.pop())

    def stream(self, reader) -> HostData:
        """A split to read batch by batch on the host (see HostData): device memory holds a
        few batches, not the split. Needs a driver that takes batches from the host (loop)."""
        if self.driver == "scan":
            raise ValueError("the scan driver keeps a whole epoch's data on the devices and cannot stream; "
                             "use --driver loop (or auto)")
        return HostData(reader)

    def replicate(self, state: TrainState) -> TrainState:
        """Copy a host state to every device."""
        return self._replicate(state)

    def _replicate(self, tree):
        # Through a pmapped identity, from numpy: arrays then carry exactly the sharding and
        # types of the step's outputs, and the epoch compiles once, not twice.
        stacked = jax.tree.map(lambda x: np.stack([np.asarray(x)] * self.n_local), tree)
        return self._identity(stacked)

    def with_learning_rate(self, state: TrainState, lr) -> TrainState:
        """A replicated state whose learning rate is `lr` (a float, or (K,) with configs),
        set on the devices (every process alike); the given state is donated."""
        return self._set_lr(state, np.asarray(lr, np.float32))

    def stack(self, states: list[TrainState]) -> TrainState:
        """K host states -> one host state with a leading config axis (for configs=K)."""
        return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *states)

    @staticmethod
    def unreplicate(state: TrainState) -> TrainState:
        """One host copy (numpy) of a replicated state, for checkpoints and export."""
        return jax.tree.map(first_local, state)

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
        """Gather one batch from the device-resident split and take the train step."""
        return self._step_on(state, self._gather(data, index, weight, position), active)

    def _step_on(self, state, batch, active):
        """The train step on one batch: for one configuration, or vmapped over K of them
        (those not `active` keep their state)."""
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

    def _eval_step(self, state, data, index, weight, *, stream: bool, gather: bool):
        """Metric sums of one eval batch (gathered on the device, or given: `stream`); with
        `gather`, also the outputs of every device, process and configuration (D, [K,] b, ...)."""
        batch = dict(data, _weight=weight) if stream else self._gather(data, index, weight, index)

        def one(state):
            out, _ = self._apply(state.params, state.batch_stats, batch, train=False)
            return self._metric_sums(out, batch, self.task.loss(out, batch)), out

        sums, out = one(state) if self.configs is None else jax.vmap(one)(state)
        return sums, (jax.lax.all_gather(out, AXIS) if gather else None)

    # ----- epochs ----------------------------------------------------------------------
    def train_epoch(self, state: TrainState, data: DeviceData | HostData, epoch: int, *, order_rng=None,
                    active=None) -> tuple[TrainState, dict]:
        """One pass over `data` in a fresh order; returns the state and mean metrics.

        The order comes from (order_rng or the state's rng, epoch). With configs=K, metrics
        are (K,) arrays and `active` (K,) bool (default all) selects who trains.
        """
        if order_rng is None:
            order_rng = first_local(state.rng) if self.configs is None else first_local(state.rng)[0]
        key_data = shuffle_key(np.asarray(order_rng), epoch)
        if self.configs is not None:
            active = np.ones(self.configs, bool) if active is None else np.asarray(active, bool)
        if self.driver == "scan" and isinstance(data, DeviceData):
            state, sums = self._epoch(state, data.arrays, key_data, active)
            return state, _means(sums, self.task.summarize)
        if self.driver == "scan":
            raise ValueError("the scan driver cannot train on a streamed split; use the loop driver")
        plan = self._local_plan(jax.random.wrap_key_data(key_data), data.n, self.batch_size, True)
        sums = []
        if isinstance(data, HostData):
            for batch in self._host_batches(data, *plan):
                state, batch_sums = self._given_step(state, batch, active)
                sums.append(batch_sums)
                _bound_in_flight(sums)
        else:
            index, weight, position = plan
            for b in range(index.shape[0]):
                state, batch_sums = self._step(state, data.arrays, index[b], weight[b], position[b], active)
                sums.append(batch_sums)
        return state, _means(sums, self.task.summarize)

    def _local_plan(self, key, n: int, batch_size: int, shuffle: bool):
        """This process's rows of an epoch plan: (index, weight, position), each
        (num_batches, D_local, batch_size // D) numpy."""
        plan = self._plan(key, n, batch_size, self.n_devices, shuffle)
        return tuple(np.asarray(p)[:, self._rows] for p in plan)

    def _host_batches(self, data: HostData, index, weight, position):
        """The plan's batches read from the host, in order, `STREAM_PREFETCH` read ahead by
        grain's threads: {name: (D_local, b, ...)} with _weight and _position."""
        grain = require("grain", "data", "streaming batches from the host (--stream)")

        def read(b: int) -> dict:
            rows = index[b]
            arrays = data.reader.read(rows.reshape(-1))
            batch = {k: np.asarray(v).reshape(rows.shape + np.shape(v)[1:]) for k, v in arrays.items()}
            batch["_weight"], batch["_position"] = weight[b], position[b]
            return batch

        batches = grain.MapDataset.range(index.shape[0]).map(read).to_iter_dataset(
            grain.ReadOptions(num_threads=2, prefetch_buffer_size=STREAM_PREFETCH))
        return iter(batches)

    def evaluate(self, state: TrainState, data: DeviceData | HostData, *, return_outputs: bool = False):
        """Mean loss (and task metrics) over `data` in eval mode; optionally the outputs (N, ...)."""
        index, weight, _ = self._local_plan(jax.random.key(0), data.n, self.eval_batch_size, False)
        stream = isinstance(data, HostData)
        evaluate = self._eval[(stream, return_outputs)]
        # (data, index, weight) of each batch: indices into the device arrays, or the batch read
        batches = ((b, b["_position"], b["_weight"]) for b in self._host_batches(data, index, weight, index)) \
            if stream else ((data.arrays, index[b], weight[b]) for b in range(index.shape[0]))
        sums, outputs = [], []
        for batch in batches:
            batch_sums, out = evaluate(state, *batch)
            sums.append(batch_sums)
            if return_outputs:
                outputs.append(first_local(out))  # (D, [K,] b, ...): every device's outputs
            _bound_in_flight(sums)
        metrics = _means(sums, self.task.summarize)
        if not return_outputs:
            return metrics
        # per batch (D, b, ...) -> (D * b, ...) in data order, then drop padding;
        # with configs: (D, K, b, ...) per batch -> (K, N, ...)
        if self.configs is None:
            stacked = np.concatenate([o.reshape((-1,) + o.shape[2:]) for o in outputs])
            return metrics, stacked[: data.n]
        per_batch = [np.moveaxis(o, 1, 0) for o in outputs]
        stacked = np.concatenate([o.reshape((o.shape[0], -1) + o.shape[3:]) for o in per_batch], axis=1)
        return metrics, stacked[:, : data.n]


def _bound_in_flight(sums: list, ahead: int = 2) -> None:
    """Wait for the step `ahead` steps back: JAX dispatches asynchronously, and a host loop
    feeding batches would otherwise queue the whole split on the devices."""
    if len(sums) > ahead:
        jax.block_until_ready(sums[-1 - ahead])


def _set_learning_rate(state: TrainState, lr) -> TrainState:
    """(per device) the state with its learning rate set to lr: () or (K,)."""
    old = learning_rate(state.opt_state)
    hyper = dict(state.opt_state.hyperparams, learning_rate=jnp.broadcast_to(lr.astype(old.dtype), old.shape))
    return state.replace(opt_state=state.opt_state._replace(hyperparams=hyper))


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
    host = {k: np.sum([first_local(b[k]).astype(np.float64) for b in batches], axis=0) for k in batches[0]}
    count = host.pop("count")
    means = {k: v / count for k, v in host.items()}
    if summarize is not None:
        means = {"loss": means["loss"], **summarize(means)}
    return {k: float(v) if np.ndim(v) == 0 else v for k, v in means.items()}
