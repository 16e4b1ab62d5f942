"""Weight spectra while the run trains: the power-law α of every weight matrix, and its ESD to draw."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainlab.analysis.spectrum import esd, matrix_names, views

from .base import Columns, Probe, layer_columns

if TYPE_CHECKING:
    from trainlab.run import Run


class SpectrumProbe(Probe):
    """α of every weight matrix every k steps, in columns `alpha/<layer>` (KS fit) and `alpha_hill/<layer>`,
    and the snapshot `esd`.

    The snapshot is `{"layers": views(...)}` (see `views`), what SpectrumPanel draws.
    """

    name = "spectrum"

    def __init__(self, every: int = 50, snapshot: bool = True):
        super().__init__(every)
        self.snapshot = snapshot

    def columns(self, run: Run) -> Columns:
        names = matrix_names(run.model)
        hill = {f"alpha_hill/{n}": f"{n} (Hill)" for n in names}
        return Columns({**layer_columns(run, "alpha", names), **hill}, snapshots=("esd",) if self.snapshot else ())

    def measure(self, run: Run) -> dict[str, Any]:
        frame = esd(run.model, progress=False)
        out: dict[str, Any] = {}
        for r in frame.itertuples():
            out[f"alpha/{r.name}"], out[f"alpha_hill/{r.name}"] = float(r.alpha), float(r.alpha_hill)
        if self.snapshot:
            out["esd"] = {"layers": views(frame), "cancelled": False}
        return out
