"""Differentiable ablations: derivatives of a final metric with respect to gates.

Every choice axis is a weight vector on the simplex, so a component's influence
on a trained model is a derivative through the whole training run. Moving the
weight of ``axis`` from its ``baseline`` option toward ``option`` is the
direction ``e_option - e_baseline``; the directional derivative of the final
metric along it is the *gate sensitivity* of that option. At a vertex (a grid
point) it says how the result responds to mixing in a little of the option; on
the segment between baseline and option it integrates to the discrete effect
(the Aumann–Shapley path of issue 3).

Two modes, which agree (tests check both against central finite differences):

* forward (``jax.jvp``): memory independent of the number of steps, one pass
  per direction, vmapped over directions;
* reverse (``jax.grad``): all directions of every axis from one backward pass;
  with ``TrainConfig(remat=True)`` each step is rematerialized.
"""

from collections.abc import Callable, Sequence
import functools
from typing import Any

import jax
import jax.numpy as jnp

from rahimi_jax import train as train_lib
from rahimi_jax.data import Dataset

DIFFERENTIABLE_METRICS = ('train_loss', 'test_loss')


def final_metric(config: train_lib.TrainConfig, metric: str = 'test_loss'
                 ) -> Callable[[dict[str, Any], Dataset], jax.Array]:
  """``f(knobs, data)``: ``metric`` at the end of training (a smooth scalar).

  Accuracy is piecewise constant in the weights (zero derivative almost
  everywhere), so only losses are offered.
  """
  if metric not in DIFFERENTIABLE_METRICS:
    raise ValueError(f'metric {metric!r} is not differentiable; accepted: '
                     f'{", ".join(DIFFERENTIABLE_METRICS)}.')
  train = train_lib.make_train(config)

  def f(knobs, data):
    return train(knobs, data)[metric][-1]

  return f


def directions(options: Sequence[str], baseline: str) -> jax.Array:
  """``[k-1, k]`` rows ``e_option - e_baseline`` for every other option."""
  options = tuple(options)
  if baseline not in options:
    raise ValueError(f'baseline {baseline!r} is not an option; options: '
                     f'{", ".join(options)}.')
  eye = jnp.eye(len(options))
  b = options.index(baseline)
  return jnp.stack([eye[i] - eye[b] for i in range(len(options)) if i != b])


def gate_sensitivities(f, knobs: dict[str, Any], data: Dataset, axis: str,
                       dirs: jax.Array, *, mode: str = 'fwd') -> jax.Array:
  """Directional derivatives of ``f(knobs, data)`` along ``dirs`` of ``axis``.

  Args:
    f: from ``final_metric``.
    knobs: one member's knobs (unstacked); ``knobs[axis]`` is the point.
    data: the dataset.
    axis: a choice axis present in ``knobs``.
    dirs: ``[d, k]`` directions in the axis's weight space.
    mode: 'fwd' (jvp, vmapped over directions) or 'rev' (one grad).

  Returns:
    ``[d]`` derivatives.
  """
  if axis not in knobs:
    raise ValueError(f'axis {axis!r} is not among the knobs: {sorted(knobs)}.')

  def along(weights):
    return f({**knobs, axis: weights}, data)

  dirs = jnp.asarray(dirs)
  point = jnp.asarray(knobs[axis], dirs.dtype)
  if mode == 'fwd':
    return jax.vmap(lambda d: jax.jvp(along, (point,), (d,))[1])(dirs)
  if mode == 'rev':
    return dirs @ jax.grad(along)(point)
  raise ValueError(f'mode {mode!r}; accepted: fwd, rev.')


@functools.partial(jax.jit, static_argnums=(0, 3, 5))
def member_sensitivities(f, stacked_knobs, data, axis, dirs, mode='fwd'):
  """``gate_sensitivities`` for every member of stacked knobs: ``[G, d]``."""
  return jax.vmap(lambda k: gate_sensitivities(f, k, data, axis, dirs,
                                               mode=mode))(stacked_knobs)
