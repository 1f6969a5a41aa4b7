"""Shipped checkpoints and their registry (data only; the code is generators.model_zoo)."""
