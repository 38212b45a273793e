"""Every command the README shows still works, so the docs cannot rot.

Launcher and benchmark commands run with ``--dry_run`` (their flags are parsed
and validated, the grid is built; the shrunk end-to-end runs live in each
launcher's own test); the Python example runs for real, shrunk; the
Quickstart's test line is the one CI runs.
"""

import pathlib
import re
import shlex

import pytest

import launchers

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / 'README.md').read_text()


def _blocks(language):
  return re.findall(rf'```{language}\n(.*?)```', README, re.S)


def _commands():
  """Shell commands of the bash blocks, continuation lines joined."""
  commands = []
  for block in _blocks('bash'):
    for line in block.replace('\\\n', ' ').splitlines():
      line = line.split('#')[0].strip()
      if line:
        commands.append(line)
  return commands


def _module_commands():
  out = []
  for command in _commands():
    for part in command.split('&&'):
      words = shlex.split(part)
      if words[:2] == ['python', '-m'] and words[2] != 'pytest':
        out.append(words[2:])
  return out


def test_quickstart_is_two_lines_and_ci_runs_the_second():
  quickstart = README.split('## Quickstart', 1)[1]
  lines = _blocks('bash')[0].strip().splitlines()
  assert quickstart.lstrip().startswith('```bash')
  assert len(lines) == 2
  assert lines[0].startswith('pip install -e . && python -m experiments.')
  assert lines[1] == 'pip install -e ".[test]" && python -m pytest -q tests'
  assert lines[1] in (ROOT / '.ci' / 'run').read_text().splitlines()


def test_readme_names_no_file_outside_the_repository():
  for path in re.findall(r'`(\.\./[^`]+)`', README):
    pytest.fail(f'README points outside the repository: {path}')


def test_commands_followed_in_order_write_to_distinct_folders():
  # Finished results are never replaced without --overwrite: two commands
  # with one --out would make the second refuse to run.
  outs = []
  for words in _module_commands():
    if not words[0].startswith('experiments.'):
      continue  # a benchmark writes no results folder
    given = [w.split('=', 1)[1] for w in words if w.startswith('--out=')]
    if any(w.startswith('--config') for w in words) and not given:
      continue  # the config file names its own
    if not given:  # the launcher's default
      source = (ROOT / (words[0].replace('.', '/') + '.py')).read_text()
      given = re.findall(r"DEFINE_string\('out', '([^']+)'", source)
    outs.append(given[0])
  assert len(outs) == len(set(outs)), sorted(outs)


def test_every_launcher_command_parses(tmp_path):
  commands = _module_commands()
  modules = {c[0] for c in commands}
  assert {'experiments.ablate', 'experiments.deep_linear',
          'experiments.attribute', 'benchmarks.grid_throughput'} <= modules
  runs = []
  for i, (module, *flags) in enumerate(commands):
    flags = [f for f in flags if not f.startswith('--out=')]
    if module.startswith('experiments.'):
      flags.append(f'--out={tmp_path / str(i)}')
    runs.append((module, [*flags, '--dry_run']))
  for (module, flags), proc in zip(runs, launchers.launch_runs(runs,
                                                               timeout=240)):
    assert proc.returncode == 0, (module, flags, proc.stderr[-2000:])
    assert 'dry run: ' in proc.stdout, (module, proc.stdout)
  assert not list(tmp_path.iterdir())  # a dry run writes nothing


def test_python_examples_run_shrunk(tmp_path):
  """Both Python examples (the grid, then the flax model), in one process."""
  examples = _blocks('python')
  assert len(examples) == 2 and 'rj.save' in examples[0]
  shrunk = '\n'.join(
      example.replace('steps=500', 'steps=10')
      .replace('hidden=(64, 64)', 'hidden=(8,)')
      .replace('rj.Seeds(4)', 'rj.Seeds(2)')
      .replace("'/tmp/my_grid'", repr(str(tmp_path / 'grid')))
      for example in examples)
  assert shrunk.count('steps=10') == 2 and str(tmp_path) in shrunk
  proc, = launchers.launch_runs([('-c', [shrunk])], timeout=240)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.count('final test_accuracy') == 2
  assert (tmp_path / 'grid' / 'results.csv').exists()
