"""Finite-width fluctuations: Gaussian weights against the product-of-χ² closed form, orthogonal weights
exactly norm-preserving, and the empirical NTK against a direct Jacobian computation."""
import pytest
import torch
from torch import nn

from trainlab import as_data
from trainlab.analysis.fluctuations import depth_study, empirical_ntk, preactivation_fluctuations

DIGITS = as_data("digits")  # 64 features: a width-64 linear network has square hidden layers


def test_gaussian_fluctuations_follow_the_closed_form_and_orthogonal_ones_vanish():
    spec = ("mlp", {"width": 64, "depth": 4, "activation": "linear", "init": "kaiming"})
    gauss = preactivation_fluctuations(spec, DIGITS, seeds=96, n=32)
    # q_l = q_0 · Π χ²_64/64: relative variance (1 + 2/64)^l − 1 after l layers
    for layer in (1, 2, 4):
        expected = (1 + 2 / 64) ** layer - 1
        assert gauss.loc[gauss.layer == layer, "rel_var"].item() == pytest.approx(expected, rel=0.3)
    ortho = preactivation_fluctuations(("mlp", {**spec[1], "init": "orthogonal"}), DIGITS, seeds=8, n=32)
    assert (ortho["rel_var"].iloc[:-1] < 1e-10).all()  # hidden layers: norms preserved exactly (to rounding), seed after seed


def test_ntk_fluctuations_grow_with_depth_for_gaussian_and_stay_flat_for_orthogonal():
    df = depth_study("mlp", DIGITS, [1, 4], seeds=6, m=8, width=64, activation="linear")
    g = df[df.init == "kaiming"].set_index("depth")
    o = df[df.init == "orthogonal"].set_index("depth")
    assert g.loc[4, "ntk_rel_var"] > 2.5 * g.loc[1, "ntk_rel_var"] > 0
    assert g.loc[4, "preact_rel_var"] > 2.5 * g.loc[1, "preact_rel_var"]
    assert o["ntk_rel_var"].max() < 1e-10 and o["preact_rel_var"].max() < 1e-10


def test_empirical_ntk_matches_per_example_gradients():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    grads = []  # the direct computation: one backward per example and output
    for i in range(4):
        per_out = []
        for c in range(2):
            model.zero_grad()
            model(x[i:i + 1])[0, c].backward()
            per_out.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        grads.append(torch.stack(per_out))
    J = torch.stack(grads)  # (m, C, P)
    direct = torch.einsum("icp,jcp->ij", J, J) / 2
    torch.testing.assert_close(empirical_ntk(model, x), direct)
