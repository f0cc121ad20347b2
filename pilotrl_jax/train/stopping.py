"""Stopping a run cleanly: SIGTERM (e.g. TPU preemption) sets a flag, every host agrees to stop at
the same step, the step's checkpoint is saved, and the process exits with status 143."""
from __future__ import annotations

import signal

from pilotrl_jax import distributed as dist
from pilotrl_jax.train import multihost


class StopFlag:
    """Set by SIGTERM/SIGINT: the trainer saves at the end of the current step and exits."""

    def __init__(self):
        self.set = False
        self._old = {}

    def __call__(self) -> bool:
        return self.set

    def install(self) -> "StopFlag":
        """Catch SIGTERM (preemption) in the main thread."""
        def handler(signum, frame):
            print(f"received signal {signum}: saving a checkpoint at the end of this step", flush=True)
            self.set = True

        try:
            self._old[signal.SIGTERM] = signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread
            pass
        return self

    def uninstall(self) -> None:
        """Restore the previous handlers."""
        for s, h in self._old.items():
            signal.signal(s, h)


def agreed_stop(stop_flag) -> bool:
    """Whether to stop now, the same answer on every host (any host's SIGTERM stops all of them)."""
    if not multihost.is_multihost():
        return bool(stop_flag())
    stop = dist.any_host(stop_flag())
    if stop and isinstance(stop_flag, StopFlag):
        stop_flag.set = True
    return stop


class Preempted(SystemExit):
    """Raised after a SIGTERM-triggered save; exit status 143 like a terminated process."""

    def __init__(self):
        super().__init__(143)
