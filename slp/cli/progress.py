"""Drawing the model layer's progress reports (`slp.models.fetch.Progress`) as rich progress bars."""

from __future__ import annotations

from typing import Optional

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


class Bars:
    """A context manager and a `Progress` callback: one bar per label (size, speed, time left).

    A bar only makes sense on a terminal; in logs and pipes it would be one wrapped final frame, so
    there it draws nothing.
    """

    def __init__(self) -> None:
        self.console = Console(stderr=True)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=24), DownloadColumn(),
                                 TransferSpeedColumn(), TimeRemainingColumn(), console=self.console,
                                 disable=not self.console.is_terminal)
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> "Bars":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, label: str, done: int, total: Optional[int]) -> None:
        task = self.tasks.get(label)
        if task is None:
            # A resumed download starts its bar at what it had, so the speed is this run's.
            task = self.tasks[label] = self.progress.add_task(label, total=total, completed=done)
        self.progress.update(task, completed=done, total=total)
