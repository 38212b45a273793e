"""Shift-invariant kernels, their exact matrices in blocks, and matrix-free
kernel products that never hold more than a block of rows.

A kernel is a ``Kernel(pairwise, sample_frequencies, gamma, sklearn_name)``:
``pairwise(x, y, bandwidth) -> [n, m]``, ``sample_frequencies(key, shape)``,
frequencies of its spectral density at unit bandwidth (Bochner; divided by
the bandwidth for random Fourier features), and scikit-learn's name and
``gamma`` of the same kernel, for the peers the studies compare with.
Bandwidths are traced arguments, so a sweep over them is a ``vmap``.

* ``gaussian``: ``exp(-||x - y||^2 / (2 sigma^2))`` (scikit-learn's
  ``rbf_kernel`` with ``gamma = 1 / (2 sigma^2)``); frequencies ``N(0, I)``.
* ``laplacian``: ``exp(-||x - y||_1 / sigma)`` (``laplacian_kernel`` with
  ``gamma = 1 / sigma``); a product of one-dimensional Laplace kernels, whose
  frequencies are independent standard Cauchy coordinates.

The products run over row blocks of ``x`` in ``lax.map`` / ``lax.scan``
(``x`` padded to whole blocks, padded rows masked), so their memory is
``O(block_size * m)`` beside the inputs and outputs. ``normal_matvec``
(``K_nM^T (K_nM u + v)``, the Nyström / FALKON product) optionally shards the
rows over a one-axis ``Mesh``: each device scans its rows and the partial sums
are added across devices (``psum``).

References:
  Rahimi & Recht, "Random features for large-scale kernel machines" (2007);
  Rudi, Carratino & Rosasco, "FALKON: an optimal large scale kernel method"
  (2017), Algorithm 1.
"""

from collections.abc import Callable
import functools
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rahimi_jax import registry

# Rows per kernel block on an accelerator, and the most on a CPU.
ACCELERATOR_BLOCK_SIZE = 1024
# A CPU's L2 per core where the OS does not say (``l2_cache_bytes``).
FALLBACK_L2_BYTES = 1 << 20


@functools.cache
def l2_cache_bytes() -> int:
  """One core's L2 cache in bytes, from Linux's sysfs; else
  ``FALLBACK_L2_BYTES``."""
  root = '/sys/devices/system/cpu/cpu0/cache'
  try:
    for index in sorted(os.listdir(root)):
      def read(name, index=index):
        with open(os.path.join(root, index, name)) as f:
          return f.read().strip()
      if read('level') == '2' and read('type') in ('Unified', 'Data'):
        size = read('size')
        scale = {'K': 1 << 10, 'M': 1 << 20}.get(size[-1], 1)
        return int(size.rstrip('KM')) * scale
  except (OSError, ValueError):
    pass
  return FALLBACK_L2_BYTES


def default_block_size(columns: int, itemsize: int = 4) -> int:
  """Rows per block of a ``[rows, columns]`` kernel tile: on a CPU the most
  (a power of two, 8 to ``ACCELERATOR_BLOCK_SIZE``) whose tile fills at most
  half of one core's L2 cache, so the kernel entries are computed, used
  twice and dropped without a trip to memory; on an accelerator
  ``ACCELERATOR_BLOCK_SIZE``. ``normal_matvec``'s products (n=2e5 rows, 2
  devices) ran 2.28x / 1.87x / 1.34x / 0.92x the speed of 1024-row tiles at
  M = 1e4 / 6000 / 4000 / 2000 centres on a 2-core Intel Xeon with 2 MiB of
  L2, and 1.91x / 1.84x at M = 1e4 / 4000 on a 2-core AMD EPYC with 1 MiB
  (tiles of 8 and 32 rows there; WORKSPACE.md, "Random features and kernel
  solvers")."""
  if jax.default_backend() != 'cpu':
    return ACCELERATOR_BLOCK_SIZE
  rows = l2_cache_bytes() // 2 // max(1, columns * itemsize)
  return int(min(ACCELERATOR_BLOCK_SIZE,
                 max(8, 1 << max(0, int(rows).bit_length() - 1))))


ROWS = 'rows'  # the mesh axis that rows are sharded over


class Kernel(NamedTuple):
  pairwise: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
  sample_frequencies: Callable[[jax.Array, tuple[int, ...]], jax.Array]
  gamma: Callable[[float], float]  # scikit-learn's gamma at a bandwidth
  # scikit-learn's name of the kernel (``pairwise.pairwise_kernels``'
  # metric, ``KernelRidge``'s and ``Nystroem``'s ``kernel``).
  sklearn_name: str
  # The norm of ``x - y`` the kernel decays in (2: Euclidean, 1: L1): the
  # distance whose median is the default bandwidth
  # (``kernel_data.median_distance``).
  distance_ord: int = 2


def _gaussian(x, y, bandwidth):
  sq = (jnp.sum(x * x, -1)[:, None] + jnp.sum(y * y, -1)[None, :]
        - 2 * x @ y.T)
  return jnp.exp(-jnp.maximum(sq, 0) / (2 * bandwidth**2))


def _laplacian(x, y, bandwidth):
  l1 = jnp.sum(jnp.abs(x[:, None, :] - y[None, :, :]), -1)
  return jnp.exp(-l1 / bandwidth)


KERNELS: dict[str, Kernel] = {
    'gaussian': Kernel(_gaussian, jax.random.normal,
                       lambda bandwidth: 1 / (2 * bandwidth**2), 'rbf'),
    'laplacian': Kernel(_laplacian, jax.random.cauchy,
                        lambda bandwidth: 1 / bandwidth, 'laplacian',
                        distance_ord=1),
}


def get_kernel(name: str | Kernel) -> Kernel:
  """The kernel named ``name`` (a ``Kernel`` passes through); ``ValueError``
  names the accepted ones."""
  if isinstance(name, Kernel):
    return name
  return registry.get(KERNELS, name, 'kernel')


def sklearn_gamma(name: str, bandwidth: float) -> float:
  """scikit-learn's ``gamma`` for ``name`` at ``bandwidth``."""
  return get_kernel(name).gamma(bandwidth)


# --- Checks before anything is traced --------------------------------------


def _concrete(value) -> np.ndarray | None:
  if isinstance(value, jax.core.Tracer):
    return None
  return np.asarray(value)


def check_positive(name: str, value) -> None:
  """``ValueError`` unless every entry of a concrete ``value`` is a finite
  number > 0 (not a bool; tracers pass: they were checked where they were
  concrete)."""
  v = _concrete(value)
  if v is not None and not (jnp.issubdtype(v.dtype, jnp.integer)
                            or jnp.issubdtype(v.dtype, jnp.floating)):
    raise ValueError(f'{name}={value!r} ({v.dtype}); accepted: a finite '
                     'number > 0.')
  if v is not None and not (np.all(np.isfinite(v)) and np.all(v > 0)):
    bad = v.ravel()[~(np.isfinite(v.ravel()) & (v.ravel() > 0))][0].item()
    raise ValueError(f'{name}={bad!r}; accepted: a finite number > 0.')


def check_finite(name: str, x) -> None:
  """``ValueError`` if a concrete array has NaN or infinite entries."""
  v = _concrete(x)
  if v is not None and not np.all(np.isfinite(v)):
    count = int(np.sum(~np.isfinite(v)))
    raise ValueError(f'{name} has {count} non-finite entries; accepted: '
                     'finite data.')


def check_block_size(block_size: int | None) -> None:
  if block_size is not None and not (
      isinstance(block_size, (int, np.integer)) and block_size >= 1):
    raise ValueError(f'block_size={block_size!r}; accepted: an integer >= 1, '
                     'or None (default_block_size).')


# --- Row blocks -------------------------------------------------------------


def row_blocks(x: jax.Array, block_size: int, multiple: int = 1
               ) -> tuple[jax.Array, jax.Array]:
  """``x: [n, ...]`` padded with zero rows to whole blocks (and a multiple of
  ``multiple`` blocks): ``([num_blocks, block, ...], mask [num_blocks, block])``
  with ``mask`` 1 on real rows. A block is ``min(block_size, n)`` rows."""
  n = x.shape[0]
  block = min(block_size, n)
  num_blocks = -(-n // block)
  num_blocks = -(-num_blocks // multiple) * multiple
  pad = num_blocks * block - n
  padded = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
  mask = (jnp.arange(num_blocks * block) < n).astype(x.dtype)
  return (padded.reshape(num_blocks, block, *x.shape[1:]),
          mask.reshape(num_blocks, block))


def kernel_matrix(kernel: Kernel, x: jax.Array, y: jax.Array,
                  bandwidth: jax.Array, *,
                  block_size: int | None = None) -> jax.Array:
  """The exact ``K(x, y): [n, m]``, computed ``block_size`` rows at a time
  (None: ``default_block_size(m)``)."""
  check_block_size(block_size)
  blocks, _ = row_blocks(x, block_size or default_block_size(y.shape[0]))
  out = jax.lax.map(lambda b: kernel.pairwise(b, y, bandwidth), blocks)
  return out.reshape(-1, y.shape[0])[:x.shape[0]]


def kernel_matvec(kernel: Kernel, x: jax.Array, y: jax.Array, v: jax.Array,
                  bandwidth: jax.Array, *,
                  block_size: int | None = None) -> jax.Array:
  """``K(x, y) @ v`` (``v: [m]`` or ``[m, k]``) without forming ``K``:
  ``O(block_size * m)`` memory. Also the predictions ``K(x_new, centres) @
  coef`` of every kernel ridge model here."""
  check_block_size(block_size)
  blocks, _ = row_blocks(x, block_size or default_block_size(y.shape[0]))
  out = jax.lax.map(lambda b: kernel.pairwise(b, y, bandwidth) @ v, blocks)
  return out.reshape(-1, *v.shape[1:])[:x.shape[0]]


def _normal_matvec_local(kernel, axis, blocks, mask, v_blocks, centres, u,
                         bandwidth, tile):
  """Sum over this device's row blocks of ``K_bM^T (K_bM u + v_b)``; under
  ``shard_map`` over ``axis`` (else None) the sum varies along it. Each
  block is computed ``tile`` rows at a time (its kernel entries kept in
  cache) and summed on its own before it joins the total, so the float32
  sum has as few terms in a row as with whole blocks (with 16-row blocks
  alone, n=1e6 FALKON took 27 CG iterations instead of 8)."""
  def zeros():
    acc = jnp.zeros(u.shape, jnp.result_type(u, centres))
    return acc if axis is None else jax.lax.pcast(acc, (axis,), to='varying')

  def in_tiles(acc, inputs):
    b, m, vb = inputs
    k = kernel.pairwise(b, centres, bandwidth) * m[:, None]
    return acc + k.T @ (k @ u + vb), None

  def body(acc, inputs):
    tiles = [a.reshape(-1, tile, *a.shape[1:]) for a in inputs]
    return acc + jax.lax.scan(in_tiles, zeros(), tiles)[0], None
  return jax.lax.scan(body, zeros(), (blocks, mask, v_blocks))[0]


def normal_matvec(kernel: Kernel, x: jax.Array, centres: jax.Array,
                  u: jax.Array, v: jax.Array | None, bandwidth: jax.Array, *,
                  block_size: int | None = None,
                  mesh: jax.sharding.Mesh | None = None) -> jax.Array:
  """``K_nM^T (K_nM u + v)`` with ``K_nM = K(x, centres)``, never formed.

  Args:
    kernel: the kernel.
    x: ``[n, d]`` rows.
    centres: ``[M, d]``.
    u: ``[M]`` or ``[M, k]``.
    v: ``[n]`` / ``[n, k]`` like ``u``, or None for zeros.
    bandwidth: the kernel's bandwidth (traced).
    block_size: rows per block (None: ``ACCELERATOR_BLOCK_SIZE``), each
      computed in tiles of ``default_block_size(M)`` rows where that
      divides it; memory ``O(block_size * M)`` per device.
    mesh: a one-axis mesh (axis ``'rows'``) to shard the rows over, or None.

  Returns:
    ``[M]`` or ``[M, k]``.
  """
  check_block_size(block_size)
  block_size = block_size or ACCELERATOR_BLOCK_SIZE
  tile = min(block_size, default_block_size(centres.shape[0]), x.shape[0])
  if min(block_size, x.shape[0]) % tile:
    tile = min(block_size, x.shape[0])
  devices = 1 if mesh is None else mesh.size
  blocks, mask = row_blocks(x, block_size, devices)
  if v is None:
    v = jnp.zeros((x.shape[0], *u.shape[1:]), u.dtype)
  v_blocks, _ = row_blocks(v, block_size, devices)
  if mesh is None:
    return _normal_matvec_local(kernel, None, blocks, mask, v_blocks,
                                centres, u, bandwidth, tile)
  spec = jax.sharding.PartitionSpec
  rows = spec(ROWS)

  def sharded(blocks, mask, v_blocks, centres, u, bandwidth):
    local = _normal_matvec_local(kernel, ROWS, blocks, mask, v_blocks,
                                 centres, u, bandwidth, tile)
    return jax.lax.psum(local, ROWS)
  return jax.shard_map(sharded, mesh=mesh,
                       in_specs=(rows, rows, rows, spec(), spec(), spec()),
                       out_specs=spec())(blocks, mask, v_blocks, centres, u,
                                         bandwidth)


def row_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A one-axis mesh (``'rows'``) of the first ``num_devices`` local devices
  (all by default)."""
  devices = jax.local_devices()
  num = len(devices) if num_devices is None else num_devices
  if not 1 <= num <= len(devices):
    raise ValueError(f'num_devices={num}; accepted: 1..{len(devices)}.')
  return jax.sharding.Mesh(np.asarray(devices[:num]), (ROWS,))


def relative_frobenius_error(exact: jax.Array, approx: jax.Array
                             ) -> jax.Array:
  """``||exact - approx||_F / ||exact||_F``."""
  return jnp.linalg.norm(exact - approx) / jnp.linalg.norm(exact)

