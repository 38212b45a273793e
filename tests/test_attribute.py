"""The attribution launcher, shrunk, as a user runs it."""

import csv

import pytest

import launchers

from rahimi_jax.studies import attribute

TINY = ('--hidden=8', '--steps=20', '--seeds=2', '--nodes=2', '--batch_size=32')


def _launch(*flags):
  return launchers.launch('experiments.attribute', *flags)


def test_end_to_end(tmp_path):
  proc = _launch(*TINY, f'--out={tmp_path}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Aumann-Shapley (gates)' in proc.stdout
  assert 'completeness' in proc.stdout
  with open(tmp_path / 'contributions.csv') as f:
    rows = list(csv.DictReader(f))
  methods = {(r['component'], r['method']) for r in rows}
  for component in ('norm: none -> batch', 'optimizer: sgd -> momentum',
                    'init: lecun_normal -> orthogonal'):
    for method in ('shapley', 'aumann_shapley', 'difference'):
      assert (component, method) in methods
  assert all(r['seeds'] == '2' for r in rows)
  for png in ('contributions.png', 'interactions.png', 'curves_norm.png',
              'curves_optimizer.png', 'curves_init.png'):
    assert (tmp_path / png).stat().st_size > 1000


@pytest.mark.parametrize('flag, bad', [
    ('--gates=norm:none', 'norm:none'),
    ('--gates=norm:none..bogus', 'bogus'),
    ('--gates=colour:red..blue', 'colour'),
    ('--gates=optimizer:sgd..levenberg_marquardt', 'levenberg_marquardt'),
    ('--metric=test_accuracy', 'test_accuracy'),
    ('--nodes=0', 'nodes'),
    ('--learning_rate=-1', 'learning_rate'),
])
def test_bad_input(flag, bad, tmp_path):
  proc = _launch(flag, f'--out={tmp_path / "out"}')
  launchers.assert_clean_error(proc, bad)
  assert not (tmp_path / 'out').exists()


def test_parse_gates():
  assert attribute.parse_gates('norm:none..batch, init:a..b') == (
      ('norm', 'none', 'batch'), ('init', 'a', 'b'))
  for bad in ('norm=none', 'norm:none>batch'):
    with pytest.raises(ValueError, match=r'axis:off\.\.on'):
      attribute.parse_gates(bad)
