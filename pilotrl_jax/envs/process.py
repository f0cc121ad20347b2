"""Run any TextEnv in its own process, with per-call timeouts, restarts and a pool.

A crash (the worker dies) or a hang (a call passes its timeout) raises `EnvError`; the wrapper
is then `broken` until `restart()`. The worker runs in its own session (process group), so a
kill also takes down what the env started (a JVM for ScienceWorld/TextWorldExpress).
The env factory is given by import path ("pkg.module:Name") or as a picklable module-level
callable, plus keyword arguments. With the default 'spawn' start method, a script that
creates ProcessEnvs must guard its entry point with `if __name__ == "__main__":` (the worker
re-imports the main module); pytest and `python -m` entry points are fine.
"""
from __future__ import annotations

import contextlib
import importlib
import multiprocessing as mp
import os
import pickle
import signal
import threading
import time
import traceback
from typing import Any, Callable, Iterator, Sequence

from pilotrl_jax.envs.base import EnvError, StepResult, Task

_START_METHODS = ("spawn", "forkserver", "fork")


def resolve_factory(factory: str | Callable) -> Callable:
    """Turn "package.module:attr" (or "package.module.attr") into the callable it names."""
    if callable(factory):
        return factory
    if not isinstance(factory, str) or not factory:
        raise ValueError(f"factory={factory!r}; expected 'package.module:Name' or a callable")
    if ":" in factory:
        mod_name, _, attr = factory.partition(":")
    else:
        mod_name, _, attr = factory.rpartition(".")
    if not mod_name or not attr:
        raise ValueError(f"factory={factory!r}; expected 'package.module:Name'")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ValueError(f"factory={factory!r}: cannot import {mod_name!r} ({e})") from e
    obj = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"factory={factory!r}: {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"factory={factory!r} names a non-callable {type(obj).__name__}")
    return obj


def _safe_exc(exc: BaseException) -> BaseException:
    """The exception itself if it pickles, else a RuntimeError carrying its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _worker_main(conn, factory, kwargs: dict, new_session: bool) -> None:
    """Worker loop: build the env, then serve (method, args, kwargs) requests until close/EOF."""
    if new_session:
        with contextlib.suppress(OSError):
            os.setsid()
    try:
        env = resolve_factory(factory)(**kwargs)
    except BaseException as e:  # noqa: BLE001
        conn.send(("exc", _safe_exc(e), traceback.format_exc()))
        conn.close()
        return
    conn.send(("ok", os.getpid(), ""))
    while True:
        try:
            method, args, kw = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            break  # parent gone: clean up and leave
        if method == "__close__":
            try:
                env.close()
                conn.send(("ok", None, ""))
            except BaseException as e:  # noqa: BLE001
                conn.send(("exc", _safe_exc(e), traceback.format_exc()))
            break
        try:
            result = getattr(env, method)(*args, **kw)
            if method == "expert_actions" and result is not None:
                result = list(result)
            conn.send(("ok", result, ""))
        except BaseException as e:  # noqa: BLE001
            conn.send(("exc", _safe_exc(e), traceback.format_exc()))
    with contextlib.suppress(BaseException):
        env.close()
    conn.close()


def _wait_group_gone(pgid: int, timeout: float) -> None:
    """Wait (at most `timeout` s) until no running process is left in group `pgid` (zombies count as gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = False
        for d in os.listdir("/proc") if os.path.isdir("/proc") else ():
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                live = True
                break
        if not live:
            return
        time.sleep(0.05)


class ProcessEnv:
    """A TextEnv that lives in a subprocess; crashes and hangs raise EnvError, restart() revives it.

    Timeouts are seconds per call (`step_timeout` for step and other calls, `reset_timeout` for
    reset, `start_timeout` for building the env in the worker). Exceptions the env itself raises
    (e.g. ValueError for a bad task) come back with their own type, the worker staying usable.
    """

    def __init__(
        self,
        factory: str | Callable,
        kwargs: dict | None = None,
        *,
        step_timeout: float = 60.0,
        reset_timeout: float = 180.0,
        start_timeout: float = 300.0,
        close_timeout: float = 10.0,
        start_method: str = "spawn",
        new_session: bool = True,
        start: bool = True,
    ):
        if start_method not in _START_METHODS:
            raise ValueError(f"start_method={start_method!r}; expected one of {_START_METHODS}")
        for name, val in (("step_timeout", step_timeout), ("reset_timeout", reset_timeout),
                          ("start_timeout", start_timeout), ("close_timeout", close_timeout)):
            if not (isinstance(val, (int, float)) and val > 0):
                raise ValueError(f"{name}={val!r}; expected a positive number of seconds")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise ValueError(f"kwargs={kwargs!r}; expected a dict of keyword arguments")
        if isinstance(factory, str):
            resolve_factory(factory)  # fail early, in the parent, on a bad path
        elif not callable(factory):
            raise ValueError(f"factory={factory!r}; expected 'package.module:Name' or a callable")
        self.factory = factory
        self.kwargs = dict(kwargs or {})
        self.step_timeout = float(step_timeout)
        self.reset_timeout = float(reset_timeout)
        self.start_timeout = float(start_timeout)
        self.close_timeout = float(close_timeout)
        self.new_session = bool(new_session)
        self._ctx = mp.get_context(start_method)
        self._proc = None
        self._conn = None
        self._broken = True
        self._pending_start = False
        self._lock = threading.RLock()
        self.restarts = 0
        if start:
            self.start()

    # ------------------------------------------------------------ lifecycle
    @property
    def pid(self) -> int | None:
        """The worker's process id (None before start)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def broken(self) -> bool:
        """True after a crash, a timeout or close(), until restart()."""
        return self._broken

    def is_alive(self) -> bool:
        """Whether the worker process is running."""
        return self._proc is not None and self._proc.is_alive()

    def start(self, wait: bool = True) -> None:
        """Start the worker; with wait=False call wait_ready() later (lets a pool start many at once)."""
        with self._lock:
            if self._proc is not None and not self._broken:
                raise RuntimeError("ProcessEnv.start: the worker is already running; use restart()")
            parent, child = self._ctx.Pipe(duplex=True)
            proc = self._ctx.Process(
                target=_worker_main, args=(child, self.factory, self.kwargs, self.new_session),
                daemon=True, name=f"env-worker-{self.factory}",
            )
            proc.start()
            child.close()
            self._proc, self._conn = proc, parent
            self._pending_start = True
            self._broken = True
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Wait until the worker has built its env (EnvError on failure or start_timeout)."""
        with self._lock:
            if not self._pending_start:
                return
            self._pending_start = False
            status, payload, tb = self._receive("start", self.start_timeout)
            if status != "ok":
                self._kill()
                raise EnvError(f"env factory {self.factory!r} failed in the worker: "
                               f"{type(payload).__name__}: {payload}\n{tb}")
            self._broken = False

    def restart(self) -> None:
        """Kill the worker (if any) and start a fresh one; the episode must be reset again."""
        with self._lock:
            self._kill()
            self.restarts += 1
            self.start()

    def _kill(self) -> None:
        """Hard-kill the worker and its process group; safe to call twice."""
        self._broken = True
        self._pending_start = False
        proc, conn = self._proc, self._conn
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
        if proc is None:
            return
        popen = getattr(proc, "_popen", None)
        reaped = popen is None or getattr(popen, "returncode", None) is not None
        if self.new_session and not reaped:
            # The worker called setsid(), so its pid is the group id of all it started (a JVM...).
            # Not yet reaped by us, so the pid cannot have been reused by another process.
            with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
                os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            proc.kill()
        proc.join(timeout=5)
        if self.new_session and not reaped:
            _wait_group_gone(proc.pid, timeout=2.0)  # SIGKILL is delivered, not yet acted on, by a busy JVM

    def close(self) -> None:
        """Ask the env to close, then stop the worker (killing it if it does not answer)."""
        with self._lock:
            if self._proc is None:
                return
            if not self._broken:
                try:
                    self._conn.send(("__close__", (), {}))
                    if self._conn.poll(self.close_timeout):
                        self._conn.recv()
                except (EOFError, OSError):
                    pass
            self._kill()
            self._proc = None
            self._conn = None

    def __enter__(self) -> "ProcessEnv":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        with contextlib.suppress(Exception):
            if self._proc is not None:
                self._kill()

    # ------------------------------------------------------------ calls
    def _receive(self, what: str, timeout: float):
        conn, proc = self._conn, self._proc
        try:
            ready = conn.poll(timeout)
        except (EOFError, OSError):
            ready = True  # fall through to recv, which reports the crash
        if not ready:
            self._kill()
            raise EnvError(f"env worker (pid {proc.pid}, {self.factory!r}) did not answer "
                           f"{what} within {timeout:g}s; it was killed, call restart()")
        try:
            return conn.recv()
        except (EOFError, OSError) as e:
            self._kill()
            code = proc.exitcode
            raise EnvError(f"env worker (pid {proc.pid}, {self.factory!r}) died during {what} "
                           f"(exit code {code}); call restart()") from e

    def call(self, method: str, *args, timeout: float | None = None, **kwargs) -> Any:
        """Call `method` on the env in the worker; EnvError on crash/timeout."""
        with self._lock:
            if self._pending_start:
                self.wait_ready()
            if self._broken or self._proc is None:
                raise EnvError(f"env worker for {self.factory!r} is not running "
                               "(crashed, timed out or closed); call restart()")
            t = self.step_timeout if timeout is None else float(timeout)
            try:
                self._conn.send((method, args, kwargs))
            except (OSError, EOFError) as e:
                self._kill()
                code = self._proc.exitcode
                raise EnvError(f"env worker (pid {self._proc.pid}, {self.factory!r}) died before {method} "
                               f"was sent (exit code {code}); call restart()") from e
            status, payload, tb = self._receive(method, t)
        if status == "ok":
            return payload
        if isinstance(payload, BaseException):
            if tb and hasattr(payload, "add_note"):
                payload.add_note("--- raised in the env worker ---\n" + tb)
            raise payload
        raise EnvError(f"env worker error in {method}: {payload}")  # pragma: no cover

    def reset(self, task: Task) -> tuple[str, dict]:
        """Reset the remote env to `task` (reset_timeout applies)."""
        return self.call("reset", task, timeout=self.reset_timeout)

    def step(self, action: str) -> StepResult:
        """Step the remote env (step_timeout applies)."""
        return self.call("step", action)

    def expert_actions(self) -> Sequence[str] | None:
        """The remote env's expert actions from its current state."""
        return self.call("expert_actions")


class EnvPool:
    """N ProcessEnvs started together; acquire/release them, broken ones are restarted on acquire."""

    def __init__(self, factory: str | Callable, n: int, kwargs: dict | None = None, **process_kwargs):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n={n!r}; expected a positive int (number of env workers)")
        process_kwargs.pop("start", None)
        self.envs: list[ProcessEnv] = [
            ProcessEnv(factory, kwargs, start=False, **process_kwargs) for _ in range(n)
        ]
        self._cv = threading.Condition()
        self._free: list[ProcessEnv] = []
        self._closed = False
        try:
            for env in self.envs:
                env.start(wait=False)
            for env in self.envs:
                env.wait_ready()
        except BaseException:
            self.close()
            raise
        self._free = list(self.envs)

    def __len__(self) -> int:
        return len(self.envs)

    def acquire(self, timeout: float | None = None) -> ProcessEnv:
        """Take a free env (waiting up to `timeout` s); a broken one is restarted first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while not self._free:
                if self._closed:
                    raise RuntimeError("EnvPool is closed")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"no free env in the pool within {timeout}s")
                self._cv.wait(left)
            if self._closed:
                raise RuntimeError("EnvPool is closed")
            env = self._free.pop(0)
        if env.broken:
            try:
                env.restart()
            except BaseException:
                self.release(env)
                raise
        return env

    def release(self, env: ProcessEnv) -> None:
        """Give `env` back to the pool."""
        if env not in self.envs:
            raise ValueError("EnvPool.release: env does not belong to this pool")
        with self._cv:
            if env not in self._free:
                self._free.append(env)
            self._cv.notify()

    @contextlib.contextmanager
    def lease(self, timeout: float | None = None) -> Iterator[ProcessEnv]:
        """`with pool.lease() as env:` acquire, then release even on error."""
        env = self.acquire(timeout)
        try:
            yield env
        finally:
            self.release(env)

    def restart_broken(self) -> int:
        """Restart every broken env now; returns how many were restarted."""
        n = 0
        for env in self.envs:
            if env.broken and not self._closed:
                env.restart()
                n += 1
        return n

    def close(self) -> None:
        """Close every env (killing those that do not answer)."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        for env in self.envs:
            with contextlib.suppress(Exception):
                env.close()

    def __enter__(self) -> "EnvPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
