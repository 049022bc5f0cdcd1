"""The train state: everything a checkpoint holds to resume exactly."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax


class TrainState(flax.struct.PyTreeNode):
    """step: int32 (); params / batch_stats: model variables ({} if the model has no
    BatchNorm); opt_state: optax state (made with optax.inject_hyperparams, so the
    learning rate is a state value); rng: uint32 (2,) raw key data (orbax saves it as an
    array). Per-step randomness is fold_in(rng, step), so a resumed run draws the same."""

    step: jnp.ndarray
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jnp.ndarray

    @property
    def key(self) -> jax.Array:
        return jax.random.wrap_key_data(self.rng)


def seed_keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """(init key, run key) from a seed; TrainState.rng is the run key's data."""
    init_key, run_key = jax.random.split(jax.random.key(seed))
    return init_key, run_key


def _state(variables, tx: optax.GradientTransformation, train_key) -> TrainState:
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables.get("batch_stats", {}),
                      opt_state=tx.init(params), rng=jax.random.key_data(train_key))


def create_train_state(
    model: nn.Module, tx: optax.GradientTransformation, sample_inputs: tuple, seed: int
) -> TrainState:
    """Initialise parameters from `seed` (host arrays, one copy: the engine replicates).

    The init program runs once, so it is compiled without LLVM's optimisations: for the
    U-Net (108 random initialisers) that takes 3 s instead of 17 s on a 2-core CPU, for the
    same values to float32 rounding."""
    init_key, train_key = seed_keys(seed)
    init = jax.jit(lambda k: model.init(k, *sample_inputs, train=False))
    compiled = init.lower(init_key).compile(compiler_options={"xla_backend_optimization_level": 0})
    return _state(compiled(init_key), tx, train_key)


def train_state_from_variables(variables, tx: optax.GradientTransformation, seed: int = 0) -> TrainState:
    """A train state holding trained `variables` ({'params', ['batch_stats']}) and a fresh
    optimiser state: what the engine evaluates a loaded model with."""
    return _state(variables, tx, seed_keys(seed)[1])


def train_state_shapes(model: nn.Module, tx: optax.GradientTransformation, sample_inputs: tuple) -> TrainState:
    """The structure, shapes and dtypes of create_train_state's result (jax.ShapeDtypeStruct
    leaves), without computing it: the target to restore a checkpoint into."""
    init_key, train_key = seed_keys(0)
    return jax.eval_shape(lambda: _state(model.init(init_key, *sample_inputs, train=False), tx, train_key))


def learning_rate(opt_state) -> jnp.ndarray:
    """The learning rate held in an optax.inject_hyperparams state."""
    return opt_state.hyperparams["learning_rate"]


def with_learning_rate(state: TrainState, lr) -> TrainState:
    """A state whose learning rate is `lr` (same shape as the stored one: per device/config),
    placed as the stored one is, so a compiled epoch taking the state does not recompile."""
    old = learning_rate(state.opt_state)
    new = jnp.broadcast_to(jnp.asarray(lr, old.dtype), old.shape)
    if isinstance(old, jax.Array):
        new = jax.device_put(new, old.sharding)
    hyper = dict(state.opt_state.hyperparams, learning_rate=new)
    return state.replace(opt_state=state.opt_state._replace(hyperparams=hyper))
