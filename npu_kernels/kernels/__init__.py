"""Triton kernels (layout-blind; tensors arrive as (batch, head, seq, dim) views)."""
