"""Tests for rahimi_jax.results (tidy table, save/load, summaries) and stats."""

import json
import os

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


def test_save_load_round_trip(res, tmp_path):
  results.save(res, str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ['metadata.json', 'results.csv']
  loaded = results.load(str(tmp_path))
  assert list(loaded.columns) == list(res.columns)
  assert len(loaded) == len(res)
  for name, column in res.columns.items():
    got = loaded.columns[name]
    assert got.dtype.kind == {'U': 'U', 'i': 'i', 'f': 'f'}[column.dtype.kind], name
    if column.dtype.kind == 'U':
      assert list(got) == list(column), name
    elif column.dtype.kind == 'f':
      # float32 -> float64 is exact; NaN and inf survive in place.
      assert got.dtype == np.float64, name
      chex.assert_trees_all_equal(got, column.astype(np.float64))
    else:
      chex.assert_trees_all_equal(got, column.astype(np.int64))
  assert loaded.metadata == res.metadata
  assert loaded.axes == res.axes


def test_save_load_round_trip_bool_and_awkward_strings(tmp_path):
  awkward = np.asarray(['a,b', 'say "hi"', '', 'nan'])
  res = results.Results(
      {'name': awkward, 'flag': np.asarray([True, False, True, False]),
       'x': np.asarray([0.1, -0.0, 1e-300, np.nan], np.float64)},
      {'axes': {}})
  results.save(res, str(tmp_path))
  loaded = results.load(str(tmp_path))
  assert list(loaded.columns['name']) == list(awkward)
  assert loaded.columns['flag'].dtype == bool
  chex.assert_trees_all_equal(loaded.columns['flag'], res.columns['flag'])
  chex.assert_trees_all_equal(loaded.columns['x'], res.columns['x'])
  assert np.signbit(loaded.columns['x'][1])


def test_save_writes_row_count_and_types(res, tmp_path):
  results.save(res, str(tmp_path))
  with open(tmp_path / 'metadata.json') as f:
    meta = json.load(f)
  assert meta['rows'] == len(res)
  assert meta['columns'] == {'member': 'str', 'optimizer': 'str',
                             'learning_rate': 'float', 'seed': 'int',
                             'step': 'int', 'train_loss': 'float',
                             'diverged_step': 'int'}


def test_load_rejects_modified_csv(res, tmp_path):
  results.save(res, str(tmp_path))
  path = tmp_path / 'results.csv'
  text = path.read_text()
  path.write_text(text.replace('1.25', '1.5', 1))
  assert path.read_text() != text
  with pytest.raises(ValueError, match='results.csv'):
    results.load(str(tmp_path))


def test_load_rejects_csv_of_another_run(res, tmp_path):
  first, second = tmp_path / 'a', tmp_path / 'b'
  results.save(res, str(first))
  results.save(res.where(optimizer='adam'), str(second))
  os.replace(second / 'results.csv', first / 'results.csv')
  with pytest.raises(ValueError, match='does not match'):
    results.load(str(first))


def _failing_replace(monkeypatch, fail_on_call):
  """Makes the ``fail_on_call``-th os.replace inside results raise."""
  real = os.replace
  calls = []

  def replace(src, dst):
    calls.append(dst)
    if len(calls) == fail_on_call:
      raise OSError('disk full (simulated)')
    return real(src, dst)

  monkeypatch.setattr(results.os, 'replace', replace)
  return calls


def _snapshot(directory):
  return {name: (directory / name).read_bytes()
          for name in sorted(os.listdir(directory))}


@pytest.mark.parametrize('fail_on_call', [1, 2])
def test_failed_save_leaves_no_partial_or_temp_files(res, tmp_path,
                                                     monkeypatch, fail_on_call):
  results.save(res, str(tmp_path))
  before = _snapshot(tmp_path)
  newer = res.where(optimizer='adam')
  calls = _failing_replace(monkeypatch, fail_on_call)
  with pytest.raises(OSError, match='simulated'):
    results.save(newer, str(tmp_path))
  assert len(calls) == fail_on_call
  monkeypatch.undo()
  # Only the two complete files; no temporary leftovers.
  assert sorted(os.listdir(tmp_path)) == ['metadata.json', 'results.csv']
  # Whatever is there is either a complete, consistent save or detected.
  try:
    loaded = results.load(str(tmp_path))
  except ValueError as e:
    assert 'does not match' in str(e)
  else:
    assert len(loaded) == len(res)
    chex.assert_trees_all_equal(loaded.columns['train_loss'],
                                res.columns['train_loss'].astype(np.float64))
  if fail_on_call == 1:
    assert _snapshot(tmp_path) == before



def test_failed_write_removes_temp_file(res, tmp_path, monkeypatch):
  def fsync(fd):
    del fd
    raise OSError('io error (simulated)')

  monkeypatch.setattr(results.os, 'fsync', fsync)
  with pytest.raises(OSError, match='simulated'):
    results.save(res, str(tmp_path))
  assert os.listdir(tmp_path) == []


def test_check_writable_creates_nested_directory(tmp_path):
  out = tmp_path / 'a' / 'b'
  assert results.check_writable(str(out)) == str(out)
  assert out.is_dir()
  assert os.listdir(out) == []


@pytest.mark.parametrize('make_path', [
    lambda f: f / 'out',            # parent is a regular file
    lambda f: f,                    # the path itself is a regular file
])
def test_check_writable_rejects_unwritable(tmp_path, make_path):
  blocker = tmp_path / 'file'
  blocker.write_text('not a directory')
  path = str(make_path(blocker))
  with pytest.raises(ValueError) as info:
    results.check_writable(path)
  assert repr(path) in str(info.value)
  assert str(info.value).startswith('out: cannot write')
  assert blocker.read_text() == 'not a directory'


def test_save_rejects_unwritable(res, tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('')
  with pytest.raises(ValueError, match='cannot write'):
    results.save(res, str(blocker / 'out'))


# ---------------------------------------------------------- final/where/stats


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


def test_where_selects_equal_rows(res):
  sel = res.where(optimizer='adam', step=10)
  assert len(sel) == len(LRS) * N_SEEDS
  assert set(sel.columns['optimizer']) == {'adam'}
  chex.assert_trees_all_equal(sel.columns['step'], np.full(len(sel), 10))
  sel = res.where(learning_rate=0.01, seed=2)
  assert len(sel) == len(OPTIMIZERS) * len(STEPS)
  assert sel.metadata is res.metadata
  assert len(res.where(optimizer='rmsprop')) == 0


def _hand_interval(values, level=0.95):
  x = np.asarray(values, np.float64)
  n = len(x)
  mean = x.sum() / n
  sd = np.sqrt(np.sum((x - mean) ** 2) / (n - 1))
  half = scipy_stats.t.ppf(0.5 + level / 2, df=n - 1) * sd / np.sqrt(n)
  return mean, mean - half, mean + half, n


def test_summarize_by_hand(res):
  grid = _grid()
  final_loss = _outputs(grid)['train_loss'][:, -1].astype(np.float64)
  rows = res.summarize('train_loss', 'optimizer')
  assert [r[0] for r in rows] == list(OPTIMIZERS)
  for value, ci, diverged in rows:
    per_seed = []
    for seed in range(N_SEEDS):
      vals = [final_loss[m.index] for m in grid.members
              if m.values['optimizer'] == value and m.values['seed'] == seed
              and m.index != 4]  # member 4 diverged: excluded.
      per_seed.append(sum(vals) / len(vals))
    chex.assert_trees_all_close(tuple(ci), _hand_interval(per_seed),
                                rtol=1e-12, atol=0)
    # Member 4 (sgd, lr=0.01, seed 1) is the only diverged member.
    assert diverged == (1 if value == 'sgd' else 0)


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
  (value, ci, diverged), = res.summarize('train_loss', 'optimizer')
  assert value == 'sgd'
  assert diverged == 1
  # seed 0: mean(1, 3) = 2; seed 1: only 5 (the diverged member dropped).
  chex.assert_trees_all_close(tuple(ci), _hand_interval([2.0, 5.0]),
                              rtol=1e-12, atol=0)
  by_lr = res.summarize('train_loss', 'learning_rate')
  assert [r[0] for r in by_lr] == [0.1, 0.01]
  assert [r[2] for r in by_lr] == [1, 0]
  # At lr=0.1 only seed 0 is finite: one value, so the interval is unknown.
  chex.assert_trees_all_equal(tuple(by_lr[0][1]), (1.0, np.nan, np.nan, 1))
  chex.assert_trees_all_close(tuple(by_lr[1][1]), _hand_interval([3.0, 5.0]),
                              rtol=1e-12, atol=0)


def test_summarize_excludes_diverged_member_even_if_metric_finite():
  grid = grid_lib.Grid(grid_lib.Choice('optimizer', ('sgd',)),
                       grid_lib.Seeds(2))
  outputs = {'step': np.asarray([[0], [0]], np.int32),
             'train_loss': np.asarray([[1.0], [100.0]], np.float32),
             'diverged_step': np.asarray([-1, 3], np.int32)}
  (_, ci, diverged), = results.from_outputs(grid, outputs).summarize(
      'train_loss', 'optimizer')
  assert diverged == 1
  chex.assert_trees_all_equal(tuple(ci), (1.0, np.nan, np.nan, 1))


def test_summarize_survives_round_trip(res, tmp_path):
  results.save(res, str(tmp_path))
  loaded = results.load(str(tmp_path))
  for axis in ('optimizer', 'learning_rate'):
    want = res.summarize('train_loss', axis)
    got = loaded.summarize('train_loss', axis)
    assert [r[0] for r in got] == [r[0] for r in want]
    assert [r[2] for r in got] == [r[2] for r in want]
    chex.assert_trees_all_equal([tuple(r[1]) for r in got],
                                [tuple(r[1]) for r in want])


def test_summarize_unknown_metric(res):
  with pytest.raises(ValueError, match="'test_loss'.*train_loss"):
    res.summarize('test_loss', 'optimizer')


def test_summary_table_lists_axis_values(res):
  table = res.summary_table('train_loss')
  lines = table.splitlines()
  assert lines[0] == 'final train_loss: mean over seeds, 95% t-interval'
  assert 'mean' in lines[1] and 'diverged' in lines[1]
  body = lines[3:]
  assert len(body) == len(OPTIMIZERS) + len(LRS)  # the seed axis is not a row
  for value in OPTIMIZERS:
    assert any(l.split()[:2] == ['optimizer', value] for l in body), value
  for value in ('0.1', '0.01'):
    assert any(l.split()[:2] == ['learning_rate', value] for l in body), value
  assert not any(l.startswith('seed') for l in body)
  sgd = next(l for l in body if l.split()[:2] == ['optimizer', 'sgd'])
  ci = res.summarize('train_loss', 'optimizer')[0][1]
  assert sgd.split()[2:] == [f'{ci.mean:.4f}', f'{ci.low:.4f}',
                             f'{ci.high:.4f}', str(N_SEEDS), '1']


def test_mean_ci_matches_scipy():
  values = [0.3, 0.5, 0.4, 0.9]
  chex.assert_trees_all_close(tuple(stats.mean_ci(values)),
                              _hand_interval(values), rtol=1e-12, atol=0)
  chex.assert_trees_all_close(tuple(stats.mean_ci(values, level=0.9)),
                              _hand_interval(values, level=0.9),
                              rtol=1e-12, atol=0)
  # Non-finite values are dropped before the interval.
  chex.assert_trees_all_close(
      tuple(stats.mean_ci(values + [np.nan, np.inf])),
      _hand_interval(values), rtol=1e-12, atol=0)


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


def test_mean_ci_identical_values_zero_width():
  chex.assert_trees_all_equal(tuple(stats.mean_ci([1.5, 1.5, 1.5])),
                              (1.5, 1.5, 1.5, 3))
