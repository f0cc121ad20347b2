"""One trace counter for every jitted function of the project: how many times each was traced
(== compiled, per input signature), so tests and benchmarks can check that a run compiles a
handful of times, not once per step."""
from __future__ import annotations

import collections
import contextlib
import functools
from typing import Callable, Optional

import jax

TRACE_COUNTS: collections.Counter = collections.Counter()


def count_trace(name: str) -> None:
    """Record one trace of the jitted function `name` (call it inside the traced function)."""
    TRACE_COUNTS[name] += 1


def trace_counts() -> dict:
    """How many times each jitted function was traced in this process, by name."""
    return dict(TRACE_COUNTS)


class CountingJit:
    """`jax.jit(fn)` that counts its own traces (`num_traces`) and adds them to TRACE_COUNTS under fn's name.

    `context`: a factory of a context manager entered around every call and lowering, so that tracing
    sees it (e.g. `jax.set_mesh(mesh)`, which a sharded attention kernel reads); None = none."""

    def __init__(self, fn: Callable, context: Optional[Callable] = None, **jit_kwargs):
        self.num_traces = 0
        self._context = context or contextlib.nullcontext
        name = getattr(fn, "__name__", "fn")

        @functools.wraps(fn)
        def counted(*args):
            self.num_traces += 1
            count_trace(name)
            return fn(*args)

        self._jitted = jax.jit(counted, **jit_kwargs)

    def __call__(self, *args):
        """Run the jitted function."""
        with self._context():
            return self._jitted(*args)

    def lower(self, *args):
        """Lower for inspection (HLO, cost analysis)."""
        with self._context():
            return self._jitted.lower(*args)
