"""XLA's figures read from a compiled function, whatever format the backend reports them in."""

import pytest

from research.measure import xla


@pytest.mark.parametrize(
  "analysis, expected",
  [
    ({"flops": 10.0, "bytes accessed": 4.0}, (10.0, 4.0)),
    ([{"flops": 10.0, "bytes accessed": 4.0}], (10.0, 4.0)),
    (None, (None, None)),
    ({"flops": -1.0}, (None, None)),
    ([], (None, None)),
  ],
)
def test_xla_cost_reads_every_backend_format(analysis, expected):
  class Compiled:
    def cost_analysis(self):
      return analysis

  assert tuple(xla.xla_cost(Compiled()).values()) == expected
