"""program.execute: one compiled program per grid, member-batches, device sharding."""

import os
import pathlib
import subprocess
import sys
import textwrap

import chex
from launchers import FAST_COMPILE
import numpy as np
import pytest

from rahimi_jax import grid as grid_lib
from rahimi_jax import program
from rahimi_jax import storage
from rahimi_jax import train as train_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = train_lib.TrainConfig(hidden=(8,), steps=20, batch_size=32,
                               log_every=10)
GRID = grid_lib.Grid(grid_lib.Choice('optimizer', ('sgd', 'momentum')),
                     grid_lib.Choice('norm', ('none', 'batch')),
                     grid_lib.Values('learning_rate', (0.05,)),
                     grid_lib.Seeds(2))
METRICS = ('train_loss', 'test_loss', 'test_accuracy', 'diverged_step')


def _metrics(results):
  return {m: results.columns[m] for m in METRICS}


def _train():
  return train_lib.make_train(CONFIG.for_grid(GRID))


def _assert_same_runs(res, reference):
  """Same members in the same order, metrics equal to float tolerance."""
  chex.assert_trees_all_equal(res.columns['member'], reference.columns['member'])
  chex.assert_trees_all_close(_metrics(res), _metrics(reference), atol=1e-6,
                              rtol=0)


def test_member_batches_reuse_one_program_and_match(tiny_digits):
  whole = program.execute(_train(), GRID, tiny_digits)
  assert whole.metadata['engine']['member_batches'] == 1
  batched = program.execute(_train(), GRID, tiny_digits, member_batch_size=3)
  info = batched.metadata['engine']
  assert (info['member_batches'], info['member_batch_size']) == (3, 3)
  _assert_same_runs(batched, whole)


def test_memory_budget_splits_the_grid(tiny_digits):
  whole = program.execute(_train(), GRID, tiny_digits)
  need = whole.metadata['engine']['program_bytes']
  assert need > 0
  small = program.execute(_train(), GRID, tiny_digits,
                          memory_budget_bytes=need // 3)
  info = small.metadata['engine']
  assert info['member_batches'] > 1
  assert info['member_batch_size'] < len(GRID)
  _assert_same_runs(small, whole)


def test_rows_are_tidy(tiny_digits):
  res = program.execute(_train(), GRID, tiny_digits)
  assert len(res) == len(GRID) * 3  # steps 0, 10, 20
  for name in ('member', 'optimizer', 'norm', 'learning_rate', 'seed', 'step',
               *METRICS):
    chex.assert_shape(res.columns[name], (len(res),))
  chex.assert_trees_all_equal(res.columns['step'][:3], np.array([0, 10, 20]))
  # Every run records the launchers' provenance, also from the Python API.
  for key in ('versions', 'devices', 'git_commit', 'git_dirty', 'engine'):
    assert key in res.metadata, key
  assert tuple(res.metadata['train_config']['hidden']) == CONFIG.hidden


_SHARDED = textwrap.dedent("""
    import sys
    import jax
    from rahimi_jax import data, program, grid as grid_lib, storage, train
    sys.path.insert(0, {tests!r})
    import test_program as t
    assert jax.local_device_count() == 8, jax.devices()
    full = data.digits()
    tiny = data.Dataset(x_train=full.x_train[:256], y_train=full.y_train[:256],
                        x_test=full.x_test[:128], y_test=full.y_test[:128],
                        task='classification', num_outputs=10)
    res = program.execute(t._train(), t.GRID, tiny, member_batch_size=3)
    chunked = program.execute(t._train(), t.GRID, tiny, chunk_size=2,
                              num_devices=2)
    assert chunked.metadata["engine"]["chunk_size"] == 2
    storage.save(chunked, {out!r} + "_chunked")
    assert res.metadata['engine']['num_devices'] == 8
    storage.save(res, {out!r})
    # Fewer members than devices: one device per member, none padded.
    few = program.execute(t._train(), t.GRID.subset([0, 5, 6]), tiny)
    info = few.metadata['engine']
    assert (info['num_devices'], info['member_batch_size']) == (3, 3), info
""")


def test_sharded_over_eight_devices_matches_one(tiny_digits, tmp_path):
  env = dict(os.environ, XLA_FLAGS=f'{FAST_COMPILE} '
             '--xla_force_host_platform_device_count=8',
             PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu')
  script = _SHARDED.format(tests=str(ROOT / 'tests'), out=str(tmp_path))
  proc = subprocess.run([sys.executable, '-c', script], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  sharded = storage.load(str(tmp_path))
  # 8 members on 8 devices: one call (batch rounded up to the device count).
  assert sharded.metadata['engine']['member_batch_size'] == 8
  single = program.execute(_train(), GRID, tiny_digits)
  _assert_same_runs(sharded, single)
  # 2 of the devices, 4 members each, in chunks of 2.
  chunked = storage.load(str(tmp_path) + '_chunked')
  _assert_same_runs(chunked, single)


def test_chunks_of_members_match_one_vmap(tiny_digits):
  whole = program.execute(_train(), GRID, tiny_digits)
  chunked = program.execute(_train(), GRID, tiny_digits, chunk_size=3)
  info = chunked.metadata['engine']
  # 8 members in chunks of 3: one call of 9 (one padded copy), 3 chunks.
  assert (info['chunk_size'], info['member_batch_size']) == (3, 9)
  _assert_same_runs(chunked, whole)
  # A chunk as large as the grid is the plain vmap; so is chunk_size=0.
  for size in (64, 0):
    res = program.execute(_train(), GRID, tiny_digits, chunk_size=size)
    assert res.metadata['engine']['chunk_size'] is None


def test_default_chunks_only_with_one_cpu_device_per_core():
  # This process has one CPU device: no chunks by default (the device spreads
  # a whole-grid vmap's matmuls over its cores).
  assert program.default_chunk_size(256, 1) == 0
  # One device per core: equal chunks of at most CPU_CHUNK members.
  assert program.CPU_CHUNK == 16
  assert program.default_chunk_size(16, 2) == 0
  assert program.default_chunk_size(54, 2) == 14  # 4 chunks of 14 (2 padded)
  assert program.default_chunk_size(128, 2) == 16
  assert program.default_chunk_size(17, 2) == 9
  with pytest.raises(ValueError, match='chunk_size'):
    program.execute(_train(), GRID, np.zeros(3), chunk_size=-1)


_HOST_CORES = textwrap.dedent("""
    import jax
    from rahimi_jax import program
    first = program.use_host_cores(3)
    again = program.use_host_cores(5)  # the first choice stands
    print(first, again, len(jax.devices('cpu')))
    jax.numpy.zeros(1).block_until_ready()
    print(program.use_host_cores(7), len(jax.devices('cpu')))
""")


def _python(code, **env):
  base = dict(os.environ, XLA_FLAGS=FAST_COMPILE)  # no device count
  return subprocess.run(
      [sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
      timeout=120, env=dict(base, PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu',
                            **env))


def test_use_host_cores_makes_cpu_devices_before_jax_starts():
  proc = _python(_HOST_CORES)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split() == ['3', '3', '3', '3', '3']
  # An explicit XLA flag wins.
  proc = _python(_HOST_CORES,
                 XLA_FLAGS=f'{FAST_COMPILE} '
                 '--xla_force_host_platform_device_count=2')
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split() == ['2', '2', '2', '2', '2']
  with pytest.raises(ValueError, match='num'):
    program.use_host_cores(0)


_IMPORT_DEFAULT = textwrap.dedent("""
    import os
    import jax
    import rahimi_jax as rj
    from rahimi_jax import data, program
    cores = len(os.sched_getaffinity(0))
    grid = rj.Grid(rj.Seeds(max(2, cores)))
    config = rj.TrainConfig(hidden=(4,), steps=2, batch_size=8)
    res = rj.run(config, grid, data.synthetic(n_train=16, n_test=8))
    print(cores, len(jax.devices()), res.metadata['engine']['num_devices'])
""")


def test_import_gives_python_users_the_launchers_devices():
  proc = _python(_IMPORT_DEFAULT)
  assert proc.returncode == 0, proc.stderr[-2000:]
  cores, devices, used = proc.stdout.split()
  assert cores == devices == used
  # An explicit choice made before the import wins over its default.
  proc = _python('import jax; jax.config.update("jax_num_cpu_devices", 1); '
                 + _IMPORT_DEFAULT.replace('import jax\n', ''))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split()[1:] == ['1', '1']
