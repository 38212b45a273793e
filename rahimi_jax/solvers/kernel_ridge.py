r"""Kernel ridge regression: exact, on features, and Nyström / FALKON.

All solve the same problem, with ``lam`` the ridge per sample (Rudi et al.'s
convention; scikit-learn's ``KernelRidge(alpha=n * lam)``):

  min_f  (1/n) sum_i (f(x_i) - y_i)^2 + lam ||f||_H^2.

* ``exact_fit``: ``(K + n lam I) c = y`` by Cholesky (small ``n``: ``K`` is
  held, ``[n, n]``); ``f(x) = K(x, X) c``. ``exact_sweep``: the same at
  every (bandwidth, lam) of a grid, one kernel matrix per bandwidth, the
  pairs optionally split over a mesh's devices.
* ``ridge_fit``: the primal ridge on features ``Phi`` (random Fourier or
  Nyström): ``(Phi^T Phi + n lam I) w = Phi^T y``, ``f(x) = phi(x) w``.
  Masked (zero) feature columns get weight exactly 0.
* ``nystrom_fit``: ``f(x) = K(x, C) a`` over ``M`` centres, solving
  ``H a = K_nM^T y / n`` with ``H = K_nM^T K_nM / n + lam K_MM``; ``K_nM`` is
  never formed (``kernels.normal_matvec``, row blocks, optionally sharded
  over a mesh). ``preconditioner='falkon'``: FALKON's Algorithm 1, conjugate
  gradients on ``B^T H B b = B^T K_nM^T y / n``, ``a = B b``, with ``T =
  chol(K_MM + eps M I)``, ``A = chol(T T^T / M + lam I)``, ``B = T^{-1}
  A^{-1}`` (upper factors) and the ``lam K_MM`` term applied as ``lam A^{-T}
  A^{-1}`` (exact up to the ``eps M`` jitter); ``'none'``: plain CG on ``H a
  = K_nM^T y / n``, for comparison. Their recurrences' residuals are of
  different systems (FALKON's is preconditioned); the residual each returns,
  recomputed at the end, is of the Nyström system ``H a = K_nM^T y / n``
  for both (FALKON's own, in float32, stalls far above it: 4.7e-2 where the
  Nyström system's was 1.0e-4 at n = 2000, M = 500; WORKSPACE.md, "CG's two
  residuals"), and the studies compare solutions and test errors too. With
  ``M = n`` and every point a centre, the solution is exact KRR's.

  Why Algorithm 1 and not CG on ``H`` preconditioned by ``B B^T`` (the same
  iterates in exact arithmetic): in float32 the latter multiplies the
  ill-conditioned ``H`` itself; at ``n = 1e5``, ``M = 2000``, ``lam = 1e-5`` it
  stalled near 1e-3 and diverged (test MSE 28.6 after 100 iterations) where
  Algorithm 1's recurrence reached 1e-5 in 12 iterations (test MSE 0.0107,
  noise 0.01).

``conjugate_gradient`` is written here rather than taken from
``jax.scipy.sparse.linalg.cg``: that returns no per-iteration residuals and
no iteration count (``info`` is always None), and a study of preconditioning
needs both. It runs ``k`` right-hand sides in lockstep (one shared product
per iteration), stops when every relative residual of the recurrence is at
most ``tol`` or after ``maxiter`` iterations, and is a ``while_loop``:
vmappable over ``lam``, bandwidth and the seed that chose the centres.
``converged`` is read from the residual recomputed after the loop, ``||b -
A x|| / ||b||`` (one more product), not from the recurrence's: in float32 the
recurrence's keeps falling after the true residual has stalled (FALKON at n
= 1000, M = 200, lam = 1e-5: the recurrence's reached 8.4e-7 in 42
iterations while ``||b - A x|| / ||b||`` stayed at 3.7e-3, 4.6e-3 evaluated
in float64; WORKSPACE.md, "CG's two residuals"). ``nystrom_fit``'s
``checkpoints`` recompute the Nyström system's residual along the way too,
for either preconditioner: the one measure on which their iterations
compare (both solvers' float32 residuals rise and fall: plain CG's at n =
2000, M = 500 was 5.5e-5 after 31 iterations, 1.3e-3 after 500).

Bad hyperparameters (``lam <= 0``, bandwidth ``<= 0``, ``M > n``,
non-finite data) raise one-line ``ValueError``s before anything is traced
when the values are concrete.

References:
  Rudi, Carratino & Rosasco, "FALKON: an optimal large scale kernel method",
  NeurIPS 2017, Algorithm 1; Hestenes & Stiefel (1952); Saad, Iterative
  Methods for Sparse Linear Systems, 9.2.
"""

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rahimi_jax import linalg
from rahimi_jax.linalg import solve_triangular
from rahimi_jax.kernels import kernels as kernels_lib

PRECONDITIONERS = ('falkon', 'none')


class CGResult(NamedTuple):
  x: jax.Array           # [m] or [m, k]
  iterations: jax.Array  # [] int32
  residuals: jax.Array   # [maxiter + 1]: max relative residual of the
                         # recurrence; NaN after the stop
  residual: jax.Array    # []: max ||b - A x|| / ||b||, recomputed at the end
  converged: jax.Array   # [] bool: residual <= tol


def _columns(b):
  return b if b.ndim == 2 else b[:, None]


def conjugate_gradient(matvec: Callable[[jax.Array], jax.Array],
                       b: jax.Array, *,
                       preconditioner: Callable[[jax.Array], jax.Array]
                       | None = None, tol: float = 1e-5,
                       maxiter: int = 100) -> CGResult:
  """(Preconditioned) conjugate gradients from 0 with residual history.

  Args:
    matvec: ``v -> A v`` for a symmetric positive definite ``A``, on
      ``[m, k]`` arrays.
    b: ``[m]`` or ``[m, k]`` right-hand sides.
    preconditioner: ``r -> P^{-1} r`` (symmetric positive definite), or None.
    tol: stop when every column's ``||r|| / ||b||`` is at most this.
    maxiter: the most iterations (static).

  Returns:
    ``CGResult``; ``residuals[i]`` is the largest relative residual (of the
    recurrence) after ``i`` iterations; ``residual`` the largest ``||b - A
    x|| / ||b||`` of the result, from one more product, and ``converged``
    whether it is at most ``tol``.
  """
  b2 = _columns(b)
  x, i, history, _ = _iterate(matvec, b2, preconditioner, tol, maxiter)
  residual = relative_residual(b2, matvec(x))
  return CGResult(x.reshape(b.shape), i, history, residual, residual <= tol)


def relative_residual(b: jax.Array, ax: jax.Array) -> jax.Array:
  """The largest ``||b - A x|| / ||b||`` over the columns of ``[m, k]``
  arrays (a zero column of ``b``: ``||A x||``)."""
  return _relative(b - ax, b)


def _relative(r, b):
  """The largest ``||r|| / ||b||`` over the columns."""
  b_norm = jnp.linalg.norm(b, axis=0)
  return jnp.max(jnp.linalg.norm(r, axis=0) / jnp.where(b_norm > 0, b_norm, 1))


def check_checkpoints(checkpoints: Sequence[int], maxiter: int) -> None:
  """``ValueError`` unless ``checkpoints`` are increasing iteration counts
  in ``0..maxiter``."""
  if not (all(isinstance(i, int) and 0 <= i <= maxiter for i in checkpoints)
          and list(checkpoints) == sorted(set(checkpoints))):
    raise ValueError(f'checkpoints={list(checkpoints)!r}; accepted: '
                     f'increasing integers in 0..{maxiter} (maxiter).')


def _iterate(matvec, b2, preconditioner, tol, maxiter, checkpoints=()):
  """CG's loop on ``[m, k]`` right-hand sides: ``(x, iterations, history,
  snapshots)``, ``snapshots: [len(checkpoints), m, k]`` the iterates after
  ``checkpoints`` iterations (static; 0 past the stop)."""
  if not (isinstance(maxiter, int) and maxiter >= 1):
    raise ValueError(f'maxiter={maxiter!r}; accepted: an integer >= 1.')
  kernels_lib.check_positive('tol', tol)
  check_checkpoints(checkpoints, maxiter)
  prec = preconditioner or (lambda r: r)
  # The snapshot slot of each iteration count (len(checkpoints): none, out
  # of bounds, dropped).
  slots = np.full(maxiter + 1, len(checkpoints), np.int32)
  slots[list(checkpoints)] = np.arange(len(checkpoints))

  def relative(r):
    return _relative(r, b2)

  def cond(state):
    i, _, r, *_ = state
    return (i < maxiter) & (relative(r) > tol)

  def body(state):
    i, x, r, p, rz, history, snapshots = state
    ap = matvec(p)
    pap = jnp.sum(p * ap, 0)
    alpha = jnp.where(pap > 0, rz / jnp.where(pap > 0, pap, 1), 0)
    x = x + alpha * p
    r = r - alpha * ap
    z = prec(r)
    rz_new = jnp.sum(r * z, 0)
    beta = jnp.where(rz > 0, rz_new / jnp.where(rz > 0, rz, 1), 0)
    history = history.at[i + 1].set(relative(r))
    if checkpoints:
      snapshots = snapshots.at[jnp.asarray(slots)[i + 1]].set(x, mode='drop')
    return i + 1, x, r, z + beta * p, rz_new, history, snapshots

  z = prec(b2)
  history = jnp.full(maxiter + 1, jnp.nan, b2.dtype).at[0].set(relative(b2))
  init = (jnp.int32(0), jnp.zeros_like(b2), b2, z, jnp.sum(b2 * z, 0),
          history, jnp.zeros((len(checkpoints), *b2.shape), b2.dtype))
  i, x, _, _, _, history, snapshots = jax.lax.while_loop(cond, body, init)
  return x, i, history, snapshots


# --- Checks ------------------------------------------------------------------


def check_data(x, y, name: str = 'x') -> None:
  """One-line ``ValueError``s for non-finite inputs ``x`` (called ``name``)
  or targets ``y`` (concrete values), or row counts that differ."""
  kernels_lib.check_finite(name, x)
  kernels_lib.check_finite('y', y)
  if x.shape[0] != y.shape[0]:
    raise ValueError(f'{name} has {x.shape[0]} rows but y has {y.shape[0]}; '
                     'accepted: one target row per input row.')


def check_problem(x, y, bandwidth, lam) -> None:
  """One-line ``ValueError``s for non-finite data, ``bandwidth <= 0`` or
  ``lam <= 0`` (concrete values; tracers were checked where concrete)."""
  check_data(x, y)
  kernels_lib.check_positive('bandwidth', bandwidth)
  kernels_lib.check_positive('lam', lam)


def _cho_solve(upper, b):
  """``(U^T U)^{-1} b`` for an upper Cholesky factor ``U``."""
  return solve_triangular(upper, solve_triangular(upper, b, trans='T'))


# --- Exact and feature ridge ---------------------------------------------------


def exact_fit(kernel: kernels_lib.Kernel | str, x: jax.Array, y: jax.Array,
              bandwidth: jax.Array, lam: jax.Array, *,
              block_size: int | None = None) -> jax.Array:
  """Exact KRR coefficients ``c = (K + n lam I)^{-1} y``, ``[n]`` / ``[n, k]``;
  predictions ``kernels.kernel_matvec(kernel, x_new, x, c, bandwidth)``.
  Where ``K + n lam I`` is not positive definite in the arithmetic (a tiny
  ``lam`` in float32), the Cholesky factorization fails and every
  coefficient is NaN: check ``jnp.isfinite`` before using them."""
  check_problem(x, y, bandwidth, lam)
  kernel = kernels_lib.get_kernel(kernel)
  k = kernels_lib.kernel_matrix(kernel, x, x, bandwidth, block_size=block_size)
  return _ridge_solve(k, y, lam)


def _ridge_solve(k, y, lam):
  """``(K + n lam I)^{-1} y`` by Cholesky (all NaN where it fails)."""
  n = k.shape[0]
  return _cho_solve(linalg.cholesky(k + n * lam * jnp.eye(n, dtype=k.dtype)), y)


def exact_sweep(kernel: kernels_lib.Kernel | str, x: jax.Array, y: jax.Array,
                bandwidths: jax.Array, lams: jax.Array, *,
                block_size: int | None = None,
                mesh: jax.sharding.Mesh | None = None) -> jax.Array:
  """``exact_fit`` at every (bandwidth, lam) of ``bandwidths: [B]`` x ``lams:
  [L]``: coefficients ``[B, L, n]`` / ``[B, L, n, k]``.

  One kernel matrix per bandwidth serves its ``L`` ridges (a ``vmap`` of
  ``exact_fit`` over the pairs computes it ``L`` times: 0.30 of a 0.96-s
  16-pair sweep at n = 2000 on a 2-core CPU). Every pair needs its own
  Cholesky factorization; the pairs go one after another (``lax.map``), each
  factored and solved in one step, so one ``[n, n]`` factor is held at a time
  beside its kernel matrix, and no LAPACK call gets a batch (a vmapped
  solve's factors were sliced out of a stack: 20 ms a pair at n = 2000 for
  two triangular solves, 9 ms so; WORKSPACE.md, "Sweep, third pass").

  With ``mesh`` (a one-axis mesh, e.g. ``kernels.row_mesh()``), the pairs
  are split over its devices: the bandwidths, or the ridges where that
  leaves fewer factorizations to the busiest device (each device then
  computes every bandwidth's kernel matrix for its ridges), padded with
  copies of the last to a multiple of the devices (the copies' fits are
  dropped). Each device runs its pairs, with the numbers of one device. On a
  CPU, run it on one BLAS thread per device (``program.blas_on_one_thread``):
  jaxlib's LAPACK calls use OpenBLAS, which spreads each call over every
  core.
  """
  check_problem(x, y, bandwidths, lams)
  kernel = kernels_lib.get_kernel(kernel)
  if mesh is not None and len(mesh.axis_names) != 1:
    raise ValueError(f'mesh: axes {mesh.axis_names}; accepted: a one-axis '
                     'mesh (kernels.row_mesh()).')
  lams = jnp.asarray(lams)
  bandwidths = jnp.asarray(bandwidths)

  def pairs(bandwidths, lams):
    def one_bandwidth(bandwidth):
      k = kernels_lib.kernel_matrix(kernel, x, x, bandwidth,
                                    block_size=block_size)
      return jax.lax.map(lambda lam: _ridge_solve(k, y, lam), lams)
    return jax.lax.map(one_bandwidth, bandwidths)

  if mesh is None or mesh.size == 1:
    return pairs(bandwidths, lams)
  (b,), (l,), d = bandwidths.shape, lams.shape, mesh.size

  def padded(values):
    return jnp.concatenate([values, jnp.repeat(values[-1:], -len(values) % d)])

  spec, axis = jax.sharding.PartitionSpec, mesh.axis_names[0]
  # Factorizations on the busiest device: split the bandwidths or the ridges.
  if -(-b // d) * l <= b * -(-l // d):
    args, in_specs, out_specs = ((padded(bandwidths), lams),
                                 (spec(axis), spec()), spec(axis))
  else:
    args, in_specs, out_specs = ((bandwidths, padded(lams)),
                                 (spec(), spec(axis)), spec(None, axis))
  return jax.shard_map(pairs, mesh=mesh, in_specs=in_specs,
                       out_specs=out_specs)(*args)[:b, :l]


def ridge_fit(features: jax.Array, y: jax.Array, lam: jax.Array
              ) -> jax.Array:
  """Ridge weights ``(Phi^T Phi + n lam I)^{-1} Phi^T y``: ``[D]`` / ``[D,
  k]``; predictions ``phi(x_new) @ w``. More features than rows (``D > n``,
  e.g. hashed binning features): solved in the dual, ``Phi^T (Phi Phi^T + n
  lam I)^{-1} y``, the same weights from an ``n x n`` factorization. A
  failed Cholesky factorization (a system not positive definite in the
  arithmetic) gives NaN weights, as in ``exact_fit``."""
  check_data(features, y, 'features')
  kernels_lib.check_positive('lam', lam)
  n, d = features.shape
  if d > n:  # the dual: the n x n system of the kernel Phi Phi^T
    return features.T @ _ridge_solve(features @ features.T, y, lam)
  gram = features.T @ features + n * lam * jnp.eye(d, dtype=features.dtype)
  return _cho_solve(linalg.cholesky(gram), features.T @ y)


# --- Nyström / FALKON ----------------------------------------------------------


class NystromResult(NamedTuple):
  coef: jax.Array        # [M] or [M, k]: f(x) = K(x, C) coef
  iterations: jax.Array  # [] int32
  residuals: jax.Array   # [maxiter + 1] relative residuals (the
                         # recurrence's) of the system CG runs on (FALKON:
                         # the preconditioned one)
  residual: jax.Array    # [] ||K_nM^T y / n - H a|| / ||K_nM^T y / n||,
                         # recomputed at the end: the Nyström system's,
                         # whichever the preconditioner
  converged: jax.Array   # [] bool: residual <= tol
  checked: jax.Array     # [len(checkpoints)] the same, recomputed for the
                         # iterate after each checkpoint's iterations; NaN
                         # past the stop


def falkon_factors(k_mm: jax.Array, lam: jax.Array
                   ) -> tuple[jax.Array, jax.Array]:
  """FALKON's upper Cholesky factors ``T = chol(K_MM + eps M I)`` and
  ``A = chol(T T^T / M + lam I)``: ``B = T^{-1} A^{-1}`` makes ``B^T H B``
  well conditioned."""
  m = k_mm.shape[0]
  eye = jnp.eye(m, dtype=k_mm.dtype)
  t = linalg.cholesky(k_mm + jnp.finfo(k_mm.dtype).eps * m * eye)
  return t, linalg.cholesky(t @ t.T / m + lam * eye)


def nystrom_fit(kernel: kernels_lib.Kernel | str, x: jax.Array, y: jax.Array,
                centres: jax.Array, bandwidth: jax.Array, lam: jax.Array, *,
                preconditioner: str = 'falkon', tol: float = 1e-5,
                maxiter: int = 100, checkpoints: Sequence[int] = (),
                block_size: int | None = None,
                mesh: jax.sharding.Mesh | None = None) -> NystromResult:
  """Nyström KRR by (FALKON-preconditioned) conjugate gradients.

  Args:
    kernel: the kernel.
    x: ``[n, d]`` training inputs (rows sharded over ``mesh`` if given).
    y: ``[n]`` or ``[n, k]`` targets.
    centres: ``[M, d]``, ``M <= n`` (e.g. ``x[kernels.choose_centres(...)]``).
    bandwidth: traced.
    lam: ridge per sample, traced.
    preconditioner: ``'falkon'`` or ``'none'`` (plain CG).
    tol: relative residual of the system CG runs on (FALKON's:
      preconditioned) to stop at; ``converged``: the Nyström system's
      residual, recomputed, is at most this too.
    maxiter: the most CG iterations (static).
    checkpoints: iteration counts (static, increasing, ``<= maxiter``) after
      which to recompute the Nyström system's residual too, e.g. to compare
      the two preconditioners on it (their recurrences' residuals are of
      different systems, and drift from it in float32): each iterate is
      kept, and all are multiplied by ``H`` with the result, in one
      product of ``len(checkpoints) + 1`` times the columns.
    block_size: rows per kernel block: memory ``O(block_size * M)``.
    mesh: ``kernels.row_mesh(...)`` to shard the rows over, or None.

  Returns:
    ``NystromResult``.
  """
  check_problem(x, y, bandwidth, lam)
  kernel = kernels_lib.get_kernel(kernel)
  if centres.shape[0] > x.shape[0]:
    raise ValueError(f'M={centres.shape[0]} centres for n={x.shape[0]} rows; '
                     'accepted: M <= n.')
  if preconditioner not in PRECONDITIONERS:
    raise ValueError(f'preconditioner={preconditioner!r}; accepted: '
                     f'{", ".join(PRECONDITIONERS)}.')
  n = x.shape[0]
  y2 = _columns(y).astype(x.dtype)
  k_mm = kernel.pairwise(centres, centres, bandwidth)

  def product(u, v):
    return kernels_lib.normal_matvec(kernel, x, centres, u, v, bandwidth,
                                     block_size=block_size, mesh=mesh) / n

  rhs = product(jnp.zeros((centres.shape[0], y2.shape[1]), x.dtype), y2)

  def h_mul(u):  # H u
    return product(u, None) + lam * (k_mm @ u)

  if preconditioner == 'none':
    solution, iterations, history, snapshots = _iterate(
        h_mul, rhs, None, tol, maxiter, checkpoints)
    to_coef = lambda u: u
  else:
    t, a = falkon_factors(k_mm, lam)

    def b_mul(u):  # B u
      return solve_triangular(t, solve_triangular(a, u))

    def bt_mul(u):  # B^T u
      return solve_triangular(a, solve_triangular(t, u, 'T'), 'T')

    def bhb(u):  # B^T H B u, the lam K_MM term as lam A^{-T} A^{-1} u
      return solve_triangular(
          a, solve_triangular(t, product(b_mul(u), None), 'T')
          + lam * solve_triangular(a, u), 'T')
    solution, iterations, history, snapshots = _iterate(
        bhb, bt_mul(rhs), None, tol, maxiter, checkpoints)
    to_coef = b_mul
  # The result and the checkpoints' iterates, [M, 1 + len(checkpoints), k]:
  # their Nyström residuals from one product.
  m, k = rhs.shape
  coefs = to_coef(jnp.concatenate([solution[None], snapshots]).transpose(
      1, 0, 2).reshape(m, -1)).reshape(m, -1, k)
  products = h_mul(coefs.reshape(m, -1)).reshape(coefs.shape)
  residuals = jax.vmap(relative_residual, (None, 1))(rhs, products)
  coef, residual = coefs[:, 0], residuals[0]
  checked = jnp.where(np.asarray(checkpoints, np.int32) <= iterations,
                      residuals[1:], jnp.nan)
  return NystromResult(coef if y.ndim == 2 else coef[:, 0], iterations,
                       history, residual, residual <= tol, checked)
