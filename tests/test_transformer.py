"""The tiny transformer and its token tasks: the names μP relies on, attention against torch's own, the
norm placements as their formulas, training, probes and checkpoints on integer tokens, and Post-LN's
instability at depth without warm-up."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from trainlab import Run, as_data, models
from trainlab.transformer import Attention, Branch, FeedForward


@pytest.fixture(scope="module")
def mod23():
    return as_data(("modular_addition", {"p": 23, "fraction": 0.8}))


def _build(data, **kw):
    torch.manual_seed(0)
    return models.build("transformer", data, **{"width": 16, "depth": 2, "heads": 2, **kw})


# ---- data ------------------------------------------------------------------------------------
def test_modular_addition_is_every_pair_once():
    d = as_data(("modular_addition", {"p": 7, "fraction": 0.3, "seed": 2}))
    X, y = torch.cat([d.X, d.X_val]), torch.cat([d.y, d.y_val])
    assert X.dtype == torch.int64 and d.vocab == 8 and d.n_out == 7 and len(d.X) == round(0.3 * 49)
    assert sorted(map(tuple, X[:, :2].tolist())) == [(a, b) for a in range(7) for b in range(7)]
    assert (X[:, 2] == 7).all() and torch.equal(y, (X[:, 0] + X[:, 1]) % 7)


def test_majority_labels():
    d = as_data(("majority", {"n": 200, "length": 5}))
    assert d.vocab == 3 and (d.X[:, -1] == 2).all()
    assert torch.equal(d.y, (d.X[:, :5].sum(1) >= 3).long())
    with pytest.raises(ValueError, match="length=4 rejected for majority: an odd number"):
        as_data(("majority", {"length": 4}))


# ---- the contract and the formulas -------------------------------------------------------------
def test_names_the_parametrizations_rely_on(mod23):
    m = _build(mod23, width=24, heads=3, depth=3)
    assert isinstance(m.embed, nn.Embedding) and m.embed.num_embeddings == 24
    assert isinstance(m.out, nn.Linear) and m.out.out_features == 23
    attns = [x for x in m.modules() if isinstance(x, Attention)]
    assert len(attns) == 3 and all(a.qk_scale == 8 ** -0.5 and isinstance(a.qk_scale, float) for a in attns)
    branches = [x for x in m.modules() if isinstance(x, Branch)]
    assert len(branches) == 6 and all(b.branch_scale == 1.0 for b in branches)
    assert m(mod23.X[:5]).shape == (5, 23)


def test_attention_is_torch_sdpa_with_its_qk_scale(mod23):
    attn = _build(mod23).blocks[0].attn
    attn.qk_scale = 0.37  # what μP sets (1/d_head): the forward must use it
    x = torch.randn(4, 3, 16)
    q, k, v = attn.qkv(x).view(4, 3, 3, 2, 8).permute(2, 0, 3, 1, 4)
    ref = attn.proj(F.scaled_dot_product_attention(q, k, v, scale=0.37).transpose(1, 2).reshape(4, 3, 16))
    torch.testing.assert_close(attn.f(x), ref)


@pytest.mark.parametrize("placement", ["pre_ln", "post_ln"])
def test_branches_follow_their_placement(mod23, placement):
    mlp = _build(mod23, placement=placement).blocks[1].mlp
    assert isinstance(mlp, FeedForward) and isinstance(mlp.norm, nn.LayerNorm)
    mlp.branch_scale = 0.3
    x = torch.randn(4, 3, 16)
    ln = lambda t: F.layer_norm(t, (16,), mlp.norm.weight, mlp.norm.bias)  # noqa: E731
    f = lambda t: mlp.fc2(F.relu(mlp.fc1(t)))  # noqa: E731
    ref = ln(x + 0.3 * f(x)) if placement == "post_ln" else x + 0.3 * f(ln(x))
    torch.testing.assert_close(mlp(x), ref)


@pytest.mark.parametrize("placement, depth, posts, final", [
    ("pre_ln", 4, 0, nn.LayerNorm), ("post_ln", 4, 4, nn.Identity), ("mix_ln", 4, 1, nn.LayerNorm),
    ("mix_ln", 8, 2, nn.LayerNorm), ("pre_rmsnorm", 3, 0, nn.RMSNorm)])
def test_placements(mod23, placement, depth, posts, final):
    m = _build(mod23, placement=placement, depth=depth)
    post = [layer.attn.post for layer in m.blocks]
    assert post == [True] * posts + [False] * (depth - posts) == [layer.mlp.post for layer in m.blocks]
    assert type(m.final) is final
    norm = nn.RMSNorm if placement == "pre_rmsnorm" else nn.LayerNorm
    assert all(type(b.norm) is norm for b in m.modules() if isinstance(b, Branch))


def test_norm_choices_in_the_transformer(mod23):
    m = _build(mod23, norm="powernorm")
    assert sum(type(b.norm).__name__ == "PowerNorm" for b in m.modules() if isinstance(b, Branch)) == 4
    with pytest.raises(ValueError, match="norm='scaled_ws' rejected for transformer: it standardizes the weight"):
        _build(mod23, norm="scaled_ws")
    with pytest.raises(ValueError, match="norm='instancenorm' rejected for transformer: .*positions"):
        _build(mod23, norm="instancenorm")
    with pytest.raises(ValueError, match="placement='pre_rmsnorm' is Pre-LN with RMSNorm; norm='batchnorm' contradicts"):
        _build(mod23, norm="batchnorm", placement="pre_rmsnorm")
    with pytest.raises(ValueError, match="heads=3 rejected for transformer: it must divide width=16"):
        _build(mod23, heads=3)


def test_models_and_data_that_do_not_fit(mod23):
    with pytest.raises(ValueError, match="transformer needs token data"):
        Run(model="transformer", data="moons", device="cpu")
    with pytest.raises(ValueError, match="mlp takes real-valued inputs; 'modular_addition' gives integer tokens"):
        Run(model="mlp", data=mod23, device="cpu")


# ---- training on tokens ------------------------------------------------------------------------
def test_modular_addition_trains_with_default_probes_and_survives_save_load(mod23, tmp_path):
    run = Run(model=("transformer", {"width": 32, "depth": 1, "heads": 4}), data=mod23, device="cpu",
              optimizer="adam", lr=3e-3, batch_size=64, eval_every=100, seed=0)
    assert {type(p).__name__ for p in run.probes} == {"GradNorm", "UpdateRatio", "DeadUnits"}
    assert run.step(500) == 500
    h = run.history.frame()
    assert h.train_acc.iloc[-20:].mean() > 0.95
    assert np.isfinite(h["grad_norm/blocks.0.attn.qkv"].dropna()).all()
    assert (h["dead_units/blocks.0.mlp.act"].dropna() < 1).all()
    run.save(tmp_path / "t.pt")
    back = Run.load(tmp_path / "t.pt", device="cpu")
    X = mod23.X_val[:50]
    run.model.eval(), back.model.eval()
    torch.testing.assert_close(back.model(X), run.model(X))
    Xs, ys = back.data.fixed_sample(16, seed=1)
    assert Xs.dtype == torch.int64 and back.step(5) == 5


@pytest.mark.slow
def test_post_ln_fails_at_depth_without_warmup_and_recovers_with_it():
    """Xiong et al. 2020 on a CPU: 8 layers, width 32, Adam at lr 3e-3, 200 steps of modular addition
    (p=23). Pre-LN learns the training set; Post-LN stays at chance (loss log 23); Post-LN with a linear
    warm-up over 100 steps (the wsd schedule, its decay past the end) learns it too."""
    data = as_data(("modular_addition", {"p": 23, "fraction": 0.8}))

    def final_acc(placement, schedule="constant", seed=0):
        run = Run(model=("transformer", {"width": 32, "depth": 8, "placement": placement}), data=data, seed=seed,
                  optimizer="adam", lr=3e-3, batch_size=64, device="cpu", schedule=schedule, probes=[],
                  diverge_factor=0)
        run.step(200)
        return run.history.frame().train_acc.iloc[-30:].mean()

    warmup = ("wsd", {"warmup": 100, "total": 10**6, "decay_fraction": 0.01})
    for seed in (0, 3):  # measured for seeds 0-3: Pre-LN 0.83-0.99, Post-LN 0.05, Post-LN warmed up 0.99-1.00
        assert final_acc("pre_ln", seed=seed) > 0.75
        assert final_acc("post_ln", seed=seed) < 0.2
        assert final_acc("post_ln", warmup, seed=seed) > 0.9
