"""Tests of MNIST-1D in rahimi_jax.data: against the mnist1d package, cache."""

import os
import random
from unittest import mock

import chex
import numpy as np
import pytest


from rahimi_jax import data as data_lib
from rahimi_jax.studies import ablation

mnist1d_pkg = pytest.importorskip('mnist1d.data')  # the test extra has it


def _package(**overrides):
  """``mnist1d.data.make_dataset`` at the published args plus ``overrides``.

  It seeds NumPy's and Python's global random state; both are restored.
  """
  np_state, py_state = np.random.get_state(), random.getstate()
  try:
    args = mnist1d_pkg.get_dataset_args()
    args.__dict__.update(overrides)
    return mnist1d_pkg.make_dataset(args)
  finally:
    np.random.set_state(np_state)
    random.setstate(py_state)


@pytest.fixture(scope='module')
def published():
  """The package's default dataset (its network download is not used)."""
  return _package()


@pytest.fixture
def cache(tmp_path, monkeypatch):
  """An empty cache directory (``$RAHIMI_JAX_CACHE``) for one test."""
  directory = tmp_path / 'cache'
  monkeypatch.setenv('RAHIMI_JAX_CACHE', str(directory))
  return directory


def _spy():
  """``make_mnist1d`` wrapped in a mock that counts its calls."""
  return mock.patch.object(data_lib, 'make_mnist1d',
                           wraps=data_lib.make_mnist1d)


def test_generator_reproduces_the_package_exactly(published):
  mine = data_lib.make_mnist1d()
  for name in ('x', 'y', 'x_test', 'y_test'):
    chex.assert_trees_all_equal(mine[name], published[name])
  chex.assert_shape((mine['x'], mine['x_test']), ((4000, 40), (1000, 40)))


@pytest.mark.parametrize('overrides', [
    {'num_samples': 300, 'seed': 7, 'shuffle_seq': True},
    {'num_samples': 205, 'train_split': 0.5, 'seed': 0},
])
def test_generator_reproduces_the_package_at_other_arguments(overrides):
  mine = data_lib.make_mnist1d(**overrides)
  ref = _package(**overrides)
  for name in ('x', 'y', 'x_test', 'y_test'):
    chex.assert_trees_all_equal(mine[name], ref[name])


def test_templates_are_the_packages():
  x, t = data_lib.mnist1d_templates()
  ref = mnist1d_pkg.get_templates()
  chex.assert_trees_all_equal((x, t), (ref['x'], ref['t']))


def test_generator_leaves_global_random_state_alone():
  before = np.random.get_state()[1].copy()
  data_lib.make_mnist1d(num_samples=20)
  chex.assert_trees_all_equal(np.random.get_state()[1], before)


def test_dataset_is_the_published_split(published, cache):
  d = data_lib.get_dataset('mnist1d')()
  assert (d.task, d.num_outputs, d.in_dim, d.n_train) == (
      'classification', 10, 40, 4000)
  chex.assert_shape((d.x_test, d.y_train, d.y_test),
                    ((1000, 40), (4000,), (1000,)))
  chex.assert_type((d.x_train, d.y_train), (np.float32, np.int32))
  chex.assert_trees_all_equal(
      (np.asarray(d.x_train), np.asarray(d.x_test)),
      (published['x'].astype(np.float32),
       published['x_test'].astype(np.float32)))
  chex.assert_trees_all_equal(
      (np.asarray(d.y_train), np.asarray(d.y_test)),
      (published['y'].astype(np.int32), published['y_test'].astype(np.int32)))
  counts = np.bincount(np.concatenate([d.y_train, d.y_test]))
  chex.assert_trees_all_equal(counts, np.full(10, 500))


def test_second_call_loads_the_cache_without_generating(cache):
  with _spy() as spy:
    first = data_lib.mnist1d(num_samples=50)
    assert spy.call_count == 1
    second = data_lib.mnist1d(num_samples=50)
    assert spy.call_count == 1
  chex.assert_trees_all_equal(first, second)
  files = os.listdir(cache)
  assert len(files) == 1 and files[0].endswith('.npz'), files
  umask = os.umask(0)
  os.umask(umask)
  assert os.stat(cache / files[0]).st_mode & 0o777 == 0o666 & ~umask
  # Other arguments are another file.
  with _spy() as spy:
    other = data_lib.mnist1d(num_samples=50, seed=1)
    assert spy.call_count == 1
  assert len(os.listdir(cache)) == 2
  assert not np.array_equal(other.x_train, first.x_train)


@pytest.mark.parametrize('damage', ['truncated', 'garbage', 'empty',
                                    'wrong_arrays', 'flipped_byte'])
def test_a_damaged_cache_file_is_regenerated(cache, damage):
  good = data_lib.mnist1d(num_samples=50)
  (path,) = cache.iterdir()
  raw = path.read_bytes()
  if damage == 'truncated':
    path.write_bytes(raw[:len(raw) // 2])
  elif damage == 'garbage':
    path.write_bytes(b'not a zip file' * 10)
  elif damage == 'empty':
    path.write_bytes(b'')
  elif damage == 'wrong_arrays':  # a readable file of other shapes
    np.savez(path, x_train=np.zeros((3, 2), np.float32))
  else:  # one byte of an array's data: the zip's CRC-32 catches it
    with np.load(path) as f:
      offset = raw.index(f['x_train'].tobytes()[:64]) + 100
    path.write_bytes(raw[:offset] + bytes([raw[offset] ^ 0xFF])
                     + raw[offset + 1:])
  with _spy() as spy:
    again = data_lib.mnist1d(num_samples=50)
    assert spy.call_count == 1
  chex.assert_trees_all_equal(again, good)
  # The regenerated file replaced the damaged one and is read back.
  assert path.read_bytes() == raw
  with _spy() as spy:
    data_lib.mnist1d(num_samples=50)
    assert spy.call_count == 0


def test_cache_dir_honors_the_environment(tmp_path, monkeypatch):
  monkeypatch.setenv('RAHIMI_JAX_CACHE', str(tmp_path / 'mine'))
  assert data_lib.cache_dir() == str(tmp_path / 'mine')
  monkeypatch.delenv('RAHIMI_JAX_CACHE')
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
  assert data_lib.cache_dir() == str(tmp_path / 'xdg' / 'rahimi_jax')
  monkeypatch.delenv('XDG_CACHE_HOME')
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  assert data_lib.cache_dir() == str(tmp_path / 'home' / '.cache' /
                                     'rahimi_jax')


def test_no_cache_writes_nothing(cache):
  with _spy() as spy:
    data_lib.mnist1d(num_samples=30, cache=False)
    data_lib.mnist1d(num_samples=30, cache=False)
    assert spy.call_count == 2
  assert not cache.exists()


def test_a_failed_write_leaves_no_file_and_still_returns_data(cache):
  def failing_savez(f, **arrays):
    f.write(b'partial')
    raise OSError('disk full')

  with mock.patch.object(np, 'savez', failing_savez):
    d = data_lib.mnist1d(num_samples=30)
  assert d.n_train == 24
  assert os.listdir(cache) == []  # the temporary file was removed


def test_an_unwritable_cache_dir_still_returns_data(tmp_path, monkeypatch):
  blocker = tmp_path / 'file'
  blocker.write_text('')
  monkeypatch.setenv('RAHIMI_JAX_CACHE', str(blocker / 'cache'))
  assert data_lib.mnist1d(num_samples=30).n_train == 24


@pytest.mark.parametrize('kwargs, bad', [
    ({'num_samples': 5}, 'num_samples must be an integer >= 10; got 5'),
    ({'num_samples': 100.0}, 'got 100.0'),
    ({'train_split': 1.0}, 'train_split must leave both splits non-empty'),
    ({'train_split': 0.0}, 'got 0.0'),
    ({'train_split': float('nan')}, 'got nan'),
    ({'train_split': float('inf')}, 'got inf'),
    # 0 of 20 sequences in training: failed later, in check_dataset, naming
    # x_train's shape instead of train_split.
    ({'num_samples': 20, 'train_split': 0.01},
     r'train_split must leave both splits non-empty .*; got 0\.01'),
    ({'seed': -1}, r'seed must be an integer in \[0, 2\*\*32\); got -1'),
    ({'seed': True}, r'seed must be an integer in \[0, 2\*\*32\); got True'),
])
def test_bad_arguments_are_one_line_errors(kwargs, bad):
  with pytest.raises(ValueError, match=bad) as e:
    data_lib.mnist1d(cache=False, **kwargs)
  assert '\n' not in str(e.value)


def test_an_ablation_trains_on_mnist1d(tmp_path, monkeypatch):
  """``AblationConfig(dataset='mnist1d')``, what ``experiments.ablate
  --dataset=mnist1d`` runs, shrunk and in-process (the launcher's one
  subprocess smoke test is tests/test_ablate.py; its flag reaches the same
  config)."""
  monkeypatch.setenv('RAHIMI_JAX_CACHE', str(tmp_path / 'cache'))
  config = ablation.AblationConfig(
      dataset='mnist1d', steps=10, log_every=10, seeds=1, hidden=(8,),
      options={'optimizer': ('adam',), 'norm': ('batch',),
               'init': ('lecun_normal',)})
  res = ablation.run(config)
  assert res.metadata['task'] == 'classification'
  assert np.isfinite(res.final().columns['test_accuracy']).all()
  assert len([f for f in os.listdir(tmp_path / 'cache')
              if f.startswith('mnist1d-')]) == 1
