"""Stopping on a signal: SIGTERM, SIGUSR1 (SLURM's warning before the time limit) and Ctrl-C ask the
run to checkpoint after the step in flight and exit."""

from __future__ import annotations

import logging
import signal
import time

from . import distributed as dist

log = logging.getLogger(__name__)


class StopSignal:
    """SIGTERM, SIGUSR1 (SLURM's warning before the time limit) and SIGINT (Ctrl-C) ask for a checkpoint
    and a clean exit.

    The handler only sets a flag: the step in flight finishes, so a signal cannot interrupt a checkpoint
    write halfway. A second Ctrl-C stops at once (KeyboardInterrupt): every write is atomic, so the run
    directory keeps its newest complete checkpoint.
    """

    # Launchers (torchrun's agent) forward the terminal's SIGINT to their workers, which then see one
    # press twice within milliseconds; only a SIGINT this long after the first counts as a second press.
    SECOND_PRESS_S = 0.5

    def __init__(self):
        self.received: int | None = None
        self.first_sigint: float | None = None
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if signum == signal.SIGINT:
            now = time.monotonic()
            if self.first_sigint is not None and now - self.first_sigint >= self.SECOND_PRESS_S:
                signal.signal(signal.SIGINT, signal.default_int_handler)
                raise KeyboardInterrupt
            self.first_sigint = self.first_sigint or now
        if self.received is None:
            log.warning("received signal %d: will checkpoint after this step and exit%s", signum,
                        " (Ctrl-C again to stop at once)" if signum == signal.SIGINT else "")
        self.received = signum

    def requested(self) -> bool:
        """*Collective.* True on every rank if any rank received a signal."""
        return dist.all_reduce_max(1.0 if self.received is not None else 0.0) > 0
