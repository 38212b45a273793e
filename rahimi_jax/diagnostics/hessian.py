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

from rahimi_jax import linalg


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
    num_iters: Krylov depth; capped at the number of parameters.

  Returns:
    ``(nodes, weights)``: Ritz values ``[k]`` ascending and the squared first
    components of their eigenvectors ``[k]`` (quadrature weights, sum 1).
  """
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
    grid: ``[m]`` eigenvalue locations at which to evaluate the density.
    num_iters: Lanczos depth per probe.
    num_probes: random probes averaged.
    width: standard deviation of the Gaussian smoothing (default: 2% of the
      grid's span).

  Returns:
    ``[m]`` density values (integrating to ~1 over a grid covering the
    spectrum).
  """
  width = width or 0.02 * (grid[-1] - grid[0])
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
  Hessian without the residual-weighted second derivatives), formed
  explicitly: for small models. Its null space holds every direction that
  leaves the residuals unchanged to first order (a model's symmetries).
  """
  flat, unravel = ravel_pytree(params)
  jac = jax.jacfwd(lambda f: jnp.ravel(residual_fn(unravel(f))))(flat)
  return linalg.eigh(jac.T @ jac)[0]


def restricted_hessian(loss_fn, params, directions: jax.Array) -> jax.Array:
  """Eigenvalues (ascending) of the Hessian on the complement of ``directions``.

  ``C^T H C`` with ``C`` an orthonormal basis of the orthogonal complement
  of the rows of ``directions: [k, n]`` (flattened like ``ravel_pytree``;
  assumed linearly independent, so the complement has ``n - k`` dimensions):
  the curvature of the loss with the moves along ``directions`` (e.g. a
  symmetry's orbit, which no loss value distinguishes) quotiented out.
  The Hessian is formed explicitly: for small models.

  Returns:
    ``[n - k]`` eigenvalues.
  """
  k, n = directions.shape
  _, basis = linalg.eigh(directions.T @ directions)  # ascending: null first
  complement = basis[:, :n - k]
  hessian = _flat_hessian(loss_fn, params)
  return linalg.eigh(complement.T @ hessian @ complement)[0]
