"""Benchmarks and the static kernel report (``python -m bench run|plot|report|host``).

- ``run``: on a GPU, correctness against the reference, then timings of our kernels and of the
  baselines (torch SDPA flash/cuDNN/efficient, FlexAttention, eager PyTorch) in the same process;
  results as JSON/CSV under ``bench/results/``.
- ``plot``: PNG charts from those results (needs matplotlib).
- ``report``: on any machine, ahead-of-time compilation of every kernel variant for sm_80/sm_90:
  registers, spills, shared memory, tensor-core instructions, compile time.
- ``host``: on any machine, host time of validate + plan per operator call.

Importing this package imports neither ``npu_kernels`` nor Triton (``report`` needs a compile-only
subprocess).
"""
