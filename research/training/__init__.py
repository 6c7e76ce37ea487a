"""Training: the plan a config makes, the pure jitted steps, and the loop with its services.

`train.train_seeds` is the loop; each service it calls has a module of its own, whose docstring
says what it promises and what order the loop must keep: `plan` (the config made into objects,
once), `resume` (where a run starts), `saving` (checkpoints during training), `checkpoint` and
`integrity` (Orbax steps, their checksums and quarantine), `stopping` (signals and the stop
agreement of several processes), `epoch_log` (the epoch's step metrics, divergence), `metrics`
(metrics.jsonl, TensorBoard, the epoch lines), `evaluate`, `lock` (one run per workdir), `hooks`
(the loop's seams for benchmarks and tests), `seed_run` (one seed inside the loop). Beside them:
`state` (the pure steps), `optim`, `memory`, `distributed`.
"""
