"""Experiments built on the trainer: the evidence table over seeds."""
