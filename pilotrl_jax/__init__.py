"""pilotrl_jax: PilotRL (AdaPlan agent + progressive RL) in JAX/Flax."""

__version__ = "0.1.0"
