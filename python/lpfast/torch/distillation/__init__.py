"""Distillation: train compressed layers to reproduce the original model (``distill``),
per layer, end to end or block by block."""
