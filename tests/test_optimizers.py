"""The optimizer registry (discovered from signatures), live changes and switching, closure and
Hessian optimizers, the seed papers' update rules checked by hand, and the three hand-written
features: AdAdaGrad's adaptive batch size, zeroth-order SGD and annealed gradient noise."""
from __future__ import annotations

import math

import numpy as np
import param
import pytest
import pytorch_optimizer as po
import torch
import torch.nn.functional as F
from torch import nn
from trainlab import Run
from trainlab.adagrad_norm import AdaGradNorm
from trainlab.optimizers import CLOSURE, HESSIAN, optimizers, refused
from trainlab.registry import LogNumber
from trainlab.zeroth_order import ZerothOrderSGD, perturbation, projected_gradient

TINY = ("mlp", {"width": 8, "depth": 1})


def tiny_run(**kw) -> Run:
    kw.setdefault("model", TINY)
    kw.setdefault("data", ("moons", {"n": 64}))
    kw.setdefault("device", "cpu")
    kw.setdefault("batch_size", 16)
    kw.setdefault("probes", [])
    return Run(**kw)


def groups(run: Run) -> list[dict]:
    return [{k: v for k, v in g.items() if k != "params"} for g in run.torch_optimizer.param_groups]


# ---- the registry ----------------------------------------------------------------------------
def test_registry_holds_every_torch_and_pytorch_optimizer_class_but_the_refused():
    torch_names = {n.lower() for n in dir(torch.optim)
                   if isinstance(getattr(torch.optim, n), type) and issubclass(getattr(torch.optim, n), torch.optim.Optimizer)
                   and n != "Optimizer"}
    po_names = set(po.get_supported_optimizers())
    names = set(optimizers.names())
    for n in torch_names:  # torch keeps the plain name
        assert (n in names) != (n in refused), n
        if n in names:
            assert optimizers[n].meta.cls is getattr(torch.optim, [a for a in dir(torch.optim) if a.lower() == n][0])
    for n in po_names:
        cls = po.load_optimizer(n)
        if cls.__module__.startswith("torch."):
            assert optimizers[n].meta.cls is cls  # one entry for torch's class re-exported
            continue
        name = f"{n}_po" if n in torch_names else n  # a collision: pytorch_optimizer's gets the suffix
        assert (name in names) != (name in refused), name
        if name in names:
            assert optimizers[name].meta.cls is cls
    assert {"adagradnorm", "zosgd"} <= names
    # pinned, like pytorch_optimizer's own test: 15 torch + 128 pytorch_optimizer - 6 shared + 2 here - 7 refused
    assert len(optimizers) == 132


# Optimizers that by design leave the weights alone at first: what makes them move within the test.
SLOW_START = {"adashift": ({}, 12),             # queues keep_num=10 gradients before its first update
              "sara": ({"threshold": 1.0}, 6)}  # updates only weights with |w| < threshold (1e-3 by default)


@pytest.mark.parametrize("name", optimizers.names())
def test_every_registered_optimizer_trains_five_steps_with_finite_loss(name):
    hp, n = SLOW_START.get(name, ({}, 6))
    run = tiny_run(optimizer=name, **hp)
    assert run.step(n) == n, run.message
    df = run.history.frame()
    assert np.isfinite(df["train_loss"]).all() and np.isfinite(df["grad_norm"]).all()
    moved = any(not torch.equal(p, q) for p, q in zip(run.model.state_dict().values(), run.initial_state.values()))
    assert moved  # every optimizer changed the weights


def test_closure_and_hessian_tables_are_what_the_optimizers_need():
    X, y = torch.randn(16, 3), torch.randint(0, 2, (16,))

    def attempt(name, create_graph):
        torch.manual_seed(0)
        model = nn.Linear(3, 2)
        opt = optimizers[name].build(list(model.parameters()), lr=optimizers[name].meta.usual_lr)
        loss = F.cross_entropy(model(X), y)
        grads = torch.autograd.grad(loss, list(model.parameters()), create_graph=create_graph)
        for p, g in zip(model.parameters(), grads):
            p.grad = g
        opt.step()

    for name in CLOSURE:
        with pytest.raises(Exception, match="(?i)closure"):
            attempt(name, False)
    for name in HESSIAN:
        with pytest.raises(RuntimeError):
            attempt(name, False)  # without create_graph there is no graph for Hessian-vector products
        attempt(name, True)
    for name in ("adam", "lion", "sgdsai"):
        attempt(name, False)


def test_refused_names_say_why_and_unknown_names_list_the_valid_ones():
    for name, why in refused.items():
        assert name not in optimizers
        with pytest.raises(ValueError) as e:
            tiny_run(optimizer=name)
        assert why in str(e.value)
    run = tiny_run()
    with pytest.raises(ValueError) as e:
        run.set(optimizer="sparseadam")
    assert "sparse" in str(e.value) and run.optimizer == "sgd"
    with pytest.raises(ValueError) as e:
        run.set(optimizer="adamq")
    for name in optimizers.names():
        assert name in str(e.value)


# ---- discovery ------------------------------------------------------------------------------
def test_hyperparameters_are_discovered_from_the_signature():
    adam = optimizers["adam"].params
    assert list(adam) == ["beta1", "beta2", "eps", "weight_decay", "amsgrad", "decoupled_weight_decay"]
    assert (adam["beta1"].default, adam["beta2"].default) == (0.9, 0.999)
    assert adam["beta1"].bounds == (0, 1) and adam["beta1"].inclusive_bounds == (True, False)
    assert isinstance(adam["eps"], LogNumber) and adam["eps"].bounds == (0, None)
    assert adam["eps"].inclusive_bounds == (False, True)
    assert adam["weight_decay"].bounds == (0, None)
    assert isinstance(adam["amsgrad"].default, bool)
    # a 3-tuple of betas, and a constructor whose usual lr is its signature's
    adan = optimizers["adan"]
    assert [adan.params[f"beta{i}"].default for i in (1, 2, 3)] == [0.98, 0.92, 0.99]
    assert adan.meta.to_group({"beta1": 0.9, "beta2": 0.8, "beta3": 0.7})["betas"] == (0.9, 0.8, 0.7)
    assert adan.meta.usual_lr == 1e-3
    # an int annotated float (SGD's momentum=0) is a float; bounds by name
    assert isinstance(optimizers["sgd"].params["momentum"].default, float)
    # a name's bounds only where the optimizer's default agrees: AdEMAMix's alpha=5 is no [0, 1) constant
    assert optimizers["ademamix"].params["alpha"].bounds is None
    assert optimizers["rmsprop"].params["alpha"].bounds == (0, 1)
    # Literal choices become a selector; untypable arguments (callables, None, dtypes) keep their default
    sel = optimizers["adahessian"].params["hessian_distribution"]
    assert set(sel.objects) == {"gaussian", "rademacher"}
    assert "reduce_func" not in optimizers["adashift"].params
    assert "momentum_dtype" not in optimizers["fadam"].params and "growth_rate" not in optimizers["prodigy"].params
    assert set(optimizers["lbfgs"].params["line_search_fn"].objects) == {None, "strong_wolfe"}
    # Muon's AdamW half: prefixed names
    assert {"adamw_lr", "adamw_beta1", "adamw_beta2"} <= set(optimizers["muon_po"].params)
    assert isinstance(optimizers["muon_po"].params["adamw_lr"], LogNumber)


def test_every_discovered_default_is_valid_and_inside_its_slider_range():
    for e in optimizers:
        opts = e.options()  # validates every default against its own bounds
        for n, p in e.params.items():
            if isinstance(p, param.Number) and not isinstance(p, param.Boolean):
                lo, hi = p.get_soft_bounds()
                assert (lo is None or lo <= getattr(opts, n)) and (hi is None or getattr(opts, n) <= hi), (e.name, n)
            assert p.doc, (e.name, n)


def test_discovered_defaults_build_what_the_constructor_builds_by_itself():
    """Every entry's declared defaults give the same param-group values as the bare constructor."""
    for e in optimizers:
        if e.meta.takes_model:
            continue
        w = [torch.zeros(3, 3, requires_grad=True)]
        kw = {"num_iterations": 10_000} if e.name == "ranger21" else {"num_data": 1_000} if e.name == "bsam" else {}
        key = e.meta.lr_key
        if e.name in ("adago", "adamuon", "muon_po", "muonclip", "normuon"):
            w = [{"params": w, "use_muon": True}]
        bare = e.meta.cls(w, **({key: e.meta.usual_lr} if key else {}), **kw).param_groups[0]
        ours = e.build([torch.zeros(3, 3, requires_grad=True)], lr=e.meta.usual_lr).param_groups[0]
        for k in e.meta.to_group(e.defaults()):
            if k in bare:  # others are read by the constructor only: a live change rebuilds (tested below)
                assert bare[k] == ours[k], (e.name, k)


# ---- bad input ------------------------------------------------------------------------------
BAD = [
    ("lion", dict(beta1=1.5), ["beta1", "[0, 1)"]),
    ("adan", dict(beta3=-0.1), ["beta3", "[0, 1)"]),
    ("adam", dict(eps=0.0), ["eps", "(0, inf)"]),
    ("sgdsai", dict(weight_decay=-1.0), ["weight_decay", "[0, inf)"]),
    ("adahessian", dict(update_period=0), ["update_period", "[1, inf)"]),
    ("adahessian", dict(hessian_distribution="uniform"), ["hessian_distribution", "'gaussian'", "'rademacher'"]),
    ("muon_po", dict(adamw_lr=0.0), ["adamw_lr", "(0, inf)"]),
    ("lion", dict(momentum=0.9), ["momentum", "beta1", "beta2", "weight_decay"]),
]


@pytest.mark.parametrize("name, bad, words", BAD, ids=[f"{n}-{b}" for n, b, _ in BAD])
def test_out_of_range_discovered_hyperparameter_is_refused_and_nothing_changes(name, bad, words):
    run = tiny_run(optimizer=name)
    run.step(1)
    before, before_groups = run.settings(), groups(run)
    with pytest.raises(ValueError) as e:
        run.set(**bad)
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    run.step(1)
    assert run.settings() == before
    assert [{k: v for k, v in g.items() if k != "step"} for g in groups(run)] == \
           [{k: v for k, v in g.items() if k != "step"} for g in before_groups]
    with pytest.raises(ValueError):
        tiny_run(optimizer=name, **bad)


# ---- live changes and switching ----------------------------------------------------------------
def test_discovered_hyperparameters_change_live():
    run = tiny_run(optimizer="lion", beta1=0.8)
    run.step(2)
    assert groups(run)[0]["betas"] == (0.8, 0.99)
    run.set(beta2=0.95, weight_decay=0.01, lr=3e-4)
    run.step(1)
    g = groups(run)[0]
    assert g["betas"] == (0.8, 0.95) and g["weight_decay"] == 0.01 and g["lr"] == 3e-4
    # Muon: 2-D weights in the Muon group, the rest in AdamW groups that take the adamw_* settings
    run = tiny_run(optimizer="muon_po")
    run.set(adamw_lr=1e-3, adamw_beta1=0.8, momentum=0.9, lr=0.01)
    run.step(1)
    by = {g["use_muon"]: g for g in groups(run)}
    assert by[True]["lr"] == 0.01 and by[True]["momentum"] == 0.9
    assert by[False]["lr"] == 1e-3 and by[False]["betas"] == (0.8, 0.95)
    # a constructor that transforms a setting gets the same value live: GrokFastAdamW divides lr by 1 + lamb
    run = tiny_run(optimizer="grokfastadamw")
    run.set(lr=3e-3)
    run.step(1)
    assert groups(run)[0]["lr"] == pytest.approx(3e-3 / (1 + optimizers["grokfastadamw"].defaults()["grokfast_lamb"]))


def test_a_constructor_only_setting_rebuilds_the_optimizer_and_keeps_its_state():
    run = tiny_run(optimizer="adammini")
    run.step(3)
    opt = run.torch_optimizer
    assert "num_heads" not in opt.param_groups[0]
    state = {id(p): {k: v.clone() for k, v in s.items() if torch.is_tensor(v)} for p, s in opt.state.items()}
    run.set(num_heads=16)
    run.step(1)
    assert run.torch_optimizer is not opt
    event = run.history.frame()["event"].dropna()
    assert event.index.tolist() == [3] and "adammini rebuilt for" in event.iloc[0] and "num_heads" in event.iloc[0]
    assert "state kept" in event.iloc[0], event.iloc[0]
    assert state  # Adam-mini had state to carry


def test_switching_with_state_keep_carries_matching_moments():
    run = tiny_run(optimizer="adam", lr=1e-2)
    run.step(4)
    before = {p: {k: v.clone() for k, v in s.items()} for p, s in run.torch_optimizer.state.items()}
    run.set(optimizer="adamw", state="keep", weight_decay=0.0)
    # the same step as Adam would take from the carried state
    ref = torch.optim.Adam(run.params, lr=1e-2)
    ref.load_state_dict({"state": {i: {k: v.clone() for k, v in before[p].items()} for i, p in enumerate(run.params)},
                         "param_groups": [{**ref.param_groups[0], "params": list(range(len(run.params)))}]})
    w0 = [p.detach().clone() for p in run.params]
    run.step(1)
    assert isinstance(run.torch_optimizer, torch.optim.AdamW)
    state = run.torch_optimizer.state[run.params[0]]
    assert int(state["step"]) == 5  # carried, not restarted
    event = run.history.frame()["event"].iloc[4]
    assert "adam -> adamw" in event and "state kept" in event and "exp_avg_sq" in event
    # replay: Adam on the same gradients from the carried state lands on the same weights
    w1 = [p.detach().clone() for p in run.params]
    with torch.no_grad():
        for p, w in zip(run.params, w0):
            p.copy_(w)
    ref.step()
    for p, w in zip(run.params, w1):
        torch.testing.assert_close(p.detach(), w)


def test_switching_with_state_keep_that_cannot_match_says_so_and_reset_is_the_default():
    run = tiny_run(optimizer="sgd", momentum=0.9)
    run.step(3)
    run.set(optimizer="adam", state="keep")
    run.step(1)
    event = run.history.frame()["event"].iloc[3]
    assert "sgd -> adam" in event and "nothing kept" in event and "momentum_buffer" in event
    assert int(run.torch_optimizer.state[run.params[0]]["step"]) == 1
    run.set(optimizer="adamw")  # default: reset
    run.step(2)
    assert "state reset" in run.history.frame()["event"].iloc[4]
    assert int(run.torch_optimizer.state[run.params[0]]["step"]) == 2
    with pytest.raises(ValueError, match="state="):
        run.set(lr=0.1, state="keep")  # not switching
    with pytest.raises(ValueError, match="keep"):
        run.set(optimizer="adam", state="carry")
    assert run.optimizer == "adamw"


def test_save_and_load_keep_discovered_tuples(tmp_path):
    kw = dict(optimizer="adan", beta1=0.9, beta3=0.95, lr=3e-3, grad_noise=0.01)
    a = tiny_run(**kw)
    a.step(5)
    a.save(tmp_path / "run.pt")
    b = Run.load(tmp_path / "run.pt", probes=[])
    assert b.settings() == a.settings() and groups(b)[0]["betas"] == (0.9, 0.92, 0.95)
    a.step(4)
    b.step(4)
    for p, q in zip(a.params, b.params):
        assert torch.equal(p, q)  # the same steps, noise included


# ---- closure and second backward -----------------------------------------------------------------
class CountingLoss:
    def __init__(self):
        self.batches = []

    def __call__(self, out, y):
        loss = F.cross_entropy(out, y)
        if torch.is_grad_enabled():
            self.batches.append((y.clone(), loss.item()))
        return loss


def test_lbfgs_steps_with_a_closure_on_the_same_batch():
    loss = CountingLoss()
    run = tiny_run(optimizer="lbfgs", lr=1.0, max_iter=4, line_search_fn="strong_wolfe", loss=loss, batch_size=16)
    loss.batches.clear()  # the model-fits check at construction
    assert run.step(5) == 5
    assert len(loss.batches) > 10  # the closure recomputed the loss several times a step
    # every evaluation of one step used that step's batch: the batch changes exactly between steps
    starts = [0] + [i + 1 for i, (a, b) in enumerate(zip(loss.batches, loss.batches[1:])) if not torch.equal(a[0], b[0])]
    assert len(starts) == 5
    logged = run.history.frame()["train_loss"].tolist()
    for k, (i, j) in enumerate(zip(starts, starts[1:] + [len(loss.batches)])):
        values = [v for _, v in loss.batches[i:j]]
        assert values[0] == pytest.approx(logged[k])  # the logged loss is the step's first evaluation
        assert min(values) < values[0]  # the line search lowered the loss on the step's batch


@pytest.mark.parametrize("name", sorted(HESSIAN))
def test_hessian_optimizers_get_differentiable_gradients_and_leave_plain_ones(name):
    run = tiny_run(optimizer=name, probes=None, data=("moons", {"n": 64}))
    assert run.step(4) == 4
    assert all(p.grad is not None and p.grad.grad_fn is None for p in run.params)  # graph dropped after the step
    assert np.isfinite(run.history.frame()["grad_norm"]).all()
    run.model_copy()  # deep-copyable (a gradient holding a graph is not)
    run.set(optimizer="sgd")
    run.step(2)
    assert run.grads.intact


# ---- the seed papers' optimizers against their update rules ---------------------------------------
def _quadratic_grads(seed=0, n=3):
    """A fixed sequence of gradients for a 2x3 weight: the rules are checked on given gradients."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, generator=g, dtype=torch.float64) for _ in range(n)]


def _run_library(cls, w0, grads, **kw):
    w = w0.clone().requires_grad_(True)
    opt = cls([w], **kw)
    out = []
    for g in grads:
        w.grad = g.clone()
        opt.step()
        out.append(w.detach().clone())
    return out


def test_lion_is_the_sign_of_interpolated_momentum_with_decoupled_decay():
    """Chen et al. 2023: c = β1 m + (1-β1) g; w ← w(1 - lr λ) - lr sign(c); m ← β2 m + (1-β2) g."""
    w0 = torch.randn(2, 3, dtype=torch.float64)
    grads = _quadratic_grads()
    lr, b1, b2, lam = 0.1, 0.9, 0.99, 0.5
    got = _run_library(po.Lion, w0, grads, lr=lr, betas=(b1, b2), weight_decay=lam)
    w, m = w0.numpy().copy(), np.zeros((2, 3))
    for g, lib in zip(grads, got):
        g = g.numpy()
        c = b1 * m + (1 - b1) * g
        w = w * (1 - lr * lam) - lr * np.sign(c)
        m = b2 * m + (1 - b2) * g
        np.testing.assert_allclose(lib.numpy(), w, rtol=1e-12, atol=1e-12)


def test_adan_is_nesterov_momentum_of_gradient_differences():
    """Xie et al. 2022, Algorithm 1 (β here = 1 - the paper's β, as in the library), with proximal decay:
    m = β1 m + (1-β1) g;  v = β2 v + (1-β2)(g - g_prev);  n = β3 n + (1-β3)(g + β2 (g - g_prev))²;
    w ← (w - lr (m̂ + β2 v̂) / (√n̂ + ε)) / (1 + lr λ)   (bias-corrected; g_prev = g at the first step)."""
    w0 = torch.randn(2, 3, dtype=torch.float64)
    grads = _quadratic_grads(1, 4)
    lr, (b1, b2, b3), eps, lam = 0.05, (0.98, 0.92, 0.99), 1e-8, 0.1
    got = _run_library(po.Adan, w0, grads, lr=lr, betas=(b1, b2, b3), eps=eps, weight_decay=lam)
    w = w0.numpy().copy()
    m, v, n, prev = (np.zeros((2, 3)) for _ in range(4))
    for t, (g, lib) in enumerate(zip(grads, got), start=1):
        g = g.numpy()
        d = g - (prev if t > 1 else g)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * d
        n = b3 * n + (1 - b3) * (g + b2 * d) ** 2
        denom = np.sqrt(n / (1 - b3**t)) + eps
        w = (w - lr * (m / (1 - b1**t) + b2 * v / (1 - b2**t)) / denom) / (1 + lr * lam)
        prev = g
        np.testing.assert_allclose(lib.numpy(), w, rtol=1e-10, atol=1e-12)


def _scale_invariant_problem(seed=0):
    """Rows of W enter the loss only through W_i / ‖W_i‖ (a linear layer before a normalization):
    each row's gradient is orthogonal to the row, the case AdamP/SGDP's projection is for."""
    g = torch.Generator().manual_seed(seed)
    X, T = torch.randn(3, 8, generator=g, dtype=torch.float64), torch.randn(2, 8, generator=g, dtype=torch.float64)

    def loss(W):
        return ((W / W.norm(dim=1, keepdim=True)) @ X - T).pow(2).sum()

    return loss, torch.randn(2, 3, generator=g, dtype=torch.float64)


def _project(w, u, eps):
    """Heo et al. 2021: remove each row's radial part, u - (ŵ·u) ŵ."""
    wn = w / (np.linalg.norm(w, axis=1, keepdims=True) + eps)
    return u - wn * (wn * u).sum(axis=1, keepdims=True)


def _library_steps(cls, loss, w0, n, **kw):
    w = w0.clone().requires_grad_(True)
    opt = cls([w], **kw)
    ws, gs = [], []
    for _ in range(n):
        opt.zero_grad()
        loss(w).backward()
        gs.append(w.grad.detach().clone().numpy())
        ws.append(w.detach().clone().numpy())
        opt.step()
    return ws + [w.detach().clone().numpy()], gs


def test_adamp_projects_out_the_radial_part_on_scale_invariant_weights():
    loss, w0 = _scale_invariant_problem()
    lr, (b1, b2), eps, lam, ratio = 0.05, (0.9, 0.999), 1e-8, 0.1, 0.1
    ws, gs = _library_steps(po.AdamP, loss, w0, 3, lr=lr, betas=(b1, b2), eps=eps, weight_decay=lam, wd_ratio=ratio)
    for g, w in zip(gs, ws):
        assert np.abs((g * w).sum(axis=1)).max() < 1e-10  # the weight really is scale-invariant
    m, v = np.zeros((2, 3)), np.zeros((2, 3))
    for t, (w, g, nxt) in enumerate(zip(ws, gs, ws[1:]), start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        adam = m / (np.sqrt(v) + eps) * math.sqrt(1 - b2**t)
        u = _project(w, adam, eps)
        assert np.abs((_project(w, adam, eps) - adam)).max() > 1e-3  # Adam's own step had a radial part
        expect = w * (1 - lr * lam * ratio) - lr / (1 - b1**t) * u
        np.testing.assert_allclose(nxt, expect, rtol=1e-10, atol=1e-12)
        # the update leaves the row norms unchanged to first order: only decay shrinks them
        wn = w / np.linalg.norm(w, axis=1, keepdims=True)
        assert np.abs((wn * u).sum(axis=1)).max() < 1e-6 * np.abs(u).max()


def test_sgdp_projects_the_momentum_step():
    loss, w0 = _scale_invariant_problem(1)
    lr, mom, eps, lam, ratio = 0.1, 0.9, 1e-8, 0.1, 0.1
    ws, gs = _library_steps(po.SGDP, loss, w0, 3, lr=lr, momentum=mom, eps=eps, weight_decay=lam, wd_ratio=ratio)
    buf = np.zeros((2, 3))
    for w, g, nxt in zip(ws, gs, ws[1:]):
        buf = mom * buf + g
        u = _project(w, buf, eps)
        expect = w * (1 - lr * lam * ratio / (1 - mom)) - lr * u  # decay scaled by 1/(1-μ), as Heo et al.'s code
        np.testing.assert_allclose(nxt, expect, rtol=1e-10, atol=1e-12)


def test_sgdsai_fixes_each_tensors_lr_from_the_first_gradients_snr():
    """Xu et al. 2024 (SGD-SaI): per tensor, gSNR = ‖g₁‖ / σ(g₁) at the first step (‖g₁‖ for a vector),
    kept for the whole run; w ← w(1 - lr λ) - lr · gSNR · m, m the momentum average of g."""
    g = torch.Generator().manual_seed(3)
    W0, b0 = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)
    grads = [(torch.randn(3, 4, generator=g, dtype=torch.float64) * s, torch.randn(3, generator=g, dtype=torch.float64))
             for s in (1.0, 5.0, 0.1)]
    lr, mom, lam, eps = 0.01, 0.9, 0.01, 1e-8
    W, b = W0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    opt = po.SGDSaI([W, b], lr=lr, momentum=mom, weight_decay=lam, eps=eps)
    ref = [W0.numpy().copy(), b0.numpy().copy()]
    bufs = [np.zeros((3, 4)), np.zeros(3)]
    snr = None
    for gW, gb in grads:
        W.grad, b.grad = gW.clone(), gb.clone()
        opt.step()
        gs = [gW.numpy(), gb.numpy()]
        if snr is None:  # fixed at the first step
            snr = [np.linalg.norm(gs[0]) / (gs[0].std(ddof=1) + eps), np.linalg.norm(gs[1])]
        for i in range(2):
            bufs[i] = mom * bufs[i] + (1 - mom) * gs[i]
            ref[i] = ref[i] * (1 - lr * lam) - lr * snr[i] * bufs[i]
        np.testing.assert_allclose(W.detach().numpy(), ref[0], rtol=1e-10)
        np.testing.assert_allclose(b.detach().numpy(), ref[1], rtol=1e-10)


def test_lars_scales_each_layer_by_its_trust_ratio():
    """You et al. 2017: local lr = η ‖w‖ / (‖g‖ + λ‖w‖); v ← μ v + local_lr (g + λ w); w ← w - lr v."""
    w0 = torch.randn(2, 3, dtype=torch.float64)
    grads = _quadratic_grads(4)
    lr, eta, lam, mom = 0.5, 0.01, 0.01, 0.9
    got = _run_library(po.LARS, w0, grads, lr=lr, trust_coefficient=eta, weight_decay=lam, momentum=mom)
    w, v = w0.numpy().copy(), np.zeros((2, 3))
    for g, lib in zip(grads, got):
        g = g.numpy()
        local = eta * np.linalg.norm(w) / (np.linalg.norm(g) + lam * np.linalg.norm(w))
        v = mom * v + local * (g + lam * w)
        w = w - lr * v
        np.testing.assert_allclose(lib.numpy(), w, rtol=1e-10)


def test_lamb_scales_the_adam_direction_by_the_layers_trust_ratio():
    """You et al. 2019: r = m/(√v + ε) + λw; w ← w - lr/(1-β1^t) · φ(‖w‖)/‖r‖ · r, φ = clamp(·, max=10)
    (the library corrects the first moment's bias in the step size, not the second's)."""
    w0 = torch.randn(2, 3, dtype=torch.float64)
    grads = _quadratic_grads(5, 4)
    lr, (b1, b2), eps, lam = 0.01, (0.9, 0.999), 1e-6, 0.01
    got = _run_library(po.Lamb, w0, grads, lr=lr, betas=(b1, b2), eps=eps, weight_decay=lam, weight_decouple=False)
    w, m, v = w0.numpy().copy(), np.zeros((2, 3)), np.zeros((2, 3))
    for t, (g, lib) in enumerate(zip(grads, got), start=1):
        g = g.numpy()
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        r = m / (np.sqrt(v) + eps) + lam * w
        trust = min(np.linalg.norm(w), 10.0) / (np.linalg.norm(r) + eps)
        w = w - lr / (1 - b1**t) * trust * r
        np.testing.assert_allclose(lib.numpy(), w, rtol=1e-10)


# ---- AdaGrad-Norm and AdAdaGrad's adaptive batch size -------------------------------------------
def test_adagradnorm_step_by_hand():
    w0 = torch.randn(2, 3, dtype=torch.float64)
    grads = _quadratic_grads(6)
    got = _run_library(AdaGradNorm, w0, grads, lr=0.3, b0=0.5)
    w, b2 = w0.numpy().copy(), 0.25
    for g, lib in zip(grads, got):
        g = g.numpy()
        b2 += (g**2).sum()
        w = w - 0.3 / math.sqrt(b2) * g
        np.testing.assert_allclose(lib.numpy(), w, rtol=1e-12)


# ---- zeroth-order SGD ------------------------------------------------------------------------------
def test_zeroth_order_run_never_calls_backward():
    run = tiny_run(optimizer="zosgd", lr=1e-2, eps=1e-3, probes=None)
    calls = []
    for p in run.params:
        p.register_hook(lambda g: calls.append(1))
    w0 = [p.detach().clone() for p in run.params]
    assert run.step(5) == 5
    assert calls == []  # no gradient was ever computed
    assert all(p.grad is None or not p.grad.any() for p in run.params)
    assert any(not torch.equal(p, w) for p, w in zip(run.params, w0))
    df = run.history.frame()
    assert np.isfinite(df["train_loss"]).all() and (df["grad_norm"] > 0).all()


def test_two_point_estimate_matches_its_definition():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    X, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
    ps = list(model.parameters())
    w0 = [p.detach().clone() for p in ps]
    opt = ZerothOrderSGD(ps, lr=0.1, eps=1e-2, seed=7)
    closure = lambda: F.cross_entropy(model(X), y)
    for step in range(3):
        z = perturbation(ps, 7, step)
        before = [p.detach().clone() for p in ps]
        with torch.no_grad():
            def at(sign, before=before, z=z):
                for p, b, zi in zip(ps, before, z):
                    p.copy_(b + sign * 1e-2 * zi)
                value = float(closure())
                for p, b in zip(ps, before):
                    p.copy_(b)
                return value
            coef = (at(+1) - at(-1)) / (2e-2)
        opt.step(closure)
        for p, b, zi in zip(ps, before, z):
            torch.testing.assert_close(p.detach(), b - 0.1 * coef * zi, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(p, w) for p, w in zip(ps, w0))


def test_two_point_estimate_points_along_the_gradient_on_average():
    """On f(w) = ½ wᵀ A w, E[(f(w+εz) - f(w-εz)) / (2ε) z] = A w exactly (central differences of a quadratic)."""
    g = torch.Generator().manual_seed(0)
    M = torch.randn(10, 10, generator=g, dtype=torch.float64)
    A = M @ M.T / 10 + torch.eye(10, dtype=torch.float64)
    w = torch.randn(10, generator=g, dtype=torch.float64)
    f = lambda: 0.5 * w @ A @ w
    n = 4000
    total = torch.zeros(10, dtype=torch.float64)
    for k in range(n):
        z = perturbation([w], 1, k)
        coef, _, _ = projected_gradient(f, [w], z, 1e-3)
        total += coef * z[0]
    est, true = total / n, A @ w
    cos = float(est @ true / (est.norm() * true.norm()))
    assert cos > 0.97
    assert float(est.norm() / true.norm()) == pytest.approx(1.0, abs=0.1)


# ---- annealed gradient noise ------------------------------------------------------------------------
class _Flat(nn.Module):
    """Loss 0 with zero gradient everywhere: what SGD then moves by is the injected noise alone."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(4000))
        self.out = nn.Linear(2, 2)

    def forward(self, x):
        return self.out(x) + 0 * self.w.sum()


def test_gradient_noise_variance_follows_the_annealing_schedule():
    eta, gamma = 0.5, 0.55
    run = tiny_run(model=_Flat(), loss=lambda out, y: 0 * out.sum(), optimizer="sgd", lr=1.0, momentum=0.0,
                   grad_noise=eta, grad_noise_decay=gamma)
    for t in range(41):
        w = run.model.w.detach().clone()
        run.step(1)
        noise = (w - run.model.w.detach()).numpy()  # lr = 1: the step is the noise itself
        if t in (0, 3, 40):
            var = eta / (1 + t) ** gamma
            # the sample variance of 4,000 normals: relative standard error √(2/4000) ≈ 2.2%
            assert noise.var() == pytest.approx(var, rel=0.1), t
            assert abs(noise.mean()) < 4 * math.sqrt(var / 4000)
    # reproducible: the same seed gives the same noise; 0 turns it off
    a = tiny_run(grad_noise=0.1)
    b = tiny_run(grad_noise=0.1)
    c = tiny_run()
    a.step(5), b.step(5), c.step(5)
    assert all(torch.equal(p, q) for p, q in zip(a.params, b.params))
    assert not all(torch.equal(p, q) for p, q in zip(a.params, c.params))
    with pytest.raises(ValueError, match=r"grad_noise.*\[0, 100\]"):
        a.set(grad_noise=-1.0)
    assert a.grad_noise == 0.1


def test_gradient_noise_works_with_a_closure_optimizer():
    run = tiny_run(optimizer="lbfgs", lr=0.1, max_iter=3, grad_noise=0.01)
    assert run.step(3) == 3


# ---- torch's own argument names ------------------------------------------------------------------
def test_tuples_are_accepted_under_the_constructors_own_name():
    run = tiny_run(optimizer="adam", betas=(0.85, 0.99))
    assert (run.opt_params.beta1, run.opt_params.beta2) == (0.85, 0.99)
    run.step(2)
    assert run.torch_optimizer.param_groups[0]["betas"] == (0.85, 0.99)
    run.set(betas=(0.95, 0.98))
    run.step(1)
    assert run.torch_optimizer.param_groups[0]["betas"] == (0.95, 0.98)
    assert run.settings()["beta1"] == 0.95  # the sliders' split names show the same values
    run.set(optimizer="adan", betas=[0.9, 0.9, 0.95])  # a list too, and a 3-tuple for Adan
    run.step(1)
    assert run.torch_optimizer.param_groups[0]["betas"] == (0.9, 0.9, 0.95)


@pytest.mark.parametrize("kw, words", [
    (dict(betas=(0.9,)), ["betas", "2 numbers", "beta1, beta2"]),
    (dict(betas=0.9), ["betas", "tuple"]),
    (dict(betas=(0.9, 1.5)), ["beta2", "[0, 1)"]),
    (dict(betas=(0.9, 0.99), beta1=0.8), ["not both"]),
    (dict(foreach=False), ["foreach", "implementation"]),
    (dict(nonsense=1), ["unknown setting 'nonsense'", "beta1"]),
])
def test_bad_tuples_and_names_are_refused_at_the_door_and_in_set(kw, words):
    with pytest.raises(ValueError) as err:
        tiny_run(optimizer="adam", **kw)
    assert all(w in str(err.value) for w in words), str(err.value)
    run = tiny_run(optimizer="adam")
    before = run.settings()
    with pytest.raises(ValueError) as err:
        run.set(**kw)
    assert all(w in str(err.value) for w in words) and run.settings() == before


# ---- live flags that change the state an optimizer keeps -------------------------------------------
def _flips(name: str) -> list[tuple[str, object]]:
    """Each boolean setting flipped, and each setting whose default is 0 moved off it (into its range)."""
    out = []
    for key, p in optimizers[name].params.items():
        if isinstance(p, param.Boolean):
            out.append((key, not p.default))
        elif isinstance(p, param.Number) and not isinstance(p, param.Integer) and p.default == 0:
            lo, hi = p.get_soft_bounds()
            out.append((key, 0.5 if hi is None or hi > 0.5 else hi / 2))
    return out


FLIPS = [(name, key, value) for name in optimizers.names() for key, value in _flips(name)]


@pytest.mark.slow
@pytest.mark.parametrize("name, key, value", FLIPS, ids=[f"{n}-{k}" for n, k, _ in FLIPS])
def test_every_flag_flipped_mid_run_keeps_training(name, key, value):
    """amsgrad on Adam after a few steps used to raise KeyError at the next step (the run stuck)."""
    hp, n = SLOW_START.get(name, ({}, 3))
    run = tiny_run(optimizer=name, **hp)
    assert run.step(n) == n, run.message
    try:
        run.set(**{key: value})
    except ValueError:  # refused with the reason (Nesterov without momentum): the run is as it was
        assert run.step(2) == 2, run.message
        return
    assert run.step(3) == 3, run.message
    df = run.history.frame()
    assert np.isfinite(df["train_loss"]).all() and run.status != "paused"


@pytest.mark.parametrize("name, flag, created", [("adam", {"amsgrad": True}, "max_exp_avg_sq"),
                                                 ("adamw", {"amsgrad": True}, "max_exp_avg_sq"),
                                                 ("rmsprop", {"momentum": 0.5}, "momentum_buffer"),
                                                 ("rmsprop", {"centered": True}, "grad_avg")])
def test_a_flag_that_needs_new_state_creates_it_and_says_so(name, flag, created):
    run = tiny_run(optimizer=name)
    run.step(3)
    run.set(**flag)
    assert run.step(1) == 1, run.message
    p = run.params[0]
    assert torch.is_tensor(run.torch_optimizer.state[p][created])
    event = run.history.frame()["event"].dropna().iloc[-1]
    assert created in event and "first step" in event
    assert run.step(5) == 5


def test_torchs_amsgrad_from_zeros_matches_amsgrad_turned_on_from_the_start():
    """max_exp_avg_sq created as zeros is what Adam would hold had amsgrad been on from its first step
    while the second moments never decreased: the next update is the same."""
    a = tiny_run(optimizer="adam")
    b = tiny_run(optimizer="adam", amsgrad=True)
    a.step(1), b.step(1)  # after one step, max_exp_avg_sq == exp_avg_sq
    a.set(amsgrad=True)
    a.step(1), b.step(1)
    assert all(torch.allclose(p, q, atol=1e-7) for p, q in zip(a.params, b.params))


def test_a_setting_the_optimizer_cannot_step_with_is_refused():
    run = tiny_run(optimizer="soap")
    run.step(2)
    before = run.settings()
    with pytest.raises(ValueError, match="cannot take a step on this model with merge_dims=True"):
        run.set(merge_dims=True)
    assert run.settings() == before and run.step(2) == 2
