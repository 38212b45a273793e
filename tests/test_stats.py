"""Statistics over seeds: t-intervals, IQM, probability of improvement, paired bootstrap."""

import chex
import numpy as np
import pytest
from scipy import stats as scipy_stats

from rahimi_jax import grid as grid_lib
from rahimi_jax import results as results_lib
from rahimi_jax import stats


def test_mean_ci_matches_scipy():
  x = np.array([0.9, 0.95, 0.92, 0.97, 0.91])
  ci = stats.mean_ci(x, 0.9)
  low, high = scipy_stats.t.interval(0.9, len(x) - 1, loc=x.mean(),
                                     scale=scipy_stats.sem(x))
  chex.assert_trees_all_close((ci.mean, ci.low, ci.high), (x.mean(), low, high),
                              rtol=1e-12)
  assert ci.n == 5


def test_interquartile_mean_ignores_outlier_seeds():
  x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 1000.0]
  chex.assert_trees_all_close(stats.interquartile_mean(x), 4.5)
  assert np.isnan(stats.interquartile_mean([np.nan]))


@pytest.mark.parametrize('a, b, expected', [
    ([1, 2, 3], [4, 5, 6], 1.0),
    ([4, 5, 6], [1, 2, 3], 0.0),
    ([1, 2], [1, 2], 0.5),
    ([0, 2], [1, 3], 0.75),
])
def test_probability_of_improvement(a, b, expected):
  chex.assert_trees_all_close(stats.probability_of_improvement(a, b), expected)


def test_paired_bootstrap_uses_the_pairing():
  rng = np.random.default_rng(0)
  seed_effect = rng.normal(0, 1.0, 12)  # large between-seed variation
  a = seed_effect
  b = seed_effect + 0.1 + rng.normal(0, 0.01, 12)  # a small, consistent gain
  ci = stats.paired_bootstrap_ci(a, b, 0.95)
  chex.assert_trees_all_close(ci.mean, np.mean(b - a), rtol=1e-12)
  assert 0 < ci.low < 0.1 < ci.high < 0.2 and ci.n == 12
  # Unpaired, the same gain is lost in the seed noise.
  unpaired = stats.mean_ci(b, 0.95).low - stats.mean_ci(a, 0.95).high
  assert unpaired < 0
  with pytest.raises(ValueError, match='equal lengths'):
    stats.paired_bootstrap_ci([1.0, 2.0], [1.0])
  assert np.isnan(stats.paired_bootstrap_ci([1.0], [2.0]).low)


def _results(effects, seeds=6, noise=0.0):
  """Final accuracy = seed effect + option effect (+ noise), known answer."""
  grid = grid_lib.Grid(grid_lib.Choice('norm', tuple(effects)),
                       grid_lib.Choice('optimizer', ('sgd', 'adam')),
                       grid_lib.Seeds(seeds))
  rng = np.random.default_rng(1)
  seed_effect = rng.normal(0, 0.05, seeds)
  acc = np.asarray([effects[m.values['norm']] + seed_effect[m.values['seed']] +
                    noise * rng.normal() for m in grid.members])
  outputs = {'step': np.zeros((len(grid), 1), np.int32),
             'test_accuracy': acc[:, None],
             'diverged_step': np.full(len(grid), -1, np.int32)}
  return results_lib.from_outputs(grid, outputs)


def test_compare_recovers_known_effects():
  res = _results({'none': 0.90, 'batch': 0.93, 'layer': 0.90})
  rows = {v: (ci, p) for v, ci, p in
          res.compare('test_accuracy', 'norm', baseline='none')}
  assert set(rows) == {'batch', 'layer'}
  batch, layer = rows['batch'], rows['layer']
  chex.assert_trees_all_close(batch[0].mean, 0.03, atol=1e-9)
  assert batch[0].n == 6  # one paired difference per seed
  chex.assert_trees_all_close(layer[0].mean, 0.0, atol=1e-9)  # does nothing
  assert batch[1] > 0.5
  with pytest.raises(ValueError, match='bogus'):
    res.compare('test_accuracy', 'norm', baseline='bogus')


def test_compare_interval_covers_effect_with_noise():
  res = _results({'none': 0.90, 'batch': 0.92}, seeds=20, noise=0.005)
  (_, ci, _), = res.compare('test_accuracy', 'norm', baseline='none')
  assert ci.low < 0.02 < ci.high
  assert ci.high - ci.low < 0.01


def test_effects_table_lists_each_option_against_the_first():
  res = _results({'none': 0.90, 'batch': 0.93})
  table = res.effects_table('test_accuracy')
  rows = [l.split() for l in table.splitlines()[3:]]
  assert [r[:3] for r in rows] == [['norm', 'batch', 'none'],
                                   ['optimizer', 'adam', 'sgd']]
  chex.assert_trees_all_close(float(rows[0][3]), 0.03, atol=1e-4)
  assert rows[0][6] == '6'
