"""Shared fixtures: tiny datasets that keep compiled programs small."""

import os
import shutil
import tempfile

import jax
from launchers import IN_PROCESS_COMPILE
import pytest

# Generated datasets (MNIST-1D) and compiled programs are cached in a fresh
# directory per process (removed when it ends: ``pytest_unconfigure``), not
# in the user's cache; launchers the tests start inherit it.
CACHE = tempfile.mkdtemp(prefix='rahimi_jax_cache_')
os.environ['RAHIMI_JAX_CACHE'] = CACHE
# Grids run in the built-in rule's chunks, measuring nothing: tuning would
# compile each test's program at several widths (tests/test_tuning.py tests
# the tuner). Launchers the tests start inherit it.
os.environ['RAHIMI_JAX_CHUNK_SIZE'] = 'rule'
os.environ['XLA_FLAGS'] = (
    f'{os.environ.get("XLA_FLAGS", "")} {IN_PROCESS_COMPILE}'.strip())

# In-process tests run on one CPU device, as before rahimi_jax's import-time
# default of one device per core (tests/test_program.py checks that default in
# fresh processes; the launcher tests run with it).
jax.config.update('jax_num_cpu_devices', 1)

from rahimi_jax import data as data_lib  # pylint: disable=g-import-not-at-top,wrong-import-position


def pytest_unconfigure(config):
  """Removes this process's cache (the controller's and each xdist
  worker's), which every launched run has finished with."""
  del config
  shutil.rmtree(CACHE, ignore_errors=True)


@pytest.fixture(scope='session')
def tiny_digits():
  full = data_lib.digits()
  return data_lib.Dataset(
      x_train=full.x_train[:256], y_train=full.y_train[:256],
      x_test=full.x_test[:128], y_test=full.y_test[:128],
      task='classification', num_outputs=10)


@pytest.fixture(scope='session')
def tiny_synthetic():
  return data_lib.synthetic(n_train=64, n_test=32, in_dim=4, out_dim=3,
                            condition_number=10.0)


@pytest.fixture(autouse=True)
def _float32_unless_the_module_says(request):
  """Each test runs with float64 off unless its module sets ``USES_X64``.

  Those modules turn it on in module-scoped fixtures, until the module's
  teardown; under xdist's work stealing a worker can run another module's
  test before that teardown (a stolen next item), which then traced in
  float64 (a scan carry float32 in, float64 out).
  """
  if getattr(request.module, 'USES_X64', False):
    yield
    return
  previous = jax.config.jax_enable_x64
  if previous:
    jax.config.update('jax_enable_x64', False)
  yield
  if previous:
    jax.config.update('jax_enable_x64', True)


@pytest.fixture
def x64():
  """Enables float64 for one test."""
  import jax  # pylint: disable=g-import-not-at-top
  previous = jax.config.jax_enable_x64
  jax.config.update('jax_enable_x64', True)
  yield
  jax.config.update('jax_enable_x64', previous)
