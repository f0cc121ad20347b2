"""host_memory: after `import pilotrl_jax`, XLA's per-call CPU buffers reuse freed heap (no page faults per
call); PILOTRL_KEEP_FREED_MEMORY=0 leaves malloc as it is; a bad value is refused by name."""
import os
import subprocess
import sys

import pytest

PROBE = r"""
import resource
import pilotrl_jax
import jax, jax.numpy as jnp
from pilotrl_jax import host_memory
x = jnp.ones((16, 1024, 2048), jnp.float32)          # 128 MB: above any malloc mmap threshold
f = jax.jit(lambda x: jnp.exp(x[:, :-1] - 1.0).sum(-1))
for _ in range(12):  # the heap grows to its working size over the first calls
    f(x).block_until_ready()
per_call = []
for _ in range(6):
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    per_call.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
print(host_memory.applied(), min(per_call))  # the fewest of 6 calls: the steady state
"""


def _probe(value):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("PILOTRL_KEEP_FREED_MEMORY", None)
    if value is not None:
        env["PILOTRL_KEEP_FREED_MEMORY"] = value
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings (Linux only)")
def test_freed_memory_is_reused_unless_turned_off():
    on, off = _probe(None), _probe("0")
    assert on.returncode == 0 and off.returncode == 0, on.stderr[-2000:] + off.stderr[-2000:]
    applied_on, faults_on = on.stdout.split()[-2:]
    applied_off, faults_off = off.stdout.split()[-2:]
    assert (applied_on, applied_off) == ("True", "False")
    assert int(faults_off) > 30_000  # the 128 MB temporary (32768 pages) faulted in again on every call
    assert int(faults_on) < 1000, (faults_on, faults_off)  # steady state: 0 measured


BIG = r"""
import ctypes, resource
import pilotrl_jax
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
n, step = (9 << 28), 1 << 20  # 2.25 GiB: above the largest trim threshold an int can give (2 GiB - 1)
faults = []
for _ in range(2):
    p = libc.malloc(n)
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for off in range(0, n, step):  # one byte a MiB: 2304 pages (first-touch pages are slow in a VM)
        ctypes.memset(p + off, 1, 1)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
    libc.free(p)
print(faults[0], faults[1])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings (Linux only)")
def test_a_freed_block_above_2_gib_is_kept_too():
    """Trimming is off for any size: a 2.25 GiB block freed at the top of the heap is reused without faults
    (with the trim threshold at the int maximum, glibc handed it back and every touched page faulted again)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("PILOTRL_KEEP_FREED_MEMORY", None)
    out = subprocess.run([sys.executable, "-c", BIG], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    first, again = map(int, out.stdout.split()[-2:])
    assert first >= 2000 and again < 100, out.stdout  # 2304 pages touched each time


def test_a_bad_setting_is_refused_by_name():
    bad = _probe("sometimes")
    assert bad.returncode != 0
    assert "PILOTRL_KEEP_FREED_MEMORY='sometimes'" in bad.stderr and "expected 1" in bad.stderr
