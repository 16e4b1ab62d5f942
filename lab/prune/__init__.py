"""Pruning and sparsity (issue 13). Compacting: channel masks, a smaller copy, its measured cost; export."""
from .compact import (Compactor, CompactReport, Preview, UnstructuredReport, channel_masks, compact,  # noqa: F401
                      count, measure, report, unstructured_report)
from .export import to_torch  # noqa: F401
