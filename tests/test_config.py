"""``--config``: launcher flags from a config file or a results directory.

The rules (``cli``'s docstring) are checked in-process on a small launcher's
flags; the real launchers run in one subprocess that calls each launcher's
``main`` in turn (``_run_launchers``: one JAX import for all of them, every
run a dry run), and once through ``python -m`` for the exit code.
"""

import json
import pathlib
import re
import sys
import textwrap

from absl import flags
import chex
import pytest

import launchers

from rahimi_jax import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = 'experiments/configs/ablate_small.py'
LAUNCHERS = ('ablate', 'attribute', 'batchnorm', 'deep_linear',
             'linear_solver', 'random_features', 'rounding')


def _config_file(directory, **fields) -> str:
  """A config file setting ``fields``; its path."""
  body = ''.join(f'  config[{k!r}] = {v!r}\n' for k, v in fields.items())
  directory = pathlib.Path(directory)
  path = directory / f'config_{len(list(directory.glob("config_*.py")))}.py'
  path.write_text('from ml_collections import config_dict\n\n\n'
                  'def get_config():\n'
                  '  config = config_dict.ConfigDict()\n'
                  f'{body}  return config\n')
  return str(path)


def _parse(monkeypatch, *argv, precision: bool = False) -> flags.FlagValues:
  """A small launcher's flags (this module's key flags), parsed from argv;
  ``precision``: also ``--matmul_precision`` (``cli.define_precision_flag``)."""
  fv = flags.FlagValues()
  flags.DEFINE_integer('steps', 500, 'Steps.', flag_values=fv)
  flags.DEFINE_list('optimizers', ['sgd'], 'Optimizers.', flag_values=fv)
  flags.DEFINE_float('bandwidth', None, 'Bandwidth.', flag_values=fv)
  flags.DEFINE_string('out', '/tmp/unused', 'Output.', flag_values=fv)
  flags.DEFINE_bool('dry_run', False, 'Dry run.', flag_values=fv)
  flags.DEFINE_alias('n', 'steps', flag_values=fv)
  if precision:
    cli.define_precision_flag(fv)
  cli.define_config_flag(fv)
  argv = ['launcher', *argv]
  monkeypatch.setattr(sys, 'argv', argv)  # ml_collections finds overrides there
  fv(argv)
  return fv


def _applied(monkeypatch, *argv, precision: bool = False) -> dict:
  fv = _parse(monkeypatch, *argv, precision=precision)
  cli.apply_config(__name__, fv)
  return cli.key_flags(__name__, fv)


def test_key_flags_leave_out_config_and_aliases(monkeypatch):
  fv = _parse(monkeypatch, '--n=3')
  chex.assert_trees_all_equal(cli.key_flags(__name__, fv), {
      'steps': 3, 'optimizers': ['sgd'], 'bandwidth': None,
      'out': '/tmp/unused', 'dry_run': False})


def test_config_file_sets_flags_as_the_command_line_would(monkeypatch,
                                                           tmp_path):
  path = _config_file(tmp_path, steps=20, optimizers=['sgd', 'adam'],
                      bandwidth=0.5, dry_run=True)
  got = _applied(monkeypatch, f'--config={path}')
  chex.assert_trees_all_equal(got, {
      'steps': 20, 'optimizers': ['sgd', 'adam'], 'bandwidth': 0.5,
      'out': '/tmp/unused', 'dry_run': True})
  # A comma string is the same list; a number is its text.
  path = _config_file(tmp_path, optimizers='sgd,adam', steps='20')
  got = _applied(monkeypatch, f'--config={path}')
  assert got['optimizers'] == ['sgd', 'adam'] and got['steps'] == 20


def test_field_override_and_command_line_wins(monkeypatch, tmp_path):
  path = _config_file(tmp_path, steps=20, optimizers=['sgd', 'adam'],
                      out='/tmp/from_config')
  got = _applied(monkeypatch, f'--config={path}', '--config.steps=7',
                 '--config.optimizers=adam,sgd', '--out=/tmp/from_flag')
  assert got['steps'] == 7
  assert got['optimizers'] == ['adam', 'sgd']
  assert got['out'] == '/tmp/from_flag'
  got = _applied(monkeypatch, f'--config={path}', '--n=9')  # an alias too
  assert got['steps'] == 9


def test_a_flag_and_its_alias_together_are_an_error(monkeypatch):
  # --steps=3 --n=9 ran 9 steps, silently (absl keeps the last).
  for argv in (('--steps=3', '--n=9'), ('--n=9', '--steps=3')):
    with pytest.raises(ValueError, match=r'^steps: given twice on the command '
                       r'line, as --steps and --n; give one\.$'):
      cli.check_aliases(_parse(monkeypatch, *argv))
  for argv in (('--n=9',), ('--steps=3',), ('--steps=3', '--steps=4')):
    cli.check_aliases(_parse(monkeypatch, *argv))  # the last one kept


@pytest.mark.parametrize('argv, fields, match', [
    (['--config.stepz=3'], {'steps': 1},
     r"^config: unknown field 'stepz' in .*config_0\.py; accepted: "
     r'bandwidth, dry_run, optimizers, out, steps\.$'),
    ([], {'stepz': 1, 'lr': 2}, r"unknown fields 'lr', 'stepz' in "),
    ([], {'n': 1}, r"unknown field 'n'"),  # an alias: the flag's own name
    (['--steps=3', '--config.steps=7'], {'steps': 1},
     r'^steps: given twice on the command line, as --steps and '
     r'--config\.steps; give one\.$'),
    ([], {'steps': 'abc'}, r"^config\.steps: 'abc': .*int"),
    ([], {'steps': None}, r'^config\.steps: None, but --steps takes a value'),
    ([], {'optimizers': [['sgd']]}, r'^config\.optimizers: .* not a flag '
     r'value'),
])
def test_bad_config_is_one_line_naming_the_field(monkeypatch, tmp_path, argv,
                                                 fields, match):
  path = _config_file(tmp_path, **fields)
  fv = _parse(monkeypatch, f'--config={path}', *argv)
  with pytest.raises(ValueError, match=match) as e:
    cli.apply_config(__name__, fv)
  assert '\n' not in str(e.value)


def test_unreadable_config_is_one_line(monkeypatch, tmp_path):
  (tmp_path / 'broken.py').write_text('def get_config(:\n')
  (tmp_path / 'nodict.py').write_text('def get_config():\n  return 3\n')
  (tmp_path / 'old').mkdir()
  (tmp_path / 'old' / 'metadata.json').write_text('{"config": {}}')
  for arg, match in [
      ('missing.py', r"^config: no such file 'missing\.py'\.$"),
      ('results.csv', r'neither a Python config file \(\.py\) nor a results'),
      (str(tmp_path / 'broken.py'), r'broken\.py: SyntaxError'),
      (str(tmp_path / 'nodict.py'), r'must return an ml_collections\.'
       r'ConfigDict; got int\.$'),
      (str(tmp_path / 'old'), r'old/metadata\.json records no flags'),
      (str(tmp_path / 'gone' / 'metadata.json'),
       r'^config: cannot read .*gone/metadata\.json: .*No such file'),
  ]:
    fv = _parse(monkeypatch, f'--config={arg}')
    with pytest.raises(ValueError, match=match) as e:
      cli.apply_config(__name__, fv)
    assert '\n' not in str(e.value), arg


def test_results_directory_round_trips(monkeypatch, tmp_path):
  """metadata['flags'] -> --config=DIR gives the same flags; a field recorded
  as None can still be overridden."""
  path = _config_file(tmp_path, steps=20, optimizers=['sgd', 'adam'])
  recorded = _applied(monkeypatch, f'--config={path}', '--out=/tmp/first')
  run = tmp_path / 'run'
  run.mkdir()
  # An alias recorded by an earlier version (ablate's lrs) is left out; so
  # is how that run was launched (a recorded --dry_run, or --overwrite,
  # which would replace another run's results at the new --out).
  (run / 'metadata.json').write_text(json.dumps({'flags': recorded | {
      'n': recorded['steps'], 'dry_run': True}}))
  for arg in (run, run / 'metadata.json'):
    chex.assert_trees_all_equal(
        _applied(monkeypatch, f'--config={arg}'), recorded)
  got = _applied(monkeypatch, f'--config={run}', '--config.bandwidth=0.25',
                 '--config.optimizers=adam', '--out=/tmp/second')
  chex.assert_trees_all_equal(got, recorded | {
      'bandwidth': 0.25, 'optimizers': ['adam'], 'out': '/tmp/second'})


def test_a_rerun_does_not_overwrite_because_the_run_did(monkeypatch, tmp_path):
  """A run given --overwrite records it (a launcher's key flag, like every
  run flag); a re-run from its results must not replace what its --out
  holds without being told (nor dry-run because the run was a dry run)."""
  fv = flags.FlagValues()
  flags.DEFINE_integer('steps', 500, 'Steps.', flag_values=fv)
  flags.DEFINE_bool('overwrite', False, 'Replace.', flag_values=fv)
  flags.DEFINE_bool('dry_run', False, 'Dry run.', flag_values=fv)
  cli.define_config_flag(fv)
  run = tmp_path / 'run'
  run.mkdir()
  (run / 'metadata.json').write_text(json.dumps({'flags': {
      'steps': 3, 'overwrite': True, 'dry_run': True}}))
  argv = ['launcher', f'--config={run}']
  monkeypatch.setattr(sys, 'argv', argv)
  fv(argv)
  assert cli.apply_config(__name__, fv) == {'steps': 3}
  assert (fv.steps, fv.overwrite, fv.dry_run) == (3, False, False)


def test_a_config_value_a_flag_validator_refuses_is_one_line(monkeypatch,
                                                             tmp_path):
  # As --chunk_size=0 from a config: absl's validator raised through start
  # (a traceback, not one error line).
  path = _config_file(tmp_path, steps=0)
  fv = _parse(monkeypatch, f'--config={path}')
  flags.register_validator('steps', lambda v: v >= 1, message='steps >= 1',
                           flag_values=fv)
  with pytest.raises(ValueError, match=r'^config\.steps: flag --steps=0: '
                     r'steps >= 1$'):
    cli.apply_config(__name__, fv)


def test_a_relative_config_file_is_recorded_by_its_absolute_path(
    monkeypatch, tmp_path):
  # The re-run from the results runs it again, from any directory.
  monkeypatch.chdir(tmp_path)
  name = pathlib.Path(_config_file(tmp_path, steps=3)).name
  for arg, want in ((name, tmp_path / name),
                    (f'./{name}', tmp_path / name)):
    fv = _parse(monkeypatch, f'--config={arg}')
    assert cli.config_file(fv) == str(want)


def test_a_rerun_says_its_config_file_changed_only_when_it_did(
    monkeypatch, tmp_path, capsys):
  path = pathlib.Path(_config_file(tmp_path, steps=3))
  run = tmp_path / 'run'
  run.mkdir()
  for recorded, changed in (
      ({}, False),  # no sha256 recorded (a re-run of a re-run without it)
      ({'config_file_sha256': cli._sha256(str(path))}, False),  # pylint: disable=protected-access
      ({'config_file_sha256': '0' * 64}, True)):
    (run / 'metadata.json').write_text(json.dumps({
        'flags': {'steps': 3}, 'config_file': str(path), **recorded}))
    _parse(monkeypatch, f'--config={run}')
    said = capsys.readouterr().err
    assert f'config: running {path}' in said, said
    assert ('it changed since that run' in said) == changed, (recorded, said)


def test_matmul_precision_round_trips_like_the_other_flags(monkeypatch,
                                                          tmp_path):
  """--matmul_precision: a config field, recorded and re-run from a results
  directory, a bad value one line naming it."""
  path = _config_file(tmp_path, steps=20, matmul_precision='bfloat16')
  recorded = _applied(monkeypatch, f'--config={path}', precision=True)
  assert recorded['matmul_precision'] == 'bfloat16'
  run = tmp_path / 'run'
  run.mkdir()
  (run / 'metadata.json').write_text(json.dumps({'flags': recorded}))
  chex.assert_trees_all_equal(
      _applied(monkeypatch, f'--config={run}', precision=True), recorded)
  got = _applied(monkeypatch, f'--config={run}', '--matmul_precision=float32',
                 precision=True)
  assert got == recorded | {'matmul_precision': 'float32'}
  fv = _parse(monkeypatch, f'--config={run}', '--config.matmul_precision=bogus',
              precision=True)
  with pytest.raises(ValueError, match=r"^config\.matmul_precision: 'bogus': "
                     r'.*float32'):
    cli.apply_config(__name__, fv)


def test_no_config_changes_nothing(monkeypatch):
  fv = _parse(monkeypatch, '--steps=4')
  assert cli.apply_config(__name__, fv) == {}
  assert fv.steps == 4


# Each launcher's main, in turn, in one process: its flags are removed after
# its run so that the next can define its own (the names overlap).
_RUNNER = textwrap.dedent('''
    import contextlib, importlib, io, json, sys
    from absl import flags
    from rahimi_jax import cli
    report = []
    for run in json.loads(sys.argv[1]):
      before = set(flags.FLAGS)
      name = f'experiments.{run["launcher"]}'
      sys.modules.pop(name, None)
      module = importlib.import_module(name)
      sys.argv = argv = [name, *run['argv']]
      flags.FLAGS(argv)
      out, err = io.StringIO(), io.StringIO()
      with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
          code = module.main(argv[:1])
        except SystemExit as e:
          code = e.code
      used = cli.key_flags(name)
      if run.get('record'):  # as a run records them (not a dry run)
        with open(run['record'], 'w') as f:
          json.dump({'flags': used | {'dry_run': False}}, f)
      report.append({'code': code, 'stdout': out.getvalue(),
                     'stderr': err.getvalue(), 'flags': used})
      flags.FLAGS.unparse_flags()
      for flag in set(flags.FLAGS) - before:
        delattr(flags.FLAGS, flag)
    print(json.dumps(report))
''')


def _run_launchers(runs):
  proc, = launchers.launch_runs([('-c', [_RUNNER, json.dumps(runs)])],
                                timeout=240)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.splitlines()[-1])


def test_rerun_from_saved_metadata_gives_the_same_key_flags(tmp_path):
  """A dry run from the example config, then one from the metadata.json it
  would have saved: the same flags, the same grid."""
  metadata = tmp_path / 'metadata.json'
  first, again = _run_launchers([
      {'launcher': 'ablate', 'record': str(metadata),
       'argv': [f'--config={EXAMPLE}', '--config.seeds=2',
                '--matmul_precision=default', '--dry_run']},
      {'launcher': 'ablate', 'argv': [f'--config={tmp_path}', '--dry_run']},
  ])
  for run in (first, again):
    assert run['code'] == 0, run['stderr']
    assert run['stdout'].startswith('16 members: 2 optimizer x 2 norm x 1 '
                                    'init x 2 learning_rate x 2 seed\n')
  assert first['flags']['steps'] == 200 and first['flags']['seeds'] == 2
  assert first['flags']['learning_rate'] == ['0.1', '0.01']
  assert first['flags']['matmul_precision'] == 'default'
  chex.assert_trees_all_equal(again['flags'], first['flags'])
  assert 'lrs' not in first['flags'] and 'config' not in first['flags']


def test_every_launcher_takes_a_config(tmp_path):
  """Each launcher: a config's fields set its flags (a dry run); a field it
  lacks is one error line naming it and the accepted ones."""
  runs = []
  for name in LAUNCHERS:
    good = _config_file(tmp_path, out=str(tmp_path / name), dry_run=True)
    bad = _config_file(tmp_path, stepz=3)
    runs += [{'launcher': name, 'argv': [f'--config={good}']},
             {'launcher': name, 'argv': [f'--config={bad}', '--dry_run']}]
  report = _run_launchers(runs)
  for name, good, bad in zip(LAUNCHERS, report[::2], report[1::2]):
    assert good['code'] == 0, (name, good['stderr'])
    assert 'dry run: ' in good['stdout'], name
    assert good['flags']['out'] == str(tmp_path / name), name
    assert good['flags']['matmul_precision'] == 'float32', name  # recorded
    # And the run flags (--chunk_size, --progress, ...): config fields too.
    assert set(cli.RUN_FLAGS) <= set(good['flags']), name
    assert bad['code'] == 1 and bad['stdout'] == '', name
    errors = bad['stderr'].splitlines()
    assert len(errors) == 1 and errors[0].startswith(
        "error: config: unknown field 'stepz'"), (name, bad['stderr'])
    assert 'accepted: ' in errors[0] and 'out' in errors[0], name
  assert not [p for p in tmp_path.iterdir() if p.is_dir()]


def test_launcher_bad_config_exits_with_one_error_line():
  """Through ``python -m``: exit code 1, no traceback, before any run."""
  proc = launchers.launch('experiments.ablate', f'--config={EXAMPLE}',
                          '--config.stepz=3', '--dry_run')
  launchers.assert_clean_error(proc, "unknown field 'stepz'")
  assert proc.returncode == 1 and proc.stdout == ''


def test_a_rerun_loads_the_config_file_that_registered_its_options(
    monkeypatch, tmp_path, capsys):
  # A run whose config file registered an optimizer could not be re-run
  # from its results ("Unknown optimizers 'user_from_config'"): a fresh
  # process had not run the file.
  from rahimi_jax import components  # pylint: disable=g-import-not-at-top
  config = tmp_path / 'register.py'
  config.write_text(textwrap.dedent('''
      import optax
      from ml_collections import config_dict
      from rahimi_jax import components
      components.OPTIMIZERS['user_from_config'] = lambda hp: optax.sgd(
          hp['learning_rate'])

      def get_config():
        config = config_dict.ConfigDict()
        config.optimizers = 'sgd,user_from_config'
        return config
  '''))
  run = tmp_path / 'run'
  run.mkdir()

  def recorded(**metadata):
    (run / 'metadata.json').write_text(json.dumps({
        'flags': {'optimizers': ['sgd', 'user_from_config'], 'steps': 7},
        **metadata}))

  try:
    fv = _parse(monkeypatch, f'--config={config}')
    assert cli.config_file(fv) == str(config)
    assert 'user_from_config' in components.OPTIMIZERS
    # The hash recorded is the file's as it was run (not after an edit).
    loaded = cli._sha256(str(config))  # pylint: disable=protected-access
    config.write_text(config.read_text() + '\n# edited during the run\n')
    assert fv['config'].parser.file_sha256 == loaded
    assert cli._sha256(str(config)) != loaded  # pylint: disable=protected-access
    del components.OPTIMIZERS['user_from_config']  # as in a fresh process
    recorded(config_file=str(config),
             config_file_sha256=cli._sha256(str(config)))  # pylint: disable=protected-access
    fv = _parse(monkeypatch, f'--config={run}')
    assert 'user_from_config' in components.OPTIMIZERS
    assert cli.config_file(fv) == str(config)  # recorded again by the re-run
    said = capsys.readouterr().err
    assert f'config: running {config}, the config file of the run' in said
    assert 'changed since' not in said
    cli.apply_config(__name__, fv)
    assert (fv.steps, fv.optimizers) == (7, ['sgd', 'user_from_config'])
    # Edited since: it runs, and says so.
    config.write_text(config.read_text() + '\n# edited\n')
    _parse(monkeypatch, f'--config={run}')
    assert 'it changed since that run' in capsys.readouterr().err
    # A file that fails is named (not the results directory alone).
    config.write_text('raise RuntimeError("broken")\n')
    with pytest.raises(ValueError, match=re.escape(
        f'config: {config}, which {run}/metadata.json records: RuntimeError: '
        'broken')):
      cli.apply_config(__name__, _parse(monkeypatch, f'--config={run}'))
    capsys.readouterr()
    # Gone, or no Python file: the re-run goes on (an option it named is
    # then unknown), the record kept; nothing else is run.
    del components.OPTIMIZERS['user_from_config']
    config.unlink()
    for gone in (str(config), str(tmp_path / 'notes.txt')):
      (tmp_path / 'notes.txt').write_text('raise SystemExit(3)\n')
      recorded(config_file=gone)
      fv = _parse(monkeypatch, f'--config={run}')
      assert 'user_from_config' not in components.OPTIMIZERS
      assert cli.config_file(fv) == gone
      assert 'running' not in capsys.readouterr().err
    # A later --config without a record forgets the earlier one's.
    (run / 'metadata.json').write_text(json.dumps({'flags': {'steps': 9}}))
    assert cli.config_file(_parse(monkeypatch, f'--config={run}')) is None
  finally:
    components.OPTIMIZERS.pop('user_from_config', None)
