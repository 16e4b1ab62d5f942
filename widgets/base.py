"""What every lab panel shares: a run, the session's Feed, and clean-up when the session ends."""
from __future__ import annotations

import panel as pn
import param
from panel.viewable import Viewer

from trainlab import Run
from trainlab.jobs import Job

from .feed import Feed


class LabPanel(Viewer):
    """A panel over one Run that reads it through a Feed (the one way data reaches the browser).

    Inside the served dashboard it is given the dashboard's Feed and registers its sources and
    tick listeners there; on its own (a notebook cell) it makes, fills and starts a Feed of its own.
    A long analysis runs as a `Job` (its own thread); the panel polls it on the Feed's tick and
    publishes results by `run.history.put_snapshot`, so plots read them through `feed.snapshot`.
    """

    run = param.ClassSelector(class_=Run, doc="the run this panel reads and controls")

    def __init__(self, run: Run, feed: Feed | None = None, **params):
        super().__init__(run=run, **params)
        self._own_feed = feed is None
        self.feed = Feed(run.history) if feed is None else feed
        self.jobs: list[Job] = []

    def _ready(self) -> None:
        """Call at the end of a subclass's __init__: a panel with its own Feed starts it."""
        if self._own_feed:
            self.feed.tick()  # the run's past before the first render
            self.feed.start()

    def start_job(self, fn, *args, **kwargs) -> Job:
        """Run fn as a Job that close() will cancel; finished jobs (and their results) are let go."""
        job = Job(fn, *args, **kwargs)
        self.jobs = [j for j in self.jobs if not j.done] + [job]
        return job

    def close(self) -> None:
        """Cancel running analyses and stop an own Feed (a session ended, or the run was replaced)."""
        for job in self.jobs:
            job.cancel()
        if self._own_feed:
            self.feed.stop()

    @staticmethod
    def progress_bar() -> pn.indicators.Progress:
        return pn.indicators.Progress(value=0, max=100, visible=False, sizing_mode="stretch_width", height=14)

    @staticmethod
    def show_progress(bar: pn.indicators.Progress, job: Job | None) -> None:
        """Move a progress bar to a job's progress; hidden when no job runs."""
        running = job is not None and not job.done
        bar.visible = running
        if running:
            bar.value = int(100 * job.progress.fraction)
