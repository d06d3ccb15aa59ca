"""Progress callbacks and cancel tokens shared by every engine loop.

Loops report through a ``ProgressFn`` and poll a ``CancelToken``; the CLI turns the reports
into tqdm bars, a worker process writes them to ``progress.jsonl``, the studio reads that.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from engine.errors import Cancelled


@dataclass
class ProgressEvent:
    """One report from a loop.

    Attributes:
        stage: short name of the loop ("train", "sample", "encode", ...).
        step: steps done so far (0..total).
        total: total steps of this stage.
        metrics: scalar metrics at this step (e.g. ``{"loss": 0.12}``).
        message: optional human-readable line.
        preview: optional path of a preview image written by the loop.
    """

    stage: str
    step: int
    total: int
    metrics: dict[str, float] = field(default_factory=dict)
    message: str = ""
    preview: str | None = None
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "step": self.step,
            "total": self.total,
            "metrics": self.metrics,
            "message": self.message,
            "preview": self.preview,
            "time": self.time,
        }


class ProgressFn(Protocol):
    def __call__(self, event: ProgressEvent) -> None: ...


def no_progress(event: ProgressEvent) -> None:
    """A progress callback that ignores every report."""


class CancelToken:
    """Set from outside (a signal handler, a UI button); polled by loops between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled by the user")


class TqdmProgress:
    """A ProgressFn that shows one tqdm bar per stage (for the command line)."""

    def __init__(self, disable: bool = False) -> None:
        self._bars: dict[str, Any] = {}
        self._done: set[str] = set()
        self._disable = disable

    def __call__(self, event: ProgressEvent) -> None:
        from tqdm.auto import tqdm

        bar = self._bars.get(event.stage)
        if bar is None and event.step >= event.total and event.stage in self._done:
            return  # a repeated final report of a bar already closed
        if bar is None or bar.total != event.total:
            if bar is not None:
                bar.close()
            bar = tqdm(total=event.total, desc=event.stage, leave=True, disable=self._disable,
                       dynamic_ncols=True)
            self._bars[event.stage] = bar
        if event.metrics:
            bar.set_postfix({k: f"{v:.4g}" for k, v in event.metrics.items()}, refresh=False)
        if event.step != bar.n:  # through update(): tqdm derives the rate from increments
            bar.update(event.step - bar.n)
        if event.step >= event.total:
            bar.close()  # prints the final state once
            self._bars.pop(event.stage, None)
            self._done.add(event.stage)
        else:
            bar.refresh()
            self._done.discard(event.stage)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()


class LineProgress:
    """A ProgressFn for a log file or a pipe: one plain line per stage at each tenth of its
    work (and at its end), instead of a bar redrawn with carriage returns."""

    def __init__(self, stream: Any = None, parts: int = 10) -> None:
        self._stream = stream
        self._parts = parts
        self._last: dict[str, int] = {}  # stage -> last tenth printed
        self._step: dict[str, tuple[int, int]] = {}  # stage -> (step, total) last seen

    def __call__(self, event: ProgressEvent) -> None:
        import sys

        total = max(1, event.total)
        seen = self._step.get(event.stage)
        if seen is not None and (event.step < seen[0] or event.total != seen[1]):
            self._last.pop(event.stage, None)  # the stage runs again (the next job's loop)
        self._step[event.stage] = (event.step, event.total)
        part = min(self._parts, event.step * self._parts // total)
        if self._last.get(event.stage, -1) >= part and event.step < total:
            return
        if event.step >= total and self._last.get(event.stage) == self._parts + 1:
            return  # a repeated final report
        self._last[event.stage] = self._parts + 1 if event.step >= total else part
        metrics = " ".join(f"{k}={v:.4g}" for k, v in event.metrics.items())
        line = f"{event.stage}: {event.step}/{event.total} ({100 * event.step // total} %)"
        line += f" {metrics}" if metrics else ""
        line += f" {event.message}" if event.message else ""
        print(line, file=self._stream or sys.stderr, flush=True)

    def close(self) -> None:
        self._last.clear()
        self._step.clear()


def console_progress() -> TqdmProgress | LineProgress:
    """Bars on a terminal; plain lines when stderr is a file or a pipe."""
    import sys

    return TqdmProgress() if sys.stderr.isatty() else LineProgress()


def every(n_steps: int, total: int, step: int) -> bool:
    """True when ``step`` should be reported: every ``n_steps`` and on the last step."""
    return step == total or step % max(1, n_steps) == 0


ProgressLike = Callable[[ProgressEvent], None]
