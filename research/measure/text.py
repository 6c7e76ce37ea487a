"""Cost reports and bench results as text (`run.py cost`, `run.py bench`);
`--json` prints them as they are."""

PASS_NAMES = {"forward": "forward", "forward_backward": "fwd+bwd", "train_step": "train step"}


def _si(value: float | None, unit: str = "") -> str:
  if value is None:
    return "-"
  for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
    if abs(value) >= scale:
      return f"{value / scale:.3g}{prefix}{unit}"
  return f"{value:.3g}{unit}"


def _x(value: float | None) -> str:
  return "-" if value is None else f"{value:.3f}"


def _ms(seconds: float) -> str:
  ms = 1e3 * seconds
  return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def _times(seconds: dict) -> str:
  return f"{_ms(seconds['median'])} [{_ms(seconds['min'])}-{_ms(seconds['max'])}]"


def _describe(layer: dict) -> str:
  window = "x".join(map(str, layer["window"])) or "dense"
  groups = f" g{layer['groups']}" if layer["groups"] > 1 else ""
  return f"{layer['path']} {window}{groups} {layer['input_shape'][-1]}->{layer['output_shape'][-1]}"


def _optional(label: str, value: dict | None, missing: str, render) -> str:
  """One bench line for a figure that may be missing (None) or skipped (`{"skipped": why}`)."""
  if value is None:
    return f"  {label:<12}{missing}"
  if "skipped" in value:
    return f"  {label:<12}skipped: {value['skipped']}"
  return f"  {label:<12}{render(value)}"


def _describe_timed(layer: dict) -> str:
  window = "x".join(map(str, layer["window"])) or "dense"
  return f"{layer['path']} {window} {layer['input_shape'][-1]}->{layer['output_shape'][-1]}"


def format_report(report: dict) -> str:
  """The report as text: per table and setting, one line per (variant, pass), ratios to the
  reference last with time beside FLOPs; then each variant's layers with their share of the block's
  forward MACs."""
  env = report["environment"]
  lines = [
    f"cost on {env['device_count']} {env['backend']} device(s) ({env['device']}, "
    f"{env['cpu_cores']} cores), jax {env['jax']}; times: median [min-max] ms of "
    f"{report['repeats']} calls after {report['warmup']} warm-up; FLOPs: analytic "
    "(research.measure.flops), XLA: compiled cost_analysis(); ratios are to the 'vs' row."
  ]
  header = (
    f"{'variant':<22}{'params':>8} {'pass':<11}{'FLOPs':>8}{'XLA FLOPs':>10}"
    f"{'XLA bytes':>10}{'peak mem':>9}"
    f"  {'time ms':<22}{'vs':<10}{'params x':>9}{'FLOPs x':>8}{'time x':>8}"
    f"{'XLA x':>7}{'bytes x':>8}"
  )
  for table in report["tables"]:
    for setting in table["settings"]:
      shape = "x".join(map(str, setting["input_shape"]))
      width = "" if setting["width"] is None else f" -> {setting['width']} channels"
      lines += [
        "",
        f"== {table['title']}: batch {setting['batch_size']}, {shape}{width} ==",
        header,
      ]
      for row in setting["rows"]:
        for i, (name, p) in enumerate(row["passes"].items()):
          first = i == 0
          r = p["ratio"]
          lines.append(
            f"{row['label'] if first else '':<22}{_si(row['params']) if first else '':>8} "
            f"{PASS_NAMES[name]:<11}{_si(p['flops']):>8}{_si(p['xla_flops']):>10}"
            f"{_si(p['xla_bytes'], 'B'):>10}{_si(p['peak_bytes'], 'B'):>9}  "
            f"{_times(p['seconds']):<22}{row['reference'] if first else '':<10}"
            f"{_x(row['ratio']['params']) if first else '':>9}{_x(r['flops']):>8}"
            f"{_x(r['seconds']):>8}{_x(r['xla_flops']):>7}{_x(r['xla_bytes']):>8}"
          )
      lines.append("layers (forward MACs, share of the variant):")
      for row in setting["rows"]:
        parts = [
          f"{_describe(l)} {_si(l['macs'])} {l['macs'] / max(row['macs'], 1):.0%}"
          for l in row["layers"]
        ]
        lines.append(f"  {row['label']}: {'; '.join(parts)}")
  return "\n".join(lines)


def format_bench(result: dict) -> str:
  """The bench result as lines: the step, eval, the share of the matmul peak, and the loop."""
  s, ev, peak, loop = result["seconds"], result["eval"], result["peak"], result["loop"]
  lines = [
    f"{result['model']} + {result['optimizer']}, batch {result['batch_size']} of "
    f"{'x'.join(map(str, result['input_shape']))}, {result['params']} params on "
    f"{result['environment']['backend']} (jax {result['environment']['jax']}), medians "
    f"[min-max] over {s['n']} after {s['warmup']} warm-up:",
    f"  train step  {result['examples_per_second']:.0f} examples/s, "
    f"{result['steps_per_second']:.1f} steps/s ({_times(s)} ms a step); "
    f"{_si(result['flops_per_second'], 'FLOP/s')} analytic",
    f"  eval        {ev['examples_per_second']:.0f} examples/s at batch {ev['batch_size']} "
    f"({_times(ev['seconds'])} ms a batch)",
    f"  peak        {_si(peak['flops_per_second'], 'FLOP/s')} (float32 matmul "
    f"{peak['matmul']}x{peak['matmul']}, {_times(peak['seconds'])} ms): the step reaches "
    f"{100 * peak['step_share']:.0f}% of it",
  ]
  lines.append(
    _optional(
      "pytorch",
      result["twin"],
      'not installed (pip install -e ".[peer]")',
      lambda t: (
        f"{t['examples_per_second']:.0f} examples/s ({_times(t['seconds'])} ms a step; "
        f"torch {t['torch_version']}, {t['threads']} threads, taking turns): JAX runs at "
        f"{t['jax_ratio']:.2f}x its speed"
      ),
    )
  )
  seeds = result["seeds"]
  if seeds is not None:
    lines.append(
      f"  seeds       {seeds['seeds']} seeds' steps in one call: unrolled "
      f"{_times(seeds['together'])} ms ({seeds['ratio']:.2f}x), vmapped {_times(seeds['vmap'])} "
      f"ms ({seeds['vmap_ratio']:.2f}x) the time of one call each, {_times(seeds['apart'])} ms; "
      f"train.seeds_together=auto picks {seeds['auto']} here"
    )
  c = result["compile"]
  lines.append(
    f"  compile     {c['cold']:.2f} s cold, {c['warm']:.3f} s warm (from the compilation cache): "
    f"{100 * c['warm_share']:.0f}%"
  )
  for layer in result["layers"] or ():
    t = layer["seconds"]
    lines.append(
      f"  layer       {_describe_timed(layer):<36} forward {_times(t['forward'])}, input grad "
      f"{_times(t['input_grad'])}, weight grad {_times(t['weight_grad'])} ms"
    )
  lines.append(
    _optional(
      "loop",
      loop,
      "not measured (--no-loop)",
      lambda r: (
        f"{r['examples_per_second']:.0f} examples/s in `run.py train` ({r['steps']} steps "
        f"over {r['epochs']} epoch{'s' if r['epochs'] != 1 else ''} after the first, evaluation "
        "excluded): "
        f"{100 * r['efficiency']:.0f}% [{100 * r['efficiency_min']:.0f}-"
        f"{100 * r['efficiency_max']:.0f}%] of the bare step's "
        f"{r['step_examples_per_second']:.0f} (timed before and after each of "
        f"{len(r['rounds'])} runs; the median run)"
      ),
    )
  )
  return "\n".join(lines)
