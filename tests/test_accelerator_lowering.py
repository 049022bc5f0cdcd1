"""Every pipeline's compiled programs lower for a GPU (no GPU needed to lower): the train
step, the scanned epoch, the eval step and the vmapped sweep step, for the 'cuda' platform,
with no CPU-only custom call (the oneDNN convolutions) left in the module."""

import functools

import jax
import numpy as np
import pytest
from jax import export

from molml_jax.ops.native import conv_targets
from molml_jax.pipelines import dna, segmentation, tf_binding
from molml_jax.train import AXIS, Engine, create_train_state

CPU_ONLY = "molml_jax_onednn"  # prefix of the oneDNN FFI targets (registered for 'cpu' only)


def _setup(name):
    """(pipeline, tiny config, split arrays) for a pipeline, without reading files."""
    rng = np.random.default_rng(0)
    if name == "dna":
        x = np.eye(4, dtype=np.float32)[rng.integers(0, 4, (8, 12))]
        return dna, dna.Config(hidden_dim=4, batch_size=4), {"x": x, "y": (rng.random(8) > 0.5).astype(np.float32)}
    if name == "tf_binding":
        x = np.eye(4, dtype=np.float32)[rng.integers(0, 4, (8, 20))]
        config = tf_binding.Config(num_channels=4, num_blocks=1, window_length=20, batch_size=4)
        return tf_binding, config, {"x": x, "y": rng.random((8, 20)).astype(np.float32)}
    config = segmentation.Config(num_kernel=2, batch_size=4)
    return segmentation, config, {"x": rng.random((8, 16, 16)).astype(np.float32),
                                  "y": (rng.random((8, 16, 16)) > 0.5).astype(np.float32)}


def _abstract(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), tree)


def _modules(name, configs, platform):
    """MLIR text of the step, scanned epoch, eval step and streamed step of one device (the device axis
    vmapped with its name, so the collectives lower too), for `platform`."""
    pipeline, config, arrays = _setup(name)
    model = pipeline.build_model(config)
    task, tx = pipeline.make_task(config, model), pipeline.make_optimizer(config)
    engine = Engine(task, tx, batch_size=config.batch_size, devices=1, driver="loop", configs=configs)
    state = create_train_state(model, tx, (arrays["x"][:1],), 0)
    if configs:
        state = engine.stack([state] * configs)
    one = lambda tree: jax.tree.map(lambda a: np.asarray(a)[None], tree)  # the device axis
    per_device = lambda f, in_axes, donate=(): jax.jit(jax.vmap(f, in_axes=in_axes, axis_name=AXIS),
                                                       donate_argnums=donate)
    index = np.arange(config.batch_size, dtype=np.int32)
    weight = np.ones(config.batch_size, np.float32)
    active = np.ones(configs, bool) if configs else None
    key = np.asarray(jax.random.key_data(jax.random.key(0)))
    batch = {**{k: v[index] for k, v in arrays.items()}, "_weight": weight, "_position": index}
    programs = {
        "train step": (per_device(engine._batch_step, (0, 0, 0, 0, 0, None)),
                       (one(state), one(arrays), one(index), one(weight), one(index), active)),
        "scanned epoch": (per_device(engine._scan_epoch, (0, 0, None, None), donate=(0,)),  # as Engine donates
                          (one(state), one(arrays), key, active)),
        "eval step": (per_device(functools.partial(engine._eval_step, stream=False, gather=True), (0, 0, 0, 0)),
                      (one(state), one(arrays), one(index), one(weight))),
        # a streamed split's step: the batch read on the host (train split's first batch_size)
        "streamed train step": (per_device(engine._step_on, (0, 0, None)), (one(state), one(batch), active)),
    }
    if platform == "cpu":  # export refuses the oneDNN calls (no compatibility guarantee): lower here
        return {what: f.lower(*_abstract(args)).as_text() for what, (f, args) in programs.items()}
    return {what: export.export(f, platforms=[platform])(*_abstract(args)).mlir_module()
            for what, (f, args) in programs.items()}


@pytest.mark.parametrize("configs", [None, 2], ids=["one run", "vmapped sweep"])
@pytest.mark.parametrize("name", ["dna", "tf_binding", "segmentation"])
def test_programs_lower_for_cuda_without_cpu_only_calls(name, configs):
    modules = _modules(name, configs, "cuda")
    for what, module in modules.items():
        assert CPU_ONLY not in module, f"{name} {what}: CPU-only custom call in the CUDA lowering"
        if name != "dna":  # the CNN and the U-Net convolve with XLA's convolutions on GPU
            assert "stablehlo.convolution" in module, f"{name} {what}"
    # the donated state's buffers are reused for the new state (one copy per epoch, not two)
    signature = next(line for line in modules["scanned epoch"].splitlines() if "func.func public @main" in line)
    n_state = len(jax.tree.leaves(_state_leaves(name, configs)))
    assert signature.count("tf.aliasing_output") == n_state, signature[:300]


def _state_leaves(name, configs):
    pipeline, config, arrays = _setup(name)
    model = pipeline.build_model(config)
    return create_train_state(model, pipeline.make_optimizer(config), (arrays["x"][:1],), 0)


@pytest.mark.skipif(conv_targets() is None, reason="no oneDNN build on this machine")
def test_the_cpu_lowering_does_use_the_native_convolutions():
    # the check above is not vacuous: the same programs lowered for this CPU call oneDNN
    for what, module in _modules("tf_binding", None, "cpu").items():
        assert CPU_ONLY in module, what


@pytest.mark.parametrize("name", ["dna", "tf_binding", "segmentation"])
def test_every_backend_has_a_driver_and_a_sweep_mode(name):
    pipeline = {"dna": dna, "tf_binding": tf_binding, "segmentation": segmentation}[name]
    for table in (pipeline.DRIVERS, pipeline.SWEEP_PARALLEL):
        assert set(table) == {"cpu", "gpu", "tpu"}  # the values jax.default_backend() returns
    assert set(pipeline.DRIVERS.values()) <= {"scan", "loop"}
    assert set(pipeline.SWEEP_PARALLEL.values()) <= {"vmap", "sequential"}
