"""pilotrl_jax.agent."""
