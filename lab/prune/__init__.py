"""trainlab.prune: masks beside the weights, criteria, layer allocations, N:M and block patterns, schedules.

The mask contract (`masks.py`): a pruned `<module>.<p>` has a bool buffer `<p>_keep` on its module, True =
kept, and its pruned entries are exactly 0. `Run(pruning=...)` masks gradients before the optimizer step
and weights after it; the forward pass stays the dense module's own.
"""
from .allocations import allocations, erk_densities, lamp_scores
from .compact import (Compactor, CompactReport, Preview, UnstructuredReport, channel_masks, compact, count, measure,
                      report, unstructured_report)
from .export import to_torch
from .criteria import criteria
from .masks import apply_masks, load_state, mask_sparsity, masks, prunable, remove_masks, set_mask, sparsity
from .repair import repair
from .eoc import edge_of_chaos
from .rescale import activation_variance, rescalings
from .schedules import prune_schedules
from .sparsifier import Sparsifier, as_sparsifier
from .structured import nm_mask

schedules = prune_schedules


def preview(model, spec, steps: int = 2000, points: int = 400, start: int = 0):
    """The planned sparsity over steps for a pruning spec, {"step", "sparsity"} (like `trainlab.schedules.preview`
    for the lr); `start` is the run's step the pruning counts from (a run's own: `run.pruning_state.sparsifier.start`)."""
    sp = as_sparsifier(model, spec)
    sp.start = start
    return sp.preview(steps, points)


__all__ = ["CompactReport", "Compactor", "Preview", "Sparsifier", "UnstructuredReport", "activation_variance",
           "allocations", "apply_masks", "as_sparsifier", "channel_masks", "compact", "count", "criteria", "edge_of_chaos",
           "erk_densities", "lamp_scores", "load_state", "mask_sparsity", "masks", "measure", "nm_mask", "preview", "prunable",
           "prune_schedules", "remove_masks", "repair", "report", "rescalings", "schedules", "set_mask", "sparsity", "to_torch",
           "unstructured_report"]
