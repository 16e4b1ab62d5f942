"""The masks as `torch.nn.utils.prune` buffers (`weight_orig`, `weight_mask`), for users who export."""
from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils import prune


def to_torch(model: nn.Module) -> nn.Module:
    """A copy whose `<p>_keep` masks became `torch.nn.utils.prune` masks (`custom_from_mask`): its forward
    equals the masked model's, and `torch.nn.utils.prune.remove(module, "weight")` gives plain weights
    with the same zeros. Note torch's forward pre-hook recomputes weight_orig * mask on every call."""
    out = copy.deepcopy(model)
    found = 0
    for mn, m in out.named_modules():
        for bn in [b for b, buf in m.named_buffers(recurse=False) if b.endswith("_keep")]:
            pname = bn[:-5]
            p = m._parameters.get(pname)
            if p is None:
                raise ValueError(f"to_torch: buffer {mn + '.' if mn else ''}{bn} masks no parameter named "
                                 f"{pname!r} (module parameters: {list(m._parameters)})")
            keep = m._buffers.pop(bn)
            prune.custom_from_mask(m, pname, keep.to(p.dtype))
            found += 1
    if not found:
        raise ValueError("to_torch: the model has no masks (no `<parameter>_keep` buffers); mask it first, "
                         "e.g. trainlab.prune.channel_masks(model, ratio)")
    return out
