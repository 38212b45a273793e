"""Tests for rahimi_jax.results (tidy table, final rows, summaries)."""

import warnings

import chex
import numpy as np
import pytest
from scipy import stats as scipy_stats

from rahimi_jax import grid as grid_lib
from rahimi_jax import results
from rahimi_jax import stats

STEPS = (0, 5, 10)
OPTIMIZERS = ('sgd', 'adam')
LRS = (0.1, 0.01)
N_SEEDS = 3


def _grid():
  return grid_lib.Grid(grid_lib.Choice('optimizer', OPTIMIZERS),
                       grid_lib.Values('learning_rate', LRS),
                       grid_lib.Seeds(N_SEEDS))


def _outputs(grid):
  """Hand-made per-log and per-member outputs; member 4 diverged at step 7."""
  g, n_logs = len(grid), len(STEPS)
  # Distinct, exactly representable float32 numbers per (member, log).
  loss = (np.arange(g * n_logs, dtype=np.float32).reshape(g, n_logs) * 0.25
          + 1.0)
  loss[1, 0] = np.inf  # A non-finite value early on that later recovers.
  loss[4, 2] = np.nan  # Member 4 diverged: its final metric is NaN.
  diverged = np.full(g, -1, np.int32)
  diverged[4] = 7
  return {
      'step': np.tile(np.asarray(STEPS, np.int32), (g, 1)),
      'train_loss': loss,
      'diverged_step': diverged,
  }


@pytest.fixture
def res():
  grid = _grid()
  return results.from_outputs(grid, _outputs(grid), metadata={'note': 'hand'})


# ---------------------------------------------------------------- from_outputs


def test_from_outputs_rows_and_columns(res):
  grid = _grid()
  g, n_logs = len(grid), len(STEPS)
  assert len(res) == g * n_logs == 36
  assert list(res.columns) == ['member', 'optimizer', 'learning_rate', 'seed',
                               'step', 'train_loss', 'diverged_step']
  chex.assert_shape(list(res.columns.values()), (g * n_logs,))
  assert res.axes == ['optimizer', 'learning_rate', 'seed']
  assert res.metadata['axes'] == {'optimizer': ['sgd', 'adam'],
                                  'learning_rate': [0.1, 0.01],
                                  'seed': [0, 1, 2]}
  assert res.metadata['note'] == 'hand'


def test_concat_fills_a_column_some_parts_do_not_log(res):
  """A partition's cells may log other counters (dynamic loss scaling's
  ``loss_scale``): the merged table has every column, NaN where a part did
  not log it; a text column in some parts only is refused."""
  scaled = results.Results({**res.columns,
                            'loss_scale': np.full(len(res), 2.0**15)},
                           res.metadata)
  merged = results.concat([res, scaled])
  assert list(merged.columns) == [*res.columns, 'loss_scale']
  assert len(merged) == 2 * len(res)
  np.testing.assert_array_equal(merged.columns['loss_scale'],
                                [np.nan] * len(res) + [2.0**15] * len(res))
  np.testing.assert_array_equal(merged.columns['train_loss'],
                                np.tile(res.columns['train_loss'], 2))
  named = results.Results({**res.columns, 'note': np.full(len(res), 'x')},
                          res.metadata)
  with pytest.raises(ValueError, match="'note' is in some parts only"):
    results.concat([res, named])


def test_concat_without_metadata_merges_the_parts_axes():
  """Parts run at other values of an axis (a learning rate run later): every
  value reaches the tables, in order of appearance."""
  def part(lrs):
    grid = grid_lib.Grid(grid_lib.Values('learning_rate', lrs),
                         grid_lib.Seeds(3))
    return results.from_outputs(grid, {
        'step': np.zeros((len(grid), 1), np.int32),
        'train_loss': np.linspace(1.0, 2.0, len(grid))[:, None],
        'diverged_step': np.full(len(grid), -1, np.int32)},
                                metadata={'note': 'kept'})
  merged = results.concat([part((0.1,)), part((0.01, 0.1, 0.001))])
  assert merged.metadata == {'note': 'kept', 'axes': {
      'learning_rate': [0.1, 0.01, 0.001], 'seed': [0, 1, 2]}}
  assert [r.value for r in merged.summarize('train_loss', 'learning_rate')
          ] == [0.1, 0.01, 0.001]
  assert [e.value for e in merged.compare('train_loss', 'learning_rate', 0.1)
          ] == [0.01, 0.001]
  # Given metadata is kept as given.
  assert results.concat([part((0.1,)), part((0.01,))], {'axes': {}}
                        ).metadata == {'axes': {}}


def test_seed_mean_leaves_out_and_counts_what_did_not_finish():
  # Seeds 0, 0, 1, 1, 2: one member diverged (finite reading: still out),
  # one finished non-finite; seed 2 has no member left.
  columns = {'seed': np.asarray([0, 0, 1, 1, 2]),
             'train_loss': np.asarray([1.0, 3.0, 4.0, np.inf, 9.0]),
             'diverged_step': np.asarray([-1, -1, -1, -1, 5])}
  m = results.seed_mean(columns, 'train_loss')
  assert (m.diverged, m.non_finite, m.members) == (1, 1, 5)
  want = scipy_stats.ttest_1samp([2.0, 4.0], 0.0).confidence_interval(
      stats.calibrated_level(2, 0.95))
  chex.assert_trees_all_close(tuple(m.interval),
                              (3.0, max(want.low, 0.0), want.high, 2),
                              rtol=1e-12)
  chex.assert_trees_all_equal(
      results.seed_means(columns['train_loss'], columns['seed'], [0, 1, 7]),
      np.asarray([2.0, 4.0, np.nan]))
  assert [results.value_label(v) for v in (0.001, 1e-4, 'sgd', 3)] == [
      '0.001', '0.0001', 'sgd', '3']


def test_from_outputs_repeats_per_member_values(res):
  grid = _grid()
  outputs = _outputs(grid)
  n_logs = len(STEPS)
  for m in grid.members:
    rows = slice(m.index * n_logs, (m.index + 1) * n_logs)
    assert list(res.columns['member'][rows]) == [m.name] * n_logs
    assert list(res.columns['optimizer'][rows]) == [m.values['optimizer']] * n_logs
    chex.assert_trees_all_equal(
        res.columns['learning_rate'][rows],
        np.full(n_logs, m.values['learning_rate']))
    chex.assert_trees_all_equal(res.columns['seed'][rows],
                                np.full(n_logs, m.values['seed']))
    chex.assert_trees_all_equal(res.columns['diverged_step'][rows],
                                np.full(n_logs, outputs['diverged_step'][m.index]))
    chex.assert_trees_all_equal(res.columns['step'][rows],
                                np.asarray(STEPS, np.int32))
    chex.assert_trees_all_equal(res.columns['train_loss'][rows],
                                outputs['train_loss'][m.index])


def test_from_outputs_keeps_nan_and_inf(res):
  loss = res.columns['train_loss']
  assert np.sum(np.isnan(loss)) == 1
  assert np.sum(np.isposinf(loss)) == 1


@pytest.mark.parametrize('bad', [
    {'step': np.zeros((3, 2), np.int32)},          # wrong member count
    {'step': np.zeros((12,), np.int32)},           # not [G, L]
    {'step': np.zeros((12, 2), np.int32), 'x': np.zeros((12, 3))},  # wrong L
    {'step': np.zeros((12, 2), np.int32), 'x': np.zeros((5,))},     # wrong G
])
def test_from_outputs_rejects_bad_shapes(bad):
  with pytest.raises(ValueError, match='shape|must be'):
    results.from_outputs(_grid(), bad)


# ------------------------------------------------------------------ save/load


def test_final_is_last_row_of_each_member(res):
  grid = _grid()
  outputs = _outputs(grid)
  final = res.final()
  assert len(final) == len(grid)
  assert list(final.columns['member']) == [m.name for m in grid.members]
  chex.assert_trees_all_equal(final.columns['step'],
                              np.full(len(grid), STEPS[-1]))
  chex.assert_trees_all_equal(final.columns['train_loss'],
                              outputs['train_loss'][:, -1])


def test_final_keeps_runs_that_repeat_a_member_name():
  # A one-member grid run at two depths and concatenated: the same member
  # name twice in a row; each run's last row is where the step resets.
  grid = grid_lib.Grid(grid_lib.Choice('optimizer', ('sgd',)),
                       grid_lib.Seeds(1))
  parts = []
  for depth, loss in ((2, [3.0, 2.0, 1.0]), (4, [5.0, 4.0, 0.5])):
    part = results.from_outputs(grid, {
        'step': np.asarray([[0, 5, 10]], np.int32),
        'train_loss': np.asarray([loss], np.float32),
        'diverged_step': np.asarray([-1], np.int32)})
    part.columns['depth'] = np.full(len(part), depth)
    parts.append(part)
  joined = results.concat(parts)
  assert len(set(joined.columns['member'])) == 1
  final = joined.final()
  chex.assert_trees_all_equal(final.columns['depth'], np.asarray([2, 4]))
  chex.assert_trees_all_equal(final.columns['train_loss'],
                              np.asarray([1.0, 0.5], np.float32))
  chex.assert_trees_all_equal(final.columns['step'], np.asarray([10, 10]))


def test_final_keeps_one_log_runs_that_repeat_a_member_name_at_a_step():
  # Two runs of one member, each logging only step 10, concatenated: the
  # step does not increase, so each row is a run's last.
  grid = grid_lib.Grid(grid_lib.Choice('optimizer', ('sgd',)),
                       grid_lib.Seeds(1))
  joined = results.concat([results.from_outputs(grid, {
      'step': np.asarray([[10]], np.int32),
      'train_loss': np.asarray([[loss]], np.float32)}) for loss in (1.0, 0.5)])
  chex.assert_trees_all_equal(joined.final().columns['train_loss'],
                              np.asarray([1.0, 0.5], np.float32))


def test_p_better_weighs_each_configuration_by_its_pairs_of_runs():
  # lr 0.1 has 3 seeds (9 pairs of runs), lr 0.01 one (1 pair): P(adam beats
  # sgd) is the pairs-weighted mean of scipy's Mann-Whitney U / (n1 n2) per
  # configuration (lower loss is better: U counts sgd runs above adam runs).
  grid = grid_lib.Grid.union(*(grid_lib.Grid(
      grid_lib.Choice('optimizer', ('sgd', 'adam')),
      grid_lib.Values('learning_rate', (lr,)), grid_lib.Seeds(n))
                               for lr, n in ((0.1, 3), (0.01, 1))))
  sgd, adam = {0.1: [1.0, 2.0, 3.0], 0.01: [1.0]}, {0.1: [2.5, 0.5, 1.5],
                                                    0.01: [2.0]}
  loss = sgd[0.1] + adam[0.1] + sgd[0.01] + adam[0.01]
  res = results.from_outputs(grid, {
      'step': np.full((len(grid), 1), 10, np.int32),
      'train_loss': np.asarray(loss, np.float32)[:, None]})
  (effect,) = res.compare('train_loss', 'optimizer', 'sgd')
  ps = {lr: scipy_stats.mannwhitneyu(sgd[lr], adam[lr]).statistic
        / (len(sgd[lr]) * len(adam[lr])) for lr in sgd}
  assert ps == {0.1: 6 / 9, 0.01: 0.0}
  chex.assert_trees_all_close(effect.p_better, (9 * ps[0.1] + ps[0.01]) / 10)
  assert effect.pairs == 4


def test_where_selects_equal_rows(res):
  sel = res.where(optimizer='adam', step=10)
  assert len(sel) == len(LRS) * N_SEEDS
  assert set(sel.columns['optimizer']) == {'adam'}
  chex.assert_trees_all_equal(sel.columns['step'], np.full(len(sel), 10))
  sel = res.where(learning_rate=0.01, seed=2)
  assert len(sel) == len(OPTIMIZERS) * len(STEPS)
  assert sel.metadata == {**res.metadata, 'axes': {
      'optimizer': ['sgd', 'adam'], 'learning_rate': [0.01], 'seed': [2]}}
  assert len(res.where(optimizer='rmsprop')) == 0
  # A filtered table lists what is in it: no empty 'sgd' row, no effect of
  # the optimizer, which no longer varies.
  adam = res.where(optimizer='adam')
  assert [s.value for s in adam.summarize('train_loss', 'optimizer')] == [
      'adam']
  assert adam.varied_axes == ['learning_rate']


def test_where_reads_a_float_as_its_label_and_takes_lists():
  # A grid of float32 learning rates stores 0.10000000149: where(0.1) was
  # empty, every axis emptied with it, and compare(baseline=0.1) raised.
  grid = grid_lib.Grid(grid_lib.Choice('optimizer', OPTIMIZERS),
                       grid_lib.Values('learning_rate',
                                       np.asarray(LRS, np.float32)),
                       grid_lib.Seeds(N_SEEDS))
  res = results.from_outputs(grid, _outputs(grid))
  assert res.columns['learning_rate'].dtype == np.float64
  assert 0.1 not in set(res.columns['learning_rate'].tolist())
  sel = res.where(learning_rate=0.1)
  assert len(sel) == len(res) // 2
  assert sel.metadata['axes']['learning_rate'] == [
      v for v in res.metadata['axes']['learning_rate'] if abs(v - 0.1) < 1e-6]
  assert len(res.where(learning_rate=np.float32(0.01))) == len(res) // 2
  assert len(res.where(learning_rate=0.1 * (1 + 1e-5))) == 0  # not a label's
  # Values a grid keeps apart stay apart (a 1e-6 tolerance merged these).
  close = grid_lib.Grid(grid_lib.Values('learning_rate', (1.0000049, 1.0000051)),
                        grid_lib.Seeds(3))
  both = results.from_outputs(close, _outputs(close))
  assert len(both.where(learning_rate=1.0000049)) == len(both) // 2
  assert len(both.compare('train_loss', 'learning_rate', 1.0000049)) == 1
  with pytest.raises(ValueError, match='give one value'):
    both.compare('train_loss', 'learning_rate', [1.0000049, 1.0000051])
  assert len(res.where(optimizer=np.asarray('sgd'))) == len(res) // 2
  effects = res.compare('train_loss', 'learning_rate', 0.1)
  assert [e.value for e in effects] == [
      v for v in res.metadata['axes']['learning_rate'] if abs(v - 0.01) < 1e-6]
  # A list: either value (it raised a broadcasting error).
  assert len(res.where(optimizer=['sgd', 'adam'])) == len(res)
  assert len(res.where(optimizer=('adam',), learning_rate=[0.1, 0.01])) == (
      len(res) // 2)


def _hand_t_interval(values, level=0.95, low=0.0):
  """The textbook t-interval, clipped below at ``low`` (a loss is >= 0).

  For two values the sample skewness is 0, so this is ``stats.mean_ci``
  (taken at its calibrated level).
  """
  x = np.asarray(values, np.float64)
  n = len(x)
  mean = x.sum() / n
  sd = np.sqrt(np.sum((x - mean) ** 2) / (n - 1))
  level = stats.calibrated_level(n, level)
  half = scipy_stats.t.ppf(0.5 + level / 2, df=n - 1) * sd / np.sqrt(n)
  return mean, max(mean - half, low), mean + half, n


def test_summarize_by_hand(res):
  grid = _grid()
  final_loss = _outputs(grid)['train_loss'][:, -1].astype(np.float64)
  rows = res.summarize('train_loss', 'optimizer')
  assert [r.value for r in rows] == list(OPTIMIZERS)
  for row in rows:
    per_seed = []
    for seed in range(N_SEEDS):
      vals = [final_loss[m.index] for m in grid.members
              if m.values['optimizer'] == row.value
              and m.values['seed'] == seed
              and m.index != 4]  # member 4 diverged: excluded.
      per_seed.append(sum(vals) / len(vals))
    # The interval method itself is checked against scipy in test_stats.
    chex.assert_trees_all_close(
        tuple(row.interval),
        tuple(stats.mean_ci(per_seed, bounds=(0.0, np.inf))),
        rtol=1e-12, atol=0)
    chex.assert_trees_all_close(row.interval.mean, np.mean(per_seed),
                                rtol=1e-12)
    # Member 4 (sgd, lr=0.01, seed 1) is the only diverged member.
    assert row.diverged == (1 if row.value == 'sgd' else 0)
    assert row.members == len(LRS) * N_SEEDS


def test_summarize_diverged_member_excluded_from_mean():
  # One option, two lrs, two seeds; seed 1 at lr=0.1 diverged already at the
  # step-0 evaluation (diverged_step 0; its metrics NaN from there on).
  grid = grid_lib.Grid(grid_lib.Choice('optimizer', ('sgd',)),
                       grid_lib.Values('learning_rate', (0.1, 0.01)),
                       grid_lib.Seeds(2))
  # Members: (0.1, s0), (0.1, s1), (0.01, s0), (0.01, s1).
  outputs = {'step': np.asarray([[0, 1]] * 4, np.int32),
             'train_loss': np.asarray([[9, 1.0], [np.nan, np.nan], [9, 3.0],
                                       [9, 5.0]], np.float32),
             'diverged_step': np.asarray([-1, 0, -1, -1], np.int32)}
  res = results.from_outputs(grid, outputs)
  (row,) = res.summarize('train_loss', 'optimizer')
  assert row.value == 'sgd'
  assert (row.diverged, row.members) == (1, 4)
  # seed 0: mean(1, 3) = 2; seed 1: only 5 (the diverged member dropped). The
  # t-interval's low end, -32.8, is clipped to 0: a loss is never negative.
  chex.assert_trees_all_close(tuple(row.interval),
                              _hand_t_interval([2.0, 5.0]), rtol=1e-12, atol=0)
  assert row.interval.low == 0.0
  by_lr = res.summarize('train_loss', 'learning_rate')
  assert [r.value for r in by_lr] == [0.1, 0.01]
  assert [r.diverged for r in by_lr] == [1, 0]
  # At lr=0.1 only seed 0 is finite: one value, so the interval is unknown.
  chex.assert_trees_all_equal(tuple(by_lr[0].interval), (1.0, np.nan, np.nan, 1))
  chex.assert_trees_all_close(tuple(by_lr[1].interval),
                              _hand_t_interval([3.0, 5.0]), rtol=1e-12, atol=0)


def test_summarize_excludes_diverged_member_even_if_metric_finite():
  grid = grid_lib.Grid(grid_lib.Choice('optimizer', ('sgd',)),
                       grid_lib.Seeds(2))
  outputs = {'step': np.asarray([[0], [0]], np.int32),
             'train_loss': np.asarray([[1.0], [100.0]], np.float32),
             'diverged_step': np.asarray([-1, 3], np.int32)}
  (row,) = results.from_outputs(grid, outputs).summarize(
      'train_loss', 'optimizer')
  assert row.diverged == 1
  chex.assert_trees_all_equal(tuple(row.interval), (1.0, np.nan, np.nan, 1))


def _all_diverged():
  """Two optimizers x 3 seeds; every 'adam' member diverged."""
  grid = grid_lib.Grid(grid_lib.Choice('optimizer', ('sgd', 'adam')),
                       grid_lib.Seeds(3))
  loss = np.asarray([1.0, 1.2, 1.1, np.nan, np.nan, np.nan], np.float32)
  outputs = {'step': np.zeros((6, 1), np.int32), 'train_loss': loss[:, None],
             'diverged_step': np.asarray([-1, -1, -1, 2, 0, 5], np.int32)}
  return results.from_outputs(grid, outputs)


def test_summarize_all_diverged_group_is_unknown_and_warns_nothing():
  res = _all_diverged()
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    rows = res.summarize('train_loss', 'optimizer')
    table = res.summary_table('train_loss')
  adam = rows[1]
  assert (adam.value, adam.diverged, adam.members) == ('adam', 3, 3)
  chex.assert_trees_all_equal(tuple(adam.interval), (np.nan, np.nan, np.nan, 0))
  line = next(l for l in table.splitlines() if l.split()[:2] ==
              ['optimizer', 'adam'])
  assert line.split()[2:] == ['-', '-', '-', '0', '3/3', '!']
  assert 'nan' not in table


def test_summarize_unknown_metric(res):
  with pytest.raises(ValueError, match="'test_loss'.*train_loss"):
    res.summarize('test_loss', 'optimizer')
  res.columns['sharpness'] = res.columns['train_loss']
  with pytest.raises(ValueError, match="'sharpness'.*stats.METRICS"):
    res.summarize('sharpness', 'optimizer')
  # Misspelt names and a level in percent: one line naming what exists,
  # before, a bare KeyError or NaN intervals.
  for call, message in (
      (lambda: res.summary_table('test_loss'), "'test_loss'; columns: "),
      (lambda: res.summarize('train_loss', 'optimiser'),
       "No axis 'optimiser'; axes: optimizer"),
      (lambda: res.compare('train_loss', 'optimiser', 'sgd'),
       "No axis 'optimiser'"),
      (lambda: res.where(optimiser='sgd'), "No column 'optimiser'; columns: "),
      (lambda: res.summarize('train_loss', 'optimizer', 95),
       r'level=95; accepted: a fraction in \(0, 1\)')):
    with pytest.raises(ValueError, match=message):
      call()


def test_summary_table_lists_axis_values(res):
  table = res.summary_table('train_loss')
  lines = table.splitlines()
  assert lines[0].startswith("final train_loss: mean over seeds of each "
                             "seed's mean over its members that finished, "
                             "95% interval over seeds")
  assert 'clipped to [0, inf]' in lines[0]
  assert 'diverged members are excluded from the mean' in lines[1]
  assert 'mean' in lines[2] and 'diverged' in lines[2]
  body = lines[4:]
  assert len(body) == len(OPTIMIZERS) + len(LRS)  # the seed axis is not a row
  for value in OPTIMIZERS:
    assert any(l.split()[:2] == ['optimizer', value] for l in body), value
  for value in ('0.1', '0.01'):
    assert any(l.split()[:2] == ['learning_rate', value] for l in body), value
  assert not any(l.startswith('seed') for l in body)
  sgd = next(l for l in body if l.split()[:2] == ['optimizer', 'sgd'])
  ci = res.summarize('train_loss', 'optimizer')[0].interval
  # Member 4 diverged: 1 of the 6 sgd members, flagged.
  assert sgd.split()[2:] == [f'{ci.mean:.4f}', f'{ci.low:.4f}',
                             f'{ci.high:.4f}', str(N_SEEDS), '1/6', '!']
  adam = next(l for l in body if l.split()[:2] == ['optimizer', 'adam'])
  assert adam.split()[-1] == '0/6'
