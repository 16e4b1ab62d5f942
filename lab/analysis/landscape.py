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
state-dict copies, under `torch.inference_mode()`. Three ways below the plain forward per point:
- First layer (`first_layer=None`, the default, where it is proven sound and pays): the layer that
  first consumes the data is linear in its weights, so with w = w0 + a*d1 + b*d2 its output is
  f(X; W0, b0) + a*f(X; D1) + b*f(X; D2) (a Linear, or a Conv1d/2d/3d with its bias). The three
  products are computed once per call and each point's first layer is one `addmv` (its own weights
  are not even written); the rest of the network runs as usual, on ROWS examples at a time when a
  batch's activations are too large for the cache (eval mode). A convolution's products are kept
  channels-last, which torch's CPU convolutions and pooling run several times faster. Checked on
  every call: the layer is an nn.Linear/nn.Conv*d without hooks, called once per forward, on an
  input that depends on no trainable parameter (autograd says), with nothing stochastic before it
  in train mode, within `memory`; then one point is evaluated both ways, and each speed-up
  (chunks, channels-last) is dropped if it changes the value there. Anything else falls back to
  the plain forward.
- Batching grid points: with `vectorize=True` several grid points go through one forward pass
  (`torch.func.functional_call` under `vmap`), chunked to `memory` bytes; that pays where a point's
  own work is small (tiny models, a GPU), which is what `vectorize=None` (the default) picks.
- Memory (opt-in, `keep_freed_memory()`: it changes the whole process's allocator, which a library
  call should not do on its own): on glibc it raises malloc's mmap and trim thresholds to glibc's own
  adaptive maxima (32 and 64 MB), so the forward's temporaries are reused, not handed back to the
  kernel and faulted in again at every point (4,000-7,000 page faults per point, about 40 % of the
  time, for the digits CNN).
The result's `path` says which evaluation ran ("first-layer", "first-layer+vectorized",
"vectorized", "pointwise") and `fallback` why the first layer was not used. The model's weights,
buffers and train/eval flags are restored exactly when the call ends, cancelled or not.
"""
from __future__ import annotations

import collections
import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..data import eval_batches
from ..memory import keep_freed_memory  # public here too (`__all__`): the landscape's opt-in
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
    error of each point when evaluated on a random subset (`samples=N`), else None. `path` is the
    evaluation that ran ("first-layer", "first-layer+vectorized", "vectorized" or "pointwise") and
    `fallback` why the first-layer path was not taken (None when it was).
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
    path: str = "pointwise"
    fallback: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain arrays and strings, for a History snapshot (no tensors)."""
        out = {"x": self.x, "y": self.y, "loss": self.loss, "stderr": self.stderr, "kind": self.kind,
               "mode": self.mode, "samples": self.samples, "complete": self.complete, "path": self.path,
               "fallback": self.fallback}
        if self.trajectory is not None:
            out.update(path_x=self.trajectory.x, path_y=self.trajectory.y, path_step=self.trajectory.steps,
                       explained=self.trajectory.explained_variance)
        return out

    def frame(self) -> pd.DataFrame:
        """A row per grid point: x, y (along the first and second direction), loss, stderr (NaN on all the data)."""
        return grid_frame(self.x, self.y, self.loss, self.stderr)


def grid_frame(x, y, loss, stderr=None) -> pd.DataFrame:
    """`loss[i, j]` at (`x[i]`, `y[j]`) as rows x, y, loss, stderr, x varying slowest (a Landscape's, or its snapshot's)."""
    x, y, loss = np.asarray(x, float), np.asarray(y, float), np.asarray(loss, float)
    gx, gy = np.meshgrid(x, y, indexing="ij")
    err = np.full(loss.shape, np.nan) if stderr is None else np.asarray(stderr, float)
    return pd.DataFrame({"x": gx.ravel(), "y": gy.ravel(), "loss": loss.ravel(), "stderr": err.ravel()})


@dataclass
class Line:
    """The loss along start + alpha * (end - start) at each `alpha`; NaN where not computed.

    `path` and `fallback` as for Landscape.
    """

    alpha: np.ndarray
    loss: np.ndarray
    stderr: np.ndarray | None = None
    mode: str = "eval"
    samples: int | None = None
    complete: bool = True
    path: str = "pointwise"
    fallback: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain arrays and strings, for a History snapshot (no tensors)."""
        return {"alpha": self.alpha, "loss": self.loss, "stderr": self.stderr, "mode": self.mode,
                "samples": self.samples, "complete": self.complete, "path": self.path, "fallback": self.fallback}

    def frame(self) -> pd.DataFrame:
        """A row per point: alpha, loss, stderr (NaN on all the data)."""
        return line_frame(self.alpha, self.loss, self.stderr)


def line_frame(alpha, loss, stderr=None) -> pd.DataFrame:
    alpha, loss = np.asarray(alpha, float), np.asarray(loss, float)
    return pd.DataFrame({"alpha": alpha, "loss": loss,
                         "stderr": np.full(loss.shape, np.nan) if stderr is None else np.asarray(stderr, float)})


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
FIRST_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)  # linear in (weight, bias): exact types only
PASSIVE = (nn.Flatten, nn.Unflatten, nn.Identity)  # what may run before the first layer in train mode
ROWS = 512  # examples per forward behind a precomputed first layer, when a batch's activations exceed CHUNK_ABOVE
CHUNK_ABOVE = 16 * 2**20  # bytes; measured, in chunks against all at once: 10 % faster for a 784-256-256-10 MLP on
                          # 10,000 images (72 MB), 22 % for the digits CNN (57 MB), slower for the digits MLP (3 MB)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be 'eval' (BatchNorm uses running statistics) or 'train' (batch statistics); got {mode!r}")


class _FirstLayer:
    """The first layer's output at grid point c as y0 + yd.T @ c, from products computed once per batch.

    For batch b, y0[b] (M_b,) is f(X_b; W0, b0) and row j of yd[b] (k, M_b) is f(X_b; D_j) with the
    direction's weight and bias, all flattened in one layout: channels last, (N, H, W, C), for a 2-D
    or 3-D convolution (torch's CPU convolutions and pooling are several times faster on it), else
    the output's own. With `rows`, the rest of the network runs on that many examples at a time
    (eval mode, large batches), so its activations stay in cache; the loss sees the whole batch.
    While `installed`, the module's forward returns `current`, so the model runs unchanged around
    it: its hooks, tied weights and the rest of its forward see what they always do.
    """

    def __init__(self, module: nn.Module):
        self.module, self.perm, self.rows = module, None, None
        self.y0: list[torch.Tensor] = []
        self.yd: list[torch.Tensor] = []
        self.shapes: list[tuple[int, ...]] = []  # in the stored layout, examples first
        self.natural: list[tuple[int, ...]] = []  # the layer's output shapes
        self.per_example = True  # every batch's output has one row per example (dim 0)
        self.current: torch.Tensor | None = None
        self.buf: torch.Tensor | None = None
        self.bpp = 0  # bytes of one point's weights and activations, for vmap's chunks
        self.acts = 0  # bytes of the largest batch's activations
        self.writes: list[tuple[int, int]] | None = None  # buffer ranges a point writes: all but the layer's own

    def add(self, x: torch.Tensor, n: int, dirs: list[dict[str, torch.Tensor]]) -> None:
        """The products for one batch of n examples, whose input to the layer is x (under inference mode)."""
        from torch.func import functional_call

        y0 = self.module(x)
        ys = [functional_call(self.module, d, (x,)) for d in dirs]
        if isinstance(self.module, (nn.Conv2d, nn.Conv3d)) and y0.ndim in (4, 5):  # batched: (N, C, H, W), (N, C, D, H, W)
            self.perm = (0, *range(2, y0.ndim), 1)
        lay = (lambda t: t.permute(self.perm)) if self.perm else (lambda t: t)
        self.shapes.append(tuple(lay(y0).shape))
        self.natural.append(tuple(y0.shape))
        self.per_example &= y0.ndim > 0 and y0.shape[0] == n
        self.y0.append(lay(y0).reshape(-1).contiguous())
        self.yd.append(torch.stack([lay(t).reshape(-1) for t in ys]))  # (k, M_b): yd.T is column-major, as addmv likes
        size = max(len(v) for v in self.y0)
        if self.buf is None or len(self.buf) < size:
            self.buf = torch.empty(size, dtype=y0.dtype, device=y0.device)

    @property
    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in (*self.y0, *self.yd, self.buf))

    def view(self, b: int, row: torch.Tensor, n: int | None = None) -> torch.Tensor:
        """A flat row in the stored layout (n examples; all by default) -> the layer's output; vmap-safe."""
        out = row.view(self.shapes[b] if n is None else (n, *self.shapes[b][1:]))
        if self.perm is None:
            return out
        return out.permute(0, len(self.perm) - 1, *range(1, len(self.perm) - 1))  # a channels-last (N, C, H, W)

    def feed(self, b: int, c: torch.Tensor, lo: int = 0, hi: int | None = None) -> None:
        """Batch b's first-layer output at coordinates c (examples lo:hi), for the next forward."""
        per = len(self.y0[b]) // self.shapes[b][0]
        hi = self.shapes[b][0] if hi is None else hi
        a, z = lo * per, hi * per
        out = self.buf[: z - a]
        torch.addmv(self.y0[b][a:z], self.yd[b][:, a:z].T, c, out=out)
        self.current = self.view(b, out, hi - lo)

    def batched(self, b: int, C: torch.Tensor) -> torch.Tensor:
        """(B, M_b): batch b's first-layer outputs at each row of C (B, k), flat."""
        return torch.addmm(self.y0[b].unsqueeze(0), C, self.yd[b])

    def layouts(self, chunk: bool):
        """Set each way of running in turn, fastest first: channels last and in chunks of ROWS
        examples (where `chunk` and the activations exceed CHUNK_ABOVE), then without chunks, then
        in the layer's own layout."""
        chunk = chunk and self.acts > CHUNK_ABOVE
        tried = set()
        for cl, rows in ((True, chunk), (True, False), (False, chunk), (False, False)):
            if not cl and self.perm is not None:
                self._contiguous()
            self.rows = ROWS if rows and self.per_example and any(s[0] > ROWS for s in self.shapes) else None
            if (self.perm, self.rows) not in tried:
                tried.add((self.perm, self.rows))
                yield

    def _contiguous(self) -> None:
        for b in range(len(self.y0)):
            back = lambda v: self.view(b, v).contiguous().reshape(-1)  # noqa: E731
            self.y0[b], self.yd[b] = back(self.y0[b]), torch.stack([back(r) for r in self.yd[b]])
        self.shapes, self.perm = list(self.natural), None

    def _forward(self, *args, **kwargs) -> torch.Tensor:
        return self.current

    @contextlib.contextmanager
    def installed(self):
        saved = self.module.__dict__.get("forward")
        self.module.forward = self._forward  # an instance attribute: nn.Module.__call__ calls it
        try:
            yield self
        finally:
            if saved is None:
                self.module.__dict__.pop("forward", None)
            else:
                self.module.forward = saved


def _trace(model: nn.Module, xb: torch.Tensor) -> dict[str, Any]:
    """One forward with autograd on, watching modules run: the first one that owns trainable
    parameters (its inputs, its output's shape, how often it ran), the modules run before it, and
    the bytes of all leaf modules' outputs (as `_bytes_per_point` counts them)."""
    seen: dict[str, Any] = {"module": None, "calls": 0, "before": [], "shape": None, "bytes": 0}

    def pre(m, args, kwargs):
        if seen["module"] is None:
            if any(q.requires_grad for q in m.parameters(recurse=False)):
                seen.update(module=m, args=args, kwargs=kwargs)
            else:
                seen["before"].append(m)
        if m is seen["module"]:
            seen["calls"] += 1

    def post(m, args, out):
        if m is seen["module"] and seen["shape"] is None and torch.is_tensor(out):
            seen["shape"] = tuple(out.shape)
        if torch.is_tensor(out) and not m._modules:
            seen["bytes"] += out.numel() * out.element_size()

    handles = []
    try:
        for m in model.modules():
            handles += [m.register_forward_pre_hook(pre, with_kwargs=True), m.register_forward_hook(post)]
        with torch.inference_mode(False), torch.enable_grad():
            model(xb)
    finally:
        for h in handles:
            h.remove()
    return seen


def _unsuitable(seen: dict[str, Any], mode: str, k: int, force: bool) -> str | None:
    """Why the traced first layer cannot be precomputed, or None."""
    m = seen["module"]
    if m is None:
        return "no module with trainable parameters runs in the forward"
    name = type(m).__name__
    if type(m) not in FIRST_LAYERS:
        return f"the first module with trainable parameters to run is a {name}, not an nn.Linear or nn.Conv1d/2d/3d"
    if m._forward_hooks or m._forward_pre_hooks or getattr(m, "_forward_hooks_with_kwargs", None):
        return f"the first layer ({name}) has hooks"
    if seen["calls"] != 1:
        return f"the first layer ({name}) runs {seen['calls']} times in one forward"
    args, kwargs = seen["args"], seen["kwargs"]
    if kwargs or len(args) != 1 or not torch.is_tensor(args[0]) or seen["shape"] is None:
        return f"the first layer ({name}) is called with other than one tensor"
    if args[0].requires_grad:
        return f"the input of the first layer ({name}) depends on trainable parameters"
    if mode == "train":
        for b in seen["before"]:
            if not isinstance(b, PASSIVE) and not list(b.children()):
                return f"in train mode a {type(b).__name__} runs before the first layer"
    # a convolution's products are kept channels last, which pays whatever its fan-in; a Linear's
    # per-point matmul (fan-in multiply-adds per output) must be dearer than adding k + 1 products
    if isinstance(m, nn.Linear) and m.in_features < 2 * (k + 1) and not force:
        return f"the first layer is too cheap to precompute (fan-in {m.in_features}, against {k + 1} products to add)"
    return None


def _first_layer(model, batches, flat: _Flat, D: torch.Tensor, mode: str, memory: int,
                 force: bool) -> tuple[_FirstLayer | None, str | None]:
    """The first-layer products for every batch, or None and the reason the shortcut does not apply.

    Runs inside `flat` with the centre's weights in its buffer and the model in `mode`. Once every
    batch is traced, the products' `bpp` is a point's weights and activations, as `_bytes_per_point`.
    """
    mod = torch.nn.modules.module
    if any(getattr(mod, h, None) for h in ("_global_forward_hooks", "_global_forward_pre_hooks")):
        return None, "global module hooks are registered"
    k, elem = D.shape[1], flat.base.element_size()
    start, o = {}, 0  # each parameter's first row in D
    for _, q in flat.named:
        start[id(q)] = o
        o += q.numel()
    fl, used, acts = None, 0, 0
    for xb, _ in batches:
        try:
            seen = _trace(model, xb)
        except Exception as e:  # noqa: BLE001 - any failure only means: no shortcut
            return None, f"tracing the forward raised {type(e).__name__}: {e}"
        why = _unsuitable(seen, mode, k, force)
        if why is not None:
            return None, why
        m = seen["module"]
        if fl is None:
            fl = _FirstLayer(m)
            dirs = []
            for j in range(k):
                d = {}
                for name in ("weight", "bias"):
                    q = getattr(m, name, None)
                    if q is not None:
                        d[name] = (D[start[id(q)] : start[id(q)] + q.numel(), j].reshape(q.shape) if id(q) in start
                                   else torch.zeros_like(q))  # a frozen weight or bias does not move
                dirs.append(d)
        elif m is not fl.module:
            return None, "the first layer differs between batches"
        acts = max(acts, seen["bytes"])
        used += (k + 2) * math.prod(seen["shape"]) * elem  # y0, yd and (at most) the output buffer
        if used > memory:
            return None, f"the first layer's products need more than memory={memory:,} bytes"
        with torch.inference_mode():
            fl.add(seen["args"][0], len(xb), dirs)
    fl.bpp, fl.acts = flat.n_pad * elem + 2 * acts + 1, acts
    # the layer's own weights need not move (its forward is the products'), when they are one range of the buffer
    index = {id(q): i for i, (_, q) in enumerate(flat.named)}
    owners = collections.Counter(id(q) for _, q in model.named_parameters(remove_duplicate=False))
    own = sorted(index[id(q)] for q in fl.module.parameters(recurse=False) if id(q) in index)
    tied = any(owners[id(q)] > 1 for q in fl.module.parameters(recurse=False))  # another module uses them too
    if own and not tied and own == list(range(own[0], own[-1] + 1)):
        lo, hi = flat.offsets[own[0]], flat.offsets[own[-1] + 1] if own[-1] + 1 < len(flat.named) else flat.n_pad
        fl.writes = [(a, z) for a, z in ((0, lo), (hi, flat.n_pad)) if z > a]
    return fl, None


def _write(flat: _Flat, base: torch.Tensor, Dt: torch.Tensor, c: torch.Tensor, fl: _FirstLayer | None = None) -> None:
    """A point's weights base + Dt.T @ c into the buffer: one addmv (behind a precomputed first
    layer, only the ranges after and before that layer's own weights)."""
    if fl is None or fl.writes is None:
        torch.addmv(base, Dt.T, c, out=flat.buf)
        return
    for a, z in fl.writes:
        torch.addmv(base[a:z], Dt[:, a:z].T, c, out=flat.buf[a:z])


def _check_first_layer(model, loss_fn, batches, flat, base, Dt, coords, fl: _FirstLayer) -> str | None:
    """One point, the farthest from the centre, both ways: None if they agree, else why not."""
    i = int(coords.abs().sum(1).argmax())
    _write(flat, base, Dt, coords[i])
    ref = float(_point(model, loss_fn, batches, None)[0])
    flat.buf.copy_(base)  # as the grid will run: the layer's own weights stay at the centre
    _write(flat, base, Dt, coords[i], fl)
    try:
        with fl.installed():
            got = float(_point(model, loss_fn, batches, None, fl, coords[i])[0])
    except Exception as e:  # noqa: BLE001 - e.g. a .view() that a channels-last tensor cannot take
        return f"the forward after the first layer raised {type(e).__name__}: {e}"
    if got == ref or math.isclose(got, ref, rel_tol=1e-4, abs_tol=1e-6) or (math.isnan(got) and math.isnan(ref)):
        return None
    return f"the first-layer shortcut gave {got:.6g} where the plain forward gives {ref:.6g}"


def _evaluate(model, loss_fn, batches, total, flat: _Flat, D: torch.Tensor, coords: torch.Tensor, mode: str,
              samples: int | None, vectorize: bool | None, memory: int, p: Progress,
              first_layer: bool | None = None) -> tuple[np.ndarray, np.ndarray | None, bool, str, str | None]:
    """Loss (and standard error with samples) at base + D @ c for each row c of coords; NaN once cancelled.

    Also returns whether every point was computed, the evaluation path, and why the first-layer
    shortcut was not taken (None if it was).
    """
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
    with flat, _mode(model, mode):
        flat.buf.copy_(base)
        fl, why = None, "first_layer=False"
        if first_layer is not False:
            fl, why = _first_layer(model, batches, flat, D, mode, memory, force=first_layer is True)
        with torch.inference_mode():
            bpp = fl.bpp if fl is not None else _bytes_per_point(model, batches, flat) if vectorize is not False else 0
            if vectorize is None:  # measured: vmap is 2x faster for a width-8 MLP on 320 points, 1.7x slower on digits
                can = mode == "eval" or not any(True for _ in model.buffers())
                vectorize = can and (flat.device.type != "cpu" or bpp < SMALL_POINT)
            if fl is not None:
                first_why = None
                for _ in fl.layouts(chunk=mode == "eval" and not vectorize):  # a layout the rest of the model takes
                    why = _check_first_layer(model, loss_fn, batches, flat, base, Dt, coords, fl)
                    if why is None:
                        break
                    first_why = first_why or why
                if why is not None:
                    fl, why = None, first_why
            if first_layer is True and fl is None:
                raise ValueError(f"first_layer=True, but the first layer cannot be precomputed: {why}")
            with fl.installed() if fl is not None else contextlib.nullcontext():
                if vectorize:
                    chunk = max(1, int((memory - (fl.nbytes if fl is not None else 0)) // bpp))
                    done = _vectorized(model, loss_fn, batches, flat, base, Dt, coords, per_ex, chunk, loss, se, p, fl)
                else:
                    for i in range(P):
                        if p.cancelled:
                            break
                        _write(flat, base, Dt, coords[i], fl)
                        loss[i], s = _point(model, loss_fn, batches, per_ex, fl, coords[i])
                        if se is not None:
                            se[i] = s
                        done += 1
                        p.update()
    if se is not None:
        se *= fpc
    path = "+".join((["first-layer"] if fl is not None else []) + (["vectorized"] if vectorize else [])) or "pointwise"
    return loss.numpy(), None if se is None else se.numpy(), done == P, path, why


def _forward(model, b: int, xb: torch.Tensor, fl: _FirstLayer | None, c: torch.Tensor | None) -> torch.Tensor:
    """The model's output on batch b; behind a precomputed first layer fed at coordinates c, in
    chunks of `fl.rows` examples if set (their outputs concatenated, so the loss sees the whole batch)."""
    if fl is None:
        return model(xb)
    if fl.rows is None or len(xb) <= fl.rows:
        fl.feed(b, c)
        return model(xb)
    outs = []
    for lo in range(0, len(xb), fl.rows):
        hi = min(lo + fl.rows, len(xb))
        fl.feed(b, c, lo, hi)
        outs.append(model(xb[lo:hi]))
    return torch.cat(outs)


def _point(model, loss_fn, batches, per_ex, fl: _FirstLayer | None = None, c: torch.Tensor | None = None):
    """The loss at the weights now in the model: the example-weighted mean over the batches.

    With `fl`, each batch's first-layer output is fed from its products at coordinates c.
    """
    if len(batches) == 1:
        xb, yb = batches[0]
        out = _forward(model, 0, xb, fl, c)
        value = loss_fn(out, yb)
        if per_ex is None:
            return value, None
        losses = per_ex(out, yb)
        return value, losses.double().std() / math.sqrt(len(losses)) if len(losses) > 1 else 0.0
    total, n = 0.0, 0
    for b, (xb, yb) in enumerate(batches):
        total = total + loss_fn(_forward(model, b, xb, fl, c), yb).double() * len(yb)
        n += len(yb)
    return total / n, None


def _vectorized(model, loss_fn, batches, flat, base, Dt, coords, per_ex, chunk, loss, se, p,
                fl: _FirstLayer | None = None) -> int:
    """Several grid points per forward pass, `chunk` at a time: functional_call under vmap."""
    from torch.func import functional_call

    def forward(theta, xb):
        return functional_call(model, flat.views(theta), (xb,))

    def forward_first(theta, first, xb, b):
        fl.current = fl.view(b, first)  # a per-point tensor of vmap's level, read by the layer's forward
        return functional_call(model, flat.views(theta), (xb,))

    done = 0
    for lo in range(0, len(coords), chunk):
        if p.cancelled:
            break
        c = coords[lo : lo + chunk]
        thetas = torch.addmm(base.unsqueeze(0), c, Dt)  # (B, n_pad): one row of weights per point
        total, n = 0.0, 0
        for b, (xb, yb) in enumerate(batches):
            if fl is None:
                outs = torch.vmap(forward, in_dims=(0, None))(thetas, xb)  # (B, N, ...)
            else:
                outs = torch.vmap(lambda t, f: forward_first(t, f, xb, b))(thetas, fl.batched(b, c))
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


def _check_first_layer_arg(first_layer) -> None:
    if not any(first_layer is v for v in (None, True, False)):
        raise ValueError(f"first_layer must be None (where it pays), True or False; got {first_layer!r}")


def _check_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 2:
        raise ValueError(f"steps must be a whole number >= 2 (points along each axis); got {steps!r}")
    return int(steps)


def plane(model: nn.Module, loss_fn: Callable | None = None, data: Any = None, steps: int = 51,
          span: float | None = None, directions: Any = "filter", seed: int = 0, bias: str = "zero",
          mode: str = "eval", samples: int | None = None, vectorize: bool | None = None,
          memory: int = 256 * 2**20, first_layer: bool | None = None, progress: bool | Progress = True) -> Landscape:
    """The loss on theta + a*d1 + b*d2 for a, b in linspace(-span, span, steps).

    `model` any nn.Module, `data` an (X, y) pair, a DataLoader or a trainlab Data;
    `directions` "filter" (default), "layer", "random", a Trajectory (the PCA plane of recorded weights,
    `TrajectoryProbe.trajectory(model)`; then `span` defaults to 1.25x its extent), or a pair of directions;
    `bias` what 1-D parameters get ("zero", "weight", "filter"; see the module doc);
    `mode` "eval" (default: BatchNorm uses running statistics) or "train";
    `samples=N` evaluates on a fixed random subset of N examples and reports `stderr`;
    `vectorize` batches grid points under vmap, chunked to `memory` bytes (None: on a GPU, or when a
    point's weights and activations are under SMALL_POINT bytes; results agree to float rounding);
    `first_layer` precomputes the first layer's three products (None: where it is sound and pays,
    True: wherever it is sound, else ValueError saying why, False: never; see the module doc).
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
    _check_first_layer_arg(first_layer)
    p = as_progress(progress, steps * steps, f"landscape {steps}x{steps}")
    try:
        loss, se, complete, path, why = _evaluate(model, loss_fn, batches, total, flat, D, coords, mode, samples,
                                                  vectorize, memory, p, first_layer)
    finally:
        p.close()
    shape = (steps, steps)
    return Landscape(x, x.copy(), loss.reshape(shape), pair, None if se is None else se.reshape(shape), kind, mode,
                     samples, complete, traj, path, why)


def line(model: nn.Module, loss_fn: Callable | None = None, data: Any = None, start: Any = None,
         end: Any = None, steps: int = 51, span: tuple[float, float] = (0.0, 1.0), mode: str = "eval",
         samples: int | None = None, seed: int = 0, vectorize: bool | None = None, memory: int = 256 * 2**20,
         first_layer: bool | None = None, progress: bool | Progress = True) -> Line:
    """The loss along start + alpha * (end - start), alpha in linspace(*span, steps).

    `start` and `end` are weights: a {name: tensor} state dict, an nn.Module or a flat tensor; None is
    the model's current weights. Between a run's initial and current weights it
    shows the path training took; between two runs, whether their minima are linearly connected.
    Only trainable parameters move; buffers (BatchNorm statistics) stay the model's. `samples`,
    `vectorize`, `memory` and `first_layer` as for `plane`.
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
    _check_first_layer_arg(first_layer)
    p = as_progress(progress, steps, "interpolation")
    try:
        loss, se, complete, path, why = _evaluate(model, loss_fn, batches, total, flat, D, torch.tensor(alpha).unsqueeze(1),
                                                  mode, samples, vectorize, memory, p, first_layer)
    finally:
        p.close()
    return Line(alpha, loss, se, mode, samples, complete, path, why)


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


def wireframe_axes(azimuth: float, elevation: float) -> dict[str, list]:
    """The three axes of `wireframe`'s box (direction 1, direction 2, height), from its near-bottom corner,
    seen from (azimuth, elevation): segment ends `xs`, `ys` and a label at each far end."""
    a, e = np.radians(azimuth), np.radians(elevation)

    def screen(X, Y, Z):
        return X * np.cos(a) - Y * np.sin(a), Z * np.cos(e) + (X * np.sin(a) + Y * np.cos(a)) * np.sin(e)

    ends = {"direction 1": (1, -1, -1), "direction 2": (-1, 1, -1), "log10 loss": (-1, -1, 1)}
    o = screen(-1, -1, -1)
    out: dict[str, list] = {"xs": [], "ys": [], "x": [], "y": [], "text": []}
    for text, end in ends.items():
        u, v = screen(*end)
        out["xs"].append([o[0], u]), out["ys"].append([o[1], v])
        out["x"].append(u), out["y"].append(v), out["text"].append(text)
    return out


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


__all__ = ["Landscape", "Line", "Trajectory", "keep_freed_memory", "line", "pca_trajectory", "plane", "random_directions",
           "wireframe", "wireframe_axes"]
