"""The mask contract and masks in a Run: pruned weights stay exactly 0 through every optimizer kind,
switches, save/load, model_copy, reset and rollback; sparsity is counted from the weights."""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import edit_json, edit_saved, small_run
from torch import nn

import trainlab.prune as P
from trainlab import Run


def _zeros_kept(run) -> None:
    """Every masked entry of every pruned weight is exactly 0."""
    ms = P.masks(run.model)
    assert ms
    params = dict(run.model.named_parameters())
    for k, keep in ms.items():
        assert torch.equal(params[k].detach()[~keep], torch.zeros(int((~keep).sum()))), k


def test_contract_buffers_travel_and_sparsity_is_counted_from_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Conv1d(1, 2, 3), nn.LayerNorm(4))
    assert set(P.prunable(model)) == {"0.weight", "2.weight"}
    keep = torch.rand(8, 6) > 0.5
    P.set_mask(model, "0.weight", keep)
    assert isinstance(model[0].weight_keep, torch.Tensor) and model[0].weight_keep.dtype == torch.bool
    assert "0.weight_keep" in model.state_dict()
    assert torch.equal(copy.deepcopy(model)[0].weight_keep, keep)
    assert torch.equal(P.masks(model)["0.weight"], keep)
    assert (model[0].weight[~keep] == 0).all() and (model[0].weight[keep] != 0).all()
    with torch.no_grad():  # a weight that is zero without a mask counts; a mask says nothing on its own
        model[2].weight[0, 0, 0] = 0.0
    s = P.sparsity(model)
    assert s["0.weight"] == pytest.approx(float((~keep).sum()) / 48)
    assert s["2.weight"] == pytest.approx(1 / 6)
    assert s["global"] == pytest.approx((float((~keep).sum()) + 1) / 54)
    with torch.no_grad():
        model[0].weight.add_(1.0)  # regrown by hand: sparsity sees it, apply_masks zeroes it again
    assert P.sparsity(model)["0.weight"] == 0.0
    P.apply_masks(model)
    assert P.sparsity(model)["0.weight"] == pytest.approx(float((~keep).sum()) / 48)
    fresh = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Conv1d(1, 2, 3), nn.LayerNorm(4))
    P.load_state(fresh, model.state_dict())  # masks registered from the state's buffers
    assert torch.equal(P.masks(fresh)["0.weight"], keep)


@pytest.mark.parametrize("optimizer,hp", [("sgd", {"momentum": 0.9}), ("adam", {}), ("lbfgs", {}),
                                          ("adahessian", {}), ("zosgd", {})])
def test_pruned_weights_stay_zero_for_every_kind(optimizer, hp):
    run = small_run(optimizer=optimizer, pruning=("magnitude", {"sparsity": 0.7}), **hp)
    assert P.sparsity(run.model)["global"] == pytest.approx(0.7, abs=0.01)  # one-shot at step 0
    run.step(40)
    _zeros_kept(run)
    assert P.sparsity(run.model)["global"] >= 0.69


def test_momentum_adam_and_a_switch_never_regrow_and_the_run_trains():
    run = Run(model="mlp", data="digits", device="cpu", optimizer="sgd", lr=0.05, momentum=0.9,
              pruning={"method": "magnitude", "sparsity": 0.9, "scope": "layer"})
    first = run.history.frame() if len(run.history) else None
    assert first is None
    run.step(200)
    _zeros_kept(run)
    run.set(optimizer="adam", lr=1e-3, state="reset")
    run.step(100)
    _zeros_kept(run)
    run.set(optimizer="adamw", state="keep")
    run.step(100)
    _zeros_kept(run)
    df = run.history.frame()
    assert df.train_loss.iloc[:20].mean() > 2 * df.train_loss.iloc[-20:].mean()  # it trains
    assert df["sparsity"].dropna().min() == pytest.approx(0.9, abs=1e-3)  # the probe, from the weights
    assert "pruned to 0.9" in df.event.dropna().iloc[0]
    for k, v in P.sparsity(run.model).items():
        assert v == pytest.approx(0.9, abs=2e-3), k


def test_save_load_continues_bit_for_bit_with_masks(tmp_path):
    run = small_run(optimizer="adam", lr=0.01, pruning=("gradient", {"sparsity": 0.6, "schedule": (
        "gradual", {"start": 5, "end": 45, "frequency": 10})}))
    run.step(25)
    run.save(tmp_path / "r.pt")
    loaded = Run.load(tmp_path / "r.pt", device="cpu")
    assert loaded.pruning == run.pruning
    for k in P.masks(run.model):
        assert torch.equal(P.masks(run.model)[k], P.masks(loaded.model)[k])
    run.step(40)
    loaded.step(40)
    for a, b in zip(run.model.state_dict().values(), loaded.model.state_dict().values()):
        assert torch.equal(a, b)
    assert run.history.frame().train_loss.tolist() == loaded.history.frame().train_loss.tolist()
    assert P.sparsity(loaded.model)["global"] == pytest.approx(0.6, abs=0.01)


def test_model_copy_reset_and_rollback():
    run = small_run(pruning=("magnitude", {"sparsity": 0.5}))
    run.step(10)
    c = run.model_copy()
    assert set(P.masks(c)) == set(P.masks(run.model)) == set(P.prunable(run.model))
    run.set(sparsity=0.8)  # the same plan, a new target: pruned again between steps
    run.step(5)
    assert P.sparsity(run.model)["global"] == pytest.approx(0.8, abs=0.01)
    run.rollback(0)  # weights of step 0, the current masks kept and applied
    assert P.sparsity(run.model)["global"] == pytest.approx(0.8, abs=0.01)
    run.reset()  # the pruning now in force, from scratch at step 0 (on the initial weights)
    assert run.steps == 0 and P.sparsity(run.model)["global"] == pytest.approx(0.8, abs=0.01)
    init = run.initial_state
    kept = P.masks(run.model)
    for k, keep in kept.items():
        assert torch.equal(dict(run.model.named_parameters())[k].detach()[keep], init[k][keep])
    run.set(pruning=None)
    run.step(1)
    assert P.masks(run.model) == {} and run.pruning is None


def test_old_checkpoints_without_pruning_still_load(tmp_path):
    run = small_run()
    run.step(3)
    run.save(tmp_path / "r.pt")

    def strip(settings):
        for k in ("pruning", "pruning_state"):
            settings.pop(k)
    edit_saved(tmp_path / "r.pt", tmp_path / "old.pt", edit={"settings.json": edit_json(strip)})
    loaded = Run.load(tmp_path / "old.pt", device="cpu")
    assert loaded.pruning is None and loaded.steps == 3


def test_layer_collapse_is_flagged():
    torch.manual_seed(0)
    big = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    with torch.no_grad():
        big[2].weight.mul_(1e-3)  # a layer of tiny weights: global magnitude pruning empties it
    run = Run(model=big, data="moons", device="cpu", pruning={"method": "magnitude", "sparsity": 0.95})
    run.step(10)
    df = run.history.frame()
    assert "LAYER COLLAPSE: 2.weight keeps 0 %" in df.event.dropna().iloc[0]
    assert df["collapsed_layers"].dropna().iloc[-1] == 1
    assert run.pruning_state.sparsifier.collapsed() == {"2.weight": 0.0}


def test_set_while_training_in_the_background_and_the_probe_declares_its_columns():
    from conftest import wait_until

    run = small_run(pruning=("magnitude", {"sparsity": 0.5}))
    run.start()
    try:
        wait_until(lambda: run.steps >= 20, what="20 steps")
        run.set(pruning={"method": "random", "sparsity": 0.8, "scope": "layer"})
        wait_until(lambda: "pruning random" in " ".join(map(str, run.history.frame().event.dropna())),
                   what="the new pruning applied")
        start = run.pruning_state.sparsifier.start
        wait_until(lambda: run.steps >= start + 20, what="20 more steps")
    finally:
        run.stop()
    _zeros_kept(run)
    for k, v in P.sparsity(run.model).items():
        assert v >= 0.79, k
    probe = next(p for p in run.probes if type(p).__name__ == "SparsityProbe")
    declared = set(probe.columns(run).scalars)
    written = {c for c in run.history.frame().columns if c.startswith(("sparsity", "mask_churn", "pruned_grad",
                                                                       "collapsed"))}
    assert written <= declared and {"sparsity", "sparsity/fc1", "sparsity/out"} <= written
    plan = P.preview(run.model, run.pruning, steps=10, start=start)
    assert plan["step"][0] == start + 1 and (plan["sparsity"] == 0.8).all()


def test_lottery_ticket_state_survives_save_and_load(tmp_path):
    spec = {"method": "magnitude", "sparsity": 0.75, "schedule": ("imp", {"rounds": 2, "period": 10, "rewind": 2})}
    run = small_run(pruning=spec)
    run.step(15)
    run.save(tmp_path / "r.pt")
    loaded = Run.load(tmp_path / "r.pt", device="cpu")
    run.step(10)
    loaded.step(10)
    for a, b in zip(run.model.state_dict().values(), loaded.model.state_dict().values()):
        assert torch.equal(a, b)
    assert P.sparsity(loaded.model)["global"] == pytest.approx(0.75, abs=0.02)


def test_rescaling_restores_each_units_norm_and_the_activation_variance():
    torch.manual_seed(0)
    layers = []
    for _ in range(6):
        layers += [nn.Linear(256, 256), nn.Tanh()]
    model = nn.Sequential(*layers, nn.Linear(256, 10))
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=(1.5 / 256) ** 0.5)  # σ_w² = 1.5
            nn.init.zeros_(m.bias)
    x = torch.randn(512, 256)
    dense = P.activation_variance(model, x)
    plain, rescaled = copy.deepcopy(model), copy.deepcopy(model)
    rows = {k: w.detach().pow(2).sum(1) for k, w in P.prunable(model).items()}
    P.Sparsifier(plain, method="random", sparsity=0.9, scope="layer").apply()
    P.Sparsifier(rescaled, method="random", sparsity=0.9, scope="layer", rescale=True).apply()
    for k, w in P.prunable(rescaled).items():
        torch.testing.assert_close(w.detach().pow(2).sum(1), rows[k], rtol=1e-5, atol=1e-7)
        assert (w.detach()[~P.masks(rescaled)[k]] == 0).all()
    v_plain, v_res = P.activation_variance(plain, x), P.activation_variance(rescaled, x)
    last = "12"
    assert v_plain[last] < 0.2 * dense[last]  # the signal fades through the pruned layers
    assert abs(v_res[last] / dense[last] - 1) < 0.3  # rescaled: the dense network's variance, layer after layer


def test_the_surviving_weights_histogram_counts_every_nonzero_weight():
    run = small_run(pruning=("magnitude", {"sparsity": 0.6}))
    run.step(10)
    _, snap = run.history.snapshot("surviving_weights")
    for k, w in P.prunable(run.model).items():
        layer = k.rsplit(".", 1)[0]
        assert int(snap["counts"][layer].sum()) == int((w != 0).sum())
        kept = w.detach()[w.detach() != 0]
        assert snap["edges"][0] <= float(kept.min()) and float(kept.max()) <= snap["edges"][-1]


def test_a_chosen_subset_of_weights_stays_chosen_through_reset_and_load(tmp_path):
    spec = {"method": "magnitude", "sparsity": 0.5, "weights": ["fc1.weight"], "rescale": True}
    run = small_run(pruning=spec)
    assert set(P.masks(run.model)) == {"fc1.weight"} and run.pruning["weights"] == ["fc1.weight"]
    run.step(5)
    run.save(tmp_path / "r.pt")
    loaded = Run.load(tmp_path / "r.pt", device="cpu")
    assert set(P.masks(loaded.model)) == {"fc1.weight"} and loaded.pruning == run.pruning
    run.reset()
    assert set(P.masks(run.model)) == {"fc1.weight"} and run.pruning["rescale"] is True
