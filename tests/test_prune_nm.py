"""N:M masks from the Numba kernel against the NumPy reference and torch.ao's WeightNormSparsifier; block masks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.ao.pruning import WeightNormSparsifier

import trainlab.prune as P
from trainlab.kernels.nm import nm_keep, nm_keep_reference
from trainlab.prune.structured import nm_mask_torch


def _ao_mask(weight2d: torch.Tensor, n: int, m: int) -> torch.Tensor:
    lin = nn.Linear(weight2d.shape[1], weight2d.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(weight2d)
    model = nn.Sequential(lin)
    sp = WeightNormSparsifier(sparsity_level=1.0, sparse_block_shape=(1, m), zeros_per_block=m - n)
    sp.prepare(model, [{"tensor_fqn": "0.weight"}])
    sp.step()
    return model[0].parametrizations.weight[0].mask.bool()


@pytest.mark.parametrize("n,m", [(1, 4), (2, 4), (2, 8), (3, 4), (4, 8)])
def test_linear_masks_equal_weight_norm_sparsifier_and_reference(n, m):
    torch.manual_seed(n * 10 + m)
    w = torch.randn(12, 32)
    got = P.nm_mask(w, n, m)
    assert torch.equal(got, _ao_mask(w, n, m))
    assert np.array_equal(got.numpy(), nm_keep_reference(w.abs().numpy(), n, m))
    assert torch.equal(got, nm_mask_torch(w, n, m))
    assert (got.reshape(12, -1, m).sum(2) == n).all()


def test_conv_groups_run_over_in_channels_times_kernel():
    torch.manual_seed(0)
    w = torch.randn(6, 4, 3, 3)  # 36 per output channel
    got = P.nm_mask(w, 2, 4)
    assert got.shape == w.shape
    assert torch.equal(got.reshape(6, -1), _ao_mask(w.reshape(6, -1), 2, 4))  # torch.ao takes the 2-D view only


def test_kernel_ties_negatives_and_edge_cases():
    s = np.array([[1.0, 1.0, 1.0, 1.0, -1.0, 5.0, np.inf, 0.0]])
    assert np.array_equal(nm_keep(s, 2, 4), nm_keep_reference(s, 2, 4))
    assert np.array_equal(nm_keep(s, 2, 4), [[True, True, False, False, False, True, True, False]])
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, (50, 40)).astype(float)  # many ties
    for n, m in [(0, 4), (4, 4), (1, 2), (3, 8)]:
        assert np.array_equal(nm_keep(x, n, m), nm_keep_reference(x, n, m))
    with pytest.raises(ValueError, match="does not divide"):
        nm_keep(x, 2, 3)


def test_block_masks_keep_the_blocks_of_largest_norm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8))
    w = model[0].weight.detach().clone()
    P.Sparsifier(model, pattern="block", block=(2, 4), sparsity=0.5, scope="layer").apply()
    keep = P.masks(model)["0.weight"]
    norms = w.reshape(4, 2, 4, 4).pow(2).sum((1, 3)).sqrt()  # (row blocks, col blocks)
    kept = keep.reshape(4, 2, 4, 4)[:, 0, :, 0]
    assert int(kept.sum()) == 8
    assert norms[kept].min() >= norms[~kept].max()
    assert (keep.reshape(4, 2, 4, 4) == kept[:, None, :, None]).all()  # whole blocks
    assert P.sparsity(model)["0.weight"] == 0.5


def test_the_kernel_agrees_with_the_jit_off():
    """With NUMBA_DISABLE_JIT=1 (how coverage sees the kernels) the plain-Python kernel gives the same masks."""
    import os
    import subprocess
    import sys

    import trainlab.kernels.nm as K

    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 16)).round(1)  # ties too
    code = ("import importlib.util, numpy as np; "
            f"spec = importlib.util.spec_from_file_location('k', {K.__file__!r}); "
            "k = importlib.util.module_from_spec(spec); spec.loader.exec_module(k); "
            f"print(repr(k.nm_keep(np.array({x.tolist()!r}), 2, 4).tolist()))")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "NUMBA_DISABLE_JIT": "1"},
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert np.array_equal(np.array(eval(out)), nm_keep(x, 2, 4))
    assert np.array_equal(nm_keep(x, 2, 4), nm_keep_reference(x, 2, 4))
