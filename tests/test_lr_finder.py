"""The LR range test: the rule on a synthetic curve with a known answer, and on a real digits MLP."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from trainlab import Run
from trainlab.jobs import Job
from trainlab.lr_finder import dip, ema, lr_range_test, suggest, zero_lag


def test_ema_is_bias_corrected():
    x = np.array([3.0, 1.0, 2.0, 5.0])
    beta, avg, expected = 0.8, 0.0, []
    for i, v in enumerate(x):
        avg = beta * avg + (1 - beta) * v
        expected.append(avg / (1 - beta ** (i + 1)))
    np.testing.assert_allclose(ema(x, beta), expected, rtol=1e-15)
    assert ema(np.full(5, 7.0), 0.98) == pytest.approx([7.0] * 5)  # no pull toward 0 at the start


def test_zero_lag_smoothing_keeps_a_minimum_in_place():
    t = np.linspace(-1, 1, 201)
    curve = t**2  # minimum at index 100
    assert int(np.argmin(zero_lag(curve, 0.9))) == 100
    assert int(np.argmin(ema(curve, 0.9))) > 105  # the one-way average lags behind it


LRS = 1e-7 * (1e8) ** (np.arange(200) / 199)


def clean_curve(lrs: np.ndarray, best: float) -> np.ndarray:
    """A range-test-shaped curve: flat, a fall, its minimum at about lr = best / 3, then a blow-up."""
    x = np.log10(lrs / best)
    return 2.3 - 2.0 / (1 + np.exp(-3 * (x + 1.5))) + 2.0 * np.clip(x + 0.5, 0, None) ** 2


def noisy_sweep(best: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The clean curve plus batch noise, cut where lr_range_test stops (smoothed loss > 4 x its best)."""
    losses = clean_curve(LRS, best) + np.random.default_rng(seed).normal(0, 0.08, len(LRS))
    smoothed = ema(losses, 0.9)
    over = (smoothed > 4 * np.minimum.accumulate(smoothed)) & (np.arange(len(LRS)) >= 10)
    n = int(np.argmax(over)) + 1 if over.any() else len(LRS)
    return LRS[:n], losses[:n]


@pytest.mark.parametrize("best", [3e-3, 0.1, 1.0])
def test_rule_on_a_synthetic_curve_with_a_known_answer(best):
    true_min = LRS[np.argmin(clean_curve(LRS, best))]
    found, steepest = [], []
    for seed in range(10):
        lrs, losses = noisy_sweep(best, seed)
        sugg, minimum, trend = suggest(lrs, losses)
        assert sugg == pytest.approx(minimum / 10)
        assert len(trend) == len(lrs)
        found.append(math.log10(minimum / true_min))
        steepest.append(math.log10(lrs[np.argmin(np.gradient(losses))]))  # the raw steepest point, for contrast
    assert max(map(abs, found)) < 0.2  # every seed within a factor 1.6 of the true minimum
    assert max(steepest) - min(steepest) > 3 * (max(found) - min(found))  # the raw steepest point wanders


def test_a_dip_stands_out_of_the_noise_only_when_it_is_real():
    """A trained run's sweep: the loss flat at 5e-6 with +-50 % batch noise until lr 10 (what the dashboard
    met after 600k steps); the smoothed noise dips somewhere, a real dip is far larger."""
    fooled = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        flat = 5e-6 * np.exp(rng.normal(0, 0.5, len(LRS)))
        _, _, trend = suggest(LRS, flat)
        fooled += trend.min() < 0.9 * trend[:10].mean()  # the rule "the trend dips 10 %" alone
        assert not dip(flat, trend)[2], f"seed {seed}: noise taken for a minimum"
        lrs, losses = noisy_sweep(0.1, seed)
        assert dip(losses, suggest(lrs, losses)[2])[2], f"seed {seed}: a real minimum missed"
    assert fooled >= 10, f"the 10 % rule alone was fooled by {fooled} of 20 flat sweeps: the case is not the one met"


def digits_run(**kw) -> Run:
    kw.setdefault("model", ("mlp", {"width": 32, "depth": 1}))
    return Run(data="digits", device="cpu", probes=[], **kw)


def final_loss(lr: float, optimizer: str, steps: int = 400) -> float:
    run = digits_run(optimizer=optimizer, lr=lr)
    if run.step(steps) < steps:
        return math.inf  # diverged
    return run.evaluate()["val_loss"]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_suggestion_trains_better_than_ten_times_above_and_below(optimizer):
    run = digits_run(optimizer=optimizer)
    result = lr_range_test(run, steps=150, progress=False)
    assert result.suggestion is not None and result.note == ""
    assert result.suggestion == pytest.approx(result.minimum / 10)
    assert len(result.lrs) == len(result.losses) == len(result.smoothed) == len(result.trend)
    np.testing.assert_allclose(result.smoothed, ema(result.losses, 0.9))
    at = final_loss(result.suggestion, optimizer)
    assert math.isfinite(at)
    assert at < final_loss(result.suggestion / 10, optimizer)
    assert at < final_loss(result.suggestion * 10, optimizer)


def test_the_run_is_untouched_and_the_lrs_are_exponential():
    run = digits_run(optimizer="sgd", lr=0.05)
    run.step(5)
    weights = copy.deepcopy(run.model.state_dict())
    opt_state = copy.deepcopy(run.torch_optimizer.state_dict())
    rows = len(run.history)
    result = lr_range_test(run, start=1e-4, end=1e3, steps=40, progress=False)
    for k, v in run.model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    assert str(run.torch_optimizer.state_dict()) == str(opt_state)
    assert len(run.history) == rows and run.lr == 0.05 and run.steps == 5
    ratios = result.lrs[1:] / result.lrs[:-1]
    np.testing.assert_allclose(ratios, (1e7) ** (1 / 39), rtol=1e-12)
    assert result.lrs[0] == pytest.approx(1e-4)
    assert result.stopped == "diverged" and len(result.lrs) < 40  # lr 1e3 blows any MLP up


def test_apply_sets_the_suggestion_as_the_base_lr():
    run = digits_run(optimizer="sgd", schedule=("cosine", {"total": 100}))
    result = lr_range_test(run, steps=200, progress=False)  # 60 steps leave no dip: no suggestion then
    result.apply(run)
    assert run.lr == result.suggestion
    assert run.schedule[0] == "cosine"


def test_runs_as_a_job_while_the_run_trains_and_can_be_cancelled():
    # lr 1e-4: the run trains but hardly learns before the job copies it, so the sweep has its dip
    # (a run some hundred steps along at lr 0.05 already sits where the loss hardly moves)
    run = digits_run(optimizer="sgd", lr=1e-4)
    run.start()
    try:
        job = Job(lr_range_test, run, steps=100)
        result = job.wait(120)
        assert job.progress.fraction > 0 and result.suggestion is not None
        slow = Job(lr_range_test, run, start=1e-6, end=1e-5, steps=100_000)
        slow.cancel(wait=60)
        assert slow.done and slow.result.stopped == "cancelled" and len(slow.result.lrs) < 100_000
    finally:
        run.stop()
    assert run.steps > 0


@pytest.mark.parametrize("kw, words", [
    (dict(start=1.0, end=0.1), "start < end"), (dict(steps=3), "steps"), (dict(beta=1.0), "beta"),
    (dict(diverge=0.5), "diverge"),
])
def test_bad_arguments_are_refused(kw, words):
    with pytest.raises(ValueError, match=words):
        lr_range_test(digits_run(), progress=False, **kw)


def test_optimizers_that_step_differently_are_refused_clearly():
    run = digits_run(optimizer="lbfgs")
    with pytest.raises(ValueError, match="lbfgs steps differently"):
        lr_range_test(run, progress=False)


def test_a_trained_run_gives_no_suggestion_and_says_why():
    """On a run trained to a flat minimum the loss hardly moves until it blows up: no lr stands out."""
    run = Run(model=("mlp", {"width": 32, "depth": 1}), data="moons", device="cpu", lr=0.5, momentum=0.9, probes=[])
    run.step(1500)
    result = lr_range_test(run, start=1e-7, end=10, steps=100, progress=False)
    assert result.suggestion is None and result.minimum is None
    assert "hardly moved" in result.note and "no suggestion" in result.note
    with pytest.raises(ValueError, match="no suggestion"):
        result.apply(run)
