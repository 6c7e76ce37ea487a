"""Notebooks, and the demos they (and `run.py filters`) use."""
