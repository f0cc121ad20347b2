"""pilotrl_jax.models."""
