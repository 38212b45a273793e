"""Relaxed (continuous) choices: a discrete choice as a point on the simplex.

A choice axis with options ``o_1 .. o_k`` is evaluated at weights ``w`` as
``sum_i w_i * o_i``. At a one-hot ``w`` this is exactly ``o_j`` (products with
0 and 1 and additions of 0 are exact in IEEE arithmetic), so a grid point is the
plain discrete choice, while a non-vertex ``w`` interpolates between options and
makes a component's influence a derivative.
"""

from collections.abc import Callable, Mapping, Sequence
import functools
from typing import Any, TypeVar

import jax
import jax.numpy as jnp

T = TypeVar('T')


def mix(weights: jax.Array, options: Sequence[Any]) -> Any:
  """Returns ``sum_i weights[i] * options[i]`` leaf by leaf.

  Args:
    weights: ``[k]`` weights, one per option (a point on the simplex).
    options: ``k`` pytrees of identical structure.

  Returns:
    A pytree of the structure of each option.
  """
  if not options:
    raise ValueError('mix needs at least one option.')
  if jnp.shape(weights) != (len(options),):
    raise ValueError(
        f'mix got weights of shape {jnp.shape(weights)} for {len(options)} '
        'options; expected one weight per option.')

  def mix_leaves(*leaves):
    terms = [weights[i].astype(leaf.dtype) * leaf
             for i, leaf in enumerate(leaves)]
    return functools.reduce(jnp.add, terms)

  return jax.tree.map(mix_leaves, *options)


def get(registry: Mapping[str, T], name: str, axis: str) -> T:
  """Looks ``name`` up in ``registry``; a helpful error names what exists."""
  try:
    return registry[name]
  except (KeyError, TypeError):
    raise ValueError(
        f'Unknown {axis} {name!r}; accepted: {", ".join(sorted(registry))}.'
    ) from None


def check_options(registry: Mapping[str, Any], names: Sequence[str],
                  axis: str) -> tuple[str, ...]:
  """Validates a list of option names for ``axis``; returns it as a tuple."""
  names = tuple(names)
  if not names:
    raise ValueError(
        f'{axis}: empty list of options; accepted: '
        f'{", ".join(sorted(registry))}.')
  for name in names:
    get(registry, name, axis)
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ValueError(f'{axis}: options listed twice: {", ".join(duplicates)}.')
  return names


def relax(fns: Sequence[Callable[..., Any]]) -> Callable[..., Any]:
  """Returns ``f(weights, *args) = mix(weights, [fn(*args) for fn in fns])``."""
  fns = tuple(fns)

  def relaxed(weights, *args, **kwargs):
    return mix(weights, [fn(*args, **kwargs) for fn in fns])

  return relaxed
