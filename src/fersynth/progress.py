"""Rich progress bars shared by the long-running stages, and a silent stand-in when they are off."""

from __future__ import annotations


class NullBar:
    """Accepts the calls a rich Progress gets and does nothing (progress bars off)."""

    console = type("C", (), {"print": staticmethod(lambda *a, **k: None)})()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

    def add_task(self, *a, **k):
        return 0

    def update(self, *a, **k):
        pass


def progress_bar(enabled: bool, rate: bool = False):
    """A rich Progress (description, bar, done/total, [rate,] elapsed, remaining) or a NullBar.

    With `rate`, a column shows items per second since the task's `start` field; a task's
    `unit` field names the items (default "img")."""
    if not enabled:
        return NullBar()
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task):
            done = task.completed - task.fields.get("start", 0)
            s = done / task.elapsed if task.elapsed and done > 0 else None
            unit = task.fields.get("unit", "img")
            return Text(f"{s:.2f} {unit}/s" if s else f"- {unit}/s")

    cols = ["[progress.description]{task.description}", BarColumn(), MofNCompleteColumn()]
    if rate:
        cols.append(RateColumn())
    return Progress(*cols, TimeElapsedColumn(), TimeRemainingColumn())
