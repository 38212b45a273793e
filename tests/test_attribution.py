"""Differentiable ablations: forward, reverse and finite differences agree."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as scipy_stats

from rahimi_jax import attribution
from rahimi_jax import grid as grid_lib
from rahimi_jax import train as train_lib

GRID = grid_lib.Grid(grid_lib.Choice('norm', ('none', 'batch', 'layer')),
                     grid_lib.Choice('optimizer', ('sgd', 'momentum')),
                     grid_lib.Seeds(2))


# tanh: the final loss is smooth in the gates (ReLU makes it piecewise
# smooth with many kinks, and path quadrature then converges slowly).
SMOOTH = grid_lib.Grid(*GRID.axes[:2], grid_lib.Choice('activation', ('tanh',)),
                       grid_lib.Seeds(2))


def _setup(tiny_digits, remat=False, grid=GRID):
  config = train_lib.TrainConfig(hidden=(8,), steps=8, batch_size=32,
                                 log_every=8, dtype='float64',
                                 remat=remat).for_grid(grid)
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


def _factorial(effect, interaction=0.0, seeds=5):
  """Results of a 2^3 grid with known additive effects (+ one interaction)."""
  from rahimi_jax import results as results_lib  # pylint: disable=g-import-not-at-top
  grid = grid_lib.Grid(grid_lib.Choice('norm', ('none', 'batch')),
                       grid_lib.Choice('optimizer', ('sgd', 'momentum')),
                       grid_lib.Choice('init', ('lecun_normal', 'orthogonal')),
                       grid_lib.Seeds(seeds))
  rng = np.random.default_rng(0)
  seed_noise = rng.normal(0, 0.05, seeds)
  on = {'norm': 'batch', 'optimizer': 'momentum', 'init': 'orthogonal'}
  values = []
  for m in grid.members:
    x = {c: float(m.values[c] == on[c]) for c in on}
    values.append(0.8 + sum(effect[c] * x[c] for c in on) +
                  interaction * x['norm'] * x['optimizer'] +
                  seed_noise[m.values['seed']])
  outputs = {'step': np.zeros((len(grid), 1), np.int32),
             'test_accuracy': np.asarray(values)[:, None],
             'diverged_step': np.full(len(grid), -1, np.int32)}
  return results_lib.from_outputs(grid, outputs)


def test_shapley_recovers_additive_effects_and_a_null_component():
  effect = {'norm': 0.05, 'optimizer': 0.02, 'init': 0.0}
  res = _factorial(effect)
  values = attribution.shapley(res, 'test_accuracy', list(effect))
  for c, e in effect.items():
    chex.assert_trees_all_close(values[c].mean, e, atol=1e-12)
    assert values[c].n == 5


def test_shapley_splits_an_interaction_and_is_efficient():
  effect = {'norm': 0.05, 'optimizer': 0.02, 'init': 0.0}
  res = _factorial(effect, interaction=0.04)
  values = attribution.shapley(res, 'test_accuracy', list(effect))
  # The interaction is shared equally between the two components.
  chex.assert_trees_all_close(values['norm'].mean, 0.07, atol=1e-12)
  chex.assert_trees_all_close(values['optimizer'].mean, 0.04, atol=1e-12)
  total = sum(v.mean for v in values.values())
  chex.assert_trees_all_close(total, 0.05 + 0.02 + 0.04, atol=1e-12)
  effects = attribution.anova(res, 'test_accuracy', list(effect))
  chex.assert_trees_all_close(effects['norm'].mean, 0.05 + 0.04 / 2, atol=1e-12)
  chex.assert_trees_all_close(effects[('norm', 'optimizer')].mean, 0.02,
                              atol=1e-12)
  chex.assert_trees_all_close(effects[('norm', 'init')].mean, 0.0, atol=1e-12)


def test_shapley_and_anova_intervals_are_t_intervals_over_seeds():
  # One on/off component, 4 seeds; the per-seed effect 0.05 + dev is
  # symmetric about 0.05 (skewness 0), so the interval is Student-t's.
  from rahimi_jax import results as results_lib  # pylint: disable=g-import-not-at-top
  grid = grid_lib.Grid(grid_lib.Choice('norm', ('none', 'batch')),
                       grid_lib.Seeds(4))
  dev = np.asarray([-0.03, -0.01, 0.01, 0.03])
  seed_level = np.asarray([0.5, 0.7, 0.6, 0.8])
  loss = np.asarray([seed_level[m.values['seed']] +
                     (m.values['norm'] == 'batch') * (0.05 + dev[m.values['seed']])
                     for m in grid.members])
  res = results_lib.from_outputs(grid, {
      'step': np.zeros((len(grid), 1), np.int32), 'test_loss': loss[:, None],
      'diverged_step': np.full(len(grid), -1, np.int32)})
  want = scipy_stats.ttest_1samp(0.05 + dev, 0.0).confidence_interval(0.95)
  for ci in (attribution.shapley(res, 'test_loss', ['norm'])['norm'],
             attribution.anova(res, 'test_loss', ['norm'])['norm']):
    chex.assert_trees_all_close((ci.mean, ci.low, ci.high),
                                (0.05, want.low, want.high), rtol=1e-10)
    assert ci.n == 4


def test_shapley_needs_on_off_axes():
  res = _factorial({'norm': 0.0, 'optimizer': 0.0, 'init': 0.0})
  with pytest.raises(ValueError, match='seed'):
    attribution.shapley(res, 'test_accuracy', ['seed'])
  with pytest.raises(ValueError, match='bogus'):
    attribution.shapley(res, 'test_accuracy', ['norm', 'bogus'])
  with pytest.raises(ValueError, match='baseline'):
    attribution.shapley(res, 'test_accuracy', ['norm'], {'norm': 'layer'})


def test_aumann_shapley_is_complete_and_zero_for_a_null_component(
    tiny_digits, x64):
  f, knobs = _setup(tiny_digits, grid=SMOOTH)
  components = {'norm': (0, 1), 'optimizer': (0, 1)}  # none->batch, sgd->momentum
  credits = jax.jit(lambda k: attribution.aumann_shapley(
      f, k, tiny_digits, components, nodes=6))(knobs)
  chex.assert_shape(credits, (2,))

  def at(norm, optimizer):
    return f({**knobs, 'norm': jnp.eye(3)[norm], 'optimizer': jnp.eye(2)[optimizer]},
             tiny_digits)

  total = at(1, 1) - at(0, 0)
  chex.assert_trees_all_close(jnp.sum(credits), total, rtol=1e-3)
  null = attribution.aumann_shapley(f, {**knobs, 'momentum': jnp.asarray(0.0)},
                                    tiny_digits, components, nodes=4)
  chex.assert_trees_all_close(null[1], 0.0, atol=1e-12)
