"""pilotrl_jax.rewards."""
