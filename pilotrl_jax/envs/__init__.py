"""pilotrl_jax.envs."""
