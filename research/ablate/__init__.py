"""Ablations: variants of an experiment trained over seeds, with accuracy beside what each costs.

`study` runs them (`run.py ablate`); `tables` turns the results into Markdown and plots.
"""
