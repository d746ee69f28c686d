"""Transfer progress for the CLI: rich bars on a terminal, one plain line per blob otherwise."""

from __future__ import annotations

import time
from collections.abc import Callable

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


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class RichTransferProgress:
    """Implements ``edgekit.image.pushing.TransferProgress``; use as a context manager."""

    def __init__(self, console: Console, verb: str) -> None:
        self.console = console
        self.verb = verb
        self.live = console.is_terminal
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                  TransferSpeedColumn(), TimeRemainingColumn(), console=console,
                                  transient=False) if self.live else None
        self._tasks: dict[str, TaskID] = {}
        self._started: dict[str, tuple[float, int]] = {}
        self._done: dict[str, int] = {}

    def __enter__(self) -> RichTransferProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def start(self, label: str, total: int) -> Callable[[int], None]:
        self._started[label] = (time.monotonic(), total)
        self._done[label] = 0
        if self._progress is not None:
            task = self._progress.add_task(f"{self.verb} {label}", total=total)
            self._tasks[label] = task
            progress = self._progress

            def advance(n: int) -> None:
                self._done[label] += n
                progress.update(task, advance=n)

            return advance

        def count(n: int) -> None:
            self._done[label] += n

        return count

    def finish(self, label: str, outcome: str = "done") -> None:
        began, total = self._started.pop(label, (time.monotonic(), 0))
        moved = self._done.pop(label, 0)
        if self._progress is not None:
            if label in self._tasks and outcome in ("existing", "mounted"):
                note = "already there" if outcome == "existing" else "mounted"
                self._progress.update(self._tasks[label], completed=total,
                                      description=f"{self.verb} {label} ({note})")
            return
        seconds = time.monotonic() - began
        if outcome == "failed":
            return
        if outcome in ("existing", "mounted"):
            what = "already there" if outcome == "existing" else "mounted from another repository"
            self.console.print(f"{self.verb} {label}: {what} ({_size(total)})")
        else:
            rate = f", {_size(moved / seconds)}/s" if seconds > 0 else ""
            self.console.print(f"{self.verb} {label}: {_size(moved)} in {seconds:.1f}s{rate}")
