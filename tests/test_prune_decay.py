"""N:M mask decay (Progressive Gradient Flow's MDGF inside the mask contract): the step equals MDGF's dense
training behind W ⊙ (M + β(1 − M)) for plain SGD, the masks churn while β decays and stop when it reaches 0, the
weights end exactly N:M, both sparsities are reported honestly, and the decay survives save/load."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

import trainlab
import trainlab.prune as P
from trainlab.prune import decay
from trainlab.prune.masks import Masked

SPEC = {"method": "magnitude", "pattern": "nm", "n": 1, "m": 4,
        "schedule": ("mask_decay", {"at": 10, "end": 60, "every": 10})}


def _run(**kw):
    return trainlab.Run(model=("mlp", {"width": 32}), data="digits", lr=0.1, momentum=0.9, seed=0, probes=[], **kw)


def test_the_step_is_mdgf_seen_through_beta_for_plain_sgd():
    """Reference: MDGF trains a dense W with the forward weight W ⊙ (M + β(1 − M)) (autograd through the
    factor); ours stores that forward weight and scales pruned gradients by β². Same weights after 5 SGD steps."""
    torch.manual_seed(0)
    ours = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4)).double()
    x, y = torch.randn(32, 8, dtype=torch.float64), torch.randint(0, 4, (32,))
    weights = P.prunable(ours)
    decay.recompute(ours, weights, None, 1.0, 1.0, 2, 4)          # masks at β = 1: the weights untouched
    masks = {k: v.clone() for k, v in P.masks(ours).items()}
    dense = {k: v.detach().clone() for k, v in ours.named_parameters()}  # MDGF's dense weights
    b, lr = 0.6, 0.3
    decay.recompute(ours, weights, masks, 1.0, b, 2, 4)           # β 1 -> 0.6, masks from |W|
    masks = {k: v.clone() for k, v in P.masks(ours).items()}
    for k, w in weights.items():                                 # stored = dense ⊙ (M + β(1 − M))
        torch.testing.assert_close(w.detach(), dense[k] * decay.factor(masks[k], b, w.dtype))
    params = list(ours.parameters())
    masked = Masked(ours, params, pruned=b * b)
    opt = torch.optim.SGD(params, lr=lr)
    ref = {k: v.clone().requires_grad_() for k, v in dense.items()}
    ref_opt = torch.optim.SGD(list(ref.values()), lr=lr)
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(ours(x), y).backward()
        masked.grads()
        opt.step()
        masked.weights()  # a no-op while decaying
        ref_opt.zero_grad()
        forward = {k: v * decay.factor(masks[k], b, v.dtype) if k in masks else v for k, v in ref.items()}
        nn.functional.cross_entropy(functional_call(ours, forward, (x,)), y).backward()
        ref_opt.step()
    for k, w in ours.named_parameters():
        want = ref[k].detach() * (decay.factor(masks[k], b, w.dtype) if k in masks else 1)
        torch.testing.assert_close(w.detach(), want, rtol=1e-10, atol=1e-12)


def test_a_run_decays_the_masks_churn_then_stop_and_the_weights_end_exact_nm():
    run = _run(pruning=SPEC)
    run.step(40)
    sp = run.pruning_state.sparsifier
    assert 0 < sp.beta < 1
    pruned = {k: w.detach()[~P.masks(run.model)[k]] for k, w in P.prunable(run.model).items()}
    assert all((v != 0).any() for v in pruned.values())  # pruned weights scaled by β, not zeroed
    assert P.sparsity(run.model)["global"] == 0.0 and P.mask_sparsity(run.model)["global"] == 0.75
    k0 = next(iter(P.masks(run.model)))  # the step scales pruned gradients by β²
    keep = run.pruning_state.masked.keep[0]
    assert torch.all(keep[~P.masks(run.model)[k0]] == sp.beta ** 2) and torch.all(keep[P.masks(run.model)[k0]] == 1)
    run.step(40)
    df = run.history.frame().set_index("step")
    churn = df["mask_churn"].dropna()
    # changed at each recomputation (the probe reports one on its next row: the last, at β = 0, at step 70)
    assert (churn > 0).sum() == 5 and churn.index.max() == 70
    beta = df["mask_decay"].dropna()
    assert beta.is_monotonic_decreasing and beta.iloc[0] == 1.0 and beta.loc[61:].eq(0).all()
    planned = P.preview(run.model, run.pruning, 80, 80)
    assert planned["beta"][20] == pytest.approx(1 - 10 / 50) and planned["beta"][-1] == 0  # β held on its grid
    s = df["sparsity"].dropna()
    assert s.loc[:60].max() == 0 and s.loc[70:].eq(0.75).all()  # the weights' own zeros
    assert df["mask_sparsity"].dropna().eq(0.75).all()                                   # the masks' count
    final = {k: v.clone() for k, v in P.masks(run.model).items()}
    for k, w in P.prunable(run.model).items():
        assert torch.equal(P.nm_mask(w, 1, 4), final[k]), k  # exact 1:4: the weights' own pattern
        assert (w.detach()[~final[k]] == 0).all()
    run.step(40)
    assert all(torch.equal(P.masks(run.model)[k], v) for k, v in final.items())  # fixed after the decay
    assert run.history.frame().set_index("step")["mask_churn"].dropna().index.max() == 70  # no churn after it
    assert "pruned weights now exactly 0" in " ".join(df["event"].dropna())


def test_the_decay_survives_save_and_load(tmp_path):
    run = _run(pruning=SPEC)
    run.step(35)
    run.save(tmp_path / "r.pt")
    loaded = trainlab.Run.load(tmp_path / "r.pt", device="cpu")
    assert loaded.pruning_state.sparsifier.beta == run.pruning_state.sparsifier.beta
    assert all(torch.equal(P.masks(loaded.model)[k], v) for k, v in P.masks(run.model).items())
    run.step(35)
    loaded.step(35)
    for (k, a), b in zip(run.model.state_dict().items(), loaded.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert loaded.pruning_state.sparsifier.beta == 0
