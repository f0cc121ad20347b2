"""pilotrl_jax.sampling."""
