"""Differentiable ablations: forward, reverse and finite differences agree."""

import itertools

import chex
import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
from scipy import stats as scipy_stats

from rahimi_jax import attribution
from rahimi_jax import grid as grid_lib
from rahimi_jax import registry
from rahimi_jax import stats
from rahimi_jax import train as train_lib

# tanh: the final loss is smooth in the gates (ReLU makes it piecewise
# smooth with many kinks, and path quadrature then converges slowly).
GRID = grid_lib.Grid(grid_lib.Choice('norm', ('none', 'batch', 'layer')),
                     grid_lib.Choice('optimizer', ('sgd', 'momentum')),
                     grid_lib.Choice('activation', ('tanh',)),
                     grid_lib.Seeds(2))
STEPS = 3  # a training run to differentiate through, as short as makes sense
MOMENTUM = registry.knobs()['momentum'].default

# Sensitivities compiled once per (f, axis, mode) and shared by the tests.
_sensitivities = jax.jit(attribution.gate_sensitivities,
                         static_argnames=('f', 'axis', 'mode'))


def _final_metric(remat=False):
  return attribution.final_metric(train_lib.TrainConfig(
      hidden=(8,), steps=STEPS, batch_size=0, log_every=STEPS,
      dtype='float64', remat=remat).for_grid(GRID), 'test_loss')


def _knobs(member, momentum=MOMENTUM):
  """One member's knobs, of the dtypes every test passes (one compile each)."""
  knobs = jax.tree.map(lambda a: a[0], GRID.knobs([member]))
  return {**knobs, **{a: jnp.asarray(knobs[a], jnp.float64)
                      for a in GRID.choices},
          'momentum': jnp.asarray(momentum, jnp.float32)}


# Module fixtures here turn float64 on until the module ends (conftest).
USES_X64 = True


@pytest.fixture(scope='module')
def x64_module():
  previous = jax.config.jax_enable_x64
  jax.config.update('jax_enable_x64', True)
  yield
  jax.config.update('jax_enable_x64', previous)


@pytest.fixture(scope='module')
def trained(tiny_digits, x64_module):
  """``(f, at)``: the final test loss, and ``f`` jitted (for evaluations)."""
  del x64_module
  f = _final_metric()
  return f, jax.jit(lambda knobs: f(knobs, tiny_digits))


# Reverse mode on one axis (each mode and axis is a compile of the run's
# derivative; fwd == rev is a property of the mode, not of the axis).
@pytest.mark.parametrize('axis, baseline, modes', [
    ('norm', 'none', ('fwd', 'rev')), ('optimizer', 'sgd', ('fwd',))])
def test_gate_sensitivities_are_central_differences(trained, tiny_digits,
                                                    axis, baseline, modes):
  f, at = trained
  knobs = _knobs(0)  # none, sgd, seed 0
  dirs = attribution.directions(GRID.choices[axis], baseline)
  if 'rev' in modes:  # forward mode vmapped over members 0 and 5
    members = [0, 5]
    every = jax.jit(jax.vmap(lambda k: attribution.gate_sensitivities(
        f, k, tiny_digits, axis, dirs)))(GRID.knobs(members))
    chex.assert_shape(every, (len(members), len(dirs)))
    fwd = every[0]
  else:
    fwd = _sensitivities(f, knobs, tiny_digits, axis, dirs, mode='fwd')
  chex.assert_shape(fwd, (len(GRID.choices[axis]) - 1,))
  assert np.all(np.abs(fwd) > 1e-6)  # the components matter here

  def along(t):  # t: [d] steps along the directions
    return at({**knobs, axis: knobs[axis] + t @ dirs})

  t = jnp.zeros(len(dirs))
  jax.test_util.check_jvp(along, lambda ts, dts: (along(*ts), dts[0] @ fwd),
                          (t,))
  if 'rev' in modes:
    for row, i in zip(every, members):  # each member's row is its own
      rev = _sensitivities(f, _knobs(i), tiny_digits, axis, dirs, mode='rev')
      chex.assert_trees_all_close(row, rev, rtol=1e-8, atol=1e-10)
    rev = _sensitivities(f, knobs, tiny_digits, axis, dirs, mode='rev')
    jax.test_util.check_vjp(along, lambda t: (along(t), lambda ct: (ct * rev,)),
                            (t,))


def test_gate_path_ends_at_the_off_and_on_members(trained, tiny_digits):
  # What Aumann-Shapley integrates the gradient of (its derivative is checked
  # there: the integral of the path gradient is the difference of the ends).
  _, at = trained
  knobs = _knobs(0)
  path = attribution.gate_path(lambda k, data: at(k), knobs, tiny_digits,
                               {'norm': (0, 2), 'optimizer': (0, 1)})
  chex.assert_trees_all_close(path(jnp.zeros(2)), at(knobs), rtol=1e-12)
  chex.assert_trees_all_close(
      path(jnp.ones(2)),
      at({**knobs, 'norm': jnp.eye(3)[2], 'optimizer': jnp.eye(2)[1]}),
      rtol=1e-12)


def test_rematerialized_reverse_mode_is_the_same(trained, tiny_digits):
  f, _ = trained
  dirs = attribution.directions(GRID.choices['norm'], 'none')
  plain, remat = (_sensitivities(g, _knobs(0), tiny_digits, 'norm', dirs,
                                 mode='rev') for g in (f, _final_metric(True)))
  chex.assert_trees_all_close(plain, remat, rtol=1e-10)


def test_a_component_that_does_nothing_has_zero_sensitivity(trained,
                                                            tiny_digits):
  f, _ = trained
  # With momentum 0 the 'momentum' optimizer is plain SGD: no effect at all.
  dirs = attribution.directions(GRID.choices['optimizer'], 'sgd')
  grad = _sensitivities(f, _knobs(0, momentum=0.0), tiny_digits, 'optimizer',
                        dirs, mode='fwd')
  chex.assert_trees_all_close(grad, jnp.zeros_like(grad), atol=1e-12)


def test_aumann_shapley_is_complete_and_zero_for_a_null_component(
    trained, tiny_digits):
  f, at = trained
  # none -> batch, sgd -> momentum
  components = {'norm': (0, 1), 'optimizer': (0, 1)}
  credits = jax.jit(lambda k: attribution.aumann_shapley(
      f, k, tiny_digits, components, nodes=6))
  knobs = _knobs(0)
  total = (at({**knobs, 'norm': jnp.eye(3)[1], 'optimizer': jnp.eye(2)[1]}) -
           at(knobs))
  chex.assert_shape(credits(knobs), (2,))
  chex.assert_trees_all_close(jnp.sum(credits(knobs)), total, rtol=1e-3)
  null = credits(_knobs(0, momentum=0.0))
  chex.assert_trees_all_close(null[1], 0.0, atol=1e-12)


def test_bad_input():
  with pytest.raises(ValueError, match="'test_accuracy' is not "
                     r'differentiable \(piecewise constant\); accepted'):
    attribution.final_metric(train_lib.TrainConfig(), 'test_accuracy')
  with pytest.raises(ValueError, match="metric 'foo' is unknown; accepted: "
                     'train_loss, test_loss'):
    attribution.final_metric(train_lib.TrainConfig(), 'foo')
  with pytest.raises(ValueError, match="metric 'grad_norm' is not a loss of "
                     'the trained model; accepted'):
    attribution.final_metric(train_lib.TrainConfig(), 'grad_norm')
  with pytest.raises(ValueError, match='bogus'):
    attribution.directions(('none', 'batch'), 'bogus')
  with pytest.raises(ValueError, match='bogus'):
    attribution.gate_path(None, {'norm': None}, None, {'bogus': (0, 1)})
  # Option indices: an index past the axis was a zero weight vector (a
  # credit for nothing), off == on a silent 0.
  knobs = {'norm': jnp.eye(3)[0], 'learning_rate': jnp.float32(0.1)}
  for ends in ((0, 5), (-1, 1), (1, 1), (0.0, 1), (True, 2), (0,)):
    with pytest.raises(ValueError, match=r"component 'norm': \(off, on\) = "
                       r'.*two different option indices in 0\.\.2'):
      attribution.gate_path(None, knobs, None, {'norm': ends})
  with pytest.raises(ValueError, match=r"'learning_rate': knobs\['learning_"
                     r"rate'\] has shape \(\)"):
    attribution.gate_path(None, knobs, None, {'learning_rate': (0, 1)})
  with pytest.raises(ValueError, match='at least one'):
    attribution.gate_path(None, knobs, None, {})
  # Directions: one row per direction over the axis's options.
  for dirs in (jnp.ones(3), jnp.ones((2, 2))):
    with pytest.raises(ValueError, match=r"dirs: shape .*expected \[d, 3\]"):
      attribution.gate_sensitivities(None, knobs, None, 'norm', dirs)


def _factorial(effect, interaction=0.0, seeds=5, triple=0.0):
  """Results of a 2^3 grid with known additive effects (+ one interaction,
  + ``triple`` when all three components are on)."""
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
                  triple * x['norm'] * x['optimizer'] * x['init'] +
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


def test_shapley_weights_a_three_way_interaction_by_coalition_size():
  # Additive and pairwise effects are split alike by any weights symmetric
  # in the coalition size (Banzhaf's 1/2**(n-1) too); a term present only
  # when all three are on is not. The reference averages each component's
  # marginal contribution over the 3! orders, on the game as defined here.
  effect = {'norm': 0.05, 'optimizer': 0.02, 'init': 0.01}
  interaction, triple = 0.04, 0.06
  res = _factorial(effect, interaction=interaction, triple=triple)
  values = attribution.shapley(res, 'test_accuracy', list(effect))

  def v(on):
    return (0.8 + sum(effect[c] for c in on) +
            interaction * ('norm' in on and 'optimizer' in on) +
            triple * (len(on) == 3))

  want = dict.fromkeys(effect, 0.0)
  orders = list(itertools.permutations(effect))
  for order in orders:
    for i, c in enumerate(order):
      want[c] += (v(set(order[:i + 1])) - v(set(order[:i]))) / len(orders)
  chex.assert_trees_all_close({c: values[c].mean for c in effect}, want,
                              atol=1e-12)
  # Efficiency: the values add up to v(all) - v(none).
  chex.assert_trees_all_close(sum(ci.mean for ci in values.values()),
                              v(set(effect)) - v(set()), atol=1e-12)


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
  want = scipy_stats.ttest_1samp(0.05 + dev, 0.0).confidence_interval(
      stats.calibrated_level(4, 0.95))
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
  # A misspelled baseline was ignored (the first value taken: signs flipped).
  with pytest.raises(ValueError, match=r"baselines: \['nrom'\] are not among "
                     r"the components \['norm'\]"):
    attribution.shapley(res, 'test_accuracy', ['norm'], {'nrom': 'batch'})
  with pytest.raises(ValueError, match='names an axis twice'):
    attribution.anova(res, 'test_accuracy', ['norm', 'norm'])
  with pytest.raises(ValueError, match="Unknown metric 'test_acc'; columns: "):
    attribution.shapley(res, 'test_acc', ['norm'])


def test_drop_diverged_seeds_keeps_complete_seeds():
  from rahimi_jax import results as results_lib  # pylint: disable=g-import-not-at-top
  grid = grid_lib.Grid(grid_lib.Choice('norm', ('none', 'batch')),
                       grid_lib.Seeds(3))
  loss = np.array([[1.0], [2.0], [np.nan], [3.0], [4.0], [5.0]])
  diverged_step = np.array([-1, -1, 7, -1, -1, -1], np.int32)
  res = results_lib.from_outputs(grid, {
      'step': np.full((6, 1), 10, np.int32), 'test_loss': loss,
      'diverged_step': diverged_step})
  bad, kept = attribution.drop_diverged_seeds(res, 'test_loss')
  member = res.columns['member'][2]
  assert bad == [(member, 7)]
  seed_of_bad = res.columns['seed'][2]
  assert seed_of_bad not in set(kept.columns['seed'])
  assert len(kept) == 4


def test_a_finished_run_with_a_non_finite_metric_drops_its_seed_too():
  # diverged_step -1 (the run finished) but the final metric is NaN (a
  # reading that overflowed): its cell would be averaged over a different
  # mix of members, so its seed goes like a diverged member's.
  from rahimi_jax import results as results_lib  # pylint: disable=g-import-not-at-top
  grid = grid_lib.Grid(grid_lib.Choice('norm', ('none', 'batch')),
                       grid_lib.Choice('init', ('lecun_normal', 'orthogonal')),
                       grid_lib.Seeds(3))
  loss = np.asarray([1.0 + 0.5 * (m.values['norm'] == 'batch') +
                     0.1 * m.values['seed'] for m in grid.members])
  bad = next(m for m in grid.members if m.values['seed'] == 1
             and m.values['norm'] == 'batch' and m.values['init'] == 'orthogonal')
  loss[bad.index] = np.nan
  res = results_lib.from_outputs(grid, {
      'step': np.full((len(grid), 1), 10, np.int32),
      'test_loss': loss[:, None],
      'diverged_step': np.full(len(grid), -1, np.int32)})
  dropped, kept = attribution.drop_diverged_seeds(res, 'test_loss')
  assert dropped == [(bad.name, -1)]
  assert sorted(set(kept.columns['seed'].tolist())) == [0, 2]
  assert len(kept) == len(grid) - 4
  value = attribution.shapley(res, 'test_loss', ['norm'])['norm']
  chex.assert_trees_all_close(value.mean, 0.5, atol=1e-12)
  assert value.n == 2


def test_a_diverged_member_drops_its_seed_not_its_cell():
  # A 2 x 2 factorial x 2 learning rates: b has no effect, the larger rate
  # lowers the loss by 1. The member (b on, rate 0.2) of seed 0 diverges.
  # Averaging that seed's cell over its survivors would credit b with the
  # rate's effect (-0.5); dropping the seed keeps b's value exactly 0.
  from rahimi_jax import results as results_lib  # pylint: disable=g-import-not-at-top
  grid = grid_lib.Grid(grid_lib.Choice('a', ('off', 'on')),
                       grid_lib.Choice('b', ('off', 'on')),
                       grid_lib.Values('learning_rate', (0.1, 0.2)),
                       grid_lib.Seeds(4))
  loss, step = [], []
  for m in grid.members:
    v = m.values
    bad = v['b'] == 'on' and v['learning_rate'] == 0.2 and v['seed'] == 0
    loss.append(np.nan if bad else 2.0 + 0.3 * (v['a'] == 'on') -
                (v['learning_rate'] == 0.2) + 0.01 * v['seed'])
    step.append(5 if bad else -1)
  res = results_lib.from_outputs(grid, {
      'step': np.full((len(grid), 1), 10, np.int32),
      'test_loss': np.asarray(loss)[:, None],
      'diverged_step': np.asarray(step, np.int32)})
  values = attribution.shapley(res, 'test_loss', ['a', 'b'])
  effects = attribution.anova(res, 'test_loss', ['a', 'b'])
  for ci, want in ((values['a'], 0.3), (values['b'], 0.0),
                   (effects['a'], 0.3), (effects['b'], 0.0)):
    chex.assert_trees_all_close(ci.mean, want, atol=1e-12)
    assert ci.n == 3
  every = results_lib.from_outputs(grid, {
      'step': np.full((len(grid), 1), 10, np.int32),
      'test_loss': np.full((len(grid), 1), np.nan),
      'diverged_step': np.full(len(grid), 3, np.int32)})
  with pytest.raises(ValueError, match='every seed has a diverged member'):
    attribution.shapley(every, 'test_loss', ['a', 'b'])


def test_an_unbalanced_grid_is_refused_not_averaged():
  # b does nothing; the larger rate lowers the loss by 1. A union that runs
  # b=on only at rate 0.1 is the full factorial of (a, b), but b's cells
  # average other rates than its baseline's: that credited b with +0.5.
  from rahimi_jax import results as results_lib  # pylint: disable=g-import-not-at-top
  def part(b, rates):
    return grid_lib.Grid(grid_lib.Choice('a', ('off', 'on')),
                         grid_lib.Choice('b', (b,)),
                         grid_lib.Values('learning_rate', rates),
                         grid_lib.Seeds(3))
  grid = grid_lib.Grid.union(part('off', (0.1, 0.2)), part('on', (0.1,)))
  loss = [[2.0 + 0.3 * (m.values['a'] == 'on') -
           (m.values['learning_rate'] == 0.2) + 0.01 * m.values['seed']]
          for m in grid.members]
  res = results_lib.from_outputs(grid, {
      'step': np.zeros((len(grid), 1), np.int32),
      'test_loss': np.asarray(loss),
      'diverged_step': np.full(len(grid), -1, np.int32)})
  for attribute in (attribution.shapley, attribution.anova):
    with pytest.raises(ValueError, match=r'not the full factorial of the '
                       r'components crossed with the other axes '
                       r'\(learning_rate\): seed 0, a=off, b=on'):
      attribute(res, 'test_loss', ['a', 'b'])
  # Without the rate axis's imbalance (its rate-0.1 members only) it is exact.
  sub = res.subset(np.isclose(res.columns['learning_rate'], 0.1))
  values = attribution.shapley(sub, 'test_loss', ['a', 'b'])
  chex.assert_trees_all_close((values['a'].mean, values['b'].mean),
                              (0.3, 0.0), atol=1e-6)


def test_an_unbalanced_cell_is_the_one_named():
  """A member missing from the first cell (seed 0 all off): the error named
  seed 1's complete all-off cell, against the first cell's mix."""
  from rahimi_jax import results as results_lib  # pylint: disable=g-import-not-at-top
  grid = grid_lib.Grid(grid_lib.Choice('a', ('off', 'on')),
                       grid_lib.Choice('b', ('off', 'on')),
                       grid_lib.Values('learning_rate', (0.1, 0.2)),
                       grid_lib.Seeds(3))
  res = results_lib.from_outputs(grid, {
      'step': np.zeros((len(grid), 1), np.int32),
      'test_loss': np.ones((len(grid), 1)),
      'diverged_step': np.full(len(grid), -1, np.int32)})
  c = res.columns
  missing = ((c['a'] == 'off') & (c['b'] == 'off') & (c['seed'] == 0)
             & np.isclose(c['learning_rate'], 0.2))
  with pytest.raises(ValueError, match=r'seed 0, a=off, b=off has 1 members '
                     r'over another mix of them than most cells \(2\)'):
    attribution.shapley(res.subset(~missing), 'test_loss', ['a', 'b'])
