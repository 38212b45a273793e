"""Gauss–Newton and Levenberg–Marquardt for least squares, matrix-free.

For a loss ``0.5 * ||r(p)||^2`` with Jacobian ``J = dr/dp``, each step solves

  (J^T J + damping * I) delta = -J^T r

by conjugate gradients (``jax.scipy.sparse.linalg.cg``) using only
Jacobian–vector and vector–Jacobian products (``jax.linearize`` and its
transpose): the Jacobian is never formed, so the cost per CG iteration is about
two passes through the model. Levenberg–Marquardt accepts a step only if the
loss falls and adapts the damping from the ratio of actual to predicted
reduction (Nielsen's rule); Gauss–Newton always takes the step with a fixed,
tiny damping that only regularizes the (often singular) normal equations.

Both are optax ``GradientTransformationExtraArgs``: ``update(grads, state,
params, residual_fn=...)`` where ``residual_fn(params) -> r`` (any shape). The
gradient argument is not used (the step needs the residual function), so they
drop into the ablation grid's optimizer axis for least-squares tasks.

References:
  Levenberg (1944); Marquardt (1963); Nielsen, "Damping parameter in
  Marquardt's method" (1999); Nocedal & Wright, Numerical Optimization, 10.3.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class LeastSquaresState(NamedTuple):
  damping: jax.Array  # [] current damping (lambda)
  growth: jax.Array   # [] factor by which damping grows on the next rejection
  accepted: jax.Array  # [] whether the last step was taken


def _vdot(a, b):
  return sum(jnp.vdot(x, y) for x, y in
             zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _flat_residual(residual_fn):
  return lambda p: jnp.ravel(residual_fn(p))


def gauss_newton_direction(residual_fn, params, damping, *, maxiter=None,
                           tol=1e-10):
  """Solves ``(J^T J + damping I) delta = -J^T r`` matrix-free by CG.

  Args:
    residual_fn: ``params -> residuals``.
    params: the point ``p``.
    damping: ``lambda >= 0``.
    maxiter: CG iterations (default: the number of parameters, which is
      exact in exact arithmetic; in floating point an ill-conditioned system
      needs more).
    tol: CG relative tolerance.

  Returns:
    ``(delta, r, jvp, grad)``: the step, the residuals at ``p``,
    ``v -> J v`` and the gradient ``J^T r`` of ``0.5 ||r||^2``.
    Derivatives of ``delta`` are those of the exact solution (implicit
    differentiation of the linear solve), so they match its finite
    differences only where CG has converged.
  """
  r, jvp = jax.linearize(_flat_residual(residual_fn), params)
  vjp = jax.linear_transpose(jvp, params)
  grad = vjp(r)[0]

  def normal_matvec(v):
    return jax.tree.map(lambda jtjv, v: jtjv + damping * v, vjp(jvp(v))[0], v)

  n = sum(x.size for x in jax.tree.leaves(params))
  delta, _ = jax.scipy.sparse.linalg.cg(
      normal_matvec, jax.tree.map(jnp.negative, grad), tol=tol,
      maxiter=maxiter or n)
  return delta, r, jvp, grad


def _least_squares(*, initial_damping: float, adaptive: bool,
                   min_damping: float, max_damping: float, maxiter, tol):

  def init(params):
    del params
    return LeastSquaresState(jnp.asarray(initial_damping, jnp.float32),
                             jnp.asarray(2.0, jnp.float32),
                             jnp.asarray(True))

  def update(grads, state, params=None, *, residual_fn=None, **extra_args):
    del grads, extra_args
    if params is None or residual_fn is None:
      raise ValueError('Gauss–Newton / Levenberg–Marquardt need params and '
                       'residual_fn=...: they apply to least-squares losses '
                       '(regression tasks) only.')
    damping = state.damping.astype(jax.tree.leaves(params)[0].dtype)
    delta, r, jvp, grad = gauss_newton_direction(
        residual_fn, params, damping, maxiter=maxiter, tol=tol)
    if not adaptive:
      return delta, state._replace(accepted=jnp.asarray(True))
    loss = 0.5 * jnp.vdot(r, r)
    trial = jnp.ravel(residual_fn(optax.apply_updates(params, delta)))
    actual = loss - 0.5 * jnp.vdot(trial, trial)
    j_delta = jvp(delta)
    predicted = -_vdot(grad, delta) - 0.5 * jnp.vdot(j_delta, j_delta)
    rho = actual / predicted
    accept = jnp.isfinite(rho) & (rho > 0) & (predicted > 0)
    shrink = jnp.maximum(1 / 3, 1 - (2 * rho - 1) ** 3)
    new_damping = jnp.where(accept, state.damping * shrink,
                            state.damping * state.growth)
    new_damping = jnp.clip(new_damping, min_damping, max_damping)
    growth = jnp.where(accept, 2.0, 2.0 * state.growth).astype(jnp.float32)
    updates = jax.tree.map(lambda d: jnp.where(accept, d, jnp.zeros_like(d)),
                           delta)
    return updates, LeastSquaresState(new_damping.astype(jnp.float32),
                                      jnp.minimum(growth, 1e6), accept)

  return optax.GradientTransformationExtraArgs(init, update)


def levenberg_marquardt(*, initial_damping: float = 1e-3,
                        min_damping: float = 1e-15, max_damping: float = 1e15,
                        maxiter: int | None = None, tol: float = 1e-10
                        ) -> optax.GradientTransformationExtraArgs:
  """Levenberg–Marquardt with Nielsen's damping update.

  Args:
    initial_damping: the damping of the first step.
    min_damping: lower clip of the damping.
    max_damping: upper clip of the damping.
    maxiter: CG iterations per step (default: number of parameters).
    tol: CG relative tolerance.

  Returns:
    An optax transformation whose ``update`` needs ``residual_fn=``.
  """
  return _least_squares(initial_damping=initial_damping, adaptive=True,
                        min_damping=min_damping, max_damping=max_damping,
                        maxiter=maxiter, tol=tol)


def gauss_newton(*, damping: float = 1e-10, maxiter: int | None = None,
                 tol: float = 1e-10) -> optax.GradientTransformationExtraArgs:
  """Gauss–Newton: always steps, with a fixed tiny damping."""
  return _least_squares(initial_damping=damping, adaptive=False,
                        min_damping=damping, max_damping=damping,
                        maxiter=maxiter, tol=tol)
