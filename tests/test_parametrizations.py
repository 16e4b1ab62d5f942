"""Parametrizations: μP against the table of Tensor Programs V and against the `mup` package, NTK against its
definition, depth-μP's branches, and the run keeping per-layer lr multipliers through every change."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from trainlab import Run, as_data, models
from trainlab.parametrizations import input_scale, multipliers

WIDTHS = (64, 128, 256, 512)
# Tensor Programs V, Table 3 (μP), as exponents of the width n of the effective weight W = multiplier x stored:
# init variance, SGD lr and Adam lr of W, for input weights and all biases, hidden weights and output weights.
# (input weights: fan_in fixed, fan_out = n; hidden: n x n; output: fan_in = n.)
TABLE3 = {  # role: (init var, SGD lr, Adam lr)
    "input": (0, 1, 0),    # 1/fan_in, η·fan_out, η
    "bias": (None, 1, 0),  # (zero-initialized here), η·fan_out, η
    "hidden": (-1, 0, -1),  # 1/fan_in, η, η/fan_in
    "output": (-2, -1, -1),  # 1/fan_in², η/fan_in, η/fan_in
}
ROLES = {"fc1.weight": "input", "fc1.bias": "bias", "fc2.bias": "bias", "fc2.weight": "hidden", "out.weight": "output"}


@pytest.fixture(scope="module")
def digits():
    return as_data("digits")


def _effective(width, optimizer):
    """Per parameter: (effective init variance, effective lr) of W = multiplier x stored, from the Run's groups."""
    run = Run(model=("mlp", {"width": width, "init": "kaiming", "parametrization": "mup", "base_width": 64}),
              data="digits", optimizer=optimizer, lr=1e-2, device="cpu", probes=[])
    lr_of = {id(p): g["lr"] for g in run.torch_optimizer.param_groups for p in g["params"]}
    modules = dict(run.model.named_modules())
    out = {}
    for name, p in run.model.named_parameters():
        mult = input_scale(modules[name.rsplit(".", 1)[0]]) if name.endswith("weight") else 1.0
        # SGD moves W by mult^2 lr dL/dW_eff; Adam (entrywise normalized) by mult lr
        eff_lr = lr_of[id(p)] * (mult**2 if optimizer == "sgd" else mult)
        out[name] = (float((p.detach() * mult).var()), eff_lr)
    return out


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_mup_follows_table3_as_width_grows(optimizer):
    eff = {w: _effective(w, optimizer) for w in WIDTHS}
    logw = np.log(WIDTHS)
    for name, role in ROLES.items():
        var_exp, sgd_exp, adam_exp = TABLE3[role]
        lr_slope = np.polyfit(logw, np.log([eff[w][name][1] for w in WIDTHS]), 1)[0]
        assert lr_slope == pytest.approx(sgd_exp if optimizer == "sgd" else adam_exp, abs=1e-9), name
        if var_exp is not None:
            var_slope = np.polyfit(logw, np.log([eff[w][name][0] for w in WIDTHS]), 1)[0]
            assert var_slope == pytest.approx(var_exp, abs=0.05), name
    # at the base width every multiplier is 1: μP is SP there
    base = Run(model=("mlp", {"width": 64, "parametrization": "mup", "base_width": 64}), data="digits",
               optimizer=optimizer, device="cpu", probes=[])
    assert len(base.torch_optimizer.param_groups) == 1 and multipliers(base.model, optimizer) is None
    assert input_scale(base.model.out) == 1.0


def test_mup_output_multiplier_and_init_rescale(digits):
    torch.manual_seed(0)
    sp = models.build("mlp", digits, width=256)
    torch.manual_seed(0)
    mu = models.build("mlp", digits, width=256, parametrization="mup", base_width=64)
    assert input_scale(mu.out) == pytest.approx(64 / 256)
    assert torch.allclose(mu.out.weight, sp.out.weight * 2.0)  # x sqrt(256/64)
    assert torch.allclose(mu.fc2.bias, sp.fc2.bias * 2.0)  # hidden bias x sqrt(fan-in multiplier)
    assert torch.equal(mu.fc1.bias, sp.fc1.bias)  # the input layer's fan-in does not scale
    assert torch.equal(mu.fc2.weight, sp.fc2.weight)


# ---- against the mup package -------------------------------------------------------------------
def _mup_twin(model, mup):
    """The same network written for the mup package: `out` a MuReadout holding the SP weights."""
    twin = copy.deepcopy(model)
    readout = mup.MuReadout(model.out.in_features, model.out.out_features)
    readout.load_state_dict(model.out.state_dict())
    twin.out = readout
    return twin


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_mup_matches_the_mup_package(digits, optimizer):
    mup = pytest.importorskip("mup")
    torch.manual_seed(0)
    sp = models.build("mlp", digits, width=256, depth=2)  # the SP weights both start from
    torch.manual_seed(0)
    ours = Run(model=("mlp", {"width": 256, "depth": 2, "parametrization": "mup", "base_width": 64}), data="digits",
               optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 1e-3, device="cpu", probes=[], seed=0)
    twin = _mup_twin(sp, mup)
    base = _mup_twin(models.build("mlp", digits, width=64, depth=2), mup)
    mup.set_base_shapes(twin, base)
    theirs = dict(twin.named_parameters())
    for name, p in ours.model.named_parameters():  # set_base_shapes' rescaled initial weights
        assert torch.allclose(p, theirs[name], atol=1e-7), name
    x, y = digits.X[:128], digits.y[:128]
    assert torch.allclose(ours.model(x), twin(x), atol=1e-6)
    opt = (mup.MuSGD if optimizer == "sgd" else mup.MuAdam)(twin.parameters(), lr=ours.lr)
    lr_mup = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    lr_ours = {n: g["lr"] for g in ours.torch_optimizer.param_groups for n, p in ours.model.named_parameters()
               if any(p is q for q in g["params"])}
    for name, p in twin.named_parameters():
        assert lr_ours[name] == pytest.approx(lr_mup[id(p)]), name
    for _ in range(5):  # the same steps on the same batch
        for model, o in ((ours.model, ours.torch_optimizer), (twin, opt)):
            o.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            o.step()
    for name, p in ours.model.named_parameters():
        assert torch.allclose(p, theirs[name], atol=1e-5), name


# ---- NTK and depth-μP ----------------------------------------------------------------------------
def test_ntk_keeps_the_function_and_scales_gradients(digits):
    torch.manual_seed(0)
    sp = models.build("mlp", digits, width=128, init="kaiming")
    torch.manual_seed(0)
    ntk = models.build("mlp", digits, width=128, init="kaiming", parametrization="ntk")
    x, y = digits.X[:64], digits.y[:64]
    assert torch.allclose(sp(x), ntk(x), atol=1e-5)  # the initializer's network
    assert ntk.fc2.weight.std().item() == pytest.approx(math.sqrt(2.0), rel=0.02)  # w ~ N(0, gain^2)
    for model in (sp, ntk):
        nn.functional.cross_entropy(model(x), y).backward()
    for name in ("fc1", "fc2", "out"):  # dL/dw = dL/dW / sqrt(fan_in)
        m_sp, m_ntk = getattr(sp, name), getattr(ntk, name)
        assert torch.allclose(m_ntk.weight.grad, m_sp.weight.grad / math.sqrt(m_sp.in_features), atol=1e-6)
        assert torch.allclose(m_ntk.bias.grad, m_sp.bias.grad, atol=1e-6)


def test_depth_mup_scales_branches_and_adam_lrs(digits):
    model = models.build("resmlp", digits, width=128, depth=9, parametrization="depth_mup", base_width=64)
    assert all(model.get_submodule(f"block{i}").branch_scale == pytest.approx(1 / 3) for i in range(1, 10))
    adam, sgd = multipliers(model, "adam"), multipliers(model, "sgd")
    assert adam["block1.fc.weight"][0] == pytest.approx(0.5 / 3)  # μP's 1/width multiplier x 1/sqrt(L)
    assert sgd["block1.fc.weight"][0] == pytest.approx(1.0)
    assert adam["inp.weight"][0] == 1.0 and adam["out.weight"][0] == 1.0  # outside the branches: μP's
    plain = models.build("resmlp", digits, width=128, depth=9, branch="1/sqrt(L)")
    assert plain.block1.branch_scale == pytest.approx(1 / 3)
    x = digits.X[:8]  # x + s f(x): the branch multiplier is used
    blk = plain.block1
    assert torch.allclose(blk(x @ torch.zeros(64, 128)), blk.fc(blk.act(torch.zeros(8, 128))) / 3)


@pytest.mark.parametrize("options, words", [
    ({"parametrization": "mup"}, ["base_width", "mup"]),
    ({"parametrization": "depth_mup", "base_width": 32}, ["depth_mup", "resmlp"]),
    ({"parametrization": "fancy"}, ["parametrization", "'mup'"]),
    ({"parametrization": "mup", "base_width": 0}, ["base_width"]),
])
def test_bad_parametrizations_are_refused(options, words):
    with pytest.raises(ValueError) as e:
        Run(model=("mlp", options), data="digits", device="cpu")
    assert all(w in str(e.value) for w in words), str(e.value)


# ---- the run keeps the multipliers ----------------------------------------------------------------
def _ratios(run):
    return sorted(g["lr"] / run.current_lr for g in run.torch_optimizer.param_groups)


def test_live_changes_keep_the_multipliers(tmp_path):
    run = Run(model=("mlp", {"width": 256, "parametrization": "mup", "base_width": 64}), data="digits",
              optimizer="adam", lr=1e-3, weight_decay=1e-4, device="cpu", probes=[])
    assert _ratios(run) == pytest.approx([0.25, 1.0])
    wd = {g["lr_mult"]: g["weight_decay"] for g in run.torch_optimizer.param_groups}
    assert wd == pytest.approx({0.25: 4e-4, 1.0: 1e-4})  # lr x decay as at the base (mup's convention)
    run.step(3)
    run.set(lr=4e-3)  # every group rescaled by the same factor
    run.step(1)
    assert [g["lr"] for g in run.torch_optimizer.param_groups] == pytest.approx([4e-3, 1e-3])
    run.set(schedule=("cosine", {"total": 50}))
    run.step(5)
    lrs = [g["lr"] for g in run.torch_optimizer.param_groups]
    assert lrs[1] / lrs[0] == pytest.approx(0.25) and lrs[0] < 4e-3
    run.set(optimizer="sgd", lr=0.1, state="keep")  # SGD's own multipliers (input weights x 4, ...)
    run.step(1)
    assert _ratios(run) == pytest.approx([1.0, 4.0])
    path = tmp_path / "run.pt"
    run.save(path)
    loaded = Run.load(path, device="cpu")
    assert [g["lr"] for g in loaded.torch_optimizer.param_groups] == \
        pytest.approx([g["lr"] for g in run.torch_optimizer.param_groups])
    loaded.step(2)
    run.reset()
    assert _ratios(run) == pytest.approx([1.0, 4.0])


def test_an_optimizer_without_a_mup_rule_is_refused_and_nothing_changes():
    run = Run(model=("mlp", {"width": 128, "parametrization": "mup", "base_width": 64}), data="digits",
              optimizer="adam", device="cpu", probes=[])
    opt = run.torch_optimizer
    with pytest.raises(ValueError, match="lamb.*SGD-like"):
        run.set(optimizer="lamb")
    run.step(1)
    assert run.optimizer == "adam" and run.torch_optimizer is opt
    with pytest.raises(ValueError, match="muon_po"):
        Run(model=("mlp", {"width": 128, "parametrization": "mup", "base_width": 64}), data="digits",
            optimizer="muon_po", device="cpu")
    # SP and NTK carry no multipliers: any optimizer goes
    Run(model=("mlp", {"parametrization": "ntk"}), data="digits", optimizer="lamb", device="cpu").step(1)


def test_lr_range_test_uses_the_multipliers():
    from trainlab import lr_range_test

    run = Run(model=("mlp", {"width": 256, "parametrization": "mup", "base_width": 64}), data="digits",
              optimizer="adam", device="cpu", probes=[])
    result = lr_range_test(run, start=1e-5, end=1e-1, steps=20)
    assert len(result.lrs) > 0
