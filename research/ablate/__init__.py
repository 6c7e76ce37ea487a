"""Ablations: variants of an experiment trained over seeds, with accuracy beside what each costs.

`study` runs them (`run.py ablate`, `run.py report`) over the runs `runs` plans; `stats` gives the
intervals; `results` holds what was measured (dataclasses, `results.json`); `report` renders it
into `tables` (Markdown, CSV) and `plots`.
"""
