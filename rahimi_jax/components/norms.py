"""Normalization layers as pure ``(init, apply)`` pairs, and their relaxation.

Every option shares one signature::

  params, state = norm.init(features)
  y, state = norm.apply(params, state, x, train, key)   # x: [batch, features]

``state`` holds statistics that are not trained by gradients (batch norm's
running averages); ``train`` is a static Python bool; ``key`` is this layer's
PRNG key for the step (``train.step_key``; the same for every option, so arms
stay paired), which a stochastic norm draws from and the others ignore.

Norms carry a learned scale but no bias: the layer that uses a norm adds its
bias after it (``norm(x @ w) + b``). A bias before a norm that removes the mean
has, in exact arithmetic, zero gradient; in floats its gradient is rounding
noise, which Adam rescales to full-size steps, so runs whose programs differ
only in the last bit (a grid member and the same run alone) would drift apart.
"""


from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rahimi_jax import registry
from rahimi_jax.components import relaxed

EPS = 1e-5
BATCH_NORM_MOMENTUM = 0.9


class Norm(NamedTuple):
  init: Callable[[int], tuple[Any, Any]]
  apply: Callable[..., tuple[jax.Array, Any]]


def _scale(features):
  return {'scale': jnp.ones((features,))}


def _none() -> Norm:
  def init(features):
    del features
    return {}, {}

  def apply(params, state, x, train, key=None):
    del params, train, key
    return x, state

  return Norm(init, apply)


def _batch(momentum: float = BATCH_NORM_MOMENTUM, eps: float = EPS) -> Norm:
  """Batch norm: batch statistics in training, running averages in eval."""

  def init(features):
    state = {'mean': jnp.zeros((features,)), 'var': jnp.ones((features,))}
    return _scale(features), state

  def apply(params, state, x, train, key=None):
    del key
    if train:
      mean = jnp.mean(x, axis=0)
      var = jnp.var(x, axis=0)
      state = {
          'mean': momentum * state['mean'] + (1 - momentum) * mean,
          'var': momentum * state['var'] + (1 - momentum) * var,
      }
    else:
      mean, var = state['mean'], state['var']
    y = (x - mean) * jax.lax.rsqrt(var + eps)
    return y * params['scale'], state

  return Norm(init, apply)


def _layer(eps: float = EPS) -> Norm:
  def init(features):
    return _scale(features), {}

  def apply(params, state, x, train, key=None):
    del train, key
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.var(x, axis=-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + eps)
    return y * params['scale'], state

  return Norm(init, apply)


def _rms(eps: float = EPS) -> Norm:
  def init(features):
    return _scale(features), {}

  def apply(params, state, x, train, key=None):
    del train, key
    y = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)
    return y * params['scale'], state

  return Norm(init, apply)


NORMS: dict[str, Norm] = {
    'none': _none(),
    'batch': _batch(),
    'layer': _layer(),
    'rms': _rms(),
}


AXIS = registry.register(registry.Axis(
    name='norm', options=NORMS, default='none', flag='norms',
    help='Normalizations after each hidden layer\'s matmul.',
    study=('none', 'batch', 'layer')))


def relaxed_norm(names: Sequence[str]):
  """The mixture of ``names``: ``apply(params, state, x, weights, train, key)``.

  Each option keeps its own parameters and state (dicts keyed by name); the
  output is ``sum_i weights[i] * option_i(x)``. Each option reads its inputs
  through ``relaxed.guard``, so one of weight 0 poisons no value or gradient.
  """
  names = AXIS.check(names)
  norms = [NORMS[n] for n in names]

  def init(features):
    inits = [norm.init(features) for norm in norms]
    return ({n: p for n, (p, _) in zip(names, inits)},
            {n: s for n, (_, s) in zip(names, inits)})

  def apply(params, state, x, weights, train, key=None):
    outs = [norm.apply(*relaxed.guard(weights[i], (params[n], state[n], x)),
                       train, key)
            for i, (n, norm) in enumerate(zip(names, norms))]
    y = relaxed.mix(weights, [y for y, _ in outs])
    return y, {n: s for n, (_, s) in zip(names, outs)}

  return init, apply
