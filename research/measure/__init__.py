"""Measuring cost: analytic FLOPs, XLA's figures, the one timing harness,
`run.py cost` and `run.py bench`."""
