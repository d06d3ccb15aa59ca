"""A clean stop of the studio on SIGTERM and SIGINT, also when it runs as PID 1.

``docker stop``, a Space restart or a process manager sends SIGTERM; a terminal sends SIGINT
(Ctrl-C). Python's default for SIGTERM is to die on the spot (no DuckDB checkpoint, a WAL
left to replay), and a process that is PID 1 of its PID namespace (a container without an
init, ``unshare --pid``) gets *no* default action at all: the kernel drops SIGTERM and SIGINT
unless the process installed a handler, so ``docker stop`` waits its grace period and then
SIGKILLs it. ``Shutdown`` installs explicit handlers for both, whatever the PID, so the
studio's main thread can stop the server and close the project (the last connection closed
checkpoints the DuckDB file) and then exit with code 0.

A second signal while that close is under way (a stuck shutdown, Ctrl-C pressed twice)
exits at once with ``128 + signal``: the project file stays consistent (DuckDB replays its
WAL at the next open; workers write their outputs atomically).

Job workers are not signalled: they run in their own sessions and are left to finish (see
``docs/RELIABILITY.md``, "Stopping the studio").
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any, Callable

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Shutdown:
    """Catch SIGTERM and SIGINT while the studio serves (a context manager, main thread only).

    ``wait(running)`` blocks until a signal arrives or ``running()`` turns false and returns
    the signal's name (None when the server stopped by itself). On leaving the ``with``
    block the previous handlers come back. Outside the main thread (an embedding app, a test
    thread) no handler can be installed: ``wait`` then only watches ``running``.
    """

    def __init__(self) -> None:
        self.received: str | None = None
        self._event = threading.Event()
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "Shutdown":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_signal(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            # the second signal: the shutdown is stuck or the user insists
            os.write(2, f"{name} again: exiting now\n".encode())
            os._exit(128 + signum)
        self.received = name
        self._event.set()

    def wait(self, running: Callable[[], bool], interval: float = 0.5) -> str | None:
        """Block until a signal arrives or ``running()`` is false; the signal's name or None."""
        while self.received is None and running():
            self._event.wait(interval)
        if self.received:
            log.info("received %s: stopping the studio", self.received)
        return self.received
