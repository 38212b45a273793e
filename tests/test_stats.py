"""Statistics over seeds: interval coverage, the metric registry, P(better),
paired effects and how they treat diverged runs."""

import warnings

import chex
import numpy as np
import pytest
from scipy import optimize
from scipy import stats as scipy_stats

from rahimi_jax import grid as grid_lib
from rahimi_jax import results as results_lib
from rahimi_jax import stats

# ------------------------------------------------------------------ coverage

DRAWS = 20000
# Coverage of the interval mean_ci prints, on draws independent of the ones
# its level is calibrated on (those are the key 0's; these are keyed by n).
# The simulation is seeded, so these are fixed numbers; with 20,000 draws a
# coverage near 0.95 has a Monte Carlo standard error of 0.0015.
# * Every family here must reach the nominal level less 4 standard errors:
#   normal and t(3) seeds (symmetric), exponential seeds (skewness 2, like
#   losses) and left-skewed ones (accuracy near 1), at 90%, 95% and 99%.
# * Normal seeds must stay under NORMAL_CEILING: the calibration widens the
#   interval for skew, and more would be needlessly wide.
# * Uncalibrated, the same interval misses (exponential, n = 4: 0.927 at
#   95%), and so does Student-t (0.881): the test fails if mean_ci regresses
#   to either.
NORMAL_CEILING = {0.9: 0.96, 0.95: 0.99, 0.99: 0.9995}


def _coverage(low, high, truth):
  return float(np.mean((low <= truth) & (truth <= high)))


@pytest.mark.parametrize('n', [2, 3, 4, 5, 8, 16])
def test_interval_reaches_nominal_coverage(n):
  rng = np.random.default_rng(n)
  families = (('normal', rng.normal(3.0, 2.0, (DRAWS, n)), 3.0),
              ('t3', rng.standard_t(3, (DRAWS, n)), 0.0),
              ('skewed', rng.exponential(1.0, (DRAWS, n)), 1.0),
              ('left_skewed', 1.0 - rng.exponential(0.05, (DRAWS, n)), 0.95))
  for level in (0.9, 0.95, 0.99):
    cov = {name: _coverage(*stats.t_skew_bounds(
        x, stats.calibrated_level(n, level)), truth)
           for name, x, truth in families}
    floor = level - 4 * np.sqrt(level * (1 - level) / DRAWS)
    assert min(cov.values()) >= floor, (level, cov)
    assert cov['normal'] <= NORMAL_CEILING[level], (level, cov)
  # mean_ci prints that interval: a few draws through it, one at a time.
  for x in families[2][1][:5]:
    ci = stats.mean_ci(x)
    chex.assert_trees_all_close(
        (ci.low, ci.high),
        stats.t_skew_bounds(x, stats.calibrated_level(n, 0.95)), rtol=1e-12)
  if n == 4:  # uncalibrated, and Student-t, miss exponential seeds
    skewed = families[2][1]
    assert _coverage(*stats.t_skew_bounds(skewed, 0.95), 1.0) < 0.935
    t = scipy_stats.t.interval(0.95, n - 1, loc=skewed.mean(1),
                               scale=scipy_stats.sem(skewed, axis=1))
    assert _coverage(*t, 1.0) < 0.9


def test_calibrated_level_is_at_least_nominal_and_checks_its_input():
  for n in (2, 3, 4, 8, 16, 64):
    levels = [stats.calibrated_level(n, lv) for lv in (0.8, 0.9, 0.95, 0.99)]
    assert all(c >= lv for c, lv in zip(levels, (0.8, 0.9, 0.95, 0.99)))
    assert levels == sorted(levels), (n, levels)
  assert stats.calibrated_level(4, 0.95) > 0.97  # skew costs width at n=4
  assert stats.calibrated_level(stats.CALIBRATED_UP_TO + 1, 0.95) == 0.95
  for n in (1, 0, 2.5, '4'):
    with pytest.raises(ValueError, match=rf'n={n!r} seeds; accepted: an '
                       r'integer >= 2'):
      stats.calibrated_level(n, 0.95)
  with pytest.raises(ValueError, match=r'level=95; accepted'):
    stats.calibrated_level(4, 95)


def test_two_seeds_get_a_student_t_interval_at_the_calibrated_level():
  x = np.array([0.1, 0.7])  # two values: skewness 0, so t alone
  level = stats.calibrated_level(2, 0.95)
  want = scipy_stats.ttest_1samp(x, 0.0).confidence_interval(level)
  ci = stats.mean_ci(x)
  chex.assert_trees_all_close((ci.low, ci.high), (want.low, want.high),
                              rtol=1e-12)


def test_interval_rejects_bad_level_bounds_and_sizes():
  with pytest.raises(ValueError, match=r'bounds=\(1, 0\); accepted: \(low, '
                     r'high\) with low <= high'):
    stats.mean_ci([1.0, 2.0, 3.0], bounds=(1, 0))
  with pytest.raises(ValueError, match=r'bounds=\(0.5, -0.5\)'):
    stats.paired_ci([1.0, 2.0], [1.5, 2.5], bounds=(0.5, -0.5))
  for level in (95, 0.0, 1.0):
    with pytest.raises(ValueError, match=rf'level={level!r}; accepted: a '
                       r'fraction in \(0, 1\)'):
      stats.t_skew_bounds([1.0, 2.0, 4.0], level)
  for x in ([[1.0], [2.0]], 3.0, []):
    n = np.asarray(x).shape[-1] if np.ndim(x) else 0
    with pytest.raises(ValueError, match=f'n={n} values.*accepted: x: '
                       r'\[\.\.\., n\] with n >= 2'):
      stats.t_skew_bounds(x)


def test_mean_ci_is_vectorized_bounds_per_sample():
  x = np.random.default_rng(0).exponential(1.0, (5, 6))
  low, high = stats.t_skew_bounds(x, stats.calibrated_level(6, 0.95))
  for i in range(5):
    ci = stats.mean_ci(x[i])
    chex.assert_trees_all_close((ci.low, ci.high), (low[i], high[i]),
                                rtol=1e-12)


# ------------------------------------------------------- intervals, by hand


def _hall_by_root_finding(x, level):
  """Hall's (1992) interval, solving the forward transformation numerically."""
  n = len(x)
  g = scipy_stats.skew(x, bias=True)
  s = np.std(x, ddof=1)
  q = scipy_stats.t.ppf(0.5 + level / 2, n - 1) / np.sqrt(n)
  transform = lambda w: w + g * w**2 / 3 + g**2 * w**3 / 27 + g / (6 * n)
  w_hi = optimize.brentq(lambda w: transform(w) - q, -100, 100, xtol=1e-14)
  w_lo = optimize.brentq(lambda w: transform(w) + q, -100, 100, xtol=1e-14)
  return x.mean() - s * w_hi, x.mean() - s * w_lo


@pytest.mark.parametrize('level', [0.95, 0.9])
def test_mean_ci_is_student_t_for_symmetric_seeds(level):
  x = np.array([0.93, 0.90, 0.98, 0.95, 1.00, 0.92, 0.97])  # skewness 0
  want = scipy_stats.ttest_1samp(x, 0.0).confidence_interval(
      stats.calibrated_level(7, level))
  ci = stats.mean_ci(x, level)
  chex.assert_trees_all_close((ci.mean, ci.low, ci.high),
                              (x.mean(), want.low, want.high), rtol=1e-12)
  assert ci.n == 7


@pytest.mark.parametrize('x', [[0.3, 0.5, 0.4, 0.9], [1.0, 1.1, 1.05, 3.0, 1.2],
                               [-2.0, 0.1, 0.2, 0.15]])
def test_mean_ci_skewed_is_union_of_t_and_hall(x):
  x = np.asarray(x)
  t = scipy_stats.ttest_1samp(x, 0.0).confidence_interval(0.95)
  hall = _hall_by_root_finding(x, 0.95)
  ci = stats.t_skew_bounds(x, 0.95)
  ci = stats.Interval(x.mean(), float(ci[0]), float(ci[1]), len(x))
  chex.assert_trees_all_close(
      (ci.low, ci.high),
      (min(t.low, hall[0]), max(t.high, hall[1])), rtol=1e-9)
  # Skewed seeds extend the interval toward the long tail only.
  right = scipy_stats.skew(x) > 0
  chex.assert_trees_all_close(ci.low if right else ci.high,
                              t.low if right else t.high, rtol=1e-12)
  assert (ci.high > t.high) if right else (ci.low < t.low)


def test_mean_ci_drops_non_finite():
  x = [0.3, 0.5, 0.4, 0.9]
  chex.assert_trees_all_close(tuple(stats.mean_ci(x + [np.nan, np.inf])),
                              tuple(stats.mean_ci(x)), rtol=1e-12)


def test_mean_ci_one_value_has_unknown_interval():
  chex.assert_trees_all_equal(tuple(stats.mean_ci([2.5])),
                              (2.5, np.nan, np.nan, 1))
  chex.assert_trees_all_equal(tuple(stats.mean_ci([2.5, np.nan])),
                              (2.5, np.nan, np.nan, 1))


def test_mean_ci_no_values():
  chex.assert_trees_all_equal(tuple(stats.mean_ci([])),
                              (np.nan, np.nan, np.nan, 0))
  chex.assert_trees_all_equal(tuple(stats.mean_ci([np.nan, -np.inf])),
                              (np.nan, np.nan, np.nan, 0))


def test_mean_ci_of_equal_values_is_unknown_not_zero_width():
  chex.assert_trees_all_equal(tuple(stats.mean_ci([1.5, 1.5, 1.5])),
                              (1.5, np.nan, np.nan, 3))
  # Paired accuracy differences on a 1/360 lattice, equal to 0 on 70% of
  # seeds: a [0, 0] interval from all-equal seeds misses the mean 1/3600
  # (coverage 76% at n=4 with it); the intervals printed cover >= 95%.
  rng = np.random.default_rng(0)
  values, p = np.asarray([0, 1, -1]) / 360, [0.7, 0.2, 0.1]
  truth = values @ p
  for n in (4, 8):
    cis = [stats.mean_ci(x, bounds=(-1, 1))
           for x in rng.choice(values, p=p, size=(3000, n))]
    printed = [c for c in cis if np.isfinite(c.low)]
    coverage = np.mean([c.low <= truth <= c.high for c in printed])
    assert coverage >= 0.95, (n, coverage, len(printed))


def test_equal_float32_accuracies_have_unknown_interval_not_zero_width():
  # train.py logs accuracy in float32: a seed that gains 3 of 450 test
  # points from 50 and one that gains 3 from 51 differ by 1e-8 after
  # rounding (numpy's float32, not the project's), so the paired differences
  # are the same 3/450 and say nothing of the spread: no interval, as for
  # exactly equal values, never a zero-width one.
  n_test = 450
  base = np.float32(np.array([50, 51]) / n_test)
  gain = np.float32(np.array([53, 54]) / n_test)
  diff = gain.astype(np.float64) - base.astype(np.float64)
  assert diff[0] != diff[1]  # float32 rounding, not a spread
  chex.assert_trees_all_close(diff, np.full(2, 3 / n_test), atol=1e-7)
  ci = stats.paired_ci(base, gain,
                       bounds=stats.difference_range('test_accuracy'))
  chex.assert_trees_all_close(ci.mean, 3 / n_test, atol=1e-7)
  assert np.isnan(ci.low) and np.isnan(ci.high), ci
  # Unbounded values (a log10 of float64 losses 1e-5 apart in relative
  # terms): equal only when exactly equal, as before.
  logs = np.log10(1e-20 * np.asarray([1, 1 + 1e-5, 1 + 2e-5, 1 + 3e-5]))
  ci = stats.mean_ci(logs)
  assert ci.low < ci.mean < ci.high, ci
  # One test point apart on one seed is a spread: an interval.
  ci = stats.paired_ci(base, np.float32(np.array([53, 55]) / n_test),
                       bounds=(-1.0, 1.0))
  assert ci.low < 3 / n_test < 4 / n_test < ci.high, ci


def test_mean_ci_clipped_to_the_metric_range():
  losses = [0.01, 0.02, 0.5]
  free = stats.mean_ci(losses)
  assert free.low < 0  # a negative loss: impossible
  clipped = stats.mean_ci(losses, bounds=stats.metric_range('test_loss'))
  chex.assert_trees_all_equal(tuple(clipped),
                              (free.mean, 0.0, free.high, free.n))
  accuracy = stats.mean_ci([0.99, 1.0, 0.9],
                           bounds=stats.metric_range('test_accuracy'))
  assert accuracy.high == 1.0 and accuracy.low > 0


def test_finite_mean_has_no_warning_for_nothing_finite():
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    assert np.isnan(stats.finite_mean([np.nan, np.inf]))
    assert np.isnan(stats.finite_mean([]))
  assert stats.finite_mean([1.0, np.nan, 3.0]) == 2.0


# ----------------------------------------------------------- paired effects


def test_paired_ci_uses_the_pairing():
  rng = np.random.default_rng(0)
  seed_effect = rng.normal(0, 1.0, 12)  # large between-seed variation
  a = seed_effect
  b = seed_effect + 0.1 + rng.normal(0, 0.01, 12)  # a small, consistent gain
  ci = stats.paired_ci(a, b, 0.95)
  chex.assert_trees_all_close(ci.mean, np.mean(b - a), rtol=1e-12)
  assert 0 < ci.low < 0.1 < ci.high < 0.2 and ci.n == 12
  # Unpaired, the same gain is lost in the seed noise.
  unpaired = stats.mean_ci(b, 0.95).low - stats.mean_ci(a, 0.95).high
  assert unpaired < 0
  with pytest.raises(ValueError, match='equal lengths'):
    stats.paired_ci([1.0, 2.0], [1.0])
  assert np.isnan(stats.paired_ci([1.0], [2.0]).low)


def test_paired_ci_matches_scipy_and_drops_unfinished_pairs():
  a = np.array([1.0, 2.0, 3.0, 4.0, np.nan, 6.0])
  b = np.array([1.5, 2.3, 3.7, 4.5, 9.0, np.inf])  # differences symmetric
  ci = stats.paired_ci(a, b)
  want = scipy_stats.ttest_rel(b[:4], a[:4]).confidence_interval(
      stats.calibrated_level(4, 0.95))
  chex.assert_trees_all_close((ci.mean, ci.low, ci.high, ci.n),
                              (0.5, want.low, want.high, 4), rtol=1e-12)


# ---------------------------------------------------------- metric registry


@pytest.mark.parametrize('name', sorted(stats.METRICS))
def test_every_metric_has_a_range_and_a_declared_direction(name):
  low, high = stats.metric_range(name)
  assert low < high
  d_low, d_high = stats.difference_range(name)
  assert d_low == low - high and d_high == high - low
  # Larger is better for an accuracy and for the cosine between a layer's
  # gradients before and after the layers below it step (less shift).
  assert stats.higher_is_better(name) == (name.endswith('accuracy')
                                          or name == 'ics_cos')


def test_unknown_metric_names_the_known_ones():
  with pytest.raises(ValueError, match="'bogus'.*test_accuracy"):
    stats.get_metric('bogus')
  # A per-layer column is its metric's; the suffix alone names nothing.
  assert stats.get_metric('ics_l2_layer12') == stats.get_metric('ics_l2')
  with pytest.raises(ValueError, match='bogus_layer3'):
    stats.get_metric('bogus_layer3')


@pytest.mark.parametrize('a, b, higher, expected', [
    ([1, 2, 3], [4, 5, 6], True, 1.0),
    ([1, 2, 3], [4, 5, 6], False, 0.0),  # a larger loss is worse
    ([4, 5, 6], [1, 2, 3], False, 1.0),
    ([1, 2], [1, 2], True, 0.5),
    ([0, 2], [1, 3], True, 0.75),
    ([0, 2], [1, 3], False, 0.25),
    # A diverged run (NaN) is worse than every finished one, either direction.
    ([1.0, np.nan], [2.0, 3.0], False, 0.5),
    ([1.0, np.nan], [2.0, 3.0], True, 1.0),
    ([np.nan], [np.nan], False, 0.5),  # two diverged runs tie
    ([1.0], [np.inf], False, 0.0),
])
def test_probability_of_improvement(a, b, higher, expected):
  chex.assert_trees_all_close(
      stats.probability_of_improvement(a, b, higher_is_better=higher), expected)


def test_probability_of_improvement_by_counting():
  rng = np.random.default_rng(3)
  a, b = rng.normal(size=7), rng.normal(0.5, size=5)
  count = sum((bj < ai) + 0.5 * (bj == ai) for ai in a for bj in b)
  chex.assert_trees_all_close(
      stats.probability_of_improvement(a, b, higher_is_better=False),
      count / 35, rtol=1e-12)
  assert np.isnan(stats.probability_of_improvement([], b,
                                                   higher_is_better=True))


# ------------------------------------------------------------ Results.compare


def _results(effects, seeds=6, noise=0.0, metric='test_accuracy',
             diverged=()):
  """Final metric = seed effect + option effect (+ noise), known answer.

  ``diverged``: ``(norm, optimizer, seed)`` members that diverged (NaN metric).
  """
  grid = grid_lib.Grid(grid_lib.Choice('norm', tuple(effects)),
                       grid_lib.Choice('optimizer', ('sgd', 'adam')),
                       grid_lib.Seeds(seeds))
  rng = np.random.default_rng(1)
  seed_effect = rng.normal(0, 0.05, seeds)
  value = np.asarray([effects[m.values['norm']] + seed_effect[m.values['seed']]
                      + noise * rng.normal() for m in grid.members])
  step = np.full(len(grid), -1, np.int32)
  for m in grid.members:
    if tuple(m.values[a] for a in ('norm', 'optimizer', 'seed')) in diverged:
      value[m.index], step[m.index] = np.nan, 3
  outputs = {'step': np.zeros((len(grid), 1), np.int32),
             metric: value[:, None], 'diverged_step': step}
  return results_lib.from_outputs(grid, outputs)


def test_compare_recovers_known_effects():
  res = _results({'none': 0.90, 'batch': 0.93, 'layer': 0.90})
  rows = {e.value: e for e in
          res.compare('test_accuracy', 'norm', baseline='none')}
  assert set(rows) == {'batch', 'layer'}
  batch, layer = rows['batch'], rows['layer']
  chex.assert_trees_all_close(batch.interval.mean, 0.03, atol=1e-9)
  assert batch.interval.n == 6  # one paired difference per seed
  assert (batch.pairs, batch.dropped) == (12, 0)
  chex.assert_trees_all_close(layer.interval.mean, 0.0, atol=1e-9)
  assert batch.p_better > 0.5
  with pytest.raises(ValueError, match='bogus'):
    res.compare('test_accuracy', 'norm', baseline='bogus')


def test_compare_p_better_follows_the_metric_direction():
  # 'batch' has the lower loss: it is better, and the effect is negative.
  # (With noise: equal differences on every seed would have no interval,
  # not the zero-width one this asserted below 0.)
  res = _results({'none': 0.50, 'batch': 0.40}, metric='test_loss',
                 noise=0.01)
  (e,) = res.compare('test_loss', 'norm', baseline='none')
  chex.assert_trees_all_close(e.interval.mean, -0.1, atol=0.02)
  assert e.interval.high < 0
  assert e.p_better > 0.5
  (worse,) = res.compare('test_loss', 'norm', baseline='batch')
  chex.assert_trees_all_close(worse.p_better, 1 - e.p_better, atol=1e-12)


def test_compare_interval_covers_effect_with_noise():
  res = _results({'none': 0.90, 'batch': 0.92}, seeds=20, noise=0.005)
  (e,) = res.compare('test_accuracy', 'norm', baseline='none')
  assert e.interval.low < 0.02 < e.interval.high
  assert e.interval.high - e.interval.low < 0.01


def test_compare_drops_diverged_pairs_and_counts_them_in_p():
  effects = {'none': 0.90, 'batch': 0.93}
  diverged = {('batch', 'sgd', 0), ('none', 'adam', 1), ('none', 'sgd', 2),
              ('batch', 'adam', 2)}
  res = _results(effects, diverged=diverged)
  (e,) = res.compare('test_accuracy', 'norm', baseline='none')
  assert (e.pairs, e.dropped, e.baseline_diverged, e.value_diverged) == (
      12, 4, 2, 2)
  # Seed 2 lost both its pairs; seeds 0 and 1 keep one pair each.
  assert e.interval.n == 5
  chex.assert_trees_all_close(e.interval.mean, 0.03, atol=1e-9)
  # P(better) by counting, within each optimizer (the same configuration):
  # a diverged run loses to every finished run and ties with another
  # diverged one.
  final = res.final().columns
  acc = final['test_accuracy']
  score = count = 0.0
  for opt in ('sgd', 'adam'):
    at = final['optimizer'] == opt
    a, b = acc[at & (final['norm'] == 'none')], acc[at & (final['norm'] ==
                                                          'batch')]
    for x in a:
      for y in b:
        if np.isnan(x) or np.isnan(y):
          score += 0.5 if np.isnan(x) and np.isnan(y) else float(np.isnan(x))
        else:
          score += float(y > x) + 0.5 * float(y == x)
        count += 1
  chex.assert_trees_all_close(e.p_better, score / count, rtol=1e-12)
  a, b = acc[final['norm'] == 'none'], acc[final['norm'] == 'batch']
  # Dropping the diverged runs instead would give a different number.
  fin = stats.probability_of_improvement(a[np.isfinite(a)], b[np.isfinite(b)],
                                         higher_is_better=True)
  assert abs(fin - e.p_better) > 1e-3


def test_p_better_ranks_runs_of_the_same_configuration():
  # The optimizer sets the loss (sgd ~2.0, adam ~0.1); a learning rate of 0.1
  # lowers it by 0.01 in every configuration and seed. Every 0.1 run beats
  # the 0.01 run of its optimizer on any seed: P(better) is 1, where ranking
  # runs across optimizers would give 0.75 (scipy's Mann-Whitney U, below).
  grid = grid_lib.Grid(grid_lib.Choice('optimizer', ('sgd', 'adam')),
                       grid_lib.Values('learning_rate', (0.01, 0.1)),
                       grid_lib.Seeds(4))
  rng = np.random.default_rng(0)
  noise = rng.normal(0, 1e-3, 8)  # per (optimizer, seed)
  loss = np.asarray([{'sgd': 2.0, 'adam': 0.1}[m.values['optimizer']] +
                     noise[m.values['seed'] * 2 + (m.values['optimizer'] ==
                                                    'adam')]
                     - 0.01 * (m.values['learning_rate'] == 0.1)
                     for m in grid.members])
  res = results_lib.from_outputs(grid, {
      'step': np.zeros((len(grid), 1), np.int32), 'test_loss': loss[:, None],
      'diverged_step': np.full(len(grid), -1, np.int32)})
  (e,) = res.compare('test_loss', 'learning_rate', baseline=0.01)
  assert e.p_better == 1.0, e
  chex.assert_trees_all_close(e.interval.mean, -0.01, atol=1e-9)
  lr = res.final().columns['learning_rate']
  final = res.final().columns['test_loss']
  pooled = scipy_stats.mannwhitneyu(final[lr == 0.01], final[lr == 0.1])
  chex.assert_trees_all_close(pooled.statistic / 64, 0.75, atol=1e-12)


def test_p_better_pools_unequal_configurations_by_their_pairs_of_runs():
  # A union of runs: sgd with 4 seeds, adam with 2. P(better) is the share
  # of all within-configuration (baseline run, value run) pairs the value
  # wins: sgd's 16 pairs weigh 4 times adam's 4 (weighting by seeds, 4:2,
  # gives another number). Counted here pair by pair.
  acc = {('sgd', 'none'): [0.90, 0.92, 0.94, 0.96],
         ('sgd', 'batch'): [0.91, 0.89, 0.93, 0.95],
         ('adam', 'none'): [0.80, 0.82], ('adam', 'batch'): [0.85, 0.86]}
  parts = []
  for opt, seeds in (('sgd', 4), ('adam', 2)):
    grid = grid_lib.Grid(grid_lib.Choice('norm', ('none', 'batch')),
                         grid_lib.Choice('optimizer', (opt,)),
                         grid_lib.Seeds(seeds))
    value = [acc[(opt, m.values['norm'])][m.values['seed']]
             for m in grid.members]
    parts.append(results_lib.from_outputs(grid, {
        'step': np.zeros((len(grid), 1), np.int32),
        'test_accuracy': np.asarray(value)[:, None],
        'diverged_step': np.full(len(grid), -1, np.int32)}))
  res = results_lib.concat(parts)
  (e,) = res.compare('test_accuracy', 'norm', baseline='none')
  assert e.pairs == 6
  score = count = 0.0
  for opt in ('sgd', 'adam'):
    for x in acc[(opt, 'none')]:
      for y in acc[(opt, 'batch')]:
        score += float(y > x) + 0.5 * float(y == x)
        count += 1
  assert count == 20
  chex.assert_trees_all_close(e.p_better, score / count, rtol=1e-12)


def test_compare_baseline_diverged_everywhere_is_said_not_hidden():
  seeds = 3
  diverged = {('none', o, s) for o in ('sgd', 'adam') for s in range(seeds)}
  res = _results({'none': 0.90, 'batch': 0.93}, seeds=seeds, diverged=diverged)
  (e,) = res.compare('test_accuracy', 'norm', baseline='none')
  assert e.interval.n == 0 and np.isnan(e.interval.mean)
  assert e.baseline_diverged == e.pairs == e.dropped == 6
  assert e.p_better == 1.0  # every finished run beats a diverged one
  row = next(l for l in res.effects_table('test_accuracy').splitlines()
             if l.startswith('norm'))
  assert 'baseline diverged in 6/6' in row
  assert 'nan' not in row


def _table_rows(table):
  lines = table.splitlines()
  rule = next(i for i, l in enumerate(lines) if set(l) == {'-'})
  return lines[:rule - 1], [l.split() for l in lines[rule + 1:]]


def test_effects_table_lists_each_option_against_the_first():
  res = _results({'none': 0.90, 'batch': 0.93})
  head, rows = _table_rows(res.effects_table('test_accuracy'))
  assert '(higher is better)' in head[0]
  assert [r[:3] for r in rows] == [['norm', 'batch', 'none'],
                                   ['optimizer', 'adam', 'sgd']]
  chex.assert_trees_all_close(float(rows[0][3]), 0.03, atol=1e-4)
  assert rows[0][6] == '6' and rows[0][7] == '0/12'
  loss = _results({'none': 0.5, 'batch': 0.4}, metric='test_loss')
  head, rows = _table_rows(loss.effects_table('test_loss'))
  assert '(lower is better)' in head[0]
  assert float(rows[0][8]) > 0.5  # P(better): batch has the lower loss


def test_effects_table_notes_diverged_runs():
  res = _results({'none': 0.90, 'batch': 0.93},
                 diverged={('batch', 'sgd', 0), ('none', 'adam', 1)})
  _, rows = _table_rows(res.effects_table('test_accuracy'))
  norm = next(r for r in rows if r[0] == 'norm')
  assert norm[7] == '2/12'
  assert ' '.join(norm[9:]) == ('baseline diverged in 1/12; value diverged in '
                                '1/12')
  # A run that finished with a non-finite metric is dropped too, and said
  # as such, not as diverged; an interval's level keeps its digits.
  final = res.columns
  at = ((final['norm'] == 'none') & (final['optimizer'] == 'sgd') &
        (final['seed'] == 3))
  final['test_accuracy'][at] = np.inf
  (e,) = res.compare('test_accuracy', 'norm', baseline='none')
  assert (e.dropped, e.baseline_diverged, e.baseline_non_finite) == (3, 1, 1)
  table = res.effects_table('test_accuracy', level=0.975)
  assert '97.5% interval over seeds' in table.splitlines()[0]
  # Each interval is at the level on its own (two here: norm, optimizer),
  # and P(better)'s worst runs include the finished non-finite ones.
  head, _ = _table_rows(table)
  assert head[1] == (
      'each interval is 97.5% on its own, not adjusted for the 2 comparisons '
      'in this table: with no effect anywhere, some interval excludes 0 more '
      'often than 2.5% of the time (plots.effects colours a bar only where '
      'its Bonferroni-adjusted 98.75% interval excludes 0)')
  assert head[2].endswith(
      'a run that diverged or finished with a non-finite test_accuracy '
      'counting as worse than every other run and tying with another such '
      'run; a tie counts half'), head[2]
  _, rows = _table_rows(table)
  norm = next(r for r in rows if r[0] == 'norm')
  assert ' '.join(norm[9:]) == (
      'baseline diverged in 1/12; value diverged in 1/12; baseline '
      'test_accuracy non-finite in 1/12'), norm
