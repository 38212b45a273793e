"""Runs the ablation launcher as a user would: ``python -m experiments.ablate``."""

import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import chex
import matplotlib.image
import numpy as np
import pytest

import launchers

from rahimi_jax import engine
from rahimi_jax import storage
from rahimi_jax import tuning
from rahimi_jax.studies import ablation

ROOT = pathlib.Path(__file__).parents[1]
TINY = ['--steps=20', '--log_every=10', '--seeds=2', '--hidden=8',
        '--optimizers=sgd,adam', '--norms=none,batch', '--inits=lecun_normal']
METRICS = ('train_loss', 'test_loss', 'test_accuracy')


def _launch_many(*flag_lists, timeout=300):
  return launchers.launch_many('experiments.ablate', flag_lists, timeout)


# (flags, the bad value the error line must name). One per kind of flag the
# launcher reads; every config check is tested in-process (test_ablation.py,
# test_cli.py: one error line, nothing written).
BAD_INPUTS = {
    'unknown_optimizer': (['--optimizers=sgd,sgdd'], "'sgdd'"),
    'negative_momentum': (['--momentum=0.9,-1'], "momentum: '-1'"),
    'non_integer_hidden': (['--hidden=8,x'], 'hidden'),
    'partition_not_a_choice': (['--partition=seed'], "partition: 'seed'"),
    'negative_noise_variance': (['--norms=none,noisy_batch',
                                 '--noise_shift_var=-1'], "noise_shift_var: '-1'"),
    'zero_memory_budget': (['--memory_budget_mb=0'],
                           'memory_budget_mb must be finite and > 0; got 0.0'),
    'switch_not_a_choice': (['--switch=seed'], "switch: 'seed' is not a "
                            'switchable choice axis'),
}


def _assert_clean_error(proc, bad_value):
  launchers.assert_clean_error(proc, bad_value)
  # Failed during validation: the member count is printed only after it.
  assert 'members:' not in proc.stdout, proc.stdout
  assert 'compile' not in proc.stdout, proc.stdout


@pytest.fixture(scope='module')
def launched(tmp_path_factory):
  """The shrunk run and every bad input (each fails in validation), at once."""
  def make(tmp):
    out = tmp / 'ablate' / 'out'
    dirs = {name: tmp / name for name in BAD_INPUTS}
    for d in [out.parent, *dirs.values()]:
      d.mkdir()
    tiny, *bad = _launch_many(
        [*TINY, f'--out={out}'],
        *[[*TINY, *flags, f'--out={dirs[name] / "out"}']
          for name, (flags, _) in BAD_INPUTS.items()])
    return (tiny, out), {name: (proc, dirs[name])
                         for name, proc in zip(BAD_INPUTS, bad)}

  return launchers.once(tmp_path_factory, 'ablate', make)


@pytest.fixture(scope='module')
def bad_runs(launched):
  return launched[1]


@pytest.mark.parametrize('name', BAD_INPUTS)
def test_bad_input_fails_early_and_writes_nothing(bad_runs, name):
  proc, directory = bad_runs[name]
  _assert_clean_error(proc, BAD_INPUTS[name][1])
  assert not (directory / 'out').exists()
  assert os.listdir(directory) == []


def test_hidden_none_is_a_linear_model(tmp_path):
  """--hidden=none, as its help says (no hidden layer), not a bad width."""
  proc = launchers.launch('experiments.ablate', '--hidden=none', '--seeds=1',
                          '--optimizers=sgd', '--norms=none',
                          '--inits=lecun_normal', '--dry_run',
                          f'--out={tmp_path / "out"}')
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.splitlines()[0] == ('1 members: 1 optimizer x 1 norm x '
                                         '1 init x 1 learning_rate x 1 seed')


@pytest.fixture(scope='module')
def tiny_run(launched):
  return launched[0]


def test_shrunk_end_to_end_run(tiny_run):
  proc, out = tiny_run
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  stdout = proc.stdout
  assert ('8 members: 2 optimizer x 2 norm x 1 init x 1 learning_rate x 2 seed'
          in stdout), stdout[-3000:]
  assert ("final test_accuracy: mean over seeds of each seed's mean over its "
          'members that finished, 95% interval over seeds') in stdout
  # The default, --partition=auto, keeps sgd and adam in one program (their
  # steps do the same matmuls) and says so.
  assert ('partition: auto -> none (one relaxed program); relaxed step FLOPs '
          "over the members' own, per axis: optimizer 1.00x") in stdout
  # On a CPU, --switch=auto runs a group per option of each axis whose
  # options cost enough (here ~1.12x each), and says why.
  line, = [l for l in stdout.splitlines() if l.startswith('switched: ')]
  head, ratios = line.split('; ')
  found = re.fullmatch(
      r"elementwise work of the relaxed step over the members' own, per axis: "
      r'optimizer (\d\.\d\d)x, norm (\d\.\d\d)x \(switched at >= 1\.1x\)',
      ratios)
  assert found, line
  chosen = {a for a, r in zip(('optimizer', 'norm'), found.groups())
            if float(r) >= 1.1}
  if not chosen:
    assert head == ('switched: none (relaxed: every member computes every '
                    'option)'), line
  else:
    axes, groups = re.fullmatch(r'switched: (\S+) \((\d+) groups of members, '
                                r'each computing only its own options\)',
                                head).groups()
    assert set(axes.split(',')) == chosen, line
    assert int(groups) == 2 ** len(chosen), line
  rows = [l.split() for l in stdout.splitlines()]
  for option in ('sgd', 'adam'):
    assert any(r[:2] == ['optimizer', option] for r in rows), option
  for option in ('none', 'batch'):
    assert any(r[:2] == ['norm', option] for r in rows), option
  # Plots of the varied axes (not init, learning_rate: one value each).
  pngs = ['curves_optimizer.png', 'curves_norm.png', 'effects.png']
  lines = stdout.splitlines()
  if re.match(r'\d+ programs? loaded from the compilation cache', lines[-1]):
    # A small program (a seed's key) that took >= 0.1 s to compile under load
    # is cached, and the same program on the other device loads it.
    lines.pop()
  assert lines[-1] == (
      f'wrote {out}/: results.csv, metadata.json, {", ".join(pngs)}'), (
          stdout[-3000:])
  assert sorted(os.listdir(out)) == sorted(['metadata.json', 'results.csv',
                                            *pngs])
  for png in pngs:
    assert (out / png).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n', png
    image = matplotlib.image.imread(out / png)
    assert image.ndim == 3 and min(image.shape[:2]) > 100, (png, image.shape)


def test_shrunk_run_results_load_back(tiny_run):
  proc, out = tiny_run
  assert proc.returncode == 0, proc.stderr[-3000:]
  res = storage.load(str(out))
  members, log_steps = 2 * 2 * 1 * 1 * 2, (0, 10, 20)
  assert len(res) == members * len(log_steps)
  for name in ('member', 'optimizer', 'norm', 'init', 'learning_rate', 'seed',
               'step', *METRICS, 'diverged_step'):
    assert name in res.columns, name
  chex.assert_trees_all_equal(res.columns['step'],
                              np.tile(np.asarray(log_steps), members))
  assert len(set(res.columns['member'])) == members
  chex.assert_trees_all_equal(res.columns['diverged_step'],
                              np.full(len(res), -1))
  for metric in METRICS:
    assert np.all(np.isfinite(res.columns[metric])), metric
  acc = res.columns['test_accuracy']
  assert np.all((acc >= 0) & (acc <= 1))
  meta = res.metadata
  for key in ('versions', 'git_commit', 'engine', 'config', 'flags', 'axes'):
    assert key in meta, key
  assert meta['versions']['jax']
  assert meta['engine']['members'] == members
  assert 'programs' not in meta['engine']  # one relaxed program
  # Launchers make one XLA CPU device per core; the 8 members run in 4
  # switched groups of 2, a chunk each (its size does not depend on the
  # device count), side by side on the devices.
  assert len(meta['devices']) == tuning.usable_cores()
  assert (meta['engine']['groups'], meta['engine']['chunks']) == (4, 4)
  assert meta['engine']['num_devices'] == min(4, tuning.usable_cores())
  assert meta['engine']['compile_s'] >= 0
  assert meta['axes'] == {'optimizer': ['sgd', 'adam'],
                          'norm': ['none', 'batch'],
                          'init': ['lecun_normal'],
                          'learning_rate': [0.01], 'seed': [0, 1]}
  assert meta['flags']['steps'] == 20
  assert meta['config']['steps'] == 20


def test_grid_member_equals_config_run_alone(tiny_digits):
  """The issue's acceptance check, shrunk: adam in a grid == adam alone."""
  def run(optimizers):
    config = ablation.AblationConfig(
        options={'optimizer': optimizers, 'norm': ('none',),
                 'init': ('lecun_normal',)},
        seeds=1, steps=40, log_every=20, hidden=(8,))
    return engine.run(config.train_config(), config.grid(), tiny_digits)

  grid_res, alone_res = run(('sgd', 'adam')), run(('adam',))
  assert len(grid_res) == 2 * 3 and len(alone_res) == 3
  in_grid = grid_res.where(optimizer='adam')
  assert list(alone_res.columns['optimizer']) == ['adam'] * 3
  chex.assert_trees_all_equal(in_grid.columns['step'],
                              alone_res.columns['step'])
  chex.assert_trees_all_close(
      {m: in_grid.columns[m] for m in METRICS},
      {m: alone_res.columns[m] for m in METRICS}, atol=1e-6, rtol=0)
  # Not vacuous: the other member of the grid trained differently.
  sgd = grid_res.where(optimizer='sgd')
  assert np.abs(sgd.columns['train_loss'][-1]
                - in_grid.columns['train_loss'][-1]) > 1e-3


def test_ctrl_c_saves_finished_members_and_exits_cleanly(tmp_path):
  """Ctrl-C after the first member-batch: one line, exit 130, batch saved."""
  out = tmp_path / 'out'
  # A suite started in the background (`cmd &` in a script) ignores SIGINT,
  # and Python then installs no KeyboardInterrupt handler: the launcher is
  # given the handler a terminal's Ctrl-C would find.
  start = ('import runpy, signal; '
           'signal.signal(signal.SIGINT, signal.default_int_handler); '
           "runpy.run_module('experiments.ablate', run_name='__main__', "
           'alter_sys=True)')
  proc = subprocess.Popen(
      [sys.executable, '-c', start, *TINY, '--steps=4000',
       '--memory_budget_mb=0.001', '--verbosity=0', f'--out={out}'],
      cwd=ROOT, env=launchers.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)
  try:
    for line in proc.stderr:  # the engine logs each batch at --verbosity=0
      if 'member-batch 1/' in line:
        proc.send_signal(signal.SIGINT)
        break
    _, stderr = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 130, stderr
  assert 'Traceback' not in stderr, stderr
  interrupted = [l for l in stderr.splitlines() if l.startswith('interrupted:')]
  assert len(interrupted) == 1 and 'of 8 members' in interrupted[0], stderr
  res = storage.load(str(out))
  finished = res.metadata['interrupted']['finished']
  assert res.metadata['interrupted']['members'] == 8
  assert 2 <= finished < 8
  assert len(set(res.columns['member'])) == finished
  # Its flags, as a finished run's: --config=DIR re-runs it (it was refused).
  assert res.metadata['flags']['steps'] == 4000


def _passes_checkpointed(out) -> int:
  """The newest checkpoint step of the first chunk (passes done)."""
  try:
    names = os.listdir(out / storage.CHECKPOINT / 'run0' / 'chunk0')
  except FileNotFoundError:
    return 0
  return max([int(n) for n in names if n.isdigit()], default=0)


# 20 members in 2 switched groups (one per norm), each 2 chunks of 5 on 2
# devices, one after the other through one program; 5 passes, each saved
# (several processes: at the end of each round).
DURABLE = [*TINY, '--seeds=5', '--steps=20', '--log_every=5',
           '--logs_per_call=1', '--checkpoint_every_s=0', '--chunk_size=5',
           '--switch=norm']


@pytest.fixture(scope='module')
def durable_reference(tmp_path_factory):
  """``DURABLE`` run uninterrupted on 2 devices (started in the background)."""
  out = tmp_path_factory.mktemp('reference') / 'out'
  proc = subprocess.Popen(
      [sys.executable, '-m', 'experiments.ablate', *DURABLE, f'--out={out}'],
      cwd=ROOT, env=launchers.env(), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)

  def load():
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    res = storage.load(str(out))
    assert res.metadata['engine']['num_devices'] == 2
    return res

  return load


def _assert_same_bits(res, want):
  chex.assert_trees_all_equal({m: res.columns[m] for m in METRICS},
                              {m: want.columns[m] for m in METRICS})


def _start(out, processes: int, devices: int):
  """``DURABLE`` launched as ``processes`` processes (jax.distributed over
  gloo on localhost) of ``devices`` CPU devices each."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  procs = []
  for index in range(processes):
    env = dict(launchers.env())
    env['XLA_FLAGS'] += f' --xla_force_host_platform_device_count={devices}'
    if processes > 1:
      env |= {'JAX_COORDINATOR_ADDRESS': f'127.0.0.1:{port}',
              'JAX_NUM_PROCESSES': str(processes),
              'JAX_PROCESS_ID': str(index)}
    procs.append(subprocess.Popen(
        [sys.executable, '-m', 'experiments.ablate', *DURABLE,
         f'--out={out}'], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True))
  return procs


def _kill_at(procs, out, passes: int) -> None:
  """``kill -9`` of every process once chunk 0 has ``passes`` checkpointed."""
  while procs[0].poll() is None and _passes_checkpointed(out) < passes:
    time.sleep(0.005)  # polls without spinning a core the launches need
  for p in procs:
    p.kill()
  for p in procs:
    _, stderr = p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL, stderr[-3000:]  # killed mid-run


def test_kill_9_resumes_bit_identical_across_processes_and_devices(
    tmp_path, durable_reference):
  """``kill -9`` twice mid-run and resumed, each time on another number of
  processes and devices: the uninterrupted 2-device run's bits.

  One process of 1 device, killed after 2 passes (a run with other flags is
  refused: tests/test_cli.py); two processes of 1 device each resume it, and
  are killed after the first group's round of chunks (which process 0
  checkpoints for both); the same two commands resume again and finish: each
  process runs its chunks, process 0 gathers and writes.
  """
  out = tmp_path / 'out'
  _kill_at(_start(out, 1, 1), out, 2)
  assert 2 <= _passes_checkpointed(out) < 5
  _kill_at(_start(out, 2, 1), out, 5)
  assert _passes_checkpointed(out) == 5  # the first group's chunk 0
  procs = _start(out, 2, 1)
  done = [p.communicate(timeout=300) for p in procs]
  for p, (stdout, stderr) in zip(procs, done):
    assert p.returncode == 0, stderr[-3000:]
    assert 'resuming' in stdout
  assert 'wrote' in done[0][0] and 'wrote' not in done[1][0]
  res = storage.load(str(out))
  assert len(res.metadata['devices']) == 2  # both processes' devices
  assert res.metadata['engine']['num_devices'] == 2
  assert max(res.metadata['engine']['resumed_passes']) == 5
  _assert_same_bits(res, durable_reference())
  assert storage.CHECKPOINT not in os.listdir(out)
