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
      component its own (``components.component_key``, with the component's
      layer; see ``layer_keys``).
    choice_axes: the choice axes whose knobs the model reads (e.g. ``norm``).
    matmul_hook: ``apply`` accepts ``matmul_input=``, a function it applies
      to both inputs of every matmul (the ``activations`` placement rounds
      there); models without it cannot round their activations.
    depth: ``depth(params) -> tree``: a pytree of the structure of ``params``
      whose leaves are Python ints, each leaf's layer in depth order (0: the
      layer that reads the input; the readout has the largest index; a
      layer's norm parameters and bias share its index). ``None``: unknown.
    preactivation_hook: ``apply`` accepts ``preactivation=``, a function
      ``fn(layer: int, h) -> h`` that it calls on every hidden layer's
      pre-activation ``h: [batch, ..., features]`` (the nonlinearity's input:
      after the norm and the bias) and continues with what ``fn`` returns
      (an identity that records ``h`` leaves the output unchanged). ``layer``
      is the index ``depth`` gives that layer's parameters.
    feature_major: ``apply`` (without a hook) computes ``y`` as the
      transpose of an ``[out_dim, batch]`` product: a training loop on one
      fixed batch then holds its targets feature-major too
      (``train.Loop.targets``), so that the residual reads both in order.
    layer_keys: ``apply`` draws every layer's randomness from
      ``components.component_key(key, name, layer)`` with ``depth``'s layer
      index, so its ``key`` may be a ``components.LayerKeys`` (the
      covariate-shift probe redraws only the layers below the one it
      measures). Otherwise ``key`` is always one PRNG key, and under that
      probe the whole network's randomness is redrawn once any layer below
      moved.
    per_sample: ``apply(..., train=False)`` computes each row of ``y`` from
      that row of ``x`` alone (no batch statistics, no draws): an evaluation
      may run it over blocks of rows (``train.EVAL_BLOCK_ELEMENTS``).
  """
  init: Callable[[jax.Array, int, int, dict[str, Any]], tuple[Any, Any]]
  apply: Callable[..., tuple[jax.Array, Any]]
  choice_axes: tuple[str, ...]
  matmul_hook: bool = False
  depth: Callable[[Any], Any] | None = None
  preactivation_hook: bool = False
  feature_major: bool = False
  layer_keys: bool = False
  per_sample: bool = False


def layer_depth(tree: Any, layer: int) -> Any:
  """``tree`` with every leaf replaced by ``layer`` (for ``Model.depth``)."""
  return jax.tree.map(lambda _: layer, tree)
