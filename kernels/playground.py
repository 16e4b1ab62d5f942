"""The 2-D playground's hot loops: test functions, their gradients, and nine optimizer update rules.

Everything is plain Numba over float64 arrays and int codes, with no project imports: the lab side
(`trainlab.playground`) maps names to the codes below and validates input. One call computes a
batch of trajectories, each with its own update rule (an int code), hyperparameter row and start
point, so 8 optimizers x 1,000 steps, or a whole lr grid for the fair race, is a single call.

Each update rule mirrors a reference implementation line by line, including where eps goes and the
bias corrections, so that the tests can require the same trajectory to 1e-8 relative:
SGD, heavy-ball momentum and Nesterov = torch.optim.SGD; Adam, AdamW, RMSprop, Adagrad = torch.optim;
Lion and Adan = pytorch_optimizer.Lion and pytorch_optimizer.Adan (default options).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

# function codes; the parameter row `fp` of each is listed beside it
QUADRATIC = 0   # fp = (condition number k, cos a, sin a): 0.5 (u^2 / k + v^2), (u, v) = (x, y) rotated by a
ROSENBROCK = 1  # fp = (a, b): (a - x)^2 + b (y - x^2)^2
BEALE = 2       # fp = (): sum_i (c_i - x + x y^i)^2, c = 1.5, 2.25, 2.625
HIMMELBLAU = 3  # fp = (): (x^2 + y - 11)^2 + (x + y^2 - 7)^2
RASTRIGIN = 4   # fp = (A,): 2 A + sum (x^2 - A cos(2 pi x))
SADDLE = 5      # fp = (c,): 0.5 c x^2 - 0.5 y^2 + 0.25 y^4: a saddle at 0, minima at (0, +-1)
VALLEYS = 6     # fp = (k, x1, y1, x2, y2): q1 q2 / (q1 + q2), q1 sharp along x, q2 sharp along y
N_FUNCTIONS = 7

# update-rule codes; hp row = (lr, then the rule's own hyperparameters in this order)
SGD = 0        # weight_decay
MOMENTUM = 1   # momentum, dampening, weight_decay
NESTEROV = 2   # momentum, weight_decay
ADAM = 3       # beta1, beta2, eps, weight_decay (added to the gradient)
ADAMW = 4      # beta1, beta2, eps, weight_decay (decoupled)
RMSPROP = 5    # alpha, eps, momentum, weight_decay
ADAGRAD = 6    # lr_decay, eps, weight_decay
LION = 7       # beta1, beta2, weight_decay (decoupled)
ADAN = 8       # beta1, beta2, beta3, eps, weight_decay (proximal: pytorch_optimizer's weight_decouple=False)
N_RULES = 9
N_HP = 6       # width of a hyperparameter row


@njit(cache=True)
def _value_grad(code, fp, x, y):
    """f(x, y) and its gradient for function `code` with parameters `fp`."""
    if code == QUADRATIC:
        k, c, s = fp[0], fp[1], fp[2]
        u = c * x + s * y
        v = -s * x + c * y
        gu = u / k
        return 0.5 * (u * u / k + v * v), c * gu - s * v, s * gu + c * v
    if code == ROSENBROCK:
        a, b = fp[0], fp[1]
        r = y - x * x
        return (a - x) ** 2 + b * r * r, -2.0 * (a - x) - 4.0 * b * x * r, 2.0 * b * r
    if code == BEALE:
        y2 = y * y
        y3 = y2 * y
        t1 = 1.5 - x + x * y
        t2 = 2.25 - x + x * y2
        t3 = 2.625 - x + x * y3
        gx = 2.0 * (t1 * (y - 1.0) + t2 * (y2 - 1.0) + t3 * (y3 - 1.0))
        gy = 2.0 * x * (t1 + 2.0 * t2 * y + 3.0 * t3 * y2)
        return t1 * t1 + t2 * t2 + t3 * t3, gx, gy
    if code == HIMMELBLAU:
        a = x * x + y - 11.0
        b = x + y * y - 7.0
        return a * a + b * b, 4.0 * x * a + 2.0 * b, 2.0 * a + 4.0 * y * b
    if code == RASTRIGIN:
        A = fp[0]
        w = 2.0 * math.pi
        f = 2.0 * A + x * x - A * math.cos(w * x) + y * y - A * math.cos(w * y)
        return f, 2.0 * x + A * w * math.sin(w * x), 2.0 * y + A * w * math.sin(w * y)
    if code == SADDLE:
        c = fp[0]
        return 0.5 * c * x * x - 0.5 * y * y + 0.25 * y ** 4, c * x, -y + y ** 3
    if code == VALLEYS:
        # q1 q2 / (q1 + q2) is exactly 0 at either centre and, near one, equals that centre's
        # quadratic to second order: two minima whose Hessians are diag(1, 1/k) and diag(1/k, 1)
        k = fp[0]
        dx1, dy1, dx2, dy2 = x - fp[1], y - fp[2], x - fp[3], y - fp[4]
        q1 = 0.5 * (dx1 * dx1 + dy1 * dy1 / k)
        q2 = 0.5 * (dx2 * dx2 / k + dy2 * dy2)
        s = q1 + q2
        w1 = (q2 / s) ** 2
        w2 = (q1 / s) ** 2
        return q1 * q2 / s, w1 * dx1 + w2 * dx2 / k, w1 * dy1 / k + w2 * dy2
    return math.nan, math.nan, math.nan


@njit(cache=True)
def _trajectory(fcode, fp, rule, hp, x0, y0, steps, limit, xy, loss):
    """One trajectory into xy (steps + 1, 2) and loss (steps + 1,); returns the points recorded.

    Recording stops at the first non-finite value or coordinate beyond `limit` (a diverged run).
    """
    p = np.array([x0, y0])
    g = np.zeros(2)
    m = np.zeros(2)  # momentum buffer / first moment
    v = np.zeros(2)  # second moment / squared-gradient average / Adagrad sum
    d = np.zeros(2)  # Adan: average of gradient differences
    prev = np.zeros(2)  # Adan: previous gradient
    lr = hp[0]
    for t in range(steps + 1):
        f, g[0], g[1] = _value_grad(fcode, fp, p[0], p[1])
        if not (math.isfinite(f) and abs(p[0]) <= limit and abs(p[1]) <= limit):
            return t
        xy[t, 0] = p[0]
        xy[t, 1] = p[1]
        loss[t] = f
        if t == steps:
            return t + 1
        step = t + 1
        if rule == SGD:
            wd = hp[1]
            for i in range(2):
                p[i] -= lr * (g[i] + wd * p[i])
        elif rule == MOMENTUM or rule == NESTEROV:
            mu = hp[1]
            damp = hp[2] if rule == MOMENTUM else 0.0
            wd = hp[3] if rule == MOMENTUM else hp[2]
            for i in range(2):
                gi = g[i] + wd * p[i]
                if step == 1:
                    m[i] = gi  # torch starts the buffer at the first gradient, undamped
                else:
                    m[i] = mu * m[i] + (1.0 - damp) * gi
                if rule == NESTEROV:
                    p[i] -= lr * (gi + mu * m[i])
                else:
                    p[i] -= lr * m[i]
        elif rule == ADAM or rule == ADAMW:
            b1, b2, eps, wd = hp[1], hp[2], hp[3], hp[4]
            bc1 = 1.0 - b1 ** step
            bc2 = 1.0 - b2 ** step
            for i in range(2):
                gi = g[i]
                if rule == ADAMW:
                    p[i] *= 1.0 - lr * wd
                else:
                    gi += wd * p[i]
                m[i] += (1.0 - b1) * (gi - m[i])
                v[i] = b2 * v[i] + (1.0 - b2) * gi * gi
                p[i] -= (lr / bc1) * m[i] / (math.sqrt(v[i]) / math.sqrt(bc2) + eps)
        elif rule == RMSPROP:
            alpha, eps, mu, wd = hp[1], hp[2], hp[3], hp[4]
            for i in range(2):
                gi = g[i] + wd * p[i]
                v[i] = alpha * v[i] + (1.0 - alpha) * gi * gi
                u = gi / (math.sqrt(v[i]) + eps)
                if mu > 0.0:
                    m[i] = mu * m[i] + u
                    u = m[i]
                p[i] -= lr * u
        elif rule == ADAGRAD:
            lr_decay, eps, wd = hp[1], hp[2], hp[3]
            clr = lr / (1.0 + (step - 1) * lr_decay)
            for i in range(2):
                gi = g[i] + wd * p[i]
                v[i] += gi * gi
                p[i] -= clr * gi / (math.sqrt(v[i]) + eps)
        elif rule == LION:
            b1, b2, wd = hp[1], hp[2], hp[3]
            for i in range(2):
                p[i] *= 1.0 - wd * lr
                c = m[i] + (1.0 - b1) * (g[i] - m[i])
                m[i] += (1.0 - b2) * (g[i] - m[i])
                p[i] -= lr * (1.0 if c > 0.0 else (-1.0 if c < 0.0 else 0.0))  # torch.sign: sign(0) = 0
        elif rule == ADAN:
            b1, b2, b3, eps, wd = hp[1], hp[2], hp[3], hp[4], hp[5]
            bc1 = 1.0 - b1 ** step
            bc2 = 1.0 - b2 ** step
            bc3_sqrt = math.sqrt(1.0 - b3 ** step)
            for i in range(2):
                gi = g[i]
                diff = 0.0 if step == 1 else gi - prev[i]  # Adan starts with no gradient difference
                m[i] += (1.0 - b1) * (gi - m[i])
                d[i] += (1.0 - b2) * (diff - d[i])
                z = gi + b2 * diff
                v[i] = b3 * v[i] + (1.0 - b3) * z * z
                den = math.sqrt(v[i]) / bc3_sqrt + eps
                p[i] -= (lr / bc1) * m[i] / den
                p[i] -= (lr * b2 / bc2) * d[i] / den
                p[i] /= 1.0 + lr * wd
                prev[i] = gi
        else:
            return 0
    return steps + 1


@njit(cache=True)
def _run_serial(fcode, fp, rules, hps, starts, steps, limit, xy, loss, n):
    for j in range(rules.shape[0]):
        n[j] = _trajectory(fcode, fp, rules[j], hps[j], starts[j, 0], starts[j, 1], steps, limit, xy[j], loss[j])


@njit(cache=True, parallel=True)
def _run_parallel(fcode, fp, rules, hps, starts, steps, limit, xy, loss, n):
    # each trajectory writes only its own slice of xy, loss and n
    for j in prange(rules.shape[0]):
        n[j] = _trajectory(fcode, fp, rules[j], hps[j], starts[j, 0], starts[j, 1], steps, limit, xy[j], loss[j])


PARALLEL_FROM = 32  # below this many trajectories, waking threads costs more than it saves


def trajectories(fcode: int, fp: np.ndarray, rules: np.ndarray, hps: np.ndarray, starts: np.ndarray, steps: int,
                 limit: float = 1e6):
    """Batched trajectories: rules (T,) int codes, hps (T, N_HP), starts (T, 2).

    Returns xy (T, steps + 1, 2), loss (T, steps + 1) and n (T,): trajectory j is xy[j, :n[j]];
    n[j] < steps + 1 means it diverged (non-finite, or a coordinate beyond `limit`) at point n[j].
    """
    rules = np.ascontiguousarray(rules, dtype=np.int64)
    hps = np.ascontiguousarray(hps, dtype=np.float64)
    starts = np.ascontiguousarray(starts, dtype=np.float64)
    fp = np.ascontiguousarray(fp, dtype=np.float64)
    T = rules.shape[0]
    if not 0 <= fcode < N_FUNCTIONS:
        raise ValueError(f"function code {fcode} outside 0..{N_FUNCTIONS - 1}")
    if rules.ndim != 1 or hps.shape != (T, N_HP) or starts.shape != (T, 2):
        raise ValueError(f"want rules (T,), hps (T, {N_HP}), starts (T, 2); "
                         f"got {rules.shape}, {hps.shape}, {starts.shape}")
    if T and (rules.min() < 0 or rules.max() >= N_RULES):
        raise ValueError(f"update-rule codes must lie in 0..{N_RULES - 1}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    xy = np.full((T, steps + 1, 2), np.nan)
    loss = np.full((T, steps + 1), np.nan)
    n = np.zeros(T, dtype=np.int64)
    run = _run_parallel if T >= PARALLEL_FROM else _run_serial
    run(fcode, fp, rules, hps, starts, int(steps), float(limit), xy, loss, n)
    return xy, loss, n


@njit(cache=True)
def _evaluate(fcode, fp, x, y, f, gx, gy):
    for i in range(x.shape[0]):
        f[i], gx[i], gy[i] = _value_grad(fcode, fp, x[i], y[i])


def evaluate(fcode: int, fp: np.ndarray, x, y) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """f and its gradient (gx, gy) at points x, y (arrays broadcast to one shape)."""
    if not 0 <= fcode < N_FUNCTIONS:
        raise ValueError(f"function code {fcode} outside 0..{N_FUNCTIONS - 1}")
    x, y = np.broadcast_arrays(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
    shape = x.shape
    x, y = np.ascontiguousarray(x).ravel(), np.ascontiguousarray(y).ravel()
    f, gx, gy = np.empty_like(x), np.empty_like(x), np.empty_like(x)
    _evaluate(fcode, np.ascontiguousarray(fp, dtype=np.float64), x, y, f, gx, gy)
    return f.reshape(shape), gx.reshape(shape), gy.reshape(shape)


@njit(cache=True, parallel=True)
def _grid(fcode, fp, xs, ys, out):
    for r in prange(ys.shape[0]):
        for c in range(xs.shape[0]):
            out[r, c] = _value_grad(fcode, fp, xs[c], ys[r])[0]


def loss_grid(fcode: int, fp: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """f on the grid: out[r, c] = f(xs[c], ys[r]), shape (len(ys), len(xs)) (an image's row order)."""
    if not 0 <= fcode < N_FUNCTIONS:
        raise ValueError(f"function code {fcode} outside 0..{N_FUNCTIONS - 1}")
    xs = np.ascontiguousarray(xs, dtype=np.float64)
    ys = np.ascontiguousarray(ys, dtype=np.float64)
    out = np.empty((ys.shape[0], xs.shape[0]))
    _grid(fcode, np.ascontiguousarray(fp, dtype=np.float64), xs, ys, out)
    return out
