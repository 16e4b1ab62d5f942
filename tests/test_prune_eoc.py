"""The edge-of-chaos rescaling of Hayou et al. 2021: the EOC points against the defining equations (expectations by
scipy's adaptive quadrature, not the module's Gauss–Hermite rule) and the published constants, each unit's kept
weights at σ_w², and the measured per-layer activation variance of a deep MLP pruned at init to 90 %: collapsing
without the rescaling, flat through depth with it."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy import integrate
from torch import nn

import trainlab.prune as P
from trainlab.prune import eoc


def _expect(f, q):
    """E[f(√q Z)], Z ~ N(0, 1), by adaptive quadrature."""
    return integrate.quad(lambda z: f(np.sqrt(q) * z) * np.exp(-z * z / 2) / np.sqrt(2 * np.pi), -np.inf, np.inf,
                          epsabs=1e-13, epsrel=1e-12)[0]


@pytest.mark.parametrize("activation", ["tanh", "elu"])
@pytest.mark.parametrize("sigma_b", [0.05, 0.2, 0.5])
def test_the_eoc_point_solves_the_defining_equations(activation, sigma_b):
    phi, dphi = eoc.ACTIVATIONS[activation]
    sw2, q = P.edge_of_chaos(activation, sigma_b)
    assert q == pytest.approx(sigma_b ** 2 + sw2 * _expect(lambda x: phi(x) ** 2, q), rel=1e-8)  # q* a fixed point
    assert sw2 * _expect(lambda x: dphi(x) ** 2, q) == pytest.approx(1, abs=1e-8)              # χ = 1 there


def test_the_eoc_points_known_in_closed_form_and_published():
    assert P.edge_of_chaos("relu") == (pytest.approx(2.0, rel=1e-12), 0.0)  # σ_w² E[1{Z > 0}] = σ_w² / 2 = 1
    assert P.edge_of_chaos("tanh", 0.0) == (1.0, 0.0) and P.edge_of_chaos("linear")[0] == pytest.approx(1.0)
    # the authors' constants (sAviOr287/imagenet_ICLR, models/base/init_utils.py): σ_w 1.2981 (tanh), 1.22459 (ELU)
    # at σ_b = 0.2. They sit on the EOC to within 0.4 % in χ; ours is exactly on it
    for activation, published in (("tanh", 1.2981), ("elu", 1.22459)):
        sw2, _ = P.edge_of_chaos(activation, 0.2)
        assert np.sqrt(sw2) == pytest.approx(published, rel=0.02)
        q = 1.0
        for _ in range(500):  # the published point's own fixed point
            q = eoc.variance_map(activation, q, published ** 2, 0.04)
        assert eoc.chi(activation, q, published ** 2) == pytest.approx(1, abs=4e-3)


def _deep(act, depth=20, width=256, sigma_w2=None, sigma_b=0.0):
    torch.manual_seed(0)
    layers = []
    for i in range(depth):
        layers += [nn.Linear(width if i else 64, width), act()]
    model = nn.Sequential(*layers, nn.Linear(width, 10))
    if sigma_w2 is not None:
        for m in model:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=(sigma_w2 / m.in_features) ** 0.5)
                nn.init.normal_(m.bias, std=sigma_b)
    return model


def _pruned(model, rescale):
    model = copy.deepcopy(model)
    P.Sparsifier(model, method="random", sparsity=0.9, scope="layer", rescale=rescale).apply()
    return model


def test_each_units_kept_weights_end_at_the_eoc_sigma_w2():
    model = _deep(nn.Tanh, depth=3, width=64, sigma_w2=1.0, sigma_b=0.2)
    rescaled = _pruned(model, ("eoc", {}))  # activation from the model, σ_b from each layer's bias
    for k, w in P.prunable(rescaled).items():
        layer = rescaled.get_submodule(k.rpartition(".")[0])
        sb = float(layer.bias.detach().double().pow(2).mean().sqrt())
        rows, alive = w.detach().double().pow(2).sum(1), P.masks(rescaled)[k].any(1)
        want = P.edge_of_chaos("tanh", round(sb, 6))[0]
        torch.testing.assert_close(rows[alive], torch.full_like(rows[alive], want), rtol=1e-5, atol=0)
        assert (rows[~alive] == 0).all()  # a unit that keeps nothing stays 0
        assert (w.detach()[~P.masks(rescaled)[k]] == 0).all()
    relu = _pruned(_deep(nn.ReLU, depth=2, width=64), ("eoc", {"activation": "relu"}))
    for w in P.prunable(relu).values():
        torch.testing.assert_close(w.detach().pow(2).sum(1), torch.full((w.shape[0],), 2.0))


def test_the_variance_collapses_without_the_rescaling_and_stays_flat_with_it():
    x = torch.randn(512, 64)
    hidden = [str(2 * i) for i in range(1, 20)]  # the pre-activations of hidden layers 2..20

    def spread(v):
        values = [v[k] for k in hidden]
        return max(values) / min(values)

    # ReLU at its EOC (σ_w² = 2, the Kaiming init) and at PyTorch's default init (σ_w² = 1/3, whose dense
    # network fades by itself: only the EOC rescaling, not restoring the dense norms, puts it on the edge)
    for sigma_w2 in (2.0, None):
        model = _deep(nn.ReLU, sigma_w2=sigma_w2)
        plain = P.activation_variance(_pruned(model, False), x)
        rescaled = P.activation_variance(_pruned(model, "eoc"), x)
        assert plain["38"] < 0.01 * rescaled["38"]  # collapsed (to the biases' floor, or to 1e-21 without one)
        assert spread(rescaled) < 3 and 0.5 < rescaled["38"] < 4  # flat, near σ_w² E[x²] = 2
        if sigma_w2 is None:
            norm = P.activation_variance(_pruned(model, "norm"), x)
            assert norm["38"] < 0.05 * rescaled["38"]
    # tanh on its EOC at σ_b = 0.2: q settles at q* ≈ 0.51 when rescaled; pruned alone it sinks towards σ_b²
    sw2, q = P.edge_of_chaos("tanh", 0.2)
    model = _deep(nn.Tanh, sigma_w2=sw2, sigma_b=0.2)
    plain = P.activation_variance(_pruned(model, False), x)
    rescaled = P.activation_variance(_pruned(model, "eoc"), x)
    assert all(q / 1.5 < rescaled[k] < 1.5 * q for k in hidden[3:])  # past the first layers' approach to q*
    assert all(plain[k] < q / 5 for k in hidden[2:])


def test_a_run_publishes_the_activation_variance_before_and_after_its_pruning():
    import trainlab
    from trainlab.prune.masks import load_state

    spec = {"method": "random", "sparsity": 0.9, "scope": "layer", "rescale": "eoc"}
    run = trainlab.Run(model=("mlp", {"width": 64, "depth": 4}), data="digits", seed=0, probes=[], pruning=spec)
    run.step(10)
    step, snap = run.history.snapshot("activation_variance")
    x = run.data.fixed_sample(256, run.seed, run.device)[0]  # the calibration batch the run measures on
    model = copy.deepcopy(run.model)
    load_state(model, run.initial_state)  # the dense initial weights, no masks
    before = P.activation_variance(model, x)
    P.Sparsifier(model, **spec).apply()
    after = P.activation_variance(model, x)
    assert step == 10 and snap["layers"] == list(before)
    np.testing.assert_allclose(snap["before"], [before[k] for k in snap["layers"]], rtol=1e-5)
    np.testing.assert_allclose(snap["after"], [after[k] for k in snap["layers"]], rtol=1e-5)
