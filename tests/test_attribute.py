"""The attribution launcher, shrunk, as a user runs it."""

import csv

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import launchers

from rahimi_jax import results as results_lib
from rahimi_jax import storage
from rahimi_jax.studies import attribute

TINY = ('--hidden=8', '--steps=20', '--seeds=2', '--nodes=2', '--batch_size=32')


# One bad input per kind of flag the launcher reads, as a user meets them;
# the config's other checks run in-process below.
BAD_INPUTS = [
    ('--gates=norm:none', 'norm:none'),
    ('--learning_rate=-1', 'learning_rate'),
]


@pytest.fixture(scope='module')
def launched(tmp_path_factory):
  """The shrunk run and every bad flag, launched at once."""
  def make(tmp):
    out, bad_dir = tmp / 'attribute', tmp / 'bad'
    bad_dir.mkdir()
    procs = launchers.launch_many('experiments.attribute', [
        [*TINY, f'--out={out}'],
        *[[flag, f'--out={bad_dir / f"out{i}"}']
          for i, (flag, _) in enumerate(BAD_INPUTS)]])
    return (procs[0], out), (procs[1:], bad_dir)

  return launchers.once(tmp_path_factory, 'attribute', make)


def test_end_to_end(launched):
  proc, out = launched[0]
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Aumann-Shapley (gates)' in proc.stdout
  assert 'completeness' in proc.stdout
  assert 'curves_optimizer.png' in proc.stdout  # it printed curves_<axis>.png
  assert '<axis>' not in proc.stdout
  with open(out / 'contributions.csv') as f:
    rows = list(csv.DictReader(f))
  methods = {(r['component'], r['method']) for r in rows}
  for component in ('norm: none -> batch', 'optimizer: sgd -> momentum',
                    'init: lecun_normal -> orthogonal'):
    for method in ('shapley', 'aumann_shapley', 'difference'):
      assert (component, method) in methods
  assert all(r['seeds'] == '2' for r in rows)
  assert storage.load(str(out)).metadata['flags']['nodes'] == 2
  for png in ('contributions.png', 'interactions.png', 'curves_norm.png',
              'curves_optimizer.png', 'curves_init.png'):
    assert (out / png).stat().st_size > 1000


def test_bad_input(launched):
  """Every bad flag: one error line each, nothing written."""
  procs, bad_dir = launched[1]
  for (flag, bad), proc in zip(BAD_INPUTS, procs, strict=True):
    assert bad, flag
    launchers.assert_clean_error(proc, bad)
  assert not list(bad_dir.iterdir())


@pytest.mark.parametrize('kwargs, bad', [
    ({'gates': 'norm:none..bogus'}, 'bogus'),
    ({'gates': 'colour:red..blue'}, "'colour'; accepted: optimizer, norm"),
    ({'gates': 'optimizer:sgd..levenberg_marquardt'}, 'levenberg_marquardt'),
    ({'gates': 'norm:none..batch,norm:none..layer'}, 'listed twice'),
    ({'metric': 'test_accuracy'}, 'test_accuracy'),
    ({'nodes': 0}, 'nodes'),
    ({'nodes': True}, 'nodes must be a positive integer; got True'),
    ({'values': {'momentum': '0.5,0.9'}}, 'one value; got 0.5, 0.9'),
    ({'values': {'beta1': 0.9}}, "'beta1'"),
])
def test_bad_config(kwargs, bad):
  with pytest.raises(ValueError) as info:
    attribute.AttributeConfig(**kwargs)
  assert bad in str(info.value)


def test_parse_gates():
  assert attribute.parse_gates('norm:none..batch, init:a..b') == (
      ('norm', 'none', 'batch'), ('init', 'a', 'b'))
  for bad in ('norm=none', 'norm:none>batch'):
    with pytest.raises(ValueError, match=r'axis:off\.\.on'):
      attribute.parse_gates(bad)


def test_diverging_run_is_saved_and_named(tmp_path):
  """Every member diverges: the grid is still returned, reported and saved."""
  config = attribute.AttributeConfig(
      gates=(('norm', 'none', 'batch'),), hidden=(8,), steps=10, seeds=2,
      nodes=2, batch_size=32, values={'learning_rate': 1e8})
  out = attribute.run(config)
  assert out['seeds_used'] == [] and 'rows' not in out
  assert len(out['diverged']) == 4
  assert all(step > 0 for _, step in out['diverged'])
  text = attribute.report(config, out, str(tmp_path))
  assert text.startswith('diverged: 4 members ')
  assert '(0 of 2 seeds remain)' in text and 'nothing to attribute' in text
  storage.save(out['results'], str(tmp_path / 'saved'))
  assert len(storage.load(str(tmp_path / 'saved'))) == len(out['results'])


def _run_known(monkeypatch, credits, loss, seeds):
  """``attribute.run`` on a norm gate with its per-seed gate credits
  ``credits(seed)`` and each grid member's final loss ``loss(values)``
  given (nothing trained); ``(config, out)``."""
  def aumann_shapley(f, knobs, data, components, nodes):
    del f, data, nodes
    seed = jax.random.key_data(knobs['seed'])[-1].astype(jnp.float32)
    return credits(seed) * jnp.ones(len(components))

  def trained(config, grid, data, metadata):  # the grid's run, known
    del config, data
    return results_lib.from_outputs(grid, {
        'step': np.full((len(grid), 1), 10, np.int32),
        'test_loss': np.asarray([[loss(m.values)] for m in grid.members]),
        'diverged_step': np.full(len(grid), -1, np.int32)}, metadata)

  monkeypatch.setattr(attribute.attribution, 'aumann_shapley', aumann_shapley)
  monkeypatch.setattr(attribute.engine, 'run', trained)
  config = attribute.AttributeConfig(
      gates=(('norm', 'none', 'batch'),), hidden=(8,), steps=10, seeds=seeds,
      nodes=2, batch_size=32)
  return config, attribute.run(config)


def test_a_diverged_gate_path_leaves_its_seed_out_of_every_column(
    monkeypatch):
  """A seed whose gate credits are non-finite is dropped from the Shapley,
  Aumann-Shapley, difference and ANOVA columns alike, and named."""
  config, out = _run_known(
      monkeypatch, lambda seed: jnp.where(seed == 1, jnp.nan, 1.0),
      lambda v: 1.0 - 0.1 * (v['norm'] == 'batch') + 0.01 * v['seed'], 3)
  assert out['diverged'] == [] and out['gate_diverged'] == [1]
  assert out['seeds_used'] == [0, 2]
  (row,) = out['rows']
  for ci in (*(row[k] for k in ('shapley', 'aumann_shapley', 'difference')),
             *out['anova'].values()):
    assert ci.n == 2
  chex.assert_trees_all_close(
      (row['shapley'].mean, row['aumann_shapley'].mean,
       row['difference'].mean), (-0.1, 1.0, 1.1), rtol=1e-12)
  text = attribute.report(config, out)
  assert ('gate path diverged (a non-finite credit) for seed 1; left out of '
          'every column (2 of 3 seeds remain)') in text, text
  assert 'sum of gate credits +1.0000' in text, text
  # Credits of +1 for a difference of -0.1: a rough path, said so (the gap
  # was blamed on quadrature alone, at any size); two seeds: Student-t.
  assert 'a gap of 1100% of the difference' in text, text
  assert 'the Aumann-Shapley column is unreliable' in text, text
  assert 'over 2 seeds [95% interval over seeds (t, extended' in text, text
  close = attribute.report(config, {**out, 'gate_total': out['total'] * 1.05})
  assert 'a gap of 5% of the difference' in close, close
  assert 'unreliable' not in close, close


def test_completeness_is_judged_per_seed():
  """Gaps of opposite sign in two seeds cancel in the seed means; each
  seed's credits still miss its own difference by 40%."""
  config = attribute.AttributeConfig(gates=(('norm', 'none', 'batch'),),
                                     seeds=2, nodes=2)
  ci = lambda mean: attribute.stats.Interval(mean, mean - 0.1, mean + 0.1, 2)
  out = {'seeds_used': [0, 1], 'diverged': [], 'names': ['norm'],
         'rows': [{'component': 'norm: none -> batch', 'shapley': ci(-1.0),
                   'aumann_shapley': ci(-1.0), 'difference': ci(0.0)}],
         'anova': {'norm': ci(-1.0)}, 'total': np.array([-1.0, -1.0]),
         'gate_total': np.array([-0.6, -1.4])}
  text = attribute.report(config, out)
  assert ("a gap of 0% of the difference; the worst seed's 40% of the seeds' "
          'mean |difference|') in text, text
  assert 'the Aumann-Shapley column is unreliable' in text, text
  # A seed whose components cancel (difference 0.001) and whose credits miss
  # it by 0.002: 200% of its own difference, 0.4% of the typical one (0.5);
  # the worst gap is seed 0's 0.01, 2%.
  out |= {'total': np.array([-1.0, 0.001]),
          'gate_total': np.array([-1.01, 0.003])}
  text = attribute.report(config, out)
  assert "the worst seed's 2% of the seeds' mean |difference|" in text, text
  assert 'unreliable' not in text, text


def test_the_difference_column_pairs_each_seed_with_itself(monkeypatch):
  """Seed-dependent credits and effects: the gate row of seed s is paired
  with the grid row of seed s (a pairing off by a seed changes the interval,
  not the mean), and the seed named diverged is the one that did."""
  _, out = _run_known(
      monkeypatch, lambda seed: jnp.where(seed == 0, jnp.nan, seed**2),
      lambda v: 1.0 - 0.1 * (v['seed'] + 1) * (v['norm'] == 'batch'), 4)
  assert out['gate_diverged'] == [0] and out['seeds_used'] == [1, 2, 3]
  seeds = np.asarray([1.0, 2.0, 3.0])
  want = attribute.stats.mean_ci(seeds**2 + 0.1 * (seeds + 1))
  (row,) = out['rows']
  chex.assert_trees_all_close(tuple(row['difference']), tuple(want),
                              rtol=1e-6)
