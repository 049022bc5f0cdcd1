import numpy as np
import pytest

from molml_jax.train import PlateauConfig, PlateauState, plateau_update


def torch_lrs(losses, lr=1e-2, factor=0.5, patience=10):
    torch = pytest.importorskip("torch")
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=factor, patience=patience)
    out = []
    for loss in losses:
        sched.step(loss)
        out.append(opt.param_groups[0]["lr"])
    return out


def ours(losses, lr=1e-2, factor=0.5, patience=10):
    config = PlateauConfig(factor=factor, patience=patience)
    state = PlateauState.start(lr)
    out = []
    for loss in losses:
        state = plateau_update(state, loss, config)
        out.append(float(state.lr))
    return out


def test_hand_computed_sequence():
    # improves twice, then 11 flat epochs: the 11th bad epoch (> patience 10) halves the rate
    losses = [1.0, 0.9] + [0.9] * 11 + [0.8]
    lrs = ours(losses)
    assert lrs[:12] == [1e-2] * 12
    assert lrs[12] == pytest.approx(5e-3) and lrs[13] == pytest.approx(5e-3)


def test_relative_threshold():
    # 0.9 * (1 - 1e-4) = 0.89991: 0.89995 is NOT an improvement
    state = plateau_update(PlateauState.start(1.0), 0.9, PlateauConfig())
    state = plateau_update(state, 0.89995, PlateauConfig())
    assert int(state.num_bad_epochs) == 1 and float(state.best) == 0.9


@pytest.mark.parametrize("seed", range(40))
def test_matches_torch_reduce_lr_on_plateau(seed):
    rng = np.random.default_rng(seed)
    # noisy plateaus with occasional improvements and a long tail (rate falls below eps)
    losses = np.cumsum(rng.normal(0, 0.01, 400)) + np.where(rng.random(400) < 0.05, -0.05, 0)
    if seed % 4 == 0:
        losses = np.full(400, 0.5)
    assert ours(list(losses), patience=seed % 5 + 1) == pytest.approx(
        torch_lrs(list(losses), patience=seed % 5 + 1), rel=1e-12)


def test_vectorised_over_configurations():
    config = PlateauConfig(patience=1)
    state = PlateauState.start(np.array([1e-2, 1e-3]))
    for loss in ([1.0, 1.0], [1.0, 0.5], [1.0, 0.4]):
        state = plateau_update(state, np.array(loss), config)
    np.testing.assert_allclose(state.lr, [5e-3, 1e-3])
    again = PlateauState.from_json(state.to_json())
    np.testing.assert_array_equal(again.lr, state.lr)
