"""Pruning schedules: Zhu & Gupta's cubic against torch.ao's CubicSL formula, one-shot, IMP with rewinding, and
the plan drawn ahead equal to what a run does."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import small_run
from torch.ao.pruning import CubicSL

import trainlab.prune as P


@pytest.mark.parametrize("initial", [0.0, 0.25])
def test_gradual_matches_cubic_sl(initial):
    model = small_run().model
    sp = P.Sparsifier(model, sparsity=0.8, schedule=("gradual", {"start": 100, "end": 1100, "frequency": 50,
                                                                 "initial": initial}))
    for t in range(0, 1500, 50):
        ref = CubicSL.sparsity_compute_fn(s_0=initial * 0.8, s_f=0.8, t=t, t_0=100, dt=50, n=20, initially_zero=True)
        assert sp.planned(t) == pytest.approx(ref, abs=1e-12), t
    assert sp.planned(149) == sp.planned(100)  # held between two prunings


def test_preview_is_what_the_run_does():
    spec = {"method": "magnitude", "sparsity": 0.7, "schedule": ("gradual", {"start": 10, "end": 50, "frequency": 10})}
    run = small_run(pruning=spec)
    plan = P.preview(run.model, spec, steps=70, points=70)
    run.step(69)
    measured = run.history.frame().set_index("step")["sparsity"].dropna()
    planned = dict(zip(plan["step"].tolist(), plan["sparsity"].tolist()))
    assert len(measured) == 6 and max(planned.values()) == pytest.approx(0.7)
    for step, s in measured.items():
        assert s == pytest.approx(planned[step], abs=0.01), step  # counted from the weights


def test_oneshot_at_a_step_and_mid_run_counts_from_now():
    run = small_run()
    run.step(20)
    run.set(pruning={"method": "magnitude", "sparsity": 0.5, "schedule": ("oneshot", {"at": 5})})
    run.step(4)
    assert P.masks(run.model) == {}
    run.step(2)
    assert P.sparsity(run.model)["global"] == pytest.approx(0.5, abs=0.01)
    assert "pruned to 0.5" in " ".join(run.history.frame().event.dropna())


def test_imp_rewinds_kept_weights_to_step_k():
    run = small_run(optimizer="sgd", lr=0.1, pruning={"method": "magnitude", "sparsity": 0.75,
                                                      "schedule": ("imp", {"rounds": 2, "period": 20, "rewind": 3})})
    run.step(3)
    at3 = {k: v.detach().clone() for k, v in run.model.named_parameters()}
    run.step(17)
    run.step(1)  # round 1 happened before step 21: pruned to 1 - 0.25^(1/2) = 0.5, rewound to step 3
    assert P.sparsity(run.model)["global"] == pytest.approx(0.5, abs=0.02)
    run2 = small_run(optimizer="sgd", lr=0.1, pruning={"method": "magnitude", "sparsity": 0.75,
                                                       "schedule": ("imp", {"rounds": 2, "period": 20, "rewind": 3})})
    run2.step(20)
    sp = run2.pruning_state.sparsifier
    sp.step(20)  # the same round, by hand, to see the weights right after the rewind
    for k, keep in P.masks(run2.model).items():
        w = dict(run2.model.named_parameters())[k].detach()
        assert torch.equal(w[keep], at3[k][keep]) and (w[~keep] == 0).all()
    run.step(20)
    assert P.sparsity(run.model)["global"] == pytest.approx(0.75, abs=0.02)


def test_rigl_drops_the_smallest_kept_and_regrows_the_largest_gradients():
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    batch = (torch.randn(32, 8), torch.randint(0, 4, (32,)))
    sp = P.Sparsifier(model, sparsity=0.75, scope="layer", schedule=("rigl", {"every": 10, "end": 100,
                                                                              "drop_fraction": 0.5}))
    sp.step(0, batch)
    with torch.no_grad():  # kept weights moved by "training": every one nonzero
        for w in sp.weights.values():
            w.add_(0.01 * torch.sign(w) * P.masks(model)[[k for k, v in sp.weights.items() if v is w][0]])
    before = {k: v.clone() for k, v in sp.masks.items()}
    weights = {k: w.detach().clone() for k, w in sp.weights.items()}
    loss = nn.functional.cross_entropy(model(batch[0]), batch[1])
    grads = dict(zip(sp.weights, torch.autograd.grad(loss, list(sp.weights.values()))))
    assert sp.step(5, batch) is None and sp.step(10, batch).startswith("rigl")
    alpha = 0.5 / 2 * (1 + math.cos(math.pi * 10 / 100))
    for k, keep in sp.masks.items():
        old = before[k].reshape(-1)
        n = round(alpha * int(old.sum()))
        assert int(keep.sum()) == int(old.sum())  # sparsity unchanged
        mag = torch.where(old, weights[k].reshape(-1).abs(), torch.tensor(float("inf")))
        dropped = torch.zeros_like(old)
        dropped[mag.argsort()[:n]] = True
        after_drop = old & ~dropped
        g = torch.where(after_drop, torch.tensor(-float("inf")), grads[k].reshape(-1).abs())
        grown = torch.zeros_like(old)
        grown[g.argsort(descending=True)[:n]] = True
        assert torch.equal(keep.reshape(-1), after_drop | grown), k
        assert (sp.weights[k].detach().reshape(-1)[grown & ~old] == 0).all()  # regrown at zero


def test_set_in_a_run_keeps_sparsity_and_reports_churn():
    run = small_run(pruning={"sparsity": 0.8, "scope": "layer", "schedule": ("set", {"every": 10, "end": 100})})
    run.step(60)
    df = run.history.frame()
    churn = df["mask_churn"].dropna()
    assert len(churn) == 5 and (churn > 0).all() and (churn <= 0.2).all()  # about 2α of the kept 20 % (rounded per layer)
    assert sum("set:" in e for e in df.event.dropna()) == 5
    for k, m in P.masks(run.model).items():
        assert int((~m).sum()) == round(0.8 * m.numel()), k


def test_nm_structure_decay_halves_n_stage_by_stage():
    from torch import nn

    from trainlab.kernels.nm import nm_keep_reference

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 8))
    sp = P.Sparsifier(model, pattern="nm", n=1, m=8, schedule=("nm_decay", {"first_n": 7, "every": 10}))
    seen = []
    for t in range(45):
        if sp.step(t) is not None:
            seen.append((t, P.sparsity(model)["global"]))
            for k, keep in sp.masks.items():  # exact N:M groups at every stage
                n = 8 - round(sp.applied * 8)
                assert torch.equal(keep, torch.from_numpy(nm_keep_reference(sp.weights[k].detach().abs().numpy(), n, 8)))
    assert seen == [(0, 1 / 8), (10, 4 / 8), (20, 6 / 8), (30, 7 / 8)]  # 7:8 -> 4:8 -> 2:8 -> 1:8
    with pytest.raises(ValueError, match="first_n=9 rejected"):
        P.Sparsifier(model, pattern="nm", n=2, m=8, schedule=("nm_decay", {"first_n": 9}))
    with pytest.raises(ValueError, match="goes with pattern='nm'"):
        P.Sparsifier(model, schedule="nm_decay")
