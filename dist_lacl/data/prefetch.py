"""The prefetch thread: the next steps' batches read and tokenised while the current step trains."""

from __future__ import annotations

import atexit
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class Prefetcher:
    """Runs make(plan) for planned steps in one daemon thread, in order, so the next step's records are
    read and tokenised while the current step trains (tokenizers and torch release the GIL)."""

    JOIN_S = 60.0

    def __init__(self, make: Callable[[Any], Any]):
        self.make, self.todo = make, queue.Queue()
        self.thread = threading.Thread(target=self._work, daemon=True, name="dist-lacl-prefetch")
        self.thread.start()
        atexit.register(self.close)

    def submit(self, plan) -> Future:
        """The future result of make(plan) (plan: a batches.StepPlan)."""
        future = Future()
        self.todo.put((plan, future))
        return future

    def close(self) -> None:
        """Cancel the steps not started and wait for the one in hand. At exit too: a daemon thread still
        inside tokenizer or torch code when the interpreter finalises can abort the process with
        "terminate called without an active exception", a non-zero exit after a finished run."""
        atexit.unregister(self.close)
        while True:
            try:
                _, future = self.todo.get_nowait()
            except queue.Empty:
                break
            future.cancel()
        self.todo.put(None)
        self.thread.join(self.JOIN_S)

    def _work(self):
        while (item := self.todo.get()) is not None:
            plan, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(self.make(plan))
            except BaseException as e:  # re-raised in the training loop by future.result()
                future.set_exception(e)
