"""Tests of rahimi_jax.cli: list parsing, errors, Ctrl-C and staged output."""

import hashlib
import json
import os
import re
import sys
import types

from absl import flags
from absl.testing import flagsaver
import chex
import jax
import numpy as np
import pytest

from rahimi_jax import cli
from rahimi_jax import program
from rahimi_jax import grid as grid_lib
from rahimi_jax import results as results_lib
from rahimi_jax import storage


def test_parse_numbers():
  chex.assert_trees_all_equal(cli.parse_numbers('lrs', ' 0.1, 1e-3 ,'),
                              (0.1, 1e-3))
  assert cli.parse_numbers('hidden', ['8', '8'], int, distinct=False) == (8, 8)
  assert cli.parse_numbers('x', '-1,0', minimum=None) == (-1.0, 0.0)


@pytest.mark.parametrize('items, kind, match', [
    (['1..2'], float, "x: '1..2' is not a number"),
    ('0.1,abc', float, "'abc' is not a number"),
    ('', float, 'x: empty list'),
    ('0.1,0.1', float, "'0.1' is listed twice"),
    ('0', float, "'0' must be a finite number > 0"),
    ('inf', float, "'inf' must be a finite number > 0"),
    ('nan', float, "'nan' must be a finite number > 0"),
    ('0.1,abc', float, 'give comma-separated numbers, e.g. 0.1,0.01'),
    ('1.5', int, "'1.5' is not an integer; give comma-separated integers"),
    ('-3', int, "'-3' must be a finite integer > 0"),
])
def test_parse_numbers_names_the_bad_item(items, kind, match):
  with pytest.raises(ValueError, match=match):
    cli.parse_numbers('x', items, kind)


def test_define_axis_flags_for_some_knobs():
  """A study that sets the other knobs itself defines only these flags."""
  flag_values = flags.FlagValues()
  cli.define_axis_flags(flag_values, choices=False, grid=False,
                        knobs=('init_scale', 'momentum'))
  assert {'momentum', 'init_scale'} <= set(flag_values)
  assert 'learning_rate' not in flag_values and 'optimizers' not in flag_values
  assert 'One value for every member' in flag_values['momentum'].help
  flag_values(['prog', '--momentum=0.5'])
  assert cli.axis_flag_values(flag_values, choices=False,
                              knobs=('init_scale', 'momentum')) == (
                                  {}, {'momentum': ['0.5']})
  with pytest.raises(ValueError, match="Unknown value knob 'momentun'"):
    cli.define_axis_flags(flags.FlagValues(), knobs=('momentun',))


def test_parse_single_knobs():
  accepted = ('momentum', 'init_scale')
  assert cli.parse_single_knobs(
      {'init_scale': ['2'], 'momentum': 0.5}, accepted, 'one value') == (
          ('momentum', 0.5), ('init_scale', 2.0))  # registry order
  assert cli.parse_single_knobs(None, accepted, 'one value') == ()
  for values, match in [
      ({'learning_rate': 0.1}, 'learning_rate: not a value knob of this '
       'study; accepted: momentum, init_scale'),
      ({'momentum': '0.5,0.9'}, 'momentum: one value; got 0.5, 0.9'),
      ({'momentum': -1}, "momentum: '-1' must be a finite number >= 0"),
  ]:
    with pytest.raises(ValueError, match=match):
      cli.parse_single_knobs(values, accepted, 'one value')


def test_parse_knob_checks_the_knob_upper_bound():
  # The momentum knob declares maximum=1 (exclusive: 1 is no decay at all);
  # the launchers' flags must refuse what a grid built in Python refuses.
  assert cli.parse_knob('momentum', '0,0.5,0.99') == (0.0, 0.5, 0.99)
  for items, bad in (('1', '1'), ('0.5,1.5', '1.5'), ([0.9, 1.0], '1.0')):
    with pytest.raises(ValueError, match=re.escape(
        f"momentum: '{bad}' must be a finite number >= 0 and < 1.")):
      cli.parse_knob('momentum', items)


def test_set_matmul_precision_names_a_bad_value_and_the_accepted():
  with pytest.raises(ValueError, match=r"^Unknown matmul precision 'bogus'; "
                     r'accepted: float32, tensorfloat32, bfloat16, '
                     r'default\.$'):
    cli.set_matmul_precision('bogus')
  before = jax.config.jax_default_matmul_precision
  try:
    for value in ('float32', 'default'):
      cli.set_matmul_precision(value)
      assert jax.config.jax_default_matmul_precision == value
    # XLA's CPU dot computes float32 products at any setting: a reduced
    # precision there would be a false record.
    for value in ('tensorfloat32', 'bfloat16'):
      with pytest.raises(ValueError, match=(
          rf"^matmul precision '{value}' does not exist on cpu .*accepted "
          r'here: float32, default\.')):
        cli.set_matmul_precision(value)
      assert jax.config.jax_default_matmul_precision == 'default'
  finally:
    jax.config.update('jax_default_matmul_precision', before)


def test_matmul_precisions_where_each_exists():
  def device(platform, capability=None):
    d = types.SimpleNamespace(platform=platform, device_kind=platform)
    if capability is not None:
      d.compute_capability = capability
    return d

  assert cli.matmul_precisions(device('cpu')) == ('float32', 'default')
  assert cli.matmul_precisions(device('gpu', '9.0')) == (
      'float32', 'tensorfloat32', 'default')
  assert cli.matmul_precisions(device('gpu', '7.5')) == ('float32', 'default')
  # TF32 tensor cores came with Ampere, compute capability 8.0 (the A100's;
  # 8.6, 8.9: consumer Ampere, Ada): NVIDIA's CUDA C++ Programming Guide.
  for ampere_on in ('8.0', '8.6', '8.9'):
    assert cli.matmul_precisions(device('gpu', ampere_on)) == (
        'float32', 'tensorfloat32', 'default'), ampere_on
  assert cli.matmul_precisions(device('tpu')) == ('float32', 'bfloat16',
                                                  'default')
  with pytest.raises(ValueError, match=r"'bfloat16' does not exist on gpu .*"
                     r'accepted here: float32, tensorfloat32, default'):
    cli.set_matmul_precision('bfloat16', device('gpu', '9.0'))


def test_precision_flag_is_a_key_flag_of_the_launcher():
  """Defined by a cli helper, --matmul_precision is the calling module's
  (a launcher's recorded flags, config fields and resume check)."""
  flag_values = flags.FlagValues()
  cli.define_precision_flag(flag_values)
  flag_values(['prog'])
  assert cli.key_flags(__name__, flag_values) == {'matmul_precision': 'float32'}
  flag_values(['prog', '--matmul_precision=bfloat16'])
  assert flag_values.matmul_precision == 'bfloat16'
  with pytest.raises(flags.IllegalFlagValueError, match='bogus'):
    flag_values(['prog', '--matmul_precision=bogus'])


def _results(n_members=2):
  grid = grid_lib.Grid(grid_lib.Seeds(n_members))
  outputs = {'step': np.zeros((n_members, 1), np.int32),
             'train_loss': np.arange(n_members, dtype=np.float32)[:, None],
             'diverged_step': np.full(n_members, -1, np.int32)}
  return results_lib.from_outputs(grid, outputs)


def _write(config, res, directory):
  del config
  storage.write(res, directory)
  return 'report'


def test_launch_saves_and_prints(tmp_path, capsys):
  out = str(tmp_path / 'out')
  code = cli.launch(lambda: "config", str, lambda c: _results(), _write, out)
  assert code == 0
  assert capsys.readouterr().out == 'config\nreport\n'
  assert len(storage.load(out)) == 2


def test_launch_dry_run_checks_and_describes_only(tmp_path, capsys):
  def run(config):
    raise AssertionError('must not run')

  out = str(tmp_path / 'a' / 'b' / 'out')  # not even its parents created
  assert cli.launch(lambda: '8 members', str, run, _write, out,
                    dry_run=True) == 0
  printed = capsys.readouterr().out.splitlines()
  assert printed[0] == '8 members' and printed[1].startswith('dry run:')
  assert os.listdir(tmp_path) == []


def test_launch_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
  def build():
    raise ValueError("lrs: 'abc' is not a number")

  def run(config):
    raise AssertionError('must not run')

  code = cli.launch(build, str, run, _write, str(tmp_path / "out"))
  assert code == 1
  assert capsys.readouterr().err == "error: lrs: 'abc' is not a number\n"
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('given, env, bad', [
    ({'keep_checkpoints': 0}, None, 'keep (--keep_checkpoints) must be >= 1'),
    ({'logs_per_call': 0}, None, 'logs_per_call must be >= 1; got 0'),
    # NaN would silently never checkpoint.
    ({'checkpoint_every_s': float('nan')}, None, 'checkpoint_every_s'),
    ({}, 'abc', "$RAHIMI_JAX_CHUNK_SIZE: chunk size 'abc'"),
    ({}, '0', "$RAHIMI_JAX_CHUNK_SIZE: chunk size 0"),
])
def test_launch_bad_run_flags_are_one_line_before_anything(
    tmp_path, capsys, monkeypatch, given, env, bad):
  def build():
    raise AssertionError('must not build')

  if env is not None:
    monkeypatch.setenv('RAHIMI_JAX_CHUNK_SIZE', env)
  with flagsaver.flagsaver(**given):
    code = cli.launch(build, str, build, _write, str(tmp_path / 'out'))
  assert code == 1
  err = capsys.readouterr().err
  assert err.startswith('error: ') and err.count('\n') == 1, err
  assert bad in err, err
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('given', [{'checkpoint_every_s': 60.0},
                                   {'chunk_size': '8'}, {'progress': 'bar'}])
def test_a_launcher_without_a_grid_refuses_the_grid_run_flags(
    tmp_path, capsys, given):
  # random_features and linear_solver run no grid: these flags would be
  # ignored without a word. A grid launcher takes them.
  def build():
    raise AssertionError('must not build')

  with flagsaver.flagsaver(**given):
    assert cli.launch(build, str, build, _write, str(tmp_path / 'out'),
                      grid=False) == 1
    (name, value), = given.items()
    err = capsys.readouterr().err
    assert err == (f'error: --{name}={value}: this launcher trains no grid, '
                   'so nothing reads it; the grid launchers do (ablate, '
                   'attribute, batchnorm, deep_linear, rounding).\n'), err
    assert cli.launch(lambda: 'config', str, lambda c: _results(), _write,
                      str(tmp_path / 'grid')) == 0
  assert 'out' not in os.listdir(tmp_path)


def test_launch_resumes_only_under_the_checkpointed_flags(tmp_path, capsys,
                                                          monkeypatch):
  """A checkpoint of a run with other result flags is refused before
  anything runs, naming each flag's saved and given value; under the same
  flags it is resumed (tests/test_ablate.py: kill -9, bit for bit)."""
  out = tmp_path / 'out'
  (out / storage.CHECKPOINT).mkdir(parents=True)
  (out / storage.CHECKPOINT / 'flags.json').write_text(
      json.dumps({'log_every': 5, 'steps': 60, 'lr': None, 'norms': ['a']}))

  def run(config):
    raise AssertionError('must not run')

  monkeypatch.setattr(cli, 'run_flags', lambda: {
      'log_every': 10, 'steps': 60, 'lr': ['0.01'], 'norms': ['a', 'b']})
  assert cli.launch(lambda: 'config', str, run, _write, str(out)) == 1
  err = capsys.readouterr().err
  # Each value as it is typed (an unset flag: not given).
  assert err.count('\n') == 1 and ('--log_every=5, not 10, --lr=(not given), '
                                   'not 0.01, --norms=a, not a,b') in err, err
  assert '--steps' not in err and '--overwrite' in err, err
  monkeypatch.setattr(cli, 'run_flags', lambda: {
      'log_every': 5, 'steps': 60, 'lr': None, 'norms': ['a']})
  assert cli._check_resume(str(out)).startswith('resuming')  # pylint: disable=protected-access


def test_axis_lists_reject_empty_and_repeated_names():
  from rahimi_jax import engine  # pylint: disable=g-import-not-at-top
  grid = grid_lib.Grid(grid_lib.Choice('norm', ('none', 'batch')),
                       grid_lib.Choice('optimizer', ('sgd', 'adam')))
  with pytest.raises(ValueError, match='switch: norm listed twice'):
    engine.check_switch(grid, ('norm', 'optimizer', 'norm'))
  with pytest.raises(ValueError, match='partition: optimizer listed twice'):
    engine.check_partition(grid, ('optimizer', 'optimizer'))
  with pytest.raises(ValueError, match="partition: 'seed' is not a choice"):
    engine.check_partition(grid, ('seed',))
  assert engine.check_partition(grid, ['norm']) == ('norm',)
  # --switch= (an empty list) is not "none".
  with pytest.raises(ValueError, match='switch: empty; give auto, none'):
    cli._axes_flag('switch', [])
  assert cli._axes_flag('switch', ['none']) == ()
  assert cli._axes_flag('partition', ['auto']) == 'auto'


def test_launch_interrupted_saves_finished_members(tmp_path, capsys):
  out = str(tmp_path / 'out')
  partial = _results(1)

  def run(config):
    raise program.Interrupted(partial, 1, 3)

  assert cli.launch(lambda: "config", str, run, _write, out) == cli.INTERRUPTED
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 1 and err[0].startswith('interrupted: saved the 1 of 3')
  loaded = storage.load(out)
  assert len(loaded) == 1
  assert loaded.metadata['interrupted'] == {'finished': 1, 'members': 3}


def test_launch_interrupted_before_anything_keeps_previous(tmp_path, capsys):
  out = str(tmp_path / 'out')
  earlier = _results(2)
  earlier.metadata['interrupted'] = {'finished': 2, 'members': 3}
  storage.save(earlier, out)

  def run(config):
    raise KeyboardInterrupt

  assert cli.launch(lambda: "config", str, run, _write, out) == cli.INTERRUPTED
  assert 'no member had finished' in capsys.readouterr().err
  assert len(storage.load(out)) == 2


def test_launch_never_replaces_finished_results_unless_told(tmp_path, capsys):
  out = str(tmp_path / 'out')
  storage.save(_results(2), out)

  def run(config):
    return _results(1)

  assert cli.launch(lambda: 'config', str, run, _write, out) == 1
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'finished results' in err, err
  assert '--overwrite' in err
  assert len(storage.load(out)) == 2
  flag = flags.FLAGS['overwrite']
  flag.value = True
  try:
    assert cli.launch(lambda: 'config', str, run, _write, out) == 0
  finally:
    flag.value = False
  assert len(storage.load(out)) == 1
  assert storage.CHECKPOINT not in os.listdir(out)  # gone with the run


def test_overwrite_over_a_checkpoint_says_it_starts_afresh(tmp_path, capsys):
  # It discarded the checkpoint of an interrupted run without a word, and the
  # interrupted run's own hint ("the same command resumes") was wrong for a
  # command that gave --overwrite.
  out = str(tmp_path / 'out')

  def interrupted(config):
    raise KeyboardInterrupt

  flag = flags.FLAGS['overwrite']
  flag.value = True
  try:
    assert cli.launch(lambda: 'config', str, interrupted, _write,
                      out) == cli.INTERRUPTED
    first = capsys.readouterr()
    assert 'starting afresh' not in first.out  # nothing to discard yet
    assert ('(the same command without --overwrite resumes from its '
            'checkpoint in') in first.err, first.err
    assert cli.launch(lambda: 'config', str, lambda c: _results(1), _write,
                      out) == 0
  finally:
    flag.value = False
  said = capsys.readouterr().out
  assert (f'--overwrite: starting afresh; the checkpoint of an unfinished run '
          f'in {out}/{storage.CHECKPOINT} is discarded') in said, said
  assert len(storage.load(out)) == 1


def test_record_flags_reaches_every_results_of_an_outcome(monkeypatch):
  # One place records them now, for every launcher's outcome (a Results, a
  # dict of them per model, a study's dict holding one) and a partial one.
  monkeypatch.setattr(cli, 'key_flags', lambda name: {'steps': 3})
  monkeypatch.setattr(cli, 'config_file', lambda: '/configs/run.py')
  a, b = _results(1), _results(2)
  cli.record_flags({'cnn': a, 'study': {'results': b, 'rows': [1, 2]}})
  assert a.metadata['flags'] == b.metadata['flags'] == {'steps': 3}
  assert a.metadata['config_file'] == b.metadata['config_file'] == (
      '/configs/run.py')


def _launcher(monkeypatch, *argv) -> flags.FlagValues:
  """A small launcher's flags, parsed from ``argv``: this module's key
  flags, which ``run_flags`` and ``record_flags`` read as ``__main__``'s."""
  fv = flags.FlagValues()
  flags.DEFINE_integer('steps', 60, 'Steps.', flag_values=fv)
  flags.DEFINE_string('out', '/tmp/unused', 'Output.', flag_values=fv)
  flags.DEFINE_float('memory_budget_mb', None, 'Budget.', flag_values=fv)
  cli.define_precision_flag(fv)
  cli.define_config_flag(fv)
  argv = ['launcher', *argv]
  monkeypatch.setattr(sys, 'argv', argv)  # ml_collections reads overrides
  fv(argv)
  monkeypatch.setitem(sys.modules, '__main__', sys.modules[__name__])
  key_flags, config_file = cli.key_flags, cli.config_file
  monkeypatch.setattr(cli, 'key_flags',
                      lambda name, flag_values=fv: key_flags(name, flag_values))
  monkeypatch.setattr(cli, 'config_file', lambda flag_values=fv: config_file(
      flag_values))
  return fv


def test_a_checkpoint_resumes_only_under_the_flags_of_its_results(
    monkeypatch, tmp_path, capsys):
  """The flags a checkpoint is saved with (run_flags): the launcher's key
  flags but those that change how a run goes, not its results."""
  fv = _launcher(monkeypatch, '--out=/tmp/first')
  out = tmp_path / 'out'

  def interrupted(config):
    raise KeyboardInterrupt

  assert cli.launch(lambda: 'config', str, interrupted, _write,
                    str(out)) == cli.INTERRUPTED
  capsys.readouterr()
  saved = out / storage.CHECKPOINT / 'flags.json'
  assert json.loads(saved.read_text()) == {'matmul_precision': 'float32',
                                           'steps': 60}
  # Another --out or --memory_budget_mb computes the same results.
  fv.out, fv.memory_budget_mb = '/tmp/second', 1.0
  assert cli._check_resume(str(out)).startswith('resuming')  # pylint: disable=protected-access
  # Other products (TF32, bfloat16 passes) are other results.
  fv.matmul_precision = 'default'
  with pytest.raises(ValueError, match=re.escape(
      '(--matmul_precision=float32, not default)')):
    cli._check_resume(str(out))  # pylint: disable=protected-access
  fv.matmul_precision = 'float32'
  # Unreadable: not a licence to resume, nor a run whose flags were not
  # given ("re-run with those to resume": no command would).
  for text in ('{"steps": 6', '[60]'):
    saved.write_text(text)
    with pytest.raises(ValueError, match=re.escape(
        f'{out} holds the checkpoint of an unfinished run whose flags cannot '
        f'be read ({saved}: ')) as e:
      cli._check_resume(str(out))  # pylint: disable=protected-access
    assert 'not given' not in str(e.value) and '--overwrite' in str(e.value)


def test_a_refused_resume_names_every_flag_that_differs(tmp_path,
                                                        monkeypatch):
  # It named the first three only: re-run "with those", the command was
  # refused again, for a flag it had not been told of.
  out = tmp_path / 'out'
  (out / storage.CHECKPOINT).mkdir(parents=True)
  saved = {'a': 1, 'b': 1, 'c': 1, 'd': 1, 'e': 1, 'steps': 60}
  (out / storage.CHECKPOINT / 'flags.json').write_text(json.dumps(saved))
  monkeypatch.setattr(cli, 'run_flags', lambda: saved | {
      'a': 2, 'b': 2, 'c': 2, 'd': 2, 'e': 2})
  with pytest.raises(ValueError, match=re.escape(
      '(--a=1, not 2, --b=1, not 2, --c=1, not 2, --d=1, not 2, --e=1, '
      'not 2); re-run with those to resume')):
    cli._check_resume(str(out))  # pylint: disable=protected-access


def test_launch_interrupted_keeps_its_checkpoint_and_records_the_flags(
    monkeypatch, tmp_path, capsys):
  _launcher(monkeypatch, '--steps=7')
  out = tmp_path / 'out'

  def run(config):
    (out / storage.CHECKPOINT / 'run0').mkdir()  # what the grid had saved
    raise program.Interrupted(_results(1), 1, 3)

  assert cli.launch(lambda: 'config', str, run, _write,
                    str(out)) == cli.INTERRUPTED
  assert ('(the same command resumes from its checkpoint in '
          f'{out}/{storage.CHECKPOINT})') in capsys.readouterr().err
  # As that line says: the checkpoint beside the finished members.
  assert sorted(os.listdir(out / storage.CHECKPOINT)) == ['flags.json', 'run0']
  assert cli._check_resume(str(out)).startswith('resuming')  # pylint: disable=protected-access
  # --config=DIR re-runs it: its flags, as a finished run's.
  assert storage.load(str(out)).metadata['flags'] == {
      'steps': 7, 'out': '/tmp/unused', 'memory_budget_mb': None,
      'matmul_precision': 'float32'}


def test_record_flags_records_the_config_file_as_it_was_run(monkeypatch,
                                                            tmp_path):
  config = tmp_path / 'run.py'
  config.write_text('from ml_collections import config_dict\n\n\n'
                    'def get_config():\n'
                    '  return config_dict.ConfigDict({"steps": 5})\n')
  want = hashlib.sha256(config.read_bytes()).hexdigest()
  fv = _launcher(monkeypatch, f'--config={config}')
  monkeypatch.setattr(flags, 'FLAGS', fv)
  config.write_text(config.read_text() + '# edited during the run\n')
  res = _results(1)
  cli.record_flags(res)
  assert res.metadata['config_file'] == str(config)
  assert res.metadata['config_file_sha256'] == want  # not the edited file's


@pytest.mark.parametrize('progress, shown', [('bar', True), ('none', False),
                                             ('auto', None)])
def test_launch_runs_with_the_progress_flag(tmp_path, progress, shown):
  seen = []

  def run(config):
    seen.append(program.current_options().progress)
    return _results(1)

  with flagsaver.flagsaver(progress=progress):
    assert cli.launch(lambda: 'config', str, run, _write,
                      str(tmp_path / 'out')) == 0
  assert seen == [shown]


def test_launch_records_the_flags_with_the_results(monkeypatch, tmp_path):
  _launcher(monkeypatch, '--steps=7', '--matmul_precision=default')
  out = str(tmp_path / 'out')
  assert cli.launch(lambda: 'config', str, lambda c: _results(1), _write,
                    out) == 0
  assert storage.load(out).metadata['flags'] == {
      'steps': 7, 'out': '/tmp/unused', 'memory_budget_mb': None,
      'matmul_precision': 'default'}


def test_a_checkpoint_a_killed_save_left_is_checked_before_it_resumes(
    monkeypatch, tmp_path, capsys):
  # Killed between a save's two renames: --out is gone, its contents (the
  # checkpoint of a run with --steps=5) in the save's staging folder. The
  # first check saw no checkpoint; the one after recovering it must refuse.
  checkpoint = tmp_path / '.out.old-killed' / 'out' / storage.CHECKPOINT
  checkpoint.mkdir(parents=True)
  (checkpoint / 'flags.json').write_text(json.dumps(
      {'matmul_precision': 'float32', 'steps': 5}))
  _launcher(monkeypatch, '--steps=60')

  def run(config):
    raise AssertionError('must not run')

  assert cli.launch(lambda: 'config', str, run, _write,
                    str(tmp_path / 'out')) == 1
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and '(--steps=5, not 60)' in err, err
  assert json.loads((tmp_path / 'out' / storage.CHECKPOINT /
                     'flags.json').read_text())['steps'] == 5  # kept
