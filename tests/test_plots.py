"""Tests for rahimi_jax/plots.py: the drawn data, read back from the figures."""

import matplotlib.image
import numpy as np
import pytest
from scipy import stats as scipy_stats

from rahimi_jax import grid as grid_lib
from rahimi_jax import plots
from rahimi_jax import results as results_lib
from rahimi_jax import stats

OPTIMIZERS, NORMS, SEEDS, STEPS = ('sgd', 'adam'), ('none', 'batch'), (0, 1, 2), (0, 10, 20)
PNG = b'\x89PNG\r\n\x1a\n'


def _accuracy():
  """``[optimizer, norm, seed, step]`` accuracies; (sgd, batch, seed 2) diverges at 10."""
  rng = np.random.default_rng(0)
  acc = rng.uniform(0.1, 0.9, (len(OPTIMIZERS), len(NORMS), len(SEEDS), len(STEPS)))
  acc[0, 1, 2, 1:] = np.nan
  return acc


def _results(acc):
  """Tidy rows of ``acc``, members in grid order, each over its logged steps."""
  columns = {k: [] for k in ('member', 'optimizer', 'norm', 'seed', 'step',
                             'test_accuracy', 'diverged_step')}
  for i, opt in enumerate(OPTIMIZERS):
    for j, norm in enumerate(NORMS):
      for k, seed in enumerate(SEEDS):
        diverged = STEPS[1] if np.isnan(acc[i, j, k]).any() else -1
        for t, step in enumerate(STEPS):
          for name, value in (('member', f'{opt}/{norm}/{seed}'),
                              ('optimizer', opt), ('norm', norm),
                              ('seed', seed), ('step', step),
                              ('test_accuracy', acc[i, j, k, t]),
                              ('diverged_step', diverged)):
            columns[name].append(value)
  return results_lib.Results(
      {k: np.asarray(v) for k, v in columns.items()},
      {'axes': {'optimizer': list(OPTIMIZERS), 'norm': list(NORMS),
                'seed': list(SEEDS)}})


@pytest.fixture
def saved(monkeypatch):
  """The figures the plots save (closed, their artists kept)."""
  figures, save = [], plots.save_figure

  def keep(fig, path):
    figures.append(fig)
    save(fig, path)

  monkeypatch.setattr(plots, 'save_figure', keep)
  return figures


def _assert_png(path):
  with open(path, 'rb') as f:
    assert f.read(8) == PNG
  image = matplotlib.image.imread(path)
  assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_curves_by_axis_draw_the_mean_over_seeds_and_count_divergence(
    saved, tmp_path):
  acc = _accuracy()
  path = tmp_path / 'curves_optimizer.png'
  plots.curves(_results(acc), 'test_accuracy', str(path), by='optimizer',
               log_y=False)
  _assert_png(path)
  ax, = saved[0].axes
  lines = {l.get_label(): l for l in ax.get_lines()}
  # Each seed averages its finished members over the norms; then over seeds.
  expected = np.nanmean(acc, axis=1).mean(axis=1)
  assert sorted(lines) == ['optimizer=adam', 'optimizer=sgd (1/6 diverged)']
  for label, want in zip(('optimizer=sgd (1/6 diverged)', 'optimizer=adam'),
                         expected):
    np.testing.assert_array_equal(lines[label].get_xdata(), STEPS)
    np.testing.assert_allclose(lines[label].get_ydata(), want, rtol=1e-12)
  for band, line in zip(ax.collections, ax.get_lines()):  # bands hold the mean
    edge = band.get_paths()[0].vertices
    assert np.all((edge[:, 1] >= 0) & (edge[:, 1] <= 1))  # the metric's range
    for step, mean in zip(STEPS, line.get_ydata()):
      ys = edge[edge[:, 0] == step, 1]
      assert ys.min() < mean < ys.max(), (line.get_label(), step)


def test_effects_draw_each_value_vs_baseline_paired_over_seeds(saved, tmp_path):
  acc = _accuracy()
  final = acc[..., -1]  # [optimizer, norm, seed]
  # Per seed, the mean difference over the pairs where both runs finished.
  expected = {
      'optimizer: adam - sgd': np.nanmean(final[1] - final[0], axis=0).mean(),
      'norm: batch - none': np.nanmean(final[:, 1] - final[:, 0],
                                       axis=0).mean()}
  path = tmp_path / 'effects.png'
  plots.effects(_results(acc), 'test_accuracy', str(path))
  _assert_png(path)
  ax, = saved[0].axes
  names = {t.get_position()[1]: t.get_text() for t in ax.get_yticklabels()}
  points = {names[l.get_ydata()[0]]: l.get_xdata()[0] for l in ax.get_lines()
            if l.get_marker() == 'o'}
  assert points.keys() == expected.keys()
  for name, want in expected.items():
    np.testing.assert_allclose(points[name], want, rtol=1e-12)
  bars = [l for l in ax.get_lines()  # not the markers, nor the line at zero
          if l.get_marker() != 'o' and l.get_ydata()[0] in names
          and l.get_xdata()[0] != l.get_xdata()[1]]
  for bar in bars:  # the interval holds the point
    name = names[bar.get_ydata()[0]]
    assert min(bar.get_xdata()) <= points[name] <= max(bar.get_xdata())
  assert len(bars) == 2
  notes = [t.get_text() for t in ax.texts]
  assert sum('1/6 pairs dropped (a run diverged or non-finite)' in n
             for n in notes) == 2, notes


def test_effects_colour_only_what_the_bonferroni_interval_excludes_0(
    saved, tmp_path):
  # Per seed, batch - none = 0.024, 0.03, 0.036 (symmetric: the t-interval):
  # its 95% interval excludes 0, its Bonferroni 97.5% one (two comparisons)
  # does not. adam - sgd = 0.2, 0.21, 0.19: excluded either way.
  grid = grid_lib.Grid(grid_lib.Choice('norm', ('none', 'batch')),
                       grid_lib.Choice('optimizer', ('sgd', 'adam')),
                       grid_lib.Seeds(3))
  acc = np.asarray([0.5 + (0.024 + 0.006 * m.values['seed']) * (
      m.values['norm'] == 'batch') + (m.values['optimizer'] == 'adam') * (
          0.2 + 0.01 * (0, 1, -1)[m.values['seed']]) for m in grid.members])
  res = results_lib.from_outputs(grid, {
      'step': np.zeros((len(grid), 1), np.int32),
      'test_accuracy': acc[:, None],
      'diverged_step': np.full(len(grid), -1, np.int32)})
  diffs = np.asarray([0.024, 0.03, 0.036])
  for level, crosses in ((0.95, False), (1 - 0.05 / 2, True)):
    low, high = scipy_stats.t.interval(stats.calibrated_level(3, level), 2, loc=diffs.mean(),
                                       scale=scipy_stats.sem(diffs))
    assert (low < 0 < high) == crosses, (level, low, high)
  plots.effects(res, 'test_accuracy', str(tmp_path / 'effects.png'))
  ax, = saved[0].axes
  names = {t.get_position()[1]: t.get_text() for t in ax.get_yticklabels()}
  colours = {names[l.get_ydata()[0]]: l.get_color() for l in ax.get_lines()
             if l.get_marker() == 'o'}
  assert colours == {'norm: batch - none': 'tab:gray',
                     'optimizer: adam - sgd': 'tab:green'}, colours
  assert ('coloured where the Bonferroni-adjusted 97.5% interval (2 '
          'comparisons) excludes 0') in ax.get_xlabel()


def test_effects_need_a_varied_axis(tmp_path):
  res = _results(_accuracy()).where(optimizer='adam', norm='none')
  res.metadata = {'axes': {'optimizer': ['adam'], 'norm': ['none'],
                           'seed': list(SEEDS)}}
  with pytest.raises(ValueError, match='no axis but the seed'):
    plots.effects(res, 'test_accuracy', str(tmp_path / 'effects.png'))


def test_curves_on_a_log_axis_draw_the_geometric_mean_and_say_so(
    saved, tmp_path):
  acc = _accuracy()
  acc[1, :, 0, -1] = 0.0  # adam's seed 0 reaches exactly 0 at the last step
  res = _results(acc)
  plots.curves(res, 'test_accuracy', str(tmp_path / 'c.png'), by='optimizer',
               log_y=True)
  ax, = saved[0].axes
  assert 'geometric mean over seeds, 95% interval' in ax.get_title()
  lines = {l.get_label(): l.get_ydata() for l in ax.get_lines()}
  assert sorted(lines) == [
      'optimizer=adam (1 steps with a seed value <= 0 not drawn)',
      'optimizer=sgd (1/6 diverged)']
  # Per seed the mean over the norms, then the geometric mean over seeds;
  # a seed at 0 makes it 0, which a log axis cannot draw: left out, not the
  # mean of the others.
  per_seed = acc[1].mean(axis=0)
  adam = lines['optimizer=adam (1 steps with a seed value <= 0 not drawn)']
  np.testing.assert_allclose(adam[:-1], np.exp(np.log(per_seed[:, :-1]).mean(0)),
                             rtol=1e-12)
  assert np.isnan(adam[-1])


def test_curves_name_lines_and_say_where_there_is_no_band(saved, tmp_path):
  res = _results(_accuracy())
  one_seed = res.subset(res.columns['seed'] == 0)
  plots.curves(one_seed.subset(one_seed.columns['optimizer'] == 'adam'),
               'test_accuracy', str(tmp_path / 'a.png'), log_y=False)
  plots.curves(res, 'test_accuracy', str(tmp_path / 'b.png'), log_y=False,
               label_of=lambda c: 'reference' if c['norm'] == 'none' and
               c['optimizer'] == 'sgd' else None)
  one, both = ([l.get_label() for l in f.axes[0].get_lines()] for f in saved)
  assert not saved[0].axes[0].collections  # no band ...
  # ... and the legend says why; a line alone is named by the design's
  # varied axes (the norms), not "all".
  assert one == ['norm=none (1 seed: no interval)',
                 'norm=batch (1 seed: no interval)'], one
  assert sorted(both) == ['optimizer=adam, norm=batch',
                          'optimizer=adam, norm=none',
                          'optimizer=sgd, norm=batch (1/3 diverged)',
                          'reference'], both


def test_contributions_without_an_interval_draw_no_bar(saved, tmp_path):
  from rahimi_jax import stats  # pylint: disable=g-import-not-at-top
  rows = [{'component': c, 'shapley': stats.Interval(m, lo, hi, n),
           'aumann_shapley': stats.Interval(m, lo, hi, n)}
          for c, m, lo, hi, n in (('norm', -0.3, np.nan, np.nan, 1),
                                  ('optimizer', 0.2, 0.1, 0.3, 4))]
  plots.contributions(rows, str(tmp_path / 'c.png'), title='t')
  ax, = saved[0].axes
  caps = [l.get_xdata() for l in ax.get_lines() if len(l.get_xdata())]
  assert caps and all(np.isfinite(x).all() for x in caps)
  spans = [seg[:, 0] for c in ax.collections for seg in c.get_segments()]
  assert len(spans) == 2 and all(np.ptp(s) > 0 for s in spans), spans
  assert [t.get_text() for t in ax.texts] == ['no interval'] * 2


def test_curves_on_a_log_axis_past_float64_ticks_save_and_say_so(
    saved, tmp_path):
  # A diverging float64 run's loss reaches 1e280 before it turns non-finite:
  # matplotlib's log ticks overflowed there (OverflowError in savefig, the
  # launcher's whole write lost). The line keeps its data, the axis stops
  # at LOG_TOP and the legend counts the steps drawn at its edge.
  acc = _accuracy()
  sgd10 = acc[0, :, :, 1]  # [norm, seed]; NaN where it diverged
  acc[0, :, :, 1] = np.where(np.isnan(sgd10), np.nan, 1e280 * np.arange(1, 4))
  path = tmp_path / 'c.png'
  plots.curves(_results(acc), 'test_accuracy', str(path), by='optimizer',
               log_y=True)
  _assert_png(path)
  ax, = saved[0].axes
  assert ax.get_ylim()[1] == plots.LOG_TOP and 'log scale' in ax.get_ylabel()
  lines = {l.get_label(): l.get_ydata() for l in ax.get_lines()}
  sgd = 'optimizer=sgd (1/6 diverged) (1 steps past 1e+200: at the top edge)'
  assert sorted(lines) == ['optimizer=adam', sgd], sorted(lines)
  # The geometric mean over seeds of each seed's mean over its finished
  # members, from numpy: 1e280 is drawn as what it is, not dropped.
  per_seed = np.nanmean(acc[0], axis=0)  # [seed, step]
  want = 10 ** np.log10(per_seed).mean(0)
  np.testing.assert_allclose(lines[sgd], want, rtol=1e-9)
  assert want[1] > plots.LOG_TOP
  # The band stops at the edge.
  edge = ax.collections[0].get_paths()[0].vertices
  assert np.isfinite(edge).all() and edge[:, 1].max() == plots.LOG_TOP
  assert set(edge[edge[:, 1] == plots.LOG_TOP, 0]) == {STEPS[1]}
