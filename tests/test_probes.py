"""Probes: per-layer gradient norms, update ratios, the decision boundary and user probes."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainlab import DecisionBoundary, GradNorm, Probe, Run, UpdateRatio


def moons_run(**kw) -> Run:
    kw.setdefault("model", ("mlp", {"width": 16, "depth": 2}))
    kw.setdefault("data", "moons")
    kw.setdefault("device", "cpu")
    return Run(**kw)


def layer_params(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Each direct child that owns parameters (weight and bias) - the test's own notion of a layer."""
    return {name: list(m.parameters()) for name, m in model.named_children() if list(m.parameters())}


def norm_of(tensors) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors))


def row_at(run: Run, step: int):
    df = run.history.frame()
    return df[df["step"] == step].iloc[0]


# ---- GradNorm --------------------------------------------------------------------------------
def test_grad_norm_per_layer_equals_the_gradients_norms():
    run = moons_run(model=("mlp", {"width": 16, "depth": 2, "norm": "batchnorm"}), probes=[GradNorm(every=5)])
    run.step(10)  # after the step, p.grad still holds the gradients of step 10
    row = row_at(run, 10)
    layers = layer_params(run.model)
    assert set(layers) == {"fc1", "norm1", "fc2", "norm2", "out"}
    for name, params in layers.items():
        assert len(params) == 2  # weight and bias
        expected = norm_of(p.grad for p in params)
        assert row[f"grad_norm/{name}"] == pytest.approx(expected, rel=1e-5), name
    df = run.history.frame()
    assert df.loc[df["grad_norm/fc1"].notna(), "step"].tolist() == [5, 10]


def test_global_grad_norm_equals_the_norm_of_all_gradients():
    run = moons_run()
    for _ in range(4):
        run.step(1)
        expected = norm_of(p.grad for p in run.model.parameters())
        assert run.history.frame()["grad_norm"].iloc[-1] == pytest.approx(expected, rel=1e-5)


def test_global_grad_norm_recomputed_from_a_copy():
    run = moons_run(batch_size=10_000, lr=0.1)  # full batch: the step sees exactly data.X, data.y
    run.step(3)
    twin = copy.deepcopy(run.model)
    run.step(1)
    twin.zero_grad()
    F.cross_entropy(twin(run.data.X), run.data.y).backward()
    expected = norm_of(p.grad for p in twin.parameters())
    assert run.history.frame()["grad_norm"].iloc[-1] == pytest.approx(expected, rel=1e-5)


# ---- UpdateRatio -----------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer, hp", [("sgd", {"momentum": 0.9}), ("adam", {})])
def test_update_ratio_equals_weight_change_over_weight(optimizer, hp):
    run = moons_run(optimizer=optimizer, lr=0.01, probes=[UpdateRatio(every=1)], **hp)
    run.step(3)
    before = {n: [p.detach().clone() for p in ps] for n, ps in layer_params(run.model).items()}
    run.step(1)
    row = row_at(run, 4)
    for name, params in layer_params(run.model).items():
        delta = norm_of(p.detach() - b for p, b in zip(params, before[name]))
        expected = delta / norm_of(before[name])
        assert expected > 0
        assert row[f"update_ratio/{name}"] == pytest.approx(expected, rel=1e-4), name


def test_update_ratio_only_on_its_steps():
    run = moons_run(probes=[UpdateRatio(every=4)])
    run.step(13)
    df = run.history.frame()
    assert df.loc[df["update_ratio/out"].notna(), "step"].tolist() == [4, 8, 12]


# ---- DecisionBoundary ------------------------------------------------------------------------
def test_decision_boundary_snapshot():
    run = moons_run(probes=[DecisionBoundary(every=5, resolution=25)], lr=0.2)
    assert run.history.snapshot("boundary") is None
    run.step(5)
    step, snap = run.history.snapshot("boundary")
    assert step == 5
    x, y, z = snap["x"], snap["y"], snap["z"]
    assert x.shape == (25,) and y.shape == (25,) and z.shape == (25, 25)
    assert np.all(z >= 0) and np.all(z <= 1)
    X = run.data.X.numpy()
    assert x[0] < X[:, 0].min() and x[-1] > X[:, 0].max()  # the grid covers the data with a margin
    assert y[0] < X[:, 1].min() and y[-1] > X[:, 1].max()

    # z[i, j] is the class-1 probability at (x[j], y[i]), in eval mode
    gx, gy = np.meshgrid(x, y)
    grid = torch.tensor(np.stack([gx.ravel(), gy.ravel()], 1), dtype=torch.float32)
    with torch.no_grad():
        p1 = run.model(grid).softmax(1)[:, 1].reshape(25, 25).numpy()
    np.testing.assert_allclose(z, p1, rtol=1e-5, atol=1e-6)

    run.step(100)
    step2, snap2 = run.history.snapshot("boundary")
    assert step2 == 105
    assert np.abs(snap2["z"] - z).max() > 0.05  # it follows training
    assert "boundary" not in run.history.frame().columns  # arrays are snapshots, not columns


def test_decision_boundary_multiclass_gives_classes():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(90, 2, generator=g)
    y = torch.arange(90) % 3
    run = moons_run(data=(X, y), probes=[DecisionBoundary(every=2, resolution=10)])
    run.step(2)
    z = run.history.snapshot("boundary")[1]["z"]
    assert z.shape == (10, 10)
    assert set(np.unique(z)) <= {0.0, 1.0, 2.0}


def test_decision_boundary_only_for_2d_data():
    run = Run(data="digits", device="cpu", probes=[DecisionBoundary(every=1)])
    run.step(2)
    assert run.history.snapshot("boundary") is None


def test_default_probes():
    from trainlab.probes import DeadUnits

    kinds = {type(p) for p in moons_run().probes}
    assert kinds == {GradNorm, UpdateRatio, DecisionBoundary, DeadUnits}
    kinds = {type(p) for p in Run(data="digits", device="cpu").probes}
    assert kinds == {GradNorm, UpdateRatio, DeadUnits}
    kinds = {type(p) for p in Run(model=("mlp", {"activation": "tanh"}), data="digits", device="cpu").probes}
    assert kinds == {GradNorm, UpdateRatio}  # no ReLU, nothing to die
    assert moons_run(probes=[]).probes == []


def test_dead_units_are_the_relus_silent_on_the_whole_batch():
    from trainlab.probes import DeadUnits

    run = moons_run(probes=[DeadUnits(every=1)], batch_size=100_000)  # full batch: the reference sees the same
    with torch.no_grad():
        run.model.fc1.bias[:4] = -1e3  # four units that no input can switch on
        h1 = run.model.act1(run.model.fc1(run.data.X))
        h2 = run.model.act2(run.model.fc2(h1))
    run.step(1)  # the forward of step 1 is at these weights
    row = run.history.frame().iloc[-1]
    assert row["dead_units/act1"] == pytest.approx(1 - (h1 > 0).any(0).float().mean().item())
    assert row["dead_units/act1"] >= 4 / 16
    assert row["dead_units/act2"] == pytest.approx(1 - (h2 > 0).any(0).float().mean().item())
    assert not run.model.act1._forward_hooks  # the hooks are gone after the measuring step


# ---- user probes -----------------------------------------------------------------------------
class Counter(Probe):
    name = "counter"

    def __init__(self, every):
        super().__init__(every)
        self.before_calls, self.measured_at = [], []

    def before(self, run):
        self.before_calls.append(run.steps + 1)  # the step about to be taken

    def measure(self, run):
        self.measured_at.append(run.steps)
        w = run.model.out.weight.detach()
        return {"counter/out_mean": float(w.mean()), "counter_hist": w.flatten().numpy().copy()}


@pytest.mark.parametrize("every", [1, 3, 7])
def test_custom_probe_column_every_k_steps(every):
    probe = Counter(every)
    run = moons_run(probes=[probe])
    run.step(20)
    df = run.history.frame()
    expected = [s for s in range(1, 21) if s % every == 0]
    assert df.loc[df["counter/out_mean"].notna(), "step"].tolist() == expected
    assert probe.before_calls == expected and probe.measured_at == expected
    # non-scalars become the newest snapshot instead of columns
    assert "counter_hist" not in df.columns
    step, hist = run.history.snapshot("counter_hist")
    assert step == expected[-1] and hist.shape == run.model.out.weight.flatten().shape


def test_probe_measures_after_the_update():
    probe = Counter(1)
    run = moons_run(probes=[probe])
    run.step(2)
    assert run.history.frame()["counter/out_mean"].iloc[-1] == pytest.approx(float(run.model.out.weight.detach().mean()))


@pytest.mark.parametrize("every", [0, -1, 1.5, "3"])
def test_probe_every_must_be_a_positive_whole_number(every):
    with pytest.raises(ValueError, match="every"):
        Probe(every=every)
    with pytest.raises(ValueError):
        GradNorm(every)


def test_decision_boundary_resolution_must_be_at_least_two():
    with pytest.raises(ValueError, match="resolution"):
        DecisionBoundary(resolution=1)


def test_base_probe_must_be_overridden():
    with pytest.raises(NotImplementedError):
        Probe(every=1).measure(None)


@pytest.mark.parametrize("name", ["GradNorm", "UpdateRatio", "EffectiveStep", "DeadUnits", "DecisionBoundary", "ScaleInvariantNorm",
                                  "SecondMoment", "Sharpness", "GroupLoss", "GradientNoise", "SpectrumProbe",
                                  "TrajectoryProbe"])
def test_every_probe_writes_exactly_what_it_declares(name):
    import trainlab.probes as P

    run = Run(model=("mlp", {"width": 16, "depth": 2, "norm": "batchnorm"}), data="opposing", optimizer="adam",
              device="cpu", probes=[])
    probe = run.add_probe(getattr(P, name)(every=2))
    run.step(4)
    declared = probe.columns(run)
    df = run.history.frame()
    written = {c for c in df.columns if c not in ("step", "epoch", "time", "lr", "train_loss", "train_acc",
                                                  "grad_norm", "val_loss", "val_acc")}
    assert written == set(declared.scalars), name
    if declared.scalars:  # measured at the steps it is due
        last = df[df["step"] == 4][list(declared.scalars)]
        assert last.notna().to_numpy().any() and df[df["step"] == 3][list(declared.scalars)].isna().all(axis=None)
    for snap in declared.snapshots:
        assert run.history.snapshot(snap)[0] == 4, (name, snap)
    assert len(set(declared.scalars.values())) == len(declared.scalars)  # the labels a plot uses are distinct
