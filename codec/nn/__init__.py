"""Streamable causal layers and the encoder / decoder stacks."""
