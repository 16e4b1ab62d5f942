"""The normalization probes: BatchNorm's batch-statistics noise against its closed form and a direct
computation, and the effective lr of scale-invariant weights against lr/‖w‖²."""
import math

import pytest
import torch
from torch import nn

from trainlab import Run
from trainlab.probes.normalization import BatchStatNoise, EffectiveLR, batch_stat_noise


def test_batch_noise_matches_a_direct_computation_and_the_gaussian_closed_form():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 3))
    batches = [torch.randn(16, 6) for _ in range(400)]
    mean_noise, var_noise = batch_stat_noise(model, batches)["1"]
    with torch.no_grad():  # the direct computation: the BatchNorm input is the first layer's output
        z = torch.stack([model[0](x).double() for x in batches])          # (batches, B, C)
        pooled = z.reshape(-1, 32)
        sd, var = pooled.std(0, unbiased=False), pooled.var(0, unbiased=False)
        direct_mean = (z.mean(1).std(0) / sd).mean()
        direct_var = (z.var(1, unbiased=False).std(0) / var).mean()
    assert mean_noise == pytest.approx(float(direct_mean), rel=1e-9)
    assert var_noise == pytest.approx(float(direct_var), rel=1e-9)
    # Gaussian features: the batch mean spreads as 1/sqrt(B); the biased batch variance as sqrt(2(B-1))/B
    assert mean_noise == pytest.approx(1 / math.sqrt(16), rel=0.08)
    assert var_noise == pytest.approx(math.sqrt(2 * 15) / 16, rel=0.12)


def test_batch_noise_probe_falls_with_the_batch_size_and_sees_only_batchnorm():
    run = Run(model=("mlp", {"width": 32, "norm": "batchnorm"}), data="digits", batch_size=8, seed=1)
    probe = BatchStatNoise(every=1, batches=16)
    cols = probe.columns(run).scalars
    assert set(cols) == {"bn_mean_noise/norm1", "bn_mean_noise/norm2", "bn_var_noise/norm1", "bn_var_noise/norm2",
                         "bn_mean_noise_theory", "bn_var_noise_theory"}
    small = probe.measure(run)
    run.set(batch_size=128)
    run.step()
    large = probe.measure(run)
    for key in ("bn_mean_noise/norm1", "bn_mean_noise/norm2"):
        assert large[key] < small[key] / 2  # 16x the batch: about a quarter of the noise
    assert small["bn_mean_noise_theory"] == pytest.approx(1 / math.sqrt(8))
    assert small["bn_var_noise_theory"] == pytest.approx(math.sqrt(14) / 8)
    plain = Run(model=("mlp", {"width": 32, "norm": "layernorm"}), data="digits")
    assert probe.columns(plain).scalars == {} and probe.measure(plain) == {}
    with pytest.raises(ValueError, match="batches"):
        BatchStatNoise(batches=1)


@pytest.mark.parametrize("optimizer, power", [("sgd", 2), ("adam", 1)])
def test_effective_lr_is_lr_over_the_weight_norm(optimizer, power):
    run = Run(model=("mlp", {"width": 16, "norm": "batchnorm"}), data="digits", optimizer=optimizer, lr=0.01)
    run.step(3)
    probe = EffectiveLR(every=1)
    assert set(probe.columns(run).scalars) == {"effective_lr/fc1", "effective_lr/fc2"}
    out = probe.measure(run)
    for layer in ("fc1", "fc2"):
        norm = math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in run.layers[layer]))
        assert out[f"effective_lr/{layer}"] == pytest.approx(0.01 / norm ** power, rel=1e-9)


def test_norm_comparison_trains_one_configuration_per_norm():
    from trainlab import live
    from trainlab.experiment import train

    run = Run(model=("mlp", {"width": 16, "norm": "batchnorm"}), data="moons", batch_size=4, optimizer="adam", lr=0.01)
    out = live.compute(live.norm_comparison, run, progress=False, norms=("batchnorm", "none"), steps=60)
    snap = out[live.NORM_COMPARISON]
    assert snap["batch_size"] == 4 and list(snap["curves"]) == ["batchnorm", "none"]
    direct = train({"model": ("mlp", {**run.model_spec[1], "norm": "none"}), "data": "moons", "seed": run.seed,
                    "steps": 60, **run.settings()})
    assert snap["curves"]["none"]["train_loss"].tolist() == direct["history"]["train_loss"].tolist()
    assert run.history.snapshot(live.NORM_COMPARISON)[1] is not None
    with pytest.raises(ValueError, match="not registered"):
        live.compute(live.norm_comparison, run, progress=False, norms=("battchnorm",))
    own = Run(model=nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2)), data="moons")
    with pytest.raises(ValueError, match="registered model"):
        live.compute(live.norm_comparison, own, progress=False)
