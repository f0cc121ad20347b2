"""pilotrl_jax: PilotRL (AdaPlan agent + progressive RL) in JAX/Flax."""

from pilotrl_jax.host_memory import keep_freed_memory as _keep_freed_memory

__version__ = "0.1.0"

_keep_freed_memory()  # XLA's per-call CPU buffers reuse freed heap instead of page-faulting (host_memory)
