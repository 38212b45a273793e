"""The model interface: a pure ``(init, apply)`` pair driven by knobs."""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax


class Model(NamedTuple):
  """A pure model.

  Attributes:
    init: ``init(key, in_dim, out_dim, knobs) -> (params, state)``.
    apply: ``apply(params, state, x, knobs, train, key=None) -> (y, state)``
      with ``x: [batch, in_dim]`` and ``y: [batch, out_dim]``; ``key`` is the
      step's PRNG key (``train.step_key``), from which the model gives each
      component its own (``components.component_key``).
    choice_axes: the choice axes whose knobs the model reads (e.g. ``norm``).
    matmul_hook: ``apply`` accepts ``matmul_input=``, a function it applies
      to both inputs of every matmul (the ``activations`` placement rounds
      there); models without it cannot round their activations.
  """
  init: Callable[[jax.Array, int, int, dict[str, Any]], tuple[Any, Any]]
  apply: Callable[..., tuple[jax.Array, Any]]
  choice_axes: tuple[str, ...]
  matmul_hook: bool = False
  depth: Callable[[Any], Any] | None = None
  preactivation_hook: bool = False
