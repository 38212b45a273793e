"""Counting the matmul FLOPs a function traces to (a cost model, not a timer).

``matmul_flops(fn, *args)`` walks the jaxpr of ``fn(*args)`` and adds
``2 * M * N * K`` (times batch dimensions) for every ``dot_general``, and
``2 * outputs * window * in_features`` for every convolution, through nested
calls. The benchmarks report achieved FLOP/s with it, and
``engine.run(partition='auto')`` compares the cost of a relaxed program's
step with the steps of the programs a partition would compile.
"""

from collections.abc import Callable
from typing import Any

import jax
from jax.extend import core as jex_core
import numpy as np


def _sub_jaxprs(params) -> list[Any]:
  subs = []
  for value in params.values():
    for v in (value if isinstance(value, (tuple, list)) else (value,)):
      if isinstance(v, jex_core.ClosedJaxpr):
        subs.append(v.jaxpr)
      elif isinstance(v, jex_core.Jaxpr):
        subs.append(v)
  return subs


def jaxpr_matmul_flops(jaxpr, while_trips: int = 1) -> int:
  """Matmul FLOPs of a ``Jaxpr``; see ``matmul_flops``."""
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'dot_general':
      (contract, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval.shape
      k = int(np.prod([lhs[d] for d in contract]))
      total += 2 * k * int(np.prod(eqn.outvars[0].aval.shape))
      continue
    if name == 'conv_general_dilated':
      # Each output sums over the kernel's window and input features (its
      # spec: out features, in features, spatial axes).
      rhs_spec = eqn.params['dimension_numbers'].rhs_spec
      rhs = eqn.invars[1].aval.shape
      k = int(np.prod([rhs[d] for d in rhs_spec[1:]]))
      total += 2 * k * int(np.prod(eqn.outvars[0].aval.shape))
      continue
    counts = [jaxpr_matmul_flops(j, while_trips)
              for j in _sub_jaxprs(eqn.params)]
    if name == 'cond':
      total += max(counts, default=0)
    elif name == 'scan':
      total += eqn.params['length'] * sum(counts)
    elif name == 'while':
      total += while_trips * sum(counts)
    else:
      total += sum(counts)
  return total


def matmul_flops(fn: Callable[..., Any], *args, while_trips: int = 1) -> int:
  """FLOPs of the matmuls (``dot_general``) that ``fn(*args)`` traces to.

  Args:
    fn: a jittable function.
    *args: its arguments (arrays or ``jax.ShapeDtypeStruct``s).
    while_trips: trips counted for a ``while_loop`` body, whose trip count is
      only known at run time (a ``scan`` counts its ``length``, a ``cond`` its
      costliest branch).

  Returns:
    ``sum 2 * batch * M * N * K`` over every matmul.
  """
  return jaxpr_matmul_flops(jax.make_jaxpr(fn)(*args).jaxpr, while_trips)
