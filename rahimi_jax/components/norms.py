"""Normalization layers as pure ``(init, apply)`` pairs, and their relaxation.

Every option shares one signature::

  params, state = norm.init(features)
  y, state = norm.apply(params, state, x, train, key)
  # x: [batch, ..., features], e.g. [batch, features] after a dense layer or
  # [batch, length, channels] after a 1-D convolution.

``state`` holds statistics that are not trained by gradients (batch norm's
running averages); ``train`` is a static Python bool; ``key`` is this layer's
PRNG key for the step (``train.step_key``; the same for every option, so arms
stay paired), which a stochastic norm draws from and the others ignore. An
option that reads the axis's value knobs (listed in a ``Knob.read_by`` of
``AXIS``: noisy batch norm's noise) also takes ``hp=``, a mapping of them to
traced scalars.

On inputs with axes between batch and features (a conv layer's
``[batch, length, channels]``) the features are the channels: batch norm (and
noisy batch norm) takes each channel's statistics over the batch and every
position, as convolutional batch norm does; layer and RMS norm normalize each
position's channel vector (statistics over the last axis only, as in a
transformer's layer norm, not over length and channels together); the learned
scale, and noisy batch norm's noise, are per channel. On ``[batch, features]``
inputs every norm is what it was before these axes were allowed.

Norms carry a learned scale but no bias: the layer that uses a norm adds its
bias after it (``norm(x @ w) + b``). A bias before a norm that removes the mean
has, in exact arithmetic, zero gradient; in floats its gradient is rounding
noise, which Adam rescales to full-size steps, so runs whose programs differ
only in the last bit (a grid member and the same run alone) would drift apart.
"""


from collections.abc import Callable, Mapping, Sequence
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
  """Batch norm: batch statistics in training, running averages in eval.

  Statistics are per feature (the last axis) over every other axis: the batch
  and, for conv maps ``[batch, length, channels]``, the positions.
  """

  def init(features):
    state = {'mean': jnp.zeros((features,)), 'var': jnp.ones((features,))}
    return _scale(features), state

  def apply(params, state, x, train, key=None):
    del key
    if train:
      axes = tuple(range(x.ndim - 1))  # (0,) for [batch, features]
      mean = jnp.mean(x, axis=axes)
      var = jnp.var(x, axis=axes)
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


def _std(var):
  """``sqrt(var)`` with derivative 0 at ``var == 0`` (not ``inf``), so that
  the zero-noise point differentiates with respect to the other knobs."""
  positive = var > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, var, 1.0)), 0.0)


def _noisy_batch(momentum: float = BATCH_NORM_MOMENTUM,
                 eps: float = EPS) -> Norm:
  """Batch norm, then in training a random per-unit scale and shift.

  Santurkar et al. (2018, section 2.1) add time-varying noise of non-zero mean
  and non-unit variance after batch norm, so that each unit's distribution
  moves from step to step however well batch norm fixed it: covariate shift
  added on purpose. Here, after batch norm (with its learned scale), unit
  ``j`` at a step is ``y_j * m_j + n_j`` with ``m_j ~ N(noise_scale_mean,
  noise_scale_var)`` and ``n_j ~ N(noise_shift_mean, noise_shift_var)``,
  drawn anew every step from the layer's ``key`` and shared by the rows of
  the batch (and by the positions of a conv map: the noise is per channel):
  the unit's mean moves by ``n_j`` and its scale by ``m_j``. A variant:
  the paper perturbs each activation of each sample with i.i.d. noise, which
  also adds per-sample noise (a regularizer, perhaps); this moves each unit's
  batch distribution only, the property the study's verdict reads.
  Members that share a seed draw the same noise. In eval mode, or without a
  key, it is batch norm (the running averages are batch norm's, taken before
  the noise). At zero variances and mean scale 1, shift 0 it is batch norm
  exactly. Each step's shift has a non-zero mean whatever the knobs; a
  non-zero *mean* shift (or mean scale other than 1), which evaluation does
  not apply, is also a train/eval mismatch (WORKSPACE.md measures it), so
  the defaults center the noise: shift ~ N(0, 0.25), scale ~ N(1, 0.25).

  References:
    Santurkar, Tsipras, Ilyas, Madry, "How does batch normalization help
    optimization?", NeurIPS 2018.
  """
  batch = _batch(momentum, eps)

  def apply(params, state, x, train, key=None, hp=None):
    y, state = batch.apply(params, state, x, train)
    if not train or key is None:
      return y, state
    hp = knob_values(hp)
    scale_key, shift_key = jax.random.split(key)
    shape = y.shape[-1:]
    scale = (hp['noise_scale_mean'].astype(y.dtype)
             + _std(hp['noise_scale_var']).astype(y.dtype)
             * jax.random.normal(scale_key, shape, y.dtype))
    shift = (hp['noise_shift_mean'].astype(y.dtype)
             + _std(hp['noise_shift_var']).astype(y.dtype)
             * jax.random.normal(shift_key, shape, y.dtype))
    return y * scale + shift, state

  return Norm(batch.init, apply)


NORMS: dict[str, Norm] = registry.Options('norm', {
    'none': _none(),
    'batch': _batch(),
    'layer': _layer(),
    'rms': _rms(),
    'noisy_batch': _noisy_batch(),
}, registry.InstanceOf(Norm, 'a components.norms.Norm (init, apply)'))


_NOISY = ('noisy_batch',)
AXIS = registry.register(registry.Axis(
    name='norm', options=NORMS, default='none', flag='norms',
    help=('Normalizations after each hidden layer\'s matmul (noisy_batch: '
          'batch norm, then a random per-unit scale and shift redrawn every '
          'training step).'),
    study=('none', 'batch', 'layer'),
    switchable=True,
    knobs=(
        registry.Knob('noise_shift_mean', 0.0, 'Mean of noisy batch norm\'s '
                      'per-unit shift.', minimum=None, read_by=_NOISY),
        registry.Knob('noise_shift_var', 0.25, 'Variance of noisy batch '
                      'norm\'s per-unit shift.', inclusive=True,
                      read_by=_NOISY),
        registry.Knob('noise_scale_mean', 1.0, 'Mean of noisy batch norm\'s '
                      'per-unit scale.', read_by=_NOISY),
        registry.Knob('noise_scale_var', 0.25, 'Variance of noisy batch '
                      'norm\'s per-unit scale.', inclusive=True,
                      read_by=_NOISY))))


def knob_values(hp: Mapping[str, Any] | None = None) -> dict[str, jax.Array]:
  """The norm axis's value knobs from ``hp`` (any mapping that holds them,
  such as a model's knobs); a knob it lacks takes its default."""
  hp = {} if hp is None else hp
  return {k.name: jnp.asarray(hp.get(k.name, k.default), jnp.float32)
          for k in AXIS.knobs}


def relaxed_norm(names: Sequence[str]):
  """The mixture of ``names``: ``apply(params, state, x, weights, train, key,
  hp)``.

  Each option keeps its own parameters and state (dicts keyed by name); the
  output is ``sum_i weights[i] * option_i(x)``. ``hp`` is a mapping holding
  the axis's value knobs (a model passes its knobs; one it lacks takes its
  default, ``None``: all defaults). Each option reads its inputs and ``hp``
  through ``relaxed.guard``, so one of weight 0 poisons no value or gradient.
  """
  names = AXIS.check(names)
  norms = [NORMS[n] for n in names]
  readers = {n for k in AXIS.knobs for n in k.readers(NORMS)}

  def init(features):
    inits = [norm.init(features) for norm in norms]
    return ({n: p for n, (p, _) in zip(names, inits)},
            {n: s for n, (_, s) in zip(names, inits)})

  def apply(params, state, x, weights, train, key=None, hp=None):
    hp = knob_values(hp)
    if relaxed.switched(AXIS.name):  # only the member's own norm
      def branch(n, norm):
        def run():
          extra = {'hp': hp} if n in readers else {}
          y, s = norm.apply(params[n], state[n], x, train, key, **extra)
          return y, {**state, n: s}
        return run
      return relaxed.choose(weights, [branch(n, norm)
                                      for n, norm in zip(names, norms)])
    outs = []
    for i, (n, norm) in enumerate(zip(names, norms)):
      p, s, xi, h = relaxed.guard(weights[i], (params[n], state[n], x, hp))
      extra = {'hp': h} if n in readers else {}
      outs.append(norm.apply(p, s, xi, train, key, **extra))
    y = relaxed.mix(weights, [y for y, _ in outs])
    return y, {n: s for n, (_, s) in zip(names, outs)}

  return init, apply
