"""Curvature of the loss: Hessian eigenvalues, trace and spectral density, and live sharpness.

Every estimate is built on Hessian-vector products (`HessianOperator`), over blocks of probe
vectors: by reverse-over-reverse through a first-order graph kept for the whole solve, or by
forward-over-reverse (`vmap` of `torch.func.jvp` over `torch.func.grad` of a `functional_call`).
Measured on the 85k-parameter digits MLP, in CPU time on one thread: 25 ms a product through the
kept graph, 57 ms forward-over-reverse for one vector and 38 ms each for 8 under vmap (it redoes
the forward and backward pass each call). So the graph is kept when the data is small enough
(mode "auto"), and the speed over PyHessian comes from needing fewer products:

- `top_eigenvalues`: (block) Lanczos with full reorthogonalization (block Krylov + Rayleigh-Ritz),
  stopped when every wanted Ritz pair's residual ||Hx - θx|| is at most tol·|θ|, which puts an
  eigenvalue within tol·|θ| of each θ: 26-32 products for the top 5 (block 2, the default for
  k >= 2) where PyHessian's deflated power iterations take 68-111.
- `trace`: Hutchinson with an independent Rademacher vector per data slice (variance about 10x
  lower per product on the digits MLP) or Hutch++ (Meyer et al. 2021), with a standard error.
- `density`: stochastic Lanczos quadrature (Ubaru et al. 2017; Ghorbani et al. 2019). The quadrature
  weights are the squared FIRST components of the tridiagonal matrix's eigenvectors. (PyHessian
  0.1 builds them with `torch.eig`, removed from torch; its GitHub version once squared the whole
  eigenvector matrix instead, fixed in its PR #23.)

The Hessian is that of the loss in eval mode (BatchNorm uses its running statistics, dropout
is off), as PyHessian does. `loss_fn(outputs, targets)` must return the mean over the batch
(torch's default); over a DataLoader, batches are weighted by their sizes, so the Hessian is that
of the mean loss over every example.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import scipy.linalg
import torch
from torch import nn
from torch.func import grad, jvp, vmap
from trainlab.data import eval_batches
from trainlab.functional import Functional, eval_mode
from trainlab.jobs import Cancelled, Progress, as_progress


# ---- the Hessian as an operator ---------------------------------------------------------------
class HessianOperator:
    """v -> Hv for the loss of `model` over `data`, on flat parameter vectors (columns of V).

    Two ways to the same product, chosen by `mode`:
    - "reverse": the first-order graph (gradient with create_graph) is built once per batch and
      every product is one more backward pass through it, as PyHessian does. Measured on the
      85k-parameter digits MLP (CPU time, one thread): 25 ms a product, whatever the block size.
    - "forward": forward-over-reverse, `vmap` over `jvp(grad(functional_call))`, recomputing the
      forward and backward pass at each call and sharing it across the block: 57 ms for one
      vector, 38 ms each for 8. It holds no graph between calls.
    "auto" caches graphs when the data has at most `cache_examples` examples (their activations
    stay in memory), else goes forward over each batch.
    The parameters are copied at construction: build a new operator after the weights move.
    `scale` (a flat vector s) makes it diag(s) H diag(s), for preconditioned curvature (s = P^-1/2).
    """

    def __init__(self, model: nn.Module, loss_fn, data, scale: torch.Tensor | None = None, max_block: int = 16,
                 mode: str = "auto", cache_examples: int = 20_000):
        self.f = Functional(model, "a Hessian")
        if mode not in ("auto", "reverse", "forward"):
            raise ValueError(f"mode must be 'auto', 'reverse' or 'forward', got {mode!r}")
        self.model, self.loss_fn, self.max_block = model, loss_fn, int(max_block)
        self.dtype, self.device, self.theta, self.n = self.f.dtype, self.f.device, self.f.theta, self.f.n
        batches = eval_batches(data, self.device)
        total = sum(len(X) for X, _ in batches)
        self.batches = [(X, y, len(X) / total) for X, y in batches]  # weights: the mean loss over all examples
        self.examples = total
        self.scale = None if scale is None else scale.to(self.device, self.dtype)
        self.hvps = 0
        self._check_loss()
        self.mode = mode if mode != "auto" else ("reverse" if total <= cache_examples else "forward")
        self._graphs = None
        self._hvp = vmap(self._hvp_one, in_dims=(0, None, None))

    def _loss(self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.f(theta, X), y).reshape(())

    def _check_loss(self) -> None:
        X, y, _ = self.batches[0]
        with torch.no_grad(), eval_mode(self.model):
            loss = self.loss_fn(self.f(self.theta, X), y)
        if not torch.is_tensor(loss) or loss.numel() != 1:
            shape = tuple(loss.shape) if torch.is_tensor(loss) else type(loss).__name__
            raise ValueError(f"loss_fn must return a scalar (the mean loss of the batch); it returned {shape}. "
                             f"Use reduction='mean' (or 'sum'), not 'none'")
        if not loss.dtype.is_floating_point:
            raise ValueError(f"loss_fn must return a floating-point scalar, got {loss.dtype}")

    def _hvp_one(self, v: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        g = grad(self._loss)
        return jvp(lambda t: g(t, X, y), (self.theta,), (v,))[1]

    def _build_graphs(self) -> None:
        self._leaf = self.theta.clone().requires_grad_(True)
        self._graphs = []
        with torch.enable_grad(), eval_mode(self.model):
            for X, y, w in self.batches:
                g = torch.autograd.grad(self._loss(self._leaf, X, y), self._leaf, create_graph=True)[0]
                self._graphs.append((g, w))

    def loss(self) -> float:
        with torch.no_grad(), eval_mode(self.model):
            return sum(w * float(self._loss(self.theta, X, y)) for X, y, w in self.batches)

    def __call__(self, V: torch.Tensor) -> torch.Tensor:
        """H @ V for V of shape (n,) or (n, b), in V's dtype (float64 in the solvers)."""
        single = V.ndim == 1
        V2 = V.reshape(self.n, -1)
        out = torch.empty_like(V2)
        rows = V2.T.to(self.device, self.dtype)  # (b, n)
        if self.scale is not None:
            rows = rows * self.scale
        if self.mode == "reverse":
            if self._graphs is None:
                self._build_graphs()
            for i, v in enumerate(rows):
                acc = sum(w * torch.autograd.grad(g, self._leaf, v, retain_graph=True)[0] for g, w in self._graphs)
                out[:, i] = (acc * self.scale if self.scale is not None else acc).to(out.dtype)
        else:
            with eval_mode(self.model):
                for i in range(0, rows.shape[0], self.max_block):
                    chunk = rows[i : i + self.max_block]
                    acc = sum(w * self._hvp(chunk, X, y) for X, y, w in self.batches)
                    if self.scale is not None:
                        acc = acc * self.scale
                    out[:, i : i + len(chunk)] = acc.T.to(out.dtype)
        self.hvps += rows.shape[0]
        return out.reshape(V.shape) if single else out


def _operator(model, loss_fn, data, op: HessianOperator | None = None, **kw) -> HessianOperator:
    return op if op is not None else HessianOperator(model, loss_fn, data, **kw)


def _generator(seed: int | None) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**31 - 1, ()).item()))
    return g


def _orthonormalize(W: torch.Tensor, basis: torch.Tensor | None, drop: float = 1e-10, passes: int = 2) -> torch.Tensor:
    """W's columns orthogonal to `basis` and to each other: `passes` of classical Gram-Schmidt
    against the basis (two are enough; 0 when W is orthogonal to it already), then QR, dropping
    dependent columns. Q = W R⁻¹ keeps W's orthogonality to the basis up to a factor cond(R), so
    one more pass follows only when R is ill-conditioned or columns were dropped (in the Lanczos
    blocks of the digits MLP cond(R) stays below 2: the pass would read the whole basis for nothing)."""
    for _ in range(passes):
        if basis is not None and basis.shape[1]:
            W = W - basis @ (basis.T @ W)
    Q, R = torch.linalg.qr(W)
    keep = R.diagonal().abs() > drop * max(1.0, float(R.diagonal().abs().max()) if R.numel() else 1.0)
    Q = Q[:, keep]
    if (basis is not None and basis.shape[1] and Q.shape[1] > 1
            and (not bool(keep.all()) or float(torch.linalg.cond(R)) > 1e3)):
        Q = Q - basis @ (basis.T @ Q)
        Q, _ = torch.linalg.qr(Q)
    return Q


# ---- top eigenvalues ----------------------------------------------------------------------------
def lanczos(op: HessianOperator, k: int, tol: float, block: int, max_hvps: int, v0: torch.Tensor | None,
            gen: torch.Generator, progress: Progress, keep: int | None = None) -> tuple[np.ndarray, torch.Tensor, bool]:
    """Top-k Ritz pairs of op by block Krylov iterations with full reorthogonalization.

    Returns (values descending, vectors (n, max(k, keep)) float64, converged); `keep` > k also returns
    the next Ritz pairs, unconverged (warm starts for the next solve). It stops once every one of the
    top k Ritz pairs (θ, x) has ||Hx - θx|| <= tol·|θ| (`_converged`). T = B^T H B is built a block
    column at a time from the products, so each iteration costs one batched HVP call and O(n·m·b) of
    orthogonalization for a basis of m columns. The residuals come from the Krylov relation: with
    full reorthogonalization, H·B·s - θ·B·s = W·s_last, where W = (I - BBᵀ)·H·Q_last is the part of
    the newest products outside the basis (the next block, before its QR) and s_last the Ritz vector's
    last b coordinates; so neither H·B nor the Ritz vectors are formed until the end.
    """
    n = op.n
    block = min(block, n)
    want = max(k, keep or k)
    X = torch.randn(n, block, generator=gen, dtype=torch.float64).to(op.device)
    if v0 is not None:
        v0 = v0.reshape(n, -1).to(op.device, torch.float64)[:, :block]
        X[:, : v0.shape[1]] = v0
    Q = _orthonormalize(X, None)
    if Q.shape[1] < block:  # a start vector that was zero or dependent: random directions instead
        extra = torch.randn(n, block - Q.shape[1], generator=gen, dtype=torch.float64).to(op.device)
        Q = torch.cat([Q, _orthonormalize(extra, Q)], 1)
    rows = torch.empty(min(n, 16 * block), n, dtype=torch.float64, device=op.device)  # the basis, as rows
    m, T, converged = 0, np.zeros((0, 0)), False
    while True:
        HQ = op(Q)
        progress.update(Q.shape[1])
        m0, m = m, m + Q.shape[1]
        if m > rows.shape[0]:  # grow by doubling: no copy of the whole basis at every step
            rows = torch.cat([rows[:m0], rows.new_empty(min(n, 2 * m) - m0, n)])
        rows[m0:m] = Q.T
        B = rows[:m].T  # (n, m)
        C = B.T @ HQ  # (m, b): the new block column of T
        W = HQ - B @ C  # the products' part outside the basis (the next block before its QR) ...
        W = W - B @ (B.T @ W)  # ... after a second Gram-Schmidt pass
        Cn = C.cpu().numpy()
        inner = Cn[m0:]
        T = np.block([[T, Cn[:m0]], [Cn[:m0].T, (inner + inner.T) / 2]]) if m0 else (inner + inner.T) / 2
        theta, S = scipy.linalg.eigh(T)
        top = np.argsort(theta)[::-1][: min(want, len(theta))]
        values, Sk = theta[top], torch.as_tensor(np.ascontiguousarray(S[:, top]), device=op.device)
        residual = torch.linalg.vector_norm(W @ Sk[m0:], dim=0).cpu().numpy()
        if len(theta) >= k and _converged(values[:k], residual[:k], tol, theta):
            converged = True
            break
        if op.hvps >= max_hvps or m >= n or progress.cancelled:
            break
        Q = _orthonormalize(W, B, passes=0)
        if Q.shape[1] < min(block, n - m):  # an invariant subspace: continue from fresh random directions
            extra = torch.randn(n, min(block, n - m) - Q.shape[1], generator=gen, dtype=torch.float64)
            Q = torch.cat([Q, _orthonormalize(extra.to(op.device), torch.cat([B, Q], 1))], 1)
    return values, B @ Sk, converged


def _converged(values: np.ndarray, residual: np.ndarray, tol: float, theta: np.ndarray) -> bool:
    """True when every wanted Ritz pair (θ, x), ||x|| = 1, has ||Hx - θx|| <= tol·|θ|.

    For a symmetric H, some eigenvalue lies within ||r|| of θ, whatever the rest of the spectrum (the
    residual bound; Parlett, The Symmetric Eigenvalue Problem), so this bounds each value's relative
    error without knowing any gap. The sharper ||r||²/gap holds only with the gap to the rest of
    the *true* spectrum; the gap to the nearest other Ritz value, which stands in for it, is far too
    large while the Krylov space is small, and stopping on it skipped eigenvalues (issue 11). ARPACK
    stops on the same test. |θ| is floored at 1e-12 of the largest |Ritz value| so that an
    eigenvalue at 0 ends once its residual is at rounding level.
    """
    scale = np.maximum(np.abs(values), 1e-12 * max(1.0, float(np.abs(theta).max())))
    return bool(np.all(residual <= tol * scale))


def top_eigenvalues(model: nn.Module, loss_fn, data, k: int = 1, tol: float = 1e-3, block: int | None = None,
                    max_hvps: int = 2000, v0: torch.Tensor | None = None, seed: int | None = 0,
                    return_vectors: bool = False, progress: bool | Progress = False, mode: str = "auto"):
    """The k largest (algebraic) eigenvalues of the loss's Hessian, largest first, as a NumPy array.

    Lanczos with full reorthogonalization, in blocks of `block` vectors (block Krylov with
    Rayleigh-Ritz on the projected matrix, solved by scipy.linalg.eigh). It stops when every one of
    the top k Ritz pairs (θ, x) has a residual ||Hx - θx|| <= tol·|θ|: then an eigenvalue of H lies
    within tol·|θ| of each θ, and θ_i <= λ_i (Cauchy interlacing), so `tol` bounds the relative error
    of each value (PyHessian's `tol` is the relative change between two power iterations instead).
    What no Krylov method can certify is that no eigenvalue was missed: a direction absent from the
    start block is never seen. With random starts the top k are found unless an eigenvalue's share
    of the start is tiny or its multiplicity exceeds the block: one start vector sees one direction
    of a repeated eigenvalue (and cannot split a pair closer than about tol), so `block` defaults to
    1 for k = 1 (a pair at the top still gives λ_1 within tol) and to 2 for k >= 2, which finds pairs
    such as λ_1 and λ_2 crossing at the edge of stability; pass block=b for clusters of b. Top 5 of
    the digits MLP: 26-32 products with block 2 (18-23 with block 1), against 68-111 for PyHessian's
    power iterations with deflation.
    `v0` (n,) or (n, j) warm-starts it (the previous eigenvectors of a run that moved a little; a
    warm start converges in a few products but follows only the directions it is given).
    `return_vectors=True` also returns the eigenvectors as an (n, k) float64 tensor over the flat
    trainable parameters, in `model.named_parameters()` order.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a whole number >= 1, got {k!r}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}")
    op = HessianOperator(model, loss_fn, data, mode=mode)
    if k > op.n:
        raise ValueError(f"k={k} exceeds the number of parameters ({op.n})")
    if block is None:
        block = 1 if k == 1 else 2
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a whole number >= 1 (or None: 1 for k = 1, else 2), got {block!r}")
    p = as_progress(progress, min(max_hvps, op.n), "top eigenvalues (HVPs)")
    try:
        values, vectors, converged = lanczos(op, k, tol, block, max_hvps, v0, _generator(seed), p)
    finally:
        p.close()
    if p.cancelled:
        raise Cancelled("top_eigenvalues was cancelled")
    if not converged and op.hvps < op.n:
        warnings.warn(f"top_eigenvalues stopped after {op.hvps} Hessian-vector products (max_hvps={max_hvps}) "
                      f"before every eigenvalue was within tol={tol:g}; raise max_hvps or tol", stacklevel=2)
    values = np.asarray(values, dtype=float)
    return (values, vectors) if return_vectors else values


# ---- trace -----------------------------------------------------------------------------------
def _rademacher(n: int, m: int, gen: torch.Generator, device) -> torch.Tensor:
    return torch.randint(0, 2, (n, m), generator=gen, dtype=torch.float64).mul_(2).sub_(1).to(device)


def _slices(data, parts: int, gen: torch.Generator, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The data in disjoint slices: a DataLoader's own batches, or an (X, y) pair split at random."""
    batches = eval_batches(data, device)
    if len(batches) > 1:
        return batches
    X, y = batches[0]
    perm = torch.randperm(len(X), generator=gen).to(X.device)
    return [(X[i], y[i]) for i in perm.chunk(min(parts, len(X)))]


class _SlicedHessian:
    """H = Σ_s w_s H_s over disjoint data slices s (w_s: the slice's share of the examples)."""

    def __init__(self, model, loss_fn, slices, mode: str):
        self.ops = [HessianOperator(model, loss_fn, sl, mode=mode) for sl in slices]
        total = sum(op.examples for op in self.ops)
        self.weights = [op.examples / total for op in self.ops]
        self.n, self.device = self.ops[0].n, self.ops[0].device

    def __call__(self, V: torch.Tensor) -> torch.Tensor:
        return sum(w * op(V) for w, op in zip(self.weights, self.ops))

    def quadratic_forms(self, m: int, gen: torch.Generator, project: torch.Tensor | None) -> torch.Tensor:
        """m independent samples of Σ_s w_s v_sᵀ H_s v_s, a fresh Rademacher v_s for every slice.

        Each is unbiased for tr(H) (each term is for w_s tr(H_s)), and the slices' independent
        probes add up variances w_s² Var_s instead of correlating through one shared v: on the
        digits MLP 8 slices cut the standard deviation about 3x (variance 10x) for about 1.5x the
        cost of one product over the whole data.
        """
        out = torch.zeros(m, dtype=torch.float64, device=self.device)
        for w, op in zip(self.weights, self.ops):
            G = _rademacher(self.n, m, gen, self.device)
            if project is not None:
                G = G - project @ (project.T @ G)
            out += w * (G * op(G)).sum(0)
        return out


def trace(model: nn.Module, loss_fn, data, samples: int | None = 32, method: str = "hutchinson", slices: int = 8,
          rtol: float | None = None, block: int = 2, seed: int | None = 0, mode: str = "auto",
          progress: bool | Progress = True) -> tuple[float, float]:
    """tr(H) and its standard error.

    method="hutchinson": the mean of `samples` unbiased samples of the trace; each draws a fresh
    Rademacher vector for each of `slices` disjoint slices of the data (a DataLoader's own batches)
    and adds w_s v_sᵀH_s v_s, so a sample costs about one Hessian-vector product over the whole
    data set plus a little per slice (slices=1 is plain Hutchinson, vᵀHv). The standard error
    is the samples' standard deviation over sqrt(samples).
    method="hutch++" (Meyer, Musco, Musco & Woodruff 2021): a third of the budget finds Q, an
    orthonormal basis of H·S for a random S, whose part tr(QᵀHQ) is exact; Hutchinson on
    (I - QQᵀ)H(I - QQᵀ) adds the rest. It pays off when a few eigenvalues carry much of the trace.
    With `rtol`, sampling goes on in blocks of `block` until the standard error is at most
    rtol·|estimate| (at least 4 samples, at most `samples`, or 10,000 when samples is None).
    """
    if method not in ("hutchinson", "hutch++"):
        raise ValueError(f"method must be 'hutchinson' or 'hutch++', got {method!r}")
    least = 6 if method == "hutch++" else 2
    if samples is None and rtol is None:
        raise ValueError("give samples, rtol or both")
    if samples is not None and (not isinstance(samples, int) or samples < least):
        raise ValueError(f"samples must be a whole number >= {least} for {method}, got {samples!r}")
    if rtol is not None and not rtol > 0:
        raise ValueError(f"rtol must be > 0, got {rtol!r}")
    if not isinstance(slices, int) or slices < 1:
        raise ValueError(f"slices must be a whole number >= 1, got {slices!r}")
    gen = _generator(seed)
    H = _SlicedHessian(model, loss_fn, _slices(data, slices, gen, _device_of(model)), mode)
    budget = samples if samples is not None else 10_000
    p = as_progress(progress, budget, f"trace ({method})")
    exact, Q = 0.0, None
    try:
        if method == "hutch++":
            third = budget // 3 if samples is not None else max(2, block)
            S = _rademacher(H.n, third, gen, H.device)
            Q = _orthonormalize(H(S), None)
            exact = float((Q * H(Q)).sum())
            p.update(2 * third)
            budget -= 2 * third
        quads: list[torch.Tensor] = []
        done = 0
        while done < budget:
            if p.cancelled:
                raise Cancelled("trace was cancelled")
            m = min(block, budget - done)
            quads.append(H.quadratic_forms(m, gen, Q))
            done += m
            p.update(m)
            q = torch.cat(quads)
            if rtol is not None and len(q) >= 4:
                err = float(q.std()) / math.sqrt(len(q))
                if err <= rtol * abs(exact + float(q.mean())):
                    break
    finally:
        p.close()
    q = torch.cat(quads).cpu().numpy()
    est = exact + float(q.mean())
    err = float(q.std(ddof=1) / math.sqrt(len(q))) if len(q) > 1 else float("nan")
    return est, err


def _device_of(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


# ---- spectral density ------------------------------------------------------------------------
def slq_nodes(model: nn.Module, loss_fn, data, vectors: int = 4, iters: int = 64, seed: int | None = 0,
              progress: bool | Progress = True, op: HessianOperator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Gauss quadrature nodes and weights of stochastic Lanczos quadrature, each of shape (vectors, m).

    For each Rademacher start vector v, `iters` Lanczos steps (full reorthogonalization) give a
    tridiagonal T = UΘUᵀ; its nodes are Θ and its weights the squared first components U[0, j]^2,
    which sum to 1: Σ_j w_j f(θ_j) ≈ vᵀf(H)v/vᵀv. The vectors' Lanczos runs go through the same
    batched HVP calls.
    """
    op = _operator(model, loss_fn, data, op)
    if not isinstance(vectors, int) or vectors < 1:
        raise ValueError(f"vectors must be a whole number >= 1, got {vectors!r}")
    if not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters must be a whole number >= 1, got {iters!r}")
    m = min(iters, op.n)
    gen = _generator(seed)
    V = _rademacher(op.n, vectors, gen, op.device)
    V = V / torch.linalg.vector_norm(V, dim=0)
    # basis (vectors, m, n) in the parameters' dtype: full reorthogonalization without float64's memory
    basis = torch.zeros(vectors, m, op.n, dtype=op.dtype, device=op.device)
    alpha, beta = np.zeros((vectors, m)), np.zeros((vectors, m))
    steps = np.full(vectors, m)
    prev = torch.zeros_like(V)
    p = as_progress(progress, m, "Hessian density (Lanczos steps)")
    try:
        for j in range(m):
            if p.cancelled:
                raise Cancelled("density was cancelled")
            basis[:, j] = V.T.to(op.dtype)
            W = op(V)  # (n, vectors)
            a = (W * V).sum(0)
            alpha[:, j] = a.cpu().numpy()
            W = W - V * a - prev * torch.as_tensor(beta[:, j - 1] if j else np.zeros(vectors), device=op.device)
            Bj = basis[:, : j + 1]  # (vectors, j+1, n), a view: no float64 copy of the whole basis per step
            for _ in range(2):
                coef = torch.einsum("vjn,nv->vj", Bj, W.to(op.dtype))
                W = W - torch.einsum("vjn,vj->nv", Bj, coef).to(W.dtype)
            b = torch.linalg.vector_norm(W, dim=0)
            beta[:, j] = b.cpu().numpy()
            for i in np.flatnonzero(beta[:, j] < 1e-10 * max(1.0, np.abs(alpha[:, : j + 1]).max())):
                steps[i] = min(steps[i], j + 1)  # an invariant subspace: this vector's quadrature is exact
            prev, V = V, W / b.clamp_min(1e-300)
            p.update()
    finally:
        p.close()
    nodes, weights = [], []
    for i in range(vectors):
        s = steps[i]
        theta, U = scipy.linalg.eigh_tridiagonal(alpha[i, :s], beta[i, : s - 1])
        nodes.append(np.pad(theta, (0, m - s), constant_values=theta[-1]))
        weights.append(np.pad(U[0] ** 2, (0, m - s)))
    return np.array(nodes), np.array(weights)


def density(model: nn.Module, loss_fn, data, vectors: int = 4, iters: int = 64, grid: int | np.ndarray = 1000,
            sigma: float | None = None, seed: int | None = 0,
            progress: bool | Progress = True) -> tuple[np.ndarray, np.ndarray]:
    """The Hessian's eigenvalue density, (grid, density), by stochastic Lanczos quadrature.

    The density is Σ_j w_j N(t; θ_j, σ²) averaged over the start vectors (nodes θ and weights w
    from `slq_nodes`), so it integrates to 1: the fraction of the n eigenvalues per unit of λ.
    `sigma` (the Gaussian broadening) defaults to 1% of the spectrum's span; `grid` is a number of
    points over [min θ - 5σ, max θ + 5σ] or your own array.
    """
    nodes, weights = slq_nodes(model, loss_fn, data, vectors=vectors, iters=iters, seed=seed, progress=progress)
    return broaden(nodes, weights, grid, sigma)


def broaden(nodes: np.ndarray, weights: np.ndarray, grid: int | np.ndarray = 1000,
            sigma: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Quadrature nodes and weights (vectors, m) as a Gaussian-broadened density over a grid."""
    lo, hi = float(nodes.min()), float(nodes.max())
    if sigma is None:
        sigma = 0.01 * max(hi - lo, 1e-12 * max(1.0, abs(hi)))
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    if np.isscalar(grid):
        if int(grid) < 2:
            raise ValueError(f"grid needs at least 2 points, got {grid}")
        grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, int(grid))
    grid = np.asarray(grid, dtype=float)
    z = (grid[:, None] - nodes.reshape(1, -1)) / sigma  # (points, vectors·m)
    dens = (np.exp(-0.5 * z**2) @ weights.reshape(-1)) / (sigma * math.sqrt(2 * math.pi) * nodes.shape[0])
    return grid, dens


# ---- what an optimizer makes of the curvature ------------------------------------------------
def stability_threshold(opt: torch.optim.Optimizer) -> tuple[float, str]:
    """The stability threshold of the optimizer's update and what it bounds ("hessian" or "preconditioned").

    Gradient descent is stable on a quadratic while λ_max < 2/η; heavy-ball momentum β moves this
    to (2+2β)/η, Nesterov to (2+2β)/(η(1+2β)) (Cohen et al. 2021, appendix). Adam's bound
    (2+2β1)/(η(1-β1)), 38/η for β1 = 0.9, is on the preconditioned sharpness λ_max(P⁻¹H)
    (Cohen et al. 2022, "Adaptive gradient methods at the edge of stability").
    The lr is the run's: a group's lr over its multiplier `lr_mult` (μP's per-layer lrs, which the
    curvature measured against it then carries).
    """
    g = opt.param_groups[0]
    lr = float(g["lr"]) / float(g.get("lr_mult", 1.0))
    if "betas" in g:
        b1 = float(g["betas"][0])
        return (2 + 2 * b1) / (lr * (1 - b1)), "preconditioned"
    beta = float(g.get("momentum", 0.0) or 0.0)
    if isinstance(opt, (torch.optim.RMSprop, torch.optim.Adagrad)):
        return (2 + 2 * beta) / lr, "preconditioned"
    if g.get("nesterov", False):
        return (2 + 2 * beta) / (lr * (1 + 2 * beta)), "hessian"
    return (2 + 2 * beta) / lr, "hessian"


def preconditioner(opt: torch.optim.Optimizer, params: list[torch.Tensor]) -> torch.Tensor | None:
    """The diagonal P of an adaptive optimizer's step, flat over `params`, or None before its first step.

    Adam/AdamW: P = (1 - β1^t)(sqrt(v_t / (1 - β2^t)) + ε) (the first moment's bias correction
    moved into P, as in Cohen et al. 2022); RMSprop: sqrt(v) + ε; Adagrad: sqrt(Σg²) + ε.
    """
    g = opt.param_groups[0]
    parts = []
    for p in params:
        st = opt.state.get(p, {})
        if "exp_avg_sq" in st:
            t = float(st["step"])
            b1, b2 = g["betas"]
            parts.append((1 - b1**t) * ((st["exp_avg_sq"] / (1 - b2**t)).sqrt() + g["eps"]))
        elif "square_avg" in st:
            parts.append(st["square_avg"].sqrt() + g["eps"])
        elif "sum" in st and isinstance(opt, torch.optim.Adagrad):
            parts.append(st["sum"].sqrt() + g["eps"])
        else:
            return None
    return torch.cat([t.detach().reshape(-1) for t in parts])
