"""Counting the work a function traces to (a cost model, not a timer).

``matmul_flops(fn, *args)`` walks the jaxpr of ``fn(*args)`` and adds
``2 * M * N * K`` (times batch dimensions) for every ``dot_general``, and
``2 * outputs * window * in_features`` for every convolution, through nested
calls; ``element_ops`` adds the output sizes of every other operation. The
benchmarks report achieved FLOP/s with the first, and ``engine.run``'s
``partition='auto'`` and ``switch='auto'`` compare a relaxed program's step
with the steps its members need on their own, by the first and the second.
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


def _walk(jaxpr, while_trips: int, leaf, seen=None) -> int:
  """``leaf(eqn)`` summed over ``jaxpr``'s equations, through nested calls:
  a ``scan`` counts its ``length`` trips, a ``while`` ``while_trips``, a
  ``cond`` its costliest branch. ``leaf`` returns ``None`` to descend.
  ``seen`` holds the count of each sub-jaxpr already walked (a ``jit``'s
  traced once and called at several places is one object)."""
  seen = {} if seen is None else seen
  total = 0
  for eqn in jaxpr.eqns:
    own = leaf(eqn)
    if own is not None:
      total += own
      continue
    counts = []
    for j in _sub_jaxprs(eqn.params):
      if id(j) not in seen:
        seen[id(j)] = (j, _walk(j, while_trips, leaf, seen))  # j kept alive
      counts.append(seen[id(j)][1])
    name = eqn.primitive.name
    if name == 'cond':
      total += max(counts, default=0)
    elif name == 'scan':
      total += eqn.params['length'] * sum(counts)
    elif name == 'while':
      total += while_trips * sum(counts)
    else:
      total += sum(counts)
  return total


def _size(aval) -> int:
  return int(np.prod(getattr(aval, 'shape', ())))


def _matmul(eqn) -> int | None:
  name = eqn.primitive.name
  if name == 'dot_general':
    (contract, _), _ = eqn.params['dimension_numbers']
    lhs = eqn.invars[0].aval.shape
    k = int(np.prod([lhs[d] for d in contract]))
    return 2 * k * _size(eqn.outvars[0].aval)
  if name == 'conv_general_dilated':
    # Each output sums over the kernel's window and input features (its
    # spec: out features, in features, spatial axes).
    rhs_spec = eqn.params['dimension_numbers'].rhs_spec
    rhs = eqn.invars[1].aval.shape
    k = int(np.prod([rhs[d] for d in rhs_spec[1:]]))
    return 2 * k * _size(eqn.outvars[0].aval)
  return None if _sub_jaxprs(eqn.params) else 0


def _written(eqn) -> int | None:
  if _sub_jaxprs(eqn.params):
    return None
  return sum(_size(v.aval) for v in eqn.outvars)


def _elements(eqn) -> int | None:
  if eqn.primitive.name in ('dot_general', 'conv_general_dilated'):
    return 0
  return _written(eqn)


def jaxpr_matmul_flops(jaxpr, while_trips: int = 1) -> int:
  """Matmul FLOPs of a ``Jaxpr``; see ``matmul_flops``."""
  return _walk(jaxpr, while_trips, _matmul)


def jaxpr_element_ops(jaxpr, while_trips: int = 1) -> int:
  """Elements written by a ``Jaxpr``'s other operations; see
  ``element_ops``."""
  return _walk(jaxpr, while_trips, _elements)


def jaxpr_elements_written(jaxpr, while_trips: int = 1) -> int:
  """Elements written by every operation of a ``Jaxpr``, matmuls included;
  see ``elements_written``."""
  return _walk(jaxpr, while_trips, _written)


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


def element_ops(fn: Callable[..., Any], *args, while_trips: int = 1) -> int:
  """Elements that ``fn(*args)``'s operations other than matmuls write.

  Every elementwise operation, reduction, gather, sort, ... counts the size
  of its outputs, once per trip of an enclosing loop (as ``matmul_flops``).
  A proxy of the work XLA does outside matmuls, which is memory-bound on a
  CPU: what a norm or an optimizer costs that ``matmul_flops`` calls free.
  """
  return jaxpr_element_ops(jax.make_jaxpr(fn)(*args).jaxpr, while_trips)


def elements_written(fn: Callable[..., Any], *args,
                     while_trips: int = 1) -> int:
  """Elements that all of ``fn(*args)``'s operations write, matmuls included
  (as ``element_ops`` counts them): the size of everything it computes, a
  proxy of its working set."""
  return jaxpr_elements_written(jax.make_jaxpr(fn)(*args).jaxpr, while_trips)
