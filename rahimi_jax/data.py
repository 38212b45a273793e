"""Bundled and procedural datasets; nothing is downloaded.

A ``Dataset`` is a pytree of arrays (passed to the compiled grid program as an
argument, so new data of the same shapes does not recompile) with static
``task`` and ``num_outputs``.
"""

from collections.abc import Callable
import math

from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

from rahimi_jax import registry

TASKS = ('classification', 'regression')


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
  """Raises ``ValueError`` on bad shapes, dtypes or non-finite values."""
  if data.task not in TASKS:
    raise ValueError(f'Unknown task {data.task!r}; accepted: {", ".join(TASKS)}.')
  for split in ('train', 'test'):
    x = np.asarray(getattr(data, f'x_{split}'))
    y = np.asarray(getattr(data, f'y_{split}'))
    if x.ndim != 2 or x.shape[0] == 0:
      raise ValueError(f'x_{split} must be [n > 0, features]; got {x.shape}.')
    if y.shape[0] != x.shape[0]:
      raise ValueError(
          f'x_{split} has {x.shape[0]} rows but y_{split} has {y.shape[0]}.')
    if not np.all(np.isfinite(x)):
      raise ValueError(f'x_{split} has {np.sum(~np.isfinite(x))} non-finite '
                       'values; data must be finite.')
    if data.task == 'classification':
      if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f'y_{split} must be integer labels [n]; got '
                         f'{y.dtype}{list(y.shape)}.')
      if y.min() < 0 or y.max() >= data.num_outputs:
        raise ValueError(f'y_{split} labels must lie in [0, {data.num_outputs}).')
    else:
      if y.shape != (x.shape[0], data.num_outputs):
        raise ValueError(f'y_{split} must be [n, {data.num_outputs}]; got '
                         f'{list(y.shape)}.')
      if not np.all(np.isfinite(y)):
        raise ValueError(f'y_{split} has non-finite values; data must be finite.')
  if data.x_train.shape[1] != data.x_test.shape[1]:
    raise ValueError('x_train and x_test have different feature counts.')
  return data


def digits(*, test_fraction: float = 0.25, seed: int = 0) -> Dataset:
  """scikit-learn's bundled 8x8 digits, standardized with train statistics.

  Args:
    test_fraction: share of the 1797 images held out (a fixed split).
    seed: the seed of the fixed split.

  Returns:
    A classification ``Dataset`` with 64 features and 10 classes.
  """
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top
  x, y = datasets.load_digits(return_X_y=True)
  x_train, x_test, y_train, y_test = model_selection.train_test_split(
      x, y, test_size=test_fraction, random_state=seed, stratify=y)
  mean, std = x_train.mean(0), x_train.std(0)
  std = np.where(std > 0, std, 1.0)
  return check_dataset(Dataset(
      x_train=((x_train - mean) / std).astype(np.float32),
      y_train=y_train.astype(np.int32),
      x_test=((x_test - mean) / std).astype(np.float32),
      y_test=y_test.astype(np.int32),
      task='classification', num_outputs=10))


def ill_conditioned_matrix(rng: np.random.Generator, rows: int, cols: int,
                           condition_number: float) -> np.ndarray:
  """A random ``[rows, cols]`` matrix with log-spaced singular values in [1/cond, 1]."""
  k = min(rows, cols)
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
  target is realizable to float64 rounding (least-squares residual ~1e-28 of
  the loss); stored as float32, the rounding of ``x`` and ``y`` separately
  leaves a least-squares optimum of ~1e-15, which no linear model removes.

  Args:
    n_train: training samples.
    n_test: test samples.
    in_dim: input features, ``x ~ N(0, I)``.
    out_dim: targets.
    condition_number: ratio of the largest to smallest singular value of W*.
    noise: standard deviation of Gaussian target noise (0: realizable by a
      linear model).
    seed: seed of the target and the samples.
    dtype: 'float32' or 'float64', the stored arrays' type (float64 arrays
      need ``jax_enable_x64`` to reach a jitted program as float64).

  Returns:
    A regression ``Dataset``.
  """
  if dtype not in SYNTHETIC_DTYPES:
    raise ValueError(f'Unknown dtype {dtype!r}; accepted: '
                     f'{", ".join(SYNTHETIC_DTYPES)}.')
  if (not isinstance(condition_number, (int, float, np.number))
      or not np.isfinite(condition_number) or condition_number < 1):
    raise ValueError(f'condition_number must be a finite number >= 1; got '
                     f'{condition_number!r}.')
  if (not isinstance(noise, (int, float, np.number)) or not np.isfinite(noise)
      or noise < 0):
    raise ValueError(f'noise must be a finite number >= 0; got {noise!r}.')
  rng = np.random.default_rng(seed)
  w = ill_conditioned_matrix(rng, in_dim, out_dim, condition_number)

  def sample(n):
    x = rng.standard_normal((n, in_dim))
    return x, x @ w + noise * rng.standard_normal((n, out_dim))

  (x_train, y_train), (x_test, y_test) = sample(n_train), sample(n_test)
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


def batch_indices(key: jax.Array, n: int, batch_size: int,
                  steps: int) -> jax.Array:
  """``[steps, batch_size]`` sample indices: a fresh permutation each epoch.

  The incomplete last batch of each epoch is dropped.
  """
  per_epoch = n // batch_size
  epochs = -(-steps // per_epoch)
  perms = jax.vmap(lambda k: permutation(k, n))(jax.random.split(key, epochs))
  return perms[:, :per_epoch * batch_size].reshape(-1, batch_size)[:steps]

DATASETS: dict[str, Callable[..., Dataset]] = {
    'digits': digits,
    'synthetic': synthetic,
}


def get_dataset(name: str) -> Callable[..., Dataset]:
  return registry.get(DATASETS, name, 'dataset')
