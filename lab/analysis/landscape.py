"""Loss landscapes: the loss on a line or a plane through weight space (Li et al. 2018).

    plane(model, loss_fn, data, steps=51, span=1.0, directions="filter")   # loss[i, j] at (x[i], y[j])
    line(model, loss_fn, data, start=None, end=None, steps=51)             # interpolation, mode connectivity
    pca_trajectory(model, steps, points)                                   # recorded weights on their PCA plane

Directions. "filter" (the default) draws a Gaussian direction per parameter and rescales each
filter (a row of a Linear weight, an output channel of a Conv weight: index 0) to the norm of the
same filter of the weights, so the plot compares minima of networks whose weights differ in scale.
Parameters with at most one dimension (biases, the scale and shift of BatchNorm/LayerNorm) have no
filters; `bias=` says what they get: "zero" (the default, what Li et al.'s code does with
`--xignore biasbn`: they stay at their trained values), "weight" (the direction equals the
parameter itself, their code's other branch) or "filter" (the vector treated as one filter:
rescaled to the parameter's norm). "layer" rescales each parameter tensor as a whole, "random"
leaves the Gaussian draw as is, a Trajectory (`pca_trajectory`) takes the top two principal directions
of a run's recorded weights, and a pair of flat tensors or {parameter name: tensor} dicts gives your own.
Buffers (BatchNorm's running statistics) are never moved.

Evaluation. The trainable parameters become views into one flat buffer for the duration of the
call, so a grid point is one `addmv` into that buffer and then the forward passes: no model or
state-dict copies. With `vectorize=True` several grid points go through one forward pass
(`torch.func.functional_call` under `vmap`), chunked to `memory` bytes; that pays where a point's
own work is small (tiny models, a GPU), which is what `vectorize=None` (the default) picks. The
model's weights, buffers and train/eval flags are restored exactly when the call ends, cancelled or not.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..data import eval_batches
from ..functional import eval_mode, train_mode
from ..jobs import Progress, as_progress

KINDS = ("filter", "layer", "random", "pca")
BIAS = ("zero", "weight", "filter")
MODES = ("eval", "train")
SMALL_POINT = 2**18  # bytes of weights + activations per grid point under which vmap batching pays on a CPU


# ---- results ------------------------------------------------------------------------------------
@dataclass
class Landscape:
    """The loss on a plane: `loss[i, j]` at `x[i]` along the first direction, `y[j]` along the second.

    NaN marks points not computed (a cancelled call, `complete` False). `stderr` is the standard
    error of each point when evaluated on a random subset (`samples=N`), else None.
    """

    x: np.ndarray
    y: np.ndarray
    loss: np.ndarray
    directions: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]
    stderr: np.ndarray | None = None
    kind: str = "filter"
    mode: str = "eval"
    samples: int | None = None
    complete: bool = True
    trajectory: Trajectory | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain arrays and strings, for a History snapshot (no tensors)."""
        out = {"x": self.x, "y": self.y, "loss": self.loss, "stderr": self.stderr, "kind": self.kind,
               "mode": self.mode, "samples": self.samples, "complete": self.complete}
        if self.trajectory is not None:
            out.update(path_x=self.trajectory.x, path_y=self.trajectory.y, path_step=self.trajectory.steps,
                       explained=self.trajectory.explained_variance)
        return out


@dataclass
class Line:
    """The loss along start + alpha * (end - start) at each `alpha`; NaN where not computed."""

    alpha: np.ndarray
    loss: np.ndarray
    stderr: np.ndarray | None = None
    mode: str = "eval"
    samples: int | None = None
    complete: bool = True


@dataclass
class Trajectory:
    """Recorded weights projected on the plane of their top two principal directions.

    As in Li et al. 2018, the matrix is [theta_i - theta_last] (not mean-centred), so the last
    recorded weights sit at (0, 0) and `explained_variance` is each direction's share of the
    squared singular values.
    """

    x: np.ndarray
    y: np.ndarray
    steps: np.ndarray
    explained_variance: np.ndarray
    directions: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]
    origin: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)


# ---- parameters as one flat vector --------------------------------------------------------------
def _named(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _flatten(named: list[tuple[str, torch.Tensor]], values: dict[str, torch.Tensor], what: str) -> torch.Tensor:
    """{name: tensor} in the model's parameter order as one vector; missing names are an error."""
    missing = [n for n, _ in named if n not in values]
    if missing:
        raise ValueError(f"{what} lacks parameters {missing[:3]}{'...' if len(missing) > 3 else ''}; "
                         f"give every trainable parameter of the model (names as in model.named_parameters())")
    out = []
    for n, p in named:
        v = torch.as_tensor(values[n])
        if v.shape != p.shape:
            raise ValueError(f"{what}[{n!r}] has shape {tuple(v.shape)}, the parameter {tuple(p.shape)}")
        out.append(v.detach().reshape(-1).to(p.device, p.dtype))
    return torch.cat(out)


def _unflatten(named: list[tuple[str, torch.Tensor]], flat: torch.Tensor) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for n, p in named:
        out[n] = flat[i : i + p.numel()].view_as(p)
        i += p.numel()
    return out


def _as_flat(model_named, value, what: str) -> torch.Tensor:
    """Weights given as a flat tensor, a {name: tensor} dict or an nn.Module."""
    n_total = sum(p.numel() for _, p in model_named)
    if isinstance(value, nn.Module):
        value = dict(value.named_parameters())
    if isinstance(value, dict):
        return _flatten(model_named, value, what)
    if torch.is_tensor(value) or isinstance(value, np.ndarray):
        v = torch.as_tensor(value).detach().reshape(-1)
        if v.numel() != n_total:
            raise ValueError(f"{what} has {v.numel()} values; the model has {n_total} trainable parameters")
        p0 = model_named[0][1]
        return v.to(p0.device, p0.dtype)
    raise ValueError(f"{what} must be a flat tensor, a {{parameter name: tensor}} dict or an nn.Module; "
                     f"got {type(value).__name__}")


ALIGN = 16  # elements between parameter starts in the buffer: 64 bytes in float32, as BLAS kernels like


class _Flat:
    """The model's trainable parameters as views into one buffer, while inside `with`.

    Writing a grid point is then one in-place `addmv` into the buffer. Each parameter starts at a
    multiple of ALIGN elements (zeros in the gaps), so its view is as aligned as its own storage.
    On exit every parameter gets back its own storage, so the weights are bitwise what they were.
    `base` (the centre) is kept unpadded, in the order of `named`.
    """

    def __init__(self, model: nn.Module):
        self.named = _named(model)
        if not self.named:
            raise ValueError("the model has no trainable parameters")
        p0 = self.named[0][1]
        if any(p.dtype != p0.dtype or p.device != p0.device for _, p in self.named):
            raise ValueError("parameters of mixed dtype or device: convert the model to one dtype and device first")
        self.dtype, self.device = p0.dtype, p0.device
        self.base = torch.cat([p.detach().reshape(-1) for _, p in self.named])
        self.n = self.base.numel()
        self.offsets, o = [], 0
        for _, p in self.named:
            self.offsets.append(o)
            o += -(-p.numel() // ALIGN) * ALIGN
        self.n_pad = o
        self.index = torch.cat([torch.arange(off, off + p.numel()) for off, (_, p) in zip(self.offsets, self.named)])
        self.index = self.index.to(self.device)
        self.buf = torch.zeros(self.n_pad, dtype=self.dtype, device=self.device)

    def pad(self, v: torch.Tensor) -> torch.Tensor:
        """(n, ...) in parameter order -> (n_pad, ...) in the buffer's layout."""
        out = v.new_zeros((self.n_pad, *v.shape[1:]))
        out[self.index] = v
        return out

    def views(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """{name: view} of a buffer-layout vector."""
        return {n: theta[off : off + p.numel()].view(p.shape) for off, (n, p) in zip(self.offsets, self.named)}

    def __enter__(self) -> _Flat:
        self._saved = [p.data for _, p in self.named]
        for (_, p), view in zip(self.named, self.views(self.buf).values()):
            p.data = view
        return self

    def __exit__(self, *exc) -> None:
        for (_, p), saved in zip(self.named, self._saved):
            p.data = saved


def _mode(model: nn.Module, mode: str):
    """Every module in eval or train mode for the call, leaving no trace: train mode makes BatchNorm use
    batch statistics and move its running ones, which are put back."""
    return train_mode(model) if mode == "train" else eval_mode(model)


# ---- data ---------------------------------------------------------------------------------------
def _batches(data, device, dtype, samples: int | None, seed: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int]:
    """The evaluation set as a fixed list of batches, and the number of examples it was drawn from.

    `data` is an (X, y) pair (one batch), a DataLoader (read once, so a shuffling loader still gives
    the same set at every point; pass one to bound the memory of a large data set), or a trainlab Data.
    With `samples`, a fixed random subset of that many examples (one batch).
    """
    batches = eval_batches(data, device, dtype)
    if samples is not None:
        X = torch.cat([b[0] for b in batches])
        y = torch.cat([b[1] for b in batches])
        if not isinstance(samples, int) or not 1 <= samples <= len(X):
            raise ValueError(f"samples must be a whole number between 1 and the {len(X)} examples; got {samples!r}")
        idx = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))[:samples].to(X.device)
        return [(X[idx], y[idx])], len(X)
    return batches, sum(len(b[1]) for b in batches)


def _per_example(loss_fn: Callable) -> Callable:
    """Per-example losses (N,) from (outputs, targets), by calling loss_fn on one example at a time."""
    one = lambda o, t: loss_fn(o.unsqueeze(0), t.unsqueeze(0))  # noqa: E731

    def f(out, y):
        try:
            return torch.vmap(one)(out, y)
        except Exception:  # a loss vmap cannot trace (Python control flow on values): one call per example
            return torch.stack([one(o, t) for o, t in zip(out, y)])

    return f


# ---- evaluation ---------------------------------------------------------------------------------
def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be 'eval' (BatchNorm uses running statistics) or 'train' (batch statistics); got {mode!r}")


def _evaluate(model, loss_fn, batches, total, flat: _Flat, D: torch.Tensor, coords: torch.Tensor, mode: str,
              samples: int | None, vectorize: bool | None, memory: int, p: Progress) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """Loss (and standard error with samples) at base + D @ c for each row c of coords; NaN once cancelled."""
    P = len(coords)
    loss = torch.full((P,), float("nan"), dtype=torch.float64)
    se = torch.full((P,), float("nan"), dtype=torch.float64) if samples else None
    n_seen = sum(len(b[1]) for b in batches)
    per_ex = _per_example(loss_fn) if samples else None
    fpc = math.sqrt((total - n_seen) / (total - 1)) if samples and total > 1 else 0.0  # sampled without replacement
    if vectorize and mode == "train" and any(True for _ in model.buffers()):
        raise ValueError("vectorize=True needs mode='eval' on a model with buffers (BatchNorm): "
                         "train-mode statistics would be updated once per grid point")
    coords = coords.to(flat.device, flat.dtype)
    base, Dt = flat.pad(flat.base), flat.pad(D).T.contiguous()  # (k, n_pad): addmv on Dt.T is 2.6x faster than on (n, k)
    done = 0
    with flat, _mode(model, mode), torch.no_grad():
        if vectorize is None:  # measured: vmap is 2x faster for a width-8 MLP on 320 points, 1.7x slower on digits
            can = mode == "eval" or not any(True for _ in model.buffers())
            vectorize = can and (flat.device.type != "cpu" or _bytes_per_point(model, batches, flat) < SMALL_POINT)
        if vectorize:
            done = _vectorized(model, loss_fn, batches, flat, base, Dt, coords, per_ex, memory, loss, se, p)
        else:
            for i in range(P):
                if p.cancelled:
                    break
                torch.addmv(base, Dt.T, coords[i], out=flat.buf)
                loss[i], s = _point(model, loss_fn, batches, per_ex)
                if se is not None:
                    se[i] = s
                done += 1
                p.update()
    if se is not None:
        se *= fpc
    return loss.numpy(), None if se is None else se.numpy(), done == P


def _point(model, loss_fn, batches, per_ex):
    """The loss at the weights now in the model: the example-weighted mean over the batches."""
    if len(batches) == 1:
        xb, yb = batches[0]
        out = model(xb)
        value = loss_fn(out, yb)
        if per_ex is None:
            return value, None
        losses = per_ex(out, yb)
        return value, losses.double().std() / math.sqrt(len(losses)) if len(losses) > 1 else 0.0
    total, n = 0.0, 0
    for xb, yb in batches:
        total = total + loss_fn(model(xb), yb).double() * len(yb)
        n += len(yb)
    return total / n, None


def _vectorized(model, loss_fn, batches, flat, base, Dt, coords, per_ex, memory, loss, se, p) -> int:
    """Several grid points per forward pass: functional_call under vmap, chunked to `memory` bytes."""
    from torch.func import functional_call

    def forward(theta, xb):
        return functional_call(model, flat.views(theta), (xb,))

    chunk = max(1, int(memory // _bytes_per_point(model, batches, flat)))
    done = 0
    for lo in range(0, len(coords), chunk):
        if p.cancelled:
            break
        c = coords[lo : lo + chunk]
        thetas = torch.addmm(base.unsqueeze(0), c, Dt)  # (B, n_pad): one row of weights per point
        total, n = 0.0, 0
        for xb, yb in batches:
            outs = torch.vmap(forward, in_dims=(0, None))(thetas, xb)  # (B, N, ...)
            values = torch.stack([loss_fn(o, yb) for o in outs]).double()
            total = total + values * len(yb)
            n += len(yb)
            if per_ex is not None:
                losses = torch.stack([per_ex(o, yb) for o in outs]).double()  # (B, N)
                se[lo : lo + len(c)] = losses.std(1) / math.sqrt(losses.shape[1]) if losses.shape[1] > 1 else 0.0
        loss[lo : lo + len(c)] = total / n
        done += len(c)
        p.update(len(c))
    return done


def _bytes_per_point(model, batches, flat) -> int:
    """One point's weights plus the activations of the largest batch, measured by forward hooks."""
    sizes = []

    def hook(module, args, out):
        if torch.is_tensor(out):
            sizes.append(out.numel() * out.element_size())

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        xb = max((b[0] for b in batches), key=len)
        model(xb)
    finally:
        for h in handles:
            h.remove()
    return flat.n_pad * flat.base.element_size() + 2 * sum(sizes) + 1


# ---- directions ---------------------------------------------------------------------------------
def _normalized(d: torch.Tensor, w: torch.Tensor, kind: str, bias: str) -> torch.Tensor:
    if d.ndim <= 1:
        if bias == "zero":
            return torch.zeros_like(w)
        if bias == "weight":
            return w.detach().clone()
        return d * (w.norm() / (d.norm() + 1e-10))  # "filter": the whole vector as one filter
    if kind == "filter":  # one filter per output unit / channel (index 0), as Li et al.'s code
        scale = w.flatten(1).norm(dim=1) / (d.flatten(1).norm(dim=1) + 1e-10)
        return d * scale.view(-1, *([1] * (d.ndim - 1)))
    if kind == "layer":
        return d * (w.norm() / (d.norm() + 1e-10))
    return d


def random_directions(model: nn.Module, kind: str = "filter", bias: str = "zero", seed: int = 0
                      ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Two Gaussian directions, normalized per `kind` ("filter", "layer" or "random"); see the module doc."""
    if kind not in ("filter", "layer", "random"):
        raise ValueError(f"kind must be 'filter', 'layer' or 'random'; got {kind!r}")
    if bias not in BIAS:
        raise ValueError(f"bias must be one of {', '.join(map(repr, BIAS))} (what 1-D parameters get); got {bias!r}")
    gen = torch.Generator().manual_seed(seed)
    pair = []
    for _ in range(2):
        dirs = {}
        for n, w in _named(model):
            d = torch.randn(w.shape, generator=gen, dtype=torch.float32).to(w.device, w.dtype)
            dirs[n] = _normalized(d, w.detach(), kind, bias)
        pair.append(dirs)
    return pair[0], pair[1]


def _resolve(model, directions, bias, seed) -> tuple[str, tuple[dict, dict], Trajectory | None]:
    if isinstance(directions, str):
        if directions == "pca":
            raise ValueError("directions='pca' needs the recorded trajectory: pass directions=probe.trajectory(model), "
                             "from a trainlab.probes.TrajectoryProbe on the run")
        if directions not in KINDS:
            raise ValueError(f"directions must be one of {', '.join(map(repr, KINDS))} or a pair of tensors/dicts; "
                             f"got {directions!r}")
        return directions, random_directions(model, directions, bias, seed), None
    if isinstance(directions, Trajectory):
        return "pca", directions.directions, directions
    if isinstance(directions, (tuple, list)) and len(directions) == 2:
        named = _named(model)
        pair = tuple(_unflatten(named, _as_flat(named, d, f"directions[{i}]").clone()) for i, d in enumerate(directions))
        return "given", pair, None
    raise ValueError("directions must be 'filter', 'layer', 'random', a Trajectory, or a pair of flat "
                     f"tensors or {{parameter name: tensor}} dicts; got {type(directions).__name__}")


# ---- public functions ---------------------------------------------------------------------------
def _check(model, loss_fn, data) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module (for a run: run.model, run.loss_fn, run.data); "
                         f"got {type(model).__name__}")
    if loss_fn is None or not callable(loss_fn):
        raise ValueError("loss_fn must be a callable (outputs, targets) -> scalar loss")
    if data is None:
        raise ValueError("data must be an (X, y) pair, a DataLoader or a trainlab Data")


def _check_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 2:
        raise ValueError(f"steps must be a whole number >= 2 (points along each axis); got {steps!r}")
    return int(steps)


def plane(model: nn.Module, loss_fn: Callable | None = None, data: Any = None, steps: int = 51,
          span: float | None = None, directions: Any = "filter", seed: int = 0, bias: str = "zero",
          mode: str = "eval", samples: int | None = None, vectorize: bool | None = None,
          memory: int = 256 * 2**20, progress: bool | Progress = True) -> Landscape:
    """The loss on theta + a*d1 + b*d2 for a, b in linspace(-span, span, steps).

    `model` any nn.Module, `data` an (X, y) pair, a DataLoader or a trainlab Data;
    `directions` "filter" (default), "layer", "random", a Trajectory (the PCA plane of recorded weights,
    `TrajectoryProbe.trajectory(model)`; then `span` defaults to 1.25x its extent), or a pair of directions;
    `bias` what 1-D parameters get ("zero", "weight", "filter"; see the module doc);
    `mode` "eval" (default: BatchNorm uses running statistics) or "train";
    `samples=N` evaluates on a fixed random subset of N examples and reports `stderr`;
    `vectorize` batches grid points under vmap, chunked to `memory` bytes (None: on a GPU, or when a
    point's weights and activations are under SMALL_POINT bytes; results agree to float rounding).
    Cancelling `progress` keeps the points computed so far (NaN elsewhere, complete=False).
    """
    _check(model, loss_fn, data)
    steps = _check_steps(steps)
    _check_mode(mode)
    kind, pair, traj = _resolve(model, directions, bias, seed)
    if span is None:
        span = 1.0 if traj is None else 1.25 * max(float(np.abs(np.r_[traj.x, traj.y]).max()), 1e-8)
    if isinstance(span, bool) or not isinstance(span, (int, float)) or not math.isfinite(span) or span <= 0:
        raise ValueError(f"span must be a finite number > 0 (the grid covers -span..span); got {span!r}")
    flat = _Flat(model)
    if traj is not None:  # centred on the last recorded weights, where the path's (0, 0) is
        flat.base = _flatten(flat.named, traj.origin, "trajectory origin")
    D = torch.stack([_flatten(flat.named, d, "direction") for d in pair], 1)  # (n, 2)
    batches, total = _batches(data, flat.device, flat.dtype, samples, seed)
    x = np.linspace(-span, span, steps)
    coords = torch.tensor(np.stack(np.meshgrid(x, x, indexing="ij"), -1).reshape(-1, 2))  # row i*steps + j: (x[i], y[j])
    p = as_progress(progress, steps * steps, f"landscape {steps}x{steps}")
    try:
        loss, se, complete = _evaluate(model, loss_fn, batches, total, flat, D, coords, mode, samples, vectorize, memory, p)
    finally:
        p.close()
    shape = (steps, steps)
    return Landscape(x, x.copy(), loss.reshape(shape), pair, None if se is None else se.reshape(shape), kind, mode,
                     samples, complete, traj)


def line(model: nn.Module, loss_fn: Callable | None = None, data: Any = None, start: Any = None,
         end: Any = None, steps: int = 51, span: tuple[float, float] = (0.0, 1.0), mode: str = "eval",
         samples: int | None = None, seed: int = 0, vectorize: bool | None = None, memory: int = 256 * 2**20,
         progress: bool | Progress = True) -> Line:
    """The loss along start + alpha * (end - start), alpha in linspace(*span, steps).

    `start` and `end` are weights: a {name: tensor} state dict, an nn.Module or a flat tensor; None is
    the model's current weights. Between a run's initial and current weights it
    shows the path training took; between two runs, whether their minima are linearly connected.
    Only trainable parameters move; buffers (BatchNorm statistics) stay the model's.
    """
    _check(model, loss_fn, data)
    steps = _check_steps(steps)
    _check_mode(mode)
    if start is None and end is None:
        raise ValueError("line needs start or end (weights to interpolate to); None stands for the model's own")
    if not (isinstance(span, (tuple, list)) and len(span) == 2 and all(isinstance(v, (int, float)) and math.isfinite(v) for v in span)
            and span[0] < span[1]):
        raise ValueError(f"span must be a pair of finite numbers lo < hi (alpha's range); got {span!r}")
    flat = _Flat(model)
    a = flat.base if start is None else _as_flat(flat.named, start, "start")
    b = flat.base if end is None else _as_flat(flat.named, end, "end")
    if start is not None:
        flat.base = a.clone()
    D = (b - a).unsqueeze(1)  # (n, 1)
    batches, total = _batches(data, flat.device, flat.dtype, samples, seed)
    alpha = np.linspace(span[0], span[1], steps)
    p = as_progress(progress, steps, "interpolation")
    try:
        loss, se, complete = _evaluate(model, loss_fn, batches, total, flat, D, torch.tensor(alpha).unsqueeze(1), mode,
                                       samples, vectorize, memory, p)
    finally:
        p.close()
    return Line(alpha, loss, se, mode, samples, complete)


# ---- drawing a plane in 3-D ------------------------------------------------------------------------
def wireframe(x: np.ndarray, y: np.ndarray, z: np.ndarray, azimuth: float, elevation: float) -> tuple[list, list]:
    """Wireframe lines of a surface z[i, j] over (x[i], y[j]), seen from (azimuth, elevation) degrees.

    Each axis is scaled to [-1, 1] first, so the picture's shape does not depend on the units. Returns
    the screen coordinates of the grid's rows and columns (lists of arrays, for a multi-line plot).
    """
    unit = lambda a: (a - np.nanmin(a)) / max(np.nanmax(a) - np.nanmin(a), 1e-12) * 2 - 1  # noqa: E731
    X, Y = np.meshgrid(unit(x), unit(y), indexing="ij")
    Z = unit(z)
    a, e = np.radians(azimuth), np.radians(elevation)
    u = X * np.cos(a) - Y * np.sin(a)
    depth = X * np.sin(a) + Y * np.cos(a)
    v = Z * np.cos(e) + depth * np.sin(e)
    return [*u, *u.T], [*v, *v.T]


# ---- trajectory ---------------------------------------------------------------------------------
def pca_trajectory(model: nn.Module, steps, points: torch.Tensor) -> Trajectory:
    """Recorded weights (T, n) at `steps`, projected on their top-two PCA plane (Li et al. 2018, section 7).

    `points` are flat trainable weights in `model.named_parameters()` order, such as a
    `trainlab.probes.TrajectoryProbe` records; at least 3 are needed. Each direction is a unit vector
    over all trainable parameters (not filter-normalized, as in the paper).
    """
    steps = np.asarray(steps)
    if len(steps) < 3 or len(points) != len(steps):
        raise ValueError(f"the trajectory has {len(points)} recorded points; train until it has at least 3")
    W = points
    M = (W[:-1] - W[-1]).double()  # (T-1, n): each point relative to the last
    _, s, Vt = torch.linalg.svd(M, full_matrices=False)
    V = Vt[:2]  # (2, n)
    coords = (W - W[-1]).double() @ V.T  # (T, 2)
    named = _named(model)
    device, dtype = named[0][1].device, named[0][1].dtype
    pair = tuple(_unflatten(named, v.to(device, dtype).clone()) for v in V)
    var = (s**2 / (s**2).sum()).numpy()[:2]
    origin = _unflatten(named, W[-1].to(device, dtype).clone())
    return Trajectory(coords[:, 0].numpy(), coords[:, 1].numpy(), steps, var, pair, origin)


__all__ = ["Landscape", "Line", "Trajectory", "line", "pca_trajectory", "plane", "random_directions", "wireframe"]
