"""The batch-norm study: its reading of known effects, the probes in training,
and the launcher as a user runs it."""

import csv
import re

import chex
import launchers
import numpy as np
import pytest

from rahimi_jax import grid as grid_lib
from rahimi_jax import results as results_lib
from rahimi_jax import stats
from rahimi_jax.studies import batchnorm

NORMS = ('none', 'batch', 'noisy_batch')
LRS = (0.01, 0.1, 0.5)


def _results(accuracy, ics, beta, seeds=4, logs=3):
  """A grid's results with known per-arm values (+ small seed noise)."""
  grid = grid_lib.Grid(grid_lib.Choice('norm', NORMS),
                       grid_lib.Values('learning_rate', LRS),
                       grid_lib.Seeds(seeds))
  rng = np.random.default_rng(0)
  outputs = {'step': np.tile(np.arange(logs) * 10, (len(grid), 1)),
             'diverged_step': np.full(len(grid), -1)}
  for name, by_norm in (('test_accuracy', accuracy), ('ics_l2', ics),
                        ('preact_mean_drift', ics), ('beta_smoothness', beta)):
    base = np.asarray([by_norm[m.values['norm']] for m in grid.members])
    outputs[name] = (base[:, None] * (1 + 0.01 * rng.normal(size=(len(grid), 1)))
                     * np.ones(logs))
  return results_lib.from_outputs(grid, outputs)


def _verdicts(accuracy, ics, beta) -> str:
  res = _results(accuracy, ics, beta)
  return '\n'.join(batchnorm.verdicts(batchnorm.time_means(
      res, ('ics_l2', 'preact_mean_drift', 'beta_smoothness'))))


def test_value_knobs_set_every_member():
  config = batchnorm.BatchNormConfig(models=('mlp',), optimizer='momentum',
                                     values={'momentum': '0.5'})
  assert {m.values['momentum'] for m in config.grid().members} == {0.5}
  # A knob the optimizer does not read was recorded and never applied.
  with pytest.raises(ValueError, match='momentum: no member reads it: the '
                     'optimizer options here are sgd, and it is read by '):
    batchnorm.BatchNormConfig(values={'momentum': 0.5})
  with pytest.raises(ValueError, match='momentum: the grids vary the '
                     'learning rate only; got 0.5, 0.9'):
    batchnorm.BatchNormConfig(values={'momentum': (0.5, 0.9)})
  # A model listed twice would run its grid twice and keep one.
  with pytest.raises(ValueError, match='models: options listed twice: mlp'):
    batchnorm.BatchNormConfig(models=('mlp', 'cnn', 'mlp'))


def test_verdicts_read_the_noisy_arm():
  # Santurkar's finding: noisy batch norm has more shift than no norm yet
  # trains as well as batch norm, and both gaining arms are smoother.
  text = _verdicts({'none': 0.5, 'batch': 0.6, 'noisy_batch': 0.6},
                   {'none': 0.1, 'batch': 0.1, 'noisy_batch': 0.5},
                   {'none': 5.0, 'batch': 3.0, 'noisy_batch': 3.0})
  assert text.count('does not follow a reduction of covariate shift') == 3
  assert text.count('the gain follows smoothness') == 3
  assert re.search(r'batch norm vs none: accuracy \+(9|10)\.\d \[\+', text)
  # The folklore's world: the added shift costs the gain; smoothness is
  # worse where batch norm gains.
  text = _verdicts({'none': 0.5, 'batch': 0.6, 'noisy_batch': 0.4},
                   {'none': 0.1, 'batch': 0.05, 'noisy_batch': 0.5},
                   {'none': 3.0, 'batch': 5.0, 'noisy_batch': 5.0})
  assert text.count('consistent with the folklore') == 3
  assert text.count('is LESS smooth') == 3 and 'follows smoothness' not in text
  # Noisy batch norm smoother too, yet losing accuracy: against smoothness
  # as the whole story (it read "consistent with smoothness"); less smooth
  # and losing: consistent with it.
  text = _verdicts({'none': 0.5, 'batch': 0.6, 'noisy_batch': 0.4},
                   {'none': 0.1, 'batch': 0.05, 'noisy_batch': 0.5},
                   {'none': 5.0, 'batch': 3.0, 'noisy_batch': 3.0})
  assert text.count('noisy batch norm is smoother too and LOSES accuracy: '
                    'smoothness does not explain the gain alone') == 3, text
  text = _verdicts({'none': 0.5, 'batch': 0.6, 'noisy_batch': 0.4},
                   {'none': 0.1, 'batch': 0.05, 'noisy_batch': 0.5},
                   {'none': 5.0, 'batch': 3.0, 'noisy_batch': 8.0})
  assert text.count('noisy batch norm is less smooth and loses accuracy: '
                    'consistent with smoothness') == 3, text


def test_a_noisy_arm_that_loses_most_of_the_gain_is_not_read_as_keeping_it():
  """Batch norm gains 20 points, noisy batch norm (more shift) 10: the added
  shift cost half of them. The verdicts read "still gains: the gain does not
  follow a reduction of covariate shift" and "the gain follows smoothness"
  from the noisy arm's gain over no norm alone; Santurkar et al. compare it
  with batch norm (noisy batch norm trains as well as batch norm)."""
  accuracy = {'none': 0.5, 'batch': 0.7, 'noisy_batch': 0.6}
  text = _verdicts(accuracy, {'none': 0.1, 'batch': 0.1, 'noisy_batch': 0.5},
                   {'none': 5.0, 'batch': 3.0, 'noisy_batch': 3.0})
  assert 'still gains: the gain does not follow' not in text, text
  assert text.count('but less than batch norm (-') == 3, text
  assert text.count('the part it loses may.') == 3, text
  assert 'the gain follows smoothness' not in text, text
  assert text.count('but it gains less than batch norm (-') == 3, text
  # The printed comparison with batch norm, by hand: the mean over seeds of
  # each seed's noisy minus batch accuracy (numpy), its interval below 0.
  final = _results(accuracy, accuracy, accuracy).final().columns
  for lr in LRS:
    acc = {n: final['test_accuracy'][(final['norm'] == n)
                                     & (final['learning_rate'] == lr)]
           for n in ('batch', 'noisy_batch')}  # in seed order, both
    want = 100 * np.mean(acc['noisy_batch'] - acc['batch'])
    high = re.search(rf'\(vs batch norm {want:+.1f} \[[+-][\d.]+, '
                     r'([+-][\d.]+)\]\)', text)
    assert high and float(high.group(1)) < 0, (want, text)
  # Noisy batch norm as good as batch norm: it keeps the gain.
  text = _verdicts({'none': 0.5, 'batch': 0.6, 'noisy_batch': 0.6},
                   {'none': 0.1, 'batch': 0.1, 'noisy_batch': 0.5},
                   {'none': 5.0, 'batch': 3.0, 'noisy_batch': 3.0})
  # Its interval against batch norm reaches 0 (a loss not shown, not shown
  # absent): the part kept is read; the whole gain is undecided.
  assert text.count("points: whether it keeps all of batch norm's gain is "
                    'undecided at these seeds): the part of the gain it keeps '
                    'does not follow a reduction of covariate shift.') == 3, text
  assert text.count('the gain follows smoothness') == 3, text


def test_a_loss_to_batch_norm_not_shown_is_not_read_as_none():
  # The default run's CNN at lr 0.05: noisy batch norm +17.1 points over no
  # norm, -4.1 [-8.5, +12.7] against batch norm, read "(no loss shown): the
  # gain does not follow a reduction of covariate shift", as if it kept all
  # of batch norm's gain; up to 8.5 points of it may be lost.
  ci = stats.Interval
  gain, n_gain = ci(0.21, 0.15, 0.27, 5), ci(0.171, 0.125, 0.221, 5)
  shift = ci(0.4, 0.3, 0.5, 5)
  text = batchnorm._shift(gain, n_gain, shift, shift, 0.975,  # pylint: disable=protected-access
                          ci(-0.041, -0.085, 0.127, 5))
  assert 'the gain does not follow' not in text, text
  assert ("(against batch norm -4.1 [-8.5, +12.7] points: whether it keeps "
          "all of batch norm's gain is undecided at these seeds): the part "
          'of the gain it keeps does not follow') in text, text
  # Shown above batch norm: the whole gain is kept.
  text = batchnorm._shift(gain, n_gain, shift, shift, 0.975,  # pylint: disable=protected-access
                          ci(0.03, 0.01, 0.05, 5))
  assert text.endswith('more than batch norm (+3.0 [+1.0, +5.0] points): the '
                       'gain does not follow a reduction of covariate '
                       'shift.'), text


def test_an_interval_that_reaches_zero_is_read_as_undecided():
  """A gain, a smoothness or an added shift whose interval reaches 0 was
  read as its absence ("does not gain", "gains without being smoother")."""
  text = _verdicts({'none': 0.5, 'batch': 0.5, 'noisy_batch': 0.5},
                   {'none': 0.1, 'batch': 0.1, 'noisy_batch': 0.5},
                   {'none': 5.0, 'batch': 3.0, 'noisy_batch': 3.0})
  assert text.count('undecided: no gain shown at these seeds') == 3, text
  assert 'does not gain' not in text
  assert text.count('its accuracy effect crosses zero') == 3, text
  # Noisy batch norm as rough as no norm: its beta interval holds 0 at a
  # rate (seed noise decides), and its verdict says so there.
  lines = _verdicts({'none': 0.5, 'batch': 0.6, 'noisy_batch': 0.58},
                    {'none': 0.1, 'batch': 0.1, 'noisy_batch': 0.1},
                    {'none': 5.0, 'batch': 3.0, 'noisy_batch': 5.0}
                    ).splitlines()
  undecided = 0
  for noisy, shift, smooth in zip(lines[1::4], lines[2::4], lines[3::4]):
    low, high = map(float, re.search(
        r'beta-smoothness [+-][\d.e-]+ \[([+-][\d.e-]+), ([+-][\d.e-]+)\]',
        noisy).groups())
    if low <= 0 <= high:
      undecided += 1
      assert 'whether it is smoother is undecided' in smooth, smooth
    assert 'without being smoother' not in smooth
    assert "noisy batch norm's added shift is not shown" in shift, shift
    # The 97.5% intervals the verdict reads are printed in it (the table's
    # are 95%: a drift interval above 0 there read "reaches 0" here).
    assert re.search(
        r"\(at 97\.5% each, Bonferroni, wider than the table's: its ICS "
        r'interval [+-][\d.e-]+ \[[+-][\d.e-]+, [+-][\d.e-]+\] reaches 0, its '
        r'drift interval [+-][\d.e-]+ \[[+-][\d.e-]+, [+-][\d.e-]+\] reaches '
        r'0\)', shift), shift
  assert undecided >= 1, lines
  # Less shift than no norm is not said to reach 0.
  text = _verdicts({'none': 0.5, 'batch': 0.6, 'noisy_batch': 0.58},
                   {'none': 0.1, 'batch': 0.1, 'noisy_batch': 0.05},
                   {'none': 5.0, 'batch': 3.0, 'noisy_batch': 3.0})
  assert len(re.findall(r'its ICS interval [+-][\d.e-]+ \[[^]]+\] is below '
                        r'0, its drift interval [+-][\d.e-]+ \[[^]]+\] is '
                        r'below 0\)', text)) == 3, text
  text = _verdicts({'none': 0.6, 'batch': 0.5, 'noisy_batch': 0.5},
                   {'none': 0.1, 'batch': 0.1, 'noisy_batch': 0.5},
                   {'none': 5.0, 'batch': 3.0, 'noisy_batch': 3.0})
  assert text.count('batch norm loses accuracy here') == 3, text


def _santurkar(diverged_seeds=()):
  """Santurkar's world, the no-norm runs of ``diverged_seeds`` at the first
  learning rate diverged at step 10."""
  res = _results({'none': 0.5, 'batch': 0.6, 'noisy_batch': 0.6},
                 {'none': 0.1, 'batch': 0.1, 'noisy_batch': 0.5},
                 {'none': 5.0, 'batch': 3.0, 'noisy_batch': 3.0})
  bad = ((res.columns['norm'] == 'none')
         & np.isin(res.columns['seed'], diverged_seeds)
         & (res.columns['learning_rate'] == LRS[0]))
  res.columns['diverged_step'][bad] = 10
  for name in ('test_accuracy', 'ics_l2', 'preact_mean_drift',
               'beta_smoothness'):
    res.columns[name][bad & (res.columns['step'] >= 10)] = np.nan
  return batchnorm.time_means(
      res, ('ics_l2', 'preact_mean_drift', 'beta_smoothness'))


def test_verdicts_without_an_interval_decide_nothing():
  # The baseline diverged on 3 of 4 seeds at the first rate: one pair left,
  # no interval. Before, the missing interval read as "does not gain".
  text = batchnorm.verdicts(_santurkar(diverged_seeds=(0, 1, 2)))
  first = '\n'.join(text[:4])
  assert first.count('accuracy, ICS, beta smoothness over 1 seed(s), 3 of 4 '
                     'pairs dropped (3 run(s) diverged).') == 1, first
  assert first.count('accuracy, ICS, drift, beta smoothness over 1 seed(s), '
                     '3 of 4 pairs dropped (3 run(s) diverged).') == 1, first
  assert first.count('undecided: an interval needs two seeds') == 2, first
  assert 'does not gain' not in first, first
  # The other rates, all pairs kept, read as before.
  rest = '\n'.join(text[4:])
  assert 'dropped' not in rest and rest.count('follows smoothness') == 2, rest
  # Two of four pairs left: those intervals are over 2 seeds.
  text = batchnorm.verdicts(_santurkar(diverged_seeds=(0, 1)))
  assert 'over 2 seed(s), 2 of 4 pairs dropped' in text[0], text[0]


def test_an_overflowed_probe_leaves_smoothness_undecided():
  """No norm's beta probe overflowed in 2 of 4 runs that finished: those are
  its roughest, and the pairs left would favour it; the verdict read
  "smoother" from the other 2, the drops unmentioned."""
  means = _santurkar()
  bad = ((means.columns['norm'] == 'none') & np.isin(means.columns['seed'],
                                                     (0, 1)))
  means.columns['beta_smoothness'][bad] = np.nan
  text = batchnorm.verdicts(means)
  for lr in range(len(LRS)):
    bn, _, _, smooth = text[4 * lr:4 * lr + 4]
    assert ('beta smoothness over 2 seed(s), 2 of 4 pairs dropped (2 '
            'finished with the reading overflowed).') in bn, bn
    assert smooth.startswith('  => smoothness: undecided: the beta reading '
                             'overflowed in 2 run(s)'), smooth


def test_the_table_counts_diverged_members():
  text = batchnorm.table(_santurkar(diverged_seeds=(1,)))
  row = next(l for l in text.splitlines()[1:] if ' none ' in l)
  assert row.count('(1/4 div.)') == 4, text
  assert 'div.' not in text.replace(row, ''), text
  # A run that finished with a probe overflowed is no divergence.
  means = _santurkar()
  means.columns['beta_smoothness'][(means.columns['norm'] == 'batch')
                                   & (means.columns['seed'] == 2)] = np.inf
  text = batchnorm.table(means)
  assert 'div.' not in text and text.count('(1/4 non-finite)') == 3, text


def test_time_means_average_the_logs_after_step_0():
  res = _results({'none': 0.5, 'batch': 0.6, 'noisy_batch': 0.58},
                 {'none': 0.1, 'batch': 0.1, 'noisy_batch': 0.5},
                 {'none': 5.0, 'batch': 3.0, 'noisy_batch': 3.0})
  cols = dict(res.columns)
  cols['ics_l2'] = cols['ics_l2'] + cols['step']  # logs 0, 10, 20
  res = results_lib.Results(cols, res.metadata)
  means = batchnorm.time_means(res, ('ics_l2',))
  first = res.where(member=res.columns['member'][0]).columns
  chex.assert_trees_all_close(means.columns['ics_l2'][0],
                              np.mean(first['ics_l2'][1:]), rtol=1e-12)
  assert len(means) == len(res) // 3


def test_launcher_end_to_end_and_bad_input(tmp_path):
  out = tmp_path / 'bn'
  tiny = ['--models=mlp', '--depth=1', '--width=8', '--seeds=2', '--steps=4',
          '--log_every=2', '--batch_size=32', '--norms=none,batch,noisy_batch']
  ok, *bad = launchers.launch_many('experiments.batchnorm', [
      [*tiny, f'--out={out}'],
      [*tiny, '--norms=none,batch,bogus', f'--out={tmp_path / "b1"}'],
      [*tiny, '--learning_rates=0.1,0.2', f'--out={tmp_path / "b2"}'],
      [*tiny, '--noise_shift_var=-1', f'--out={tmp_path / "b3"}'],
      [*tiny, '--models=bogus', f'--out={tmp_path / "b4"}'],
      [*tiny, '--switch=seed', f'--out={tmp_path / "b5"}'],
  ])
  assert ok.returncode == 0, ok.stderr[-3000:]
  assert ok.stdout.count('=> covariate shift') == 3  # one per learning rate
  assert '== mlp: final test accuracy' in ok.stdout
  # A group per norm, each member computing only its own.
  assert 'switched: norm (3 groups of members' in ok.stdout
  for name in ('results.csv', 'metadata.json', 'mlp/results.csv',
               'test_accuracy_mlp.png', 'ics_l2_mlp.png',
               'preact_mean_drift_mlp.png', 'beta_smoothness_mlp.png'):
    assert (out / name).exists(), name
  with open(out / 'results.csv') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 3 * 3 * 2 and {r['model'] for r in rows} == {'mlp'}
  # The probes in training: the first layer has nothing below it (no shift,
  # to the bit, noisy batch norm's included: its own noise is not redrawn);
  # the readout moves with the layer below.
  with open(out / 'mlp' / 'results.csv') as f:
    logs = list(csv.DictReader(f))
  for r in logs:
    first, second = float(r['ics_l2_layer0']), float(r['ics_l2_layer1'])
    assert first == 0, r
    assert second > 0 and np.isfinite(float(r['beta_smoothness'])), r
  for proc, value in zip(bad, ('bogus', '0.1', '-1', 'bogus', 'seed')):
    launchers.assert_clean_error(proc, value)
  assert not any((tmp_path / f'b{i}').exists() for i in range(1, 6))


def test_the_report_header_names_the_interval_method():
  # The table's intervals are stats.mean_ci's (t widened for skew, at a
  # calibrated level): the header says so, as summary_table's does.
  res = _results({'none': 0.5, 'batch': 0.6, 'noisy_batch': 0.58},
                 {'none': 0.1, 'batch': 0.1, 'noisy_batch': 0.5},
                 {'none': 5.0, 'batch': 3.0, 'noisy_batch': 3.0})
  header = batchnorm.report({'mlp': res}).splitlines()[0]
  assert header.startswith('== mlp: final test accuracy (%)'), header
  assert f'mean over 4 seeds [95% interval over seeds ({stats.METHOD})]' in (
      header), header
