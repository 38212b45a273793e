"""Tests for rahimi_jax.ablation: config validation, defaults and its grid."""

import dataclasses

import chex
import numpy as np
import pytest
from scipy import stats as scipy_stats

from rahimi_jax.studies import ablation
from rahimi_jax import components
from rahimi_jax import grid as grid_lib
from rahimi_jax import results as results_lib
from rahimi_jax import stats

OPTIMIZERS = ', '.join(sorted(components.OPTIMIZERS))
NORMS = ', '.join(sorted(components.NORMS))

# (kwargs, substrings the error must contain: the bad value, what is accepted)
BAD_CONFIGS = {
    'unknown_optimizer': (dict(options={'optimizer': ('sgd', 'sgdd')}),
                          ["'sgdd'", 'accepted:', OPTIMIZERS]),
    'unknown_norm': (dict(options={'norm': ('bn',)}),
                     ["'bn'", 'accepted:', NORMS]),
    'unknown_axis': (dict(options={'dropout': ('none',)}),
                     ["'dropout'", 'accepted:', 'activation, init, loss_scaling, norm, optimizer, placement, precision, rounding']),
    'unknown_knob': (dict(values={'beta1': (0.9,)}),
                     ["'beta1'", 'accepted:', 'learning_rate', 'momentum']),
    'momentum_negative': (dict(values={'momentum': '0,-0.5'}),
                          ["momentum: '-0.5'", '>= 0']),
    'init_scale_zero': (dict(values={'init_scale': (0,)}),
                        ["init_scale: '0'", '> 0']),
    'unknown_init': (dict(options={'init': ('zeros',)}),
                     ["'zeros'", 'accepted:', 'lecun_normal', 'orthogonal']),
    'unknown_activation': (dict(options={'activation': ('gelu2',)}),
                           ["'gelu2'", 'accepted:', 'relu']),
    'unknown_dataset': (dict(dataset='mnist'),
                        ["'mnist'", 'accepted: digits, mnist1d, synthetic']),
    'unknown_model': (dict(model='resnet'),
                      ["'resnet'", 'accepted: cnn, deep_linear, mlp']),
    'empty_optimizers': (dict(options={'optimizer': ()}),
                         ['optimizers: empty list', 'accepted:', OPTIMIZERS]),
    'empty_norms': (dict(options={'norm': ()}),
                    ['norms: empty list', 'accepted:', NORMS]),
    'empty_norms_string': (dict(options={'norm': ''}),
                           ['norms: empty list', NORMS]),
    'empty_lrs': (dict(values={'learning_rate': ()}),
                  ['learning_rate: empty list', 'comma-separated numbers']),
    'duplicate_optimizer': (dict(options={'optimizer': ('sgd', 'adam', 'sgd')}),
                            ['optimizers', 'listed twice', 'sgd']),
    'steps_zero': (dict(steps=0), ['steps', 'positive integer', 'got 0']),
    'steps_negative': (dict(steps=-5), ['steps', 'positive integer', 'got -5']),
    'steps_float': (dict(steps=2.5), ['steps', 'positive integer', 'got 2.5']),
    'steps_over_int32': (dict(steps=3 * 10**9, log_every=3 * 10**9),
                         ['steps', '< 2**31', 'got 3000000000']),
    'batch_size_negative': (dict(batch_size=-1),
                            ['batch_size', '>= 0', 'got -1']),
    'log_every_over_steps': (dict(steps=20, log_every=30),
                             ['log_every (30)', 'steps (20)']),
    'log_every_zero': (dict(log_every=0), ['log_every', 'positive', 'got 0']),
    'lrs_not_a_number': (dict(values={'learning_rate': ('0.1', 'abc')}),
                         ["'abc'", 'not a number', 'e.g. 0.1,0.01']),
    'lrs_negative': (dict(values={'learning_rate': ('-0.1',)}),
                     ["'-0.1'", 'finite number > 0']),
    'lrs_zero': (dict(values={'learning_rate': (0.0,)}),
                 ["'0.0'", 'finite number > 0']),
    'lrs_nan': (dict(values={'learning_rate': ('nan',)}),
                ["'nan'", 'finite number > 0']),
    'lrs_inf': (dict(values={'learning_rate': ('inf',)}),
                ["'inf'", 'finite number > 0']),
    'lrs_string': (dict(values={'learning_rate': '0.1,abc'}),
                   ["'abc'", 'not a number']),
    'least_squares_on_classification': (
        dict(options={'optimizer': ('sgd', 'levenberg_marquardt')}),
        ['levenberg_marquardt', 'regression', 'classification']),
    'seeds_zero': (dict(seeds=0), ['seeds', 'count >= 1', 'got 0']),
    'seeds_negative': (dict(seeds=-2), ['seeds', 'count >= 1', 'got -2']),
    'seeds_bool': (dict(seeds=True), ['seeds', 'count >= 1', 'got True']),
    'seeds_float': (dict(seeds=2.0), ['seeds', 'count >= 1', 'got 2.0']),
    'hidden_zero': (dict(hidden=(8, 0)), ['hidden', 'positive integers',
                                          '[8, 0]']),
    'activations_for_deep_linear': (
        dict(model='deep_linear', options={'activation': ('relu',)}),
        ['activations', "'deep_linear'", 'no activation axis']),
    # One value no option reads: a setting the run would ignore (the
    # README's momentum example passed --weight_decay=0).
    'weight_decay_unread': (
        dict(options={'optimizer': ('momentum', 'nesterov')},
             values={'weight_decay': '0'}),
        ['weight_decay: no member reads it', 'momentum, nesterov', 'adamw',
         'drop the weight_decay values (--weight_decay)']),
}


@pytest.mark.parametrize('kwargs,expected', BAD_CONFIGS.values(),
                         ids=BAD_CONFIGS.keys())
def test_bad_config_raises_naming_value(kwargs, expected):
  with pytest.raises(ValueError) as info:
    ablation.AblationConfig(**kwargs)
  message = str(info.value)
  for part in expected:
    assert part in message, (part, message)


def test_duplicate_lrs_rejected_on_construction():
  with pytest.raises(ValueError, match='0.1'):
    ablation.AblationConfig(values={'learning_rate': (0.1, 0.1)})


def test_default_grid_has_108_members():
  config = ablation.AblationConfig()
  grid = config.grid()
  assert len(grid) == 108
  assert grid.axis_names == ('optimizer', 'norm', 'init', 'learning_rate',
                             'seed')
  assert grid.choices == {
      'optimizer': ('sgd', 'momentum', 'adam'),
      'norm': ('none', 'batch', 'layer'),
      'init': ('lecun_normal', 'he_normal', 'orthogonal'),
  }
  chex.assert_trees_all_equal(grid.axis('learning_rate').values, (0.01,))
  chex.assert_trees_all_equal(grid.axis('seed').seeds, (0, 1, 2, 3))
  assert 'activation' not in dict(config.options)


def test_deep_linear_default_grid_varies_its_norms():
  config = ablation.AblationConfig(model='deep_linear')
  grid = config.grid()
  assert 'activation' not in grid.axis_names
  assert grid.axis_names == ('optimizer', 'norm', 'init', 'learning_rate',
                             'seed')
  assert len(grid) == 3 * 3 * 3 * 1 * 4
  assert dict(config.train_config().options) == {
      'optimizer': ('sgd', 'momentum', 'adam'),
      'norm': ('none', 'batch', 'layer'),
      'init': ('lecun_normal', 'he_normal', 'orthogonal')}


def test_cnn_reads_norm_activation_init():
  config = ablation.AblationConfig(model='cnn', dataset='mnist1d',
                                   hidden=(4,), options={'activation': 'relu'})
  assert config.grid().axis_names == ('optimizer', 'norm', 'init',
                                      'activation', 'learning_rate', 'seed')


def test_shrunk_config_grid_and_train_config():
  config = ablation.AblationConfig(
      options={'init': ['lecun_normal'], 'optimizer': 'sgd, momentum',
               'norm': ('none', 'batch')},
      values={'momentum': '0,0.5', 'learning_rate': '0.1,0.01'}, seeds=2,
      steps=20, log_every=10, hidden=(8,))
  # Stored in the registries' order, whatever order they were given in.
  assert config.options == (('optimizer', ('sgd', 'momentum')),
                            ('norm', ('none', 'batch')),
                            ('init', ('lecun_normal',)))
  assert config.values == (('learning_rate', (0.1, 0.01)),
                           ('momentum', (0.0, 0.5)))
  grid = config.grid()
  assert grid.axis_names == ('optimizer', 'norm', 'init', 'learning_rate',
                             'momentum', 'seed')
  assert len(grid) == 2 * 2 * 1 * 2 * 2 * 2
  tc = config.train_config()
  assert (tc.steps, tc.log_every, tc.hidden) == (20, 10, (8,))
  assert dict(tc.options) == {'optimizer': ('sgd', 'momentum'),
                              'norm': ('none', 'batch'),
                              'init': ('lecun_normal',)}
  chex.assert_trees_all_equal(tc.log_steps(), np.asarray([0, 10, 20], np.int32))
  assert tc.for_grid(grid) == tc
  assert config.to_dict()['options']['optimizer'] == ['sgd', 'momentum']
  assert config.to_dict()['values']['momentum'] == [0.0, 0.5]


def test_config_is_frozen():
  config = ablation.AblationConfig(steps=20, log_every=10)
  with pytest.raises(dataclasses.FrozenInstanceError):
    config.steps = 0  # pytype: disable=attribute-error


@pytest.mark.parametrize('columns,want', [
    ({'test_accuracy': np.zeros(1), 'test_loss': np.zeros(1)}, 'test_accuracy'),
    ({'test_loss': np.zeros(1)}, 'test_loss'),
])
def test_headline_metric(columns, want):
  res = results_lib.Results(columns, {'axes': {grid_lib.SEED: [0]}})
  assert ablation.headline_metric(res) == want



def _rounding_results(axes, lost, diverged):
  """Final ``updates_lost``, ``lost``, over ``axes``; the ``diverged``
  members diverged (a NaN ``lost`` elsewhere: finished without a reading)."""
  grid = grid_lib.Grid(*axes)
  steps = np.full(len(grid), -1, np.int32)
  steps[diverged] = 4
  return results_lib.from_outputs(grid, {
      'step': np.zeros((len(grid), 1), np.int32),
      'test_accuracy': np.full((len(grid), 1), 0.9),
      'updates_lost': np.asarray(lost)[:, None], 'diverged_step': steps})


@pytest.mark.parametrize('axes, label', [
    ((), 'all members'),  # no rounding axis
    ((grid_lib.Choice('precision', ('bfloat16',)),), 'bfloat16'),  # one value
])
def test_rounding_lines_without_a_varied_rounding_axis(axes, label):
  # Members: sgd seeds 0-3, then adam seeds 0-3; sgd's seed 1 diverged,
  # its seed 2 finished without a reading.
  res = _rounding_results(
      (*axes, grid_lib.Choice('optimizer', ('sgd', 'adam')),
       grid_lib.Seeds(4)),
      [0.05, np.nan, np.nan, 0.35, 0.15, 0.2, 0.3, 0.45], diverged=[1])
  header, *rows = ablation.rounding_lines(res, level=0.9)
  assert '[90% interval]' in header and 'note:' not in header
  # Each seed's members that finished, then over seeds (symmetric: t).
  per_seed = [0.1, 0.2, 0.3, 0.4]
  want = scipy_stats.t.interval(stats.calibrated_level(4, 0.9), 3, loc=np.mean(per_seed),
                                scale=scipy_stats.sem(per_seed))
  assert rows == [
      f'  {label:<36}{np.mean(per_seed):.1%} [{want[0]:.1%}, {want[1]:.1%}]'
      '  (4 seeds; 1/8 diverged, 1/8 finished, updates_lost not finite)']


def test_rounding_lines_show_a_small_loss_in_its_digits():
  # float32 loses ~0.02% of its updates: it printed 0.0% [0.0%, 0.0%].
  lost = [1.7e-4, 1.8e-4, 1.4e-4, 1.9e-4]
  res = _rounding_results((grid_lib.Seeds(4),), lost, diverged=[])
  _, row = ablation.rounding_lines(res)
  assert row.startswith('  all members                         0.017% [0.'
                        ), row


def test_rounding_lines_per_varied_axis():
  # Members: float32 seeds 0-2, then bfloat16 seeds 0-2.
  lost = np.asarray([0.1, np.nan, 0.2, 0.3, 0.5, np.nan])
  res = _rounding_results(
      (grid_lib.Choice('precision', ('float32', 'bfloat16')),
       grid_lib.Seeds(3)), lost, diverged=[1])
  header, *rows = ablation.rounding_lines(res)
  assert header.endswith('lose them for good.'), header
  want = []
  for precision, members, left in (
      ('float32', [0, 2], '1/3 diverged'),
      ('bfloat16', [3, 4],
       '0/3 diverged, 1/3 finished, updates_lost not finite')):
    x = lost[members]  # one member per seed: two seeds, so t alone
    low, high = scipy_stats.t.interval(stats.calibrated_level(2, 0.95), 1,
                                       loc=x.mean(),
                                       scale=scipy_stats.sem(x))
    want.append(f'  {precision:<36}{x.mean():.1%} [{max(low, 0):.1%}, '
                f'{min(high, 1):.1%}]  (2 seeds; {left})')
  assert rows == want
