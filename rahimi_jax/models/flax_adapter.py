"""Bring your own flax model: a flax linen module as a pure ``Model``.

``from_flax(module)`` turns a ``flax.linen.Module`` (or ``make(out_dim) ->
Module``, when the output width comes from the data) into the framework's
``Model(init, apply, ...)``, so it trains in a grid like the built-in models:

* parameters are the module's ``'params'`` collection, its top-level entries
  kept in the order the module created them (a ``collections.OrderedDict``,
  which JAX's tree functions preserve: the order of the layers from input to
  output for a module that calls its layers in that order);
* every other collection the module creates (flax ``BatchNorm``'s
  ``batch_stats``, the framework's norm state) is the model's ``state``: it is
  mutable in every ``apply`` and carried from step to step by the training
  loop (``intermediates``, sown values, are dropped);
* the module's ``__call__`` gets, by keyword and only where it declares a
  parameter of that name: ``knobs`` (the member's knobs: simplex weights of
  the choice axes and value knobs), ``train`` (or ``deterministic=not
  train``), ``key`` (the step's PRNG key, as the built-in models get it,
  ``None`` at init; see ``layer_keys``) and ``preactivation`` (see
  ``Model.preactivation_hook``);
* the step's key also reaches the module as flax PRNG streams: stream
  ``name`` (``rngs=``, default ``('dropout',)``) draws from
  ``components.component_key(key, name)``.

A module that reads no knobs (any plain flax model) still joins a grid: the
grid then varies what the training loop reads (optimizer, learning rate,
seeds, precision of storage and updates, ...). Register it under a name to
train it by ``TrainConfig(model=name)`` (``models.register``).
"""

import collections
from collections.abc import Callable, Sequence
import inspect
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rahimi_jax import components
from rahimi_jax.models.base import layer_depth
from rahimi_jax.models.base import Model

# Collections that are not state: what a module sows for inspection.
_NOT_STATE = ('params', 'intermediates')


def _last_axis_of_last_layer(params) -> int:
  """The output width: the last axis of the last top-level entry's last leaf
  (a final ``nn.Dense``'s kernel ``[in, out]``)."""
  last = list(params.values())[-1]
  return jax.tree.leaves(last)[-1].shape[-1]


def sequential_depth(params) -> Any:
  """``Model.depth`` from the order of ``params``' top-level entries: the
  ``i``-th submodule the module created is layer ``i``."""
  return type(params)(
      (name, layer_depth(sub, i)) for i, (name, sub) in enumerate(
          params.items()))


def _is_nnx(module) -> bool:
  try:
    from flax import nnx  # pylint: disable=g-import-not-at-top
  except ImportError:  # an older flax
    return False
  return isinstance(module, nnx.Module)


def from_flax(module: nn.Module | Callable[[int], nn.Module], *,
              choice_axes: Sequence[str] = (),
              depth: Callable[[Any], Any] | None = None,
              rngs: Sequence[str] = ('dropout',),
              out_dim: Callable[[Any], int] | None = None,
              per_sample: bool = False, layer_keys: bool = False) -> Model:
  """A flax linen module as a pure ``Model``.

  Args:
    module: a ``flax.linen.Module`` mapping ``x: [batch, in_dim]`` to
      ``[batch, out_dim]``, or ``make(out_dim) -> Module`` (the output width
      is the dataset's, known at ``init``).
    choice_axes: the choice axes (``registry.AXES`` names) whose knobs the
      module reads; ``()`` for a module that reads none.
    depth: ``Model.depth`` (``depth(params) -> tree of ints``); default
      ``sequential_depth``: each top-level submodule is one layer, in the
      order the module created them. Pass your own where a layer spans
      several submodules (a ``Dense`` and its ``BatchNorm``).
    rngs: the flax PRNG streams the module draws from in ``apply``.
    out_dim: with ``make``, ``out_dim(params) -> int`` recovers the output
      width in ``apply``; default: the last axis of the last parameter of
      the last submodule (a final ``nn.Dense``'s kernel).
    per_sample: ``Model.per_sample``: the module in evaluation (``train=False``
      / ``deterministic=True``) computes each output row from its input row
      alone (no batch statistics); only the module's author can say so.
    layer_keys: ``Model.layer_keys``: the module hands ``key`` to
      ``components.component_key`` with each layer's index (``depth``'s), as
      ``models.cnn`` does, so it may get a ``components.LayerKeys``. The flax
      PRNG streams (``rngs``) know no layer: they always draw from layer 0's
      key (the moved layers' once any layer moved).

  Returns:
    A ``Model``. ``matmul_hook`` is ``False`` (the ``activations`` placement
    cannot round inside a foreign module); ``preactivation_hook`` is ``True``
    where the module's ``__call__`` takes ``preactivation=`` and calls it on
    each hidden pre-activation (as ``models.cnn`` does).
  """
  if isinstance(module, nn.Module):
    fixed = module
    make = lambda out_dim: fixed  # pylint: disable=unnecessary-lambda-assignment
    width = lambda params: None  # pylint: disable=unnecessary-lambda-assignment
    probe = module
  elif _is_nnx(module):
    raise TypeError('from_flax takes a flax.linen.Module; got the flax.nnx '
                    f'module {type(module).__name__} (wrap it for linen with '
                    'flax.nnx.bridge.to_linen).')
  elif callable(module):
    make = module
    width = out_dim or _last_axis_of_last_layer
    try:
      probe = make(1)
    except TypeError as e:
      if not isinstance(module, type):
        raise
      # A module class is a make(out_dim) when its first field is the width.
      raise TypeError(
          f'from_flax: {module.__name__}(1) failed ({e}); pass an instance, '
          f'e.g. {module.__name__}(...), or make(out_dim) -> Module.') from None
  else:
    raise TypeError('from_flax takes a flax.linen.Module or make(out_dim) -> '
                    f'Module; got {type(module).__name__}.')
  if not isinstance(probe, nn.Module):
    raise TypeError(f'from_flax: make(out_dim) returned '
                    f'{type(probe).__name__}, not a flax.linen.Module.')
  accepts = set(inspect.signature(probe.__call__).parameters)
  rngs = tuple(rngs)

  def kwargs(knobs, train, key, preactivation):
    out = {}
    if 'knobs' in accepts:
      out['knobs'] = knobs
    if 'train' in accepts:
      out['train'] = train
    elif 'deterministic' in accepts:
      out['deterministic'] = not train
    if 'key' in accepts:
      out['key'] = key
    if preactivation is not None:
      if 'preactivation' not in accepts:
        raise ValueError(
            f'{type(probe).__name__}.__call__ takes no preactivation= '
            'argument; this model has no pre-activation hook.')
      out['preactivation'] = preactivation
    return out

  def streams(key):
    if key is None:
      return {}
    return {name: components.component_key(key, name) for name in rngs}

  def init(key, in_dim, out_dim, knobs):
    x = jnp.zeros((1, in_dim), jnp.float32)
    y, variables = make(out_dim).init_with_output(
        {'params': key, **streams(key)}, x, **kwargs(knobs, False, None, None))
    if jnp.shape(y) != (1, out_dim):
      raise ValueError(f'{type(probe).__name__} maps [1, {in_dim}] inputs to '
                       f'{list(jnp.shape(y))}; the data needs [1, {out_dim}] '
                       '(pass make(out_dim) -> Module to from_flax to size '
                       'the output from the data).')
    variables = dict(variables)
    params = collections.OrderedDict(variables.get('params', {}))
    state = {c: v for c, v in variables.items() if c not in _NOT_STATE}
    return params, state

  def apply(params, state, x, knobs, train, key=None, preactivation=None):
    mod = make(width(params))
    call = kwargs(knobs, train, key, preactivation)
    variables = {'params': params, **state}
    if not state:
      return mod.apply(variables, x, rngs=streams(key), **call), state
    y, new = mod.apply(variables, x, rngs=streams(key), mutable=list(state),
                       **call)
    return y, {c: new[c] for c in state}

  return Model(init, apply, choice_axes=tuple(choice_axes),
               depth=depth or sequential_depth,
               preactivation_hook='preactivation' in accepts,
               layer_keys=layer_keys, per_sample=per_sample)
