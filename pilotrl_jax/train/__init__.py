"""pilotrl_jax.train."""
