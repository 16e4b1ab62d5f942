"""trainlab.prune's compaction: masked-model outputs, the mask contract, hand-counted parameters and MACs,
the torch.nn.utils.prune round trip, and clear errors."""
from __future__ import annotations

import copy
import time

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as tprune

import trainlab
import trainlab.prune as P


def vgg(c=32, classes=10):
    """A plain VGG-style convnet with BatchNorm (1.13 M parameters at c=32), for 32x32x3 inputs."""
    layers, cin = [], 3
    for co, pool in [(c, False), (2 * c, True), (4 * c, False), (4 * c, True), (8 * c, False), (8 * c, True)]:
        layers += [nn.Conv2d(cin, co, 3, padding=1), nn.BatchNorm2d(co), nn.ReLU()]
        if pool:
            layers.append(nn.MaxPool2d(2))
        cin = co
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes))


def random_bn(model):
    """BatchNorm with statistics and affine parameters far from the identity, so a mishandled channel shows."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))
    return model


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.c0, self.b0 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c1, self.b1 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.fc = nn.Conv2d(8, 16, 3, padding=1), nn.Linear(16, 10)

    def forward(self, x):
        h = torch.relu(self.b0(self.c0(x)))
        h = torch.relu(self.b1(self.c1(h)) + h)  # the residual couples c0's and c1's channels
        return self.fc(self.c2(h).mean((2, 3)))


def models():
    torch.manual_seed(0)
    digits = lambda spec: trainlab.Run(model=spec, data="digits", device="cpu").model  # noqa: E731
    return {
        "mlp": (digits("mlp"), torch.randn(16, 64)),
        "mlp-bn-tanh": (random_bn(digits(("mlp", {"norm": "batchnorm", "activation": "tanh", "depth": 3}))),
                        torch.randn(16, 64)),
        "cnn-bn": (random_bn(digits(("cnn", {"norm": "batchnorm"}))), torch.randn(16, 64)),
        "vgg": (random_bn(vgg(8)), torch.randn(4, 3, 32, 32)),
        "residual": (random_bn(Residual()), torch.randn(4, 3, 16, 16)),
        "conv1d": (random_bn(nn.Sequential(nn.Conv1d(2, 8, 3, padding=1), nn.BatchNorm1d(8), nn.GELU(), nn.MaxPool1d(2),
                                           nn.Conv1d(8, 16, 3), nn.LeakyReLU(), nn.Dropout(0.0), nn.Flatten(),
                                           nn.Linear(16 * 6, 12), nn.SiLU(), nn.Linear(12, 3))),
                   torch.randn(4, 2, 16)),
    }


def outputs(model, x, train=False):
    model.train(train)
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("name", list(models()))
@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_compact_equals_masked_model(name, ratio):
    model, x = models()[name]
    before = copy.deepcopy(model.state_dict())
    small = P.compact(model, ratio, example=x)
    for k, v in model.state_dict().items():  # the model itself is untouched
        assert torch.equal(v, before[k]), k
    masked = copy.deepcopy(model)
    P.channel_masks(masked, ratio, example=x)
    ref = outputs(masked, x)
    assert (outputs(small, x) - ref).abs().max() <= 1e-5 * (1 + ref.abs().max())
    if name != "mlp":  # smaller, and equal in train mode too (a zero channel has zero batch statistics)
        assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
        tr = outputs(copy.deepcopy(masked), x, train=True)
        assert (outputs(copy.deepcopy(small), x, train=True) - tr).abs().max() <= 1e-5 * (1 + tr.abs().max())
    # compacting the masked model (ratio=None) removes the same channels
    again = P.compact(masked, example=x)
    assert [p.shape for p in again.parameters()] == [p.shape for p in small.parameters()]
    assert (outputs(again, x) - ref).abs().max() <= 1e-5 * (1 + ref.abs().max())


def test_channel_masks_follow_the_contract_and_the_l1_norm():
    model, x = models()["mlp-bn-tanh"]
    w1 = model.fc1.weight.detach().clone()
    masks = P.channel_masks(model, 0.5)
    # independent reference: the 64 rows of fc1 with the smallest L1 norm
    drop = set(torch.argsort(w1.abs().sum(1))[:64].tolist())
    keep = model.fc1.weight_keep
    assert keep.dtype == torch.bool and keep.shape == model.fc1.weight.shape
    assert {i for i in range(128) if not keep[i].any()} == drop and keep[[i for i in range(128) if i not in drop]].all()
    assert torch.equal(model.fc1.weight == 0, ~keep)
    assert (model.fc1.bias[sorted(drop)] == 0).all() and (model.norm1.weight[sorted(drop)] == 0).all()
    assert (model.norm1.bias[sorted(drop)] == 0).all() and not model.norm1.bias_keep[sorted(drop)].any()
    assert set(masks) >= {"fc1.weight", "fc1.bias", "norm1.weight", "norm1.bias", "fc3.weight"}
    assert "out.weight" not in masks  # never the final layer
    small = P.compact(model)
    assert small.fc1.in_features == 64 and small.out.out_features == 10  # never the input, never the output
    for name in ("fc1", "fc2", "fc3"):  # ratio of every hidden layer
        assert int((~getattr(model, name).weight_keep.any(1)).sum()) == 64


def test_existing_masks_are_kept_and_cut_with_their_layer():
    model, x = models()["cnn-bn"]
    w = model.conv2.weight
    keep = torch.rand(w.shape) > 0.3  # an unstructured mask already there
    model.conv2.register_buffer("weight_keep", keep)
    with torch.no_grad():
        w.mul_(keep)
    P.channel_masks(model, 0.5)
    assert not (model.conv2.weight_keep & ~keep).any()  # ANDed, never regrown
    small = P.compact(model)
    assert small.conv2.weight_keep.shape == small.conv2.weight.shape
    assert not small.conv2.weight[~small.conv2.weight_keep].any()


def test_counts_by_hand():
    tiny = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    x = torch.randn(1, 1, 4, 4)
    # conv: 2*1*9 + 2 = 20 parameters, 16 positions * 2 channels * 9 = 288 MACs; linear: 32*3 + 3 = 99, 96
    assert P.count(tiny, x) == (119, 384)
    small = P.compact(tiny, 0.5, example=x)
    # one channel left: conv 9 + 1 = 10 and 16 * 9 = 144; linear 16*3 + 3 = 51 and 48
    assert P.count(small, x) == (61, 192)
    r = P.report(tiny, small, x, repeats=3)
    assert (r.params, r.params_dense, r.macs, r.macs_dense) == (61, 119, 192, 384)
    assert r.latency > 0 and r.latency_dense > 0 and len(r.pairs) == 3
    assert P.measure(small, x, repeats=3) > 0


def test_preview_reuses_one_plan_and_is_fast():
    model = random_bn(vgg(32))  # 1.13 M parameters, 32x32x3
    assert 1.0e6 < sum(p.numel() for p in model.parameters()) < 1.2e6
    c = P.Compactor(model, torch.randn(1, 3, 32, 32))
    assert P.Compactor(copy.deepcopy(model)).plan is c.plan  # the graph is built once per structure
    times = []
    for ratio in (0.3, 0.5, 0.5, 0.7):
        t = time.perf_counter()
        pv = c.preview(ratio)
        times.append(time.perf_counter() - t)
    assert min(times) <= 0.5, times
    assert pv.params < pv.params_dense / 4 and pv.macs < pv.macs_dense / 4


def test_to_torch_round_trip():
    model, x = models()["cnn-bn"]
    P.channel_masks(model, 0.5)
    ref = outputs(model, x)
    exported = P.to_torch(model)
    assert not hasattr(exported.conv1, "weight_keep")
    assert isinstance(exported.conv1.weight_orig, nn.Parameter) and exported.conv1.weight_mask.shape == (16, 1, 3, 3)
    assert tprune.is_pruned(exported)
    assert torch.allclose(outputs(exported, x), ref, atol=1e-6, rtol=0)
    for name in ("conv1", "conv2", "norm1"):
        m = getattr(exported, name)
        tprune.remove(m, "weight")
        assert isinstance(m.weight, nn.Parameter) and not hasattr(m, "weight_mask")
        assert torch.equal(m.weight.detach(), getattr(model, name).weight.detach())  # the same zeros
    assert torch.allclose(outputs(exported, x), ref, atol=1e-6, rtol=0)


def test_unstructured_is_counted_honestly():
    model, _ = models()["mlp"]
    with torch.no_grad():
        model.fc1.weight[model.fc1.weight.abs() < 0.05] = 0
    r = P.unstructured_report(model)
    zeros = sum(int((m.weight == 0).sum()) for m in model.modules() if isinstance(m, nn.Linear))
    total = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    assert (r.zeros, r.params) == (zeros, total) and r.sparsity == zeros / total
    assert r.speedup == 1.0 and r.removable_channels == 0


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, "half", True])
def test_bad_ratio(ratio):
    model, x = models()["mlp"]
    with pytest.raises(ValueError, match=r"ratio must be a number in \[0, 1\).*got"):
        P.compact(model, ratio)
    with pytest.raises(ValueError, match=r"ratio must be a number in \[0, 1\)"):
        P.channel_masks(model, ratio)


def test_numpy_ratio():
    model, x = models()["mlp"]
    import numpy as np
    assert P.compact(model, np.float32(0.5)).fc1.out_features == 64


def test_bad_models():
    model, _ = models()["mlp"]
    with pytest.raises(ValueError, match="nothing to compact: no channel .* give ratio= in"):
        P.compact(model)
    with pytest.raises(ValueError, match="criterion must be one of"):
        P.channel_masks(model, 0.5, criterion="l3")
    with pytest.raises(ValueError, match="no masks"):
        P.to_torch(model)
    layernorm = trainlab.Run(model=("mlp", {"norm": "layernorm"}), data="digits", device="cpu").model
    with pytest.raises(ValueError, match=r"layer 'norm1' \(LayerNorm\); supported layers: Linear"):
        P.compact(layernorm, 0.5)
    with pytest.raises(ValueError, match=r"BatchNorm1d\(affine=False\)"):
        P.compact(nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8, affine=False), nn.Linear(8, 2)), 0.5)
    with pytest.raises(ValueError, match=r"Sigmoid"):
        P.compact(nn.Sequential(nn.Linear(4, 8), nn.Sigmoid(), nn.Linear(8, 2)), 0.5)
    with pytest.raises(ValueError, match=r"Conv2d\(groups=2\)"):
        P.compact(nn.Sequential(nn.Conv2d(4, 8, 3), nn.Conv2d(8, 8, 3, groups=2)), 0.5)
    with pytest.raises(ValueError, match="nothing to compact: the model has no hidden .* output layer '0'"):
        P.compact(nn.Sequential(nn.Linear(4, 2)), 0.5)
    with pytest.raises(ValueError, match="nothing to compact: the model has no Linear or Conv"):
        P.compact(nn.Sequential(nn.Flatten()), 0.5, example=torch.randn(1, 4))

    class Squared(nn.Module):  # supported layers, but a forward that does not keep zeros at zero
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.b(torch.exp(self.a(x)))
    with pytest.raises(ValueError, match="does not support this architecture: .* differ"):
        P.compact(Squared(), 0.5)
