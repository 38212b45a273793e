"""Gauss–Newton and Levenberg–Marquardt for least squares, as optax steps.

For a loss ``0.5 * ||r(p)||^2`` with Jacobian ``J = dr/dp``, each step solves

  (J^T J + mu I) delta = -J^T r

and moves ``p`` by ``delta``. Gauss–Newton takes ``mu = 0`` and the
minimum-norm solution ``delta = -J^+ r``: on an over-parametrized model (a
deep linear network, whose symmetry ``W_1 -> W_1 G, W_2 -> G^{-1} W_2`` is an
exact null space of ``J``) that is the textbook step, quadratically convergent
on a realizable problem. Levenberg–Marquardt accepts a step only if the loss
falls and divides or multiplies the damping by 10 (Marquardt's rule). Its
damping is relative, ``mu = damping * scale`` with
``scale`` the largest curvature of ``J^T J`` (Marquardt's scale invariance),
and floored at the dtype's epsilon, below which it would only amplify
rounding.

Two solvers of the same equations (``solver=``):

* ``'dense'``: the Jacobian ``[m, n]`` from ``n`` Jacobian–vector products and
  its thin SVD (of ``R`` from the QR of ``[J | r]`` where ``m > n``);
  ``delta = -V diag(s / (s^2 + mu)) U^T r`` with singular values
  below ``rcond * s_max`` (default ``n * eps``) counted as zero: the
  truncated pseudo-inverse's step, to rounding, however ill-conditioned
  ``J`` is (a ``J`` whose condition number passes ``1 / rcond``, ~4e5 at
  ``n = 20`` in float32, is solved as rank-deficient: its flattest
  directions are dropped, not solved), and every damping costs one
  matrix-vector product once the SVD is known. For small problems (the
  talk's network: ``m = 10000`` residuals, ``n = 96`` parameters).
* ``'cg'``: matrix-free conjugate gradients on the normal equations, using
  only ``jax.linearize`` and its transpose; the Jacobian is never formed, so
  it scales to large models, but CG on ``J^T J`` sees the square of ``J``'s
  condition number and stops at ``maxiter`` (default ``2 n``) or a relative
  residual of ``tol`` (default ``eps**0.75``): on badly conditioned problems
  it is the weaker solver.

``'auto'`` (the default) picks ``'dense'`` when ``n <= 512`` and the
Jacobian has at most ``2**22`` entries, ``'cg'`` otherwise.

Both transformations are optax ``GradientTransformationExtraArgs``:
``update(grads, state, params, residual_fn=...)`` where ``residual_fn(params)
-> r`` (any shape). The gradient argument is not used (the step needs the
residual function), so they drop into the ablation grid's optimizer axis for
least-squares tasks. Derivatives of a step are those of the exact solution of
the damped normal equations (implicit differentiation of the linear solve).

References:
  Levenberg (1944); Marquardt (1963); Nielsen, "Damping parameter in
  Marquardt's method" (1999); Madsen, Nielsen & Tingleff, "Methods for
  non-linear least squares problems" (2004), 3.2; Nocedal & Wright, Numerical
  Optimization, 10.3; Golub & Van Loan, Matrix Computations, 5.5.
"""

from collections.abc import Callable
import math
from typing import Any, NamedTuple

import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp
import numpy as np
import optax

from rahimi_jax import linalg
from rahimi_jax import registry

SOLVERS = ('auto', 'dense', 'cg')
DENSE_MAX_PARAMS = 512
DENSE_MAX_ENTRIES = 2**22


class LeastSquaresState(NamedTuple):
  damping: jax.Array   # [] relative damping: mu = damping * scale
  accepted: jax.Array  # [] whether the last step was taken


class Linearization(NamedTuple):
  """The residual's first-order model at ``params`` and its step solver.

  Attributes:
    residuals: ``r`` flattened, ``[m]``.
    jvp: ``v -> J v`` (``v`` a params pytree, result ``[m]``).
    grad: ``J^T r``, the gradient of ``0.5 ||r||^2`` (params pytree).
    scale: the largest eigenvalue of ``J^T J`` (``'dense'``: exact;
      ``'cg'``: the Rayleigh quotient at the gradient, a lower bound).
    solve: ``mu -> delta`` solving ``(J^T J + mu I) delta = -J^T r``
      (minimum-norm where ``J^T J + mu I`` is singular).
  """
  residuals: jax.Array
  jvp: Callable[[Any], jax.Array]
  grad: Any
  scale: jax.Array
  solve: Callable[[jax.Array], Any]


def _vdot(a, b):
  return sum(jnp.vdot(x, y) for x, y in
             zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _svd_and_projection(jac, r):
  """``(U^T r, s, V^T)`` of ``jac``'s thin SVD ``U diag(s) V^T``.

  A tall ``jac`` (``m > n``) is reduced first, as LAPACK's SVD itself does:
  the QR of ``[jac | r]`` gives ``R``, whose first ``n`` columns are
  ``Q^T jac`` (the same singular values and right vectors) and whose last
  is ``Q^T r``; then the ``n x n`` SVD. ``U`` (``m x n``) is never formed:
  the talk's network's ``[10000, 96]`` Jacobian in float64, 49 -> 25 ms on a
  2-core Intel Xeon.
  """
  m, n = jac.shape
  if m <= n:
    u, s, vt = linalg.svd(jac)
    return u.T @ r, s, vt
  rr = linalg.qr_r(jnp.concatenate([jac, r[:, None]], 1))       # [n + 1, n + 1]
  u, s, vt = linalg.svd(rr[:n, :n])
  return u.T @ rr[:n, n], s, vt


def check_solver(solver: str) -> str:
  if solver not in SOLVERS:
    raise ValueError(f'Unknown least-squares solver {solver!r}; accepted: '
                     f'{", ".join(SOLVERS)}.')
  return solver


def _is_number(value) -> bool:
  return (isinstance(value, (int, float, np.integer, np.floating))
          and not isinstance(value, bool))


def _check_options(*, maxiter: int | None = None, tol: float | None = None,
                  rcond: float | None = None) -> None:
  """Raises ``ValueError`` on a bad solver option (None: the default)."""
  if maxiter is not None:
    registry.check_int('maxiter (CG iterations)', maxiter, 1)
  if tol is not None and not (_is_number(tol) and math.isfinite(tol)
                              and tol > 0):
    raise ValueError(f'tol (CG relative residual) must be a finite number > '
                     f'0; got {tol!r}.')
  if rcond is not None and not (_is_number(rcond) and math.isfinite(rcond)
                                and rcond >= 0):
    raise ValueError(f'rcond (the singular-value cutoff relative to the '
                     f'largest) must be a finite number >= 0; got {rcond!r}.')


def _pick(solver, n, m):
  if solver != 'auto':
    return solver
  return ('dense' if n <= DENSE_MAX_PARAMS and n * m <= DENSE_MAX_ENTRIES
          else 'cg')


def linearize(residual_fn, params, *, solver: str = 'auto',
              maxiter: int | None = None, tol: float | None = None,
              rcond: float | None = None) -> Linearization:
  """Linearizes ``residual_fn`` at ``params``; see the module docstring.

  Args:
    residual_fn: ``params -> residuals`` (any shape).
    params: the point ``p`` (a pytree of float arrays of one dtype).
    solver: ``'auto'``, ``'dense'`` or ``'cg'``.
    maxiter: CG iterations (default ``2 n``).
    tol: CG relative residual tolerance (default ``eps**0.75``).
    rcond: dense: singular values ``<= rcond * s_max`` count as zero (default
      ``n * eps``).

  Returns:
    A ``Linearization``.
  """
  check_solver(solver)
  _check_options(maxiter=maxiter, tol=tol, rcond=rcond)
  flat_params, unravel = ravel_pytree(params)
  dtype = flat_params.dtype
  eps = jnp.finfo(dtype).eps
  n = flat_params.size
  r, jvp = jax.linearize(lambda p: jnp.ravel(residual_fn(p)), params)
  vjp = jax.linear_transpose(jvp, params)
  grad = vjp(r)[0]
  flat_grad = ravel_pytree(grad)[0]

  def normal_matvec(mu):
    def matvec(v):  # flat v -> (J^T J + mu I) v, matrix-free
      return ravel_pytree(vjp(jvp(unravel(v)))[0])[0] + mu * v
    return matvec

  if _pick(solver, n, r.size) == 'dense':
    jac = jax.vmap(lambda v: jvp(unravel(v)), out_axes=1)(
        jnp.eye(n, dtype=dtype))                                 # [m, n]
    ur, s, vt = _svd_and_projection(jax.lax.stop_gradient(jac),
                                    jax.lax.stop_gradient(r))
    cutoff = (n * eps if rcond is None else rcond) * s[0]
    keep = s > cutoff
    # s_max^2 as the Rayleigh quotient at the top singular vector: the same
    # value, with the eigenvalue's derivative (the quotient is stationary).
    j_top = jvp(unravel(vt[0]))
    scale = jnp.vdot(j_top, j_top)

    def solve(mu):
      mu = jnp.asarray(mu, dtype)
      denom = jnp.where(keep, s * s + mu, 1)
      # The value: V diag(s / (s^2 + mu)) U^T r, from J's SVD (no squared
      # condition number). The derivatives: implicit differentiation of the
      # normal equations, whose solve is the same pseudo-inverse.
      value = -(vt.T @ (jnp.where(keep, s / denom, 0) * ur))
      implicit = jax.lax.custom_linear_solve(
          normal_matvec(mu), -flat_grad,
          lambda _, b: vt.T @ (jnp.where(keep, 1 / denom, 0) * (vt @ b)),
          symmetric=True)
      return unravel(implicit + jax.lax.stop_gradient(value - implicit))
  else:
    jg = jvp(grad)
    gg = jnp.vdot(flat_grad, flat_grad)
    scale = jnp.where(gg > 0, jnp.vdot(jg, jg) / jnp.where(gg > 0, gg, 1), 1)

    def solve(mu):
      mu = jnp.asarray(mu, dtype)
      delta, _ = jax.scipy.sparse.linalg.cg(
          normal_matvec(mu), -flat_grad,
          tol=eps**0.75 if tol is None else tol,
          maxiter=2 * n if maxiter is None else maxiter)
      return unravel(delta)

  return Linearization(r, jvp, grad, scale, solve)


def gauss_newton_direction(residual_fn, params, damping, **kwargs):
  """Solves ``(J^T J + damping I) delta = -J^T r`` (``damping`` absolute).

  Args:
    residual_fn: ``params -> residuals``.
    params: the point ``p``.
    damping: ``mu >= 0`` (0: the minimum-norm Gauss–Newton step).
    **kwargs: ``solver``, ``maxiter``, ``tol``, ``rcond`` of ``linearize``.

  Returns:
    ``(delta, r, jvp, grad)``: the step, the residuals at ``p`` (flat),
    ``v -> J v`` and the gradient ``J^T r`` of ``0.5 ||r||^2``.
  """
  lin = linearize(residual_fn, params, **kwargs)
  return lin.solve(damping), lin.residuals, lin.jvp, lin.grad


def _least_squares(*, initial_damping: float, factor: float | None,
                   min_damping: float | None, max_damping: float | None,
                   **solver_kwargs):
  check_solver(solver_kwargs.get('solver', 'auto'))
  _check_options(**{k: v for k, v in solver_kwargs.items() if k != 'solver'})
  for name, value in (('initial_damping', initial_damping),
                      ('min_damping', min_damping), ('max_damping', max_damping)):
    if value is not None and not (math.isfinite(value) and value >= 0):
      raise ValueError(f'{name} must be a finite number >= 0; got {value!r}.')
  if factor is not None and not (math.isfinite(factor) and factor > 1):
    raise ValueError(f'factor must be a finite number > 1; got {factor!r}.')
  if (min_damping is not None and max_damping is not None
      and min_damping > max_damping):
    raise ValueError(f'min_damping {min_damping!r} > max_damping '
                     f'{max_damping!r}: the damping would have no range.')

  def init(params):
    dtype = jax.tree.leaves(params)[0].dtype
    return LeastSquaresState(jnp.asarray(initial_damping, dtype),
                             jnp.asarray(True))

  def update(grads, state, params=None, *, residual_fn=None, **extra_args):
    del grads, extra_args
    if params is None or residual_fn is None:
      raise ValueError('Gauss–Newton / Levenberg–Marquardt need params and '
                       'residual_fn=...: they apply to least-squares losses '
                       '(regression tasks) only.')
    dtype = jax.tree.leaves(params)[0].dtype
    lin = linearize(residual_fn, params, **solver_kwargs)
    damping = state.damping.astype(dtype)
    delta = lin.solve(damping * lin.scale)
    if factor is None:  # Gauss–Newton: always step
      return delta, state._replace(accepted=jnp.asarray(True))
    eps = float(jnp.finfo(dtype).eps)
    r = lin.residuals
    loss = 0.5 * jnp.vdot(r, r)
    trial = jnp.ravel(residual_fn(optax.apply_updates(params, delta)))
    actual = loss - 0.5 * jnp.vdot(trial, trial)
    j_delta = lin.jvp(delta)
    predicted = -_vdot(lin.grad, delta) - 0.5 * jnp.vdot(j_delta, j_delta)
    accept = jnp.isfinite(actual) & (actual > 0) & (predicted > 0)
    new_damping = jnp.clip(
        jnp.where(accept, damping / factor, damping * factor),
        eps if min_damping is None else min_damping,
        1 / eps if max_damping is None else max_damping)
    updates = jax.tree.map(lambda d: jnp.where(accept, d, jnp.zeros_like(d)),
                           delta)
    return updates, LeastSquaresState(new_damping.astype(state.damping.dtype),
                                      accept)

  return optax.GradientTransformationExtraArgs(init, update)


def levenberg_marquardt(*, initial_damping: float = 1e-3, factor: float = 10.0,
                        min_damping: float | None = None,
                        max_damping: float | None = None,
                        solver: str = 'auto', maxiter: int | None = None,
                        tol: float | None = None, rcond: float | None = None
                        ) -> optax.GradientTransformationExtraArgs:
  """Levenberg–Marquardt with Marquardt's damping rule.

  A step is taken iff it lowers the loss (and the linear model predicted a
  decrease); the damping is then divided by ``factor``, and multiplied by it
  after a rejection (Marquardt 1963, nu = 10). Measured on the talk's network
  (WORKSPACE.md), Nielsen's smoother rule (shrink by at most 3x per step)
  needed 15-29 steps to reach 1e-20 where this one needs 11-19: once a
  direction of the first layer has nearly collapsed, the damping has to fall
  to the dtype's epsilon (relative) before the step can follow it.

  Args:
    initial_damping: the first step's damping, relative to the largest
      curvature of ``J^T J`` (Nielsen's tau).
    factor: damping divisor after an accepted step, multiplier after a
      rejected one (> 1).
    min_damping: lower clip of the relative damping (default: the dtype's
      epsilon).
    max_damping: upper clip (default: 1 / epsilon).
    solver: ``'auto'``, ``'dense'`` or ``'cg'`` (module docstring).
    maxiter: CG iterations per step (default ``2 n``).
    tol: CG relative tolerance (default ``eps**0.75``).
    rcond: dense: relative singular-value cutoff (default ``n * eps``).

  Returns:
    An optax transformation whose ``update`` needs ``residual_fn=``.
  """
  return _least_squares(initial_damping=initial_damping, factor=factor,
                        min_damping=min_damping, max_damping=max_damping,
                        solver=solver, maxiter=maxiter, tol=tol, rcond=rcond)


def gauss_newton(*, damping: float = 0.0, solver: str = 'auto',
                 maxiter: int | None = None, tol: float | None = None,
                 rcond: float | None = None
                 ) -> optax.GradientTransformationExtraArgs:
  """Gauss–Newton: always takes the full minimum-norm step ``-J^+ r``.

  Args:
    damping: a fixed relative damping (default 0: the undamped step).
    solver: ``'auto'``, ``'dense'`` or ``'cg'`` (module docstring).
    maxiter: CG iterations per step (default ``2 n``).
    tol: CG relative tolerance (default ``eps**0.75``).
    rcond: dense: relative singular-value cutoff (default ``n * eps``).

  Returns:
    An optax transformation whose ``update`` needs ``residual_fn=``.
  """
  return _least_squares(initial_damping=damping, factor=None,
                        min_damping=damping, max_damping=damping,
                        solver=solver, maxiter=maxiter, tol=tol, rcond=rcond)
