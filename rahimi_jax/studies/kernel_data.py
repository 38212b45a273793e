"""Data for the kernel studies: a bundled dataset as regression targets, and
a procedural nonlinear regression of any size; how they score and time a
program."""

import time
from typing import Any, NamedTuple

import jax
import numpy as np

from rahimi_jax import data as data_lib


class KernelData(NamedTuple):
  x: np.ndarray       # [n, d] float32
  y: np.ndarray       # [n, k] targets fitted (one-hot for classes)
  x_test: np.ndarray
  y_test: np.ndarray  # [n_test] int labels or [n_test, k] targets
  task: str           # 'classification' | 'regression'


def load(name: str, train_size: int = 0) -> KernelData:
  """A bundled dataset (``data.DATASETS``); classes become one-hot targets.
  ``train_size`` > 0 keeps the first that many training rows."""
  ds = data_lib.get_dataset(name)()
  x, y = np.asarray(ds.x_train), np.asarray(ds.y_train)
  if not (isinstance(train_size, int) and 0 <= train_size <= len(x)):
    raise ValueError(f'train_size={train_size!r}; accepted: an integer from 0 '
                     f'(all) to the {len(x)} training rows of {name}.')
  if train_size:
    x, y = x[:train_size], y[:train_size]
  if ds.task == 'classification':
    y = np.eye(ds.num_outputs, dtype=np.float32)[y]
  return KernelData(x.astype(np.float32), y.astype(np.float32),
                    np.asarray(ds.x_test, np.float32), np.asarray(ds.y_test),
                    ds.task)


def procedural(n: int, n_test: int = 1000, in_dim: int = 8, *,
               noise: float = 0.1, seed: int = 0) -> KernelData:
  """``y = sin(x a) + cos(x b) / 2 + noise``, ``x ~ U[-1, 1]^in_dim``
  (``a, b ~ N(0, 2 I / in_dim)``): a smooth nonlinear target of any size,
  generated in chunks (float32, O(n * in_dim) memory)."""
  rng = np.random.default_rng(seed)
  a, b = rng.normal(0, np.sqrt(2 / in_dim), (2, in_dim)).astype(np.float32)

  def sample(m):
    x = rng.uniform(-1, 1, (m, in_dim)).astype(np.float32)
    y = np.sin(x @ a) + 0.5 * np.cos(x @ b)
    y += noise * rng.standard_normal(m).astype(np.float32)
    return x, y[:, None].astype(np.float32)

  x, y = sample(n)
  x_test, y_test = sample(n_test)
  return KernelData(x, y, x_test, y_test, 'regression')


def score(task: str, predictions: np.ndarray, y_test: np.ndarray) -> float:
  """Test accuracy (classification: argmax) or mean squared error; NaN if
  any prediction is not finite (a failed fit: the argmax of a NaN row would
  read as class 0, a score of chance).

  Predictions of one target may come flat (scikit-learn's ``Ridge`` drops
  the target axis of a ``[n, 1]`` fit): they are reshaped to ``y_test``'s.
  """
  predictions = np.asarray(predictions)
  if not np.all(np.isfinite(predictions)):
    return float('nan')
  if task == 'classification':
    return float(np.mean(np.argmax(predictions, -1) == y_test))
  return float(np.mean((predictions.reshape(y_test.shape) - y_test)**2))


def metric_name(task: str) -> str:
  return 'test_accuracy' if task == 'classification' else 'test_mse'


def median_distance(x: np.ndarray, points: int = 1000, seed: int = 0,
                    ord: int = 2) -> float:  # pylint: disable=redefined-builtin
  """The median pairwise distance of up to ``points`` rows, in the norm
  ``ord`` (2: Euclidean; 1: L1, the Laplacian kernel's, so that the median
  pair's kernel value is ``exp(-1)`` as the Gaussian's median pair's is
  ``exp(-1/2)``): the usual default bandwidth. Pass the kernel's
  ``Kernel.distance_ord``."""
  if ord not in (1, 2):
    raise ValueError(f'ord {ord!r}: accepted are 1 (L1) and 2 (Euclidean).')
  rng = np.random.default_rng(seed)
  sub = x[rng.permutation(len(x))[:points]].astype(np.float64)
  if ord == 1:
    from scipy.spatial import distance  # pylint: disable=g-import-not-at-top
    return float(np.median(distance.pdist(sub, 'cityblock')))
  sq = (sub**2).sum(1)
  d2 = sq[:, None] + sq[None] - 2 * sub @ sub.T
  return float(np.sqrt(np.median(np.maximum(d2[np.triu_indices(len(sub), 1)],
                                            0))))


class Timed(NamedTuple):
  """What ``timed_jit`` measured of one compiled program."""
  outputs: Any
  compile_s: float
  run_s: float
  peak_bytes: float  # XLA's estimate: arguments + outputs + temporaries
                     # (NaN where the backend gives none)


def timed_jit(fn, *args) -> Timed:
  """``jax.jit(fn)(*args)``, compiled (timed) and then run once (timed,
  to ``block_until_ready``), with XLA's peak memory estimate of the
  compiled program."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  mid = time.perf_counter()
  outputs = jax.block_until_ready(compiled(*args))
  run_s = time.perf_counter() - mid
  mem = compiled.memory_analysis()
  peak = (float('nan') if mem is None else
          mem.argument_size_in_bytes + mem.output_size_in_bytes
          + mem.temp_size_in_bytes - mem.alias_size_in_bytes)
  return Timed(outputs, mid - start, run_s, peak)
