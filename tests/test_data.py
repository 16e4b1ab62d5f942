"""Data: the embedded sets, the user's own data in every accepted form, and batching."""
from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
from sklearn import datasets as skd
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import trainlab
from trainlab import Data, as_data, datasets
from trainlab.data import TensorBatches

SETS_2D = ["moons", "circles", "spirals", "xor", "gaussians"]


def _all_points(d: Data) -> torch.Tensor:
    return torch.cat([d.X, d.X_val])


def _all_labels(d: Data) -> torch.Tensor:
    return torch.cat([d.y, d.y_val])


# ---- registry --------------------------------------------------------------------------------
def test_every_documented_set_is_registered():
    for name in ["digits", *SETS_2D]:
        assert name in datasets
    assert trainlab.datasets is datasets


# ---- digits ----------------------------------------------------------------------------------
def test_digits_shapes_and_split_sizes():
    X_raw, y_raw = skd.load_digits(return_X_y=True)
    d = as_data("digits")
    n = len(X_raw)
    assert d.X.shape[1] == d.X_val.shape[1] == X_raw.shape[1] == 64
    assert len(d.X) + len(d.X_val) == n
    assert len(d.X_val) == pytest.approx(0.2 * n, abs=1)  # 1437 / 360
    assert len(d.X) == len(d.y) and len(d.X_val) == len(d.y_val)
    assert d.X.dtype == torch.float32 and d.y.dtype == torch.long
    assert d.task == "classification"
    assert d.n_out == len(np.unique(y_raw)) == 10
    assert d.image_shape == (1, 8, 8)
    assert d.input_shape == (64,) and d.n_features == 64
    assert not d.is_2d and d.has_val
    assert d.spec == ("digits", {"seed": 0})


def test_digits_standardized_with_training_statistics():
    d = as_data("digits")
    X = d.X.double()
    sd = X.std(0, unbiased=False)
    varying = sd > 0
    assert varying.sum() > 50  # most pixels vary; a few border pixels are constant
    assert X.mean(0)[varying].abs().max() < 1e-4
    assert (sd[varying] - 1).abs().max() < 1e-4
    # constant training pixels stay exactly zero instead of dividing by zero
    assert torch.all(X[:, ~varying] == 0)
    assert torch.isfinite(d.X_val).all()

    # the validation set is scaled with the TRAINING mean/std (reference: the same split done here)
    X_raw, y_raw = skd.load_digits(return_X_y=True)
    Xtr, Xva, _, _ = train_test_split(X_raw, y_raw, test_size=0.2, stratify=y_raw, random_state=0)
    mu, s = Xtr.mean(0), Xtr.std(0)
    s[s == 0] = 1.0
    np.testing.assert_allclose(d.X.numpy(), (Xtr - mu) / s, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(d.X_val.numpy(), (Xva - mu) / s, rtol=1e-5, atol=1e-5)
    assert abs(float(d.X_val.double().mean())) > 1e-6  # not re-centred on its own statistics


def test_digits_split_is_stratified():
    d = as_data("digits")
    total = torch.bincount(_all_labels(d), minlength=10)
    val = torch.bincount(d.y_val, minlength=10)
    assert torch.all(val > 0), "every class is in the validation set"
    # each class is split 80/20 (stratified), up to rounding
    assert torch.all((val.double() - 0.2 * total.double()).abs() <= 1.0)


def test_digits_deterministic_and_seeded():
    a, b = as_data("digits"), as_data("digits")
    assert torch.equal(a.X, b.X) and torch.equal(a.y, b.y)
    assert torch.equal(a.X_val, b.X_val) and torch.equal(a.y_val, b.y_val)
    c = as_data(("digits", {"seed": 1}))
    assert c.X.shape == a.X.shape
    assert not torch.equal(c.y, a.y)  # another split


# ---- the generated 2-D sets ------------------------------------------------------------------
@pytest.mark.parametrize("name", SETS_2D)
def test_2d_set_size_shape_and_labels(name):
    for n in (60, 250):
        d = as_data((name, {"n": n}))
        assert len(d.X) + len(d.X_val) == n
        assert d.X.shape[1] == d.X_val.shape[1] == 2
        assert d.is_2d and d.has_val
        assert d.task == "classification" and d.n_out == 2
        labels = _all_labels(d)
        assert set(labels.unique().tolist()) == {0, 1}
        frac = labels.double().mean().item()
        assert 0.3 <= frac <= 0.7, f"{name}: class balance {frac}"
        assert set(d.y_val.unique().tolist()) == {0, 1}  # stratified: both classes validate
        assert torch.isfinite(_all_points(d)).all()
    assert d.spec == (name, {**datasets[name].defaults(), "n": n})


@pytest.mark.parametrize("name", SETS_2D)
def test_2d_set_seed_determinism(name):
    a = as_data((name, {"seed": 3}))
    b = as_data((name, {"seed": 3}))
    c = as_data((name, {"seed": 4}))
    assert torch.equal(a.X, b.X) and torch.equal(a.y, b.y) and torch.equal(a.X_val, b.X_val)
    assert a.X.shape == c.X.shape
    assert not torch.equal(a.X, c.X)


@pytest.mark.parametrize("name", SETS_2D)
def test_2d_set_noise_changes_the_data(name):
    quiet = as_data((name, {"noise": 0.0, "seed": 1}))
    noisy = as_data((name, {"noise": 0.5, "seed": 1}))
    assert quiet.X.shape == noisy.X.shape
    assert not torch.allclose(_all_points(quiet), _all_points(noisy), atol=1e-3)


def test_2d_sets_are_standardized():
    for name in SETS_2D:
        d = as_data(name)
        X = d.X.double()
        assert X.mean(0).abs().max() < 1e-4, name
        assert (X.std(0, unbiased=False) - 1).abs().max() < 1e-4, name


# ---- the user's own data ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["tensor", "numpy", "list"])
def test_as_data_classification_pair(kind):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 5))
    y = rng.integers(0, 3, 30)
    y[0] = 2  # three classes for sure
    if kind == "tensor":
        pair = (torch.as_tensor(X), torch.as_tensor(y))
    elif kind == "numpy":
        pair = (X, y)
    else:
        pair = [X.tolist(), y.tolist()]
    d = as_data(pair)
    assert d.task == "classification"
    assert d.n_out == int(y.max()) + 1 == 3
    assert d.X.dtype == torch.float32 and d.X.shape == (30, 5)
    assert d.y.dtype == torch.long and d.y.shape == (30,)
    np.testing.assert_allclose(d.X.numpy(), X, rtol=1e-6)
    np.testing.assert_array_equal(d.y.numpy(), y)
    assert not d.has_val and d.spec is None


@pytest.mark.parametrize("kind", ["tensor", "numpy"])
def test_as_data_regression_pair(kind):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((40, 3)).astype(np.float32)
    y = rng.standard_normal(40)
    d = as_data((X, y) if kind == "numpy" else (torch.as_tensor(X), torch.as_tensor(y)))
    assert d.task == "regression"
    assert d.y.shape == (40, 1) and d.y.dtype == torch.float32  # 1-D float targets become a column
    assert d.n_out == 1
    np.testing.assert_allclose(d.y[:, 0].numpy(), y, rtol=1e-6)

    Y = rng.standard_normal((40, 4))
    d2 = as_data((X, Y))
    assert d2.task == "regression" and d2.y.shape == (40, 4) and d2.n_out == 4


def test_as_data_validation_pair():
    X, y = torch.randn(20, 2), torch.arange(20) % 2
    d = as_data((X, y), val=(np.ones((6, 2)), np.zeros(6, dtype=np.int64)))
    assert d.has_val
    assert d.X_val.shape == (6, 2) and d.X_val.dtype == torch.float32
    assert d.y_val.dtype == torch.long and d.y_val.shape == (6,)


def test_as_data_data_passes_through_and_named_pairs():
    d = as_data("moons")
    assert as_data(d) is d
    small = as_data(("moons", {"n": 50, "noise": 0.0}))
    assert len(small.X) + len(small.X_val) == 50
    assert small.spec == ("moons", {"n": 50, "noise": 0.0, "seed": 0})


class _Squares(Dataset):
    """A map-style Dataset without a `targets` attribute."""

    def __len__(self):
        return 12

    def __getitem__(self, i):
        return torch.tensor([float(i), float(i) ** 2]), i % 4


class _Regress(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.tensor([float(i)]), torch.tensor([2.0 * i, -1.0 * i])


def test_as_data_map_style_dataset():
    X, y = torch.randn(25, 3), torch.arange(25) % 5
    ds = TensorDataset(X, y)
    d = as_data(ds)
    assert d.source is ds and d.X is None
    assert d.task == "classification" and d.n_out == 5
    assert d.input_shape == (3,) and d.n_features == 3
    xb, yb = d.sample(2)
    assert torch.equal(xb, X[:2]) and torch.equal(yb, y[:2])

    d2 = as_data(_Squares())
    assert d2.task == "classification" and d2.n_out == 4 and d2.input_shape == (2,)

    d3 = as_data(_Regress())
    assert d3.task == "regression" and d3.n_out == 2


def test_as_data_dataloader():
    X, y = torch.randn(32, 4), torch.arange(32) % 3
    loader = DataLoader(TensorDataset(X, y), batch_size=8)
    d = as_data(loader, val=TensorDataset(X[:4], y[:4]))
    assert d.source is loader
    assert d.task == "classification" and d.n_out == 3
    assert d.input_shape == (4,)
    assert d.has_val and isinstance(d.val_source, TensorDataset)
    xb, yb = d.sample(2)
    assert torch.equal(xb, X[:2]) and torch.equal(yb, y[:2])


# ---- bad inputs ------------------------------------------------------------------------------
def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as e:
        as_data("mnist")
    msg = str(e.value)
    assert "mnist" in msg
    for name in datasets.names():
        assert name in msg


def test_unsupported_type_lists_the_accepted_forms():
    with pytest.raises(ValueError) as e:
        as_data(42)
    msg = str(e.value)
    assert "int" in msg and "Dataset" in msg and "DataLoader" in msg and "moons" in msg


def test_mismatched_lengths():
    with pytest.raises(ValueError) as e:
        as_data((torch.randn(10, 2), torch.zeros(9, dtype=torch.long)))
    assert "10" in str(e.value) and "9" in str(e.value)


def test_two_dimensional_integer_labels_rejected():
    with pytest.raises(ValueError, match=r"\(N,\)"):
        as_data((torch.randn(5, 2), torch.zeros(5, 2, dtype=torch.long)))


def test_bad_options_name_the_setting_and_range():
    with pytest.raises(ValueError) as e:
        as_data(("moons", {"n": 3}))
    assert "n=3" in str(e.value) and "[10, inf)" in str(e.value)
    with pytest.raises(ValueError) as e:
        as_data(("moons", {"noise": -0.5}))
    assert "noise" in str(e.value) and "[0, inf)" in str(e.value)
    with pytest.raises(ValueError) as e:
        as_data(("circles", {"radius": 2}))
    assert "radius" in str(e.value) and "noise" in str(e.value)  # lists the valid settings


def test_iterable_dataset_rejected():
    class Stream(IterableDataset):
        def __iter__(self):
            yield torch.zeros(2), 0

    with pytest.raises(ValueError, match="map-style"):
        as_data(Stream())


# ---- TensorBatches ---------------------------------------------------------------------------
def _batches(n=12, batch_size=4, seed=0):
    X = torch.arange(n, dtype=torch.float32).reshape(n, 1)
    y = torch.arange(n)
    return TensorBatches(X, y, batch_size, torch.Generator().manual_seed(seed))


def test_every_example_once_per_epoch():
    n, bs = 12, 4
    tb = _batches(n, bs)
    for epoch in range(3):
        seen = []
        for _ in range(n // bs):
            xb, yb = tb.next()
            assert len(xb) == len(yb) == bs
            assert torch.equal(xb[:, 0].long(), yb)  # rows stay paired with their labels
            seen += yb.tolist()
            assert tb.epoch == epoch
        assert sorted(seen) == list(range(n)), f"epoch {epoch}"


def test_epochs_are_reshuffled():
    tb = _batches(40, 40 // 2)
    first = torch.cat([tb.next()[1] for _ in range(2)])
    second = torch.cat([tb.next()[1] for _ in range(2)])
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(40))
    assert not torch.equal(first, second)


def test_partial_batch_no_repeats_within_an_epoch():
    n, bs = 10, 3  # the last partial batch is dropped: every step sees bs examples
    tb = _batches(n, bs)
    seen = []
    for _ in range(n // bs):
        _, yb = tb.next()
        assert len(yb) == bs
        seen += yb.tolist()
    assert len(set(seen)) == len(seen) == bs * (n // bs)
    assert tb.epoch == 0
    tb.next()
    assert tb.epoch == 1


def test_epoch_counter():
    tb = _batches(12, 4)
    assert tb.epoch == -1  # nothing drawn yet
    epochs = []
    for _ in range(9):
        tb.next()
        epochs.append(tb.epoch)
    assert epochs == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_batch_size_changes_live():
    tb = _batches(100, 10)
    assert len(tb.next()[0]) == 10
    tb.batch_size = 7
    assert len(tb.next()[0]) == 7
    tb.batch_size = 25
    assert len(tb.next()[0]) == 25


def test_full_batch_when_batch_size_reaches_n():
    for bs in (12, 13, 1000):
        tb = _batches(12, bs)
        for k in range(3):
            xb, yb = tb.next()
            assert len(xb) == 12
            assert sorted(yb.tolist()) == list(range(12))
            assert tb.epoch == k  # each full batch is an epoch


def test_batches_deterministic_given_generator_seed():
    a, b, c = _batches(20, 5, seed=7), _batches(20, 5, seed=7), _batches(20, 5, seed=8)
    ya = [a.next()[1] for _ in range(8)]
    yb = [b.next()[1] for _ in range(8)]
    yc = [c.next()[1] for _ in range(8)]
    assert all(torch.equal(p, q) for p, q in zip(ya, yb))
    assert not all(torch.equal(p, q) for p, q in zip(ya, yc))


def test_batches_state_round_trip():
    a = _batches(20, 3, seed=2)
    for _ in range(5):
        a.next()
    b = _batches(20, 3, seed=99)
    b.load_state(a.state())
    b.gen.set_state(a.gen.get_state())
    for _ in range(10):
        assert torch.equal(a.next()[1], b.next()[1])
        assert a.epoch == b.epoch


# ---- nothing downloads -----------------------------------------------------------------------
def test_no_network_is_touched(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:]!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(AssertionError):  # the guard itself works
        socket.create_connection(("example.com", 80))
    for name in datasets.names():
        d = as_data(name)
        assert len(d.X) > 0
    for name in SETS_2D:
        assert as_data((name, {"n": 40, "seed": 5})).X.shape[1] == 2


def test_eval_batches_takes_every_form_of_data_the_analyses_accept():
    from trainlab.data import eval_batches

    X, y = torch.randn(10, 3, dtype=torch.float64), torch.arange(10) % 2
    (one,) = eval_batches((X.numpy(), y.numpy()), dtype=torch.float32)
    assert one[0].dtype == torch.float32 and one[1].dtype == y.dtype and torch.allclose(one[0], X.float())
    loader = DataLoader(TensorDataset(X, y), batch_size=4, shuffle=True)
    parts = eval_batches(loader)
    assert [len(b[1]) for b in parts] == [4, 4, 2]
    assert sorted(torch.cat([b[1] for b in parts]).tolist()) == sorted(y.tolist())
    assert len(eval_batches(TensorDataset(X, y))) == 1  # a Dataset is read through a loader
    data = as_data("moons")
    (train,) = eval_batches(data)
    assert train[0] is data.X or torch.equal(train[0], data.X)
    with pytest.raises(ValueError, match="data must be an \\(X, y\\) pair or a DataLoader"):
        eval_batches(X)
    with pytest.raises(ValueError, match="same number of examples"):
        eval_batches((X, y[:5]))
    with pytest.raises(ValueError, match="empty"):
        eval_batches((X[:0], y[:0]))
