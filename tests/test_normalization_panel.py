"""NormalizationPanel: BatchNorm noise and effective lr probes toggled on the run and streamed, the norm
comparison as a job whose curves reach the plot."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import wait_until
from torch import nn

import trainlab
from trainlab.probes import BatchStatNoise, EffectiveLR
from trainlab.widgets.normalization import NormalizationPanel


def test_probes_stream_and_follow_the_batch_size():
    run = trainlab.Run(model=("mlp", {"width": 16, "norm": "batchnorm"}), data="digits", batch_size=8, device="cpu")
    panel = NormalizationPanel(run, every=5)
    try:
        assert panel.toggles["noise"].value  # on by itself: the model has BatchNorm
        panel.toggles["lr"].value = True
        assert any(isinstance(p, BatchStatNoise) for p in run.probes) and any(isinstance(p, EffectiveLR) for p in run.probes)
        run.step(10)
        run.set(batch_size=128)
        run.step(10)
        panel.feed.tick()
        data = panel.noise_source.data
        assert list(data["step"]) == [5.0, 10.0, 15.0, 20.0]
        np.testing.assert_allclose(data["1/√B"], [8 ** -0.5] * 2 + [128 ** -0.5] * 2)
        assert data["norm1"][3] < data["norm1"][0] / 2
        frame = run.history.frame().dropna(subset=["effective_lr/fc1"])
        np.testing.assert_allclose(panel.lr_source.data["fc1"], frame["effective_lr/fc1"])
        panel.toggles["lr"].value = False
        assert not any(isinstance(p, EffectiveLR) for p in run.probes)
    finally:
        panel.close()
    assert not any(isinstance(p, BatchStatNoise) for p in run.probes)


def test_compare_norms_draws_each_curve_and_refuses_what_it_cannot_rebuild():
    run = trainlab.Run(model=("mlp", {"width": 16}), data="moons", batch_size=4, device="cpu", optimizer="adam", lr=0.01)
    panel = NormalizationPanel(run, steps=40, compare=["batchnorm", "layernorm"])
    try:
        assert not panel.toggles["noise"].value  # no BatchNorm in this model
        panel.compare_button.clicks += 1
        job = panel.slots["compare"].job
        wait_until(lambda: job.done, 120, "the comparison to finish", every=0.05)
        assert job.error is None
        panel.feed.tick()
        data = panel.compare_source.data
        assert data["norm"] == ["batchnorm (B=4)", "layernorm (B=4)"] and len(data["xs"][0]) == 40
        panel.compare = []
        assert panel.compare_norms() is None and "at least one" in panel.error
    finally:
        panel.close()
    own = trainlab.Run(model=nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2)), data="moons", device="cpu")
    panel = NormalizationPanel(own)
    try:
        assert panel.compare_norms() is None and "registered model" in panel.error
    finally:
        panel.close()


def test_bad_interval_is_refused():
    run = trainlab.Run(model=("mlp", {"width": 8}), data="moons", device="cpu")
    panel = NormalizationPanel(run)
    try:
        panel.controls["every"].apply("every", 0)
        assert panel.every == 25 and "every" in panel.error
    finally:
        panel.close()
    with pytest.raises(ValueError):
        NormalizationPanel(run, compare=["nope"])

