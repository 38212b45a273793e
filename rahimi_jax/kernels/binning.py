r"""Random binning features of the Laplacian kernel (Rahimi & Recht 2007, Alg. 2).

The Laplacian kernel ``k(x, y) = exp(-||x - y||_1 / sigma)`` is a product over
dimensions of ``exp(-|x_d - y_d| / sigma)``, each a mixture of hat functions
``max(0, 1 - |x_d - y_d| / delta)`` over pitches ``delta ~ Gamma(2, sigma)``
(the paper's ``p(delta) = delta k''(delta)``). A random grid (a pitch
``delta_d`` and a shift ``u_d ~ U[0, delta_d)`` per dimension) puts two points
in the same bin with probability ``prod_d max(0, 1 - |x_d - y_d| / delta_d)``,
so the fraction of ``P`` independent grids in which ``x`` and ``y`` share a
bin is an unbiased estimate of ``k(x, y)``, with standard deviation
``O(1 / sqrt(P))`` (``binning_kernel``).

As features (``binning_features``), each grid's bin (a tuple of ``d``
integers) is hashed to one of ``buckets`` columns with a random sign (feature
hashing): ``z(x)`` has one nonzero ``+-1 / sqrt(P)`` per grid, and
``z(x) . z(y)`` is still unbiased for ``k(x, y)`` (two different bins share a
column with probability ``1 / buckets`` and then add ``+1`` or ``-1`` with
equal odds); the collisions add variance ``~ 1 / (P buckets)`` per pair.

A draw (``Binning``) is made once at unit bandwidth for ``max_grids`` grids;
the bandwidth scales the pitches and is traced, and ``num_grids`` masks a
prefix of the grids, so a sweep over (grids, bandwidth, ridge, seed) is one
``vmap``, as for random Fourier features.

The hash of a bin is a 64-bit pair of random linear forms of its coordinates
modulo 2^32, each finished with MurmurHash3's 32-bit mixer: two different bins
get the same pair with probability ~2^-64, so ``binning_kernel`` counts shared
bins, not hash collisions.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rahimi_jax.kernels import features as features_lib
from rahimi_jax.kernels import kernels as kernels_lib


class Binning(NamedTuple):
  """A random binning draw at unit bandwidth: ``max_grids`` random grids."""
  pitches: jax.Array  # [max_grids, d] ~ Gamma(2, 1)
  shifts: jax.Array   # [max_grids, d] ~ U[0, 1), in units of the pitch
  hashes: jax.Array   # [3, max_grids, d] uint32 odd: key high, key low, sign


def draw_binning(key: jax.Array, in_dim: int, max_grids: int,
                 dtype=jnp.float32) -> Binning:
  """``max_grids`` random grids of the Laplacian kernel at unit bandwidth."""
  if not (isinstance(max_grids, int) and max_grids >= 1):
    raise ValueError(f'max_grids={max_grids!r}; accepted: an integer >= 1.')
  k_p, k_u, k_h = jax.random.split(key, 3)
  pitches = jax.random.gamma(k_p, 2.0, (max_grids, in_dim), dtype)
  shifts = jax.random.uniform(k_u, (max_grids, in_dim), dtype)
  hashes = jax.random.bits(k_h, (3, max_grids, in_dim), jnp.uint32) | 1
  return Binning(pitches, shifts, hashes)


def _mix(h: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finalizer (a bijection of uint32)."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


# The largest bin index ``check_cells`` lets through: int32 bins saturate at
# 2^31 (far points would share the last bin); half of that leaves room for
# float32's rounding of ``x / (bandwidth * pitch)``.
MAX_CELL = 2**30


def check_cells(draw: Binning, x: jax.Array, bandwidth: jax.Array) -> None:
  """``ValueError`` if a bin index ``floor(x / (bandwidth * pitch) - shift)``
  would pass int32's range (where the cast saturates and far points share a
  bin), when ``draw``, ``x`` and ``bandwidth`` are concrete (traced: not
  checked)."""
  concrete = kernels_lib._concrete  # pylint: disable=protected-access
  pitches, v, bw = concrete(draw.pitches), concrete(x), concrete(bandwidth)
  if pitches is None or v is None or bw is None or not v.size:
    return
  scale = np.abs(v).max(0)  # [d] the data's reach per dimension
  cells = float(np.max(scale / (np.min(bw) * pitches.min(0))) + 1)
  if cells > MAX_CELL:
    raise ValueError(
        f'bandwidth={np.min(bw).item()!r} with |x| up to {scale.max():.3g}: '
        f'bin indices up to {cells:.3g} cells (the smallest grid pitch '
        f'{pitches.min():.3g} x bandwidth), past 2^30 (int32 bins saturate '
        'at 2^31: far points would share a bin); accepted: a bandwidth >= '
        f'{np.min(bw).item() * cells / MAX_CELL:.3g} for this data, or '
        'centred / rescaled x.')


def _hashes(draw: Binning, x: jax.Array, bandwidth: jax.Array
            ) -> jax.Array:
  """``[3, n, max_grids]`` uint32: per point and grid, two hashes of its bin
  (together the bin's key) and a third for the feature sign."""
  kernels_lib.check_positive('bandwidth', bandwidth)
  kernels_lib.check_finite('x', x)
  check_cells(draw, x, bandwidth)

  def one_grid(grid):  # [3, n]; a grid at a time: no [n, grids, d] array
    pitch, shift, hashes = grid
    bins = jnp.floor(x / (bandwidth * pitch) - shift).astype(jnp.int32)
    return _mix(jnp.sum(bins.astype(jnp.uint32)[None] * hashes[:, None], -1,
                        dtype=jnp.uint32))

  return jnp.moveaxis(jax.lax.map(one_grid, (
      draw.pitches, draw.shifts, jnp.moveaxis(draw.hashes, 1, 0))), 0, 2)


def binning_kernel(draw: Binning, x: jax.Array, y: jax.Array,
                   bandwidth: jax.Array,
                   num_grids: jax.Array | int | None = None) -> jax.Array:
  """``[n, m]``: the fraction of the first ``num_grids`` grids (traced;
  default all) in which ``x_i`` and ``y_j`` share a bin; an unbiased
  estimate of the Laplacian kernel at ``bandwidth``."""
  num_grids, keep = features_lib.prefix_mask(num_grids, draw.pitches.shape[0],
                                             'num_grids', 'max_grids')
  hx, hy = _hashes(draw, x, bandwidth), _hashes(draw, y, bandwidth)

  def one_grid(total, grid):
    a, b, kept = grid
    same = (a[0][:, None] == b[0][None, :]) & (a[1][:, None] == b[1][None, :])
    return total + jnp.where(kept, same.astype(x.dtype), 0), None

  total, _ = jax.lax.scan(one_grid, jnp.zeros((x.shape[0], y.shape[0]),
                                              x.dtype),
                          (jnp.moveaxis(hx[:2], 2, 0),
                           jnp.moveaxis(hy[:2], 2, 0), keep))
  return total / jnp.asarray(num_grids, x.dtype)


def binning_features(draw: Binning, x: jax.Array, bandwidth: jax.Array,
                     num_grids: jax.Array | int | None = None, *,
                     buckets: int = 16) -> jax.Array:
  """``z(x): [n, max_grids * buckets]``: per grid, ``+-1 / sqrt(num_grids)``
  in the column its bin hashes to; grids from ``num_grids`` on are zero.
  ``z(x) @ z(y).T`` is an unbiased estimate of the Laplacian kernel."""
  if not (isinstance(buckets, int) and buckets >= 1):
    raise ValueError(f'buckets={buckets!r}; accepted: an integer >= 1.')
  max_grids = draw.pitches.shape[0]
  num_grids, keep = features_lib.prefix_mask(num_grids, max_grids,
                                             'num_grids', 'max_grids')
  h = _hashes(draw, x, bandwidth)
  column = (h[0] ^ h[1]) % jnp.uint32(buckets)
  sign = jnp.where(h[2] >> 31 == 1, -1.0, 1.0).astype(x.dtype)
  value = jnp.where(keep, sign, 0) / jnp.sqrt(jnp.asarray(num_grids, x.dtype))
  z = jax.nn.one_hot(column, buckets, dtype=x.dtype) * value[..., None]
  return z.reshape(x.shape[0], max_grids * buckets)
