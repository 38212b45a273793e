"""Bundled and procedural datasets; nothing is downloaded.

A ``Dataset`` is a pytree of arrays (passed to the compiled grid program as an
argument, so new data of the same shapes does not recompile) with static
``task`` and ``num_outputs``.
"""

from collections.abc import Callable
import hashlib
import importlib.metadata
import json
import math
import os
from typing import Any
import zipfile

from absl import logging
from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

from rahimi_jax import registry
from rahimi_jax import storage

TASKS = ('classification', 'regression')
ARRAY_FIELDS = ('x_train', 'y_train', 'x_test', 'y_test')


@struct.dataclass
class Dataset:
  """Train/test arrays; ``y`` holds int labels or float targets by ``task``."""
  x_train: jax.Array  # [n_train, in_dim] float32
  y_train: jax.Array  # [n_train] int32 | [n_train, out_dim] float32
  x_test: jax.Array
  y_test: jax.Array
  task: str = struct.field(pytree_node=False, default='classification')
  num_outputs: int = struct.field(pytree_node=False, default=0)

  @property
  def in_dim(self) -> int:
    return self.x_train.shape[1]

  @property
  def n_train(self) -> int:
    return self.x_train.shape[0]


def check_dataset(data: Dataset) -> Dataset:
  """``data``, its array fields as arrays (nested lists become numpy's);
  raises ``ValueError`` on bad shapes, dtypes or non-finite values and
  ``TypeError`` on what is no ``Dataset``."""
  if not isinstance(data, Dataset):
    raise TypeError(
        'data must be a rahimi_jax.data.Dataset(x_train, y_train, x_test, '
        f'y_test, task, num_outputs); got {type(data).__name__}.')
  lists = {f: np.asarray(getattr(data, f)) for f in ARRAY_FIELDS
           if not hasattr(getattr(data, f), 'shape')}
  if lists:
    data = data.replace(**lists)
  if data.task not in TASKS:
    raise ValueError(f'Unknown task {data.task!r}; accepted: {", ".join(TASKS)}.')
  if (not isinstance(data.num_outputs, (int, np.integer))
      or isinstance(data.num_outputs, bool) or data.num_outputs < 1):
    raise ValueError(f'num_outputs={data.num_outputs!r}; accepted: an integer '
                     '>= 1 (classes, or target columns of a regression).')
  for split in ('train', 'test'):
    x = np.asarray(getattr(data, f'x_{split}'))
    y = np.asarray(getattr(data, f'y_{split}'))
    if x.ndim != 2 or 0 in x.shape:
      raise ValueError(f'x_{split} must be [n > 0, features > 0]; got '
                       f'{x.shape}.')
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(f'x_{split} must be floating point; got {x.dtype}.')
    if y.ndim == 0 or y.shape[0] != x.shape[0]:
      raise ValueError(
          f'x_{split} has {x.shape[0]} rows but y_{split} has '
          f'{y.shape[0] if y.ndim else "none (a scalar)"}.')
    if not np.all(np.isfinite(x)):
      raise ValueError(f'x_{split} has {np.sum(~np.isfinite(x))} non-finite '
                       'values; data must be finite.')
    if data.task == 'classification':
      if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f'y_{split} must be integer labels [n]; got '
                         f'{y.dtype}{list(y.shape)}.')
      bad = y[(y < 0) | (y >= data.num_outputs)]
      if bad.size:
        raise ValueError(f'y_{split} labels must lie in [0, '
                         f'{data.num_outputs}) (num_outputs); got '
                         f'{", ".join(map(str, np.unique(bad)[:5]))}.')
    else:
      if y.shape != (x.shape[0], data.num_outputs):
        raise ValueError(f'y_{split} must be [n, {data.num_outputs}] '
                         f'(num_outputs columns); got {list(y.shape)}.')
      if not jnp.issubdtype(y.dtype, jnp.floating):
        raise ValueError(f'y_{split} (regression targets) must be floating '
                         f'point; got {y.dtype}.')
      if not np.all(np.isfinite(y)):
        raise ValueError(f'y_{split} has non-finite values; data must be finite.')
  if data.x_train.shape[1] != data.x_test.shape[1]:
    raise ValueError('x_train and x_test have different feature counts.')
  return data


# scikit-learn's digits: 1797 images of 8 x 8 pixels, 10 classes.
_DIGITS_SHAPE = (1797, 64)
# Bump when ``digits()``'s arrays change: cached files of another version are
# not read.
_DIGITS_VERSION = 1


def digits(*, test_fraction: float = 0.25, seed: int = 0,
           cache: bool = True) -> Dataset:
  """scikit-learn's bundled 8x8 digits, standardized with train statistics.

  The split and standardized arrays are cached in ``cache_dir()`` (per
  argument set and scikit-learn and NumPy version, as ``mnist1d``'s): a later
  call loads them without importing scikit-learn (0.8 s of every launcher's
  start, WORKSPACE.md).

  Args:
    test_fraction: share of the 1797 images held out (a fixed split), a
      number in (0, 1) leaving each split at least one image per class
      (``ceil(test_fraction * 1797)`` test images, as scikit-learn's).
    seed: the seed of the fixed split, an integer in [0, 2**32).
    cache: read and write the cache (``False``: always from scikit-learn).

  Returns:
    A classification ``Dataset`` with 64 features and 10 classes.
  """
  n, features = _DIGITS_SHAPE
  if (not isinstance(test_fraction, (int, float, np.floating))
      or isinstance(test_fraction, bool) or not 0 < test_fraction < 1
      or not 10 <= math.ceil(test_fraction * n) <= n - 10):
    raise ValueError(f'test_fraction must be a number in (0, 1) leaving at '
                     f'least 10 images (one per class) in each split; got '
                     f'{test_fraction!r}.')
  if seed is None:
    raise ValueError('seed must be an integer in [0, 2**32); got None (a '
                     'fresh split each call, which the cache cannot hold).')
  test_fraction = float(test_fraction)
  seed = registry.check_int('seed', seed, 0, 2**32)
  n_test = math.ceil(test_fraction * n)
  n_train = n - n_test

  def make():
    from sklearn import datasets  # pylint: disable=g-import-not-at-top
    from sklearn import model_selection  # pylint: disable=g-import-not-at-top
    x, y = datasets.load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = model_selection.train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y)
    mean, std = x_train.mean(0), x_train.std(0)
    std = np.where(std > 0, std, 1.0)
    return {'x_train': ((x_train - mean) / std).astype(np.float32),
            'y_train': y_train.astype(np.int32),
            'x_test': ((x_test - mean) / std).astype(np.float32),
            'y_test': y_test.astype(np.int32)}

  versions = [importlib.metadata.version(p) for p in ('scikit-learn', 'numpy')]
  arrays = _cached('digits', [_DIGITS_VERSION, versions, test_fraction, seed],
                   make, cache,
                   {'x_train': (n_train, features), 'y_train': (n_train,),
                    'x_test': (n_test, features), 'y_test': (n_test,)})
  return check_dataset(Dataset(**arrays, task='classification',
                               num_outputs=10))


def ill_conditioned_matrix(rng: np.random.Generator, rows: int, cols: int,
                           condition_number: float) -> np.ndarray:
  """A random ``[rows, cols]`` matrix with log-spaced singular values in [1/cond, 1]."""
  k = min(rows, cols)
  if k == 1 and condition_number != 1:
    raise ValueError(f'condition_number {condition_number!r}: a {rows} x '
                     f'{cols} matrix has one singular value (condition number '
                     '1); give in_dim and out_dim of 2 or more.')
  u, _ = np.linalg.qr(rng.standard_normal((rows, k)))
  v, _ = np.linalg.qr(rng.standard_normal((cols, k)))
  s = np.logspace(0.0, -np.log10(condition_number), k)
  return (u * s) @ v.T


SYNTHETIC_DTYPES = ('float32', 'float64')


def synthetic(*, n_train: int = 1000, n_test: int = 1000, in_dim: int = 6,
              out_dim: int = 10, condition_number: float = 1e5,
              noise: float = 0.0, seed: int = 0,
              dtype: str = 'float32') -> Dataset:
  """Linear regression ``y = x W* + noise`` with ``cond(W*) = condition_number``.

  The defaults are the widths of the talk's two-layer linear network
  demonstration (x in R^6, y in R^10, 1000 samples). Everything is drawn and
  computed in float64 and stored in ``dtype``: stored as float64, a noiseless
  target is realizable to float64 rounding (least-squares optimum ~1e-30 of
  the loss at ``W = 0``); stored as float32, the rounding of ``x`` and ``y``
  separately leaves a least-squares optimum of ~1e-15 of it, which no linear
  model removes.

  Args:
    n_train: training samples.
    n_test: test samples.
    in_dim: input features, ``x ~ N(0, I)``.
    out_dim: targets.
    condition_number: ratio of the largest to smallest singular value of W*.
    noise: standard deviation of Gaussian target noise (0: realizable by a
      linear model).
    seed: seed of the target and the samples. ``W*`` and the training set
      come from one stream, the test set from another: the test set does not
      depend on ``n_train``, nor the training set on ``n_test``.
    dtype: 'float32' or 'float64', the stored arrays' type (float64 arrays
      need ``jax_enable_x64`` to reach a jitted program as float64).

  Returns:
    A regression ``Dataset``.
  """
  if dtype not in SYNTHETIC_DTYPES:
    raise ValueError(f'Unknown dtype {dtype!r}; accepted: '
                     f'{", ".join(SYNTHETIC_DTYPES)}.')
  for name, n in (('n_train', n_train), ('n_test', n_test),
                  ('in_dim', in_dim), ('out_dim', out_dim)):
    registry.check_int(name, n, 1)
  registry.check_int('seed', seed, 0, 2**32)
  for name, value, least in (('condition_number', condition_number, 1),
                             ('noise', noise, 0)):
    if (not isinstance(value, (int, float, np.number))
        or isinstance(value, bool)  # True is not 1
        or not np.isfinite(value) or value < least):
      raise ValueError(f'{name} must be a finite number >= {least}; got '
                       f'{value!r}.')
  rng = np.random.default_rng(seed)
  w = ill_conditioned_matrix(rng, in_dim, out_dim, condition_number)

  def sample(rng, n):
    x = rng.standard_normal((n, in_dim))
    return x, x @ w + noise * rng.standard_normal((n, out_dim))

  # The test set has a stream of its own, so runs that differ in n_train are
  # scored on the same test samples.
  x_train, y_train = sample(rng, n_train)
  x_test, y_test = sample(
      np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0]), n_test)
  return check_dataset(Dataset(
      x_train=x_train.astype(dtype), y_train=y_train.astype(dtype),
      x_test=x_test.astype(dtype), y_test=y_test.astype(dtype),
      task='regression', num_outputs=out_dim))



def permutation(key: jax.Array, n: int) -> jax.Array:
  """A uniformly random permutation of ``range(n)`` (int32), by sorting keys.

  The method of ``jax.random.permutation`` (sort by random keys, in enough
  rounds that ties do not bias it: ``ceil(3 log n / key bits)``), but each
  round sorts a single uint32 array: random high bits over the position in
  the low ``ceil(log2 n)`` bits, so a tie keeps the previous round's random
  order. XLA's CPU sort is ~4x faster on one array than on jax's (keys,
  values) pair, and the shuffles were a quarter of a 256-member minibatch
  grid's run time (WORKSPACE.md). For ``n > 2**24`` too few key bits are
  left; that falls back to ``jax.random.permutation``.
  """
  n = registry.check_int('n', n, 0)
  bits = max(1, (n - 1).bit_length())
  if bits > 24:
    return jax.random.permutation(key, n).astype(jnp.int32)
  rounds = max(1, math.ceil(3 * math.log2(max(n, 2)) / (32 - bits)))
  positions = jnp.arange(n, dtype=jnp.uint32)
  low = jnp.uint32((1 << bits) - 1)
  perm = positions
  for k in jax.random.split(key, rounds):
    packed = (jax.random.bits(k, (n,), jnp.uint32) & ~low) | positions
    perm = perm[jnp.sort(packed) & low]
  return perm.astype(jnp.int32)


def _batches_per_epoch(n: int, batch_size: int) -> int:
  """``n // batch_size``; ``ValueError`` unless ``1 <= batch_size <= n``."""
  n = registry.check_int('n', n, 1)
  if (not isinstance(batch_size, (int, np.integer))
      or isinstance(batch_size, bool) or not 1 <= batch_size <= n):
    raise ValueError(f'batch_size must be an integer in [1, n={n}] (a full '
                     f'batch per epoch); got {batch_size!r}.')
  return n // int(batch_size)


def epoch_order(key: jax.Array, n: int, batch_size: int, steps: int,
                epoch: jax.Array) -> jax.Array:
  """The sample order of one epoch of a minibatch run: a permutation of ``n``.

  Epoch ``e`` of a run of ``steps`` steps uses ``split(key, epochs)[e]``
  (JAX's partitionable Threefry: the ``e``-th key does not depend on how many
  are split), so any epoch's order is drawn on its own, without the others.
  """
  epochs = -(-steps // _batches_per_epoch(n, batch_size))
  return permutation(jax.random.split(key, epochs)[epoch], n)


def step_batch(key: jax.Array, n: int, batch_size: int, steps: int,
               t: jax.Array, order: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(indices [batch_size], order)``: the samples of step ``t`` (from 1).

  ``order`` is the order of the epoch of step ``t - 1`` (``epoch_order``; any
  array of that shape before step 1); it is drawn anew at the first step of
  each epoch, so a run holds one epoch's order, not the whole run's indices.
  Step by step the same indices as ``batch_indices``.
  """
  per_epoch = _batches_per_epoch(n, batch_size)
  epoch, position = jnp.divmod(t - 1, per_epoch)
  order = jax.lax.cond(position == 0,
                       lambda: epoch_order(key, n, batch_size, steps, epoch),
                       lambda: order)
  return jax.lax.dynamic_slice(order, (position * batch_size,),
                               (batch_size,)), order


def batch_indices(key: jax.Array, n: int, batch_size: int,
                  steps: int) -> jax.Array:
  """``[steps, batch_size]`` sample indices: a fresh permutation each epoch.

  The incomplete last batch of each epoch is dropped.
  """
  per_epoch = _batches_per_epoch(n, batch_size)
  epochs = -(-steps // per_epoch)
  perms = jax.vmap(lambda e: epoch_order(key, n, batch_size, steps, e))(
      jnp.arange(epochs))
  return perms[:, :per_epoch * batch_size].reshape(-1, batch_size)[:steps]

# MNIST-1D (Greydanus 2020): the generator's published defaults
# (``mnist1d.data.get_dataset_args``), but for what ``mnist1d()`` takes.
MNIST1D_ARGS = {
    'template_len': 12,
    'padding': (36, 60),
    'scale_coeff': 0.4,
    'max_translation': 48,
    'corr_noise_scale': 0.25,
    'iid_noise_scale': 2e-2,
    'shear_scale': 0.75,
    'final_seq_length': 40,
}
# Bump when the generator's output changes: cached files of another version
# are not read.
_MNIST1D_VERSION = 1


def mnist1d_templates() -> tuple[np.ndarray, np.ndarray]:
  """``(x [10, 12], t [12])``: the ten digit templates and their positions.

  Each template is whitened, then shifted to start at 0, then divided by 6
  (as the published generator does).
  """
  x = np.asarray([
      [5, 6, 6.5, 6.75, 7, 7, 7, 7, 6.75, 6.5, 6, 5],
      [5, 3, 3, 3.4, 3.8, 4.2, 4.6, 5, 5.4, 5.8, 5, 5],
      [5, 6, 6.5, 6.5, 6, 5.25, 4.75, 4, 3.5, 3.5, 4, 5],
      [5, 6, 6.5, 6.5, 6, 5, 5, 6, 6.5, 6.5, 6, 5],
      [5, 4.4, 3.8, 3.2, 2.6, 2.6, 5, 5, 5, 5, 5, 5],
      [5, 3, 3, 3, 3, 5, 6, 6.5, 6.5, 6, 4.5, 5],
      [5, 4, 3.5, 3.25, 3, 3, 3, 3, 3.25, 3.5, 4, 5],
      [5, 7, 7, 6.6, 6.2, 5.8, 5.4, 5, 4.6, 4.2, 5, 5],
      [5, 4, 3.5, 3.5, 4, 5, 5, 4, 3.5, 3.5, 4, 5],
      [5, 4, 3.5, 3.5, 4, 5, 5, 5, 5, 4.7, 4.3, 5]])
  x -= x.mean(1, keepdims=True)
  x /= x.std(1, keepdims=True)
  x -= x[:, :1]
  return x / 6.0, np.linspace(-5, 5, x.shape[1]) / 6.0


def _resample(x: np.ndarray, n: int) -> np.ndarray:
  """``x`` linearly interpolated from an even grid on [0, 1] to ``n`` points."""
  return np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(x)), x)


def make_mnist1d(*, num_samples: int = 5000, train_split: float = 0.8,
                 seed: int = 42, shuffle_seq: bool = False
                 ) -> dict[str, np.ndarray]:
  """Generates MNIST-1D: ``{'x', 'y', 'x_test', 'y_test'}`` (float64, int64).

  The published procedure and random stream (NumPy's legacy ``RandomState``
  seeded with ``seed``, drawn in the same order), so the defaults give the
  published 4000/1000 split of 5000 sequences of length 40; the tests check
  it against the ``mnist1d`` package's ``make_dataset``. Each sample is its
  class's template (``mnist1d_templates``) padded with a random number of
  zeros, stretched to 72 points, scaled, circularly translated, filled with
  smoothed noise where it is zero, given i.i.d. noise, sheared, and resampled
  to 40 points; samples are then shuffled and the whole set standardized
  (one mean and standard deviation). Nothing is downloaded and no global
  random state is touched.

  Args:
    num_samples: sequences in all (``num_samples // 10`` per class).
    train_split: the share of them in the training split.
    seed: the random stream's seed.
    shuffle_seq: permute the positions of every sequence (the same
      permutation for all): the "shuffled" MNIST-1D.

  Returns:
    The arrays of the two splits.
  """
  a = MNIST1D_ARGS
  rng = np.random.RandomState(seed)  # the published stream: legacy MT19937
  templates, _ = mnist1d_templates()
  low, high = a['padding']
  length = a['template_len'] + high
  ramp = np.linspace(-0.5, 0.5, length)
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  xs, ys = [], []
  for label, template in enumerate(templates):
    for _ in range(num_samples // len(templates)):
      pad = low + int(rng.rand() * (high - low + 1))
      x = _resample(np.concatenate([template + 1e-8, np.zeros(pad)]), length)
      x *= 1 + a['scale_coeff'] * (rng.rand() - 0.5)
      x = np.roll(x, rng.choice(a['max_translation']))
      corr = ndimage.gaussian_filter(
          a['corr_noise_scale'] * rng.randn(length), 2)
      x = np.where(x != 0, x, corr)
      x = x + a['iid_noise_scale'] * rng.randn(length)
      x = x - a['shear_scale'] * (rng.rand() - 0.5) * ramp
      xs.append(_resample(x, a['final_seq_length']))
      ys.append(label)
  order = rng.permutation(len(ys))
  xs, ys = np.stack(xs)[order], np.asarray(ys, np.int64)[order]
  if shuffle_seq:
    xs = xs[:, rng.permutation(a['final_seq_length'])]
  xs = (xs - xs.mean()) / xs.std()
  split = int(len(ys) * train_split)
  return {'x': xs[:split], 'y': ys[:split],
          'x_test': xs[split:], 'y_test': ys[split:]}


def cache_dir() -> str:
  """Where generated datasets are cached.

  ``$RAHIMI_JAX_CACHE`` if set, else ``$XDG_CACHE_HOME/rahimi_jax``, else
  ``~/.cache/rahimi_jax``.
  """
  if os.environ.get('RAHIMI_JAX_CACHE'):
    return os.environ['RAHIMI_JAX_CACHE']
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(
      os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'rahimi_jax')


def _load_cached(path: str, shapes: dict[str, tuple[int, ...]] | None
                 ) -> dict[str, np.ndarray] | None:
  """The arrays cached at ``path``, or ``None`` if absent, partial or corrupt
  (features float32 and finite, labels int32; of ``shapes`` where given, else
  each split's rows and the features' widths consistent)."""
  try:
    with np.load(path, allow_pickle=False) as f:  # zip CRCs checked on read
      arrays = {k: f[k] for k in ARRAY_FIELDS}
  except FileNotFoundError:
    return None
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
    logging.warning('Regenerating the unreadable cache file %s (%s).', path, e)
    return None
  x, y, xt, yt = (arrays[k] for k in ARRAY_FIELDS)
  if shapes is None:
    shapes = {'x_train': (len(y), *xt.shape[1:]), 'y_train': (len(x),),
              'x_test': (len(yt), *x.shape[1:]), 'y_test': (len(xt),)}
  dtypes = {'x_train': np.float32, 'y_train': np.int32,
            'x_test': np.float32, 'y_test': np.int32}
  if any(arrays[k].shape != shapes[k] or arrays[k].dtype != dtypes[k]
         for k in ARRAY_FIELDS):
    logging.warning('Regenerating the cache file %s: unexpected arrays.', path)
    return None
  if not (np.all(np.isfinite(x)) and np.all(np.isfinite(xt))):
    logging.warning('Regenerating the cache file %s: non-finite values.', path)
    return None
  return arrays


def _save_atomically(path: str, arrays: dict[str, np.ndarray]) -> None:
  """Writes the ``.npz`` whole or not at all (``storage.atomic_file``)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with storage.atomic_file(path, 'wb') as f:
    np.savez(f, **arrays)


def _cached(name: str, key: Any, make: Callable[[], dict[str, np.ndarray]],
            cache: bool, shapes: dict[str, tuple[int, ...]] | None = None
            ) -> dict[str, np.ndarray]:
  """``make()``'s arrays (``ARRAY_FIELDS``), kept in ``cache_dir()`` as one
  ``.npz`` per ``name`` and JSON-able ``key`` (written atomically): a later
  call loads them; an unreadable or partial file is made again."""
  path = os.path.join(cache_dir(), f'{name}-' + hashlib.sha256(
      json.dumps(key, sort_keys=True).encode()).hexdigest()[:16] + '.npz')
  arrays = _load_cached(path, shapes) if cache else None
  if arrays is None:
    arrays = make()
    if cache:
      try:
        _save_atomically(path, arrays)
      except OSError as e:
        logging.warning('Could not cache %s at %s (%s).', name, path, e)
  return arrays


def mnist1d(*, num_samples: int = 5000, train_split: float = 0.8,
            seed: int = 42, shuffle_seq: bool = False,
            cache: bool = True) -> Dataset:
  """MNIST-1D: 10 classes of 1-D sequences of length 40, generated offline.

  The defaults are the published dataset (4000 training and 1000 test
  sequences, seed 42), generated by ``make_mnist1d`` (no download) and kept
  as published (standardized as a whole, not per feature). The arrays are
  cached in ``cache_dir()`` (one ``.npz`` per argument set, written
  atomically), so later calls load instead of generating; an unreadable or
  partial cache file is regenerated.

  Args:
    num_samples: sequences in all, >= 10 (``num_samples // 10`` per class).
    train_split: the share in the training split; both splits non-empty.
    seed: the generator's seed, in [0, 2**32).
    shuffle_seq: permute the positions (the same way in every sequence).
    cache: read and write the cache (``False``: always generate).

  Returns:
    A classification ``Dataset`` with 40 features and 10 classes.

  References:
    Greydanus, "Scaling down deep learning", 2020 (arXiv:2011.14439).
  """
  num_samples = registry.check_int('num_samples', num_samples, 10)
  total = num_samples // 10 * 10
  if (not isinstance(train_split, (int, float, np.number))
      or not 0 < train_split < 1 or not 0 < int(total * train_split) < total):
    raise ValueError(f'train_split must leave both splits non-empty (in (0, '
                     f'1)); got {train_split!r}.')
  registry.check_int('seed', seed, 0, 2**32)
  args = {'num_samples': int(num_samples), 'train_split': float(train_split),
          'seed': int(seed), 'shuffle_seq': bool(shuffle_seq)}
  n_train = int(total * train_split)
  length = MNIST1D_ARGS['final_seq_length']

  def make():
    made = make_mnist1d(**args)
    return {'x_train': made['x'].astype(np.float32),
            'y_train': made['y'].astype(np.int32),
            'x_test': made['x_test'].astype(np.float32),
            'y_test': made['y_test'].astype(np.int32)}

  n_test = total - n_train
  arrays = _cached('mnist1d', [_MNIST1D_VERSION, MNIST1D_ARGS, args], make,
                   cache, {'x_train': (n_train, length), 'y_train': (n_train,),
                           'x_test': (n_test, length), 'y_test': (n_test,)})
  return check_dataset(Dataset(**arrays, task='classification',
                               num_outputs=10))


DATASETS: dict[str, Callable[..., Dataset]] = {
    'digits': digits,
    'mnist1d': mnist1d,
    'synthetic': synthetic,
}


# Each bundled dataset's task, known without loading it (a launcher's flags
# are checked, and a dry run answers, before scikit-learn is imported or
# MNIST-1D generated). tests/test_data.py checks it against the loaded data.
DATASET_TASKS = {
    'digits': 'classification',
    'mnist1d': 'classification',
    'synthetic': 'regression',
}


def get_dataset(name: str) -> Callable[..., Dataset]:
  return registry.get(DATASETS, name, 'dataset')


def task_of(name: str) -> str:
  """The task of dataset ``name`` ('classification' or 'regression')."""
  get_dataset(name)
  if name in DATASET_TASKS:
    return DATASET_TASKS[name]
  return get_dataset(name)().task
