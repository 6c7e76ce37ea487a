"""JSON Schemas of `run.py cost --json` (`COST_SCHEMA`) and `run.py bench --json` (`BENCH_SCHEMA`).

Validate a report with `jsonschema.validate(report, COST_SCHEMA)`.
"""

import dataclasses

from research.measure import flops, timing

PASSES = ("forward", "forward_backward", "train_step")  # The passes a cost report may measure.

_NUMBER_OR_NULL = {"type": ["number", "null"]}
_TIMING = {
  "type": "object",
  "required": ["min", "median", "max", "n", "warmup"],
  "properties": {
    "min": {"type": "number", "minimum": 0},
    "median": {"type": "number", "minimum": 0},
    "max": {"type": "number", "minimum": 0},
    "n": {"type": "integer", "minimum": timing.MIN_REPEATS},
    "warmup": {"type": "integer", "minimum": 1},
  },
  "additionalProperties": False,
}
_ENVIRONMENT = {
  "type": "object",
  "required": ["jax", "backend", "device", "device_count", "cpu_cores"],
  "properties": {
    "jax": {"type": "string"},
    "backend": {"type": "string"},
    "device": {"type": "string"},
    "device_count": {"type": "integer", "minimum": 1},
    "cpu_cores": {"type": ["integer", "null"]},
  },
}


def _optional(schema: dict, skippable: bool = False) -> dict:
  """`schema`, or null (not measured), or with `skippable` `{"skipped": why}`."""
  skipped = {
    "type": "object",
    "required": ["skipped"],
    "properties": {"skipped": {"type": "string"}},
    "additionalProperties": False,
  }
  return {"oneOf": [{"type": "null"}, *([skipped] if skippable else []), schema]}


_LAYER = {
  "type": "object",
  "required": [
    "path",
    "kind",
    "input_shape",
    "output_shape",
    "window",
    "groups",
    "params",
    "macs",
    "macs_in_bounds",
    "bias_adds",
    "input_grad",
    "forward_flops",
    "forward_backward_flops",
  ],
  "properties": {
    "path": {"type": "string"},
    "kind": {"enum": ["conv", "dense"]},
    "input_shape": {"type": "array", "items": {"type": "integer"}},
    "output_shape": {"type": "array", "items": {"type": "integer"}},
    "window": {"type": "array", "items": {"type": "integer"}},
    "groups": {"type": "integer", "minimum": 1},
    "params": {"type": "integer", "minimum": 0},
    "macs": {"type": "integer", "minimum": 0},
    "macs_in_bounds": {"type": "integer", "minimum": 0},
    "bias_adds": {"type": "integer", "minimum": 0},
    "input_grad": {"type": "boolean"},
    "forward_flops": {"type": "integer", "minimum": 0},
    "forward_backward_flops": {"type": "integer", "minimum": 0},
  },
}
# The fields of a bench layer that `_LAYER` (a cost report's) describes too.
_TIMED_LAYER_FIELDS = ("path", "kind", "window", "input_shape", "output_shape", "forward_flops")
_PASS = {
  "type": "object",
  "required": [
    "flops",
    "flops_in_bounds",
    "xla_flops",
    "xla_bytes",
    "peak_bytes",
    "seconds",
    "ratio",
  ],
  "properties": {
    "flops": {"type": "integer", "minimum": 0},
    "flops_in_bounds": {"type": "integer", "minimum": 0},
    "xla_flops": _NUMBER_OR_NULL,
    "xla_bytes": _NUMBER_OR_NULL,
    "peak_bytes": {"type": ["integer", "null"]},
    "seconds": _TIMING,
    "ratio": {
      "type": "object",
      "required": ["flops", "xla_flops", "xla_bytes", "peak_bytes", "seconds"],
      "additionalProperties": _NUMBER_OR_NULL,
    },
  },
}
_TOTALS = [f.name for f in dataclasses.fields(flops.Totals)]
_ROW = {
  "type": "object",
  "required": ["label", "reference", "params", "macs", "totals", "layers", "passes", "ratio"],
  "properties": {
    "label": {"type": "string"},
    "reference": {"type": "string"},
    "params": {"type": "integer", "minimum": 0},
    "macs": {"type": "integer", "minimum": 0},
    "blocks": {"type": "array", "items": {"type": "object"}},
    "layers": {"type": "array", "items": _LAYER},
    "totals": {
      "type": "object",
      "required": _TOTALS,
      "additionalProperties": {"type": "integer", "minimum": 0},
    },
    "passes": {
      "type": "object",
      "additionalProperties": False,
      "properties": {name: _PASS for name in PASSES},
    },
    "ratio": {
      "type": "object",
      "required": ["params", "macs"],
      "additionalProperties": _NUMBER_OR_NULL,
    },
  },
}
COST_SCHEMA = {
  "type": "object",
  "required": ["schema", "environment", "warmup", "repeats", "tables"],
  "properties": {
    "schema": {"enum": ["convlab.cost/1"]},
    "environment": _ENVIRONMENT,
    "warmup": {"type": "integer", "minimum": 1},
    "repeats": {"type": "integer", "minimum": timing.MIN_REPEATS},
    "tables": {
      "type": "array",
      "items": {
        "type": "object",
        "required": ["name", "title", "settings"],
        "properties": {
          "name": {"type": "string"},
          "title": {"type": "string"},
          "settings": {
            "type": "array",
            "items": {
              "type": "object",
              "required": ["batch_size", "input_shape", "width", "rows"],
              "properties": {
                "batch_size": {"type": "integer", "minimum": 1},
                "input_shape": {"type": "array", "items": {"type": "integer"}},
                "width": {"type": ["integer", "null"]},
                "rows": {"type": "array", "items": _ROW},
              },
            },
          },
        },
      },
    },
  },
}
_LOOP_ROUND = {
  "type": "object",
  "required": ["seconds", "examples_per_second", "step_examples_per_second", "efficiency"],
  "properties": {
    "seconds": {"type": "number", "minimum": 0},
    "examples_per_second": {"type": "number", "minimum": 0},
    "step_examples_per_second": {"type": "number", "minimum": 0},
    "efficiency": {"type": "number", "minimum": 0},
  },
  "additionalProperties": False,
}

BENCH_SCHEMA = {
  "type": "object",
  "required": [
    "schema",
    "environment",
    "model",
    "optimizer",
    "batch_size",
    "input_shape",
    "params",
    "train_step_flops",
    "seconds",
    "steps_per_second",
    "examples_per_second",
    "flops_per_second",
    "eval",
    "peak",
    "twin",
    "seeds",
    "compile",
    "layers",
    "loop",
  ],
  "properties": {
    "schema": {"enum": ["convlab.bench/2"]},
    "environment": _ENVIRONMENT,
    "model": {"type": "string"},
    "optimizer": {"type": "string"},
    "batch_size": {"type": "integer", "minimum": 1},
    "input_shape": {"type": "array", "items": {"type": "integer"}},
    "params": {"type": "integer", "minimum": 0},
    "train_step_flops": {"type": "integer", "minimum": 0},
    "seconds": _TIMING,
    "steps_per_second": {"type": "number", "minimum": 0},
    "examples_per_second": {"type": "number", "minimum": 0},
    "flops_per_second": {"type": "number", "minimum": 0},
    "eval": {
      "type": "object",
      "required": ["batch_size", "seconds", "examples_per_second"],
      "properties": {
        "batch_size": {"type": "integer", "minimum": 1},
        "seconds": _TIMING,
        "examples_per_second": {"type": "number", "minimum": 0},
      },
    },
    "peak": {
      "type": "object",
      "required": ["matmul", "seconds", "flops_per_second", "step_share"],
      "properties": {
        "matmul": {"type": "integer", "minimum": 1},
        "seconds": _TIMING,
        "flops_per_second": {"type": "number", "minimum": 0},
        "step_share": {"type": "number", "minimum": 0},
      },
    },
    # null: no torch; {"skipped": why}: a model the twin does not reproduce.
    "twin": _optional(
      {
        "type": "object",
        "required": ["torch_version", "threads", "seconds", "examples_per_second", "jax_ratio"],
        "properties": {
          "torch_version": {"type": "string"},
          "threads": {"type": "integer", "minimum": 1},
          "seconds": _TIMING,
          "examples_per_second": {"type": "number", "minimum": 0},
          "jax_ratio": {"type": "number", "minimum": 0},
        },
        "additionalProperties": False,
      },
      skippable=True,
    ),
    "seeds": _optional(  # null: not measured (--seeds 1).
      {
        "type": "object",
        "required": ["seeds", "together", "apart", "ratio", "vmap", "vmap_ratio", "auto"],
        "properties": {
          "seeds": {"type": "integer", "minimum": 2},
          "together": _TIMING,  # Unrolled: one step per seed, written out, in one call.
          "apart": _TIMING,
          "ratio": {"type": "number", "minimum": 0},
          "vmap": _TIMING,  # One step vmapped over the stacked seeds.
          "vmap_ratio": {"type": "number", "minimum": 0},
          "auto": {"enum": ["unrolled", "vmap"]},  # What train.seeds_together=auto picks here.
        },
        "additionalProperties": False,
      }
    ),
    "compile": {
      "type": "object",
      "required": ["cold", "warm", "warm_share"],
      "properties": {
        "cold": {"type": "number", "minimum": 0},
        "warm": {"type": "number", "minimum": 0},
        "warm_share": {"type": "number", "minimum": 0},
      },
      "additionalProperties": False,
    },
    "layers": _optional(  # null: not measured (--no-layers).
      {
        "type": "array",
        "items": {
          "type": "object",
          "required": [*_TIMED_LAYER_FIELDS, "seconds"],
          "properties": {
            **{k: _LAYER["properties"][k] for k in _TIMED_LAYER_FIELDS},
            "seconds": {
              "type": "object",
              "required": ["forward", "input_grad", "weight_grad"],
              "properties": {"forward": _TIMING, "input_grad": _TIMING, "weight_grad": _TIMING},
              "additionalProperties": False,
            },
          },
        },
      }
    ),
    # null: not measured (--no-loop); {"skipped": why}: no data to train on.
    "loop": _optional(
      {
        "type": "object",
        "required": [
          "epochs",
          "steps",
          "seconds",
          "examples_per_second",
          "step_examples_per_second",
          "efficiency",
          "efficiency_min",
          "efficiency_max",
          "rounds",
        ],
        "properties": {  # The median round's figures (by efficiency), then every round's.
          "step_examples_per_second": {"type": "number", "minimum": 0},
          "epochs": {"type": "integer", "minimum": 1},  # Timed per round, after the first.
          "steps": {"type": "integer", "minimum": 1},  # Timed per round.
          "seconds": {"type": "number", "minimum": 0},
          "examples_per_second": {"type": "number", "minimum": 0},
          "efficiency": {"type": "number", "minimum": 0},
          "efficiency_min": {"type": "number", "minimum": 0},
          "efficiency_max": {"type": "number", "minimum": 0},
          "rounds": {"type": "array", "minItems": 1, "items": _LOOP_ROUND},
        },
        "additionalProperties": False,
      },
      skippable=True,
    ),
  },
}
