"""pilotrl_jax.rl."""
