"""Random Fourier features (Rahimi & Recht) and Nyström features.

Random Fourier features of a shift-invariant kernel ``k(x - y)``:

  phi(x) = sqrt(2 / D) cos(x W / sigma + b),   W ~ p (unit bandwidth),
                                               b ~ U[0, 2 pi),

so ``phi(x) . phi(y)`` is an unbiased estimate of ``k(x - y)`` with standard
deviation ``O(1 / sqrt(D))``. The draw (``RFF``) is made once at the largest
number of features ``max_features`` and at unit bandwidth; ``rff_features``
divides by the (traced) bandwidth and keeps the first ``num_features``
columns by a mask (the others are exactly 0), so the number of features is a
traced value too: a sweep over (features, bandwidth, ridge, seed) is one
``vmap``, at the cost of computing ``max_features`` columns for every member.
Smaller numbers of features use a prefix of the same draw (nested designs,
paired across the sweep).

Nyström features ``phi(x) = K(x, C) K_CC^{-1/2}`` (eigenvalues below
``sqrt(M) * eps * max`` dropped: in float32 they are rounding noise, the most
negative eigenvalue of a rank-deficient ``K_CC`` was 0.7-1.4 ``eps * max``
for M = 50..1000; scikit-learn's ``Nystroem`` clamps them at 1e-12 instead)
give ``phi(x) . phi(y) = K(x, C) K_CC^+ K(C, y)``. The earlier cutoff ``M *
eps * max`` grew like ``M^2`` (``max`` grows like ``M``): on digits at M =
1024 it kept 243 of 1024 eigenvalues, all of them at least 3.9 ``eps *
max``, fewer than at M = 512 (306).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rahimi_jax import linalg
from rahimi_jax.kernels import kernels as kernels_lib


class RFF(NamedTuple):
  """A random Fourier feature draw at unit bandwidth."""
  frequencies: jax.Array  # [d, max_features]
  phases: jax.Array       # [max_features]


def check_num_features(num_features, max_features: int,
                       name: str = 'num_features',
                       most: str = 'max_features') -> None:
  """``ValueError`` unless a concrete ``num_features`` is a whole number in
  1..max (2.5 would keep 3 columns but scale them by ``sqrt(2 / 2.5)``);
  the message calls it ``name`` and the max ``most``."""
  v = kernels_lib._concrete(num_features)  # pylint: disable=protected-access
  if v is not None and not (v.dtype != np.bool_ and (v >= 1).all()
                            and (v <= max_features).all()
                            and (v == np.floor(v)).all()):
    raise ValueError(f'{name}={v.tolist()!r}; accepted: integers in '
                     f'1..{max_features} ({most}).')


def prefix_mask(num, most: int, name: str = 'num_features',
                most_name: str = 'max_features') -> tuple[Any, jax.Array]:
  """``(num, keep)``: ``num`` (``None``: ``most``) checked by
  ``check_num_features``, and ``keep``, ``[most]`` booleans true for the
  first ``num`` (traced): how a draw of ``most`` features, centres or grids
  serves every smaller size in one ``vmap``."""
  if num is None:
    num = most
  check_num_features(num, most, name, most_name)
  return num, jnp.arange(most) < num


def draw_rff(key: jax.Array, kernel: kernels_lib.Kernel, in_dim: int,
             max_features: int, dtype=jnp.float32) -> RFF:
  """Frequencies from ``kernel``'s spectral density and uniform phases."""
  if not (isinstance(max_features, int) and max_features >= 1):
    raise ValueError(f'max_features={max_features!r}; accepted: an integer '
                     '>= 1.')
  k_w, k_b = jax.random.split(key)
  w = kernel.sample_frequencies(k_w, (in_dim, max_features)).astype(dtype)
  b = jax.random.uniform(k_b, (max_features,), dtype, 0, 2 * jnp.pi)
  return RFF(w, b)


def rff_features(rff: RFF, x: jax.Array, bandwidth: jax.Array,
                 num_features: jax.Array | int | None = None) -> jax.Array:
  """``phi(x): [n, max_features]``, columns from ``num_features`` on zero.

  Args:
    rff: the draw.
    x: ``[n, d]``.
    bandwidth: traced; the frequencies are divided by it.
    num_features: traced ``D`` (default: all ``max_features``).

  Returns:
    ``[n, max_features]`` features; ``phi(x) @ phi(y).T`` estimates
    ``K(x, y)``.
  """
  num_features, mask = prefix_mask(num_features, rff.phases.shape[0])
  kernels_lib.check_positive('bandwidth', bandwidth)
  kernels_lib.check_finite('x', x)
  scale = jnp.sqrt(2 / jnp.asarray(num_features, x.dtype))
  z = x @ (rff.frequencies / bandwidth) + rff.phases
  return jnp.where(mask, scale * jnp.cos(z), 0)


def rff_kernel(rff: RFF, x: jax.Array, y: jax.Array, bandwidth: jax.Array,
               num_features: jax.Array | int | None = None) -> jax.Array:
  """The random-feature approximation ``phi(x) @ phi(y).T: [n, m]``;
  differentiable in ``bandwidth``."""
  return (rff_features(rff, x, bandwidth, num_features)
          @ rff_features(rff, y, bandwidth, num_features).T)


def choose_centres(key: jax.Array, n: int, num_centres: int) -> jax.Array:
  """``num_centres`` distinct row indices of ``n``, uniformly at random."""
  if not (isinstance(num_centres, int) and 1 <= num_centres <= n):
    raise ValueError(f'num_centres (M)={num_centres!r} with n={n} rows; '
                     f'accepted: an integer in 1..{n} (M <= n).')
  return jax.random.permutation(key, n)[:num_centres]


class Nystrom(NamedTuple):
  """Nyström features of a set of centres: ``phi(x) = (K(x, C) * keep) @
  projection``."""
  centres: jax.Array     # [M, d]
  keep: jax.Array        # [M] 1 for the centres used, 0 for masked ones
  projection: jax.Array  # [M, M] K_CC^{-1/2} (pseudo-inverse square root)


def nystrom(kernel: kernels_lib.Kernel, centres: jax.Array,
            bandwidth: jax.Array, num_centres: jax.Array | int | None = None
            ) -> Nystrom:
  """The Nyström map of ``centres``; one eigendecomposition of ``K_CC``.

  ``num_centres`` (traced, default all) keeps the first that many centres:
  the others' kernel columns are masked to 0 and their block of ``K_CC``
  replaced by the identity, so ``phi(x) . phi(y)`` is exactly the Nyström
  kernel of the kept centres (a sweep over ``M`` is one ``vmap``, each member
  at the cost of the largest).
  """
  kernels_lib.check_positive('bandwidth', bandwidth)
  kernels_lib.check_finite('centres', centres)
  m = centres.shape[0]
  keep = prefix_mask(num_centres, m, 'num_centres', 'the centres given'
                     )[1].astype(centres.dtype)
  k_cc = (kernel.pairwise(centres, centres, bandwidth) * keep[:, None] * keep
          + jnp.diag(1 - keep))
  s, u = linalg.eigh(k_cc)
  positive = s > jnp.finfo(s.dtype).eps * s[-1] * np.sqrt(m)
  root = jnp.where(positive, 1 / jnp.sqrt(jnp.where(positive, s, 1)), 0)
  return Nystrom(centres, keep, u * root)


def nystrom_apply(kernel: kernels_lib.Kernel, nys: Nystrom, x: jax.Array,
                  bandwidth: jax.Array, *,
                  block_size: int | None = None
                  ) -> jax.Array:
  """``phi(x): [n, M]`` for a ``Nystrom`` map made at ``bandwidth``."""
  kernels_lib.check_finite('x', x)
  k_nc = kernels_lib.kernel_matrix(kernel, x, nys.centres, bandwidth,
                                   block_size=block_size)
  return (k_nc * nys.keep) @ nys.projection


def nystrom_features(kernel: kernels_lib.Kernel, x: jax.Array,
                     centres: jax.Array, bandwidth: jax.Array,
                     num_centres: jax.Array | int | None = None, *,
                     block_size: int | None = None
                     ) -> jax.Array:
  """``K(x, C) K_CC^{-1/2}: [n, M]`` (``nystrom`` then ``nystrom_apply``)."""
  return nystrom_apply(kernel, nystrom(kernel, centres, bandwidth,
                                       num_centres), x, bandwidth,
                       block_size=block_size)
