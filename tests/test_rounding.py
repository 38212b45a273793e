"""The rounding study and its launcher: ``python -m experiments.rounding``."""

import jax
import numpy as np
import pytest
from sklearn import dummy

import launchers

from rahimi_jax import data as data_lib
from rahimi_jax import grid as grid_lib
from rahimi_jax import results as results_lib
from rahimi_jax import stats
from rahimi_jax import storage
from rahimi_jax.components import precision as precision_lib
from rahimi_jax.studies import rounding

# Adam in bfloat16: nearest-even rounds b2 = 0.999 to 1 (a collapse at step
# 1), toward zero to 0.99609375 (trains); float16 rounds eps to 0 (collapses
# in every mode); float16 gradients with a dynamic loss scale starting at 1e9
# overflow and back off.
_FLAGS = ['--optimizers=adam', '--learning_rates=0.003', '--hidden=16',
          '--precisions=bfloat16,float16', '--roundings=nearest_even,toward_zero',
          '--placements=storage,constants,gradients',
          '--loss_scalings=none,dynamic', '--loss_scale=1e9', '--seeds=2',
          '--steps=30', '--log_every=10', '--batch_size=32']
_CONFIG = rounding.RoundingConfig(
    optimizers=('adam',), learning_rates=(0.003,), hidden=(16,),
    precisions=('bfloat16', 'float16'),
    roundings=('nearest_even', 'toward_zero'),
    placements=('storage', 'constants', 'gradients'),
    loss_scalings=('none', 'dynamic'), loss_scale=1e9, seeds=2, steps=30,
    batch_size=32, log_every=10)


@pytest.fixture(scope='module')
def study(tmp_path_factory):
  """The launcher run as a user would (the module's one subprocess run),
  beside a bad flag that must fail before anything runs; the study's tests
  read the results it saved."""
  def make(tmp):
    return tmp, launchers.launch_many('experiments.rounding', [
        [*_FLAGS, f'--out={tmp / "out"}'],
        ['--placements=storage,weights', f'--out={tmp / "bad"}']])

  tmp, (ok, bad) = launchers.once(tmp_path_factory, 'rounding', make)
  assert ok.returncode == 0, ok.stderr[-3000:]
  res = storage.load(str(tmp / 'out'))
  return res, rounding.cells(res), ok, bad, tmp


def _row(rows, rounding_, placement, precision='bfloat16'):
  return next(r for r in rows if r['cell']['rounding'] == rounding_
              and r['cell']['placement'] == placement
              and r['cell']['precision'] == precision
              and r['cell']['loss_scaling'] == 'none')


def test_the_grid_is_float32_once_plus_every_cell():
  grid = _CONFIG.grid()
  cells = {tuple(m.values[a] for a in rounding.CELL_AXES) for m in grid.members}
  # float32 once, every cell without scaling, the gradients cells dynamic.
  assert len(grid) == 2 * len(cells) == 2 * (1 + 2 * 2 * 3 + 2 * 2)
  assert ('float32', 'nearest_even', 'storage', 'none') in cells
  scaled = rounding.RoundingConfig(
      precisions=('float16',), placements=('storage', 'gradients'),
      loss_scalings=('none', 'dynamic')).grid()
  scaling = {(m.values['placement'], m.values['loss_scaling'])
             for m in scaled.members if m.values['precision'] == 'float16'}
  # Loss scaling only where gradients are rounded.
  assert scaling == {('storage', 'none'), ('gradients', 'none'),
                     ('gradients', 'dynamic')}


def test_value_knobs_set_every_cell():
  config = rounding.RoundingConfig(
      optimizers=('momentum',), learning_rates=(0.1,), precisions=('bfloat16',),
      placements=('constants',), values={'momentum': ['0.5']})
  assert config.values == (('momentum', 0.5),)
  assert {m.values['momentum'] for m in config.grid().members} == {0.5}


def test_rtz_trains_and_rne_collapses_with_the_mechanism(study):
  res, rows = study[:2]
  rne, rtz = _row(rows, 'nearest_even', 'constants'), _row(
      rows, 'toward_zero', 'constants')
  assert [s for s, _ in rne['collapses']] == [1, 1]
  assert not rtz['collapses']
  assert rtz['value'].mean > res.metadata['chance_threshold']
  text = rounding.explanations(res, rows, gap=0.02)
  assert 'b2 0.999 -> 1 ' in text
  # 2 of 2 seeds against 0 of 2 could be chance: paired by seed, the two
  # seeds whose outcomes differ both go nearest_even's way with probability
  # 1/4 (an unpaired Fisher test said 1/6, as if the runs were independent).
  assert rne['collapsed_seeds'] == [0, 1] and rtz['seed_ids'] == [0, 1]
  assert ("adam, bfloat16 constants: toward_zero collapses on no seed" in text
          and "2 of 2 seeds against 0 of 2 is too few to call it the mode's "
          'doing (exact paired sign test over the 2 seeds where only '
          'nearest_even collapsed: p = 0.25; p < 0.05 needs 5 of them)'
          in text), text
  assert 'changing only the rounding mode' not in text

  def seeds(n, paired=None):
    """The rows as if run with ``n`` seeds, nearest_even's constants cell
    collapsing on each, toward_zero's run on ``paired`` of them."""
    out = []
    for r in rows:
      r = r | {'seeds': n, 'seed_ids': list(range(n))}
      if r['collapses']:
        r |= {'collapses': [r['collapses'][0]] * n,
              'collapsed_seeds': list(range(n))}
      if paired is not None and r['label'] == rtz['label'] and (
          r['optimizer'] == 'adam'):
        r |= {'seed_ids': list(range(paired))}
      out.append(r)
    return out

  # 5 of 5 against 0 of 5 is not (p = 1/32).
  text = rounding.explanations(res, seeds(5), gap=0.02)
  assert ('changing only the rounding mode to nearest_even collapses it '
          '(non-finite from step 1 (5/5 seeds); exact paired sign test over '
          'the 5 seeds where only nearest_even collapsed: p = 0.031)') in text, (
              text)
  # Four of four, the paired test's smallest p at 4 seeds, is not yet; nor
  # are five collapses of which toward_zero ran only two seeds (partial
  # results): only the seeds both cells ran pair.
  assert 'p = 0.062; p < 0.05 needs 5' in rounding.explanations(
      res, seeds(4), gap=0.02)
  assert 'the 2 seeds where only nearest_even collapsed: p = 0.25' in (
      rounding.explanations(res, seeds(5, paired=2), gap=0.02))
  # No seed in both cells: no contrast (binomtest of 0 seeds raised).
  assert 'toward_zero collapses on no seed' not in rounding.explanations(
      res, seeds(5, paired=0), gap=0.02)
  # Reference and storage cells: finite, no collapse.
  for r in rows:
    if r['cell']['placement'] == 'storage':
      assert not r['collapses'] and np.isfinite(r['value'].mean), r['label']


def _made_up(nearest_even_shift):
  """SGD on bfloat16 storage, 4 seeds: float32 at 0.8 + 0.01 seed, nearest
  even ``nearest_even_shift`` away, stochastic and toward zero ~float32."""
  config = rounding.RoundingConfig(
      optimizers=('sgd',), learning_rates=(0.1,), precisions=('bfloat16',),
      roundings=('nearest_even', 'toward_zero', 'stochastic'),
      placements=('storage',), seeds=4)
  grid = config.grid()
  acc = []
  for m in grid.members:
    v, s = m.values, m.values['seed']
    final = 0.8 + 0.01 * s + (
        0.0 if v['precision'] == 'float32' else
        nearest_even_shift + 0.002 * s if v['rounding'] == 'nearest_even' else
        0.001 * (s % 2) if v['rounding'] == 'stochastic' else -0.001 * s)
    acc.append([0.5, 0.7, final])
  res = results_lib.from_outputs(grid, {
      'step': np.tile([0, 10, 20], (len(grid), 1)),
      'test_accuracy': np.asarray(acc),
      'diverged_step': np.full(len(grid), -1)}, {
          'config': config.to_dict(), 'task': 'classification',
          'chance_accuracy': 0.1, 'chance_threshold': 0.15})
  return rounding.explanations(res, rounding.cells(res), gap=0.02)


def test_the_contrast_says_which_side_of_float32_nearest_even_is():
  # It said "stochastic rounding recovers float32 ... where nearest_even
  # loses +0.0530" of accuracy, a gain.
  better = _made_up(+0.05)
  assert ('stochastic rounding matches float32 (effect +0.0005' in better
          and 'where nearest_even is better: +0.0530' in better), better
  worse = _made_up(-0.05)
  assert ('stochastic rounding recovers float32 (effect +0.0005' in worse
          and 'where nearest_even is worse: -0.0470' in worse), worse


def test_effects_are_paired_by_seed(study):
  res, rows = study[:2]
  final = res.final()
  row = _row(rows, 'toward_zero', 'storage')
  ref = final.where(optimizer='adam', precision='float32')
  cell = final.where(optimizer='adam', precision='bfloat16',
                     rounding='toward_zero', placement='storage')
  diff = cell.columns['test_accuracy'] - ref.columns['test_accuracy']
  assert list(cell.columns['seed']) == list(ref.columns['seed'])
  assert row['effect'].mean == pytest.approx(diff.mean())
  assert row['effect'].n == 2


def test_the_table_says_over_how_many_seeds_when_some_diverged(study):
  # One of the two seeds of a cell diverged: its value and effect are over
  # the one left, which has no interval; before, the row sat under "mean
  # over 2 seeds" with "nan" bounds.
  res = study[0]
  cols = {k: v.copy() for k, v in res.columns.items()}
  bad = ((cols['precision'] == 'bfloat16') & (cols['rounding'] == 'toward_zero')
         & (cols['placement'] == 'storage') & (cols['loss_scaling'] == 'none')
         & (cols['seed'] == cols['seed'].min()))
  cols['test_accuracy'][bad & (cols['step'] > 0)] = np.nan
  cols['diverged_step'][bad] = 10
  res = results_lib.Results(cols, res.metadata)
  text = rounding.table(res, rounding.cells(res))
  (row,) = [l for l in text.splitlines()
            if l.strip().startswith('bfloat16 toward_zero storage')
            and 'scal' not in l]
  assert row.count('[no interval] (n=1)') == 2, row
  assert 'nan' not in text and text.count('(n=') == 3, text  # + header


def test_attribution_names_why_it_cannot_run_on_a_collapsed_factorial(study):
  res = study[0]
  out = rounding.attribute(res, 'adam')
  assert isinstance(out, str) and 'every seed has a diverged member' in out, out


def test_chance_level_is_the_majority_classifier():
  data = data_lib.digits()
  chance, threshold = rounding.chance_accuracy(data)
  clf = dummy.DummyClassifier(strategy='most_frequent').fit(
      data.x_train, data.y_train)
  # The commonest *test* class: at least the train-majority's test score.
  assert chance >= clf.score(data.x_test, data.y_test)
  n = len(data.y_test)
  assert threshold == pytest.approx(chance + 3 * np.sqrt(
      chance * (1 - chance) / n))


def test_collapse_to_chance_is_dated_at_the_first_step_it_stays_there():
  def member(acc):
    steps = np.arange(0, 10 * len(acc), 10)
    return results_lib.Results(
        {'member': np.full(len(acc), 'm'), 'step': steps,
         'test_accuracy': np.asarray(acc), 'diverged_step':
         np.full(len(acc), -1)}, {})
  assert rounding.collapse(member([0.1, 0.5, 0.8, 0.1, 0.12]),
                           'test_accuracy', 0.15) == (30, 'chance-level accuracy')
  assert rounding.collapse(member([0.1, 0.5, 0.8, 0.1, 0.6]),
                           'test_accuracy', 0.15) is None
  assert rounding.collapse(member([0.1, 0.1]), 'test_accuracy', 0.15) == (
      0, 'chance-level accuracy')
  diverged = member([0.1, 0.5])
  diverged.columns['diverged_step'][:] = 7
  assert rounding.collapse(diverged, 'test_accuracy', 0.15) == (7, 'non-finite')


def test_event_counts_are_means_over_seeds_never_rounded_to_zero():
  # One seed of two with one overflow: a mean of 0.5, not "0".
  assert [rounding._count(t) for t in (0.5, 1.25, 3.0, 0.25, 12345.5)] == [
      '0.5', '1.25', '3', '0.25', '12,346']


@pytest.mark.parametrize('kwargs, message', [
    (dict(precisions=('float32', 'bfloat16')), 'float32 is the reference'),
    (dict(optimizers=('sgd', 'adam'), learning_rates=(0.1,)),
     'learning_rates: one per optimizer; got 1'),
    (dict(loss_scalings=('none', 'static'), placements=('storage',)),
     'loss scaling acts on rounded gradients'),
    (dict(placements=('storage+weights',)), "Unknown placement "
     "'storage\\+weights'"),
    (dict(roundings=('floor',)), "Unknown rounding 'floor'"),
    (dict(seeds=1), 'intervals need at least 2; got 1'),
    (dict(optimizers=('levenberg_marquardt',), learning_rates=(1.0,)),
     'levenberg_marquardt not supported here'),
    (dict(values={'momentum': '0.5,0.9'}),
     'momentum: every cell runs at one value; got 0.5, 0.9'),
    (dict(values={'learning_rate': 0.1}), 'learning_rate: not a value knob '
     'of this study; accepted: momentum, weight_decay, init_scale'),
])
def test_bad_configs_are_one_line_errors(kwargs, message):
  with pytest.raises(ValueError, match=message):
    rounding.RoundingConfig(**kwargs)


def test_launcher_end_to_end(study):
  """The run's report, files and dynamic loss scaling, and the bad flag."""
  res, _, ok, bad, tmp = study
  text = ok.stdout
  assert '34 members in one program: 17 cells' in text, text
  assert 'why:' in text and 'attribution (format x mode x placement):' in text
  assert 'rounding events over the run' in text
  assert 'each effect interval is 95% on its own, not adjusted for the ' in text
  # float16 rounds eps = 1e-8 to 0: Adam divides 0/0 where a gradient is 0.
  assert 'eps 1e-08 -> 0 ' in text, text
  # Toward zero flushes what is below the smallest subnormal (5.96e-8),
  # nearest-even what is below half of it.
  assert 'eps 1e-08 -> 0 (below the smallest subnormal)' in text, text
  assert 'eps 1e-08 -> 0 (below half the smallest subnormal)' in text, text
  # A dynamic scale starting at 1e9 overflows float16: nearest-even makes
  # infinities, so the scale backs off; toward zero saturates at 65504 (never
  # infinite), so it never does and the gradients stay clipped.
  assert 'dynamic loss scaling skipped' in text, text
  dynamic = res.final().where(loss_scaling='dynamic', precision='float16')
  rne = dynamic.where(rounding='nearest_even').columns
  rtz = dynamic.where(rounding='toward_zero').columns
  assert np.all(rne['loss_scale'] < 1e9) and np.all(rne['steps_skipped'] > 0)
  assert np.all(rtz['loss_scale'] == np.float32(1e9))
  assert np.all(dynamic.columns['diverged_step'] == -1)
  for name in ('curves_adam_gradients.png', 'curves_adam_constants.png'):
    assert (tmp / 'out' / name).stat().st_size > 1000
  assert res.metadata['axes'][grid_lib.SEED] == [0, 1]
  launchers.assert_clean_error(bad, "'weights'")
  assert not (tmp / 'bad').exists()


def test_updates_rounded_away_are_averaged_up_to_a_divergence():
  """After a divergence the updates are NaN: counted as made, never lost, the
  later logs read 0% and the run's mean fell (11% -> 3.3% in a float8 run)."""
  columns = {'step': np.arange(0, 10, 2), 'diverged_step': np.full(5, 3),
             'updates_lost': np.asarray([np.nan, 0.1, 0.2, 0.0, 0.0])}
  assert rounding._lost_until_divergence(columns) == pytest.approx(0.15)
  columns['diverged_step'][:] = -1  # a run that finished: every log
  assert rounding._lost_until_divergence(columns) == pytest.approx(0.075)


def _factorial_results():
  """float32 + a 2^3 factorial of (precision, rounding, placement) cells for
  one optimizer, 3 seeds, random final accuracies: no training."""
  rng = np.random.default_rng(0)
  cells = [('float32', 'nearest_even', 'storage')] + [
      (p, r, w) for p in ('bfloat16', 'e5m2')
      for r in ('nearest_even', 'stochastic') for w in ('storage', 'updates')]
  names = ('member', 'optimizer', 'learning_rate', 'precision', 'rounding',
           'placement', 'loss_scaling', 'seed', 'step', 'test_accuracy',
           'diverged_step')
  columns = {k: [] for k in names}
  for p, r, w in cells:
    for seed in range(3):
      for step in (0, 10):
        for k, v in zip(names, (f'{p}/{r}/{w}/{seed}', 'sgd', 0.01, p, r, w,
                                'none', seed, step, rng.uniform(0.5, 0.9),
                                -1)):
          columns[k].append(v)
  return results_lib.Results(
      {k: np.asarray(v) for k, v in columns.items()},
      {'axes': {'optimizer': ['sgd'], 'learning_rate': [0.01],
                'precision': ['float32', 'bfloat16', 'e5m2'],
                'rounding': ['nearest_even', 'stochastic'],
                'placement': ['storage', 'updates'],
                'loss_scaling': ['none'], 'seed': [0, 1, 2]},
       'config': {'precisions': ['bfloat16', 'e5m2'],
                  'roundings': ['nearest_even', 'stochastic'],
                  'placements': ['storage', 'updates']}})


def test_the_table_headers_name_the_interval_method():
  # Every printed interval is stats.mean_ci's (t widened for skew, at a
  # calibrated level): its header says so, as summary_table's does, not a
  # bare "95% interval" a reader takes for the t-interval.
  res = _factorial_results()
  text = '\n'.join([rounding.table(res, rounding.cells(res)),
                    *rounding.attribution_lines(res)])
  headers = [l for l in text.splitlines() if '95% interval' in l]
  assert len(headers) == 2, text  # the cells' table and the attribution's
  for line in headers:
    assert f'95% interval over seeds ({stats.METHOD})]' in line, line


@pytest.mark.parametrize('mode', ['nearest_even', 'toward_zero', 'stochastic'])
def test_overflow_lines_say_what_the_counter_counts(mode):
  """``quantize`` counts a value whose rounding passed max, not every value
  beyond max: float16 nearest-even sends 65510 and -65519 to +-65504
  (uncounted) and 65530 to infinity (counted); 70000 overflows in every
  mode. The line read "values beyond +-65504 ... rounded to infinity, but
  those within half a unit in the last place of +-max to +-max": it counted
  2 of the 4 values beyond, and none it counted went to max."""
  x = np.asarray([65510.0, 65530.0, -65519.0, 70000.0, 1.0], np.float32)
  bits = jax.random.bits(jax.random.key(0), x.shape, np.uint32)
  fmt = precision_lib.format_knobs(precision_lib.get_format('float16'))
  q, over = precision_lib.quantize(x, fmt, precision_lib.get_mode(mode), bits,
                                   overflows=True)
  counted = int(np.sum(over))
  assert counted < np.sum(np.abs(x) > 65504)  # not every value beyond max
  assert np.all(np.abs(np.asarray(q)[~np.asarray(over)]) <= 65504)
  if mode != 'toward_zero':
    assert np.all(np.isinf(np.asarray(q)[np.asarray(over)]))
  config = rounding.RoundingConfig(
      optimizers=('sgd',), learning_rates=(0.1,), precisions=('float16',),
      roundings=(mode,), placements=('gradients',), seeds=2)
  grid = config.grid()
  n = len(grid)
  res = results_lib.from_outputs(grid, {
      'step': np.tile([0, 10], (n, 1)),
      'test_accuracy': np.tile([0.1, 0.8], (n, 1)),
      'overflows_gradients': np.tile([0.0, counted], (n, 1)),
      'diverged_step': np.full(n, -1)}, {
          'config': config.to_dict(), 'task': 'classification',
          'chance_accuracy': 0.1, 'chance_threshold': 0.15})
  (row,) = [r for r in rounding.cells(res) if r['cell']['precision'] ==
            'float16']
  (line,) = [l for l in rounding.explain(res, row) if 'overflow' in l
             or '65504' in l]
  assert line.startswith(f'gradients: {counted} values rounded past +-65504 '
                         'over the run'), line
  assert 'not counted' in line or 'counted only past it' in line, line
  events = rounding.events(res, rounding.cells(res))
  assert 'overflows: values rounded past the format' in events, events
