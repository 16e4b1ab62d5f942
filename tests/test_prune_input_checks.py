"""Bad pruning input is refused with a message naming the setting, what was given and what is allowed; a
refused run.set(pruning=...) leaves the run training exactly as before."""
from __future__ import annotations

import pytest
import torch
from conftest import small_run
from torch import nn

import trainlab.prune as P

BAD = [
    # (pruning spec, words the error must contain)
    ({"sparsity": 1.0}, ["sparsity=1.0", "[0, 1)"]),
    ({"sparsity": -0.1}, ["sparsity=-0.1", "[0, 1)"]),
    ({"sparsity": "high"}, ["sparsity='high'", "number"]),
    ({"pattern": "nm", "n": 5, "m": 4}, ["n=5", "m=4", "N <= M"]),
    ({"pattern": "nm", "n": 2, "m": 3}, ["m=3", "does not divide", "input size 2"]),
    ({"pattern": "block", "block": (3, 3)}, ["block=(3, 3)", "does not tile"]),
    ({"pattern": "diagonal"}, ["pattern='diagonal'", "'unstructured'", "'nm'"]),
    ({"method": "taylor"}, ["unknown criterion 'taylor'", "magnitude", "synflow"]),
    ({"allocation": "optimal"}, ["unknown allocation 'optimal'", "erk", "lamp", "adaptive"]),
    ({"allocation": "adaptive", "pattern": "block"}, ["allocation='adaptive'", "pattern='block'"]),
    ({"scope": "layer", "allocation": "lamp"}, ["allocation='lamp'", "scope='layer'"]),
    ({"scope": "model"}, ["scope='model'", "'global'", "'layer'"]),
    ({"scope": "global", "allocation": "erk"}, ["allocation='erk'", "scope='layer'"]),
    ({"pattern": "block", "block": 4}, ["block=4", "(rows, cols) pair"]),
    ({"schedule": ("gradual", {"start": 100, "end": 50})}, ["end=50", "start=100"]),
    ({"schedule": ("gradual", {"frequency": 0})}, ["frequency=0", "rejected"]),
    ({"schedule": "cubic"}, ["unknown pruning schedule 'cubic'", "oneshot", "gradual"]),
    ({"schedule": ("imp", {"period": 10, "rewind": 10})}, ["rewind=10", "period=10"]),
    ({"method": ("random", {"seed": -1})}, ["seed=-1"]),
    ({"schedule": ("mask_decay", {"at": 50, "end": 50})}, ["end=50", "at=50"]),
    ({"schedule": "mask_decay"}, ["schedule 'mask_decay'", "pattern='nm'", "pattern='unstructured'"]),
    ({"method": "random", "pattern": "nm", "n": 1, "m": 2, "schedule": "mask_decay"},
     ["method='random'", "'mask_decay'", "method='magnitude'"]),
    ({"rescale": "variance"}, ["unknown rescaling 'variance'", "norm", "eoc"]),
    ({"rescale": ("eoc", {"activation": "swish"})}, ["activation", "swish"]),
    ({"rescale": 2}, ["rescale=2", "True (= 'norm')"]),
    (42, ["pruning=42", "method name"]),
]


def _words(err, words):
    text = str(err.value)
    for w in words:
        assert w in text, f"{w!r} not in {text!r}"


@pytest.mark.parametrize("spec,words", BAD)
def test_refused_at_construction(spec, words):
    with pytest.raises(ValueError) as err:
        small_run(pruning=spec)
    _words(err, words)


@pytest.mark.parametrize("spec,words", BAD)
def test_refused_by_set_and_the_run_keeps_training_unchanged(spec, words):
    run = small_run(pruning={"method": "magnitude", "sparsity": 0.5})
    run.step(5)
    before = (run.pruning, {k: v.clone() for k, v in P.masks(run.model).items()})
    with pytest.raises(ValueError) as err:
        run.set(pruning=spec)
    _words(err, words)
    assert run.step(5) == 5 and run.pruning == before[0]
    assert all(torch.equal(P.masks(run.model)[k], v) for k, v in before[1].items())


def test_sparsity_alone_is_checked_and_needs_pruning():
    run = small_run()
    with pytest.raises(ValueError, match="sparsity= needs pruning"):
        run.set(sparsity=0.5)
    run = small_run(pruning="magnitude")
    with pytest.raises(ValueError, match=r"sparsity=1.5 rejected: allowed \[0, 1\)"):
        run.set(sparsity=1.5)
    assert run.pruning["sparsity"] == 0.9


def test_a_model_without_prunable_layers_and_bad_weights():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Parameter(torch.ones(2))

        def forward(self, x):
            return x * self.a

    with pytest.raises(ValueError, match="no prunable layer.*nn.Linear or nn.Conv"):
        P.Sparsifier(Scale())
    with pytest.raises(ValueError, match=r"weights=\['fc9.weight'\] rejected.*prunable: fc1.weight, out.weight"):
        P.Sparsifier(small_run().model, weights=["fc9.weight"])
    with pytest.raises(ValueError, match="n=2.5, m=4 rejected"):
        from trainlab.kernels.nm import nm_keep
        nm_keep(torch.zeros(2, 4).numpy(), 2.5, 4)


def test_turning_pruning_on_waits_for_the_step_a_probe_is_in():
    """A probe's torch.func call swaps the weights for plain tensors during a step; run.set(pruning=...) from
    the UI thread meanwhile saw no prunable layer and refused (the dashboard's Turn pruning on, Sharpness on)."""
    import threading

    run = small_run()
    swapped, release = threading.Event(), threading.Event()

    def step_with_swapped_weights():
        with run._lock:  # what a step holds while its probes run
            layers = [m for m in run.model.modules() if isinstance(m, nn.Linear)]
            weights = [m.weight for m in layers]
            for m, w in zip(layers, weights):
                del m.weight
                m.weight = w.detach().clone()  # as torch.func.functional_call leaves them during the call
            swapped.set()
            release.wait(10)
            for m, w in zip(layers, weights):
                del m.weight
                m.weight = w

    t = threading.Thread(target=step_with_swapped_weights)
    t.start()
    swapped.wait(10)
    threading.Timer(0.2, release.set).start()
    run.set(pruning="magnitude", sparsity=0.5)  # waits for the step, then sees the model as it is
    t.join(10)
    run.step(1)  # applied between steps
    assert run.pruning["method"][0] == "magnitude" and run.pruning["sparsity"] == 0.5
