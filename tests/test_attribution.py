"""Differentiable ablations: forward, reverse and finite differences agree."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rahimi_jax import attribution
from rahimi_jax import grid as grid_lib
from rahimi_jax import train as train_lib

GRID = grid_lib.Grid(grid_lib.Choice('norm', ('none', 'batch', 'layer')),
                     grid_lib.Choice('optimizer', ('sgd', 'momentum')),
                     grid_lib.Seeds(2))


def _setup(tiny_digits, remat=False):
  config = train_lib.TrainConfig(hidden=(8,), steps=8, batch_size=32,
                                 log_every=8, dtype='float64',
                                 remat=remat).for_grid(GRID)
  f = attribution.final_metric(config, 'test_loss')
  knobs = jax.tree.map(lambda a: a[0], GRID.knobs([0]))  # none, sgd, seed 0
  return f, knobs


def _central_difference(f, knobs, data, axis, direction, eps=1e-5):
  @jax.jit
  def at(t):
    return f({**knobs, axis: jnp.asarray(knobs[axis], jnp.float64) +
              t * direction}, data)
  return (at(eps) - at(-eps)) / (2 * eps)


@pytest.mark.parametrize('axis, baseline', [('norm', 'none'),
                                            ('optimizer', 'sgd')])
def test_forward_reverse_and_finite_differences_agree(tiny_digits, x64, axis,
                                                      baseline):
  f, knobs = _setup(tiny_digits)
  dirs = attribution.directions(GRID.choices[axis], baseline)
  fwd = jax.jit(lambda k: attribution.gate_sensitivities(
      f, k, tiny_digits, axis, dirs, mode='fwd'))(knobs)
  rev = jax.jit(lambda k: attribution.gate_sensitivities(
      f, k, tiny_digits, axis, dirs, mode='rev'))(knobs)
  fd = jnp.stack([_central_difference(f, knobs, tiny_digits, axis, d)
                  for d in dirs])
  chex.assert_shape(fwd, (len(GRID.choices[axis]) - 1,))
  chex.assert_trees_all_close(fwd, rev, rtol=1e-8, atol=1e-10)
  chex.assert_trees_all_close(fwd, fd, rtol=1e-5, atol=1e-8)
  assert np.all(np.abs(fwd) > 1e-6)  # the components matter here


def test_rematerialized_reverse_mode_is_the_same(tiny_digits, x64):
  f, knobs = _setup(tiny_digits)
  f_remat, _ = _setup(tiny_digits, remat=True)
  dirs = attribution.directions(GRID.choices['norm'], 'none')
  plain = attribution.gate_sensitivities(f, knobs, tiny_digits, 'norm', dirs,
                                         mode='rev')
  remat = attribution.gate_sensitivities(f_remat, knobs, tiny_digits, 'norm',
                                         dirs, mode='rev')
  chex.assert_trees_all_close(plain, remat, rtol=1e-10)


def test_a_component_that_does_nothing_has_zero_sensitivity(tiny_digits, x64):
  f, knobs = _setup(tiny_digits)
  # With momentum 0 the 'momentum' optimizer is plain SGD: no effect at all.
  knobs = {**knobs, 'momentum': jnp.asarray(0.0)}
  dirs = attribution.directions(GRID.choices['optimizer'], 'sgd')
  grad = attribution.gate_sensitivities(f, knobs, tiny_digits, 'optimizer',
                                        dirs, mode='fwd')
  chex.assert_trees_all_close(grad, jnp.zeros_like(grad), atol=1e-12)


def test_vmapped_over_members(tiny_digits, x64):
  f, _ = _setup(tiny_digits)
  dirs = attribution.directions(GRID.choices['norm'], 'none')
  stacked = GRID.knobs()
  every = attribution.member_sensitivities(f, stacked, tiny_digits, 'norm',
                                           dirs)
  chex.assert_shape(every, (len(GRID), 2))
  for i in (0, 5):
    one = attribution.gate_sensitivities(
        f, jax.tree.map(lambda a: a[i], stacked), tiny_digits, 'norm', dirs)
    chex.assert_trees_all_close(every[i], one, rtol=1e-8)


def test_bad_input():
  with pytest.raises(ValueError, match='accuracy'):
    attribution.final_metric(train_lib.TrainConfig(), 'test_accuracy')
  with pytest.raises(ValueError, match='bogus'):
    attribution.directions(('none', 'batch'), 'bogus')
