"""Operators: validate → plan → run for each Ascend attention operator."""
