"""conv2d (oneDNN on CPU through XLA FFI) against XLA's convolution: values, gradients, fallback."""

import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from molml_jax.ops import conv, native
from jax import lax

from molml_jax.ops.conv import conv1d, conv2d, xla_conv2d

# (x shape, kernel shape, padding): the U-Net's 3x3 'same' convolutions (one input channel at
# the first layer), the sub-pixel transposed convolution's 1x2 / 2x1 / 2x2 phases with padding
# (0, 1), the final 1x1 with one output channel, and an odd, non-square image
CASES = [
    ((2, 32, 32, 8), (3, 3, 8, 8), ((1, 1), (1, 1))),
    ((2, 32, 32, 1), (3, 3, 1, 8), ((1, 1), (1, 1))),
    ((2, 8, 8, 16), (1, 2, 16, 16), ((0, 0), (0, 1))),
    ((2, 8, 8, 16), (2, 1, 16, 16), ((0, 1), (0, 0))),
    ((2, 8, 8, 16), (2, 2, 16, 16), ((0, 1), (0, 1))),
    ((2, 16, 16, 8), (1, 1, 8, 1), ((0, 0), (0, 0))),
    ((3, 13, 7, 5), (3, 3, 5, 6), ((2, 0), (1, 2))),
]


def _inputs(x_shape, k_shape, seed=0):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.normal(size=x_shape), jnp.float32),
            jnp.asarray(rng.normal(size=k_shape), jnp.float32))


def test_native_library_is_used_on_cpu():
    assert native.conv_targets() is not None, "the oneDNN convolutions should build on this machine"
    x, k = _inputs(*CASES[0][:2])
    loss = lambda x, k: jnp.sum(conv2d(x, k, CASES[0][2]) ** 2)
    hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, k).compile().as_text()
    targets = set(re.findall(r'custom_call_target="([^"]+)"', hlo))
    assert targets == set(native.conv_targets().values())


@pytest.mark.parametrize("x_shape,k_shape,padding", CASES)
def test_values_and_gradients_match_xla(x_shape, k_shape, padding):
    x, k = _inputs(x_shape, k_shape)
    y_ref, vjp_ref = jax.vjp(lambda x, k: xla_conv2d(x, k, padding), x, k)
    y, vjp = jax.vjp(jax.jit(lambda x, k: conv2d(x, k, padding)), x, k)
    assert y.shape == y_ref.shape
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    dy = jnp.asarray(np.random.default_rng(1).normal(size=y.shape), jnp.float32)
    for got, want in zip(vjp(dy), vjp_ref(dy)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(want))))


def test_the_non_cpu_backward_equals_the_native_one():
    # GPU/TPU take lax.platform_dependent's default branch: XLA's VJP
    x, k = _inputs(*CASES[4][:2])
    dy = jnp.asarray(np.random.default_rng(2).normal(size=(2, 8, 8, 16)), jnp.float32)
    for got, want in zip(conv._native_backward(x, k, dy, CASES[4][2]), conv._xla_backward(x, k, dy, CASES[4][2])):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_conv1d_matches_xla():
    # the TF-binding CNN's layers: 4 -> 32 and 32 -> 32 with k=3, the final 1x1 to one channel
    for c_in, c_out, k in ((4, 32, 3), (32, 32, 3), (32, 1, 1)):
        x, kernel = _inputs((3, 20, c_in), (k, c_in, c_out))
        padding = (k // 2, k // 2)
        ref = lambda x, kernel: lax.conv_general_dilated(x, kernel, (1,), [padding], dimension_numbers=("NWC", "WIO", "NWC"))
        y_ref, vjp_ref = jax.vjp(ref, x, kernel)
        y, vjp = jax.vjp(lambda x, kernel: conv1d(x, kernel, padding), x, kernel)
        np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
        for got, want in zip(vjp(jnp.ones_like(y)), vjp_ref(jnp.ones_like(y))):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="conv1d needs"):
        conv1d(jnp.ones((2, 5)), jnp.ones((3, 1, 1)), (1, 1))


def test_gpu_lowering_uses_xla_convolutions():
    # lowered for CUDA (no GPU needed to lower), only XLA's convolutions remain
    from jax import export

    x, k = _inputs(*CASES[0][:2])
    grad = jax.jit(jax.grad(lambda x, k: jnp.sum(conv2d(x, k, CASES[0][2]) ** 2), argnums=(0, 1)))
    module = export.export(grad, platforms=["cuda"])(x, k).mlir_module()
    assert "molml_jax_onednn" not in module
    assert module.count("stablehlo.convolution") == 3  # forward, input and kernel gradients


def test_hand_computed_values():
    # all-ones 3x3 kernel, 'same' padding: every output is the sum of its 3x3 neighbourhood
    x = jnp.arange(16, dtype=jnp.float32).reshape(1, 4, 4, 1)
    y = conv2d(x, jnp.ones((3, 3, 1, 1)), ((1, 1), (1, 1)))[0, :, :, 0]
    assert float(y[0, 0]) == 0 + 1 + 4 + 5
    assert float(y[1, 1]) == sum(range(0, 3)) + sum(range(4, 7)) + sum(range(8, 11))
    assert float(y[3, 3]) == 10 + 11 + 14 + 15


def test_vmap_and_deterministic():
    x, k = _inputs((3, 2, 16, 16, 4), (3, 3, 4, 4))
    f = jax.jit(jax.vmap(lambda x: conv2d(x, k, ((1, 1), (1, 1)))))
    np.testing.assert_allclose(f(x), jax.vmap(lambda x: xla_conv2d(x, k, ((1, 1), (1, 1))))(x),
                               rtol=1e-5, atol=1e-5)
    grad = jax.jit(jax.grad(lambda k: jnp.sum(jnp.sin(conv2d(x[0], k, ((1, 1), (1, 1)))))))
    np.testing.assert_array_equal(grad(k), grad(k))


def test_bad_shapes_are_refused():
    x, k = _inputs((1, 4, 4, 3), (3, 3, 2, 4))
    with pytest.raises(ValueError, match="conv2d needs"):
        conv2d(x, k, ((1, 1), (1, 1)))
    with pytest.raises(ValueError, match="larger than the padded input"):
        conv2d(jnp.ones((1, 2, 2, 1)), jnp.ones((5, 5, 1, 1)), ((0, 0), (0, 0)))


def test_unavailable_library_falls_back_to_xla_with_one_warning(monkeypatch, tmp_path):
    def no_library():
        raise native.NativeBuildError("onednn-cpu-gomp is not installed")

    monkeypatch.setattr(native, "build_library", no_library)
    native.conv_targets.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="oneDNN convolutions unavailable.*not installed"):
            assert native.conv_targets() is None
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # said once, cached
            x, k = _inputs(*CASES[0][:2])
            np.testing.assert_array_equal(conv2d(x, k, CASES[0][2]), xla_conv2d(x, k, CASES[0][2]))
    finally:
        native.conv_targets.cache_clear()


def test_xla_switch(monkeypatch):
    monkeypatch.setenv("MOLML_JAX_CONV", "xla")
    native.conv_targets.cache_clear()
    try:
        assert native.conv_targets() is None
    finally:
        monkeypatch.delenv("MOLML_JAX_CONV")
        native.conv_targets.cache_clear()
    assert native.conv_targets() is not None


def test_build_is_cached_and_compile_errors_are_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("MOLML_JAX_CACHE", str(tmp_path))
    built = native.build_library()
    assert built.parent == tmp_path and built.exists()
    mtime = built.stat().st_mtime_ns
    assert native.build_library() == built and built.stat().st_mtime_ns == mtime
    broken = tmp_path / "broken.cc"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(native, "SOURCE", broken)
    with pytest.raises(native.NativeBuildError, match="compiling broken.cc failed: .*error"):
        native.build_library()
    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.raises(native.NativeBuildError, match="no C\\+\\+ compiler 'no-such-compiler'"):
        native.build_library()


def test_forced_cpu_devices_share_the_cores_between_their_onednn_threads(monkeypatch):
    import os

    from molml_jax.process import use_cpu_devices

    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")  # already set: kept
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    use_cpu_devices(1)
    assert "OMP_NUM_THREADS" not in os.environ
    use_cpu_devices(2)
    assert os.environ["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's choice wins
    use_cpu_devices(2)
    assert os.environ["OMP_NUM_THREADS"] == "3"
