"""Flax NNX layers of the Griffin family (one module per layer kind)."""
