"""Curvature diagnostics from Hessian-vector products, vmappable.

All functions take ``loss_fn(params) -> scalar`` and never form the Hessian:
Hessian-vector products are forward-over-reverse (``jax.jvp`` of
``jax.grad``), the Krylov basis comes from Lanczos with full
reorthogonalization that restarts where the Krylov space closes (``_lanczos``),
and the spectral density is stochastic Lanczos quadrature (Ubaru, Chen & Saad
2017; Ghorbani, Krishnan & Xiao 2019).

``hvp`` and ``gradient_norm`` are differentiable (the tests check their
derivatives against finite differences). The Lanczos-based functions are not
reverse-differentiable: ``linalg.eigh`` (a sequential vmap) has no transpose.
"""

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
import numpy as np

from rahimi_jax import linalg
from rahimi_jax import registry


def hvp(loss_fn, params, v):
  """The Hessian of ``loss_fn`` at ``params`` times ``v`` (same pytree)."""
  return jax.jvp(jax.grad(loss_fn), (params,), (v,))[1]


def gradient_norm(loss_fn, params) -> jax.Array:
  """The Euclidean norm of the gradient over all parameters."""
  flat, _ = ravel_pytree(jax.grad(loss_fn)(params))
  return jnp.linalg.norm(flat)


def condition_number(matrix: jax.Array) -> jax.Array:
  """Ratio of the largest to the smallest singular value of ``matrix``."""
  s = jnp.linalg.svd(matrix, compute_uv=False)
  return s[0] / s[-1]


def _flat_hvp(loss_fn, params):
  flat, unravel = ravel_pytree(params)

  def matvec(v):
    return ravel_pytree(hvp(loss_fn, params, unravel(v)))[0]

  return flat, matvec


def _lanczos(matvec, start: jax.Array, k: int, key: jax.Array) -> jax.Array:
  """The ``[k, k]`` tridiagonal matrix of ``k`` Lanczos steps from unit
  ``start``, each new vector orthogonalized against all before (twice).

  Where the Krylov space closes (the next vector's norm ``beta`` at rounding
  level: a Hessian with repeated eigenvalues, ``I``, ``0``) the next vector
  is random, orthogonal to the basis, and ``T``'s coupling there is 0: ``T``
  is block diagonal, its later blocks Lanczos on the rest of the space, so
  ``k = n`` steps give every eigenvalue with its multiplicity, and the later
  blocks' Ritz values weigh 0 in the start vector's quadrature. (matfree's
  ``tridiag_sym``, used before, normalized the rounding noise instead: Ritz
  values -0.80 ... 2.80 for ``H = I``, and NaN for a zero Hessian.)
  """
  n = start.shape[0]
  dtype = start.dtype
  # A norm below this share of ||T|| so far is rounding: two passes of
  # reorthogonalization leave ~eps ||w|| of the basis's directions.
  tol = 16 * jnp.sqrt(n) * jnp.finfo(dtype).eps

  def orthogonal(basis, v):
    for _ in range(2):  # twice is enough (Kahan, Parlett)
      v = v - basis.T @ (basis @ v)
    return v

  def step(carry, j):
    basis, q, scale = carry
    basis = basis.at[j].set(q)  # rows past j are still 0
    w = matvec(q)
    alpha = jnp.vdot(q, w)
    w = orthogonal(basis, w)
    beta = jnp.linalg.norm(w)
    scale = jnp.maximum(scale, jnp.maximum(jnp.abs(alpha), beta))
    closed = beta <= tol * scale
    fresh = orthogonal(basis, jax.random.normal(jax.random.fold_in(key, j),
                                                (n,), dtype))
    tiny = jnp.finfo(dtype).tiny
    q = jnp.where(closed, fresh / jnp.maximum(jnp.linalg.norm(fresh), tiny),
                  w / jnp.maximum(beta, tiny))
    return (basis, q, scale), (alpha, jnp.where(closed, 0, beta))

  init = (jnp.zeros((k, n), dtype), start, jnp.zeros((), dtype))
  _, (alphas, betas) = jax.lax.scan(step, init, jnp.arange(k))
  return (jnp.diag(alphas) + jnp.diag(betas[:-1], 1)
          + jnp.diag(betas[:-1], -1))


def lanczos(loss_fn, params, key, num_iters: int):
  """Lanczos on the Hessian from a random start.

  Args:
    loss_fn: ``params -> scalar``.
    params: the point.
    key: PRNG key of the starting vector.
    num_iters: Krylov depth, >= 1; capped at the number of parameters.

  Returns:
    ``(nodes, weights)``: Ritz values ``[k]`` ascending and the squared first
    components of their eigenvectors ``[k]`` (quadrature weights, sum 1).
  """
  num_iters = registry.check_int('num_iters', num_iters, 1)
  flat, matvec = _flat_hvp(loss_fn, params)
  k = min(num_iters, flat.size)
  start_key, restart_key = jax.random.split(key)
  start = jax.random.normal(start_key, flat.shape, flat.dtype)
  start = start / jnp.linalg.norm(start)
  nodes, vecs = linalg.eigh(_lanczos(matvec, start, k, restart_key))
  return nodes, vecs[0] ** 2


def hessian_eigenvalues(loss_fn, params, key, num_iters: int = 32):
  """Ritz values of the Hessian, ascending.

  The extremes converge first: with ``num_iters`` at least the number of
  parameters they are the exact eigenvalues (up to rounding), repeated ones
  with their multiplicity.
  """
  return lanczos(loss_fn, params, key, num_iters)[0]


def hessian_density(loss_fn, params, key, grid: jax.Array, *,
                    num_iters: int = 32, num_probes: int = 8,
                    width: float | None = None) -> jax.Array:
  """Stochastic Lanczos quadrature estimate of the eigenvalue density.

  Args:
    loss_fn: ``params -> scalar``.
    params: the point.
    key: PRNG key of the probe vectors.
    grid: ``[m]`` eigenvalue locations at which to evaluate the density,
      strictly increasing, ``m >= 2`` (checked where the grid is concrete).
    num_iters: Lanczos depth per probe, >= 1.
    num_probes: random probes averaged, >= 1.
    width: standard deviation of the Gaussian smoothing, > 0 (default: 2% of
      the grid's span).

  Returns:
    ``[m]`` density values (integrating to ~1 over a grid covering the
    spectrum).
  """
  num_iters = registry.check_int('num_iters', num_iters, 1)
  num_probes = registry.check_int('num_probes', num_probes, 1)
  if not isinstance(grid, jax.core.Tracer):
    points = np.asarray(grid)
    if (points.ndim != 1 or points.size < 2
        or not np.all(np.diff(points) > 0)):
      raise ValueError(f'grid must be a strictly increasing [m >= 2] array; '
                       f'got shape {points.shape}, from {points[:1]} to '
                       f'{points[-1:]}.')
  if width is None:
    width = 0.02 * (jnp.max(grid) - jnp.min(grid))
  elif not isinstance(width, jax.core.Tracer) and not (
      np.isfinite(width) and width > 0):
    raise ValueError(f'width must be a finite number > 0; got {width!r}.')
  nodes, weights = jax.vmap(lambda k: lanczos(loss_fn, params, k, num_iters))(
      jax.random.split(key, num_probes))
  kernel = jnp.exp(-0.5 * ((grid[:, None, None] - nodes) / width) ** 2)
  kernel = kernel / (width * jnp.sqrt(2 * jnp.pi))
  return jnp.mean(jnp.sum(kernel * weights, axis=-1), axis=-1)


def _flat_hessian(loss_fn, params):
  flat, unravel = ravel_pytree(params)
  return jax.hessian(lambda f: loss_fn(unravel(f)))(flat)


def gauss_newton_eigenvalues(residual_fn, params) -> jax.Array:
  """Eigenvalues (ascending) of ``J^T J``, ``J`` the residuals' Jacobian.

  The Gauss–Newton matrix of ``0.5 ||residual_fn(params)||^2`` (the
  Hessian without the residual-weighted second derivatives), for small
  models: ``J`` is formed explicitly, and the eigenvalues are its squared
  singular values (zero-padded to ``n`` where ``J`` has fewer rows than
  columns). ``J^T J`` is never formed: its eigendecomposition would square
  ``J``'s condition number (float32, ``J`` with singular values 1 ... 1e-4:
  smallest eigenvalue 4.99e-8 for 1e-8). Its null space holds every
  direction that leaves the residuals unchanged to first order (a model's
  symmetries).

  Returns:
    ``[n]`` eigenvalues, ``n`` the number of parameters.
  """
  flat, unravel = ravel_pytree(params)
  jac = jax.jacfwd(lambda f: jnp.ravel(residual_fn(unravel(f))))(flat)
  s = linalg.svd(jac)[1]                              # [min(m, n)] descending
  s = jnp.concatenate([s, jnp.zeros(flat.size - s.size, s.dtype)])
  return jnp.sort(s * s)


def restricted_hessian(loss_fn, params, directions: jax.Array, *,
                       rtol: float | None = None) -> jax.Array:
  """Eigenvalues (ascending) of the Hessian on the complement of ``directions``.

  ``C^T H C`` with ``C`` an orthonormal basis of the orthogonal complement
  of the rows of ``directions: [k, n]`` (flattened like ``ravel_pytree``;
  ``k <= n``): the curvature of the loss with the moves along ``directions``
  (e.g. a symmetry's orbit, which no loss value distinguishes) quotiented
  out. ``C`` is the right singular vectors of ``directions`` past the
  ``k``-th (not ``eigh(D^T D)``, which squares the condition number: rows of
  scale 1 and 1e-4 in float32 left a row in the "complement"). The Hessian
  is formed explicitly: for small models.

  Args:
    loss_fn: ``params -> scalar``.
    params: the point.
    directions: ``[k, n]``, linearly independent rows (of any scales).
    rtol: rows (each scaled to unit norm) whose ``k``-th singular value is
      at most ``rtol`` times the largest count as dependent (default
      ``max(k, n) * eps``, numpy's ``matrix_rank``).

  Returns:
    ``[n - k]`` eigenvalues; all NaN where the rows are dependent (their
    complement then has more than ``n - k`` dimensions).
  """
  k, n = directions.shape
  if k > n:
    raise ValueError(f'directions has {k} rows of {n} entries: more than {n} '
                     'rows are never linearly independent.')
  flat, _ = ravel_pytree(params)
  if flat.size != n:
    raise ValueError(f'directions has rows of {n} entries; params have '
                     f'{flat.size}.')
  dtype = jnp.result_type(directions.dtype, flat.dtype)
  eps = jnp.finfo(dtype).eps
  rtol = max(k, n) * eps if rtol is None else rtol
  # Each row scaled to unit norm (the same span; dependence then reads as a
  # small singular value whatever the rows' scales), padded to [n, n] with
  # zero rows: all n right singular vectors, the last n - k the complement.
  rows = directions.astype(dtype)
  rows = rows / jnp.maximum(jnp.linalg.norm(rows, axis=1, keepdims=True),
                            jnp.finfo(dtype).tiny)
  padded = jnp.zeros((n, n), dtype).at[:k].set(rows)
  _, s, vt = linalg.svd(padded)
  complement = vt[k:].T                                   # [n, n - k]
  hessian = _flat_hessian(loss_fn, params)
  values = linalg.eigh(complement.T @ hessian @ complement)[0]
  if k == 0:
    return values
  dependent = s[k - 1] <= rtol * s[0]
  return jnp.where(dependent, jnp.nan, values)
