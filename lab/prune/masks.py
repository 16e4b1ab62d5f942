"""The mask contract: a pruned parameter `<module>.<p>` has a bool buffer `<p>_keep` on its module.

Same shape as the weight, True = kept, so masks travel with `state_dict`, `copy.deepcopy`, save and
load. The weight's pruned entries are exactly 0, except while a mask decays (schedule `mask_decay`,
`decay.py`): then they hold β times their latent value, β falling to 0. The forward pass stays the
dense module's own: no hooks, no parametrizations (`torch.nn.utils.prune`'s forward pre-hook cost +62 %
step time here).
"""
from __future__ import annotations

import torch
from torch import nn

SUFFIX = "_keep"
PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prunable(model: nn.Module) -> dict[str, nn.Parameter]:
    """Qualified name -> weight of every nn.Linear and nn.Conv*d (biases and norm layers are not pruned)."""
    return {f"{name}.weight" if name else "weight": m.weight for name, m in model.named_modules()
            if isinstance(m, PRUNABLE) and isinstance(getattr(m, "weight", None), nn.Parameter)}


def _owner(model: nn.Module, qualified: str) -> tuple[nn.Module, str]:
    module_name, _, p = qualified.rpartition(".")
    return (model.get_submodule(module_name) if module_name else model), p


def set_mask(model: nn.Module, qualified: str, keep: torch.Tensor, pruned: float = 0.0) -> None:
    """Register (or overwrite) the `<p>_keep` buffer of `qualified` and zero its pruned weights (multiply them
    by `pruned`: a mask decay's β)."""
    module, p = _owner(model, qualified)
    weight = getattr(module, p)
    if keep.shape != weight.shape:
        raise ValueError(f"mask for {qualified} has shape {tuple(keep.shape)}, the weight {tuple(weight.shape)}")
    keep = keep.to(device=weight.device, dtype=torch.bool)
    if hasattr(module, p + SUFFIX):
        getattr(module, p + SUFFIX).copy_(keep)
    else:
        module.register_buffer(p + SUFFIX, keep.clone())
    with torch.no_grad():
        weight.mul_(keep if pruned == 0 else keep.to(weight.dtype) * (1 - pruned) + pruned)


def remove_masks(model: nn.Module) -> None:
    """Drop every `<p>_keep` buffer (the weights keep their zeros)."""
    for module in model.modules():
        for name in [b for b in module._buffers if b.endswith(SUFFIX) and hasattr(module, b[: -len(SUFFIX)])]:
            del module._buffers[name]


def masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Qualified parameter name -> bool mask (True = kept), read from the `<p>_keep` buffers."""
    out = {}
    for name, module in model.named_modules():
        for b, t in module._buffers.items():
            if t is not None and b.endswith(SUFFIX) and isinstance(getattr(module, b[: -len(SUFFIX)], None), torch.Tensor):
                out[f"{name}.{b[: -len(SUFFIX)]}" if name else b[: -len(SUFFIX)]] = t
    return out


def sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of exact zeros per pruned-or-prunable weight and "global", counted from the weights."""
    weights = dict(prunable(model))
    params = dict(model.named_parameters())
    weights.update({k: params[k] for k in masks(model) if k in params})
    out, zeros, total = {}, 0, 0
    with torch.no_grad():
        for name, w in weights.items():
            z = int((w == 0).sum())
            out[name] = z / w.numel()
            zeros, total = zeros + z, total + w.numel()
    out["global"] = zeros / total if total else 0.0
    return out


def mask_sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of pruned (False) mask entries per masked weight and "global" over every prunable weight (an
    unmasked one counts as kept): what the masks say, which the weights' zeros match except during a mask decay."""
    ms, weights = masks(model), prunable(model)
    out = {k: float((~m).sum()) / m.numel() for k, m in ms.items()}
    total = sum(w.numel() for w in weights.values()) + sum(m.numel() for k, m in ms.items() if k not in weights)
    out["global"] = sum(float((~m).sum()) for m in ms.values()) / total if total else 0.0
    return out


def apply_masks(model: nn.Module) -> None:
    """Zero every masked weight, in place, outside autograd."""
    with torch.no_grad():
        for name, keep in masks(model).items():
            module, p = _owner(model, name)
            getattr(module, p).mul_(keep)


def load_state(model: nn.Module, state: dict[str, torch.Tensor], masks_from_state: bool = True) -> None:
    """`model.load_state_dict(state)` whatever masks either side has.

    With `masks_from_state` the model ends with exactly the state's masks (buffers added or dropped);
    otherwise it keeps its current masks and they are applied to the loaded weights (a rollback).
    """
    state = dict(state)
    if masks_from_state:
        remove_masks(model)
        for key in [k for k in state if k.endswith(SUFFIX)]:
            qualified = key[: -len(SUFFIX)]
            try:
                module, p = _owner(model, qualified)
            except AttributeError:
                continue
            if isinstance(getattr(module, p, None), torch.Tensor):
                module.register_buffer(p + SUFFIX, torch.ones_like(state[key], dtype=torch.bool))
        model.load_state_dict(state)
        return
    current = masks(model)
    for key in [k for k in state if k.endswith(SUFFIX)]:
        if key[: -len(SUFFIX)] in current:
            del state[key]
    state.update({k + SUFFIX: v for k, v in current.items()})
    model.load_state_dict(state, strict=False)
    apply_masks(model)


class Masked:
    """The masks of a model as tensors aligned for the step: grads and weights multiplied in one call each.

    Float copies of the bool buffers (a float x float multiply is the fastest kernel); the flat
    gradient buffer, when the run has one, is masked by one flat multiply. With `pruned` > 0 (a mask
    decay) pruned gradients are multiplied by `pruned` instead of 0 and the weights and optimizer state
    are left alone: the decay itself rescales them, every k steps.
    """

    def __init__(self, model: nn.Module, params: list[nn.Parameter], flat: torch.Tensor | None = None,
                 pruned: float = 0.0):
        named = dict(model.named_parameters())
        by_id = {id(p): i for i, p in enumerate(params)}
        pairs = [(named[k], m) for k, m in masks(model).items() if k in named and id(named[k]) in by_id]
        self.params = [p for p, _ in pairs]
        self.bools = [m for _, m in pairs]
        self.decaying = pruned > 0
        self.keep = [m.to(p.dtype) * (1 - pruned) + pruned for p, m in pairs]
        self.flat_keep = None
        if flat is not None and pairs:
            self.flat_keep = torch.ones_like(flat)
            offset = 0
            index = {id(p): m for p, m in zip(self.params, self.keep)}
            for p in params:
                if id(p) in index:
                    self.flat_keep[offset: offset + p.numel()] = index[id(p)].reshape(-1)
                offset += p.numel()

    def __bool__(self) -> bool:
        return bool(self.params)

    def grads(self, flat: torch.Tensor | None = None) -> None:
        """Multiply each masked parameter's gradient by its mask (the flat buffer's, if given and intact)."""
        if flat is not None and self.flat_keep is not None:
            flat.mul_(self.flat_keep)
            return
        grads = [p.grad for p in self.params if p.grad is not None]
        if len(grads) == len(self.params):
            torch._foreach_mul_(grads, self.keep)
        else:
            for p, k in zip(self.params, self.keep):
                if p.grad is not None:
                    p.grad.mul_(k)

    def weights(self) -> None:
        if self.decaying:
            return
        with torch.no_grad():
            torch._foreach_mul_(self.params, self.keep)

    def state(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero the optimizer's per-parameter tensors (momentum, Adam's moments) at pruned entries."""
        if self.decaying:
            return
        with torch.no_grad():
            for p, k in zip(self.params, self.keep):
                for v in optimizer.state.get(p, {}).values():
                    if torch.is_tensor(v) and v.shape == p.shape:
                        v.mul_(k)
