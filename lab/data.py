"""Data: the embedded sets by name, the user's own tensors, Datasets and DataLoaders, and batching.

Nothing here downloads: digits ships inside scikit-learn's wheel, the 2-D sets are generated.
scikit-learn is imported when a set is first built, not with trainlab (it is seconds of a cold import).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import param
import torch
from torch.utils.data import DataLoader, Dataset

from .registry import Registry, parse_spec

datasets = Registry("data set")

_N = dict(n=param.Integer(400, bounds=(10, None), softbounds=(50, 2000), doc="number of points"))
_SEED = dict(seed=param.Integer(0, bounds=(0, None), doc="seed of the generator and of the split"))


def _noise(default: float) -> dict:
    return dict(noise=param.Number(default, bounds=(0, None), softbounds=(0, 1), doc="noise level"))


@dataclass
class Data:
    """Training data and optional validation data, with what a model needs to know about them.

    Tensor data (`X`, `y`) is kept whole on the device and batched by indexing; a Dataset or
    DataLoader (`source`) is batched by a DataLoader.
    """

    name: str
    X: torch.Tensor | None = None
    y: torch.Tensor | None = None
    X_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None
    source: Dataset | DataLoader | None = None
    val_source: Dataset | DataLoader | None = None
    task: str = "classification"  # or "regression"
    n_out: int = 1
    image_shape: tuple[int, ...] | None = None
    vocab: int | None = None  # token data: inputs are integer token ids in [0, vocab), (N, sequence length)
    spec: tuple[str, dict] | None = None  # (registry name, options) when rebuilt from a name
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.sample()[0].shape[1:])

    @property
    def is_2d(self) -> bool:
        """True for points in the plane, where a decision boundary can be drawn."""
        return self.X is not None and self.X.ndim == 2 and self.X.shape[1] == 2 and self.X.is_floating_point()

    @property
    def has_val(self) -> bool:
        return self.X_val is not None or self.val_source is not None

    @property
    def fixed_batch_size(self) -> bool:
        """True when the user passed a DataLoader: its batches (and their size) are its own."""
        return isinstance(self.source, DataLoader)

    @property
    def dataset(self) -> Dataset | None:
        """The map-style Dataset behind `source` (the DataLoader's own, if one was passed)."""
        return self.source.dataset if isinstance(self.source, DataLoader) else self.source

    @property
    def n_examples(self) -> int:
        """Training examples."""
        return len(self.X) if self.X is not None else len(self.dataset)

    def sample(self, n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
        """The first few training examples, for shape checks before any step."""
        if self.X is not None:
            return self.X[:n], self.y[:n]
        loader = self.source if isinstance(self.source, DataLoader) else DataLoader(self.source, batch_size=n)
        xb, yb = next(iter(loader))
        return xb[:n], yb[:n]

    def fixed_sample(self, n: int | None, seed: int = 0,
                     device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A fixed random subset of `n` training examples, the same for the same seed: every example
        (in order) when n is None or at least their number. What probes and analyses measure on."""
        total = self.n_examples
        if n is None or n >= total:
            return self._take(None, device)
        return self._take(torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n], device)

    def random_sample(self, n: int, generator: torch.Generator,
                      device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`n` training examples drawn afresh from `generator` (a probe's own, so the run's sampling is untouched)."""
        return self._take(torch.randperm(self.n_examples, generator=generator)[:n], device)

    def _take(self, idx: torch.Tensor | None, device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.X is not None:
            X, y = (self.X, self.y) if idx is None else (self.X[idx.to(self.X.device)], self.y[idx.to(self.X.device)])
        else:
            ds = self.dataset if idx is None else torch.utils.data.Subset(self.dataset, idx.tolist())
            parts = list(DataLoader(ds, batch_size=512))
            X, y = torch.cat([b[0] for b in parts]), torch.cat([b[1] for b in parts])
        return (X, y) if device is None else (X.to(device), y.to(device))

    def to(self, device: torch.device) -> Data:
        """Tensors moved once, so no step copies data between devices."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        self.X, self.y, self.X_val, self.y_val = map(move, (self.X, self.y, self.X_val, self.y_val))
        return self


def _standardize(X_train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mu, sd = X_train.mean(0), X_train.std(0)
    sd[sd == 0] = 1.0  # constant pixels (the digits' borders) stay at zero
    return [(a - mu) / sd for a in (X_train, *others)]


def _from_arrays(name: str, X: np.ndarray, y: np.ndarray, seed: int, val_fraction: float = 0.2, **extra) -> Data:
    """A stratified split, standardized with the training statistics."""
    from sklearn.model_selection import train_test_split

    Xtr, Xva, ytr, yva = train_test_split(X, y, test_size=val_fraction, stratify=y, random_state=seed)
    Xtr, Xva = _standardize(Xtr, Xva)
    f = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
    g = lambda a: torch.as_tensor(a, dtype=torch.long)  # noqa: E731
    return Data(name, f(Xtr), g(ytr), f(Xva), g(yva), task="classification", n_out=int(y.max()) + 1, **extra)


@datasets.register("digits", **_SEED)
def digits(seed: int = 0) -> Data:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), standardized, 80/20 split."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return _from_arrays("digits", X, y, seed, image_shape=(1, 8, 8))


@datasets.register("moons", **_N, **_noise(0.15), **_SEED)
def moons(n: int = 400, noise: float = 0.15, seed: int = 0) -> Data:
    """Two interleaving half circles."""
    from sklearn.datasets import make_moons

    X, y = make_moons(n, noise=noise, random_state=seed)
    return _from_arrays("moons", X, y, seed)


@datasets.register("circles", **_N, **_noise(0.1), **_SEED)
def circles(n: int = 400, noise: float = 0.1, seed: int = 0) -> Data:
    """A small circle inside a large one."""
    from sklearn.datasets import make_circles

    X, y = make_circles(n, noise=noise, factor=0.5, random_state=seed)
    return _from_arrays("circles", X, y, seed)


@datasets.register("spirals", **_N, **_noise(0.1), **_SEED)
def spirals(n: int = 400, noise: float = 0.1, seed: int = 0) -> Data:
    """Two interleaved spiral arms, 1.5 turns each (TensorFlow Playground's hardest set)."""
    rng = np.random.default_rng(seed)
    k = np.arange(n) % 2
    t = np.sqrt(rng.uniform(0.0, 1.0, n)) * 3 * np.pi
    X = np.stack([t * np.cos(t + k * np.pi), t * np.sin(t + k * np.pi)], 1) / (3 * np.pi)
    X += noise * rng.standard_normal(X.shape) / 3
    return _from_arrays("spirals", X, k, seed)


@datasets.register("xor", **_N, **_noise(0.05), **_SEED)
def xor(n: int = 400, noise: float = 0.05, seed: int = 0) -> Data:
    """Points in the four quadrants, labelled by the sign of x*y (kept a margin away from the axes)."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1.0, 1.0, (n, 2))
    X += np.sign(X) * 0.1  # the margin TensorFlow Playground leaves around the axes
    y = (X[:, 0] * X[:, 1] > 0).astype(np.int64)
    return _from_arrays("xor", X + noise * rng.standard_normal(X.shape), y, seed)


@datasets.register("gaussians", **_N, **_noise(0.3), **_SEED)
def gaussians(n: int = 400, noise: float = 0.3, seed: int = 0) -> Data:
    """Two Gaussian blobs at (1, 1) and (-1, -1) whose spread grows with the noise."""
    from sklearn.datasets import make_blobs

    X, y = make_blobs(n, centers=[(1.0, 1.0), (-1.0, -1.0)], cluster_std=0.2 + noise, random_state=seed)
    return _from_arrays("gaussians", X, y, seed)


@datasets.register(
    "opposing", **_N, **_noise(0.3),
    outliers=param.Number(0.05, bounds=(0.005, 0.25), softbounds=(0.01, 0.15), step=0.005,
                          doc="fraction of the points in EACH outlier group"),
    strength=param.Number(4.0, bounds=(0, None), softbounds=(0, 10), step=0.1,
                          doc="size of the outliers' shared feature x2 (the 'sky')"),
    **_SEED,
)
def opposing(n: int = 400, noise: float = 0.3, outliers: float = 0.05, strength: float = 4.0, seed: int = 0) -> Data:
    """Two classes split by x1, plus two outlier groups sharing a large x2 with opposite labels.

    After Rosenberg & Risteski, "Outliers with Opposing Signals Have an Outsized Effect on Neural
    Network Optimization" (2024): the bulk is separable by x1 (class 1 right, class 0 left) with
    x2 near 0; group_a (class 1) and group_b (class 0) carry the same large x2 = strength (a
    sky in both planes and ships) and only a weak x1. The x2 direction is the sharpest one, so at
    the edge of stability the network's use of x2 swings back and forth and the two groups'
    losses rise and fall in antiphase. `data.info["groups"]` holds each group's training indices.
    Not standardized: x2's magnitude is the point.
    """
    rng = np.random.default_rng(seed)
    k = max(1, int(round(outliers * n)))
    bulk = n - 2 * k
    y_bulk = np.arange(bulk) % 2
    X_bulk = np.stack([(2 * y_bulk - 1) * 1.0 + noise * rng.standard_normal(bulk), 0.1 * rng.standard_normal(bulk)], 1)
    weak = 0.3  # the outliers' x1: on their class's side, but close to the boundary
    X_a = np.stack([weak + noise * rng.standard_normal(k), strength + 0.1 * rng.standard_normal(k)], 1)
    X_b = np.stack([-weak + noise * rng.standard_normal(k), strength + 0.1 * rng.standard_normal(k)], 1)
    X = np.concatenate([X_bulk, X_a, X_b])
    y = np.concatenate([y_bulk, np.ones(k, np.int64), np.zeros(k, np.int64)])
    group = np.concatenate([np.zeros(bulk, np.int64), np.ones(k, np.int64), np.full(k, 2, np.int64)])
    from sklearn.model_selection import train_test_split

    Xtr, Xva, ytr, yva, gtr, _ = train_test_split(X, y, group, test_size=0.2, stratify=group * 2 + y, random_state=seed)
    f = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
    groups = {name: torch.as_tensor(np.flatnonzero(gtr == g)) for g, name in enumerate(["bulk", "group_a", "group_b"])}
    return Data("opposing", f(Xtr), torch.as_tensor(ytr), f(Xva), torch.as_tensor(yva), task="classification",
                n_out=2, info={"groups": groups})


def _labels(y: torch.Tensor, what: str) -> int:
    """The class count of integer labels, refusing what cross-entropy would misread: negative labels
    (-100 is its ignore_index: those examples would be skipped without a word) and a single class."""
    lo, hi = int(y.min()), int(y.max())
    if lo < 0:
        raise ValueError(f"{what} has label {lo}: class labels are indices 0, 1, ..., C-1"
                         + (" (-100 is cross-entropy's ignore_index: those examples would not count)" if lo == -100
                            else ""))
    if len(torch.unique(y)) < 2:
        raise ValueError(f"{what} has a single class (every label is {lo}): there is nothing to learn; "
                         f"give examples of at least two classes")
    return hi + 1


def _tensor_pair(X, y, what: str = "data") -> tuple[torch.Tensor, torch.Tensor, str, int]:
    X = torch.as_tensor(np.asarray(X) if not torch.is_tensor(X) else X)
    y = torch.as_tensor(np.asarray(y) if not torch.is_tensor(y) else y)
    if X.ndim == 0 or y.ndim == 0:
        raise ValueError(f"{what} must be an (X, y) pair with one row per example; got shapes "
                         f"{tuple(X.shape)} and {tuple(y.shape)}")
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} examples but y has {y.shape[0]}: give one label per example")
    if len(X) == 0:
        raise ValueError(f"{what} is empty: give at least one example")
    if not (X.dtype.is_floating_point or X.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise ValueError(f"the inputs of {what} must be numbers, got dtype {X.dtype}")
    if y.dtype.is_floating_point:
        y = y.float().reshape(len(y), -1) if y.ndim == 1 else y.float()
        return X.float(), y, "regression", int(y.shape[1])
    if y.dtype == torch.bool or y.ndim != 1:
        raise ValueError(f"integer labels must be one class index per example (shape (N,)), got {tuple(y.shape)}")
    y = y.long()
    return X.float(), y, "classification", _labels(y, what)


def _first_pair(source, what: str):
    """The first (input, label) pair of a Dataset, or the first batch of a DataLoader, checked to be a pair."""
    ds = source.dataset if isinstance(source, DataLoader) else source
    if not hasattr(ds, "__len__") or not hasattr(ds, "__getitem__"):
        raise ValueError(f"{what}: a Dataset needs __len__ and __getitem__ (map-style); iterable datasets are not supported")
    if len(ds) == 0:
        raise ValueError(f"{what} is empty: give at least one example")
    item = next(iter(source)) if isinstance(source, DataLoader) else ds[0]
    if isinstance(item, dict):
        raise ValueError(f"{what} returns dicts (keys {sorted(item)}); it must return (input, label) pairs: "
                         f"wrap it, e.g. a Dataset whose __getitem__ returns (d['image'], d['label'])")
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        n = len(item) if isinstance(item, (tuple, list)) else type(item).__name__
        raise ValueError(f"{what} must give (input, label) pairs; its first {'batch' if isinstance(source, DataLoader) else 'item'} "
                         f"has {n} {'parts' if isinstance(n, int) else ''}".rstrip() + ": return exactly (input, label)")
    return item


def _label_info(source, what: str = "data") -> tuple[str, int]:
    ds = source.dataset if isinstance(source, DataLoader) else source
    first = _first_pair(source, what)[1]
    if isinstance(source, DataLoader):
        first = first[0] if torch.is_tensor(first) and first.ndim else first
    if (torch.is_tensor(first) and first.is_floating_point()) or isinstance(first, float):
        return "regression", int(torch.as_tensor(first).numel())
    targets = getattr(ds, "targets", None)
    if targets is None:
        targets = [int(ds[i][1]) for i in range(len(ds))]
    return "classification", _labels(torch.as_tensor(targets).long().reshape(-1), what)


def _check_val(out: Data) -> None:
    """Validation data the model can be scored on: the training inputs' shape, labels the model's output covers."""
    if out.X_val is not None:
        Xv, yv = out.X_val, out.y_val
    elif out.val_source is not None:
        Xv, yv = _first_pair(out.val_source, "val_data")
        Xv, yv = torch.as_tensor(Xv), torch.as_tensor(yv)
        if not isinstance(out.val_source, DataLoader):
            Xv, yv = Xv.unsqueeze(0), yv.reshape(1, *yv.shape)
    else:
        return
    shape = out.input_shape
    if tuple(Xv.shape[1:]) != shape:
        raise ValueError(f"val_data's inputs have shape {tuple(Xv.shape[1:])} per example; the training inputs "
                         f"have {shape}")
    if out.task == "classification":
        if yv.dtype.is_floating_point:
            raise ValueError("val_data has real-valued targets but the training labels are classes")
        lo, hi = int(yv.min()), int(yv.max())
        if lo < 0 or hi >= out.n_out:
            raise ValueError(f"val_data has label {lo if lo < 0 else hi}; the training data has classes 0..{out.n_out - 1}")
    elif yv.reshape(len(yv), -1).shape[1] != out.n_out:
        raise ValueError(f"val_data has {yv.reshape(len(yv), -1).shape[1]} targets per example; "
                         f"the training data has {out.n_out}")


def as_data(data: Any, val: Any = None) -> Data:
    """Whatever a user passes as data, as a Data, checked before any step.

    `data` may be a registered name ("digits", "moons", ...), a `(name, {options})` pair, a Data,
    an `(X, y)` pair of tensors or arrays, a map-style torch Dataset, or a DataLoader. `val` is
    optional validation data of the same kinds (registered sets bring their own split). Empty data,
    items that are not (input, label) pairs, negative labels, a single class and validation data that
    does not match the training data are refused with a ValueError saying which.
    """
    spec = parse_spec(data) if isinstance(data, (str, tuple)) else None
    if isinstance(data, Data):
        out = data
    elif spec is not None:
        name, options = spec
        out = datasets.build(name, **options)
        out.spec = (name, {**datasets[name].defaults(), **options})
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        X, y, task, n_out = _tensor_pair(*data)
        out = Data("custom", X, y, task=task, n_out=n_out)
    elif isinstance(data, (Dataset, DataLoader)):
        task, n_out = _label_info(data)
        ds = data.dataset if isinstance(data, DataLoader) else data
        out = Data(type(ds).__name__, source=data, task=task, n_out=n_out)
    else:
        raise ValueError(
            f"data must be a data set name ({', '.join(datasets.names())}), a (name, options) pair, "
            f"an (X, y) pair, a torch Dataset or a DataLoader; got {type(data).__name__}"
        )
    if val is not None:
        if isinstance(val, (Dataset, DataLoader)):
            _first_pair(val, "val_data")
            out.val_source = val
        elif isinstance(val, (tuple, list)) and len(val) == 2:
            out.X_val, out.y_val, *_ = _tensor_pair(*val, what="val_data") if out.task == "regression" else \
                _val_pair(*val)
        else:
            raise ValueError(f"val_data must be an (X, y) pair, a Dataset or a DataLoader; got {type(val).__name__}")
    _check_val(out)
    return out


def _val_pair(X, y) -> tuple[torch.Tensor, torch.Tensor]:
    """Validation tensors: checked like training data, except that one class (a small split) is fine."""
    X = torch.as_tensor(np.asarray(X) if not torch.is_tensor(X) else X)
    y = torch.as_tensor(np.asarray(y) if not torch.is_tensor(y) else y)
    if X.ndim == 0 or len(X) == 0:
        raise ValueError("val_data is empty: give at least one example, or no val_data")
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"val_data's X has {X.shape[0]} examples but its y has {y.shape[0]}")
    return X.float(), (y.long() if not y.dtype.is_floating_point else y.float())


class TensorBatches:
    """Random batches from tensors held on the device, reshuffled each epoch.

    Faster than a DataLoader for in-memory data (no per-example collate), and the batch size can
    change between any two steps. A batch size at or above the set size gives full-batch steps.
    """

    def __init__(self, X: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator):
        self.X, self.y, self.batch_size, self.gen = X, y, batch_size, generator
        self.n = len(X)
        self.epoch, self._pos, self._perm = -1, self.n, None  # the first call opens epoch 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        bs = min(self.batch_size, self.n)
        if self._pos + bs > self.n:  # the last partial batch is dropped: every step sees bs examples
            self.epoch += 1
            self._pos = 0
            self._perm = None if bs == self.n else torch.randperm(self.n, generator=self.gen).to(self.X.device)
        self._pos += bs
        if self._perm is None:
            return self.X, self.y
        idx = self._perm[self._pos - bs : self._pos]
        return self.X[idx], self.y[idx]


    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self._pos, "perm": self._perm}

    def load_state(self, state: dict) -> None:
        self.epoch, self._pos = state["epoch"], state["pos"]
        self._perm = None if state["perm"] is None else state["perm"].to(self.X.device)


class _LiveBatchSampler(torch.utils.data.Sampler):
    """Shuffled index batches whose size is read at every batch, so it can change mid-epoch."""

    def __init__(self, n: int, owner: LoaderBatches):
        self.n, self.owner = n, owner

    def __iter__(self):
        perm = torch.randperm(self.n, generator=self.owner.gen).tolist()
        pos = 0
        while pos < self.n:
            bs = self.owner.batch_size
            yield perm[pos : pos + bs]
            pos += bs

    def __len__(self) -> int:
        return -(-self.n // self.owner.batch_size)


class LoaderBatches:
    """Batches from a Dataset (the batch size is live) or from the user's own DataLoader (it is fixed)."""

    def __init__(self, source, batch_size: int, generator: torch.Generator, device: torch.device):
        self.gen, self.device, self.epoch = generator, device, 0
        if isinstance(source, DataLoader):
            self.loader, self.batch_size = source, source.batch_size or batch_size
        else:
            self.batch_size = batch_size
            self.loader = DataLoader(source, batch_sampler=_LiveBatchSampler(len(source), self))
        self._it = None

    def next(self):
        if self._it is None:
            self._it = iter(self.loader)
        try:
            xb, yb = next(self._it)
        except StopIteration:
            self.epoch += 1
            self._it = iter(self.loader)
            xb, yb = next(self._it)
        return xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True)


def batches(data: Data, batch_size: int, generator: torch.Generator, device: torch.device):
    if data.X is not None:
        return TensorBatches(data.X, data.y, batch_size, generator)
    return LoaderBatches(data.source, batch_size, generator, device)


def val_batches(data: Data, device: torch.device, batch_size: int = 4096):
    """The validation set in large batches, for evaluation."""
    if data.X_val is not None:
        for i in range(0, len(data.X_val), batch_size):
            yield data.X_val[i : i + batch_size], data.y_val[i : i + batch_size]
    elif data.val_source is not None:
        src = data.val_source
        loader = src if isinstance(src, DataLoader) else DataLoader(src, batch_size=min(batch_size, 1024))
        for xb, yb in loader:
            yield xb.to(device), yb.to(device)


def eval_batches(data: Any, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 what: str = "data") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """An evaluation set as a fixed list of (X, y) batches on `device`, floating X cast to `dtype`.

    What the analyses accept as `data`: an (X, y) pair (one batch; tensors or arrays), a DataLoader
    or any iterable of batches (read once, so a shuffling loader gives the same set every time),
    a map-style Dataset, or a trainlab Data (its training set).
    """
    if isinstance(data, Data):
        data = (data.X, data.y) if data.X is not None else data.source
    if isinstance(data, Dataset):
        data = DataLoader(data, batch_size=512)
    if isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(data[0], (tuple, list)):
        pairs = [(data[0], data[1])]
    elif isinstance(data, Iterable) and not isinstance(data, (str, tuple, list, torch.Tensor, np.ndarray)):
        pairs = [(b[0], b[1]) for b in data]
    else:
        raise ValueError(f"{what} must be an (X, y) pair or a DataLoader; got {type(data).__name__}")
    out = []
    for X, y in pairs:
        X, y = torch.as_tensor(X), torch.as_tensor(y)
        if len(X) != len(y):
            raise ValueError(f"X and y of {what} must have the same number of examples; got {len(X)} and {len(y)}")
        if len(X):
            out.append((X.to(device=device, dtype=dtype if X.is_floating_point() else None), y.to(device=device)))
    if not out:
        raise ValueError(f"{what} is empty: an analysis needs at least one example")
    return out


from . import sequences  # noqa: E402,F401  (the token tasks register themselves in `datasets`)
