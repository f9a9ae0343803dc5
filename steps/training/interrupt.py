"""Stopping a training run on SIGTERM or SIGINT (a preempted machine, ``kill``, Ctrl-C).

:class:`StopSignals` turns the first such signal into :class:`Interrupted` (a
``KeyboardInterrupt`` that knows its signal, so the process exits with 128 + its number).
Inside :meth:`StopSignals.critical` (writing and logging an epoch's checkpoint) the signal
waits until the block ends, so the last complete epoch's checkpoint is always whole. Later
signals, and the first one once :meth:`StopSignals.quiet` was called, are only recorded:
the run can then be ended as KILLED without being interrupted again.

A signal may also surface as another error: under DDP a rank whose peer stopped first sees
its collective fail. :meth:`StopSignals.quiet` says whether a signal came, whatever the
exception. Nothing here runs at import time.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(KeyboardInterrupt):
    """Training stopped by ``signum`` (SIGTERM or SIGINT)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = int(signum)


class StopSignals:
    """While entered: SIGTERM and SIGINT raise :class:`Interrupted` once (see the module)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._armed = True
        self._critical = 0
        self._pending = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # only there can it listen
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is None:
            self.received = signum
        if not self._armed:
            return
        if self._critical or sys.exc_info()[0] is not None:
            # In a critical block, or in an except block (an error is being handled, maybe
            # the cleanup of this very stop): raised when the critical block ends.
            self._pending = True
            return
        self._armed = False  # at most one Interrupted: cleanup is never interrupted again
        raise Interrupted(signum)

    @contextmanager
    def critical(self) -> Iterator[None]:
        """A block a signal does not cut short; it is raised when the block ends."""
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1
        if not self._critical and self._pending and self._armed:
            self._pending = False
            self._armed = False
            raise Interrupted(self.received or signal.SIGTERM)

    def quiet(self) -> int | None:
        """Stop raising; return the signal received, if any (safe while one is pending)."""
        while True:
            try:
                self._armed = False
                return self.received
            except Interrupted:  # the handler ran just now, between two instructions
                continue
